"""A real PostgreSQL server for the tests: Debian's `postgresql` package (the Makefile installs
it), one private cluster per test session on a free loopback port, in a temporary data
directory, stopped (and its files removed) at the end. No mock of the database anywhere.

    server = PgServer.start(tmp)          # initdb + pg_ctl start; superuser `charter`, trust auth
    url = server.new_database()           # a fresh, empty database per test
    server.restart()                      # stop -m fast + start (the database-restart tests)
    server.stop()

As root (CI), initdb and the server run as the `postgres` user the package creates (PostgreSQL
refuses to run as root); the data directory and socket directory are handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

__all__ = ["PgServer", "pg_bin"]

SUPERUSER = "charter"
_names = itertools.count(1)


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError(
            "no PostgreSQL server is installed (/usr/lib/postgresql/*/bin/initdb): `make test` installs "
            "Debian's postgresql package; run it, or `apt-get install postgresql`"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    root: Path
    port: int
    bin: Path = field(default_factory=pg_bin)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, root: Path) -> PgServer:
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root=root, port=_free_port())
        (root / "run").mkdir(exist_ok=True)
        server._as_owner_dirs()
        server._run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--locale=C.UTF-8",
        )
        server._start()
        return server

    def _start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root / 'run'} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=300 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self._start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database (owned by the superuser) and return its URL."""
        chosen = name or f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{chosen}"')
        return self.url(chosen)

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (roles, grants, drops)."""
        with psycopg.connect(self.url(database), autocommit=True) as connection:
            connection.execute(statement)  # type: ignore[arg-type]

    def _as_owner_dirs(self) -> None:
        if os.geteuid() != 0:
            return
        owner = pwd.getpwnam("postgres")
        for path in (self.root, self.root / "run"):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=self.root)

"""`charter keys ...`: the keyring of public keys that receipts and checkpoints verify with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from charter.audit._keyring import (
    KeyEntry,
    Keyring,
    editing,
    entry_for,
    keyring_path,
    parse_time,
    seeded,
    trusted_keys,
)
from charter.audit.keys import SIGNING_KEY_ENV, load_or_create_signing_key, read_public_key, signing_key_name
from charter.cli._output import fail, print_json, say
from charter.errors import CharterError, UsageError

app = typer.Typer(
    help="The keyring: public keys that receipts and checkpoints are verified with (rotation, revocation).",
    no_args_is_help=True,
)

KeyringOption = Annotated[
    Path | None,
    typer.Option(
        "--keyring",
        metavar="PATH",
        help="The keyring file (default: $CHARTER_KEYRING, else keys/keyring.yaml in the Charter home).",
    ),
]
NoteOption = Annotated[str, typer.Option("--note", help="Why: kept in the keyring beside the key.")]


def _keys_dir() -> Path:
    from charter._paths import charter_home

    return charter_home() / "keys"


def _entry_json(entry: KeyEntry) -> dict[str, object]:
    return {
        "key_id": entry.key_id,
        "public_key": entry.public_key,
        "name": entry.name,
        "added": entry.added.isoformat(),
        "not_after": entry.not_after.isoformat() if entry.not_after else None,
        "note": entry.note,
    }


def _say_seeded(added: list[KeyEntry], path: Path) -> None:
    for entry in added:
        say(f"listed existing key {entry.name} ({entry.key_id}) from keys/{entry.name}.pub in the new keyring {path}")


@app.command("list")
def list_(keyring: KeyringOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The trusted keys: id, name, when added, revoked after (not after), note."""
    keys_dir = _keys_dir()
    path = keyring_path(keys_dir, keyring)
    try:
        ring = Keyring.load(path)
        if not ring.exists:  # no keyring file: the .pub files are the keyring
            keys = trusted_keys(keys_dir, keyring)
            if as_json:
                print_json([{"key_id": k, "name": key.name, "source": f"{key.name}.pub"} for k, key in keys.items()])
                return
            say(f"no keyring file at {path}: every keys/*.pub is trusted (`charter keys new` makes the keyring)")
            for key_id, key in keys.items():
                say(f"{key_id}  {key.name}  (keys/{key.name}.pub)")
            return
    except CharterError as error:
        fail(error)
    if as_json:
        print_json([_entry_json(e) for e in ring.entries])
        return
    say(f"keyring {path}: {len(ring.entries)} key(s)", "bold")
    for entry in ring.entries:
        state = f"revoked, not after {entry.not_after.isoformat()}" if entry.not_after else "trusted"
        note = f"  {entry.note}" if entry.note else ""
        say(f"{entry.key_id}  {entry.name}  added {entry.added.isoformat()}  {state}{note}")


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The key's name: keys/NAME.key and NAME.pub (e.g. worker-1).")],
    keyring: KeyringOption = None,
    note: NoteOption = "",
) -> None:
    """Make a signing key pair keys/NAME.key|.pub and list its public key in the keyring.

    A process signs with it when CHARTER_SIGNING_KEY=NAME (or `charter serve --key NAME`)."""
    keys_dir = _keys_dir()
    path = keyring_path(keys_dir, keyring)
    try:
        name = signing_key_name(name)
        if (keys_dir / f"{name}.key").exists():
            raise UsageError(f"{keys_dir / name}.key exists already; choose another name (`charter keys list`)")
        with editing(path):
            ring, added = seeded(Keyring.load(path), keys_dir)
            key = load_or_create_signing_key(keys_dir, name)
            ring.with_entry(entry_for(key.public, name, note)).save()
    except CharterError as error:
        fail(error)
    _say_seeded(added, path)
    say(f"made {keys_dir / name}.key (key {key.key_id}) and listed it in {path} as {name}")
    say(f"sign with it: {SIGNING_KEY_ENV}={name}")


@app.command()
def add(
    public_file: Annotated[Path, typer.Argument(metavar="PUBFILE", help="A public key file: 64 hex digits.")],
    name: Annotated[str, typer.Option("--name", help="The key's name in the keyring (its holder).")],
    keyring: KeyringOption = None,
    note: NoteOption = "",
) -> None:
    """List another signer's public key (a worker on another host, say) in the keyring."""
    keys_dir = _keys_dir()
    path = keyring_path(keys_dir, keyring)
    try:
        key = read_public_key(public_file)
        with editing(path):
            ring, added = seeded(Keyring.load(path), keys_dir)
            listed = next((e for e in ring.entries if e.key_id == key.key_id), None)
            if listed is not None and listed.name != name:
                raise UsageError(f"key {key.key_id} is already in {path} as {listed.name!r}")
            if listed is None:
                ring = ring.with_entry(entry_for(key, name, note))
            ring.save()
    except CharterError as error:
        fail(error)
    _say_seeded(added, path)
    say(f"key {key.key_id} is listed in {path} as {name}")


@app.command()
def revoke(
    key: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key id (or a unique prefix, or its name).")],
    not_after: Annotated[
        str,
        typer.Option(
            "--not-after",
            metavar="ISO",
            help="Distrust what it signed after this time: ISO-8601 (UTC unless it names an offset), or now.",
        ),
    ],
    keyring: KeyringOption = None,
    note: NoteOption = "",
) -> None:
    """Revoke a key: verify reports what it signed after --not-after; what it signed before verifies.

    No process signs with a revoked key any more (the writer refuses it)."""
    keys_dir = _keys_dir()
    path = keyring_path(keys_dir, keyring)
    try:
        when = datetime.now(UTC) if not_after.strip().lower() == "now" else parse_time(not_after.strip())
        if when is None:
            raise UsageError(f"--not-after {not_after!r} is not a time: give ISO-8601 (2026-11-30T12:00:00Z) or now")
        with editing(path):
            ring, added = seeded(Keyring.load(path), keys_dir)
            entry = ring.find(key)
            notes = "; ".join(n for n in (entry.note, note) if n)
            revoked = entry.model_copy(update={"not_after": when, "note": notes})
            ring.with_entry(revoked).save()
    except CharterError as error:
        fail(error)
    _say_seeded(added, path)
    say(
        f"revoked key {entry.key_id} ({entry.name}) after {when.astimezone(UTC).isoformat()}: "
        "`charter audit verify` reports what it signed after that"
    )

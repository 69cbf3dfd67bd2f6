"""Baked sandbox components: a contract's surface prepared at build time, and what serves without one.

One baked component is built for the session (the orders contract's surface) into the
same cache as the generic component, so a second session only loads it. The adversarial
corpus of tests/test_sandbox.py runs again below against instances of that component:
a baked instance must behave exactly as a generic one. Baking is off in the rest of the
suite (CHARTER_BAKE=0, tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from charter import _profile
from charter.backends import InMemoryBackend
from charter.compiler.artifact import CompiledContract
from charter.errors import UsageError
from charter.gate import PassThroughGate
from charter.principal import Principal
from charter.sandbox import BuildFailed, Completed, RunContext, Sandbox, _baked, _component
from tests.conftest import charter, compiled
from tests.test_sandbox import (  # noqa: F401 - run again here, against baked instances
    healthy_after,
    recorder,
    test_adversarial_program,
    test_host_environment_does_not_reach_the_guest,
    test_proxy_returns_typed_records,
    test_runs_in_parallel_threads_stay_apart,
    test_state_left_by_one_run_is_invisible_to_the_next,
    test_wall_time_holds_while_a_backend_hangs,
    test_what_used_to_trap_ends_with_a_clear_reason,
)

_BUILD_TIMEOUT = 900.0  # a build is ~15 s of CPU; a loaded machine stretches it


@pytest.fixture(scope="module")
def orders() -> CompiledContract:
    return compiled("orders")


@pytest.fixture(scope="module", params=["pooled", "cold"])
def sandbox(orders: CompiledContract, request: pytest.FixtureRequest) -> Sandbox:
    """The baked sandbox the imported tests use. Pooled instances are mostly warmed by the
    pool's prepare() (which arms the confinement); cold ones (no pool, as on the request
    path when the pool runs dry) are armed by run() itself."""
    sandbox = Sandbox(pool_size=2 if request.param == "pooled" else 0, bake=True, progress=None)
    report = sandbox.bake(orders).result(timeout=_BUILD_TIMEOUT)
    assert report.native_bytes > 0
    assert sandbox.baked_loaded(orders)
    sandbox.warm(orders)
    return sandbox


@pytest.fixture(autouse=True)
def _served_baked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every run of a test here that uses the baked sandbox is served by a baked instance."""
    if request.function.__module__ != "tests.test_sandbox":
        yield
        return
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    before = sandbox.runs_served()
    yield
    after = sandbox.runs_served()
    assert after["generic"] == before["generic"], "a run in the baked sandbox was served by the generic component"
    assert after["baked"] > before["baked"]


def _run(sandbox: Sandbox, contract: CompiledContract, program: str) -> object:
    gate = PassThroughGate(contract, InMemoryBackend({"get_order": lambda id: {"id": id}}))
    return sandbox.run(program, contract=contract, gate=gate, context=RunContext(principal=Principal("p")))


def test_a_baked_instance_is_prepared_at_build_time(sandbox: Sandbox, orders: CompiledContract) -> None:
    # The guest runtime of a baked component knows the surface it was built with; a
    # generic one learns it from prepare() and has none baked.
    program = 'conclude(str(conclude.__globals__["WitWorld"].baked is not None))'
    outcome = _run(sandbox, orders, program)
    assert isinstance(outcome, Completed)
    assert outcome.answer == "True"


def test_a_baked_instance_is_confined_before_the_program_runs(sandbox: Sandbox, orders: CompiledContract) -> None:
    # The build leaves os.putenv/unsetenv and the audit hook for run() to arm: a program
    # must already find them refused.
    program = (
        '[os] = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "_wrap_close"]\n'
        "os = os.__init__.__globals__\n"
        "said = []\n"
        "try:\n"
        '    os["putenv"]("A", "B")\n'
        "except PermissionError as error:\n"
        "    said.append(str(error))\n"
        "try:\n"  # the audit hook's refusal; without it, the module is simply not there
        '    os["sys"].modules["builtins"].__import__("socket")\n'
        "except ImportError as error:\n"
        "    said.append(str(error))\n"
        'conclude(" | ".join(said))\n'
    )
    outcome = _run(sandbox, orders, program)
    assert isinstance(outcome, Completed)
    assert outcome.answer == (
        "os.putenv is not available in a Charter program: it has no host access"
        " | module 'socket' is not available in a Charter program"
    )


def _baking_with_a_copied_cache(
    orders: CompiledContract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, pool_size: int = 0
) -> tuple[Sandbox, _component.ComponentFiles]:
    """A baking sandbox (its generic component from the usual cache) whose baked cache is now a
    copy, under `tmp_path`, of the shared cache's orders build: a test may damage it freely."""
    fresh = Sandbox(pool_size=pool_size, bake=True, progress=None)
    key = fresh._entry(orders).surface_key
    built = _baked.baked_files(key)
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(tmp_path / "cache"))
    copy = _baked.baked_files(key)
    shutil.copytree(built.directory, copy.directory, ignore=shutil.ignore_patterns(".lock"))
    return fresh, copy


def test_a_damaged_baked_component_is_reported_once_and_the_generic_one_serves(
    sandbox: Sandbox,
    orders: CompiledContract,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fresh, damaged = _baking_with_a_copied_cache(orders, tmp_path, monkeypatch)
    native = damaged.native(sandbox._runtime.config_tag)
    for path in (native, damaged.wasm):
        path.chmod(0o644)  # the cache's files are read-only (_component._atomic_write)
    native.write_bytes(b"\x7fELF not a component")
    damaged.wasm.write_bytes(b"\0asm not a component either")

    with pytest.raises(BuildFailed, match="does not compile"):
        fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)
    fresh.bake(orders)  # asked again, and a run asks too: still one report
    outcome = _run(fresh, orders, 'conclude("served")')
    assert isinstance(outcome, Completed)
    assert outcome.answer == "served"
    assert fresh.runs_served() == {"baked": 0, "generic": 1}
    assert not fresh.baked_loaded(orders)
    reports = [record.getMessage() for record in caplog.records if record.name == "charter.sandbox"]
    assert len(reports) == 1
    assert "the generic one serves" in reports[0]
    assert not damaged.wasm.exists()  # the next process builds it afresh
    assert not native.exists()


def test_bake_all_does_nothing_when_the_environment_turns_baking_off(
    orders: CompiledContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_BAKE", "0")
    fresh = Sandbox(pool_size=0, progress=None)
    fresh.bake_all([orders])
    outcome = _run(fresh, orders, 'conclude("ok")')
    assert isinstance(outcome, Completed)
    assert fresh.runs_served() == {"baked": 0, "generic": 1}
    assert fresh._baked.loaded() == []


@pytest.mark.parametrize("value", ["yes", "2", "on "])
def test_a_charter_bake_value_other_than_0_1_true_false_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARTER_BAKE", value)
    with pytest.raises(UsageError, match=r"CHARTER_BAKE must be 1 or true .* or 0 or false .*, got"):
        Sandbox(pool_size=0, progress=None)


@pytest.mark.parametrize(("value", "baking"), [("1", True), ("TRUE", True), ("false", False), ("", False)])
def test_charter_bake_accepts_0_1_true_false(value: str, baking: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARTER_BAKE", value)
    assert Sandbox(pool_size=0, progress=None)._bake is baking


def test_the_least_recently_used_baked_component_is_evicted_and_loaded_again(
    sandbox: Sandbox, orders: CompiledContract
) -> None:
    fresh = Sandbox(pool_size=0, bake=True, baked_components=1, progress=None)
    fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)  # on disk since the fixture: a load
    key = fresh._entry(orders).surface_key
    assert fresh._baked.loaded() == [key]
    # Another key takes the one slot (loaded from the same files: what matters is the slot).
    other = "0" * 64
    shutil.copytree(_baked.baked_files(key).directory, _baked.baked_files(other).directory, dirs_exist_ok=True)
    try:
        fresh._baked.request(other, "{}").result(timeout=_BUILD_TIMEOUT)
        assert fresh._baked.loaded() == [other]
        assert not fresh.baked_loaded(orders)
        outcome = _run(fresh, orders, 'conclude("ok")')  # served generic, and queues the load again
        assert isinstance(outcome, Completed)
        fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)
        assert fresh._baked.loaded() == [key]
    finally:
        shutil.rmtree(_baked.baked_files(other).directory, ignore_errors=True)


def test_runs_are_charged_to_their_profile_sections(
    sandbox: Sandbox, orders: CompiledContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_profile, "ENABLED", True)
    monkeypatch.setattr(_profile, "_totals", {})
    monkeypatch.setattr(_profile, "_counts", {})
    generic = Sandbox(pool_size=0, progress=None)
    assert isinstance(_run(generic, orders, 'conclude("generic")'), Completed)
    # Counts are process-wide, and the module's sandbox may refill its pool meanwhile (baked:
    # instantiate only); only this thread runs programs.
    counts: dict[str, int] = _profile.snapshot()["counts"]  # type: ignore[assignment]
    assert counts["guest"] == 1
    assert counts["sandbox.prepare"] >= 1
    assert counts["sandbox.instantiate"] >= 1
    monkeypatch.setattr(_profile, "_counts", {})
    baked = Sandbox(pool_size=0, bake=True, progress=None)
    baked.bake(orders).result(timeout=_BUILD_TIMEOUT)
    assert isinstance(_run(baked, orders, 'conclude("baked")'), Completed)
    assert baked.runs_served() == {"baked": 1, "generic": 0}
    counts = _profile.snapshot()["counts"]  # type: ignore[assignment]
    assert counts["guest"] == 1
    assert counts["sandbox.instantiate"] >= 1


def test_the_epoch_ticker_sleeps_while_no_run_is_in_flight(sandbox: Sandbox, orders: CompiledContract) -> None:
    assert isinstance(_run(sandbox, orders, 'conclude("ok")'), Completed)
    runtime = sandbox._runtime
    assert runtime.in_flight == 0
    ticker = runtime.ticker
    assert ticker.ident is not None
    # It goes back to waiting on its condition within a tick; until then it is still ticking.
    while True:
        frame = sys._current_frames().get(ticker.ident)
        assert frame is not None
        if frame.f_code.co_name == "wait" and frame.f_back is not None and frame.f_back.f_code.co_name == "_tick":
            break
        threading.Event().wait(0.001)


def test_sandbox_build_bakes_a_published_contract(sandbox: Sandbox, orders: CompiledContract) -> None:
    # The module's sandbox built (or found) the orders surface's component: the command loads it.
    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    result = charter("sandbox", "build", "--contract", "orders")
    assert result.returncode == 0, result.stderr
    assert f"Baked orders@{orders.version}: already built" in result.stdout
    unknown = charter("sandbox", "build", "--contract", "no-such-contract")
    assert unknown.returncode != 0
    assert "no-such-contract" in unknown.stdout + unknown.stderr


def test_a_second_builder_of_the_same_key_waits_and_uses_the_first_ones_files(
    sandbox: Sandbox, orders: CompiledContract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = sandbox._entry(orders).surface_key
    built = _baked.baked_files(key)
    tag = sandbox._runtime.config_tag
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(tmp_path / "cache"))
    target = _baked.baked_files(key)
    target.directory.mkdir(parents=True)
    shutil.copyfile(built.directory / "surface.json", target.directory / "surface.json")
    target.wasm.write_bytes(b"\0asm damaged")  # what the second builder would compile, and fail on
    with _component._locked(target.directory):  # the first builder, mid-build
        second = subprocess.Popen(
            [sys.executable, "-m", "charter.sandbox._baked", str(target.directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not _waits_for_a_lock(second.pid):
            assert second.poll() is None, second.communicate()
            threading.Event().wait(0.01)
        shutil.copyfile(built.native(tag), target.native(tag))  # the first builder's result
    _, errors = second.communicate(timeout=120)
    assert second.returncode == 0, errors
    assert target.wasm.read_bytes() == b"\0asm damaged"  # untouched: it found the native code done


def _waits_for_a_lock(pid: int) -> bool:
    # /proc/locks lists a process blocked in flock() as "N: -> FLOCK ADVISORY WRITE <pid> ...".
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and f" {pid} " in line for line in lines)


def test_a_pool_found_empty_grows_and_shrinks_back_when_idle(
    orders: CompiledContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.sandbox import _host

    monkeypatch.setattr(_host, "_IDLE_SECONDS", 0.05)
    fresh = Sandbox(pool_size=1, progress=None)  # its refill thread waits: nothing is asked of it yet
    assert isinstance(_run(fresh, orders, 'conclude("first")'), Completed)  # its pool was empty
    entry = fresh._entry(orders)
    assert entry.target == 2
    # Idle, the pool steps back to its base size (the refill thread wakes to shrink it).
    for _ in range(6000):  # a bound against hanging, not a measure of speed
        if entry.target == 1:
            break
        threading.Event().wait(0.01)
    assert entry.target == 1
    assert len(entry.pool) <= 1


def test_a_builder_dies_with_the_process_that_started_it(
    sandbox: Sandbox, orders: CompiledContract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent asks for a build whose lock the test holds (another builder, mid-build), so
    # its builder waits; then the parent is killed with SIGKILL, as `charter serve` was.
    entry = sandbox._entry(orders)
    parent_code = (
        "from charter.sandbox import _baked\n"
        f"_baked._run_builder(_baked.baked_files({entry.surface_key!r}), {entry.surface_json!r})\n"
    )
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(tmp_path / "cache"))  # inherited by the parent
    target = _baked.baked_files(entry.surface_key)
    with _component._locked(target.directory):
        parent = subprocess.Popen([sys.executable, "-c", parent_code])
        builder = 0
        while not builder or not _waits_for_a_lock(builder):
            assert parent.poll() is None
            children = [
                int(pid)
                for task in Path(f"/proc/{parent.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()
            ]
            builder = children[0] if children else 0
            threading.Event().wait(0.01)
        parent.kill()
        parent.wait()
        # Bounded by the test's own patience, not asserted as a duration: the builder must go.
        for _ in range(3000):
            if not _alive(builder):
                break
            threading.Event().wait(0.01)
        assert not _alive(builder), "the builder outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has ended; its new parent reaps it


def test_cache_files_are_replaced_whole_and_read_only(tmp_path: Path) -> None:
    # A mapped native code file edited in place changes a running server's pages under it.
    path = tmp_path / "runner.cwasm"
    _component._atomic_write(path, b"first")
    mapped = path.open("rb")  # stands for the server's mapping of the file
    _component._atomic_write(path, b"second")
    assert mapped.read() == b"first"  # replaced, not rewritten: the mapped file is untouched
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o444
    mapped.close()


def _rewrite_in_place(native: Path) -> None:
    # With the same bytes (other bytes would change the mapped pages under this very test
    # process): same inode, new modification time.
    native.chmod(0o644)
    data = native.read_bytes()
    with native.open("r+b") as handle:
        handle.write(data)
    stamp = native.stat().st_mtime_ns + 1_000_000_000
    os.utime(native, ns=(stamp, stamp))


def _held_loads(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Baked loads of `sandbox` wait until the returned event is set. The run that finds a
    component changed queues its load again; loading an unchanged file (page-cached) can finish
    before that very run makes its instance, which then rightly comes from the file as it is
    now. Held, the run shows what serves while no component is loaded."""
    release = threading.Event()
    load = sandbox._baked._load

    def held(key: str, surface_json: str) -> _baked.BakeReport:
        release.wait()
        return load(key, surface_json)

    monkeypatch.setattr(sandbox._baked, "_load", held)
    return release


def _one_report_of_the_rewrite(caplog: pytest.LogCaptureFixture, native: Path) -> None:
    reports = [record.getMessage() for record in caplog.records if record.name == "charter.sandbox"]
    assert len(reports) == 1
    assert "rewritten in place" in reports[0]
    assert str(native) in reports[0]


def test_a_baked_component_rewritten_in_place_is_dropped_and_loaded_again(
    sandbox: Sandbox,
    orders: CompiledContract,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fresh, copy = _baking_with_a_copied_cache(orders, tmp_path, monkeypatch)
    fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)
    native = copy.native(fresh._runtime.config_tag)
    _rewrite_in_place(native)
    release = _held_loads(fresh, monkeypatch)

    outcome = _run(fresh, orders, 'conclude("served")')
    assert isinstance(outcome, Completed)
    assert fresh.runs_served() == {"baked": 0, "generic": 1}  # no instance of the changed file
    _one_report_of_the_rewrite(caplog, native)
    release.set()
    fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)  # loaded again (the run queued it), from the file as it is now
    assert fresh.baked_loaded(orders)
    assert _run(fresh, orders, 'conclude("baked")') == Completed(answer="baked", stats=ANY)
    assert fresh.runs_served() == {"baked": 1, "generic": 1}


def test_a_pooled_baked_instance_made_before_its_file_was_rewritten_in_place_is_never_served(
    sandbox: Sandbox,
    orders: CompiledContract,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An instance maps its component's pages as a new one would: prepared before the rewrite,
    it is retired when taken, and the run is served by another."""
    fresh, copy = _baking_with_a_copied_cache(orders, tmp_path, monkeypatch, pool_size=1)
    fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)
    fresh.warm(orders)
    entry = fresh._entry(orders)
    # The pool's one instance is baked and warmed (prepare() run while idle); the pool thread waits.
    for _ in range(6000):  # a bound against hanging, not a measure of speed
        if len(entry.pool) == 1 and entry.pool[0].baked and entry.pool[0].prepare is None:
            break
        threading.Event().wait(0.01)
    [pooled] = entry.pool
    assert pooled.baked
    assert pooled.prepare is None
    native = copy.native(fresh._runtime.config_tag)
    _rewrite_in_place(native)
    release = _held_loads(fresh, monkeypatch)

    outcome = _run(fresh, orders, 'conclude("served")')
    assert isinstance(outcome, Completed)
    assert fresh.runs_served() == {"baked": 0, "generic": 1}
    assert pooled not in entry.pool
    _one_report_of_the_rewrite(caplog, native)
    release.set()
    fresh.bake(orders).result(timeout=_BUILD_TIMEOUT)
    assert fresh.baked_loaded(orders)

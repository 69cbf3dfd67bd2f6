"""Running one program in a fresh Wasm instance, with its limits, through the one host import.

Per process there is one engine, one compiled component and one linker (`_Runtime`).
Per run there is one fresh store and instance, used once and dropped. Instances are
instantiated and given their contract surface ahead of time by a background thread
(the pool), so a request pays only for running its program; no instance ever runs a
second program.

No Python exception is ever raised through wasmtime from the host import: wasmtime-py
relays those through a module-level global, which would race between threads. The host
import records why it ends a run on the run's own state and raises a WasmtimeError.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec
import wasmtime
from wasmtime.component import Component, Func, Linker

from charter import _profile
from charter.compiler.artifact import CompiledContract
from charter.errors import UsageError
from charter.gate._protocol import (
    ApprovalPending,
    CallRequest,
    Denied,
    Encoded,
    Gate,
    Malformed,
    OperationFailed,
    RunHalted,
    encode_reply,
)
from charter.principal import Principal
from charter.sandbox import _baked, _component, _wire
from charter.sandbox._classify import classify, decode_conclusion, reject_program
from charter.sandbox._crossing import HostAbort, add_string_result_func, call_strings, deadline_watcher
from charter.sandbox.limits import SandboxLimits
from charter.sandbox.outcomes import (
    CallLimitExceeded,
    Completed,
    Halted,
    Outcome,
    OutputLimitExceeded,
    Paused,
    Refused,
    Stats,
    TimedOut,
    Trapped,
)

__all__ = ["RunContext", "Sandbox"]

# An epoch every 10 ms: CPU and wall limits are whole seconds or tenths, so a limit ends at
# most two ticks late, never early (`_ticks`); a 2 ms tick cost ~6% of charter serve's CPU
# under load (500 wakes/s). Epochs are wall time: at each deadline `_deadline` compares the
# run thread's own CPU time (time.thread_time: wasm runs on the calling thread) with the CPU
# limit and the clock with the wall limit, and lets the guest go on for what is left of each.
_TICK_SECONDS = 0.01
_PREPARE_SECONDS = 30.0
_MAX_POOL = 4  # prepared instances one contract's pool may grow to under demand (memory: goal 5)
_MAX_PREPARED = 16  # prepared instances held in the process at most (up to ~8 MiB each when warmed)
_IDLE_SECONDS = 10.0  # a pool grown by demand steps back after this long without runs
_HOST_INTERFACE = "charter:sandbox/host@0.1.0"
_ABORT_OPERATION = "$abort"
# The guest's conclude()/refuse() sends the conclusion here the moment the program makes
# it; from then on every call is refused (CONCLUDED), whatever the guest runtime does.
_CONCLUDE_OPERATION = "$conclude"
_SHOWN_OPERATION_CHARS = 128


class RunContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a run knows of the world: who it acts for, its clock, its seed. All recorded."""

    principal: Principal
    run_id: str = msgspec.field(default_factory=lambda: secrets.token_hex(16))
    clock: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    seed: int = msgspec.field(default_factory=lambda: secrets.randbits(63))
    inputs: dict[str, str] = msgspec.field(default_factory=dict)  # the program's read-only `inputs`


class _Runtime:
    """The process-wide engine, component and linker, and the epoch ticker.

    The ticker runs only while a run is in flight (`enter`/`leave`): with no traffic no
    thread of the sandbox wakes. Epochs only matter while wasm runs, and every run holds
    the ticker on from before its deadline is armed until its outcome is known.
    """

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.engine, self.config_tag = _component.new_engine()
        self.component: Component = _component.load(self.engine, self.config_tag, progress)
        self.linker = Linker(self.engine)
        with self.linker.root() as root, root.add_instance(_HOST_INTERFACE) as host:
            add_string_result_func(host, "call", _host_call)
        self._in_flight = 0
        self._runs = threading.Condition()
        self.ticker = threading.Thread(target=self._tick, name="charter-epoch", daemon=True)
        self.ticker.start()

    def enter(self) -> None:
        with self._runs:
            self._in_flight += 1
            if self._in_flight == 1:
                self._runs.notify()

    def leave(self) -> bool:
        """One run fewer in flight; True if it was the last."""
        with self._runs:
            self._in_flight -= 1
            return self._in_flight == 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _tick(self) -> None:
        while True:
            with self._runs:
                while self._in_flight == 0:
                    self._runs.wait()
            # Sleeps overshoot under load; catching up keeps one epoch = one tick of wall
            # time. Restarted after each idle spell, so idle time is never caught up on.
            due = time.monotonic() + _TICK_SECONDS
            while self._in_flight:
                time.sleep(max(0.0, due - time.monotonic()))
                now = time.monotonic()
                while due <= now:
                    self.engine.increment_epoch()
                    due += _TICK_SECONDS


@cache
def _runtime(progress: Callable[[str], None] | None) -> _Runtime:
    return _Runtime(progress)


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ticks(seconds: float) -> int:
    # The first tick may come at once after the deadline is armed: one more tick than the
    # limit holds makes a limit end never early, and at most two ticks late (the armed ticks
    # take between n - 1 and n ticks of wall time; CPU time is at most that).
    return max(1, math.ceil(seconds / _TICK_SECONDS)) + 1


@dataclass(slots=True)
class _RunState:
    contract: CompiledContract
    gate: Gate
    context: RunContext
    limits: SandboxLimits
    store: wasmtime.Store
    executor: concurrent.futures.ThreadPoolExecutor
    started: float
    deadline: float
    resumed: float  # the run thread's CPU time (time.thread_time) when the guest last resumed
    cpu_used: float = 0.0  # the guest's CPU seconds up to `resumed`; host calls not counted
    calls: int = 0
    ended_by: Outcome | None = None
    conclusion: Completed | Refused | None = None  # as the host received it; it stands

    def abort(self, outcome: Outcome) -> HostAbort:
        self.ended_by = outcome
        return HostAbort(outcome.message)

    def wall_timeout(self) -> HostAbort:
        return self.abort(TimedOut(limit="wall", seconds=self.limits.wall_seconds))

    def cpu_timeout(self) -> HostAbort:
        return self.abort(TimedOut(limit="cpu", seconds=self.limits.cpu_seconds))

    def at_deadline(self) -> int | None:
        """At an epoch deadline (on the run thread): the ticks the guest may go on for, or
        None once its own CPU time or the wall clock has reached its limit (recorded)."""
        now = time.monotonic()
        cpu = self.cpu_used + time.thread_time() - self.resumed
        if now >= self.deadline:
            self.wall_timeout()
            return None
        if cpu >= self.limits.cpu_seconds:
            self.cpu_timeout()
            return None
        # The guest had at most the ticks' wall time, so its CPU time can't pass the limit
        # before the next deadline by more than two ticks (`_ticks`).
        return _ticks(min(self.limits.cpu_seconds - cpu, self.deadline - now))

    def handle(self, operation: str, arguments: str, line: int) -> tuple[bool, str]:
        now = time.monotonic()
        self.cpu_used += time.thread_time() - self.resumed
        if operation == _ABORT_OPERATION and arguments == '{"reason":"output_limit"}':
            raise self.abort(OutputLimitExceeded(limit_bytes=self.limits.max_output_bytes))
        if now >= self.deadline:
            raise self.wall_timeout()
        if operation == _CONCLUDE_OPERATION and self.conclusion is None:
            reply = self._conclude(arguments)
        else:
            self.calls += 1
            if self.calls > self.limits.max_calls:
                raise self.abort(CallLimitExceeded(limit=self.limits.max_calls))
            reply = self._decide(operation, arguments, line)
        now = time.monotonic()
        if now >= self.deadline:
            raise self.wall_timeout()
        if self.cpu_used >= self.limits.cpu_seconds:
            raise self.cpu_timeout()
        # Host-call time is not the program's: re-arm the epoch deadline with what is left.
        remaining = min(self.limits.cpu_seconds - self.cpu_used, self.deadline - now)
        self.store.set_epoch_deadline(_ticks(remaining))
        self.resumed = time.thread_time()
        return reply

    def _conclude(self, text: str) -> tuple[bool, str]:
        """Take the program's conclusion. The host holds it from now on, and it stands."""
        limit = self.limits.max_conclusion_bytes + self.limits.max_output_bytes
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            message = f"the conclusion is {len(text)} characters; with the output, the limit is {limit} bytes"
            return False, _wire.encode_error("operation_error", "CONCLUSION_TOO_LARGE", message)
        try:
            self.conclusion = decode_conclusion(text)
        except (msgspec.DecodeError, RecursionError) as error:
            message = f"the conclusion is unreadable: {error}"
            return False, _wire.encode_error("operation_error", "MALFORMED_CONCLUSION", message)
        return True, ""

    def _decide(self, operation: str, arguments: str, line: int) -> tuple[bool, str]:
        malformed: Malformed | None = None
        decoded: dict[str, Any] = {}
        try:
            if self.conclusion is not None:
                if len(operation) > _SHOWN_OPERATION_CHARS:
                    operation = operation[:_SHOWN_OPERATION_CHARS] + "…"
                what = "conclude()" if isinstance(self.conclusion, Completed) else "refuse()"
                raise _wire.CallRejected(
                    "CONCLUDED",
                    f"{operation} refused: the program already concluded with {what}; nothing acts after "
                    "the conclusion, and the conclusion stands",
                )
            _wire.check_operation(operation, self.contract.gate.operations, self.contract)
            decoded = _wire.decode_arguments(arguments, self.limits.max_call_bytes)
        except _wire.CallRejected as rejected:
            # Still goes to the gate: a refused call is a decision, and decisions are recorded.
            raw = hashlib.sha256(arguments.encode("utf-8", "surrogatepass")).hexdigest()
            malformed = Malformed(code=rejected.code, message=rejected.message, raw_sha256=raw)
        request = CallRequest(
            run_id=self.context.run_id,
            sequence=self.calls,
            operation=operation,
            arguments=decoded,
            principal=self.context.principal,
            deadline=self.deadline,
            malformed=malformed,
            line=line or None,  # the guest's word, a u32 by the WIT type; 0: it did not say
        )
        future: concurrent.futures.Future[Any] | None = None
        try:
            if self.gate.blocking:
                future = self.executor.submit(self.gate.call, request)
                result = future.result(timeout=self.deadline - time.monotonic())
            else:
                result = self.gate.call(request)
            encoded = result.text if isinstance(result, Encoded) else encode_reply(result)
        except concurrent.futures.TimeoutError:
            # A call still queued never starts; one already in the gate finds the gate closed
            # (Sandbox.run closes it) before it could act.
            if future is not None:
                future.cancel()
            raise self.wall_timeout() from None
        except RunHalted as halted:
            raise self.abort(Halted(code=halted.code, reason=halted.message)) from None
        except ApprovalPending as pending:
            paused = Paused(
                approval_id=pending.approval_id,
                call=pending.call,
                operation=pending.operation,
                reason=pending.reason,
                line=pending.line,
            )
            raise self.abort(paused) from None
        except Denied as denied:
            return False, _wire.encode_error("contract_violation", denied.code, denied.message, denied.boundary)
        except OperationFailed as failed:
            return False, _wire.encode_error("operation_error", failed.code, failed.message)
        except Exception as error:
            # The exception's text is not shown: it may hold whatever the gate or a backend held.
            message = f"{operation} refused: the gate failed ({type(error).__name__}); it was denied, not allowed"
            return False, _wire.encode_error("contract_violation", "GATE_ERROR", message)
        # The contract gate checks size before its Outcome receipt; this bounds any other gate
        # (and replays of logs written before it did).
        if len(encoded) > self.limits.max_result_bytes:
            message = f"{operation} returned {len(encoded)} bytes, above the limit of {self.limits.max_result_bytes}"
            return False, _wire.encode_error("operation_error", "RESULT_TOO_LARGE", message)
        return True, encoded


_current = threading.local()


def _deadline() -> int | None:
    state: _RunState | None = getattr(_current, "state", None)
    if state is None:  # prepare() outside a run: its deadline is final
        return None
    return state.at_deadline()


_watch_deadline = deadline_watcher(_deadline)


def _host_call(operation: str, arguments: str, line: int) -> tuple[bool, str]:
    state: _RunState | None = getattr(_current, "state", None)
    if state is None:  # only prepare() runs without a run, and it makes no calls
        raise HostAbort("host call outside a run")
    try:
        return state.handle(operation, arguments, line)
    except HostAbort:
        raise
    except BaseException as error:  # never through wasmtime, and its text (a backend's) never shown
        raise state.abort(Trapped(reason=f"host error in call {operation!r}: {type(error).__name__}")) from None


@dataclass(slots=True)
class _Prepared:
    store: wasmtime.Store
    run: Func
    source: _baked.LoadedComponent | None  # the baked component it is an instance of; None: generic
    prepare: Func | None = None  # a cold baked instance's prepare(), to warm it while the pool is idle

    @property
    def baked(self) -> bool:
        """An instance of the contract's baked component: prepared at build time."""
        return self.source is not None


@dataclass(slots=True)
class _Contract:
    """One contract's pool of prepared instances, sized to its recent demand."""

    surface_json: str
    surface_key: str  # its baked component's key
    target: int
    pool: deque[_Prepared]
    last_take: float = 0.0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError:
        raise UsageError(f"{name} must be a whole number, got {text!r}") from None


_BAKE_VALUES = {"": None, "1": True, "true": True, "0": False, "false": False}


def _bake_setting() -> bool | None:
    """CHARTER_BAKE: 1/true on, 0/false off, unset or empty: each caller's default."""
    text = os.environ.get("CHARTER_BAKE", "")
    try:
        return _BAKE_VALUES[text.strip().lower()]
    except KeyError:
        raise UsageError(
            f"CHARTER_BAKE must be 1 or true (bake contract components) or 0 or false (don't), got {text!r}"
        ) from None


class Sandbox:
    """Runs programs, each in a fresh Wasm instance, against one compiled contract at a time.

    Instances are prepared ahead by a background thread: `pool_size` per contract at
    first, growing toward demand (one more each time a run finds its pool empty, up to
    `_MAX_POOL`), shrinking back after `_IDLE_SECONDS` without runs, and never more than
    `_MAX_PREPARED` in the process (each holds a few MiB).

    Baking (`bake=True`, default: CHARTER_BAKE=1 or true in the environment, else off; any value but
    0/1/true/false raises UsageError): each
    contract run is queued at first sight for a component with its surface prepared at
    build time (`charter.sandbox._baked`); once loaded, an instance needs only
    instantiation. At most `baked_components` baked components are loaded at once
    (default CHARTER_BAKED_COMPONENTS, else 4; least recently used evicted). Until a
    contract's baked component is loaded, or if it cannot be built, the generic
    component serves. Thread-safe: runs on different threads execute in parallel.
    """

    def __init__(
        self,
        *,
        pool_size: int = 2,
        progress: Callable[[str], None] | None = _stderr_progress,
        bake: bool | None = None,
        baked_components: int | None = None,
    ) -> None:
        setting = _bake_setting()  # checked first: a bad value changes nothing
        self._runtime = _runtime(progress)
        self._pool_size = pool_size
        self._contracts: dict[str, _Contract] = {}
        self._wanted = threading.Condition()
        self._spent: list[_Prepared] = []
        self._served = {"baked": 0, "generic": 0}
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="charter-gate")
        self._bake = bool(setting) if bake is None else bake
        capacity = _env_int("CHARTER_BAKED_COMPONENTS", 4) if baked_components is None else baked_components
        runtime = self._runtime
        self._baked = _baked.BakedComponents(
            runtime.engine, runtime.config_tag, capacity, on_ready=self._baked_ready, report=progress
        )
        if pool_size > 0:
            threading.Thread(target=self._refill, name="charter-pool", daemon=True).start()

    # -- baked components --------------------------------------------------------------

    def bake(self, contract: CompiledContract) -> concurrent.futures.Future[_baked.BakeReport]:
        """Queue `contract`'s baked component (built once into the cache, then loaded).

        The future resolves once it is loaded and serving, with what it cost
        (`BakeReport`), or raises BuildFailed; the generic component serves meanwhile
        and after a failure, which is reported once through `progress`.
        """
        entry = self._entry(contract)
        return self._baked.request(entry.surface_key, entry.surface_json)

    def bake_all(self, contracts: Iterable[CompiledContract]) -> None:
        """Turn baking on (unless CHARTER_BAKE=0 or false) and queue each contract: what `charter serve` does."""
        if _bake_setting() is False:
            return
        self._bake = True
        for contract in contracts:
            self.bake(contract)

    def baked_loaded(self, contract: CompiledContract) -> bool:
        """Whether `contract`'s instances now come from its baked component."""
        return self._baked.get(self._entry(contract).surface_key) is not None

    def runs_served(self) -> dict[str, int]:
        """How many runs this sandbox served from each kind of instance: {"baked": n, "generic": n}."""
        return dict(self._served)

    def _baked_ready(self, key: str) -> None:
        # Instances prepared from the generic component are retired: the refill replaces
        # them at once with instances of the baked one, which cost a fraction to make.
        with self._wanted:
            for entry in self._contracts.values():
                if entry.surface_key == key:
                    kept = [prepared for prepared in entry.pool if prepared.baked]
                    self._spent.extend(prepared for prepared in entry.pool if not prepared.baked)
                    entry.pool.clear()
                    entry.pool.extend(kept)
            self._wanted.notify()

    # -- instances -------------------------------------------------------------------

    def _prepare(self, entry: _Contract, *, warm: bool = True) -> _Prepared:
        """A fresh instance for `entry`'s contract. A baked one needs no prepare(); with
        `warm` (off the request path) it still gets one, which only runs the warm-up and so
        moves the first run's copy-on-write page faults out of the run."""
        runtime = self._runtime
        store = wasmtime.Store(runtime.engine)
        _watch_deadline(store)
        store.set_epoch_deadline(_ticks(_PREPARE_SECONDS))
        baked = self._baked.current(entry.surface_key)
        with _profile.component("sandbox.instantiate"):
            instance = runtime.linker.instantiate(store, runtime.component if baked is None else baked.component)
        run = instance.get_func(store, "run")
        if run is None:
            raise UsageError("the sandbox component lacks its exports; rebuild it with `charter sandbox build`")
        prepared = _Prepared(store=store, run=run, source=baked)
        if baked is None or warm:
            prepare = instance.get_func(store, "prepare")
            if prepare is None:
                raise UsageError("the sandbox component lacks its exports; rebuild it with `charter sandbox build`")
            self._call_prepare(prepared, prepare, entry.surface_json)
        else:
            prepared.prepare = instance.get_func(store, "prepare")
        return prepared

    @staticmethod
    def _call_prepare(prepared: _Prepared, prepare: Func, surface_json: str) -> None:
        with _profile.component("sandbox.prepare"):
            failure = prepare(prepared.store, surface_json)
        if failure is not None:
            raise UsageError(f"the sandbox could not load the contract surface: {failure}")

    def _refill(self) -> None:
        while True:
            with self._wanted:
                spent = list(self._spent)
                self._spent.clear()
                held = sum(len(entry.pool) for entry in self._contracts.values())
                short = [e for e in self._contracts.values() if len(e.pool) < e.target]
                if held >= _MAX_PREPARED:
                    short = []
                # Warming a cold baked instance costs more CPU (~4 ms) than it saves its run
                # (~1 ms of copy-on-write faults): worth it only while no run wants the CPU.
                cold = None if short or spent or self._runtime.in_flight else self._take_cold()
                if not short and not spent and cold is None:
                    grown = any(e.target > self._pool_size for e in self._contracts.values())
                    # Wake again only while some pool is above its base size, to shrink it.
                    if not self._wanted.wait(_IDLE_SECONDS if grown else None) and grown:
                        self._shrink()
                    continue
            del spent  # the used instances are freed here, off the request path
            if cold is not None:
                self._warm_cold(*cold)
            for entry in short:
                try:
                    # Cold (baked: instantiation only) so the pool keeps up with runs arriving
                    # back to back; warmed above once no run is in flight.
                    prepared = self._prepare(entry, warm=False)
                except Exception:
                    time.sleep(0.1)
                    continue
                if not prepared.baked and self._baked.get(entry.surface_key) is not None:
                    self._retire(prepared)  # its baked component arrived meanwhile
                else:
                    entry.pool.append(prepared)

    def _take_cold(self) -> tuple[_Contract, _Prepared] | None:
        # Called with self._wanted held. A cold instance's first run pays the copy-on-write
        # faults of the pages it writes (~1 ms); prepare() on a baked instance runs the
        # warm-up instead, off the request path. It leaves the pool while it is warmed.
        for entry in self._contracts.values():
            for prepared in list(entry.pool):
                if prepared.prepare is not None:
                    try:
                        entry.pool.remove(prepared)
                    except ValueError:
                        continue  # a run took it meanwhile
                    return entry, prepared
        return None

    def _warm_cold(self, entry: _Contract, prepared: _Prepared) -> None:
        prepare, prepared.prepare = prepared.prepare, None
        assert prepare is not None
        try:
            self._call_prepare(prepared, prepare, entry.surface_json)
        except Exception:
            self._retire(prepared)
            return
        entry.pool.appendleft(prepared)  # the next run takes it

    def _shrink(self) -> None:
        # Called with self._wanted held: pools idle for a while step back toward their base.
        now = time.monotonic()
        for entry in self._contracts.values():
            if entry.target > self._pool_size and now - entry.last_take >= _IDLE_SECONDS:
                entry.target -= 1
                while len(entry.pool) > entry.target:
                    self._spent.append(entry.pool.pop())

    def _entry(self, contract: CompiledContract) -> _Contract:
        entry = self._contracts.get(contract.sha256)
        if entry is None:
            surface = msgspec.json.encode(contract.surface).decode("utf-8")
            fresh = _Contract(surface, _baked.surface_key(surface), self._pool_size, deque())
            with self._wanted:
                entry = self._contracts.setdefault(contract.sha256, fresh)
        return entry

    def _pool(self, contract: CompiledContract) -> _Contract:
        entry = self._entry(contract)
        if self._bake and self._baked.get(entry.surface_key) is None:
            # Queued at first sight; after an eviction, loaded again from the cache.
            self._baked.request(entry.surface_key, entry.surface_json)
        return entry

    def _take(self, contract: CompiledContract) -> _Prepared:
        entry = self._pool(contract)
        entry.last_take = time.monotonic()
        while True:
            try:
                prepared = entry.pool.popleft()
            except IndexError:
                # The pool ran dry (a burst, or pool_size=0): prepare on the request path, and
                # keep one more ready from now on. A baked instance is used cold: warming it
                # would cost the request more than the faults its run takes.
                if self._pool_size > 0 and entry.target < _MAX_POOL:
                    entry.target += 1
                prepared = self._prepare(entry, warm=False)
            if prepared.source is None or not prepared.source.changed_in_place():
                break
            # Made before its component's native file was rewritten in place: its mapped pages
            # may have changed under it. Never served; the component is dropped (reported once,
            # by `current`) and the next instance is generic until it is loaded again.
            self._baked.current(entry.surface_key)
            self._retire(prepared)
        self._served["baked" if prepared.baked else "generic"] += 1  # a statistic: racing threads may lose one
        return prepared

    def _retire(self, prepared: _Prepared) -> None:
        # Called once the outcome is known. Tearing a used instance down (unmapping its
        # memory) and preparing its replacement both happen on the pool thread, so
        # neither competes with the run.
        if self._pool_size > 0:
            with self._wanted:
                self._spent.append(prepared)
                self._wanted.notify()

    def warm(self, contract: CompiledContract, timeout: float = 60.0) -> None:
        """Fill this contract's pool now rather than on its first run."""
        entry = self._pool(contract)
        with self._wanted:
            self._wanted.notify()
        give_up = time.monotonic() + timeout
        while len(entry.pool) < min(entry.target, self._pool_size) and time.monotonic() < give_up:
            time.sleep(0.001)

    # -- runs ------------------------------------------------------------------------

    def run(
        self,
        program: str,
        *,
        contract: CompiledContract,
        gate: Gate,
        context: RunContext,
        limits: SandboxLimits | None = None,
    ) -> Outcome:
        """Run `program` once in a fresh instance. Never raises for anything the program does."""
        limits = limits or SandboxLimits.from_contract(contract.gate.limits)
        started = time.monotonic()
        rejected = reject_program(program, limits)
        if rejected is not None:
            return rejected
        runtime = self._runtime
        runtime.enter()  # the epoch ticker runs while any run is in flight
        try:
            return self._run(program, contract, gate, context, limits, started)
        finally:
            if runtime.leave() and self._pool_size > 0:
                with self._wanted:  # no run in flight: the pool may warm its cold instances now
                    self._wanted.notify()

    def _run(
        self,
        program: str,
        contract: CompiledContract,
        gate: Gate,
        context: RunContext,
        limits: SandboxLimits,
        started: float,
    ) -> Outcome:
        prepared = self._take(contract)
        store = prepared.store
        store.set_limits(memory_size=limits.memory_bytes)
        guest_context = _guest_context(context, limits)
        state = _RunState(
            contract=contract,
            gate=gate,
            context=context,
            limits=limits,
            store=store,
            executor=self._executor,
            started=started,
            deadline=started + limits.wall_seconds,
            resumed=time.thread_time(),
        )
        store.set_epoch_deadline(_ticks(min(limits.cpu_seconds, limits.wall_seconds)))
        _current.state = state
        try:
            with _profile.component("guest"):
                raw: str | None = call_strings(prepared.run, store, program, guest_context)
            trap: str | None = None
        except wasmtime.WasmtimeError as error:
            raw, trap = None, str(error)
        finally:
            _current.state = None
        ended = time.monotonic()
        state.cpu_used += time.thread_time() - state.resumed
        stats = Stats(calls=state.calls, wall_ms=(ended - started) * 1000, cpu_ms=state.cpu_used * 1000)
        outcome = msgspec.structs.replace(classify(raw, trap, state, ended), stats=stats)
        _close(gate, outcome)
        self._retire(prepared)
        return outcome


def _close(gate: Gate, outcome: Outcome) -> None:
    """Tell the gate the run is over: a call still on a worker thread must not act now."""
    close: Callable[[str], None] | None = getattr(gate, "close", None)
    if close is not None:
        close(f"the run had ended ({outcome.__struct_config__.tag}: {outcome.message})")


def _guest_context(context: RunContext, limits: SandboxLimits) -> str:
    # Fields separated by \x1f: cheaper for the guest to read than JSON, and unambiguous
    # because principal ids and scopes may not contain control characters.
    principal = context.principal
    for text in (principal.id, *principal.scopes):
        if not text or not text.isprintable():
            raise UsageError(f"principal id and scopes must be non-empty printable text, got {text!r}")
    # The inputs cross as one JSON field: ensure_ascii escapes every control character.
    inputs = json.dumps(context.inputs, ensure_ascii=True) if context.inputs else ""
    fields = [str(context.seed), repr(context.clock.timestamp()), str(limits.max_output_bytes), inputs, principal.id]
    return "\x1f".join(fields + sorted(principal.scopes))

"""The guest runtime: runs inside the Wasm component, one program per instance.

The module's top level runs at build time (componentize-py snapshots the memory
afterwards), so every module a program may import is imported here, once, and is
already in memory when a run starts. Nothing else can be imported at run time: the
component carries no file system to import from.

Everything this runtime returns is untrusted by the host: a program runs in the same
interpreter and could rewrite any of it. The host re-checks every call and every outcome.
"""

import gc
import json
import linecache
import os
import sys
from types import MappingProxyType

# The modules a program may import: read from the policy at build time, imported now.
with open(os.path.join(os.path.dirname(__file__), "..", "policy.json"), encoding="utf-8") as _policy:
    ALLOWED_MODULES = tuple(json.load(_policy)["allowed_modules"])
for _name in ALLOWED_MODULES:
    __import__(_name)
import _strptime  # noqa: E402, F401 - datetime.strptime imports it lazily; run time cannot

import wit_world  # noqa: E402
from componentize_py_types import Err  # noqa: E402
from wit_world.imports import host  # noqa: E402

from . import _confine, _plain, _proxies  # noqa: E402

_PROGRAM_FILE = _proxies.PROGRAM_FILE
_MAX_MESSAGE = 2000
_MAX_FRAMES = 20


_WARM_UP_PROGRAM = """
values = [1, 2.5, "text", None, {"key": (1, 2)}]
def describe(items):
    return ", ".join(str(item) for item in items)
print(describe(values))
try:
    raise ValueError("warm")
except ValueError as error:
    message = str(error)
conclude("warm", data={"values": values, "message": message})
"""
_WARM_UP_CONTEXT = '0\x1f946684800.0\x1f4096\x1f{"name": "value"}\x1fwarm-up\x1fscope'


class _Concluded(BaseException):
    """Raised by conclude()/refuse() to end the program at once."""


class _Output:
    """sys.stdout and sys.stderr of a run: a buffer with a byte budget."""

    def __init__(self, limit):
        self.parts = []
        self.size = 0
        self.limit = limit

    def write(self, text):
        data = str(text).encode("utf-8", "replace")
        if self.size + len(data) > self.limit:
            self.parts.append(data[: self.limit - self.size])
            self.size = self.limit
            # A program can catch any exception, so the limit ends the run through the
            # host, where it cannot be caught.
            host.call("$abort", '{"reason":"output_limit"}', 0)
        self.parts.append(data)
        self.size += len(data)
        return len(text)

    def flush(self):
        pass

    def text(self):
        return b"".join(self.parts).decode("utf-8", "replace")


class _Run:
    """The state of the one run: what conclude()/refuse() recorded, and its output."""

    warming = False  # the warm-up run in prepare(): there is no run on the host to tell

    def __init__(self):
        self.reset()

    def reset(self):
        self.status = None
        self.fields = None  # the conclusion's JSON fields as the host received them
        self.output = None


_RUN = _Run()


def conclude(answer, data=None):
    """End the program with its answer (text for the caller) and optional data."""
    if type(answer) is not str:
        raise TypeError("conclude(answer, data=None): the answer is text for the caller; put values in data=")
    _end(_RUN, "completed", answer, data)


def refuse(reason):
    """End the program declining the request, with the reason in the contract's terms."""
    if type(reason) is not str:
        raise TypeError("refuse(reason): the reason is text for the caller")
    _end(_RUN, "refused", reason, None)


def _line_of(source_lines, number):
    if number and 0 < number <= len(source_lines):
        return source_lines[number - 1].strip()
    return ""


def _safe_text(value, limit=_MAX_MESSAGE):
    # A program's exception may define __str__ to loop forever or raise; only text the
    # runtime can read without running program code is used.
    kind = type(value)
    if kind is str:
        return value[:limit]
    if kind in (bool, float, type(None)) or (kind is int and value.bit_length() < 64):
        return repr(value)
    return f"<{kind.__name__} object>"


def _message_of(error):
    args = error.args if isinstance(getattr(error, "args", None), tuple) else ()
    if len(args) == 1:
        return _safe_text(args[0])
    if not args:
        return ""
    return _safe_text(", ".join(_safe_text(a, 200) for a in args))


def _frames(error, source_lines):
    frames = []
    tb = error.__traceback__
    while tb is not None and len(frames) < _MAX_FRAMES:
        code = tb.tb_frame.f_code
        if code.co_filename == _PROGRAM_FILE:
            frames.append(
                {"line": tb.tb_lineno, "function": code.co_name, "text": _line_of(source_lines, tb.tb_lineno)}
            )
        tb = tb.tb_next
    return frames


def _program_error(error, source_lines):
    frames = _frames(error, source_lines)
    outcome = {
        "status": "program_error",
        "error_type": type(error).__name__[:100],
        "error_message": _message_of(error),
        "line": frames[-1]["line"] if frames else None,
        "traceback": frames,
    }
    if isinstance(error, _proxies.ContractViolation):
        outcome["violation"] = {
            "code": _safe_text(error.code, 100),
            "operation": _safe_text(error.operation, 200),
            "boundary": None if error.boundary is None else _safe_text(error.boundary, 200),
        }
    return outcome


def _syntax_error(error, source_lines):
    line = error.lineno if type(error.lineno) is int else None
    return {
        "status": "syntax_error",
        "error_type": type(error).__name__,
        "error_message": _safe_text(error.msg),
        "line": line,
        "column": error.offset if type(error.offset) is int else None,
        "text": _line_of(source_lines, line),
    }


class WitWorld(wit_world.WitWorld):
    namespace = None  # the one program's globals, built by prepare()
    baked = None  # the surface prepared at build time, in a baked component

    def prepare(self, surface):
        if WitWorld.baked is not None:
            # A baked instance is prepared already. prepare() arms its confinement and runs
            # the warm-up once more: that writes (copy-on-write faults) the pages a run
            # writes, off the request path, as a generic instance's prepare() does.
            if surface == WitWorld.baked:
                if WitWorld.unconfined:
                    WitWorld._confine_now()
                WitWorld._warm_up(WitWorld.namespace)
                return
            raise Err("this component is baked for another contract surface; use the generic one")
        WitWorld._prepare(surface)
        _confine.install_audit_hook()
        _confine.refuse_host_functions()

    @staticmethod
    def _prepare(surface):
        try:
            namespace = _proxies.build(json.loads(surface), host.call, Err)
        except Exception as error:
            raise Err(f"cannot build proxies from the contract surface: {type(error).__name__}: {error}") from None
        namespace.update(
            __builtins__=_confine.program_builtins(ALLOWED_MODULES),
            __name__="__program__",
            ContractViolation=_proxies.ContractViolation,
            OperationError=_proxies.OperationError,
            conclude=conclude,
            refuse=refuse,
            principal=None,
            inputs=None,
        )
        # Source lines come from the program text; looking a file up would need a file system.
        linecache.updatecache = lambda filename, module_globals=None: []
        linecache.checkcache = lambda filename=None: None
        WitWorld._warm_up(namespace)

    @staticmethod
    def _warm_up(namespace):
        # Warm-up, off the request path: one run of a fixed program of the runtime's own
        # (never a caller's) through the same code a real run takes, so the instance's
        # first real run does not pay for first-use costs. It runs in a copy of the
        # namespace, and every piece of run state is set afresh by the real run.
        WitWorld.namespace = dict(namespace)
        _Run.warming = True
        WitWorld().run(_WARM_UP_PROGRAM, _WARM_UP_CONTEXT)
        _Run.warming = False
        _RUN.reset()
        _proxies.SESSION.concluded = False
        WitWorld.namespace = namespace
        # Everything so far lives as long as the instance: keep the collector off it.
        gc.freeze()

    unconfined = False  # a baked instance: its confinement is armed by its run(), see the module's end

    @staticmethod
    def _confine_now():
        _confine.arm()
        WitWorld.unconfined = False

    def run(self, program, context):
        if WitWorld.unconfined:
            WitWorld._confine_now()  # before anything of the program's runs
        try:
            outcome = _execute(program, context)
            if outcome["status"] == "concluded":
                # Built from the text the host already holds: nothing of the program's runs.
                text = f'{{{outcome["fields"]},"output":{_quote(outcome["output"])}}}'
            else:
                text = json.dumps(outcome, ensure_ascii=False, allow_nan=False)
        except BaseException as error:
            # Whatever the program left behind (a finalizer, a hook, a rewritten runtime)
            # ends here as an error the host can read, never as an opaque trap.
            text = json.dumps(
                {
                    "status": "program_error",
                    "error_type": "RuntimeFailure",
                    "error_message": (
                        "the runtime could not report how the program ended "
                        f"({_safe_text(type(error).__name__, 100)}: {_message_of(error)})"
                    ),
                    "line": None,
                    "traceback": [],
                    "output": "",
                }
            )
        # Lone surrogates cannot cross as a WIT string; replace them rather than trap.
        return text.encode("utf-8", "replace").decode("utf-8")


_quote = json.encoder.encode_basestring


def _execute(program, context):
    # context: seed, clock (epoch seconds), output limit, inputs (JSON, ASCII-escaped, or ""),
    # principal id, then its scopes; separated by \x1f (the host refuses control characters
    # in principal ids and scopes).
    seed, clock, max_output, inputs, principal_id, *scopes = context.split("\x1f")
    _confine.CLOCK.epoch = float(clock)
    _confine.reseed(int(seed))
    output = _Output(int(max_output))
    sys.stdout = sys.stderr = output
    _RUN.output = output
    namespace = WitWorld.namespace
    namespace["principal"] = _Principal(principal_id, tuple(scopes))
    namespace["inputs"] = MappingProxyType(json.loads(inputs) if inputs else {})
    try:
        code = compile(program, _PROGRAM_FILE, "exec", dont_inherit=True)
    except SyntaxError as error:
        outcome = _syntax_error(error, program.splitlines())
    except (ValueError, MemoryError, RecursionError) as error:
        outcome = {
            "status": "syntax_error",
            "error_type": type(error).__name__,
            "error_message": _message_of(error),
            "line": None,
            "column": None,
            "text": "",
        }
    else:
        outcome = _run_code(code, namespace, _RUN, program)
    outcome["output"] = output.text()
    return outcome


def _run_code(code, namespace, run, program):
    try:
        exec(code, namespace)
    except _Concluded:
        pass
    except MemoryError as error:
        # The allocator raises a bare MemoryError; one with a message is the interpreter
        # refusing something (e.g. "Parser stack overflowed"), an error of the program.
        if not error.args:
            return {"status": "memory_limit"}
        if run.fields is None:
            return _program_error(error, program.splitlines())
    except BaseException as error:
        if run.fields is None:
            return _program_error(error, program.splitlines())
    if run.fields is None:
        return {
            "status": "program_error",
            "error_type": "NoConclusion",
            "error_message": "the program ended without calling conclude(answer) or refuse(reason)",
            "line": None,
            "traceback": [],
        }
    return {"status": "concluded", "fields": run.fields}


def _end(run, status, answer, data):
    if run.status is not None:
        raise RuntimeError("the program already concluded; conclude() or refuse() ends it once")
    # The data is copied to plain values now, while the program may still catch an error
    # in it, and the conclusion goes to the host at once: from then on the host refuses
    # every call, and nothing of the program's runs to encode the outcome (`_plain`).
    if status == "completed":
        try:
            plain = _plain.copy(data)
        except (TypeError, ValueError, RecursionError) as error:
            said = _safe_text(error.args[0] if error.args else "")
            raise type(error)(f"the conclusion cannot be encoded as JSON: {said}") from None
        fields = f'"status":"completed","answer":{_quote(answer)},"data":{_plain.encode(plain)}'
    else:
        fields = f'"status":"refused","reason":{_quote(answer)}'
    text = f'{{{fields},"output":{_quote(run.output.text())}}}'
    # Lone surrogates cannot cross as a WIT string; replace them rather than trap.
    text = text.encode("utf-8", "replace").decode("utf-8")
    if not run.warming:
        try:
            host.call("$conclude", text, 0)
        except Err as refused:
            raise ValueError(_message_from_host(refused.value)) from None
    run.status, run.fields = status, fields
    _proxies.SESSION.concluded = True
    raise _Concluded


def _message_from_host(raw):
    try:
        return json.loads(raw)["message"]
    except Exception:
        return f"the host refused the conclusion: {_safe_text(raw, 200)}"


class _Principal:
    __slots__ = ("id", "scopes")

    def __init__(self, principal_id, scopes):
        self.id = principal_id
        self.scopes = scopes

    def __repr__(self):
        return f"Principal(id={self.id!r}, scopes={self.scopes!r})"


# A baked build: the host wrote a contract's surface beside this package before
# componentize-py ran. Preparing now puts the prepared interpreter (proxies, confinement,
# warm-up) in the snapshot, so an instance of this component needs no prepare() call.
_BAKED_SURFACE = os.path.join(os.path.dirname(__file__), "..", "baked_surface.json")
if os.path.exists(_BAKED_SURFACE):
    with open(_BAKED_SURFACE, encoding="utf-8") as _baked:
        _surface = _baked.read()
    WitWorld._prepare(_surface)
    WitWorld.baked = _surface
    # componentize-py still uses os (unsetenv) after this top level: the confinement is
    # installed now but armed by the instance's one run() call, first thing (`_confine.arm`).
    _confine.install_audit_hook(armed=False)
    _confine.refuse_host_functions(deferred=True)
    WitWorld.unconfined = True
    gc.freeze()
else:
    gc.collect()
    gc.freeze()

"""What a program sees instead of the interpreter's own builtins, modules, clock and randomness.

This layer is not the security boundary. The component has no WASI imports, so the
interpreter cannot reach a file, a socket, a clock or the environment whatever a
program does; its one import is the host's `call`, which the host checks. This layer
exists so that a program trying something forbidden gets a clear Python exception
instead of a trap, and so that time and randomness come from the run's context (which
is recorded, so a run can be replayed).
"""

import builtins
import datetime as _datetime
import random as _random
import sys
import time as _time
import types

__all__ = ["RunClock", "arm", "install_audit_hook", "program_builtins", "refuse_host_functions", "reseed"]


class RunClock:
    """The virtual clock of one run: the instant the host recorded when the run began.

    It does not advance during the run, so a program sees one consistent 'now' and a
    replay sees the same one.
    """

    def __init__(self):
        self.epoch = 0.0

    @property
    def utc(self):
        return _datetime.datetime.fromtimestamp(self.epoch, _datetime.UTC)


CLOCK = RunClock()


def _unavailable(what, why):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{what} is not available in a Charter program: {why}")

    refuse.__name__ = what.rsplit(".", 1)[-1]
    return refuse


def _copy_public(source, facade):
    for name in dir(source):
        if not name.startswith("__"):
            setattr(facade, name, getattr(source, name))


def _time_facade():
    module = types.ModuleType("time", "The run's virtual clock (see charter docs: Sandbox).")
    now = lambda: CLOCK.epoch  # noqa: E731
    now_ns = lambda: int(CLOCK.epoch * 1_000_000_000)  # noqa: E731
    module.time = now
    module.time_ns = now_ns
    # Monotonic clocks measure elapsed time; in a run whose clock stands still that is 0.
    module.monotonic = module.perf_counter = module.process_time = lambda: 0.0
    module.monotonic_ns = module.perf_counter_ns = module.process_time_ns = lambda: 0
    module.sleep = _unavailable("time.sleep", "a run never waits; its clock is virtual and stands still")
    module.gmtime = module.localtime = lambda secs=None: _time.gmtime(CLOCK.epoch if secs is None else secs)
    module.strftime = lambda fmt, t=None: _time.strftime(fmt, module.gmtime() if t is None else t)
    module.strptime = _time.strptime
    module.struct_time = _time.struct_time
    module.timezone = module.altzone = 0
    module.daylight = 0
    module.tzname = ("UTC", "UTC")
    return module


class _SameClassAsReal(type):
    # datetime values returned by proxies are real datetimes; isinstance checks against
    # the facade classes must still say yes.
    def __instancecheck__(cls, instance):
        return isinstance(instance, cls.__mro__[1])

    def __subclasscheck__(cls, subclass):
        return issubclass(subclass, cls.__mro__[1])


def _datetime_facade():
    module = types.ModuleType("datetime", _datetime.__doc__)
    _copy_public(_datetime, module)

    class datetime(_datetime.datetime, metaclass=_SameClassAsReal):
        @classmethod
        def now(cls, tz=None):
            return CLOCK.utc.replace(tzinfo=None) if tz is None else CLOCK.utc.astimezone(tz)

        @classmethod
        def utcnow(cls):
            return CLOCK.utc.replace(tzinfo=None)

        @classmethod
        def today(cls):
            return CLOCK.utc.replace(tzinfo=None)

    class date(_datetime.date, metaclass=_SameClassAsReal):
        @classmethod
        def today(cls):
            return CLOCK.utc.date()

    module.datetime = datetime
    module.date = date
    return module


class _RunSeed:
    value = 0
    made = 0  # Random() instances made without a seed in this run


class _SeededRandom(_random.Random):
    # Random() with no seed would read the host's entropy; here it derives from the run's seed.
    def __init__(self, x=None):
        if x is None:
            _RunSeed.made += 1
            x = f"{_RunSeed.value}/{_RunSeed.made}"
        super().__init__(x)

    def seed(self, a=None, version=2):
        super().seed(f"{_RunSeed.value}/seed" if a is None else a, version)


def _random_facade():
    module = types.ModuleType("random", _random.__doc__)

    # Seeding costs more than most programs spend on randomness, so it happens on first use.
    def first_use(name):
        _random._inst.seed(_RunSeed.value)
        _copy_public(_random, module)
        module.Random = _SeededRandom
        module.SystemRandom = _unavailable("random.SystemRandom", "randomness comes from the run's seed")
        module.seed = lambda a=None, version=2: _random._inst.seed(
            f"{_RunSeed.value}/seed" if a is None else a, version
        )
        del module.__getattr__
        return getattr(module, name)

    module.__getattr__ = first_use
    return module


def reseed(seed):
    _RunSeed.value = seed
    _RunSeed.made = 0


def program_builtins(allowed_modules):
    """The builtins a program runs with: the interpreter's own, minus the ways out."""
    allowed = frozenset(allowed_modules)
    facades = {"time": _time_facade(), "datetime": _datetime_facade(), "random": _random_facade()}
    real_import = builtins.__import__
    listed = ", ".join(sorted(allowed))

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            raise ImportError("relative imports are not available in a Charter program", name=name)
        if name not in allowed:
            raise ImportError(
                f"import of {name!r} is not allowed in a Charter program; allowed modules: {listed}", name=name
            )
        facade = facades.get(name)
        if facade is not None:
            return facade
        return real_import(name, globals, locals, fromlist, level)

    namespace = dict(vars(builtins))
    for name in ("exit", "quit", "help", "copyright", "credits", "license", "breakpoint"):
        namespace.pop(name, None)
    namespace["__import__"] = guarded_import
    namespace["open"] = _unavailable("open()", "a program has no filesystem; use the contract's operations")
    namespace["input"] = _unavailable("input()", "a program has no terminal")
    return namespace


# Events of interpreter features that would reach outside. Without WASI they would trap;
# the hook turns them into an exception the program can read.
_BLOCKED_PREFIXES = ("open", "os.", "subprocess.", "socket.", "ctypes.", "shutil.", "import", "urllib.", "glob.")


class _Hook:
    armed = False  # off while a baked component is built: componentize-py still uses os after the guest's top level


def install_audit_hook(armed=True):
    _Hook.armed = armed

    def audit(event, args):
        if _Hook.armed and event.startswith(_BLOCKED_PREFIXES):
            if event == "import":
                raise ImportError(f"module {args[0]!r} is not available in a Charter program", name=args[0])
            raise PermissionError(f"{event} is not available in a Charter program: it has no host access")

    sys.addaudithook(audit)


# Functions of `os` (the `posix` module) that compute and never ask the system. Every
# other one would reach a WASI function the component stubs out, which traps the whole
# instance (wasm `unreachable`) with no word of why. A program reaches them past the
# import guard (through a function's __globals__, __subclasses__, sys.modules...), so
# the module itself is changed: each becomes a PermissionError the program can catch.
_PURE_OS = frozenset(
    {
        "fspath",
        "strerror",
        "major",
        "minor",
        "makedev",
        "register_at_fork",
        "WCOREDUMP",
        "WEXITSTATUS",
        "WIFCONTINUED",
        "WIFEXITED",
        "WIFSIGNALED",
        "WIFSTOPPED",
        "WSTOPSIG",
        "WTERMSIG",
        "_path_normpath",
        "_path_splitroot_ex",
    }
)
# The interpreter's own clocks (a program's `time` is the facade above, the run's clock).
_HOST_CLOCKS = (
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "process_time",
    "process_time_ns",
    "thread_time",
    "thread_time_ns",
    "clock_gettime",
    "clock_gettime_ns",
    "clock_getres",
    "sleep",
)


def _no_host_access(what):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{what} is not available in a Charter program: it has no host access")

    refuse.__name__ = what.rsplit(".", 1)[-1]
    return refuse


# What componentize-py itself calls after the guest's top level ran (it clears the
# environment before the snapshot): a baked build refuses these at its first run instead.
_USED_BY_THE_BUILD = frozenset({"unsetenv", "putenv"})


def refuse_host_functions(deferred=False):
    """Refuse the host functions of `os`; deferred=True leaves those the build still uses (see `arm`)."""
    import os
    import posix

    for name in dir(posix):
        value = getattr(posix, name)
        if type(value) is not types.BuiltinFunctionType or name in _PURE_OS:
            continue
        if deferred and name in _USED_BY_THE_BUILD:
            continue
        refusal = _no_host_access(f"os.{name}")
        setattr(posix, name, refusal)
        if getattr(os, name, None) is value:
            setattr(os, name, refusal)
    # random imported os.urandom under its own name, for SystemRandom.
    _random._urandom = _no_host_access("os.urandom")
    for name in _HOST_CLOCKS:
        if hasattr(_time, name):
            setattr(_time, name, _no_host_access(f"the interpreter's own time.{name}"))


def arm():
    """The rest of the confinement a baked build deferred: cheap, done by the instance's run()."""
    import os
    import posix

    for name in _USED_BY_THE_BUILD:
        if hasattr(posix, name):
            refusal = _no_host_access(f"os.{name}")
            setattr(posix, name, refusal)
            setattr(os, name, refusal)
    _Hook.armed = True

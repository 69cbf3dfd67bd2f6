"""Typed proxies built from a compiled contract's surface, and the exceptions a call raises.

A program calls `orders.get_order(id=123)`; the proxy checks the arguments against
the surface (for a readable error in the program, not for safety: the host checks
everything again), sends them through the one host import, and turns the JSON answer
into records whose fields are attributes. Money arrives as Decimal, datetimes as
datetime, dates as datetime.date, states and enum values as strings.
"""

import datetime
import decimal
import difflib
import json
import sys

__all__ = ["FIELD_GETTERS", "Contract", "ContractViolation", "OperationError", "Record", "build"]

# record type -> ((field, getter), ...): the slot descriptors as the runtime made them. A
# program can replace a record class's attributes; these stay what they were, so copying
# a record (a conclusion's data) never runs a property or method of the program's.
FIELD_GETTERS = {}


class ContractViolation(Exception):
    """The contract forbids this call; nothing reached the system.

    `code` is the gate's reason code, `reason` the contract's own words, `boundary` the
    id of the hard boundary involved (or None), `operation` the call refused.
    """

    def __init__(self, reason, *, code, operation, boundary=None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.operation = operation
        self.boundary = boundary


class OperationError(Exception):
    """The system behind the contract failed to perform an allowed call."""

    def __init__(self, message, *, code, operation):
        super().__init__(message)
        self.message = message
        self.code = code
        self.operation = operation


class Record:
    """A value of one of the contract's record types: read-only fields as attributes."""

    __slots__ = ()
    # Dunder names: the checker refuses field names that start with '__', so no field clashes.
    __record_fields__ = ()

    def __init__(self, /, **fields):  # positional-only: a field may be named `self`
        for name in self.__record_fields__:
            object.__setattr__(self, name, fields.get(name))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only: it is what the system returned")

    def __eq__(self, other):
        return type(other) is type(self) and _as_dict(self) == _as_dict(other)

    __hash__ = None

    def __repr__(self):
        inner = ", ".join(f"{name}={value!r}" for name, value in _as_dict(self).items())
        return f"{type(self).__name__}({inner})"

    def to_dict(self):
        # A record with a field named `to_dict` shows that field instead; _as_dict always works.
        return _as_dict(self)


def _as_dict(record):
    return {name: object.__getattribute__(record, name) for name in type(record).__record_fields__}


class _Invalid(Exception):
    """An argument that does not have its declared type; the proxy raises it as ContractViolation."""


_PLAIN = {"str": (str, "a str"), "int": (int, "an int"), "bool": (bool, "a bool")}
_MAX_INT = 2**63 - 1
# The host refuses arguments nested deeper than this (charter.sandbox._wire); the proxy
# says so first, as INVALID_ARGUMENTS, for values of recursive record types.
_MAX_DEPTH = 16


def _shown(value):
    return type(value).__name__


class _Types:
    """Checkers (program value, where -> JSON value) and decoders (JSON value -> program value).

    Records may refer to themselves or each other (through an optional or a list), so a
    record's field checkers and decoders are built on first use, once per record type.
    """

    def __init__(self, surface):
        self.enums = {name: tuple(values) for name, values in surface["enums"].items()}
        self.record_fields = surface["records"]
        self.records = {}
        for name, fields in surface["records"].items():
            record_type = type(name, (Record,), {"__slots__": tuple(fields), "__record_fields__": tuple(fields)})
            self.records[name] = record_type
            FIELD_GETTERS[record_type] = tuple((f, record_type.__dict__[f].__get__) for f in fields)
        self._record_checks = {}
        self._record_decoders = {}

    def checker(self, ref):
        kind = ref["kind"]
        if kind == "list":
            item = self.checker(ref["item"])

            def check(value, where):
                if not isinstance(value, list | tuple):
                    raise _Invalid(f"{where} must be a list, not {_shown(value)}")
                return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

        elif kind == "record":
            check = self._record_checker(ref["name"])

        elif kind == "enum":
            members = self.enums[ref["name"]]

            def check(value, where):
                if type(value) is not str or value not in members:
                    raise _Invalid(f"{where} must be one of {', '.join(members)}; got {value!r}")
                return value

        else:
            check = self._scalar_checker(kind)
        if not ref.get("optional", False):
            return check

        def check_optional(value, where):
            return None if value is None else check(value, where)

        return check_optional

    def _record_checker(self, name):
        record_type = self.records[name]

        def check(value, where):
            fields = self._record_checks.get(name)
            if fields is None:
                fields = self._record_checks[name] = {f: self.checker(t) for f, t in self.record_fields[name].items()}
            if isinstance(value, record_type):
                value = _as_dict(value)
            if not isinstance(value, dict):
                raise _Invalid(f"{where} must be a {name} or a dict, not {_shown(value)}")
            unknown = [k for k in value if k not in fields]
            if unknown:
                raise _Invalid(f"{where} has no field {unknown[0]!r}; fields: {', '.join(fields)}")
            return {f: check_field(value.get(f), f"{where}.{f}") for f, check_field in fields.items()}

        return check

    @staticmethod
    def _scalar_checker(kind):
        # One closure per kind, chosen once per parameter: the check runs on every call.
        if kind == "money":

            def check(value, where):
                if type(value) is int and -_MAX_INT <= value <= _MAX_INT:
                    return str(value)
                if isinstance(value, decimal.Decimal) and value.is_finite():
                    # Fixed-point text: str(Decimal("1E+1")) is "1E+1", which the gate refuses as money.
                    return format(value, "f")
                raise _Invalid(f"{where} must be a Decimal amount (e.g. Decimal('12.50')), not {value!r}")

        elif kind == "datetime":

            def check(value, where):
                if isinstance(value, datetime.datetime):
                    return value.isoformat()
                raise _Invalid(f"{where} must be a datetime, not {_shown(value)}")

        elif kind == "date":

            def check(value, where):
                # A datetime is a date too (a subclass); a calendar date is not an instant.
                if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
                    return value.isoformat()
                raise _Invalid(f"{where} must be a datetime.date (e.g. date(2026, 3, 1)), not {_shown(value)}")

        elif kind == "float":

            def check(value, where):
                if type(value) is int and -_MAX_INT - 1 <= value <= _MAX_INT:
                    return value
                if type(value) is float and value - value == 0.0:  # finite: not NaN or infinity
                    return value
                raise _Invalid(f"{where} must be a finite number, not {value!r}")

        elif kind == "int":

            def check(value, where):
                if type(value) is not int:
                    raise _Invalid(f"{where} must be an int, not {_shown(value)}")
                if not -_MAX_INT - 1 <= value <= _MAX_INT:
                    raise _Invalid(f"{where} must fit in 64 bits; {value} does not")
                return value

        elif kind == "str":

            def check(value, where):
                if type(value) is not str:
                    raise _Invalid(f"{where} must be a str, not {_shown(value)}")
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Invalid(f"{where} contains a lone surrogate, which is not valid Unicode") from None
                return value

        else:
            expected, described = _PLAIN[kind]

            def check(value, where):
                if type(value) is not expected:
                    raise _Invalid(f"{where} must be {described}, not {_shown(value)}")
                return value

        return check

    def decoder(self, ref):
        kind = ref["kind"]
        if kind == "list":
            item = self.decoder(ref["item"])
            decode = lambda value: [item(v) for v in value]  # noqa: E731
        elif kind == "record":
            decode = self._record_decoder(ref["name"])
        elif kind == "money":
            decode = lambda value: decimal.Decimal(str(value))  # noqa: E731
        elif kind == "datetime":
            decode = datetime.datetime.fromisoformat
        elif kind == "date":
            decode = datetime.date.fromisoformat
        else:
            return lambda value: value
        return lambda value: None if value is None else decode(value)

    def _record_decoder(self, name):
        record_type = self.records[name]

        def decode(value):
            fields = self._record_decoders.get(name)
            if fields is None:
                fields = self._record_decoders[name] = {f: self.decoder(t) for f, t in self.record_fields[name].items()}
            return record_type(**{f: dec(value.get(f)) for f, dec in fields.items()})

        return decode


def _too_deep(payload):
    stack = [(payload, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _depth(ref, records, seen=()):
    """How deep a value of this type can nest (a list or record adds one); None if unbounded."""
    kind = ref["kind"]
    if kind == "list":
        inner = _depth(ref["item"], records, seen)
        return None if inner is None else inner + 1
    if kind != "record":
        return 0
    if ref["name"] in seen:
        return None  # a record that contains itself: values may nest without bound
    depths = [_depth(t, records, (*seen, ref["name"])) for t in records[ref["name"]].values()]
    return None if None in depths else 1 + max(depths, default=0)


class Contract:
    """The namespace a program calls operations on, named after the contract."""

    def __init__(self, name, version, operations):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_version", version)
        object.__setattr__(self, "_operations", operations)
        for op_name, proxy in operations.items():
            object.__setattr__(self, op_name, proxy)

    def __getattr__(self, name):
        close = difflib.get_close_matches(name, list(self._operations), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; operations: {', '.join(self._operations)}"
        raise AttributeError(f"contract {self._name} {self._version} has no operation {name!r}{hint}")

    def __setattr__(self, name, value):
        raise AttributeError(f"contract {self._name} is read-only")

    def __repr__(self):
        return f"<contract {self._name} {self._version}: {', '.join(self._operations)}>"


# The file name the runtime compiles a program under: its frames are the program's.
PROGRAM_FILE = "<program>"
_MAX_LINE = 2**32 - 1  # the host import's `line` is a u32


def _program_line():
    """The line the innermost program frame on the stack stands at; 0 when there is none.

    Reported to the host with each call so a receipt can point at the program's line. It is
    the guest's word: a program can misreport it, so the host records it and trusts nothing to it.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == PROGRAM_FILE:
            line = frame.f_lineno
            return line if type(line) is int and 0 < line <= _MAX_LINE else 0
        frame = frame.f_back
    return 0


class _Session:
    """State of the one run this instance serves: set by the runtime, read by proxies."""

    concluded = False


SESSION = _Session()


def _raise_host_error(raw, operation):
    try:
        error = json.loads(raw)
        kind, message, code = error["error"], error["message"], error["code"]
    except (ValueError, KeyError, TypeError):
        raise OperationError(
            f"the host answered with an unreadable error: {raw[:200]!r}", code="HOST", operation=operation
        ) from None
    if kind == "contract_violation":
        raise ContractViolation(message, code=code, operation=operation, boundary=error.get("boundary"))
    raise OperationError(message, code=code, operation=operation)


def _proxy(contract, operation, types, host_call, err_type):
    name = operation["name"]
    qualified = f"{contract}.{name}"
    params = {p["name"]: (types.checker(p["type"]), p["required"]) for p in operation["params"]}
    required = [p for p, (_, is_required) in params.items() if is_required]
    returns = operation["returns"]
    decode = types.decoder(returns) if returns is not None else (lambda value: None)
    example = ", ".join(f"{p}=..." for p in required)
    depths = [_depth(p["type"], types.record_fields) for p in operation["params"]]
    deep = any(d is None or d >= _MAX_DEPTH for d in depths)  # else every value fits
    dumps, loads = json.dumps, json.loads

    def invalid(message):
        # The same refusal the gate gives a call whose arguments it cannot accept; this one
        # never left the sandbox, so no receipt records it.
        return ContractViolation(message, code="INVALID_ARGUMENTS", operation=qualified)

    def call(*args, **kwargs):
        if SESSION.concluded:
            raise RuntimeError(f"{qualified}() called after the program concluded")
        if args:
            raise invalid(f"{qualified}() takes keyword arguments only, e.g. {qualified}({example})")
        payload = {}
        try:
            for key, value in kwargs.items():
                entry = params.get(key)
                if entry is None:
                    close = difflib.get_close_matches(key, list(params), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; parameters: {', '.join(params) or 'none'}"
                    raise _Invalid(f"{qualified}() got an unexpected keyword argument {key!r}{hint}")
                payload[key] = entry[0](value, key)
        except _Invalid as error:
            message = error.args[0]
            raise invalid(message if message.startswith(qualified) else f"{qualified}(): {message}") from None
        for key in required:
            if key not in payload:
                raise invalid(f"{qualified}() missing required keyword argument {key!r}")
        if deep and _too_deep(payload):
            raise invalid(f"{qualified}(): arguments nested deeper than {_MAX_DEPTH} levels, which the host refuses")
        text = dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            raw = host_call(name, text, _program_line())
        except err_type as error:
            _raise_host_error(error.value, qualified)
        return decode(loads(raw))

    call.__name__ = name
    call.__qualname__ = qualified
    return call


def build(surface, host_call, err_type):
    """Everything a program's namespace gets from the surface: the contract, records, enums."""
    types = _Types(surface)
    operations = {
        op["name"]: _proxy(surface["contract"], op, types, host_call, err_type) for op in surface["operations"]
    }
    namespace = {surface["contract"]: Contract(surface["contract"], surface["version"], operations)}
    namespace.update(types.records)
    return namespace

"""Typed proxies built from a compiled contract's surface, and the exceptions a call raises.

A program calls `orders.get_order(id=123)`; the proxy checks the arguments against
the surface (for a readable error in the program, not for safety: the host checks
everything again), sends them through the one host import, and turns the JSON answer
into records whose fields are attributes. Money arrives as Decimal, datetimes as
datetime, states and enum values as strings.
"""

import datetime
import decimal
import difflib
import json

__all__ = ["Contract", "ContractViolation", "OperationError", "Record", "build", "encode_value"]


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
    _fields = ()

    def __init__(self, **fields):
        for name in self._fields:
            object.__setattr__(self, name, fields.get(name))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only: it is what the system returned")

    def __eq__(self, other):
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None

    def __repr__(self):
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"

    def to_dict(self):
        return {name: getattr(self, name) for name in self._fields}


def encode_value(value):
    """`default=` for json.dumps: how contract values travel as JSON."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} values cannot be sent or concluded; use str, int, Decimal, lists or dicts")


_PLAIN = {"str": (str, "a str"), "int": (int, "an int"), "bool": (bool, "a bool")}


class _Types:
    """Checkers (program value -> JSON value) and decoders (JSON value -> program value)."""

    def __init__(self, surface):
        self.enums = {name: tuple(values) for name, values in surface["enums"].items()}
        self.record_fields = surface["records"]
        self.records = {}
        for name, fields in surface["records"].items():
            self.records[name] = type(name, (Record,), {"__slots__": tuple(fields), "_fields": tuple(fields)})

    def checker(self, ref, where):
        kind = ref["kind"]
        optional = ref.get("optional", False)
        if kind == "list":
            item = self.checker(ref["item"], where + "[]")

            def check(value):
                if not isinstance(value, list | tuple):
                    raise TypeError(f"{where} must be a list, not {type(value).__name__}")
                return [item(v) for v in value]

        elif kind == "record":
            fields = {f: self.checker(t, f"{where}.{f}") for f, t in self.record_fields[ref["name"]].items()}
            record_type = self.records[ref["name"]]

            def check(value):
                if isinstance(value, record_type):
                    value = value.to_dict()
                if not isinstance(value, dict):
                    raise TypeError(f"{where} must be a {ref['name']} or a dict, not {type(value).__name__}")
                unknown = set(value) - set(fields)
                if unknown:
                    raise TypeError(f"{where} has no field {sorted(unknown)[0]!r}; fields: {', '.join(fields)}")
                return {f: check_field(value.get(f)) for f, check_field in fields.items()}

        elif kind == "enum":
            members = self.enums[ref["name"]]

            def check(value):
                if value not in members:
                    raise ValueError(f"{where} must be one of {', '.join(members)}; got {value!r}")
                return value

        else:
            check = self._scalar_checker(kind, where)
        if not optional:
            return check

        def check_optional(value):
            return None if value is None else check(value)

        return check_optional

    @staticmethod
    def _scalar_checker(kind, where):
        # One closure per kind, chosen once per parameter: the check runs on every call.
        if kind == "money":

            def check(value):
                if (isinstance(value, int) and not isinstance(value, bool)) or (
                    isinstance(value, decimal.Decimal) and value.is_finite()
                ):
                    return str(value)
                raise TypeError(f"{where} must be a Decimal amount (e.g. Decimal('12.50')), not {value!r}")

        elif kind == "datetime":

            def check(value):
                if isinstance(value, datetime.datetime):
                    return value.isoformat()
                raise TypeError(f"{where} must be a datetime, not {type(value).__name__}")

        elif kind == "float":

            def check(value):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return value
                raise TypeError(f"{where} must be a number, not {type(value).__name__}")

        else:
            expected, described = _PLAIN[kind]

            def check(value):
                if type(value) is not expected:
                    raise TypeError(f"{where} must be {described}, not {type(value).__name__}")
                return value

        return check

    def decoder(self, ref):
        kind = ref["kind"]
        if kind == "list":
            item = self.decoder(ref["item"])
            decode = lambda value: [item(v) for v in value]  # noqa: E731
        elif kind == "record":
            record_type = self.records[ref["name"]]
            fields = {f: self.decoder(t) for f, t in self.record_fields[ref["name"]].items()}
            decode = lambda value: record_type(**{f: dec(value.get(f)) for f, dec in fields.items()})  # noqa: E731
        elif kind == "money":
            decode = lambda value: decimal.Decimal(str(value))  # noqa: E731
        elif kind == "datetime":
            decode = datetime.datetime.fromisoformat
        else:
            return lambda value: value
        return lambda value: None if value is None else decode(value)


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
    params = {p["name"]: (types.checker(p["type"], p["name"]), p["required"]) for p in operation["params"]}
    required = [p for p, (_, is_required) in params.items() if is_required]
    returns = operation["returns"]
    decode = types.decoder(returns) if returns is not None else (lambda value: None)
    example = ", ".join(f"{p}=..." for p in required)
    dumps, loads = json.dumps, json.loads

    def call(*args, **kwargs):
        if args:
            raise TypeError(f"{qualified}() takes keyword arguments only, e.g. {qualified}({example})")
        if SESSION.concluded:
            raise RuntimeError(f"{qualified}() called after the program concluded")
        payload = {}
        for key, value in kwargs.items():
            entry = params.get(key)
            if entry is None:
                close = difflib.get_close_matches(key, list(params), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; parameters: {', '.join(params) or 'none'}"
                raise TypeError(f"{qualified}() got an unexpected keyword argument {key!r}{hint}")
            payload[key] = entry[0](value)
        for key in required:
            if key not in payload:
                raise TypeError(f"{qualified}() missing required keyword argument {key!r}")
        try:
            raw = host_call(name, dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
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

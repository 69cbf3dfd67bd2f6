"""A conclusion's data copied to plain values, by exact type, without running program code.

conclude(answer, data=...) copies `data` here before the conclusion goes to the host, so
what the caller gets is fixed at that moment and encoding it later runs nothing of the
program's: no __str__, __repr__, __iter__, __eq__, __hash__, __getattr__, __index__,
__format__, property or descriptor of a subclass. Each value is read through its base
type's own C method (`Decimal.__str__(value)`, `dict.items(value)`, `list.copy(value)`),
which a subclass cannot override; types are tested with issubclass on the value's real type
(isinstance would consult a `__class__` the program defined).

    None, bool              as they are
    str, int, float         the base type's value (a subclass, an IntEnum or StrEnum: its value);
                            NaN and infinity are refused (JSON has neither)
    Decimal                 its text, "12.50" (money stays exact)
    datetime, date          ISO 8601 text; a datetime's tzinfo must be None or a datetime.timezone
    record                  a dict of its fields
    list, tuple, set, frozenset   a list
    dict                    a dict with str keys (int, float, bool and None keys as JSON spells them)

Anything else, nesting deeper than MAX_DEPTH (a cycle included), is a TypeError or a
ValueError raised in the program by conclude(), which the program may catch: it has not
concluded.

This is not the security boundary (a program can rewrite this module): the host refuses
every call that arrives after the conclusion, whatever the guest does.
"""

import datetime
import decimal

from . import _proxies

__all__ = ["MAX_DEPTH", "copy", "encode"]

MAX_DEPTH = 100

_decimal_str = decimal.Decimal.__str__
_datetime_isoformat = datetime.datetime.isoformat
_date_isoformat = datetime.date.isoformat
_tzinfo_of = datetime.datetime.__dict__["tzinfo"].__get__
_timezone = datetime.timezone
_whole_str = str.__getitem__
_int_value = int.__pos__
_float_value = float.__pos__
_float_repr = float.__repr__
_int_repr = int.__repr__
_list_copy = list.copy
_tuple_items = tuple.__getitem__
_dict_items = dict.items
_EVERYTHING = slice(None)
_type_name = type.__dict__["__name__"].__get__
_quote = __import__("json").encoder.encode_basestring


def _refuse(kind):
    return TypeError(f"{_type_name(kind)} values cannot be sent or concluded; use str, int, Decimal, lists or dicts")


def _key(key):
    kind = type(key)
    if kind is str:
        return key
    if issubclass(kind, str):
        return _whole_str(key, _EVERYTHING)
    if key is None:
        return "null"
    if key is True or key is False:
        return "true" if key else "false"
    if issubclass(kind, int):
        return _int_repr(_int_value(key))
    if issubclass(kind, float):
        return _float_repr(_finite(_float_value(key)))
    raise TypeError(f"keys must be str, int, float, bool or None, not {_type_name(kind)}")


def _finite(value):
    if value - value != 0.0:  # NaN or infinity
        raise ValueError("Out of range float values are not JSON compliant")
    return value


def copy(value, depth=0):
    """`value` as plain None/bool/int/float/str/list/dict; raises TypeError or ValueError."""
    if depth > MAX_DEPTH:
        raise ValueError(f"the data is nested deeper than {MAX_DEPTH} levels (or refers to itself)")
    kind = type(value)
    if value is None or value is True or value is False:
        return value
    if kind is str or kind is int:
        return value
    if kind is float:
        return _finite(value)
    if issubclass(kind, decimal.Decimal):
        return _decimal_str(value)
    if issubclass(kind, str):
        return _whole_str(value, _EVERYTHING)
    if issubclass(kind, int):  # bool is handled above; IntEnum and other subclasses
        return _int_value(value)
    if issubclass(kind, float):
        return _finite(_float_value(value))
    if issubclass(kind, datetime.datetime):
        tzinfo = _tzinfo_of(value)
        if tzinfo is not None and type(tzinfo) is not _timezone:
            raise TypeError(
                f"a datetime in the data has a tzinfo of type {_type_name(type(tzinfo))}; "
                "use datetime.UTC or another datetime.timezone"
            )
        return _datetime_isoformat(value)
    if issubclass(kind, datetime.date):
        return _date_isoformat(value)
    getters = _proxies.FIELD_GETTERS.get(kind)
    if getters is not None:
        return {name: copy(get(value), depth + 1) for name, get in getters}
    if issubclass(kind, list):
        return [copy(item, depth + 1) for item in _list_copy(value)]
    if issubclass(kind, tuple):
        return [copy(item, depth + 1) for item in _tuple_items(value, _EVERYTHING)]
    if issubclass(kind, set | frozenset):
        # set(...) of a set copies its table in C: no __iter__ or __hash__ of the program's.
        return [copy(item, depth + 1) for item in _list_copy(list(frozenset.union(frozenset(), value)))]
    if issubclass(kind, dict):
        return {_key(k): copy(v, depth + 1) for k, v in list(_dict_items(value))}
    raise _refuse(kind)


def encode(value):
    """JSON text of a value `copy` returned (plain types only, so nothing of the program's runs)."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return _int_repr(value)
    if kind is float:
        return _float_repr(value)
    if kind is list:
        return "[" + ",".join([encode(item) for item in value]) + "]"
    return "{" + ",".join([_quote(k) + ":" + encode(v) for k, v in value.items()]) + "}"

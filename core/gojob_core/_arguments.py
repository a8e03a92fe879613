"""Executor signatures and argument conversion.

Any callable can be a job executor. Arguments are checked against its signature when a job
is scheduled (so a mistake fails in the caller, not later on a worker), coerced to its type
hints, and turned into JSON-compatible values a store can hold. When the job runs, the stored
values are coerced back to the hinted types and the injected objects (context, instance, ...)
are added. Converters are compiled once per hint, so a run costs one call per hinted parameter.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import dataclasses
import datetime as dt
import enum
import functools
import inspect
import json
import os
import re
import sys
import types
import typing
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import PurePath
from typing import Any, Callable, Final, Mapping, Sequence

from .errors import ArgumentError, InvalidJobError, UnserializableArgumentError

__all__ = [
    "PLACEHOLDER",
    "ExecutorSignature",
    "coerce",
    "encode_result",
    "results_list",
    "to_jsonable",
]

PLACEHOLDER: Final = "?"
"""A stand-in for an injected parameter in positional arguments (go-job's ``"?"``)."""

_NoneType = type(None)
_EMPTY = inspect.Parameter.empty
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
_VAR_POSITIONAL = inspect.Parameter.VAR_POSITIONAL
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
_VAR_KEYWORD = inspect.Parameter.VAR_KEYWORD

_Converter = Callable[[Any], Any]
"""Turns a value into the hinted type or raises _Fail; ``None`` stands for "leave it as is"."""

_STORABLE = (
    "only JSON-compatible values (None, bool, int, float, str, list, dict with str keys) and "
    "datetime, date, time, timedelta, Decimal, UUID, Path, Enum, dataclass, tuple, set, "
    "frozenset and UTF-8 bytes can be stored"
)


class _Fail(Exception):
    """Raised by a converter; the caller adds the job, the parameter and the hint."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _short(value: Any) -> str:
    """A repr for messages, bounded so a huge argument cannot flood a log."""
    try:
        text = repr(value)
    except Exception:
        text = object.__repr__(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _is(value: Any) -> str:
    return f"{_short(value)} is {type(value).__name__}"


def _name(hint: Any) -> str:
    """A readable name of a hint: ``int``, ``list[int]``, ``Optional[datetime.datetime]``."""
    if hint is None or hint is _NoneType:
        return "None"
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _coerce_error(kind: str, parameter: str, hint: Any, value: Any, detail: str) -> ArgumentError:
    return ArgumentError(
        f"job {kind!r}: parameter {parameter!r} expects {_name(hint)}, cannot convert {_short(value)} ({detail})",
        kind=kind,
        parameter=parameter,
        value=value,
    )


# ---------------------------------------------------------------------------------------------
# Converters for single types. Each returns the converted value or raises _Fail.


def _to_none(v: Any) -> None:
    if v is None:
        return None
    raise _Fail(_is(v))


def _to_int(v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, bool):
        raise _Fail(f"{_is(v)}; a bool is not taken as an int")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v.is_integer():
            return int(v)
        raise _Fail(f"{_short(v)} is not a whole number")
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    elif isinstance(v, Decimal):
        try:
            if v == v.to_integral_value():
                return int(v)
        except ArithmeticError:
            pass
    raise _Fail(_is(v))


def _to_float(v: Any) -> float:
    if type(v) is float:
        return v
    if isinstance(v, bool):
        raise _Fail(f"{_is(v)}; a bool is not taken as a float")
    try:
        if isinstance(v, (int, float, Decimal, str)):
            return float(v)
    except (ValueError, OverflowError):
        pass
    raise _Fail(_is(v))


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _to_bool(v: Any) -> bool:
    if v is True or v is False:
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        text = v.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Fail(_is(v))


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float, Decimal, uuid.UUID)):
        return str(v)
    raise _Fail(_is(v))


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise _Fail(_is(v))


def _to_datetime(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    try:
        if isinstance(v, str):
            return dt.datetime.fromisoformat(v.strip())
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return dt.datetime.fromtimestamp(v, tz=dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    raise _Fail(_is(v))


def _to_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v.strip())
        except ValueError:
            try:
                return dt.datetime.fromisoformat(v.strip()).date()
            except ValueError:
                pass
    raise _Fail(_is(v))


def _to_time(v: Any) -> dt.time:
    if isinstance(v, dt.time):
        return v
    if isinstance(v, str):
        try:
            return dt.time.fromisoformat(v.strip())
        except ValueError:
            pass
    raise _Fail(_is(v))


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0,
                 "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
_DURATION = re.compile(r"([+-]?)((?:\s*(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|us|µs|μs|ns|w|d|h|m|s))+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|µs|μs|ns|w|d|h|m|s)")
_CLOCK = re.compile(r"(?:([+-]?\d+) days?,\s*)?([+-]?)(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


def _parse_duration(text: str) -> dt.timedelta | None:
    """Seconds ("1.5"), Go-style units ("1h30m", "250ms") or a clock ("01:30:00", "1 day, 2:00:00")."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return dt.timedelta(seconds=float(text))
    match = _DURATION.fullmatch(text)
    if match:
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(match[2]))
        return dt.timedelta(seconds=-seconds if match[1] == "-" else seconds)
    match = _CLOCK.fullmatch(text)
    if match:
        clock = dt.timedelta(hours=int(match[3]), minutes=int(match[4]), seconds=float(match[5]))
        return dt.timedelta(days=int(match[1] or 0)) + (-clock if match[2] == "-" else clock)
    return None


def _to_timedelta(v: Any) -> dt.timedelta:
    if isinstance(v, dt.timedelta):
        return v
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return dt.timedelta(seconds=v)
        if isinstance(v, str):
            parsed = _parse_duration(v)
            if parsed is not None:
                return parsed
    except (ValueError, OverflowError):
        pass
    raise _Fail(_is(v))


def _to_decimal(v: Any) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))  # Decimal("0.1"), not the binary expansion of 0.1
    if isinstance(v, str):
        try:
            return Decimal(v.strip())
        except (InvalidOperation, ValueError):
            pass
    raise _Fail(_is(v))


def _to_uuid(v: Any) -> uuid.UUID:
    if isinstance(v, uuid.UUID):
        return v
    if isinstance(v, str):
        try:
            return uuid.UUID(v.strip())
        except ValueError:
            pass
    raise _Fail(_is(v))


_SIMPLE: dict[type, _Converter] = {
    int: _to_int, float: _to_float, bool: _to_bool, str: _to_str, bytes: _to_bytes,
    dt.datetime: _to_datetime, dt.date: _to_date, dt.time: _to_time, dt.timedelta: _to_timedelta,
    Decimal: _to_decimal, uuid.UUID: _to_uuid,
}


def _parse_json(text: str, want: type) -> Any:
    """Arguments often arrive as JSON text (a CLI, an HTTP form); accept an array or object in it."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, want):
        raise _Fail(f"{_short(text)} is str, not a JSON {'array' if want is list else 'object'}")
    return parsed


# ---------------------------------------------------------------------------------------------
# Converters built from a hint.

_SEQUENCES: dict[Any, type] = {
    list: list, tuple: tuple, set: set, frozenset: frozenset, collections.deque: collections.deque,
    cabc.Sequence: list, cabc.MutableSequence: list, cabc.Collection: list, cabc.Iterable: list,
    cabc.Set: set, cabc.MutableSet: set,
}
_MAPPINGS: dict[Any, type] = {
    dict: dict, cabc.Mapping: dict, cabc.MutableMapping: dict, collections.OrderedDict: collections.OrderedDict,
}
_SEQUENCE_INPUTS = (list, tuple, set, frozenset)


def _path(cls: type) -> _Converter:
    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        if isinstance(v, (str, os.PathLike)):
            try:
                return cls(v)
            except (TypeError, ValueError):
                pass
        raise _Fail(_is(v))

    return convert


def _enum(cls: type[enum.Enum]) -> _Converter:
    members = cls.__members__
    by_text = {str(m.value): m for m in cls}  # an int-valued member used as a JSON dict key

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        try:
            return cls(tuple(v) if isinstance(v, list) else v)
        except Exception:
            pass
        if isinstance(v, str):
            if v in members:
                return members[v]
            if v in by_text:
                return by_text[v]
        names = ", ".join(members)
        values = ", ".join(_short(m.value) for m in cls)
        raise _Fail(f"{_is(v)}, neither a value ({values}) nor a name ({names}) of {cls.__name__}")

    return convert


def _class_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        module = sys.modules.get(cls.__module__)
        namespace = vars(module) if module else {}
        return {f.name: _resolve(f.type, namespace) for f in dataclasses.fields(cls)}


def _dataclass(cls: type) -> _Converter:
    plan: tuple[dict[str, tuple[_Converter | None, Any]], list[str], frozenset[str]] | None = None

    def build() -> tuple[dict[str, tuple[_Converter | None, Any]], list[str], frozenset[str]]:
        # Built on first use, so a dataclass that refers to itself does not recurse forever.
        hints = _class_hints(cls)
        fields = dataclasses.fields(cls)
        init = {f.name: (_compile(hints.get(f.name, _EMPTY)), hints.get(f.name, _EMPTY)) for f in fields if f.init}
        required = [f.name for f in fields if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return init, required, frozenset(f.name for f in fields)

    def convert(v: Any) -> Any:
        nonlocal plan
        if isinstance(v, cls):
            return v
        if isinstance(v, str):
            v = _parse_json(v, dict)
        elif not isinstance(v, cabc.Mapping):
            raise _Fail(_is(v))
        if plan is None:
            plan = build()
        init, required, names = plan
        unknown = [k for k in v if k not in names]
        if unknown:
            raise _Fail(f"unknown field(s) {', '.join(map(_short, unknown))} for {cls.__name__} "
                        f"(fields: {', '.join(init)})")
        missing = [n for n in required if n not in v]
        if missing:
            raise _Fail(f"missing required field(s) {', '.join(map(repr, missing))} of {cls.__name__}")
        values = {}
        for key, item in v.items():
            if key not in init:
                continue  # a field with init=False (to_jsonable stores it): __init__ recomputes it
            convert_field, hint = init[key]
            if convert_field is not None:
                try:
                    item = convert_field(item)
                except _Fail as error:
                    raise _Fail(f"field {key!r}: cannot convert {_short(item)} to {_name(hint)} "
                                f"({error.detail})") from None
            values[key] = item
        try:
            return cls(**values)
        except Exception as error:
            raise _Fail(f"{cls.__name__}(...) raised {type(error).__name__}: {error}") from None

    return convert


def _union(members: tuple[Any, ...]) -> _Converter | None:
    allows_none = _NoneType in members
    others = [m for m in members if m is not _NoneType]
    converters = [_compile(m) for m in others]
    if any(c is None for c in converters):
        return None  # Optional[Any]: anything goes
    if len(converters) == 1:
        only = converters[0]
        return lambda v: None if v is None and allows_none else only(v)
    exact = frozenset(m for m in others if isinstance(m, type) and typing.get_origin(m) is None)
    names = ", ".join(_name(m) for m in members)

    def convert(v: Any) -> Any:
        if v is None and allows_none:
            return None
        if type(v) in exact:
            return v  # already one of the members: do not let an earlier member convert it
        for member in converters:
            try:
                return member(v)
            except _Fail:
                pass
        raise _Fail(f"{_is(v)}, which fits none of {names}")

    return convert


def _literal(values: tuple[Any, ...]) -> _Converter:
    converters = [(value, _compile(type(value))) for value in values if value is not None]

    def convert(v: Any) -> Any:
        for value in values:
            if type(v) is type(value) and v == value:
                return value
        for value, to_type in converters:
            if to_type is not None:
                try:
                    converted = to_type(v)
                except _Fail:
                    continue
                if type(converted) is type(value) and converted == value:
                    return value
        raise _Fail(f"{_short(v)} is not one of {', '.join(map(_short, values))}")

    return convert


def _sequence(origin: Any, args: tuple[Any, ...]) -> _Converter:
    make = _SEQUENCES[origin]
    fixed: list[tuple[_Converter | None, Any]] | None = None
    item_hint: Any = _EMPTY
    if make is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        fixed = [(_compile(a), a) for a in args]
    elif args:
        item_hint = args[0]
    item = _compile(item_hint)

    def convert(v: Any) -> Any:
        if isinstance(v, str):
            v = _parse_json(v, list)
        elif not (type(v) in _SEQUENCE_INPUTS or isinstance(v, (cabc.Sequence, cabc.Set))) or isinstance(
                v, (bytes, bytearray)):
            raise _Fail(_is(v))
        if fixed is not None and len(v) != len(fixed):
            raise _Fail(f"{_short(v)} has {len(v)} items, {len(fixed)} expected")
        if fixed is None and item is None:
            return v if type(v) is make else make(v)
        out = []
        for i, x in enumerate(v):
            to_item, hint = fixed[i] if fixed is not None else (item, item_hint)
            if to_item is not None:
                try:
                    x = to_item(x)
                except _Fail as error:
                    raise _Fail(f"item {i}: cannot convert {_short(x)} to {_name(hint)} ({error.detail})") from None
            out.append(x)
        if make is list:
            return out
        try:
            return make(out)
        except TypeError as error:  # an unhashable item in a set
            raise _Fail(f"{_short(v)}: {error}") from None

    return convert


def _mapping(origin: Any, args: tuple[Any, ...]) -> _Converter:
    make = _MAPPINGS.get(origin, dict)
    key_hint, value_hint = args if len(args) == 2 else (_EMPTY, _EMPTY)
    to_key, to_value = _compile(key_hint), _compile(value_hint)

    def convert(v: Any) -> Any:
        if isinstance(v, str):
            v = _parse_json(v, dict)
        elif not isinstance(v, cabc.Mapping):
            raise _Fail(_is(v))
        if to_key is None and to_value is None:
            return v if type(v) is make else make(v)
        out = make()
        for key, value in v.items():
            if to_key is not None:
                try:
                    key = to_key(key)
                except _Fail as error:
                    raise _Fail(f"key {_short(key)}: cannot convert to {_name(key_hint)} ({error.detail})") from None
            if to_value is not None:
                try:
                    value = to_value(value)
                except _Fail as error:
                    raise _Fail(f"value of key {_short(key)}: cannot convert {_short(value)} to "
                                f"{_name(value_hint)} ({error.detail})") from None
            out[key] = value
        return out

    return convert


def _instance(cls: type) -> _Converter | None:
    try:
        isinstance(None, cls)
    except TypeError:
        return None  # a Protocol that is not runtime-checkable: nothing we can check

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        if isinstance(v, cabc.Mapping) and all(isinstance(k, str) for k in v):
            try:
                return cls(**v)
            except Exception as error:
                raise _Fail(f"{cls.__name__}(**{_short(v)}) raised {type(error).__name__}: {error}") from None
        raise _Fail(_is(v))

    return convert


def _build(hint: Any) -> _Converter | None:
    if hint is _EMPTY or hint is None or hint is Any or hint is object or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar)):
        return None
    if hint is _NoneType:
        return _to_none
    origin = typing.get_origin(hint)
    if origin is not None:
        args = typing.get_args(hint)
        if origin is typing.Annotated or origin in (typing.ClassVar, typing.Final, typing.Required,
                                                    typing.NotRequired):
            return _compile(args[0]) if args else None
        if origin is typing.Union or origin is types.UnionType:
            return _union(args)
        if origin is typing.Literal:
            return _literal(args)
        if origin in _SEQUENCES:
            return _sequence(origin, args)
        if origin in _MAPPINGS:
            return _mapping(origin, args)
        if isinstance(origin, type):
            return _dataclass(origin) if dataclasses.is_dataclass(origin) else _instance(origin)
        return None
    if isinstance(hint, typing.NewType):
        return _compile(hint.__supertype__)
    if typing.is_typeddict(hint):
        return _mapping(dict, ())
    if not isinstance(hint, type):
        return None
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    if issubclass(hint, enum.Enum):
        return _enum(hint)
    if issubclass(hint, PurePath):
        return _path(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint)
    if hint in _SEQUENCES:
        return _sequence(hint, ())
    if hint in _MAPPINGS:
        return _mapping(hint, ())
    return _instance(hint)


_CACHE: dict[Any, _Converter | None] = {}


def _compile(hint: Any) -> _Converter | None:
    """The converter of a hint, cached. The key holds the repr too: ``Union[int, str]`` equals
    ``Union[str, int]`` but tries its members in another order."""
    if hint is _EMPTY:
        return None
    try:
        key = hint if isinstance(hint, type) and not isinstance(hint, types.GenericAlias) else (hint, repr(hint))
        return _CACHE[key]
    except KeyError:
        pass
    except TypeError:  # unhashable hint (odd Annotated metadata): compile it every time
        return _build(hint)
    converter = _build(hint)
    _CACHE[key] = converter
    return converter


def coerce(value: Any, hint: Any, *, kind: str, parameter: str) -> Any:
    """Convert ``value`` to the type ``hint`` names, or raise an ArgumentError that says which
    job, which parameter and which value; values arrive as JSON and must become what the
    executor's author declared."""
    converter = _compile(hint)
    if converter is None:
        return value
    try:
        return converter(value)
    except _Fail as error:
        raise _coerce_error(kind, parameter, hint, value, error.detail) from None
    except RecursionError:
        raise _coerce_error(kind, parameter, hint, value, "nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# JSON-compatible values.


class _Unstorable(Exception):
    def __init__(self, value: Any, what: str = "value") -> None:
        super().__init__(what)
        self.value = value
        self.what = what
        self.path: list[str] = []


_PLAIN = frozenset({str, int, float, bool, _NoneType})


def _json_key(key: Any) -> str:
    if type(key) is str:
        return key
    converted = _json(key)
    if isinstance(converted, bool):
        return "true" if converted else "false"  # what json.dumps writes for a bool key
    if isinstance(converted, (str, int, float)):
        return str(converted)
    raise _Unstorable(key, "dict key")


def _json(v: Any) -> Any:
    t = type(v)
    if t in _PLAIN:
        return v
    if t is list or t is tuple:
        out = []
        for i, item in enumerate(v):
            try:
                out.append(_json(item))
            except _Unstorable as error:
                error.path.append(f"[{i}]")
                raise
        return out
    if t is dict or isinstance(v, cabc.Mapping):
        result = {}
        for key, item in v.items():
            try:
                result[_json_key(key)] = _json(item)
            except _Unstorable as error:
                error.path.append(f"[{_short(key)}]")
                raise
        return result
    if isinstance(v, enum.Enum):
        return _json(v.value)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (Decimal, uuid.UUID, PurePath)):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        result = {}
        for field in dataclasses.fields(v):
            try:
                result[field.name] = _json(getattr(v, field.name))
            except _Unstorable as error:
                error.path.append(f".{field.name}")
                raise
        return result
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise _Unstorable(v, "bytes that are not UTF-8") from None
    if isinstance(v, cabc.Set):
        items = _json(list(v))
        try:
            items.sort()  # a set has no order; sort it so the same set is always stored the same way
        except TypeError:
            pass
        return items
    if isinstance(v, cabc.Sequence):
        return _json(list(v))
    raise _Unstorable(v)


def to_jsonable(value: Any, *, kind: str, parameter: str) -> Any:
    """The JSON-compatible form of ``value``, which every store can hold and every node can read,
    or an UnserializableArgumentError naming the job, the parameter and the value."""
    try:
        return _json(value)
    except _Unstorable as error:
        where = ""
        if error.path:
            where = f" at {''.join(reversed(error.path))} of {_short(value)}"
        message = (f"job {kind!r}: parameter {parameter!r}: cannot store the {error.what} "
                   f"{_short(error.value)} ({type(error.value).__qualname__}){where}; {_STORABLE}")
    except RecursionError:
        message = f"job {kind!r}: parameter {parameter!r}: cannot store {_short(value)}: nested too deeply (a cycle?)"
    raise UnserializableArgumentError(message, kind=kind, parameter=parameter, value=value)


def results_list(value: Any) -> list[Any]:
    """go-job's results: a returned tuple is several results, None is none, anything else is one."""
    if isinstance(value, tuple):
        return list(value)
    if value is None:
        return []
    return [value]


def encode_result(value: Any) -> Any:
    """What the store keeps as a result: its JSON form, or a description when it has none
    (a result must never make a finished job fail)."""
    try:
        return _json(value)
    except Exception:
        return {"__unserializable__": type(value).__qualname__, "repr": _repr(value)[:1000]}


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return object.__repr__(value)


# ---------------------------------------------------------------------------------------------
# Executor signatures.


def _unpartial(executor: Any) -> Any:
    while isinstance(executor, functools.partial):
        executor = executor.func
    return executor


def _is_async(executor: Any) -> bool:
    target = _unpartial(executor)
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isfunction(target) or inspect.ismethod(target) or inspect.isclass(target) or inspect.isbuiltin(target):
        return False
    return inspect.iscoroutinefunction(getattr(type(target), "__call__", None))


def _hint_target(executor: Any) -> Any:
    target = _unpartial(executor)
    if inspect.isfunction(target) or inspect.ismethod(target):
        return target
    if inspect.isclass(target):
        return target.__init__
    return getattr(type(target), "__call__", target)


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """One string annotation resolved in the function's globals; unresolvable -> no hint."""
    if not isinstance(annotation, str):
        return annotation
    try:
        holder = types.SimpleNamespace(__annotations__={"x": annotation})
        return typing.get_type_hints(holder, globalns=namespace)["x"]
    except Exception:
        return _EMPTY


def _hints(executor: Any, signature: inspect.Signature) -> dict[str, Any]:
    target = _hint_target(executor)
    try:
        return typing.get_type_hints(target, include_extras=False)
    except Exception:
        namespace = getattr(inspect.unwrap(target), "__globals__", {})
        return {p.name: _resolve(p.annotation, namespace) for p in signature.parameters.values()}


_OPTIONAL_TEXT = re.compile(r"(?:typing\.)?Optional\[(.+)\]")


def _injection_key(annotation: Any, injectable: list[tuple[type, str]]) -> str | None:
    """The injection key of a parameter annotated with an injectable class (or a subclass, its
    name as a string, or an Optional of one), else None."""
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        text = annotation.strip().strip("'\"")
        match = _OPTIONAL_TEXT.fullmatch(text)
        parts = [match[1]] if match else [p.strip() for p in text.split("|") if p.strip() not in ("None", "")]
        if len(parts) != 1:
            return None
        last = parts[0].strip().strip("'\"").rsplit(".", 1)[-1]
        return next((key for cls, key in injectable if cls.__name__ == last), None)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [m for m in typing.get_args(annotation) if m is not _NoneType]
        return _injection_key(members[0], injectable) if len(members) == 1 else None
    if isinstance(annotation, type) and origin is None:
        for cls, key in injectable:
            if annotation is cls:
                return key
        for cls, key in injectable:
            try:
                if issubclass(annotation, cls):
                    return key
            except TypeError:
                pass
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: Any
    hint: Any
    converter: _Converter | None
    inject: str | None
    default: Any


def _is_placeholder(value: Any) -> bool:
    return value is None or (type(value) is str and value == PLACEHOLDER)


class ExecutorSignature:
    """What gojob knows of an executor: how to check and store arguments when a job is scheduled
    (``bind``) and how to call it when the job runs (``prepare_call``). Built once per job kind."""

    __slots__ = ("kind", "is_async", "injected", "_any", "_positional", "_plain", "_var_positional",
                 "_by_name", "_var_keyword", "_run_positional", "_keyword_converters",
                 "_keyword_injected", "_trivial")

    kind: str
    is_async: bool
    injected: dict[str, str]

    @classmethod
    def of(cls, kind: str, executor: Callable[..., Any], injectable: Mapping[type, str]) -> ExecutorSignature:
        """Inspect ``executor`` once: parameters, hints, injected parameters, converters."""
        if not callable(executor):
            raise InvalidJobError(f"job {kind!r}: executor {_short(executor)} is not callable")
        self = cls.__new__(cls)
        self.kind = kind
        self.is_async = _is_async(executor)
        self.injected = {}
        self._positional, self._plain, self._by_name = (), (), {}
        self._var_positional = self._var_keyword = None
        self._run_positional, self._keyword_converters, self._keyword_injected = (), {}, ()
        try:
            signature = inspect.signature(executor)
        except (TypeError, ValueError):  # a builtin without a signature: take anything as it is
            self._any = self._trivial = True
            return self
        self._any = False
        hints = _hints(executor, signature)
        pairs = list(injectable.items())
        params = []
        for p in signature.parameters.values():
            hint = hints.get(p.name, _EMPTY)
            key = None
            if p.kind not in (_VAR_POSITIONAL, _VAR_KEYWORD):
                key = _injection_key(hint, pairs) or _injection_key(p.annotation, pairs)
            if key is not None:
                self.injected[p.name] = key
            try:
                converter = None if key else _compile(hint)
            except Exception:  # a hint this module does not understand: do not convert
                converter = None
            params.append(_Param(p.name, p.kind, hint, converter, key, p.default))
        self._positional = tuple(p for p in params if p.kind in (_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD))
        self._plain = tuple(p for p in self._positional if p.inject is None)
        self._var_positional = next((p for p in params if p.kind is _VAR_POSITIONAL), None)
        self._var_keyword = next((p for p in params if p.kind is _VAR_KEYWORD), None)
        self._by_name = {p.name: p for p in params if p.kind not in (_VAR_POSITIONAL, _VAR_KEYWORD)}
        self._run_positional = tuple((p, p.converter, p.inject, p.kind is _POSITIONAL_ONLY and p.default is not _EMPTY)
                                     for p in self._positional)
        self._keyword_converters = {p.name: p for p in params if p.converter is not None and p.inject is None
                                    and p.kind in (_POSITIONAL_OR_KEYWORD, _KEYWORD_ONLY)}
        self._keyword_injected = tuple((p.name, p.inject) for p in params if p.kind is _KEYWORD_ONLY and p.inject)
        self._trivial = not self.injected and all(p.converter is None for p in params)
        return self

    def __repr__(self) -> str:
        return f"ExecutorSignature(kind={self.kind!r}, is_async={self.is_async}, injected={self.injected})"

    def _arity_error(self, arguments: tuple[Any, ...], missing: list[str]) -> ArgumentError:
        low = sum(1 for p in self._plain if p.default is _EMPTY)
        high = len(self._plain)
        names = [p.name for p in self._plain]
        if self._var_positional is not None:
            count = f"at least {low}"
            names.append("*" + self._var_positional.name)
        else:
            count = str(high) if low == high else f"{low} to {high}"
        text = ", ".join(names)
        injected = [p.name for p in self._positional if p.inject]
        if injected:
            text += f"; injected {', '.join(injected)} may be given as {PLACEHOLDER!r} or left out"
        plural = "" if count in ("1", "at least 1") else "s"
        message = (f"job {self.kind!r}: expected {count} argument{plural} ({text}), "
                   f"got {len(arguments)}: {_short(arguments)}")
        if missing:
            message += f"; missing {', '.join(missing)}"
        return ArgumentError(message, kind=self.kind, parameter=missing[0] if missing else None, value=arguments)

    def _check_injected(self, p: _Param, value: Any) -> None:
        if not _is_placeholder(value):
            raise ArgumentError(
                f"job {self.kind!r}: parameter {p.name!r} is injected ({p.inject}) and takes no argument; "
                f"give {PLACEHOLDER!r} or None in its place or leave it out, got {_short(value)}",
                kind=self.kind, parameter=p.name, value=value)

    def _store(self, name: str, p: _Param, value: Any) -> Any:
        if p.converter is not None:
            try:
                value = p.converter(value)
            except _Fail as error:
                raise _coerce_error(self.kind, name, p.hint, value, error.detail) from None
        return to_jsonable(value, kind=self.kind, parameter=name)

    def bind(self, arguments: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check arguments against the executor when the job is scheduled; return their stored form:
        positional values aligned to the non-injected positional parameters (then ``*args``
        extras) and keyword values, all coerced to their hints and made JSON-compatible."""
        kind = self.kind
        arguments = tuple(arguments or ())
        kwargs = kwargs or {}
        if self._any:
            return ([to_jsonable(v, kind=kind, parameter=f"args[{i}]") for i, v in enumerate(arguments)],
                    {k: to_jsonable(v, kind=kind, parameter=k) for k, v in kwargs.items()})
        injected_at = [i for i, p in enumerate(self._positional) if p.inject]
        aligned_to_all = bool(injected_at) and (
            any(i < len(arguments) and type(arguments[i]) is str and arguments[i] == PLACEHOLDER for i in injected_at)
            or (len(arguments) > len(self._plain) and self._var_positional is None))
        extra = arguments[len(self._positional if aligned_to_all else self._plain):]
        if extra and self._var_positional is None:
            raise self._arity_error(arguments, [])
        given = []
        for p, value in zip(self._positional if aligned_to_all else self._plain, arguments):
            if p.inject:
                self._check_injected(p, value)
            else:
                given.append((p, value))
        bound = {p.name for p, _ in given}
        keywords: list[tuple[str, _Param, Any]] = []
        for name, value in kwargs.items():
            p = self._by_name.get(name) if isinstance(name, str) else None
            if p is None or p.kind is _POSITIONAL_ONLY:
                if self._var_keyword is not None and isinstance(name, str):
                    keywords.append((name, self._var_keyword, value))
                    continue
                if p is not None:
                    raise ArgumentError(f"job {kind!r}: parameter {name!r} is positional-only, cannot be given "
                                        f"as a keyword (got {name}={_short(value)})",
                                        kind=kind, parameter=name, value=value)
                accepted = ", ".join(n for n, q in self._by_name.items() if q.kind is not _POSITIONAL_ONLY and not q.inject)
                raise ArgumentError(f"job {kind!r}: unknown keyword argument {_short(name)} "
                                    f"(value {_short(value)}); accepted keywords: {accepted or 'none'}",
                                    kind=kind, parameter=str(name), value=value)
            if p.inject:
                self._check_injected(p, value)
                continue
            if name in bound:
                first = next(v for q, v in given if q.name == name)
                raise ArgumentError(f"job {kind!r}: parameter {name!r} given twice, positionally "
                                    f"({_short(first)}) and as a keyword ({_short(value)})",
                                    kind=kind, parameter=name, value=value)
            bound.add(name)
            keywords.append((name, p, value))
        missing = [p.name for p in self._plain if p.default is _EMPTY and p.name not in bound]
        if missing:
            raise self._arity_error(arguments, missing)
        missing = [p.name for p in self._by_name.values() if p.kind is _KEYWORD_ONLY and not p.inject
                   and p.default is _EMPTY and p.name not in bound]
        if missing:
            raise ArgumentError(f"job {kind!r}: missing required keyword argument(s) {', '.join(map(repr, missing))}",
                                kind=kind, parameter=missing[0], value=None)
        stored = [self._store(p.name, p, value) for p, value in given]
        if extra:
            p = self._var_positional
            stored += [self._store(f"{p.name}[{i}]", p, value) for i, value in enumerate(extra)]
        return stored, {name: self._store(name, p, value) for name, p, value in keywords}

    def prepare_call(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                     injections: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn stored arguments (what ``bind`` returned, after a trip through the store) back into
        the hinted types and add the injected objects; runs once per execution, so it is lean."""
        if self._trivial:
            return tuple(args), dict(kwargs)
        call_kwargs = {}
        converters, var_keyword = self._keyword_converters, self._var_keyword
        for name, value in kwargs.items():
            p = converters.get(name)
            if p is None and var_keyword is not None and name not in self._by_name:
                p = var_keyword
            if p is not None and p.converter is not None:
                try:
                    value = p.converter(value)
                except _Fail as error:
                    raise _coerce_error(self.kind, name, p.hint, value, error.detail) from None
            call_kwargs[name] = value
        call_args = []
        count = len(args)
        index = 0
        positional = True
        for p, converter, inject, positional_default in self._run_positional:
            if inject is not None:
                if positional:
                    call_args.append(injections.get(inject))
                else:  # an earlier parameter goes by keyword or default, so this one must too
                    call_kwargs[p.name] = injections.get(inject)
            elif positional:
                if index < count:
                    value = args[index]
                    index += 1
                    if converter is not None:
                        try:
                            value = converter(value)
                        except _Fail as error:
                            raise _coerce_error(self.kind, p.name, p.hint, value, error.detail) from None
                    call_args.append(value)
                elif positional_default:
                    call_args.append(p.default)
                else:
                    positional = False
        if index < count:
            p = self._var_positional
            if p is None:
                raise self._arity_error(tuple(args), [])
            for i, value in enumerate(args[index:]):
                if p.converter is not None:
                    try:
                        value = p.converter(value)
                    except _Fail as error:
                        raise _coerce_error(self.kind, f"{p.name}[{i}]", p.hint, value, error.detail) from None
                call_args.append(value)
        for name, inject in self._keyword_injected:
            call_kwargs[name] = injections.get(inject)
        return tuple(call_args), call_kwargs

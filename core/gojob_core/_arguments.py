"""Executor signatures and argument conversion.

Any callable can be a job executor. Arguments are checked against its signature when a job is
scheduled (so a mistake fails in the caller, not later on a worker), coerced to its type hints and
turned into JSON-compatible values that any store can hold. When the job runs, the stored values are
coerced back to the hinted types and the injected objects (context, instance, ...) are added.
Converters are compiled once per hint, so a run costs one call per hinted parameter.
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
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Final

from .errors import ArgumentError, InvalidJobError, UnserializableArgumentError

__all__ = ["PLACEHOLDER", "ExecutorSignature", "coerce", "encode_result", "results_list", "to_jsonable"]

PLACEHOLDER: Final = "?"
"""A stand-in for an injected parameter in positional arguments (go-job's ``"?"``)."""

_NoneType = type(None)
_EMPTY = inspect.Parameter.empty
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_Converter = Callable[[Any], Any]  # returns the converted value or raises _Fail; None stands for "as is"
_STORABLE = ("only JSON-compatible values (None, bool, int, float, str, list, dict with str keys) and datetime, "
             "date, time, timedelta, Decimal, UUID, Path, Enum, dataclass, tuple, set, frozenset and UTF-8 bytes "
             "can be stored")


class _Fail(Exception):
    """Raised by a converter; the caller adds the job, the parameter and the hint."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return object.__repr__(value)


def _short(value: Any) -> str:
    """A repr for messages, bounded so that a huge argument cannot flood a log."""
    text = _repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _is(value: Any) -> str:
    return f"{_short(value)} is {type(value).__name__}"


def _name(hint: Any) -> str:
    """``int``, ``datetime``, ``list[int]``, ``Optional[Point]``: how a hint is shown in messages."""
    if hint is _NoneType:
        return "None"
    if isinstance(hint, type) and typing.get_origin(hint) is None:
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _coerce_error(kind: str, parameter: str, hint: Any, value: Any, detail: str) -> ArgumentError:
    return ArgumentError(f"job {kind!r}: parameter {parameter!r} expects {_name(hint)}, "
                         f"cannot convert {_short(value)} ({detail})", kind=kind, parameter=parameter, value=value)


# --- converters of single types ---------------------------------------------------------------------


def _simple(cls: type, from_str: Callable[[str], Any] | None = None,
            from_number: Callable[[Any], Any] | None = None, strip: bool = True) -> _Converter:
    """A converter that keeps instances of ``cls`` and parses strings and/or numbers."""

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        try:
            if from_str is not None and isinstance(v, str):
                return from_str(v.strip() if strip else v)
            if from_number is not None and isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
                return from_number(v)
        except (ValueError, TypeError, ArithmeticError, OSError):
            pass
        raise _Fail(_is(v))

    return convert


def _to_int(v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, bool):
        raise _Fail(f"{_is(v)}; a bool is not taken as an int")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and not v.is_integer():
        raise _Fail(f"{_short(v)} is not a whole number")
    try:
        if isinstance(v, (float, str)) or (isinstance(v, Decimal) and v == v.to_integral_value()):
            return int(v)
    except (ValueError, ArithmeticError):
        pass
    raise _Fail(_is(v))


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _to_bool(v: Any) -> bool:
    if v is True or v is False:
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _BOOLS:
        return _BOOLS[v.strip().lower()]
    raise _Fail(_is(v))


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float, Decimal, uuid.UUID)):
        return str(v)
    raise _Fail(_is(v))


def _to_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return v if type(v) is bytes else bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise _Fail(_is(v))


def _parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return dt.datetime.fromisoformat(text).date()


_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
          "μs": 1e-6, "ns": 1e-9}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNIT_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|µs|μs|ns|w|d|h|m|s)"
_DURATION = re.compile(rf"([+-]?)((?:\s*{_UNIT_PART})+)")
_CLOCK = re.compile(r"(?:([+-]?\d+) days?,\s*)?([+-]?)(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


def _parse_duration(text: str) -> dt.timedelta:
    """Seconds ("1.5"), Go-style units ("1h30m", "250ms") or a clock ("01:30:00", "1 day, 2:00:00")."""
    if _NUMBER.fullmatch(text):
        return dt.timedelta(seconds=float(text))
    if match := _DURATION.fullmatch(text):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in re.findall(_UNIT_PART, match[2]))
        return dt.timedelta(seconds=-seconds if match[1] == "-" else seconds)
    if match := _CLOCK.fullmatch(text):
        clock = dt.timedelta(hours=int(match[3]), minutes=int(match[4]), seconds=float(match[5]))
        return dt.timedelta(days=int(match[1] or 0)) + (-clock if match[2] == "-" else clock)
    raise ValueError(text)


_from_date = _simple(dt.date, _parse_date)
_SIMPLE: dict[type, _Converter] = {
    int: _to_int, bool: _to_bool, str: _to_str, bytes: _to_bytes,
    float: _simple(float, float, float),
    dt.datetime: _simple(dt.datetime, dt.datetime.fromisoformat,
                         lambda n: dt.datetime.fromtimestamp(n, tz=dt.UTC)),
    dt.date: lambda v: v.date() if isinstance(v, dt.datetime) else _from_date(v),
    dt.time: _simple(dt.time, dt.time.fromisoformat),
    dt.timedelta: _simple(dt.timedelta, _parse_duration, lambda n: dt.timedelta(seconds=float(n))),
    Decimal: _simple(Decimal, Decimal, lambda n: Decimal(repr(n) if isinstance(n, float) else n)),
    uuid.UUID: _simple(uuid.UUID, uuid.UUID),
}


# --- converters built from a hint -------------------------------------------------------------------


def _parse_json(text: str, want: type) -> Any:
    """Arguments often arrive as JSON text (a command line, a form): accept an array or an object in it."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not isinstance(parsed, want):
        raise _Fail(f"{_short(text)} is str, not a JSON {'array' if want is list else 'object'}")
    return parsed


def _sub(convert: _Converter, value: Any, hint: Any, where: str) -> Any:
    """Convert a part of a value (an item, a field), saying which part failed."""
    try:
        return convert(value)
    except _Fail as error:
        raise _Fail(f"{where}: cannot convert {_short(value)} to {_name(hint)} ({error.detail})") from None


def _enum(cls: type[enum.Enum]) -> _Converter:
    by_text = {**{str(m.value): m for m in cls}, **cls.__members__}  # a name, or a value used as a JSON key

    def convert(v: Any) -> Any:
        if isinstance(v, cls):
            return v
        try:
            return cls(tuple(v) if isinstance(v, list) else v)
        except Exception:
            pass
        if isinstance(v, str) and v in by_text:
            return by_text[v]
        values = ", ".join(_short(m.value) for m in cls)
        raise _Fail(f"{_is(v)}, neither a value ({values}) nor a name ({', '.join(cls.__members__)}) of {cls.__name__}")

    return convert


def _dataclass(cls: type) -> _Converter:
    plan: tuple[dict[str, Any], list[str], set[str]] | None = None  # on first use: a dataclass may refer to itself

    def convert(v: Any) -> Any:
        nonlocal plan
        if isinstance(v, cls):
            return v
        if isinstance(v, str):
            v = _parse_json(v, dict)
        elif not isinstance(v, cabc.Mapping):
            raise _Fail(_is(v))
        if plan is None:
            hints, fields = _class_hints(cls), dataclasses.fields(cls)
            plan = ({f.name: (_compile(hints.get(f.name, _EMPTY)), hints.get(f.name)) for f in fields if f.init},
                    [f.name for f in fields if f.init and f.default is f.default_factory is dataclasses.MISSING],
                    {f.name for f in fields})
        init, required, names = plan
        if unknown := [k for k in v if k not in names]:
            raise _Fail(f"unknown field(s) {', '.join(map(_short, unknown))} for {cls.__name__} "
                        f"(fields: {', '.join(init)})")
        if missing := [n for n in required if n not in v]:
            raise _Fail(f"missing required field(s) {', '.join(map(repr, missing))} of {cls.__name__}")
        values = {}
        for key, item in v.items():
            if key in init:  # a field with init=False (to_jsonable stores it) is left to __init__
                field_convert, hint = init[key]
                values[key] = item if field_convert is None else _sub(field_convert, item, hint, f"field {key!r}")
        try:
            return cls(**values)
        except Exception as error:
            raise _Fail(f"{cls.__name__}(...) raised {type(error).__name__}: {error}") from None

    return convert


def _union(members: tuple[Any, ...]) -> _Converter | None:
    allows_none = _NoneType in members
    converters = [_compile(m) for m in members if m is not _NoneType]
    if None in converters:
        return None  # Optional[Any]: anything goes
    if len(converters) == 1:
        only = converters[0]
        return lambda v: None if v is None and allows_none else only(v)
    exact = frozenset(m for m in members if isinstance(m, type) and typing.get_origin(m) is None)
    names = ", ".join(map(_name, members))

    def convert(v: Any) -> Any:
        if (v is None and allows_none) or type(v) in exact:
            return v  # already one of the members: an earlier member must not convert it
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
            try:
                converted = v if to_type is None else to_type(v)
            except _Fail:
                continue
            if type(converted) is type(value) and converted == value:
                return value
        raise _Fail(f"{_short(v)} is not one of {', '.join(map(_short, values))}")

    return convert


_SEQUENCES: dict[Any, type] = {
    list: list, tuple: tuple, set: set, frozenset: frozenset, collections.deque: collections.deque,
    cabc.Sequence: list, cabc.MutableSequence: list, cabc.Collection: list, cabc.Iterable: list,
    cabc.Set: set, cabc.MutableSet: set,
}
_SEQUENCE_LIKE = (list, tuple, set, frozenset, cabc.Sequence, cabc.Set)
_MAPPINGS: dict[Any, type] = {dict: dict, cabc.Mapping: dict, cabc.MutableMapping: dict,
                              collections.OrderedDict: collections.OrderedDict}


def _sequence(origin: Any, args: tuple[Any, ...]) -> _Converter:
    make = _SEQUENCES[origin]
    fixed = make is tuple and bool(args) and args[-1] is not Ellipsis  # tuple[A, B]: one hint per item
    hints = list(args) if fixed else [args[0] if args else _EMPTY]
    converters = [_compile(h) for h in hints]

    def convert(v: Any) -> Any:
        if isinstance(v, str):
            v = _parse_json(v, list)
        elif not isinstance(v, _SEQUENCE_LIKE) or isinstance(v, (bytes, bytearray)):
            raise _Fail(_is(v))
        if fixed and len(v) != len(hints):
            raise _Fail(f"{_short(v)} has {len(v)} items, {len(hints)} expected")
        if not fixed and converters[0] is None:
            return v if type(v) is make else make(v)
        out = []
        for i, x in enumerate(v):
            to_item, hint = (converters[i], hints[i]) if fixed else (converters[0], hints[0])
            out.append(x if to_item is None else _sub(to_item, x, hint, f"item {i}"))
        try:
            return out if make is list else make(out)
        except TypeError as error:  # an unhashable item for a set
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
            key = key if to_key is None else _sub(to_key, key, key_hint, f"key {_short(key)}")
            out[key] = value if to_value is None else _sub(to_value, value, value_hint, f"value of key {_short(key)}")
        return out

    return convert


def _instance(cls: type) -> _Converter | None:
    """Any other class: an instance as it is, or a dict of its constructor's keyword arguments."""
    try:
        isinstance(None, cls)
    except TypeError:
        return None  # a Protocol that is not runtime-checkable: nothing to check

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
    if hint in (_EMPTY, None, Any, object) or isinstance(hint, (str, typing.ForwardRef, typing.TypeVar)):
        return None
    if hint is _NoneType:
        return _simple(_NoneType)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Annotated, typing.ClassVar, typing.Final, typing.Required, typing.NotRequired):
        return _compile(args[0]) if args else None
    if origin is typing.Union or origin is types.UnionType:
        return _union(args)
    if origin is typing.Literal:
        return _literal(args)
    if isinstance(hint, typing.NewType):
        return _compile(hint.__supertype__)
    if typing.is_typeddict(hint):
        return _mapping(dict, ())
    cls = hint if origin is None else origin
    if cls in _SEQUENCES:
        return _sequence(cls, args)
    if cls in _MAPPINGS:
        return _mapping(cls, args)
    if not isinstance(cls, type):
        return None
    if cls in _SIMPLE:
        return _SIMPLE[cls]
    if issubclass(cls, enum.Enum):
        return _enum(cls)
    if issubclass(cls, PurePath):
        return _simple(cls, cls, strip=False)
    return _dataclass(cls) if dataclasses.is_dataclass(cls) else _instance(cls)


_CACHE: dict[Any, _Converter | None] = {}


def _compile(hint: Any) -> _Converter | None:
    """The cached converter of a hint. The key holds the repr: ``Union[int, str] == Union[str, int]``,
    but they try their members in another order."""
    if hint is _EMPTY:
        return None
    try:
        key = hint if type(hint) is type else (hint, repr(hint))
        return _CACHE[key]
    except KeyError:
        converter = _CACHE[key] = _build(hint)
        return converter
    except TypeError:  # an unhashable hint (odd Annotated metadata): build it each time
        return _build(hint)


def coerce(value: Any, hint: Any, *, kind: str, parameter: str) -> Any:
    """``value`` as the type ``hint`` names (no hint: as it is), or an ArgumentError naming the job, the
    parameter and the value: arguments arrive as JSON or text and must become what the executor declares."""
    converter = _compile(hint)
    if converter is None:
        return value
    try:
        return converter(value)
    except _Fail as error:
        raise _coerce_error(kind, parameter, hint, value, error.detail) from None
    except RecursionError:
        raise _coerce_error(kind, parameter, hint, value, "nested too deeply") from None


# --- JSON-compatible values -------------------------------------------------------------------------


class _Unstorable(Exception):
    def __init__(self, value: Any, what: str = "value") -> None:
        super().__init__(what)
        self.value, self.what, self.path = value, what, []


_PLAIN = frozenset({str, int, float, bool, _NoneType})


def _json_in(value: Any, key: Any, field: bool = False) -> Any:
    try:
        return _json(value)
    except _Unstorable as error:
        error.path.append(f".{key}" if field else f"[{_short(key)}]")
        raise


def _json_key(key: Any) -> str:
    converted = key if type(key) is str else _json(key)
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
        return [_json_in(item, i) for i, item in enumerate(v)]
    if t is dict or isinstance(v, cabc.Mapping):
        return {_json_key(key): _json_in(item, key) for key, item in v.items()}
    if isinstance(v, enum.Enum):
        return _json(v.value)
    for base in (int, float, str):  # a subclass (IntEnum is handled above) as its base type
        if isinstance(v, base):
            return base(v) if base is not str else str.__str__(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, (Decimal, uuid.UUID, PurePath)):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _json_in(getattr(v, f.name), f.name, field=True) for f in dataclasses.fields(v)}
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise _Unstorable(v, "bytes that are not UTF-8") from None
    if isinstance(v, (cabc.Set, cabc.Sequence)):
        items = [_json_in(item, i) for i, item in enumerate(v)]
        if isinstance(v, cabc.Set):
            try:
                items.sort()  # a set has no order: store the same set the same way every time
            except TypeError:
                pass
        return items
    raise _Unstorable(v)


def to_jsonable(value: Any, *, kind: str, parameter: str) -> Any:
    """The JSON-compatible form of ``value``, which every store holds and every node reads, or an
    UnserializableArgumentError naming the job, the parameter and the value."""
    try:
        return _json(value)
    except _Unstorable as error:
        where = f" at {''.join(reversed(error.path))} of {_short(value)}" if error.path else ""
        message = (f"job {kind!r}: parameter {parameter!r}: cannot store the {error.what} {_short(error.value)} "
                   f"({type(error.value).__qualname__}){where}; {_STORABLE}")
    except RecursionError:
        message = f"job {kind!r}: parameter {parameter!r}: cannot store {_short(value)}: nested too deeply (a cycle?)"
    raise UnserializableArgumentError(message, kind=kind, parameter=parameter, value=value)


def results_list(value: Any) -> list[Any]:
    """go-job's results: a returned tuple is several results, None is none, anything else is one."""
    return list(value) if isinstance(value, tuple) else [] if value is None else [value]


def encode_result(value: Any) -> Any:
    """What the store keeps as a result: its JSON form, else a description (a result that cannot be
    stored must not make a finished job fail)."""
    try:
        return _json(value)
    except Exception:
        return {"__unserializable__": type(value).__qualname__, "repr": _repr(value)[:1000]}


# --- executor signatures ----------------------------------------------------------------------------


def _unpartial(executor: Any) -> Any:
    while isinstance(executor, functools.partial):
        executor = executor.func
    return executor


def _is_async(executor: Any) -> bool:
    target = _unpartial(executor)
    if inspect.isfunction(target) or inspect.ismethod(target) or inspect.isclass(target) or inspect.isbuiltin(target):
        return inspect.iscoroutinefunction(target)
    return inspect.iscoroutinefunction(getattr(type(target), "__call__", None))


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A string annotation evaluated in the executor's globals; one that cannot be is no hint."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return typing.get_type_hints(types.SimpleNamespace(__annotations__={"x": annotation}), namespace)["x"]
    except Exception:
        return _EMPTY


def _class_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        namespace = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
        return {f.name: _resolve(f.type, namespace) for f in dataclasses.fields(cls)}


def _hints(executor: Any, signature: inspect.Signature) -> dict[str, Any]:
    target = _unpartial(executor)
    if inspect.isclass(target):
        target = target.__init__
    elif not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", target)
    try:
        return typing.get_type_hints(target)
    except Exception:  # one unresolvable forward reference: resolve the others one by one
        namespace = getattr(inspect.unwrap(target), "__globals__", {})
        return {p.name: _resolve(p.annotation, namespace) for p in signature.parameters.values()}


_OPTIONAL_TEXT = re.compile(r"(?:typing\.)?Optional\[(.+)\]")


def _injection_key(annotation: Any, injectable: list[tuple[type, str]]) -> str | None:
    """The key of an injectable class the annotation names (the class, a subclass, its name as a
    string such as ``"gojob.Instance"``, or an Optional of one), else None."""
    if isinstance(annotation, typing.ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        text = annotation.strip().strip("'\"")
        match = _OPTIONAL_TEXT.fullmatch(text)
        parts = [match[1]] if match else [p for p in map(str.strip, text.split("|")) if p not in ("None", "")]
        last = parts[0].strip("'\" ").rsplit(".", 1)[-1] if len(parts) == 1 else None
        return next((key for cls, key in injectable if cls.__name__ == last), None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not _NoneType]
        return _injection_key(members[0], injectable) if len(members) == 1 else None
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        exact = next((key for cls, key in injectable if annotation is cls), None)
        return exact or next((key for cls, key in injectable if issubclass(annotation, cls)), None)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: Any
    hint: Any
    converter: _Converter | None
    inject: str | None
    default: Any


def _run(kind: str, p: _Param, name: str, value: Any) -> Any:
    try:
        return p.converter(value)  # type: ignore[misc]
    except _Fail as error:
        raise _coerce_error(kind, name, p.hint, value, error.detail) from None


class ExecutorSignature:
    """What gojob knows of an executor: how to check and store arguments when a job is scheduled
    (``bind``) and how to call it when the job runs (``prepare_call``). Built once per job kind."""

    __slots__ = ("kind", "is_async", "injected", "_any", "_positional", "_plain", "_var_positional",
                 "_var_keyword", "_by_name", "_keyword_converters", "_keyword_injected", "_trivial")
    kind: str
    is_async: bool
    injected: dict[str, str]

    @classmethod
    def of(cls, kind: str, executor: Callable[..., Any], injectable: Mapping[type, str]) -> ExecutorSignature:
        """Inspect ``executor`` once: its parameters, their hints and converters, the injected ones."""
        if not callable(executor):
            raise InvalidJobError(f"job {kind!r}: executor {_short(executor)} is not callable")
        self = cls.__new__(cls)
        self.kind, self.is_async, self.injected = kind, _is_async(executor), {}
        try:
            signature = inspect.signature(executor)
        except (TypeError, ValueError):  # a builtin without a signature (max): take anything as it is
            signature = None
        self._any = self._trivial = signature is None
        hints = {} if signature is None else _hints(executor, signature)
        pairs, params = list(injectable.items()), []
        for p in signature.parameters.values() if signature else ():
            hint, key = hints.get(p.name, _EMPTY), None
            if p.kind not in _VARIADIC:
                key = _injection_key(hint, pairs) or _injection_key(p.annotation, pairs)
            if key is not None:
                self.injected[p.name] = key
            try:
                converter = None if key else _compile(hint)
            except Exception:  # a hint this module does not understand: leave values as they are
                converter = None
            params.append(_Param(p.name, p.kind, hint, converter, key, p.default))
        self._positional = tuple(p for p in params if p.kind in (_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD))
        self._plain = tuple(p for p in self._positional if p.inject is None)
        self._var_positional, self._var_keyword = (next((p for p in params if p.kind is k), None) for k in _VARIADIC)
        self._by_name = {p.name: p for p in params if p.kind not in _VARIADIC}
        self._keyword_converters = {p.name: p for p in params if p.converter is not None and p.kind not in _VARIADIC
                                    and p.kind is not _POSITIONAL_ONLY}
        self._keyword_injected = tuple((p.name, p.inject) for p in params if p.kind is _KEYWORD_ONLY and p.inject)
        self._trivial = signature is None or (not self.injected and all(p.converter is None for p in params))
        return self

    def __repr__(self) -> str:
        return f"ExecutorSignature(kind={self.kind!r}, is_async={self.is_async}, injected={self.injected})"

    def _arity_error(self, arguments: tuple[Any, ...], missing: list[str]) -> ArgumentError:
        low, high = sum(p.default is _EMPTY for p in self._plain), len(self._plain)
        names = [p.name for p in self._plain]
        if self._var_positional is not None:
            count = f"at least {low}"
            names.append("*" + self._var_positional.name)
        else:
            count = str(high) if low == high else f"{low} to {high}"
        text = ", ".join(names)
        if injected := [p.name for p in self._positional if p.inject]:
            text += f"; injected {', '.join(injected)} may be given as {PLACEHOLDER!r} or left out"
        message = (f"job {self.kind!r}: expected {count} argument{'' if count in ('1', 'at least 1') else 's'} "
                   f"({text}), got {len(arguments)}: {_short(arguments)}")
        if missing:
            message += f"; missing {', '.join(missing)}"
        return ArgumentError(message, kind=self.kind, parameter=missing[0] if missing else None, value=arguments)

    def _check_injected(self, p: _Param, value: Any) -> None:
        if value is not None and not (type(value) is str and value == PLACEHOLDER):
            raise ArgumentError(f"job {self.kind!r}: parameter {p.name!r} is injected ({p.inject}) and takes no "
                                f"argument; give {PLACEHOLDER!r} or None in its place or leave it out, got "
                                f"{_short(value)}", kind=self.kind, parameter=p.name, value=value)

    def _store(self, name: str, p: _Param, value: Any) -> Any:
        value = value if p.converter is None else _run(self.kind, p, name, value)
        return to_jsonable(value, kind=self.kind, parameter=name)

    def bind(self, arguments: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Check the arguments of a job being scheduled and return their stored form: the positional
        values of the non-injected positional parameters (then ``*args`` extras) and the keyword
        values, each coerced to its hint and made JSON-compatible."""
        kind, arguments, kwargs = self.kind, tuple(arguments or ()), kwargs or {}
        if self._any:
            return ([to_jsonable(v, kind=kind, parameter=f"args[{i}]") for i, v in enumerate(arguments)],
                    {k: to_jsonable(v, kind=kind, parameter=k) for k, v in kwargs.items()})
        injected_at = [i for i, p in enumerate(self._positional) if p.inject and i < len(arguments)]
        all_positions = any(type(arguments[i]) is str and arguments[i] == PLACEHOLDER for i in injected_at) or (
            self._var_positional is None and len(arguments) > len(self._plain) and bool(injected_at))
        aligned = self._positional if all_positions else self._plain
        extra = arguments[len(aligned):]
        if extra and self._var_positional is None:
            raise self._arity_error(arguments, [])
        given = []
        for p, value in zip(aligned, arguments):
            if p.inject:
                self._check_injected(p, value)
            else:
                given.append((p, value))
        bound, keywords = {p.name: value for p, value in given}, []
        for name, value in kwargs.items():
            p = self._by_name.get(name) if isinstance(name, str) else None
            if p is None or p.kind is _POSITIONAL_ONLY:
                if self._var_keyword is not None and isinstance(name, str):
                    keywords.append((name, self._var_keyword, value))  # f(a, /, **kw) takes a keyword 'a' in kw
                elif p is not None:
                    raise ArgumentError(f"job {kind!r}: parameter {name!r} is positional-only, cannot be given as "
                                        f"a keyword (got {name}={_short(value)})",
                                        kind=kind, parameter=name, value=value)
                else:
                    accepted = ", ".join(n for n, q in self._by_name.items() if q.kind is not _POSITIONAL_ONLY
                                         and not q.inject)
                    raise ArgumentError(f"job {kind!r}: unknown keyword argument {_short(name)} (value "
                                        f"{_short(value)}); accepted keywords: {accepted or 'none'}",
                                        kind=kind, parameter=str(name), value=value)
            elif p.inject:
                self._check_injected(p, value)
            elif name in bound:
                raise ArgumentError(f"job {kind!r}: parameter {name!r} given twice, positionally "
                                    f"({_short(bound[name])}) and as a keyword ({_short(value)})",
                                    kind=kind, parameter=name, value=value)
            else:
                bound[name] = value
                keywords.append((name, p, value))
        if missing := [p.name for p in self._plain if p.default is _EMPTY and p.name not in bound]:
            raise self._arity_error(arguments, missing)
        if missing := [p.name for p in self._by_name.values()
                       if p.kind is _KEYWORD_ONLY and not p.inject and p.default is _EMPTY and p.name not in bound]:
            raise ArgumentError(f"job {kind!r}: missing required keyword argument(s) {', '.join(map(repr, missing))}",
                                kind=kind, parameter=missing[0])
        stored = [self._store(p.name, p, value) for p, value in given]
        if extra:
            p = self._var_positional
            stored += [self._store(f"{p.name}[{i}]", p, value) for i, value in enumerate(extra)]  # type: ignore
        return stored, {name: self._store(name, p, value) for name, p, value in keywords}

    def prepare_call(self, args: Sequence[Any], kwargs: Mapping[str, Any],
                     injections: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn stored arguments (what ``bind`` returned, after a trip through the store) back into the
        hinted types and add the injected objects. It runs for every execution, so it is lean."""
        if self._trivial:
            return tuple(args), dict(kwargs)
        kind, call_kwargs = self.kind, {}
        converters, var_keyword, by_name = self._keyword_converters, self._var_keyword, self._by_name
        for name, value in kwargs.items():
            p = converters.get(name)
            if p is None and var_keyword is not None:
                named = by_name.get(name)  # not a named parameter (or a positional-only one): it is in **kwargs
                p = var_keyword if named is None or named.kind is _POSITIONAL_ONLY else None
            call_kwargs[name] = value if p is None or p.converter is None else _run(kind, p, name, value)
        call_args: list[Any] = []
        count, index, positional = len(args), 0, True
        for p in self._positional:
            if p.inject is not None:
                if positional:
                    call_args.append(injections.get(p.inject))
                else:  # an earlier parameter goes by keyword or keeps its default: this one goes by keyword too
                    call_kwargs[p.name] = injections.get(p.inject)
            elif positional:
                if index < count:
                    value = args[index]
                    index += 1
                    call_args.append(value if p.converter is None else _run(kind, p, p.name, value))
                elif p.kind is _POSITIONAL_ONLY and p.default is not _EMPTY:
                    call_args.append(p.default)  # keeps a later positional-only injected parameter in place
                else:
                    positional = False
        if index < count:
            p = self._var_positional
            if p is None:
                raise self._arity_error(tuple(args), [])
            for i, value in enumerate(args[index:]):
                call_args.append(value if p.converter is None else _run(kind, p, f"{p.name}[{i}]", value))
        for name, inject in self._keyword_injected:
            call_kwargs[name] = injections.get(inject)
        return tuple(call_args), call_kwargs

"""Tests of gojob_core._arguments: executor signatures, coercion and the stored (JSON) form."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import json
import typing
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

import pytest
from gojob_core._arguments import (
    PLACEHOLDER,
    ExecutorSignature,
    coerce,
    encode_result,
    results_list,
    to_jsonable,
)
from gojob_core.errors import ArgumentError, InvalidJobError, UnserializableArgumentError


class Instance:
    pass


class Manager:
    pass


class Context:
    pass


class SubContext(Context):
    pass


INJECTABLE = {Instance: "instance", Manager: "manager", Context: "context"}
CTX, INST = Context(), Instance()
INJECTIONS = {"context": CTX, "instance": INST}

UTC = dt.UTC


@dataclasses.dataclass
class ConcatString:
    A: str
    B: str
    S: str = ""


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    origin: Point | None = None
    tags: set[str] = dataclasses.field(default_factory=set)
    area: float = dataclasses.field(init=False, default=0.0)


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Movie(TypedDict):
    title: str
    year: int


UserId = NewType("UserId", int)


class Money:
    def __init__(self, amount: int, currency: str = "EUR") -> None:
        self.amount, self.currency = amount, currency


def sig(executor: Any, kind: str = "job") -> ExecutorSignature:
    return ExecutorSignature.of(kind, executor, INJECTABLE)


def roundtrip(signature: ExecutorSignature, args: Sequence[Any], kwargs: dict[str, Any] | None = None,
              injections: dict[str, Any] = INJECTIONS) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """bind, store as JSON text, load, prepare_call: the path an argument takes from caller to worker."""
    stored = json.loads(json.dumps(signature.bind(args, kwargs or {}), allow_nan=False))
    return signature.prepare_call(stored[0], stored[1], injections)


def call(executor: Any, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> Any:
    call_args, call_kwargs = roundtrip(sig(executor), args, kwargs)
    return executor(*call_args, **call_kwargs)


def message_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --- go-job examples ---------------------------------------------------------------------------


def test_go_job_sum_of_numeric_strings() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    signature = sig(add, "sum")
    assert signature.bind(("42", "58"), {}) == ([42, 58], {})
    assert signature.prepare_call([42, 58], {}, {}) == ((42, 58), {})
    assert call(add, ("42", "58")) == 100


def test_go_job_concat_strings() -> None:
    def concat(a: str, b: str) -> str:
        return a + " " + b

    assert sig(concat).bind(["Hello", "world!"], {}) == (["Hello", "world!"], {})
    assert call(concat, ["Hello", "world!"]) == "Hello world!"


@pytest.mark.parametrize("argument", [
    ConcatString("Hello", "world!"),
    {"A": "Hello", "B": "world!"},
    '{"A": "Hello", "B": "world!"}',
])
def test_go_job_struct_argument(argument: Any) -> None:
    def concat(c: ConcatString) -> ConcatString:
        c.S = c.A + " " + c.B
        return c

    signature = sig(concat)
    args, kwargs = signature.bind([argument], {})
    assert args == [{"A": "Hello", "B": "world!", "S": ""}] and kwargs == {}
    call_args, _ = signature.prepare_call(json.loads(json.dumps(args)), {}, {})
    assert call_args == (ConcatString("Hello", "world!"),)
    assert type(call_args[0]) is ConcatString
    assert concat(*call_args).S == "Hello world!"


def test_bind_does_not_mutate_the_callers_values() -> None:
    def job(c: ConcatString, d: dict[str, int], items: list[int]) -> None:
        pass

    instance, mapping, items = ConcatString("a", "b"), {"k": "1"}, ["1", 2]
    sig(job).bind([instance, mapping, items], {})
    assert instance == ConcatString("a", "b")
    assert mapping == {"k": "1"} and items == ["1", 2]


@pytest.mark.parametrize("arguments", [("?", 3600), (None, 3600), (3600,), (dt.timedelta(hours=1),), ("?", "1h")])
def test_go_job_context_and_duration(arguments: tuple[Any, ...]) -> None:
    def sleep(ctx: Context, d: dt.timedelta) -> None:
        pass

    signature = sig(sleep)
    assert signature.injected == {"ctx": "context"}
    assert signature.bind(arguments, {}) == ([3600.0], {})
    assert roundtrip(signature, arguments) == ((CTX, dt.timedelta(hours=1)), {})


@pytest.mark.parametrize("arguments", [("?",), (None,), ()])
def test_go_job_only_an_injected_instance(arguments: tuple[Any, ...]) -> None:
    def job(inst: Instance) -> None:
        pass

    signature = sig(job)
    assert signature.bind(arguments, {}) == ([], {})
    assert signature.prepare_call([], {}, INJECTIONS) == ((INST,), {})
    assert signature.prepare_call([], {}, {}) == ((None,), {})  # a missing injection is None


def test_a_value_for_an_injected_parameter_is_an_error() -> None:
    def job(ctx: Context, n: int) -> None:
        pass

    with pytest.raises(ArgumentError) as excinfo:
        sig(job, "wait").bind([5, 3], {})
    assert "'wait'" in message_of(excinfo) and "'ctx'" in message_of(excinfo) and "got 5" in message_of(excinfo)
    assert excinfo.value.parameter == "ctx" and excinfo.value.value == 5
    with pytest.raises(ArgumentError, match="'ctx' is injected"):
        sig(job).bind([3], {"ctx": "real"})
    assert sig(job).bind([3], {"ctx": None}) == ([3], {})


def test_injection_by_subclass_optional_and_keyword_only() -> None:
    def job(a: int, ctx: SubContext | None = None, *, inst: Instance | None, m: Manager) -> tuple[Any, ...]:
        return a, ctx, inst, m

    signature = sig(job)
    assert signature.injected == {"ctx": "context", "inst": "instance", "m": "manager"}
    assert signature.bind([1, "?"], {}) == ([1], {})
    assert signature.bind([1], {"inst": "?"}) == ([1], {})
    injections = {**INJECTIONS, "manager": "M"}
    assert roundtrip(signature, ["1"], injections=injections) == ((1, CTX), {"inst": INST, "m": "M"})


def test_injected_parameter_after_a_keyword_argument_goes_by_keyword() -> None:
    def job(a: int, ctx: Context, b: int = 2) -> tuple[Any, ...]:
        return a, ctx, b

    signature = sig(job)
    assert signature.bind([], {"a": "1", "b": "5"}) == ([], {"a": 1, "b": 5})
    call_args, call_kwargs = roundtrip(signature, [], {"a": "1"})
    assert call_args == () and call_kwargs == {"a": 1, "ctx": CTX}
    assert job(*call_args, **call_kwargs) == (1, CTX, 2)
    assert call(job, [1, 3]) == (1, CTX, 3)
    assert call(job, [1, "?", 3]) == (1, CTX, 3)

    def untyped(a, ctx: Context):  # type: ignore[no-untyped-def]
        return a, ctx

    assert call(untyped, ["?", "?"]) == ("?", CTX)  # "?" at a plain position is a plain value


def test_positional_only_parameters_with_defaults_before_an_injection() -> None:
    def job(a: int = 1, ctx: Context | None = None, /, b: int = 2) -> tuple[Any, ...]:
        return a, ctx, b

    signature = sig(job)
    assert signature.prepare_call([], {"b": 3}, INJECTIONS) == ((1, CTX), {"b": 3})
    with pytest.raises(ArgumentError, match="'a' is positional-only"):
        signature.bind([], {"a": 1})


# --- arity and keyword errors ----------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def test_too_many_arguments() -> None:
    with pytest.raises(ArgumentError) as excinfo:
        sig(add, "sum").bind((1, 2, 3), {})
    assert message_of(excinfo) == "job 'sum': expected 2 arguments (a, b), got 3: (1, 2, 3)"
    assert excinfo.value.kind == "sum" and excinfo.value.value == (1, 2, 3)


def test_too_few_arguments() -> None:
    with pytest.raises(ArgumentError) as excinfo:
        sig(add, "sum").bind((1,), {})
    assert message_of(excinfo) == "job 'sum': expected 2 arguments (a, b), got 1: (1,); missing b"
    assert excinfo.value.parameter == "b"


def test_arity_message_with_defaults_varargs_and_injection() -> None:
    def job(ctx: Context, a: int, b: int = 0, *rest: int) -> None:
        pass

    def one(a: int, b: int = 0) -> None:
        pass

    with pytest.raises(ArgumentError, match=r"expected at least 1 argument \(a, b, \*rest; injected ctx may be"):
        sig(job).bind([], {})
    with pytest.raises(ArgumentError, match=r"job 'j': expected 1 to 2 arguments \(a, b\), got 3: \(1, 2, 3\)"):
        sig(one, "j").bind([1, 2, 3], {})


def test_keyword_errors() -> None:
    def job(a: int, *, flag: bool, level: int = 1) -> None:
        pass

    signature = sig(job, "kw")
    with pytest.raises(ArgumentError) as excinfo:
        signature.bind([1], {"flag": True, "colour": "red"})
    assert "'kw'" in message_of(excinfo) and "'colour'" in message_of(excinfo) and "'red'" in message_of(excinfo)
    assert "a, flag, level" in message_of(excinfo) and excinfo.value.parameter == "colour"
    with pytest.raises(ArgumentError, match=r"job 'kw': parameter 'a' given twice, positionally \(1\) and as a keyw"):
        signature.bind([1], {"a": 2, "flag": True})
    with pytest.raises(ArgumentError, match="job 'kw': missing required keyword argument\\(s\\) 'flag'"):
        signature.bind([1], {})
    assert signature.bind([1], {"flag": "yes", "level": "3"}) == ([1], {"flag": True, "level": 3})


def test_uncoercible_value() -> None:
    with pytest.raises(ArgumentError) as excinfo:
        sig(add, "sum").bind(("x", 2), {})
    assert message_of(excinfo) == "job 'sum': parameter 'a' expects int, cannot convert 'x' ('x' is str)"
    assert (excinfo.value.kind, excinfo.value.parameter, excinfo.value.value) == ("sum", "a", "x")
    with pytest.raises(ArgumentError, match="job 'sum': parameter 'b' expects int, cannot convert 2.5"):
        sig(add, "sum").bind((1,), {"b": 2.5})


def test_var_args_and_var_kwargs() -> None:
    def job(a: int, *rest: int, scale: float = 1.0, **opts: dt.timedelta) -> Any:
        return a, rest, scale, opts

    signature = sig(job)
    assert signature.bind([1, "2", 3.0], {"scale": "2", "wait": "5m"}) == ([1, 2, 3], {"scale": 2.0, "wait": 300.0})
    assert call(job, [1, "2"], {"wait": 90}) == (1, (2,), 1.0, {"wait": dt.timedelta(seconds=90)})
    with pytest.raises(ArgumentError, match=r"parameter 'rest\[1\]' expects int, cannot convert 'x'"):
        signature.bind([1, 2, "x"], {})
    with pytest.raises(ArgumentError, match="parameter 'wait' expects timedelta"):
        signature.bind([1], {"wait": "soon"})


def test_untyped_executor_and_defaults() -> None:
    def job(a, b=10, *args, **kwargs):  # type: ignore[no-untyped-def]
        return a, b, args, kwargs

    signature = sig(job)
    assert signature.bind([(1, 2)], {}) == ([[1, 2]], {})
    assert signature.bind([1, 2, 3], {"z": {4}}) == ([1, 2, 3], {"z": [4]})
    assert signature.prepare_call([1], {}, INJECTIONS) == ((1,), {})
    assert call(job, [1]) == (1, 10, (), {})


def test_unserializable_argument() -> None:
    def job(a: Any, b: Any = None) -> None:
        pass

    with pytest.raises(UnserializableArgumentError) as excinfo:
        sig(job, "store").bind([1], {"b": [1, {"k": object()}]})
    text = message_of(excinfo)
    assert "'store'" in text and "'b'" in text and "object" in text and "[1]['k']" in text
    assert "only JSON-compatible values" in text and "dataclass" in text
    assert isinstance(excinfo.value, ArgumentError) and excinfo.value.value == [1, {"k": excinfo.value.value[1]["k"]}]


def test_prepare_call_reports_bad_stored_values() -> None:
    with pytest.raises(ArgumentError, match="job 'sum': parameter 'b' expects int, cannot convert 'q'"):
        sig(add, "sum").prepare_call([1, "q"], {}, {})
    with pytest.raises(ArgumentError, match="expected 2 arguments"):
        sig(add, "sum").prepare_call([1, 2, 3], {}, {})


# --- executors of every shape ------------------------------------------------------------------


async def async_job(n: int) -> int:
    return n


class AsyncCallable:
    async def __call__(self, n: int, ctx: Context) -> int:
        return n


class SyncCallable:
    def __call__(self, n: int) -> int:
        return n

    async def method(self, n: int) -> int:
        return n


def test_async_detection() -> None:
    assert sig(async_job).is_async
    assert sig(functools.partial(async_job, 1)).is_async
    assert sig(functools.partial(functools.partial(async_job), n=1)).is_async
    assert sig(AsyncCallable()).is_async
    assert sig(SyncCallable().method).is_async
    assert not sig(SyncCallable()).is_async
    assert not sig(add).is_async
    assert not sig(lambda: None).is_async


def test_callable_object_and_partial_signatures() -> None:
    signature = sig(AsyncCallable())
    assert signature.injected == {"ctx": "context"}
    assert roundtrip(signature, ["7"]) == ((7, CTX), {})
    partial = sig(functools.partial(add, 1), "p")
    assert partial.bind(["2"], {}) == ([2], {})
    with pytest.raises(ArgumentError, match=r"job 'p': expected 1 argument \(b\), got 2"):
        partial.bind([2, 3], {})
    assert sig(functools.partial(add, b=5)).bind(["1"], {"b": "6"}) == ([1], {"b": 6})


def test_builtins() -> None:
    printer = sig(print, "print")  # print has a signature: (*args, sep=' ', end='\n', file=None, flush=False)
    assert printer.bind(["a", 1], {"sep": "-"}) == (["a", 1], {"sep": "-"})
    assert printer.prepare_call(["a", 1], {"sep": "-"}, INJECTIONS) == (("a", 1), {"sep": "-"})
    biggest = sig(max, "max")  # max has none: anything goes, unchanged
    assert not biggest.is_async and biggest.injected == {}
    assert biggest.bind([3, (1, 2)], {"default": 0}) == ([3, [1, 2]], {"default": 0})
    assert biggest.prepare_call([3, 9], {}, INJECTIONS) == ((3, 9), {})
    with pytest.raises(UnserializableArgumentError, match="'max'"):
        biggest.bind([object()], {})


def test_not_callable() -> None:
    with pytest.raises(InvalidJobError, match="job 'broken': executor 42 is not callable"):
        ExecutorSignature.of("broken", 42, INJECTABLE)  # type: ignore[arg-type]


def forward_refs(inst: gojob.Instance, n: int, when: Undefined,  # type: ignore[name-defined] # noqa: F821
                 opt: Context | None = None,
                 *, m: Manager | None = None, items: list[int] = ()) -> None:  # type: ignore[assignment]
    pass


def test_forward_reference_annotations() -> None:
    signature = sig(forward_refs)  # get_type_hints fails on "gojob.Instance" and "Undefined"
    assert signature.injected == {"inst": "instance", "opt": "context", "m": "manager"}
    assert signature.bind(["?", "5", object.__name__], {"items": '[1, "2"]'}) == ([5, "object"], {"items": [1, 2]})
    assert signature.bind(["5", {"any": "thing"}], {}) == ([5, {"any": "thing"}], {})
    assert roundtrip(signature, ["5", "w"]) == ((INST, 5, "w", CTX), {"m": None})


def test_annotation_objects() -> None:
    def job(inst, d, when=None):  # type: ignore[no-untyped-def]
        return inst, d, when

    # this module uses `from __future__ import annotations`: set real objects, as a module without it would
    job.__annotations__ = {"inst": Optional[Instance], "d": dt.timedelta, "when": Optional[dt.datetime]}
    signature = sig(job)
    assert signature.injected == {"inst": "instance"}
    assert roundtrip(signature, ["?", "2h", "2024-05-06T07:08:09Z"]) == ((INST, dt.timedelta(hours=2), STAMP), {})


def test_resolvable_string_annotations() -> None:
    def job(c: ConcatString, when: dt.datetime) -> None:
        pass

    assert roundtrip(sig(job), [{"A": "a", "B": "b"}, 0]) == (
        (ConcatString("a", "b"), dt.datetime(1970, 1, 1, tzinfo=UTC)), {})


# --- coerce --------------------------------------------------------------------------------------

STAMP = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


COERCE_CASES = [
    # no hint: as it is
    (5, None, 5),
    ("x", Any, "x"),
    ([1], object, [1]),
    # int: no bools, no fractions
    (42, int, 42),
    ("  42 ", int, 42),
    (42.0, int, 42),
    ("-7", int, -7),
    (Decimal("3"), int, 3),
    (Level.LOW, int, Level.LOW),
    (3, float, 3.0),
    ("2.5", float, 2.5),
    (2.5, float, 2.5),
    (True, bool, True),
    (0, bool, False),
    ("Yes", bool, True),
    (" off ", bool, False),
    ("1", bool, True),
    ("FALSE", bool, False),
    ("s", str, "s"),
    (5, str, "5"),
    (1.5, str, "1.5"),
    (Decimal("1.10"), str, "1.10"),
    (ID, str, str(ID)),
    (b"ab", bytes, b"ab"),
    ("é", bytes, "é".encode()),
    (None, type(None), None),
    # dates and times
    ("2024-05-06T07:08:09Z", dt.datetime, STAMP),
    (STAMP.timestamp(), dt.datetime, STAMP),
    (0, dt.datetime, dt.datetime(1970, 1, 1, tzinfo=UTC)),
    ("2024-05-06T07:08:09", dt.datetime, dt.datetime(2024, 5, 6, 7, 8, 9)),
    ("2024-05-06", dt.date, dt.date(2024, 5, 6)),
    (STAMP, dt.date, dt.date(2024, 5, 6)),
    ("07:08", dt.time, dt.time(7, 8)),
    (1.5, dt.timedelta, dt.timedelta(seconds=1.5)),
    ("1.5", dt.timedelta, dt.timedelta(seconds=1.5)),
    ("90s", dt.timedelta, dt.timedelta(seconds=90)),
    ("5m", dt.timedelta, dt.timedelta(minutes=5)),
    ("2h", dt.timedelta, dt.timedelta(hours=2)),
    ("1h30m", dt.timedelta, dt.timedelta(minutes=90)),
    ("1d", dt.timedelta, dt.timedelta(days=1)),
    ("250ms", dt.timedelta, dt.timedelta(milliseconds=250)),
    ("01:30:00", dt.timedelta, dt.timedelta(minutes=90)),
    ("-1m", dt.timedelta, dt.timedelta(minutes=-1)),
    (str(dt.timedelta(days=2, seconds=5)), dt.timedelta, dt.timedelta(days=2, seconds=5)),
    (str(dt.timedelta(seconds=-1)), dt.timedelta, dt.timedelta(seconds=-1)),
    # other scalars
    ("1.10", Decimal, Decimal("1.10")),
    (0.1, Decimal, Decimal("0.1")),
    (3, Decimal, Decimal(3)),
    (str(ID), uuid.UUID, ID),
    (ID.hex, uuid.UUID, ID),
    ("/tmp/x", Path, Path("/tmp/x")),
    ("a/b", PurePosixPath, PurePosixPath("a/b")),
    ("red", Color, Color.RED),
    ("GREEN", Color, Color.GREEN),
    (Color.RED, Color, Color.RED),
    (2, Level, Level.HIGH),
    ("LOW", Level, Level.LOW),
    ("2", Level, Level.HIGH),
    # Optional, Union (a value whose type is a member stays; else the first member that converts it), Literal
    (None, Optional[int], None),
    ("3", Optional[int], 3),
    ("3", int | None, 3),
    ("3", Union[int, str], "3"),
    (3.0, Union[int, str], 3),
    (3, Union[str, int], 3),
    (3.0, Union[str, int], "3.0"),
    ("3", Union[int, dt.timedelta], 3),
    ("3m", Union[int, dt.timedelta], dt.timedelta(minutes=3)),
    ("b", Literal["a", "b"], "b"),
    ("2", Literal[1, 2], 2),
    ("RED", Literal[Color.RED], Color.RED),
    # containers, from containers or JSON text
    ('[1, "2", 3.0]', list[int], [1, 2, 3]),
    ((1, "2"), list[int], [1, 2]),
    ([1, 2], tuple[int, ...], (1, 2)),
    (["1", "x"], tuple[int, str], (1, "x")),
    ([1, 1, "2"], set[int], {1, 2}),
    ([3], frozenset[int], frozenset({3})),
    ((1, 2), Sequence[str], ["1", "2"]),
    ((1, 2), list, [1, 2]),
    ([1, 2], tuple, (1, 2)),
    ('["a"]', list[str], ["a"]),
    ({"a": "1"}, dict[str, int], {"a": 1}),
    ('{"a": 1}', dict[str, int], {"a": 1}),
    ({"1": "x"}, dict[int, str], {1: "x"}),
    ({"true": 1}, dict[bool, int], {True: 1}),
    ({"a": 1}, typing.Mapping[str, float], {"a": 1.0}),
    ({"a": [1]}, dict, {"a": [1]}),
    ({"title": "T", "year": 2000}, Movie, {"title": "T", "year": 2000}),
    ("7", UserId, 7),
    ("7", Annotated[int, "meta"], 7),
    # dataclasses, nested and recursive
    ({"x": "1"}, Point, Point(1)),
    ('{"x": 1, "y": 2}', Point, Point(1, 2)),
    ({"value": 1, "children": [{"value": 2}]}, Node, Node(1, [Node(2)])),
    ({"name": "s", "points": [{"x": 1}], "origin": None, "tags": ["b", "a"], "area": 9.0}, Shape,
     Shape("s", [Point(1)], None, {"a", "b"})),
]


@pytest.mark.parametrize(("value", "hint", "expected"), COERCE_CASES)
def test_coerce(value: Any, hint: Any, expected: Any) -> None:
    result = coerce(value, hint, kind="k", parameter="p")
    assert result == expected
    assert type(result) is type(expected)


def test_coerce_keeps_instances() -> None:
    point = Point(1, 2)
    assert coerce(point, Point, kind="k", parameter="p") is point
    money = Money(3)
    assert coerce(money, Money, kind="k", parameter="p") is money
    made = coerce({"amount": 5}, Money, kind="k", parameter="p")
    assert isinstance(made, Money) and (made.amount, made.currency) == (5, "EUR")
    assert coerce(Level.HIGH, Union[str, Level], kind="k", parameter="p") is Level.HIGH


COERCE_ERRORS = [
    (True, int, "a bool is not taken as an int"),
    ("4.5", int, "'4.5' is str"),
    (4.5, int, "4.5 is not a whole number"),
    ([1], str, "[1] is list"),
    ("maybe", bool, "'maybe' is str"),
    (2, bool, "2 is int"),
    (True, float, "True is bool"),
    (1, type(None), "1 is int"),
    ("soon", dt.timedelta, "'soon' is str"),
    ("yesterday", dt.datetime, "'yesterday' is str"),
    ("x", uuid.UUID, "'x' is str"),
    ("nope", Decimal, "'nope' is str"),
    (1, bytes, "1 is int"),
    (1, Path, "1 is int"),
    ("BLUE", Color, "neither a value ('red', 'green') nor a name (RED, GREEN) of Color"),
    ("x", Union[int, float], "fits none of int, float"),
    ("c", Literal["a", "b"], "'c' is not one of 'a', 'b'"),
    ([1], Optional[str], "[1] is list"),
    ("[1, ", list[int], "is str, not a JSON array"),
    (["x"], list[int], "item 0: cannot convert 'x' to int"),
    ([1, 2, 3], tuple[int, int], "has 3 items, 2 expected"),
    ({"a": "x"}, dict[str, int], "value of key 'a': cannot convert 'x' to int"),
    ({"x": 1}, dict[int, int], "key 'x': cannot convert 'x' to int"),
    (5, dict, "5 is int"),
    ("{}", list, "not a JSON array"),
    ({"A": "a"}, ConcatString, "missing required field(s) 'B' of ConcatString"),
    ({"A": "a", "B": "b", "C": 1, "D": 2}, ConcatString,
     "unknown field(s) 'C', 'D' for ConcatString (fields: A, B, S)"),
    ({"x": "one"}, Point, "field 'x': cannot convert 'one' to int ('one' is str)"),
    ("[1]", Point, "not a JSON object"),
    (5, Point, "5 is int"),
    ({"amount": 1, "bogus": 2}, Money, "Money(**{'amount': 1, 'bogus': 2}) raised TypeError"),
    ("money", Money, "'money' is str"),
    ([[1]], set[list[int]], "unhashable"),
]


@pytest.mark.parametrize(("value", "hint", "detail"), COERCE_ERRORS)
def test_coerce_errors(value: Any, hint: Any, detail: str | None) -> None:
    with pytest.raises(ArgumentError) as excinfo:
        coerce(value, hint, kind="kind1", parameter="param1")
    text = message_of(excinfo)
    assert text.startswith("job 'kind1': parameter 'param1' expects ")
    assert f"cannot convert {value!r}" in text
    if detail:
        assert detail in text
    assert (excinfo.value.kind, excinfo.value.parameter, excinfo.value.value) == ("kind1", "param1", value)


def test_coerce_error_names_the_hint() -> None:
    with pytest.raises(ArgumentError, match=r"expects Optional\[list\[int\]\]"):
        coerce("x", Optional[list[int]], kind="k", parameter="p")
    with pytest.raises(ArgumentError, match=r"expects datetime, cannot convert 'x'"):
        coerce("x", dt.datetime, kind="k", parameter="p")


# --- to_jsonable ---------------------------------------------------------------------------------


JSON_CASES = [
    (None, None),
    (True, True),
    (3, 3),
    (1.5, 1.5),
    (float("inf"), float("inf")),
    ("s", "s"),
    (Level.HIGH, 2),
    (Color.RED, "red"),
    (STAMP, "2024-05-06T07:08:09+00:00"),
    (dt.date(2024, 5, 6), "2024-05-06"),
    (dt.time(7, 8), "07:08:00"),
    (dt.timedelta(minutes=1, milliseconds=500), 60.5),
    (Decimal("1.10"), "1.10"),
    (ID, str(ID)),
    (Path("/a/b"), "/a/b"),
    ((1, (2, 3)), [1, [2, 3]]),
    ({3, 1, 2}, [1, 2, 3]),
    (frozenset({"b", "a"}), ["a", "b"]),
    (b"hi", "hi"),
    ({"a": {1: Color.RED}}, {"a": {"1": "red"}}),
    ({1.5: 1, True: 2, Color.RED: 3, ID: 4}, {"1.5": 1, "true": 2, "red": 3, str(ID): 4}),
    (Point(1, 2), {"x": 1, "y": 2}),
    (Shape("s", [Point(1)], tags={"b", "a"}),
     {"name": "s", "points": [{"x": 1, "y": 0}], "origin": None, "tags": ["a", "b"], "area": 0.0}),
]


@pytest.mark.parametrize(("value", "expected"), JSON_CASES)
def test_to_jsonable(value: Any, expected: Any) -> None:
    result = to_jsonable(value, kind="k", parameter="p")
    assert result == expected
    json.dumps(result)


@pytest.mark.parametrize(("value", "detail"), [
    (object(), "cannot store the value <object object"), (b"\xff", "bytes that are not UTF-8"),
    ({(1, 2): 3}, "dict key (1, 2)"), ({None: 1}, "dict key None"), ([1, {"a": [Money(1)]}], "at [1]['a'][0] of"),
    (Node(1, [Node(2, [Money(3)])]), "at .children[0].children[0] of"),  # type: ignore[list-item]
])
def test_to_jsonable_errors(value: Any, detail: str) -> None:
    with pytest.raises(UnserializableArgumentError) as excinfo:
        to_jsonable(value, kind="kind1", parameter="param1")
    text = message_of(excinfo)
    assert "job 'kind1': parameter 'param1'" in text and detail in text and "only JSON-compatible values" in text
    assert excinfo.value.value is value


def test_to_jsonable_cycle() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(UnserializableArgumentError, match="nested too deeply"):
        to_jsonable(cycle, kind="k", parameter="p")


# --- a full round trip through JSON -------------------------------------------------------------


def test_round_trip_of_every_convertible_type() -> None:
    def job(ctx: Context, when: dt.datetime, day: dt.date, at: dt.time, wait: dt.timedelta, price: Decimal,
            id: uuid.UUID, path: Path, color: Color, level: Level, pair: tuple[int, str], ids: set[int],
            by_level: dict[Level, list[Point]], shape: Shape, blob: bytes, maybe: Point | None = None,
            *, mode: Literal["fast", "slow"] = "fast") -> None:
        pass

    values = (STAMP, dt.date(2024, 1, 2), dt.time(3, 4, 5, 6), dt.timedelta(hours=1, microseconds=5), Decimal("9.99"),
              ID, Path("/srv/data"), Color.GREEN, Level.HIGH, (1, "a"), {3, 1}, {Level.LOW: [Point(1, 2)]},
              Shape("sq", [Point(0), Point(1, 1)], Point(5), {"x"}), b"bytes", Point(7))
    call_args, call_kwargs = roundtrip(sig(job), values, {"mode": "slow"})
    assert call_args == (CTX, *values)
    assert call_kwargs == {"mode": "slow"}
    assert [type(v) for v in call_args[1:]] == [type(v) for v in values]


# --- results -------------------------------------------------------------------------------------


def test_results_list() -> None:
    assert results_list((1, "a")) == [1, "a"]
    assert results_list(()) == []
    assert results_list(None) == []
    assert results_list([1, 2]) == [[1, 2]]
    assert results_list("x") == ["x"]


def test_encode_result() -> None:
    assert encode_result((Point(1), STAMP)) == [{"x": 1, "y": 0}, "2024-05-06T07:08:09+00:00"]
    assert encode_result(None) is None
    money = Money(3)
    assert encode_result(money) == {"__unserializable__": "Money", "repr": repr(money)}
    assert encode_result([money]) == {"__unserializable__": "list", "repr": repr([money])}

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    encoded = encode_result(BadRepr())
    assert encoded["__unserializable__"].endswith("BadRepr") and "BadRepr object at" in encoded["repr"]
    assert len(encode_result(["x" * 5000, object()])["repr"]) == 1000


def test_placeholder() -> None:
    assert PLACEHOLDER == "?"

"""The shared SQL code on its own: rows to Instances and back, what is refused, the rendering of a bad
row, the dialects' names and clauses, option checks."""

from __future__ import annotations

import json
import time

import pytest
from gojob_core import Instance, Query, State, StoreError
from gojob_store_sql import INSTANCE_COLUMNS, PostgresDialect, SqliteDialect
from gojob_store_sql._codec import dumps, loads
from gojob_store_sql._options import integer, name, query_params, seconds
from gojob_store_sql._rows import EXTRA_FIELDS, decode_instance, instance_values, render_row


def _inst(**kw: object) -> Instance:
    t = time.time()
    return Instance(uuid="u1", kind="k", args=[1, "x", {"a": [None, 2.5]}], kwargs={"b": True}, priority=-3,
                    state=State.SCHEDULED, created_ts=t, ready_ts=t, max_abandons=None, **kw)  # type: ignore[arg-type]


def test_an_instance_round_trips_through_its_row() -> None:
    inst = _inst()
    inst.result = {"r": [1, 2]}
    got = decode_instance(instance_values(inst))
    assert got.to_dict() == inst.to_dict()


def test_fields_without_a_column_travel_in_extra() -> None:
    # whatever fields this gojob_core's Instance has beyond the columns (headers, when it has them)
    inst = _inst()
    for f in EXTRA_FIELDS:
        setattr(inst, f, {"trace": "00-abc"} if f == "headers" else getattr(inst, f))
    row = instance_values(inst)
    assert len(row) == len(INSTANCE_COLUMNS)
    assert decode_instance(row).to_dict() == inst.to_dict()
    if not EXTRA_FIELDS:
        assert row[-1] is None


@pytest.mark.parametrize(("column", "value", "words"), [
    ("state", "RUNNING-ISH", "unknown state"),
    ("args", b"\xff not json", "args is not JSON"),
    ("args", b'{"a": 1}', "args is dict"),
    ("kwargs", b"[1]", "kwargs is list"),
    ("attempts", "2", "attempts is str"),
    ("kind", "k\udcff", "surrogates not allowed"),
    ("extra", b"[1]", "extra is list"),
])
def test_a_bad_row_is_refused(column: str, value: object, words: str) -> None:
    row = list(instance_values(_inst()))
    row[INSTANCE_COLUMNS.index(column)] = value
    with pytest.raises((ValueError, TypeError), match=words):
        decode_instance(row)


def test_a_bad_row_is_rendered_losslessly() -> None:
    row = list(instance_values(_inst()))
    row[INSTANCE_COLUMNS.index("args")] = b"\xff\x00garbage"
    raw = render_row("instances", INSTANCE_COLUMNS, row)
    doc = json.loads(raw.decode("utf-8", "surrogateescape"))
    assert doc["columns"]["args"].encode("utf-8", "surrogateescape") == b"\xff\x00garbage"
    assert doc["columns"]["priority"] == -3


def test_values_the_store_cannot_keep_are_store_errors() -> None:
    with pytest.raises(StoreError, match="priority"):
        instance_values(_inst().__class__(uuid="u", kind="k", priority=2 ** 63))
    bad = _inst()
    bad.args = [object()]
    with pytest.raises(StoreError, match="arguments cannot be stored as JSON"):
        instance_values(bad)


def test_json_as_the_json_module_writes_it() -> None:
    for value in ([1, 2.5, "ü", None], {"1": 2}, 2 ** 70, float("nan"), [float("inf")]):
        text = dumps(value)
        again = loads(text)
        assert json.dumps(again) == json.dumps(value)


def test_dialect_names_and_clauses() -> None:
    pg = PostgresDialect(prefix="app_", schema="jobs")
    assert pg.instances == '"jobs"."app_instances"' and pg.ph(3) == "$3"
    where, args = pg.where(Query(kind="k", state=[State.COMPLETED, State.CANCELED], since=1.0, until=2.0),
                           ts_col="ts")
    assert where == " WHERE aside = FALSE AND kind = $1 AND state IN ($2, $3) AND ts >= $4 AND ts <= $5"
    assert args == ["k", "CANCELED", "COMPLETED", 1.0, 2.0]
    lite = SqliteDialect(prefix="")
    assert lite.history == '"history"' and lite.ph(1) == "?"
    with pytest.raises(ValueError, match="SQLite has no schemas"):
        SqliteDialect(schema="x")
    with pytest.raises(ValueError, match="prefix must be"):
        PostgresDialect(prefix='x"; DROP TABLE y; --')


def test_option_checks_name_url_parameter_and_value() -> None:
    url = "x://h"
    assert seconds(url, "t", "1.5") == 1.5 and integer(url, "n", "4") == 4 and name(url, "s", "ok_1") == "ok_1"
    for call, words in ((lambda: seconds(url, "timeout", "inf"), "timeout must be a positive number of seconds"),
                        (lambda: integer(url, "pool_size", "2x"), "pool_size must be an integer"),
                        (lambda: name(url, "schema", "a b"), "schema must be letters"),
                        (lambda: query_params(url, "a=1&zz=2", {"a"}), "unknown parameter(s) ['zz']")):
        with pytest.raises(ValueError) as err:
            call()
        assert repr(url) in str(err.value) and words in str(err.value)

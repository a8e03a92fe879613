"""The conversions at the store's edges give exactly what the core's own do, and compaction is opt-in."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from gojob_core import Instance, State
from gojob_core.testing.servers import Server
from gojob_store_etcd import EtcdStore, parse_etcd_url
from gojob_store_etcd._records import _instance, decode_record, encode_record


def _record(**changes: Any) -> dict[str, Any]:
    t = time.time()
    inst = Instance(uuid="u-1", kind="k", args=[1, "a"], kwargs={"x": 1.5}, priority=-3, state=State.PROCESSING,
                    attempts=2, max_retries=3, timeout=4.0, created_ts=t, ready_ts=t, started_ts=t, node="n",
                    lease_ts=t + 30, seq=7, abandoned=1, max_abandons=None)
    d = inst.to_dict()
    d["h"] = ["00000000000000001/tag"]
    d.update(changes)
    return d


def _fields(inst: Instance) -> dict[str, Any]:
    return {**inst.to_dict(), "_sink": inst._sink}


@pytest.mark.parametrize("changes", [
    {}, {"args": None, "kwargs": None, "abandoned": None, "max_abandons": 2, "h": None},
    {"state": "SCHEDULED", "node": None, "lease_ts": None, "result": {"a": [1]}, "error": "E: x"},
])
def test_decode_record_is_instance_from_dict(changes: dict[str, Any]) -> None:
    d = _record(**changes)
    inst, pointers = decode_record(json.dumps(d).encode(), "u-1")
    assert _fields(inst) == _fields(Instance.from_dict(d))
    assert pointers == d["h"]


_ODD = (None, 0, 2, 1.5, True, "x", "SCHEDULED", [], [1], {}, {"a": "b"})


@pytest.mark.parametrize("field", list(Instance(uuid="", kind="").to_dict()))
def test_the_fast_decoder_is_instance_from_dict_for_any_value_of_any_field(field: str) -> None:
    # the store's own decoder must give what the core's gives (or raise what it raises), whatever a field
    # holds: a field or check added to Instance.from_dict fails here until the store's decoder has it
    for value in _ODD:
        d = _record(**{field: value})
        try:
            expected: Any = _fields(Instance.from_dict(d))
        except Exception as exc:  # noqa: BLE001
            expected = (type(exc), str(exc))
        try:
            got: Any = _fields(_instance(d))
        except Exception as exc:  # noqa: BLE001
            got = (type(exc), str(exc))
        assert got == expected, (field, value)


def test_decode_record_of_a_record_missing_fields_fills_them_as_the_core_does() -> None:
    d = _record()
    for name in ("max_abandons", "abandoned", "timezone", "h"):
        del d[name]
    inst, pointers = decode_record(json.dumps(d).encode())
    assert _fields(inst) == _fields(Instance.from_dict(d)) and pointers is None


@pytest.mark.parametrize(("changes", "error"), [
    ({"state": "LOST"}, "is not a valid State"), ({"state": ["x"]}, "is not a valid State"),
    ({"seq": "7"}, "seq has the wrong type"), ({"attempts": True}, "attempts has the wrong type"),
    ({"uuid": "u-2"}, "that of instance 'u-2'"), ({"h": "x"}, "h has the wrong type"),
])
def test_decode_record_refuses_what_the_store_would_refuse(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decode_record(json.dumps(_record(**changes)).encode(), "u-1")


def test_encode_record_is_to_dict_with_the_pointers() -> None:
    inst = Instance.from_dict(_record())
    assert json.loads(encode_record(inst, ["p/t"])) == json.loads(json.dumps({**inst.to_dict(), "h": ["p/t"]}))


# -- compaction: opt-in -----------------------------------------------------------------------------------------
def test_the_store_does_not_compact_unless_asked() -> None:
    assert parse_etcd_url("etcd://h").compact == 0
    assert parse_etcd_url("etcd://h?compact=600").compact == 600
    assert parse_etcd_url("etcd://h", compact=60).compact == 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_compaction_task_runs_only_when_asked(etcd_server: Server) -> None:
    prefix = f"/c{uuid.uuid4().hex[:8]}/"
    for options, expected in (({}, False), ({"compact": 600}, True)):
        store = EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix, **options)
        await store.start()
        try:
            assert any(t.get_name() == "gojob-etcd-compact" for t in store._tasks) is expected
        finally:
            await store.stop()

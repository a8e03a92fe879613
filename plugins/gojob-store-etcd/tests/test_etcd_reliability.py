"""Issue 19 on the etcd store, against a real etcd: corrupt records are reported byte-exact, kept and
never run, and take nothing else with them; finishes are fenced by attempt; an instance abandoned
``max_abandons`` times ends TERMINATED; a suspect instance is claimed alone.

Leases are made to lapse by revoking the node's etcd lease (what etcd does when the node dies), so the
tests wait on nothing but the store's answers.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from gojob_core import CorruptRecordError, Instance, Job, Manager, Query, State
from gojob_core._instance import DEFAULT_MAX_ABANDONS
from gojob_core.abc import Outcome, abandon_limit_message
from gojob_core.testing.servers import Server
from gojob_store_etcd import EtcdStore
from gojob_store_etcd._client import op_delete, op_put, prefix_end

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def prefix() -> str:
    return f"/r{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def store(etcd_server: Server, prefix: str) -> AsyncIterator[EtcdStore]:
    s = EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def _inst(*, priority: int = 0, max_abandons: int | None = 5, arg: int = 0) -> Instance:
    t = time.time()
    return Instance(uuid=str(uuid.uuid4()), kind="k", args=[arg], priority=priority, state=State.SCHEDULED,
                    created_ts=t, ready_ts=t, max_abandons=max_abandons)


def _raw(report_raw: str) -> bytes:
    """The bytes a report's ``raw`` stands for (the store's documented lossless text)."""
    return report_raw.encode("utf-8", "surrogateescape")


async def _get(store: EtcdStore, key: bytes) -> tuple[bytes, int] | None:
    kvs = (await store._c().range(key)).kvs
    return (kvs[0].value, kvs[0].mod_revision) if kvs else None


async def _keys(store: EtcdStore, base: bytes) -> list[bytes]:
    return [kv.key for kv in (await store._c().range(base, prefix_end(base), keys_only=True)).kvs]


async def _ready_key(store: EtcdStore, uid: str) -> bytes:
    [key] = [k for k in await _keys(store, store.keys.ready) if f"/{uid}/".encode() in k]
    return key


async def _run_all(store: EtcdStore, node: str = "n1") -> list[Instance]:
    """Claim until nothing is left, finishing each batch: every claim must come back whole."""
    ran: list[Instance] = []
    for _ in range(50):
        got = await store.claim(node, 10, 30.0)
        if not got:
            return ran
        oks = await store.finish(node, [Outcome(i.uuid, State.COMPLETED, result=i.args, attempt=i.attempts)
                                        for i in got])
        assert oks == [True] * len(got)
        ran += got
    raise AssertionError("the queue never ran dry")


async def _lapse(store: EtcdStore, lease: float = 30.0) -> None:
    """This node's etcd lease ends (as when the node dies): its liveness key goes with it."""
    await store._c().revoke(store._leases[max(1, math.ceil(lease))])


async def _claim_after_lapse(store: EtcdStore, node: str, limit: int = 10) -> list[Instance]:
    """The first claim after a lapsed lease takes nothing (it learns the lease is gone); the next one
    claims under a new lease."""
    got = await store.claim(node, limit, 30.0)
    return got or await store.claim(node, limit, 30.0)


# -- corrupt instance records ------------------------------------------------------------------------------
def _wrong_shapes(uid: str, other: dict[str, object]) -> dict[str, bytes]:
    return {
        "garbage-bytes": b"\xff\xfe\x00{garbage \x80 not json",
        "json-list": b"[1, 2, 3]",
        "json-string": b'"SCHEDULED"',
        "missing-fields": json.dumps({"uuid": uid, "kind": "k", "state": "SCHEDULED"}).encode(),
        "wrong-types": json.dumps({**other, "uuid": uid, "attempts": "2"}).encode(),
        "unknown-state": json.dumps({**other, "uuid": uid, "state": "RUNNING-ISH"}).encode(),
        "another-instance": json.dumps(other).encode(),
    }


@pytest.mark.parametrize("kind", ["garbage-bytes", "json-list", "json-string", "missing-fields", "wrong-types",
                                  "unknown-state", "another-instance"])
@pytest.mark.parametrize("index", ["ready", "delayed"])
async def test_a_corrupt_instance_record_is_reported_kept_and_never_run(store: EtcdStore, kind: str,
                                                                       index: str) -> None:
    good = [_inst(arg=i) for i in range(6)]
    victim = _inst(arg=99)
    await store.enqueue([*good[:3], victim, *good[3:]])  # FIFO: the victim is in the middle of the batch
    c = store._c()
    ikey = store.keys.instance + victim.uuid.encode()
    rkey = await _ready_key(store, victim.uuid)
    if index == "delayed":  # the instance waits in the delayed index, due: the promotion must not move it
        queued = await _get(store, rkey)
        assert queued is not None
        dkey = store.keys.delayed + rkey[len(store.keys.ready):].split(b"/", 1)[1]
        await c.txn([op_delete(rkey), op_put(dkey, queued[0])])
        rkey = dkey
    other = json.loads((await _get(store, store.keys.instance + good[0].uuid.encode()))[0])  # type: ignore[index]
    bad = _wrong_shapes(victim.uuid, other)[kind]
    await c.txn([op_put(ikey, bad)])
    kept = await _get(store, ikey)
    queued = await _get(store, rkey)
    assert kept is not None and queued is not None
    history_before = await store.lookup_history(Query(instance=good[0]))

    # the claim batch holding it hands out the good ones, and they complete; it never runs
    [first] = await store.claim("n1", 1, 30.0)
    assert first.uuid == good[0].uuid
    ran = [first, *await _run_all(store)]
    assert await store.finish("n1", [Outcome(first.uuid, State.COMPLETED, attempt=1)]) == [True]
    assert sorted(i.uuid for i in ran) == sorted(i.uuid for i in good)
    for g in good:
        done = await store.get_instance(g.uuid)
        assert done is not None and done.state is State.COMPLETED
    assert len(history_before) == 2

    # kept byte-exact where it was, at the same revision: nothing rewrote it
    assert await _get(store, ikey) == kept
    # reported byte-exact; its queue entry (a readable copy of the record as queued) was set aside
    reports = {r.key: r for r in await store.corrupt_records()}
    assert set(reports) == {ikey.decode(), rkey.decode()}
    assert _raw(reports[ikey.decode()].raw) == bad
    assert _raw(reports[rkey.decode()].raw) == queued[0]
    assert "not run" in reports[rkey.decode()].reason
    assert not await _keys(store, store.keys.ready) and not await _keys(store, store.keys.delayed)
    assert not await _keys(store, store.keys.running)
    # skipped (and reported) by lookups, refused by get
    assert sorted(i.uuid for i in await store.list_instances(Query())) == sorted(i.uuid for i in good)
    assert await store.list_instances(Query(instance=victim.uuid)) == []
    with pytest.raises(CorruptRecordError):
        await store.get_instance(victim.uuid)
    assert await store.claim("n2", 10, 30.0) == []

    # an operator drops it: the report, the kept bytes and the unreadable record go
    assert await store.drop_corrupt_record(ikey.decode()) is True
    assert await _get(store, ikey) is None
    assert await store.drop_corrupt_record(ikey.decode()) is False
    assert [r.key for r in await store.corrupt_records()] == [rkey.decode()]
    assert await store.drop_corrupt_record(rkey.decode()) is True
    assert await store.corrupt_records() == []
    assert not await _keys(store, store.keys.report) and not await _keys(store, store.keys.kept)
    assert await store.get_instance(victim.uuid) is None


async def test_a_record_rewritten_in_place_is_not_deleted_by_a_drop(store: EtcdStore) -> None:
    inst = _inst()
    await store.enqueue([inst])
    ikey = store.keys.instance + inst.uuid.encode()
    good = await _get(store, ikey)
    assert good is not None
    await store._c().txn([op_put(ikey, b"{broken")])
    assert await store.list_instances(Query()) == []
    assert [r.key for r in await store.corrupt_records()] == [ikey.decode()]
    await store._c().txn([op_put(ikey, good[0])])  # repaired by hand before the report is dropped
    assert await store.drop_corrupt_record(ikey.decode()) is True
    assert await _get(store, ikey) is not None  # the repaired record is not the bytes reported: kept
    assert await store.drop_corrupt_record("/no/such/key") is False


# -- corrupt queue entries -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["garbage-bytes", "json-list", "another-instance", "not-scheduled"])
@pytest.mark.parametrize("index", ["ready", "delayed"])
async def test_a_corrupt_queue_entry_is_set_aside_and_its_instance_still_runs(store: EtcdStore, kind: str,
                                                                             index: str) -> None:
    good = [_inst(arg=i) for i in range(6)]
    victim = _inst(arg=99)
    await store.enqueue([*good[:3], victim, *good[3:]])
    c = store._c()
    ikey = store.keys.instance + victim.uuid.encode()
    key = await _ready_key(store, victim.uuid)
    record = await _get(store, ikey)
    assert record is not None
    bad = {"garbage-bytes": b"\x00\xff garbage",
           "json-list": b"[]",
           "another-instance": (await _get(store, store.keys.instance + good[0].uuid.encode()))[0],  # type: ignore[index]
           "not-scheduled": json.dumps({**json.loads(record[0]), "state": "COMPLETED"}).encode()}[kind]
    if index == "delayed":
        dkey = store.keys.delayed + key[len(store.keys.ready):].split(b"/", 1)[1]
        await c.txn([op_delete(key), op_put(dkey, bad)])
        key = dkey
    else:
        await c.txn([op_put(key, bad)])

    ran = await _run_all(store)
    # every instance ran once: the good ones in the batch with the bad entry, the victim put back in
    # the queue from its own (readable) record
    assert sorted(i.uuid for i in ran) == sorted(i.uuid for i in [*good, victim])
    again = [i for i in ran if i.uuid == victim.uuid]
    assert len(again) == 1 and again[0].args == [99] and again[0].attempts == 1
    done = await store.get_instance(victim.uuid)
    assert done is not None and done.state is State.COMPLETED and done.result == [99]
    # the entry was reported byte-exact and kept aside (its key in the index is free again)
    [report] = await store.corrupt_records()
    assert report.key == key.decode() and _raw(report.raw) == bad
    assert not await _keys(store, store.keys.ready) and not await _keys(store, store.keys.delayed)
    assert await store.drop_corrupt_record(report.key) is True
    assert await store.corrupt_records() == []
    assert not await _keys(store, store.keys.report) and not await _keys(store, store.keys.kept)


async def test_a_malformed_queue_key_stops_nothing(store: EtcdStore) -> None:
    c = store._c()
    odd = [store.keys.ready + b"garbage", store.keys.ready + b"0/\xff\xfe/x", store.keys.delayed + b"not-a-time"]
    await c.txn([op_put(k, b"x") for k in odd])
    good = [_inst(arg=i) for i in range(5)]
    await store.enqueue(good)
    ran = await _run_all(store)
    assert sorted(i.uuid for i in ran) == sorted(i.uuid for i in good)
    assert sorted(_raw(r.key) for r in await store.corrupt_records()) == sorted(odd)
    assert not await _keys(store, store.keys.ready) and not await _keys(store, store.keys.delayed)
    for r in await store.corrupt_records():
        assert await store.drop_corrupt_record(r.key) is True
    assert await store.corrupt_records() == []


async def test_a_running_entry_whose_record_turned_corrupt_is_set_aside_once_its_lease_ends(
        store: EtcdStore, etcd_server: Server, prefix: str) -> None:
    inst, other = _inst(arg=1), _inst(arg=2)
    await store.enqueue([inst])
    [got] = await store.claim("n1", 1, 30.0)
    ikey, pkey = store.keys.instance + inst.uuid.encode(), store.keys.running + inst.uuid.encode()
    running = await _get(store, pkey)
    assert running is not None
    await store._c().txn([op_put(ikey, b"\x01garbage")])
    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, attempt=1)]) == [False]
    assert await _get(store, ikey) is not None and (await _get(store, ikey))[0] == b"\x01garbage"  # type: ignore[index]
    await _lapse(store)
    live = EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)
    await live.start()
    try:
        assert await live.reclaim_expired("n2") == []
        reports = {r.key: r for r in await live.corrupt_records()}
        assert set(reports) == {ikey.decode(), pkey.decode()}
        assert _raw(reports[pkey.decode()].raw) == running[0]
        assert await _get(live, pkey) is None  # moved aside: nothing reads it again and again
        await live.enqueue([other])
        assert [i.uuid for i in await live.claim("n2", 10, 30.0)] == [other.uuid]
    finally:
        await live.stop()


async def test_a_node_runs_the_good_instances_around_corrupt_records(store: EtcdStore, etcd_server: Server,
                                                                     prefix: str) -> None:
    """A Manager (a real node) with corrupt records of each kind in its queue: every good instance runs
    and completes, the instance whose queue entry was garbage too, the unreadable one never."""
    ran: list[int] = []

    async def body(n: int) -> int:
        ran.append(n)
        return n

    job = Job(kind="k", executor=body)
    good = [_inst(arg=i) for i in range(30)]
    bad_record, bad_entry = _inst(arg=100), _inst(arg=101)
    await store.enqueue([*good[:10], bad_record, *good[10:20], bad_entry, *good[20:]])
    c = store._c()
    await c.txn([op_put(store.keys.instance + bad_record.uuid.encode(), b"\xfe\xff{{"),
                 op_put(await _ready_key(store, bad_entry.uuid), b"[not a record")])
    async with Manager(f"{etcd_server.url('etcd')}?prefix={prefix}", num_workers=4, node_id="node") as mgr:
        await mgr.register_job(job)
        for inst in [*good, bad_entry]:
            done = await mgr.wait(inst.uuid, timeout=30)
            assert done.state is State.COMPLETED and done.result == inst.args[0]
    assert sorted(ran) == sorted([*range(30), 101])
    reports = {r.key for r in await store.corrupt_records()}
    assert (store.keys.instance + bad_record.uuid.encode()).decode() in reports
    assert (await _get(store, store.keys.instance + bad_record.uuid.encode()))[0] == b"\xfe\xff{{"  # type: ignore[index]


# -- attempt fencing ---------------------------------------------------------------------------------------------
async def test_a_stale_attempt_cannot_finish_the_next_one_of_the_same_node(store: EtcdStore) -> None:
    inst = _inst()
    await store.enqueue([inst])
    [first] = await store.claim("n1", 1, 30.0)
    assert first.attempts == 1
    await _lapse(store)  # the node was cut off from etcd longer than its lease
    assert [i.uuid for i in await store.reclaim_expired("n2")] == [inst.uuid]
    [second] = await _claim_after_lapse(store, "n1")  # the same node claims it again
    assert second.uuid == inst.uuid and second.attempts == 2
    ikey, pkey = store.keys.instance + inst.uuid.encode(), store.keys.running + inst.uuid.encode()
    before = (await _get(store, ikey), await _get(store, pkey), len(await store.lookup_history(Query())))

    stale = Outcome(inst.uuid, State.COMPLETED, result="attempt 1", attempt=1)
    assert await store.finish("n1", [stale]) == [False]
    assert await store.finish_and_claim("n1", [stale], 5, 30.0) == ([False], [])
    assert (await _get(store, ikey), await _get(store, pkey), len(await store.lookup_history(Query()))) == before
    got = await store.get_instance(inst.uuid)
    assert got is not None and got.state is State.PROCESSING and got.result is None and got.attempts == 2

    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, result="attempt 2", attempt=2)]) == [True]
    got = await store.get_instance(inst.uuid)
    assert got is not None and got.state is State.COMPLETED and got.result == "attempt 2"
    hist = await store.lookup_history(Query(instance=inst))
    assert [(h.state, h.attempt, h.node) for h in hist][2:] == [
        (State.PROCESSING, 1, "n1"), (State.SCHEDULED, 1, "n2"), (State.PROCESSING, 2, "n1"),
        (State.COMPLETED, 2, "n1")]


async def test_a_stale_attempt_is_fenced_on_a_fresh_read_too(store: EtcdStore, etcd_server: Server,
                                                            prefix: str) -> None:
    """The stale finish comes from the store that claimed attempt 1 (its own view of the instance is
    attempt 1's); attempt 2 was claimed under the same node name through another connection: the
    finish finds its view stale, reads the instance again, and the attempt fences it."""
    inst = _inst()
    await store.enqueue([inst])
    [first] = await store.claim("n1", 1, 30.0)
    await _lapse(store)
    other = EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)
    await other.start()
    try:
        assert [i.uuid for i in await other.reclaim_expired("n2")] == [inst.uuid]
        [second] = await other.claim("n1", 1, 30.0)
        assert second.attempts == 2
        ikey = store.keys.instance + inst.uuid.encode()
        before = await _get(store, ikey)
        assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, attempt=first.attempts)]) == [False]
        assert await _get(store, ikey) == before
        assert await other.finish("n1", [Outcome(inst.uuid, State.COMPLETED, attempt=2)]) == [True]
    finally:
        await other.stop()


# -- abandon limit -------------------------------------------------------------------------------------------------
async def test_an_instance_abandoned_max_abandons_times_ends_terminated(store: EtcdStore) -> None:
    inst, bystander = _inst(max_abandons=2), _inst(max_abandons=2)
    await store.enqueue([inst])
    raw = json.loads((await _get(store, store.keys.instance + inst.uuid.encode()))[0])  # type: ignore[index]
    assert raw["max_abandons"] == 2  # the field round-trips through the store's records
    [got] = await store.claim("n1", 1, 30.0)
    assert got.max_abandons == 2
    await _lapse(store)
    [back] = await store.reclaim_expired("n2")
    assert back.uuid == inst.uuid and back.abandoned == 1 and back.state is State.SCHEDULED
    [got] = await _claim_after_lapse(store, "n1")
    assert got.uuid == inst.uuid and got.attempts == 2
    await store.enqueue([bystander])
    await _lapse(store)
    assert await store.reclaim_expired("n2") == []  # the second abandon is the last: not re-queued
    message = abandon_limit_message(2, "n1", 2)
    done = await store.get_instance(inst.uuid)
    assert done is not None and done.state is State.TERMINATED and done.error == message
    assert done.abandoned == 2 and done.attempts == 2 and done.finished_ts is not None
    hist = await store.lookup_history(Query(instance=inst))
    assert (hist[-1].state, hist[-1].attempt, hist[-1].node, hist[-1].detail) == (State.TERMINATED, 2, "n2",
                                                                                   message)
    assert not await _keys(store, store.keys.running)
    assert [i.uuid for i in await _claim_after_lapse(store, "n1")] == [bystander.uuid]  # not it
    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, attempt=2)]) == [False]


async def test_a_record_from_before_max_abandons_has_the_default_limit(store: EtcdStore) -> None:
    inst = _inst()
    await store.enqueue([inst])
    ikey, rkey = store.keys.instance + inst.uuid.encode(), await _ready_key(store, inst.uuid)
    old = json.loads((await _get(store, ikey))[0])  # type: ignore[index]
    del old["max_abandons"]
    old["abandoned"] = DEFAULT_MAX_ABANDONS - 1
    raw = json.dumps(old).encode()
    await store._c().txn([op_put(ikey, raw), op_put(rkey, raw)])  # as an earlier version wrote it
    assert (await store.list_instances(Query()))[0].max_abandons == DEFAULT_MAX_ABANDONS
    [got] = await store.claim("n1", 1, 30.0)
    assert got.max_abandons == DEFAULT_MAX_ABANDONS
    await _lapse(store)
    assert await store.reclaim_expired("n2") == []
    done = await store.get_instance(inst.uuid)
    assert done is not None and done.state is State.TERMINATED
    assert done.error == abandon_limit_message(1, "n1", DEFAULT_MAX_ABANDONS)


async def test_a_cancel_asked_at_the_abandon_limit_still_ends_canceled(store: EtcdStore) -> None:
    inst = _inst(max_abandons=1)
    await store.enqueue([inst])
    await store.claim("n1", 1, 30.0)
    await store.cancel(inst.uuid)
    await _lapse(store)
    assert await store.reclaim_expired("n2") == []
    done = await store.get_instance(inst.uuid)
    assert done is not None and done.state is State.CANCELED and done.error is None


# -- suspects --------------------------------------------------------------------------------------------------------
async def _suspects(store: EtcdStore, n: int = 1, priority: int = 0) -> list[Instance]:
    """Instances abandoned once (their node lost its lease while running them), queued in this order."""
    insts = [_inst(priority=priority, arg=i) for i in range(n)]
    await store.enqueue(insts)
    got = await store.claim("dead", n, 7.0)
    got = got or await store.claim("dead", n, 7.0)  # (after a lapse the first claim learns of it)
    assert [g.uuid for g in got] == [i.uuid for i in insts]
    await _lapse(store, 7.0)
    back = await store.reclaim_expired("live")
    assert sorted(b.uuid for b in back) == sorted(i.uuid for i in insts)
    assert all(b.abandoned == 1 for b in back)
    order = [k for k in await _keys(store, store.keys.ready) if any(f"/{i.uuid}/".encode() in k for i in insts)]
    return sorted(insts, key=lambda i: [f"/{i.uuid}/".encode() in k for k in order].index(True))  # queue order


async def test_a_suspect_is_claimed_alone_and_the_order_is_kept(store: EtcdStore) -> None:
    before = [_inst(priority=-1, arg=i) for i in range(3)]
    [suspect] = await _suspects(store)
    after = [_inst(priority=1, arg=i) for i in range(3)]
    await store.enqueue([*before, *after])
    # reached after others: the claim ends before it
    assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [i.uuid for i in before]
    # first in line: it is the whole claim, even in a finish_and_claim with room for more
    oks, claimed = await store.finish_and_claim(
        "n1", [Outcome(i.uuid, State.COMPLETED, attempt=1) for i in before], 10, 30.0)
    assert oks == [True] * 3 and [(i.uuid, i.abandoned, i.attempts) for i in claimed] == [(suspect.uuid, 1, 2)]
    assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [i.uuid for i in after]
    # two suspects in a row: one claim each
    s1, s2 = await _suspects(store, 2, priority=3)
    assert [i.uuid for i in await _claim_after_lapse(store, "n1")] == [s1.uuid]
    assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [s2.uuid]
    assert await store.claim("n1", 10, 30.0) == []


async def test_a_suspect_left_queued_is_first_for_another_node(store: EtcdStore, etcd_server: Server,
                                                               prefix: str) -> None:
    head = _inst(priority=-5)
    [suspect] = await _suspects(store)
    tail = _inst(priority=5)
    await store.enqueue([head, tail])
    assert [i.uuid for i in await store.claim("n1", 10, 30.0)] == [head.uuid]
    other = EtcdStore.from_url(etcd_server.url("etcd"), prefix=prefix)
    await other.start()
    try:
        assert [i.uuid for i in await other.claim("n2", 10, 30.0)] == [suspect.uuid]
        with anyio.fail_after(5):
            assert [i.uuid for i in await other.claim("n2", 10, 30.0)] == [tail.uuid]
    finally:
        await other.stop()

"""What the etcd store does beyond the conformance suite: URLs, key layout, corrupt records, leases."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from gojob_core import CorruptRecordError, Instance, Manager, Query, State
from gojob_core.abc import Outcome
from gojob_core.testing.servers import Server
from gojob_store_etcd import EtcdStore, parse_etcd_url
from gojob_store_etcd._client import op_put, op_range, prefix_end

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(etcd_server: Server) -> AsyncIterator[EtcdStore]:
    s = EtcdStore.from_url(etcd_server.url("etcd"), prefix=f"/s{uuid.uuid4().hex[:8]}/")
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def _inst(priority: int = 0, args: list[int] | None = None) -> Instance:
    t = time.time()
    return Instance(uuid=str(uuid.uuid4()), kind="k", args=args or [], priority=priority, state=State.SCHEDULED,
                    created_ts=t, ready_ts=t)


# -- URLs ----------------------------------------------------------------------------------------------------
def test_url_with_several_endpoints_credentials_tls_and_prefix() -> None:
    o = parse_etcd_url("etcds://me:p%40ss@10.0.0.1:2379,[::1]:23790,etcd.example/myapp?timeout=2.5&ca=/ca.pem"
                       "&cert=/c.pem&key=/k.pem&compact=0")
    assert o.endpoints == [("10.0.0.1", 2379), ("::1", 23790), ("etcd.example", 2379)]
    assert (o.username, o.password, o.tls) == ("me", "p@ss", True)
    assert (o.ca_file, o.cert_file, o.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert (o.prefix, o.timeout, o.compact) == ("/myapp/", 2.5, 0.0)
    assert "p@ss" not in repr(o)
    assert parse_etcd_url("etcd://h", prefix="x").prefix == "x/"
    assert parse_etcd_url("etcd://h").endpoints == [("h", 2379)]


@pytest.mark.parametrize("url", ["redis://h:1", "etcd://h:x", "etcd://h:0", "etcd://h?nope=1", "etcd://h?window=3",
                                 "etcd://h?timeout=-1", "etcd://h?compact=inf"])
def test_bad_urls_are_value_errors_naming_the_url(url: str) -> None:
    with pytest.raises(ValueError, match="store URL"):
        parse_etcd_url(url)


async def test_manager_resolves_the_etcd_scheme_through_the_entry_point(etcd_server: Server) -> None:
    async with Manager(f"{etcd_server.url('etcd')}?prefix=/ep{uuid.uuid4().hex[:6]}/", num_workers=0) as mgr:
        assert isinstance(mgr.store, EtcdStore)
        assert mgr.store.ANYIO_BACKENDS == ("asyncio",)


# -- key layout ------------------------------------------------------------------------------------------------
async def test_ready_index_sorts_negative_priorities_first(store: EtcdStore) -> None:
    prios = [3, -2**62, 0, -1, 2**62, -7, 1]
    await store.enqueue([_inst(priority=p) for p in prios])
    resp = await store._c().range(store.keys.ready, prefix_end(store.keys.ready), keys_only=True)
    keys = [kv.key for kv in resp.kvs]
    assert keys == sorted(keys)  # etcd's own key order ...
    got = [int(k[len(store.keys.ready):].split(b"/")[0]) - 2**63 for k in keys]
    assert got == sorted(prios)  # ... is the priority order
    with pytest.raises(ValueError, match="out of range"):
        await store.enqueue([_inst(priority=2**63)])


async def test_large_reads_are_paged(store: EtcdStore) -> None:
    n = 2500  # over two pages of 1,000 keys
    added = await store.enqueue([_inst(args=[i]) for i in range(n)])
    assert added == [True] * n
    assert len(await store.list_instances(Query())) == n
    assert (await store.queue_counts()) == {"k": n}
    assert len(await store.lookup_history(Query())) == 2 * n
    assert len(await store.lookup_history(Query(limit=5))) == 5


async def test_running_entries_name_this_node_etcd_lease_whose_liveness_key_hangs_on_it(store: EtcdStore) -> None:
    inst = _inst()
    await store.enqueue([inst])
    [got] = await store.claim("n1", 1, 5.0)
    c = store._c()
    lease_id = store._leases[5]
    running = await c.range(store.keys.running + inst.uuid.encode())
    assert json.loads(running.kvs[0].value)["lease"] == lease_id
    alive = await c.range(store.keys.liveness_key(lease_id))
    assert alive.kvs and alive.kvs[0].lease == lease_id
    # one key per lease, not per claim: a second claim adds no key under q/n/
    await store.enqueue([_inst()])
    assert len(await store.claim("n1", 1, 5.0)) == 1
    assert len((await c.range(store.keys.liveness, prefix_end(store.keys.liveness), keys_only=True)).kvs) == 1
    # the lease gone (its node died): its liveness key goes with it, and the instances are re-queued
    await c.revoke(lease_id)
    assert not (await c.range(store.keys.liveness_key(lease_id))).kvs
    again = await store.reclaim_expired("n2")
    assert inst.uuid in {i.uuid for i in again}
    assert all(i.state is State.SCHEDULED and i.abandoned == 1 for i in again) and len(again) == 2
    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED)]) == [False]


async def test_a_claim_under_a_lapsed_lease_takes_nothing_and_the_next_claim_gets_a_new_lease(
        store: EtcdStore) -> None:
    first = _inst(args=[0])
    await store.enqueue([first])
    assert len(await store.claim("n1", 1, 5.0)) == 1
    old = store._leases[5]
    await store._c().revoke(old)  # expired behind the node's back (the keepalive has not seen it yet)
    inst = _inst(args=[1])
    await store.enqueue([inst])
    assert await store.claim("n1", 1, 5.0) == []  # nothing taken under the lapsed lease ...
    got = await store.claim("n1", 2, 5.0)  # ... and the next claim gets a new one
    assert store._leases[5] != old
    # the first instance, held under the lapsed lease, was re-queued as abandoned and is taken again
    # (alone: a suspect is never handed out with others), then the other
    assert [(g.uuid, g.attempts, g.abandoned) for g in got] == [(first.uuid, 2, 1)]
    got += await store.claim("n1", 2, 5.0)
    assert [(g.uuid, g.attempts, g.abandoned) for g in got] == [(first.uuid, 2, 1), (inst.uuid, 1, 0)]
    for g in got:
        running = await store._c().range(store.keys.running + g.uuid.encode())
        assert json.loads(running.kvs[0].value)["lease"] == store._leases[5]


async def test_a_cancel_asked_while_claimed_survives_a_hand_back(store: EtcdStore) -> None:
    # as gojob_core.transitions has it (and the memory and kv stores do): a hand-back keeps the cancel
    # asked, so the node that claims the instance next hears of it at once
    inst = _inst()
    await store.enqueue([inst])
    await store.claim("n1", 1, 30.0)
    await store.cancel(inst.uuid, node="op")
    await store.release("n1", [inst.uuid])
    got = await store.get_instance(inst.uuid)
    assert got is not None and got.state is State.SCHEDULED and got.cancel_requested
    [again] = await store.claim("n2", 1, 30.0)
    assert again.cancel_requested
    assert inst.uuid in (await store.extend_leases("n2", [inst.uuid], 30.0)).cancel_requested


@pytest.mark.parametrize("done_by", ["release", "finish"])
async def test_a_hand_back_or_finish_whose_answer_was_lost_does_not_hide_the_instance(
        store: EtcdStore, etcd_server: Server, done_by: str) -> None:
    # etcd applied the node's hand-back (or retry) but the answer was lost (a restart): the node's own
    # retry finds it done. The node must not keep it as held, or it would skip its queue entry for ever
    inst = _inst()
    inst.max_retries = 1
    await store.enqueue([inst])
    [got] = await store.claim("n1", 1, 30.0)
    other = EtcdStore.from_url(etcd_server.url("etcd"), prefix=store.options.prefix)
    await other.start()
    try:  # the same node's change, applied by another client: this one never heard the answer
        if done_by == "release":
            await other.release("n1", [inst.uuid])
            await store.release("n1", [inst.uuid])
        else:
            retry = Outcome(inst.uuid, State.TERMINATED, error="E", retry_at=time.time() - 1, attempt=1)
            assert await other.finish("n1", [retry]) == [True]
            assert await store.finish("n1", [retry]) == [False]
    finally:
        await other.stop()
    [again] = await store.claim("n1", 1, 30.0)
    assert again.uuid == got.uuid and again.attempts == (1 if done_by == "release" else 2)


# -- corrupt records -------------------------------------------------------------------------------------------
async def test_corrupt_records_are_reported_set_aside_and_never_deleted(store: EtcdStore) -> None:
    c = store._c()
    good = [_inst(args=[i]) for i in range(3)]
    await store.enqueue(good)
    bad_uuid = str(uuid.uuid4())
    bad_inst = store.keys.instance + bad_uuid.encode()
    bad_ready = store.keys.ready + f"{2**63 - 5:020d}/{0:017d}/{1:020d}/{bad_uuid}/k".encode()  # first in line
    bad_hist = store.keys.history + f"00000000000000001/{good[0].uuid}/x".encode()  # first in time
    await c.txn([op_put(bad_inst, b"{not json"), op_put(bad_ready, b"\xff\xfe"), op_put(bad_hist, b"[{}]")])

    assert sorted(i.uuid for i in await store.list_instances(Query())) == sorted(i.uuid for i in good)
    with pytest.raises(CorruptRecordError):
        await store.get_instance(bad_uuid)
    claimed = await store.claim("n1", 10, 30.0)  # the bad queue entry is moved aside, the others run
    assert sorted(i.uuid for i in claimed) == sorted(i.uuid for i in good)
    assert len(await store.lookup_history(Query(instance=good[0]))) == 3
    assert len(await store.lookup_history(Query())) == 9  # by time: the bad key is skipped (and reported)

    reported = {r.key: r for r in await store.corrupt_records()}
    assert {bad_inst.decode(), bad_ready.decode(errors="replace"), bad_hist.decode()} <= set(reported)
    assert "not json" in reported[bad_inst.decode()].raw
    # nothing was deleted: the record and the history key are where they were, the queue entry is kept
    # under the report
    assert (await c.range(bad_inst)).kvs[0].value == b"{not json"
    assert (await c.range(bad_hist)).kvs[0].value == b"[{}]"
    assert not (await c.range(bad_ready)).kvs
    z = await c.txn([op_range(store.keys.report, prefix_end(store.keys.report))])
    assert len(z.responses[0].response_range.kvs) == 3


async def test_watch_resumed_past_a_compaction_reads_the_queue_again(store: EtcdStore, etcd_server: Server) -> None:
    await store.wait_ready(0)  # starts the watch
    assert store._watch_task is not None
    store._watch_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await store._watch_task
    other = EtcdStore.from_url(etcd_server.url("etcd"), prefix=store.options.prefix)
    await other.start()
    try:
        inst = _inst()
        await other.enqueue([inst])  # the stopped watch misses this ...
        c = other._c()
        await c.compact(c.last_revision)  # ... and etcd forgets it happened
    finally:
        await other.stop()
    store._watch_task = asyncio.create_task(store._watch_loop())  # resumes from the old revision
    t = time.monotonic()
    await store.wait_ready(5.0)
    for _ in range(100):
        if store._rw.keys:
            break
        await asyncio.sleep(0.02)
    assert time.monotonic() - t < 3.0
    [got] = await store.claim("n1", 10, 30.0)
    assert got.uuid == inst.uuid


def test_a_read_of_the_queue_answered_after_newer_watch_events_does_not_undo_them() -> None:
    """The watch applied a put (rev 12) and a delete (rev 13) while a read at rev 11 was in flight: the
    read's answer must keep the new key in view (it was lost until the next read, up to the poll
    interval: seen as a one-second stall at the end of the sequential benchmark) and not bring the
    deleted one back."""
    from types import SimpleNamespace

    from gojob_store_etcd._queue_window import QueueWindow

    w = QueueWindow()
    w.load([SimpleNamespace(key=b"q/a", mod_revision=5, value=b"a")], False, 10)
    w.begin()  # the read is sent
    assert w.put(b"q/b", 12, b"b")
    w.delete(b"q/a", 13)
    w.load([SimpleNamespace(key=b"q/a", mod_revision=5, value=b"a")], False, 11)  # ... and answers (rev 11)
    w.end()
    assert w.keys == [b"q/b"] and w.vals == {b"q/b": (12, b"b")}
    assert w.events == []  # nothing kept once no read is in flight
    w.put(b"q/c", 14, b"c")
    assert w.events == [] and w.keys == [b"q/b", b"q/c"]


async def test_user_values_json_would_keep_come_back_as_they_were(store: EtcdStore) -> None:
    """Records go through orjson, except where it would change them: NaN and infinities in args and
    results, dict keys that are not strings, integers beyond 64 bits are kept as the json module keeps them."""
    big = 2**70
    inst = _inst()
    inst.args = [float("nan"), float("inf"), big]
    inst.kwargs = {"m": {1: "one"}}
    assert await store.enqueue([inst]) == [True]
    [got] = await store.claim("n1", 1, 30.0)
    assert got.args[0] != got.args[0] and got.args[1] == float("inf") and got.args[2] == big
    assert got.kwargs == {"m": {"1": "one"}}  # json's conversion of an int key
    assert await store.finish("n1", [Outcome(got.uuid, State.COMPLETED, result={"r": [float("-inf"), big]})]) == [True]
    done = await store.get_instance(got.uuid)
    assert done is not None and done.state is State.COMPLETED and done.result == {"r": [float("-inf"), big]}


def test_the_codec_writes_what_the_json_module_reads() -> None:
    from gojob_store_etcd._codec import dumps, loads

    rec = {"uuid": "u", "args": [1.5, "é", None, True], "kwargs": {"a": {"b": [1, 2]}}, "result": None}
    assert json.loads(dumps(rec)) == rec == loads(json.dumps(rec))
    assert dumps({"result": float("nan")}) == b'{"result":NaN}'
    with pytest.raises(ValueError):
        loads(b'{"uuid": ')
    with pytest.raises(TypeError):
        dumps({"result": object()})


async def test_history_of_an_instance_outlives_its_record_and_survives_a_corrupt_one(store: EtcdStore) -> None:
    """State records have one key each, by time; an instance's record points to its own, and a cleared
    record leaves its pointers behind, so that its history is still found."""
    a, b = _inst(args=[1]), _inst(args=[2])
    await store.enqueue([a, b])
    claimed = await store.claim("n1", 2, 30.0)
    assert await store.finish("n1", [Outcome(i.uuid, State.COMPLETED) for i in claimed]) == [True, True]
    states = [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    assert [r.state for r in await store.lookup_history(Query(instance=a))] == states
    c = store._c()
    history = store.keys.history
    assert len((await c.range(history, prefix_end(history), keys_only=True)).kvs) == 6  # 3 writes each
    assert await store.clear_instances(Query(instance=a)) == 1
    assert await store.get_instance(a.uuid) is None
    assert [r.state for r in await store.lookup_history(Query(instance=a))] == states
    assert [r.state for r in await store.lookup_history(Query(instance=a, state=State.PROCESSING))] == [
        State.PROCESSING]
    # the same uuid enqueued again: both lives are its history
    again = Instance(uuid=a.uuid, kind="k", state=State.SCHEDULED, created_ts=time.time(), ready_ts=time.time())
    assert await store.enqueue([again]) == [True]
    assert len(await store.lookup_history(Query(instance=a))) == 6
    # a record that cannot be decoded: its history is looked up by time instead (and it is reported)
    await c.txn([op_put(store.keys.instance + b.uuid.encode(), b"{broken")])
    assert [r.state for r in await store.lookup_history(Query(instance=b))] == states
    assert (store.keys.instance + b.uuid.encode()).decode() in {r.key for r in await store.corrupt_records()}
    assert await store.clear_history(Query(instance=a)) == 6
    assert await store.lookup_history(Query(instance=a)) == []
    # its whole history cleared: the pointers its cleared record left are gone too
    assert not (await c.range(store.keys.cleared, prefix_end(store.keys.cleared))).kvs
    assert len(await store.lookup_history(Query())) == 4


async def test_history_written_before_records_pointed_to_it_is_found_by_time(store: EtcdStore) -> None:
    """A record without pointers (an earlier version wrote each state record under h/{uuid}/{ts}/{tag}
    and t/{ts}/{uuid}/{tag}): its history is read by time, and the old per-instance keys are not
    reported as corrupt."""
    inst = _inst()
    rec = {**inst.to_dict(), "seq": 1}
    u, raw = inst.uuid, json.dumps([{"uuid": inst.uuid, "kind": "k", "state": "CREATED", "ts": 1.0, "attempt": 0,
                                     "node": None, "detail": None}]).encode()
    c = store._c()
    await c.txn([op_put(store.keys.instance + u.encode(), json.dumps(rec).encode()),
                 op_put(store.keys.cleared + f"{u}/00000000001000000/t1".encode(), raw),
                 op_put(store.keys.history + f"00000000001000000/{u}/t1".encode(), raw)])
    assert [r.state for r in await store.lookup_history(Query(instance=inst))] == [State.CREATED]
    assert await store.corrupt_records() == []

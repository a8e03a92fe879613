"""The Valkey and Redis stores keep their promises when records are corrupt or attempts outlive their
lease (issue 19: items 1, 3 and 5), on real servers:

- a queued instance's key of another type, or a hash missing fields: every script that meets it sets
  it aside (reported, left byte-exact) and goes on; no valid instance is lost; reads skip and report
  it; ``drop_corrupt_record`` removes it;
- a finish is fenced by the attempt: a stale attempt of the same node writes nothing;
- an instance abandoned ``max_abandons`` times ends TERMINATED with the words of
  ``abandon_limit_message``;
- a suspect instance (abandoned before) is claimed only alone.

Leases are expired by moving the instance's entry in the running index to the past (what the reclaim
reads), not by sleeping. asyncio only (redis-py's client does not run on trio).
"""

from __future__ import annotations

import json
import time
import uuid as _uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from gojob_core import CorruptRecordError, Instance, Job, LogLevel, LogRecord, Manager, Query, State
from gojob_core._instance import DEFAULT_MAX_ABANDONS
from gojob_core.abc import Outcome, abandon_limit_message
from gojob_core.testing.servers import Server
from gojob_store_resp import RespStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["redis", "valkey"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest) -> str:
    """The session's server for this store, with a key prefix of this test's own."""
    server: Server = request.getfixturevalue(f"{kind}_server")
    return f"{server.url(kind)}?prefix=r{_uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def store(url: str) -> AsyncIterator[RespStore]:
    async with Manager(store=url, num_workers=0, node_id="admin") as mgr:
        assert isinstance(mgr.store, RespStore)
        yield mgr.store


@pytest.fixture
async def raw(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same server, replies as bytes: to corrupt keys and compare them byte for byte."""
    server: Server = request.getfixturevalue(f"{kind}_server")
    client = aioredis.Redis(host=server.host, port=server.port, decode_responses=False)
    yield client
    await client.aclose()


def _inst(i: int = 0, *, kind: str = "k", max_abandons: int | None = DEFAULT_MAX_ABANDONS,
          t0: float | None = None) -> Instance:
    t = (time.time() if t0 is None else t0) - 100 + i  # ready in this order, long due
    return Instance(uuid=str(_uuid.uuid4()), kind=kind, args=[i], created_ts=t, ready_ts=t,
                    max_abandons=max_abandons)


async def _expire(store: RespStore, uuid: str) -> None:
    """Make the instance's lease look expired to the reclaim (its entry in the running index)."""
    assert await store.conn.execute("ZSCORE", f"{store.p}running", uuid) is not None
    await store.conn.execute("ZADD", f"{store.p}running", "1", uuid)


async def _ready_members(store: RespStore) -> list[tuple[str, float]]:
    flat = await store.conn.execute("ZRANGE", f"{store.p}ready", 0, -1, "WITHSCORES")
    if isinstance(flat, dict):  # RESP3 shapes
        return [(m, float(s)) for m, s in flat.items()]
    if flat and isinstance(flat[0], list):
        return [(m, float(s)) for m, s in flat]
    return [(m, float(s)) for m, s in zip(flat[::2], flat[1::2])]


async def _records(store: RespStore) -> dict[str, Any]:
    return {r.key: r for r in await store.corrupt_records()}


# -- item 3: a record of the wrong type, or missing fields -----------------------------------------------
BAD_VALUE = "not a hash: ünïcode {\x01"


async def test_wrongtype_key_among_queued_ones_is_set_aside_and_the_others_run(url: str, store: RespStore,
                                                                                raw: aioredis.Redis) -> None:
    """The defect: the claim failed on every call and lost the valid instances popped with the bad one.
    Now the good ones run and complete, the bad key is reported with its value and left as it was,
    listing works, and dropping it removes it with its index entries."""
    good = [_inst(i) for i in range(6)]
    bad = _inst(2)  # in the middle of the claim order
    assert await store.enqueue([*good[:2], bad, *good[2:]]) == [True] * 7
    key = f"{store.p}inst:{bad.uuid}"
    await raw.delete(key)
    await raw.set(key, BAD_VALUE.encode())

    # reads skip and report it instead of failing
    assert sorted(i.uuid for i in await store.list_instances(Query())) == sorted(i.uuid for i in good)
    with pytest.raises(CorruptRecordError):
        await store.get_instance(bad.uuid)
    with pytest.raises(CorruptRecordError):
        await store.cancel(bad.uuid)
    assert key in await _records(store)

    ran: list[int] = []

    async def work(i: int) -> int:
        ran.append(i)
        return i * 10

    job = Job(kind="k", executor=work)
    with anyio.fail_after(30):
        mgr = Manager(store=url, num_workers=3, node_id="worker")
        await mgr.register_job(job)  # before it starts claiming
        async with mgr:
            for inst in good:
                done = await mgr.wait(inst.uuid, timeout=20)
                assert (done.state, done.result, done.attempts) == (State.COMPLETED, inst.args[0] * 10, 1)
            assert sorted(ran) == sorted(i.args[0] for i in good)  # each once
            assert sorted(i.uuid for i in await mgr.lookup_instances()) == sorted(i.uuid for i in good)

    assert await raw.get(key) == BAD_VALUE.encode()  # byte-exact
    rec = (await _records(store))[key]
    assert rec.raw == BAD_VALUE
    assert "WRONGTYPE" in rec.reason and "string" in rec.reason
    assert await store.queue_counts() == {"k": 1}  # the set-aside one is still counted until dropped

    assert await store.drop_corrupt_record(key) is True
    assert await raw.exists(key) == 0
    assert key not in await _records(store)
    assert await store.queue_counts() == {}
    assert await store.conn.execute("ZSCORE", f"{store.p}all", bad.uuid) is None
    assert await store.drop_corrupt_record(key) is False


@pytest.mark.parametrize("where", ["ready", "delayed"])
async def test_claim_sets_aside_a_key_of_another_type_and_loses_nothing(store: RespStore, raw: aioredis.Redis,
                                                                       where: str) -> None:
    """One claim call: the valid instances popped with the bad one (or promoted with it from the
    delayed set) are all handed out, the bad key is left as it was."""
    good = [_inst(i) for i in range(4)]
    bad = _inst(1)
    if where == "delayed":
        bad.ready_ts = time.time() + 0.3
    assert await store.enqueue([*good, bad]) == [True] * 5
    key = f"{store.p}inst:{bad.uuid}"
    await raw.delete(key)
    await raw.rpush(key, b"a", b"\xff\x00b")  # a list, with bytes that are not UTF-8
    if where == "delayed":
        await store.conn.execute("ZADD", f"{store.p}delayed", "1", bad.uuid)  # due now
    got = await store.claim("n1", 10, 30.0)
    assert sorted(i.uuid for i in got) == sorted(i.uuid for i in good)
    assert await raw.lrange(key, 0, -1) == [b"a", b"\xff\x00b"]
    rec = (await _records(store))[key]
    assert "WRONGTYPE" in rec.reason and "list" in rec.reason
    assert [x.encode("utf-8", "surrogateescape") for x in json.loads(rec.raw)] == [b"a", b"\xff\x00b"]
    assert await store.claim("n1", 10, 30.0) == []  # it is not handed out later either
    assert await _ready_members(store) == []
    assert await store.finish("n1", [Outcome(i.uuid, State.COMPLETED, attempt=1) for i in got]) == [True] * 4


async def test_hash_missing_fields_is_set_aside_unchanged(store: RespStore, raw: aioredis.Redis) -> None:
    good = [_inst(i) for i in range(3)]
    bad = _inst(0)  # first in line
    assert await store.enqueue([bad, *good]) == [True] * 4
    key = f"{store.p}inst:{bad.uuid}"
    await raw.hdel(key, "kind", "d")
    before = await raw.hgetall(key)
    got = await store.claim("n1", 10, 30.0)
    assert sorted(i.uuid for i in got) == sorted(i.uuid for i in good)
    assert await raw.hgetall(key) == before  # not claimed, not changed
    assert await raw.zscore(f"{store.p}running", bad.uuid) is None
    assert [r.state for r in await store.lookup_history(Query(instance=bad.uuid))] == [State.CREATED, State.SCHEDULED]
    rec = (await _records(store))[key]
    assert rec.reason == "missing or invalid field(s): d, kind"
    assert json.loads(rec.raw)["uuid"] == bad.uuid
    # reads report it in the same words
    assert sorted(i.uuid for i in await store.list_instances(Query())) == sorted(i.uuid for i in good)
    assert (await _records(store))[key].reason == "missing or invalid field(s): d, kind"
    assert await store.drop_corrupt_record(key) is True
    assert await raw.exists(key) == 0
    assert await store.queue_counts() == {}


async def test_a_running_instance_whose_key_turns_bad(store: RespStore, raw: aioredis.Redis) -> None:
    """Heartbeat, finish and reclaim each meet the bad key: lost to its node, nothing written, set aside
    (out of the running index, so it does not come back); the good one finishes."""
    a, b = _inst(0), _inst(1)
    assert await store.enqueue([a, b]) == [True, True]
    assert len(await store.claim("n1", 2, 30.0)) == 2
    key = f"{store.p}inst:{b.uuid}"
    await raw.delete(key)
    await raw.set(key, b"\x00garbage\xff")
    report = await store.extend_leases("n1", [a.uuid, b.uuid], 30.0)
    assert report.lost == {b.uuid}
    assert await store.finish("n1", [Outcome(b.uuid, State.COMPLETED, attempt=1),
                                     Outcome(a.uuid, State.COMPLETED, attempt=1)]) == [False, True]
    await _expire(store, b.uuid)
    assert await store.reclaim_expired("n2") == []
    assert await raw.zscore(f"{store.p}running", b.uuid) is None
    assert await raw.get(key) == b"\x00garbage\xff"
    # its bytes, losslessly (not UTF-8: surrogate escapes, as the etcd store reports them)
    assert (await _records(store))[key].raw.encode("utf-8", "surrogateescape") == b"\x00garbage\xff"
    assert await store.release("n1", [b.uuid]) is None
    assert await store.clear_instances(Query()) == 1  # a; the bad key stays
    assert await raw.get(key) == b"\x00garbage\xff"


async def test_an_instance_history_key_of_another_type(store: RespStore, raw: aioredis.Redis) -> None:
    """Scripts writing history and reads of it skip the instance's index (its records still go to the
    whole history, where a query by instance then finds them); appending logs skips it too."""
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    hkey, lkey = f"{store.p}hist:i:{inst.uuid}", f"{store.p}logs:i:{inst.uuid}"
    await raw.delete(hkey)
    await raw.set(hkey, b"bad history")
    await raw.set(lkey, b"bad logs")
    [got] = await store.claim("n1", 1, 30.0)
    assert await store.finish("n1", [Outcome(got.uuid, State.COMPLETED, result=1, attempt=1)]) == [True]
    assert [r.state for r in await store.lookup_history(Query(instance=inst.uuid))] == [
        State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    await store.append_logs([LogRecord(inst.uuid, "k", LogLevel.INFO, "hello", time.time())])
    assert [r.message for r in await store.lookup_logs(Query(instance=inst.uuid))] == ["hello"]
    records = await _records(store)
    assert records[hkey].raw == "bad history" and records[lkey].raw == "bad logs"
    assert await raw.get(hkey) == b"bad history"
    assert await store.drop_corrupt_record(hkey) is True
    assert await raw.exists(hkey) == 0
    assert hkey not in await _records(store)


async def test_an_undecodable_history_member_can_be_dropped(store: RespStore, raw: aioredis.Redis) -> None:
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    member = '{"uuid": "' + inst.uuid + '", "not": "a record"}'
    await raw.zadd(f"{store.p}hist", {member: 1.0})
    await raw.zadd(f"{store.p}hist:i:{inst.uuid}", {member: 1.0})
    assert len(await store.lookup_history(Query(instance=inst.uuid))) == 2
    [rec] = list((await _records(store)).values())
    assert rec.raw == member
    assert await store.drop_corrupt_record(rec.key) is True
    assert await raw.zscore(f"{store.p}hist", member) is None
    assert await raw.zscore(f"{store.p}hist:i:{inst.uuid}", member) is None
    assert await store.corrupt_records() == []


# -- item 1: a finish is fenced by the attempt ------------------------------------------------------------
async def test_a_stale_attempt_of_the_same_node_cannot_finish_the_newer_one(store: RespStore) -> None:
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    [first] = await store.claim("n1", 1, 30.0)
    assert first.attempts == 1
    await _expire(store, inst.uuid)
    assert [i.uuid for i in await store.reclaim_expired("n2")] == [inst.uuid]
    [second] = await store.claim("n1", 1, 30.0)  # the same node, again
    assert (second.attempts, second.abandoned) == (2, 1)

    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, result={"a": 1}, attempt=1)]) == [False]
    now = await store.get_instance(inst.uuid)
    assert now is not None and (now.state, now.attempts, now.result, now.node) == (State.PROCESSING, 2, None, "n1")
    assert State.COMPLETED not in [r.state for r in await store.lookup_history(Query(instance=inst.uuid))]
    assert await store.conn.execute("ZSCORE", f"{store.p}running", inst.uuid) is not None  # lease kept

    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, result={"a": 2}, attempt=2)]) == [True]
    done = await store.get_instance(inst.uuid)
    assert done is not None and (done.state, done.result, done.attempts) == (State.COMPLETED, {"a": 2}, 2)
    hist = await store.lookup_history(Query(instance=inst.uuid))
    assert [(r.state, r.attempt) for r in hist if r.state is State.COMPLETED] == [(State.COMPLETED, 2)]


async def test_an_outcome_without_attempt_is_fenced_by_node_only(store: RespStore) -> None:
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    await store.claim("n1", 1, 30.0)
    assert await store.finish("n2", [Outcome(inst.uuid, State.COMPLETED)]) == [False]
    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED, attempt=7)]) == [False]
    assert await store.finish("n1", [Outcome(inst.uuid, State.COMPLETED)]) == [True]


# -- item 5: the abandon limit, and suspects claimed alone ------------------------------------------------
async def _abandon(store: RespStore, uuid: str, node: str) -> list[Instance]:
    """Claim the instance (first in line) for ``node`` and let its lease expire; returns the reclaim's answer."""
    [got] = await store.claim(node, 1, 30.0)
    assert got.uuid == uuid
    await _expire(store, uuid)
    return await store.reclaim_expired("reaper")


async def test_the_abandon_limit_ends_an_instance_terminated(store: RespStore) -> None:
    inst = _inst(0, max_abandons=2)
    assert await store.enqueue([inst]) == [True]
    assert (await store.get_instance(inst.uuid)).max_abandons == 2  # type: ignore[union-attr]
    [again] = await _abandon(store, inst.uuid, "nöde-1")
    assert (again.state, again.abandoned) == (State.SCHEDULED, 1)
    assert await _abandon(store, inst.uuid, "nöde-1") == []  # not re-queued, not returned
    done = await store.get_instance(inst.uuid)
    assert done is not None
    message = abandon_limit_message(2, "nöde-1", 2)
    assert (done.state, done.error, done.abandoned, done.attempts) == (State.TERMINATED, message, 2, 2)
    assert done.finished_ts is not None
    last = (await store.lookup_history(Query(instance=inst.uuid)))[-1]
    assert (last.state, last.detail, last.attempt) == (State.TERMINATED, message, 2)
    assert await store.queue_counts() == {}
    assert await _ready_members(store) == []
    assert await store.conn.execute("ZCARD", f"{store.p}running") == 0
    assert await store.claim("n2", 10, 30.0) == []


async def test_a_record_without_the_field_has_the_default_limit(store: RespStore, raw: aioredis.Redis) -> None:
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    key = f"{store.p}inst:{inst.uuid}"
    await raw.hdel(key, "max_abandons")  # as written before the field existed
    await raw.hset(key, "abandoned", DEFAULT_MAX_ABANDONS - 1)
    got = await store.get_instance(inst.uuid)
    assert got is not None and got.max_abandons == DEFAULT_MAX_ABANDONS
    assert await _abandon(store, inst.uuid, "n1") == []
    done = await store.get_instance(inst.uuid)
    assert done is not None and done.state is State.TERMINATED
    assert done.error == abandon_limit_message(1, "n1", DEFAULT_MAX_ABANDONS)


async def test_no_limit_and_cancel_at_the_limit(store: RespStore) -> None:
    free, canceled = _inst(0, max_abandons=None), _inst(1, max_abandons=1)
    assert await store.enqueue([free, canceled]) == [True, True]
    assert (await store.get_instance(free.uuid)).max_abandons is None  # type: ignore[union-attr]
    for n in range(1, DEFAULT_MAX_ABANDONS + 2):
        [back] = await _abandon(store, free.uuid, "n1")
        assert back.abandoned == n
    [c] = await store.claim("n1", 1, 30.0)  # free is a suspect: claimed alone; canceled comes after it
    assert c.uuid == free.uuid
    [c] = await store.claim("n1", 1, 30.0)
    assert c.uuid == canceled.uuid
    await store.cancel(canceled.uuid)
    await _expire(store, canceled.uuid)
    assert await store.reclaim_expired("reaper") == []
    done = await store.get_instance(canceled.uuid)
    assert done is not None and done.state is State.CANCELED and done.error is None


async def test_a_suspect_instance_is_claimed_alone(store: RespStore, raw: aioredis.Redis) -> None:
    a, s, b, c = (_inst(i) for i in range(4))
    assert await store.enqueue([a, s, b, c]) == [True] * 4
    await raw.hset(f"{store.p}inst:{s.uuid}", "abandoned", 1)  # a node died running it once
    members = await _ready_members(store)
    got = await store.claim("n1", 10, 30.0)
    assert [i.uuid for i in got] == [a.uuid]  # the claim ends before the suspect
    assert await _ready_members(store) == members[1:]  # it and those after it are back, unchanged
    got = await store.claim("n1", 10, 30.0)
    assert [i.uuid for i in got] == [s.uuid]  # first in line: the whole claim
    assert await _ready_members(store) == members[2:]
    got = await store.claim("n1", 10, 30.0)
    assert [i.uuid for i in got] == [b.uuid, c.uuid]


async def test_a_reclaimed_instance_is_claimed_alone_through_finish_and_claim(store: RespStore) -> None:
    a, b, c = (_inst(i) for i in range(3))
    assert await store.enqueue([a, b, c]) == [True] * 3
    [got] = await store.claim("n1", 1, 30.0)
    await _expire(store, got.uuid)
    assert [i.uuid for i in await store.reclaim_expired("reaper")] == [a.uuid]  # first in line again
    oks, claimed = await store.finish_and_claim("n1", [], 10, 30.0)
    assert [i.uuid for i in claimed] == [a.uuid]
    oks, claimed = await store.finish_and_claim("n1", [Outcome(a.uuid, State.COMPLETED, attempt=2)], 10, 30.0)
    assert oks == [True] and [i.uuid for i in claimed] == [b.uuid, c.uuid]


async def _suspect(store: RespStore, inst: Instance) -> None:
    """Enqueue ``inst`` and make it a suspect the way a dead node does (claimed, lease expired, reclaimed)."""
    assert await store.enqueue([inst]) == [True]
    assert [i.uuid for i in await _abandon(store, inst.uuid, "dead")] == [inst.uuid]


async def test_a_node_that_took_a_suspect_is_not_registered_for_more(store: RespStore) -> None:
    """claim_or_wait claims the suspect alone and leaves no waiting registration: an enqueue then hands
    that node nothing beside it."""
    s = _inst(0)
    await _suspect(store, s)
    got = await store.claim_or_wait("w", 5, 30.0, 5.0)
    assert [i.uuid for i in got] == [s.uuid]
    assert await store.conn.execute("HGET", f"{store.p}idle", "w") is None
    x = _inst(1)
    assert await store.enqueue([x]) == [True]
    now = await store.get_instance(x.uuid)
    assert now is not None and now.state is State.SCHEDULED  # not handed to w


async def test_a_suspect_handed_to_a_waiting_node_comes_alone_and_ends_its_wait(store: RespStore,
                                                                                raw: aioredis.Redis) -> None:
    s = _inst(0)
    await _suspect(store, s)
    [again] = await store.claim("n0", 1, 30.0)  # it fails and waits for its retry in the delayed set
    assert await store.finish("n0", [Outcome(s.uuid, State.TERMINATED, error="E", retry_at=time.time() + 3600,
                                             attempt=again.attempts)]) == [True]
    got: list[Instance] = []

    async def wait() -> None:
        got.extend(await store.claim_or_wait("w", 5, 30.0, 20.0))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            while await store.conn.execute("HGET", f"{store.p}idle", "w") is None:  # w is waiting
                await anyio.sleep(0.01)
            # the retry is due now (first in line), and a new instance comes: the enqueue hands w work
            await raw.hset(f"{store.p}inst:{s.uuid}", "ready_ts", f"{time.time() - 200:.6f}")
            await raw.zadd(f"{store.p}delayed", {s.uuid: 1})
            x = _inst(1)
            assert await store.enqueue([x]) == [True]
    assert [i.uuid for i in got] == [s.uuid]
    assert await store.conn.execute("HGET", f"{store.p}idle", "w") is None  # its wait ended
    now = await store.get_instance(x.uuid)
    assert now is not None and now.state is State.SCHEDULED


async def test_a_suspect_met_among_others_goes_back_first_in_line(store: RespStore) -> None:
    """The safety net for a node that read several handed messages at once."""
    s, a = _inst(0), _inst(1)
    await _suspect(store, s)
    assert await store.enqueue([a]) == [True]
    [got_s] = await store.claim("n1", 5, 30.0)
    [got_a] = await store.claim("n1", 5, 30.0)
    assert [i.uuid for i in await store._alone("n1", [got_s, got_a])] == [a.uuid]
    back = await store.get_instance(s.uuid)
    assert back is not None and (back.state, back.attempts, back.abandoned) == (State.SCHEDULED, 1, 1)
    assert [i.uuid for i in await store.claim("n2", 5, 30.0)] == [s.uuid]


async def test_drop_leaves_a_record_repaired_in_place(store: RespStore, raw: aioredis.Redis) -> None:
    inst = _inst(0)
    assert await store.enqueue([inst]) == [True]
    key = f"{store.p}inst:{inst.uuid}"
    good = await raw.hgetall(key)
    await raw.hdel(key, "kind")
    assert await store.list_instances(Query()) == []
    assert key in await _records(store)
    await raw.hset(key, mapping=good)  # the operator repaired it
    assert await store.drop_corrupt_record(key) is True
    assert await raw.hgetall(key) == good
    assert await store.corrupt_records() == []
    assert [i.uuid for i in await store.list_instances(Query())] == [inst.uuid]


async def test_a_queue_entry_that_is_not_one_is_reported(store: RespStore) -> None:
    good = [_inst(i) for i in range(2)]
    assert await store.enqueue(good) == [True, True]
    await store.conn.execute("ZADD", f"{store.p}ready", "-10", "not-a-ready-member")
    assert sorted(i.uuid for i in await store.claim("n1", 10, 30.0)) == sorted(i.uuid for i in good)
    [rec] = await store.corrupt_records()
    assert rec.raw == "not-a-ready-member" and "queue entry" in rec.reason
    assert await store.drop_corrupt_record(rec.key) is True
    assert await store.corrupt_records() == []

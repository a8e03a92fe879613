"""KvStore over MemoryKvBackend passes the store conformance suite unchanged (with and without a
backend that can watch); the backend's compare-and-set; two nodes on one backend; corrupt records."""

from __future__ import annotations

import base64
import json
import time
import uuid as _uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
from gojob_core import Instance, Job, KvBackend, KvStore, Manager, MemoryKvBackend, Query, State, Store
from gojob_core.abc import Outcome
from gojob_core.kv import KvChange, KvEntry
from gojob_core.testing import StoreConformance


class TestKvStore(StoreConformance):
    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = MemoryKvBackend()  # one backend: every store made is another node on the same data
        return lambda: KvStore(shared)


class _NoWatchBackend(MemoryKvBackend):
    """A backend with no change notification: the store falls back to its bounded poll."""

    SUPPORTS_WATCH = False

    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[KvChange]]:
        raise AssertionError("the store must not watch a backend without SUPPORTS_WATCH")


class TestKvStoreWithoutWatch(StoreConformance):
    """The suite again on a backend that cannot watch (wake-up and cancels by polling)."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        shared = _NoWatchBackend()
        return lambda: KvStore(shared, poll_interval=0.05)


def _inst(**kw: object) -> Instance:
    t = time.time()
    return Instance(uuid=str(_uuid.uuid4()), kind="k", state=State.SCHEDULED, created_ts=t, ready_ts=t,
                    **kw)  # type: ignore[arg-type]


# -- the backend --------------------------------------------------------------------------------------
async def test_compare_and_set_refuses_a_stale_write() -> None:
    b = MemoryKvBackend()
    v1 = await b.compare_and_set("a", b"1", None)  # create-only
    assert v1 is not None
    assert await b.compare_and_set("a", b"x", None) is None  # exists: create-only refuses
    v2 = await b.compare_and_set("a", b"2", v1)
    assert v2 is not None and v2 != v1
    assert await b.compare_and_set("a", b"3", v1) is None  # v1 is stale now
    assert await b.get("a") == KvEntry("a", b"2", v2)
    assert not await b.delete("a", v1)
    assert await b.delete("a", v2)
    assert await b.get("a") is None


async def test_scan_is_in_key_order_with_paging() -> None:
    b = MemoryKvBackend()
    await b.set_many([(k, k.encode()) for k in ["p/c", "p/a", "q/a", "p/b", "o/z"]])
    assert [e.key for e in await b.scan("p/")] == ["p/a", "p/b", "p/c"]
    assert [e.key for e in await b.scan("p/", after="p/a", limit=1)] == ["p/b"]
    assert [e.value for e in await b.scan("p/", keys_only=True)] == [b"", b"", b""]
    assert await b.delete_prefix("p/") == 3
    assert [e.key for e in await b.dump()] == ["o/z", "q/a"]


async def test_watch_sees_changes_made_after_it_opened() -> None:
    b = MemoryKvBackend()
    await b.set("w/before", b"0")
    async with b.watch("w/") as changes:
        await b.set("w/a", b"1")
        await b.set("x/a", b"1")
        await b.delete("w/a")
        got = []
        with anyio.fail_after(1):
            async for change in changes:
                got.append(change)
                if len(got) == 2:
                    break
    assert got == [KvChange("w/a", b"1"), KvChange("w/a", None)]


# -- the store on it ----------------------------------------------------------------------------------
async def test_a_stale_finish_is_refused_after_the_record_changed() -> None:
    """Finish is a compare-and-set: a node that lost the instance (reclaimed, claimed elsewhere) writes nothing."""
    backend = MemoryKvBackend()
    a, b = KvStore(backend), KvStore(backend)
    inst = _inst()
    await a.enqueue([inst])
    await a.claim("a", 1, 0.05)
    await anyio.sleep(0.1)
    assert [i.uuid for i in await b.reclaim_expired("b")] == [inst.uuid]
    [again] = await b.claim("b", 1, 30)
    assert again.attempts == 2
    assert await a.finish("a", [Outcome(inst.uuid, State.COMPLETED, result="a")]) == [False]
    assert await b.finish("b", [Outcome(inst.uuid, State.COMPLETED, result="b")]) == [True]
    got = await a.get_instance(inst.uuid)
    assert got is not None and got.result == "b"
    assert await backend.scan("gojob/run/") == []  # both claims' running keys are gone


async def test_two_nodes_sharing_a_backend_never_run_one_instance_twice() -> None:
    backend = MemoryKvBackend()
    ran: dict[int, int] = {}
    n = 300
    done = anyio.Event()

    async def body(i: int) -> int:
        ran[i] = ran.get(i, 0) + 1
        if len(ran) == n:
            done.set()
        await anyio.sleep(0)
        return i

    job = Job(kind="kv.once", executor=body)
    async with Manager(KvStore(backend), num_workers=5, node_id="a", autoload_plugins=False) as a, \
            Manager(KvStore(backend), num_workers=5, node_id="b", autoload_plugins=False) as b, \
            Manager(KvStore(backend), num_workers=5, node_id="c", autoload_plugins=False) as c:
        for m in (b, c):
            await m.register_job(Job(kind="kv.once", executor=body))
        insts = await a.schedule_many(job, [(i,) for i in range(n)])
        with anyio.fail_after(30):
            await done.wait()
            finals = [await a.wait(inst, timeout=10) for inst in insts]
        assert sorted(ran) == list(range(n)) and set(ran.values()) == {1}
        assert {f.state for f in finals} == {State.COMPLETED}
        nodes = {h.node for h in await a.lookup_instance_history(Query(state=State.PROCESSING))}
        assert len(nodes) >= 2, nodes
    assert await backend.scan("gojob/q/") == []  # the queue index is empty once all ran


async def test_a_corrupt_record_is_set_aside_and_reported() -> None:
    backend = MemoryKvBackend()
    store = KvStore(backend)
    good, bad = _inst(), _inst()
    await store.enqueue([bad, good])
    raw = b'{"uuid": "' + bad.uuid.encode() + b'", "state": "NO-SUCH-STATE", \xff'
    await backend.set(f"gojob/i/{bad.uuid}", raw)
    hist_key = "gojob/h/zzz/00000000000000001.x.000000000000"
    await backend.set(hist_key, b"not json")
    assert await store.corrupt_records() == []

    # the others still load and run: a claim passes over the bad one (its index key is stale now)
    claimed = await store.claim("n1", 10, 30)
    assert [i.uuid for i in claimed] == [good.uuid]
    assert [i.uuid for i in await store.list_instances(Query())] == [good.uuid]
    assert len(await store.lookup_history(Query())) == 5  # CREATED, SCHEDULED x2 and good's PROCESSING

    reports = {r.key: r for r in await store.corrupt_records()}
    assert set(reports) == {f"gojob/i/{bad.uuid}", hist_key}
    assert "UnicodeDecodeError" in reports[f"gojob/i/{bad.uuid}"].reason
    assert "NO-SUCH-STATE" in reports[f"gojob/i/{bad.uuid}"].raw
    # set aside, not deleted: the exact bytes are kept
    kept = json.loads((await backend.get(f"gojob/bad/gojob/i/{bad.uuid}")).value)  # type: ignore[union-attr]
    assert base64.b64decode(kept["raw_b64"]) == raw
    assert await store.get_instance(bad.uuid) is None
    assert await store.clear_history(Query()) == 5
    assert len(await store.corrupt_records()) == 2  # clearing never removes what was set aside


async def test_a_corrupt_record_claimed_by_no_one_does_not_stop_the_queue() -> None:
    backend = MemoryKvBackend()
    store = KvStore(backend)
    insts = [_inst() for _ in range(3)]
    await store.enqueue(insts)
    await backend.set(f"gojob/i/{insts[0].uuid}", b"[]")
    with anyio.fail_after(1):
        await store.wait_ready(5)
    assert {i.uuid for i in await store.claim("n", 10, 30)} == {insts[1].uuid, insts[2].uuid}
    assert [r.key for r in await store.corrupt_records()] == [f"gojob/i/{insts[0].uuid}"]


async def test_queue_index_keys_sort_by_priority_ready_time_and_seq() -> None:
    backend = MemoryKvBackend()
    store = KvStore(backend)
    t = time.time() - 10
    a = _inst(priority=-5)
    b = _inst(priority=3)
    b.ready_ts = t
    c = _inst(priority=3)
    c.ready_ts = t - 1
    await store.enqueue([b, c, a])
    keys = [e.key for e in await backend.scan("gojob/q/r/")]
    assert [k.split("/")[-2] for k in keys] == [a.uuid, c.uuid, b.uuid]
    assert [i.uuid for i in await store.claim("n", 3, 30)] == [a.uuid, c.uuid, b.uuid]


async def test_a_retry_written_index_first_is_pending_not_stale() -> None:
    """A re-queue's index key exists before its instance is written: a claim in between skips it."""
    backend = MemoryKvBackend()
    store = KvStore(backend)
    inst = _inst()
    await store.enqueue([inst])
    [got] = await store.claim("n", 1, 30)
    got.seq += 1000  # what a re-queue writes first: a key for a seq the record does not have yet
    got.state = State.SCHEDULED
    key = store._queue_key(got, time.time())
    await backend.set(key, b"")
    assert await store.claim("n2", 1, 30) == []
    assert await backend.get(key) is not None  # kept: its writer may still land its compare-and-set


def test_kv_store_is_abstract_over_its_backend() -> None:
    with pytest.raises(TypeError):
        KvBackend()  # type: ignore[abstract]
    with pytest.raises(ValueError):
        KvStore(MemoryKvBackend(), poll_interval=0)


async def test_an_enqueue_retried_after_a_crash_writes_the_lost_index_key() -> None:
    """A producer that died between the instance and its index key: enqueueing it again (False: it is
    there) writes the key, so the instance runs."""
    backend = MemoryKvBackend()
    store = KvStore(backend)
    inst = _inst()
    await store.enqueue([inst])
    await backend.delete_prefix("gojob/q/")  # as if the index key was never written
    assert await store.claim("n", 1, 30) == []
    assert await store.enqueue([inst]) == [False]
    assert [i.uuid for i in await store.claim("n", 1, 30)] == [inst.uuid]


# -- history is part of the state change's compare-and-set ----------------------------------------------
class _NodeDied(Exception):
    pass


class _DyingBackend(MemoryKvBackend):
    """Raises (the node "dies") once, right after the instance record carrying new history records was
    written (``die_at="record"``), or right after those records were copied to their keys but before
    the record was cleared of them (``die_at="copy"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.die_at: str | None = None

    async def compare_and_set(self, key: str, value: bytes, version: int | None) -> int | None:
        got = await super().compare_and_set(key, value, version)
        if (self.die_at == "record" and got is not None and key.startswith("gojob/i/")
                and b'"_history"' in value):
            self.die_at = None
            raise _NodeDied
        return got

    async def set_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        items = list(items)
        await super().set_many(items)
        if self.die_at == "copy" and any(k.startswith("gojob/h/") for k, _ in items):
            self.die_at = None
            raise _NodeDied


async def _pending(backend: MemoryKvBackend, uuid: str) -> dict[str, object]:
    entry = await backend.get(f"gojob/i/{uuid}")
    assert entry is not None
    return json.loads(entry.value).get("_history", {})


async def _history_keys(backend: MemoryKvBackend) -> list[str]:
    return [e.key for e in await backend.scan("gojob/h/", keys_only=True)]


_BEFORE = {"enqueue": [], "claim": ["enqueue"], "finish": ["enqueue", "claim"], "retry": ["enqueue", "claim"],
           "reclaim": ["enqueue", "claim"], "cancel": ["enqueue"]}
_ADDS = {"enqueue": [State.CREATED, State.SCHEDULED], "claim": [State.PROCESSING], "finish": [State.COMPLETED],
         "retry": [State.TERMINATED, State.SCHEDULED], "reclaim": [State.SCHEDULED], "cancel": [State.CANCELED]}


@pytest.mark.parametrize("die_at", ["record", "copy"])
@pytest.mark.parametrize("step", list(_ADDS))
async def test_a_node_dying_after_the_state_change_loses_no_history(step: str, die_at: str) -> None:
    backend = _DyingBackend()
    store = KvStore(backend)
    inst = _inst(max_retries=3)

    async def do(name: str) -> None:
        if name == "enqueue":
            await store.enqueue([inst])
        elif name == "claim":
            assert len(await store.claim("n", 1, 0.01 if step == "reclaim" else 30)) == 1
        elif name == "finish":
            await store.finish("n", [Outcome(inst.uuid, State.COMPLETED, result=1)])
        elif name == "retry":
            await store.finish("n", [Outcome(inst.uuid, State.TERMINATED, error="boom", retry_at=time.time() + 60)])
        elif name == "reclaim":
            await anyio.sleep(0.05)
            await store.reclaim_expired("m")
        else:
            await store.cancel(inst.uuid)

    for name in _BEFORE[step]:
        await do(name)
    before = await _history_keys(backend)
    backend.die_at = die_at
    with pytest.raises(_NodeDied):
        await do(step)
    expected = [s for name in [*_BEFORE[step], step] for s in _ADDS[name]]

    # the change and its history records landed in one write: they are in the instance record
    other = KvStore(backend)
    pending = await _pending(backend, inst.uuid)
    assert sorted(State(r["state"]) for r in pending.values()) == sorted(_ADDS[step])  # type: ignore[index]
    copied = set(await _history_keys(backend)) - set(before)
    assert copied == (set(pending) if die_at == "copy" else set())
    # every query sees them, exactly once
    assert [h.state for h in await other.lookup_history(Query(instance=inst))] == expected
    assert [h.state for h in await other.lookup_history(Query())] == expected
    assert [h.state for h in await other.lookup_history(Query(kind="k"))] == expected
    last = _ADDS[step][-1]
    assert [h.state for h in await other.lookup_history(Query(state=last))] == [s for s in expected if s is last]
    assert len(await other.lookup_history(Query(since=time.time() - 60, until=time.time() + 1))) == len(expected)

    # a later read flushes them: copied to their keys, cleared from the record, still once
    await other.get_instance(inst.uuid)
    assert await _pending(backend, inst.uuid) == {}
    assert set(pending) <= set(await _history_keys(backend))
    assert len(await _history_keys(backend)) == len(expected)
    assert [h.state for h in await other.lookup_history(Query(instance=inst))] == expected


async def test_history_left_in_the_record_is_carried_by_the_next_change() -> None:
    backend = _DyingBackend()
    store = KvStore(backend)
    inst = _inst()
    backend.die_at = "record"
    with pytest.raises(_NodeDied):
        await store.enqueue([inst])
    await store.enqueue([inst])  # retried after the crash: the index key, and the history flushed
    assert await _pending(backend, inst.uuid) == {}
    assert len(await _history_keys(backend)) == 2
    backend.die_at = "record"
    with pytest.raises(_NodeDied):
        await store.claim("n", 1, 30)
    assert await store.finish("n", [Outcome(inst.uuid, State.COMPLETED)]) == [True]  # carries PROCESSING
    assert await _pending(backend, inst.uuid) == {}
    hist = await store.lookup_history(Query(instance=inst))
    assert [h.state for h in hist] == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    assert len(await _history_keys(backend)) == 4


async def test_clearing_counts_and_keeps_history_left_in_the_record() -> None:
    backend = _DyingBackend()
    store = KvStore(backend)
    a, b = _inst(), _inst()
    for inst in (a, b):
        backend.die_at = "record"
        with pytest.raises(_NodeDied):
            await store.enqueue([inst])
    # clear_history removes pending records from the record too: no later flush brings them back
    assert await store.clear_history(Query(instance=a)) == 2
    assert await _pending(backend, a.uuid) == {}
    await store.get_instance(a.uuid)
    assert await store.lookup_history(Query(instance=a)) == []
    # clearing an instance copies its pending history out first: the history outlives it
    assert await store.clear_instances(Query(instance=b)) == 1
    assert [h.state for h in await store.lookup_history(Query())] == [State.CREATED, State.SCHEDULED]
    assert await store.clear_history(Query()) == 2
    assert await _history_keys(backend) == []

"""The Lua scripts of the Valkey/Redis store implement the same state machine as gojob_core.transitions.

The memory store applies ``gojob_core.transitions`` directly; the scripts restate it in Lua, because they
run inside the server. Here both stores take the same events, in lockstep, over many random sequences
(enqueue, claim, finish with every kind of outcome, retry, cancel, release, lease expiry and reclaim, the
abandon limit, stale attempts), and after every step the records and the histories must be the same:
state, attempts, abandoned, error, result, cancel flag, holder, and each history record's state, attempt,
node and detail. Any drift between the table and the scripts fails here, with the sequence that showed it.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest
from gojob_core import Instance, MemoryStore, Query, State
from gojob_core.abc import Outcome, Store
from gojob_core.testing.servers import Server

pytestmark = pytest.mark.anyio

NODES = ("n1", "n2")
SEQUENCES = 12
STEPS = 40


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["redis", "valkey"])
def lua_store_factory(request: pytest.FixtureRequest) -> Any:
    kind = str(request.param)
    server: Server = request.getfixturevalue(f"{kind}_server")
    if kind == "redis":
        from gojob_store_redis import RedisStore as cls
    else:
        from gojob_store_valkey import ValkeyStore as cls

    def make() -> Store:
        return cls.from_url(server.url(kind), prefix=f"x{uuid.uuid4().hex[:8]}:")

    return make


def _record(inst: Instance | None) -> tuple[Any, ...] | None:
    if inst is None:
        return None
    holder = inst.node if inst.state is State.PROCESSING else None
    return (inst.state, inst.attempts, inst.abandoned, inst.error, inst.result, inst.cancel_requested, holder,
            inst.max_abandons, inst.max_retries)


async def _snapshot(store: Store, uuids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for u in uuids:
        hist = await store.lookup_history(Query(instance=u))
        out[u] = (_record(await store.get_instance(u)), [(h.state, h.attempt, h.node, h.detail) for h in hist])
    return out


class _Walk:
    """One random sequence of events, applied to two stores in lockstep."""

    def __init__(self, seed: int, stores: tuple[Store, Store]) -> None:
        self.rng = random.Random(seed)
        self.stores = stores
        self.uuids: list[str] = []
        self.log: list[str] = []

    async def both(self, what: str, call: Any) -> tuple[Any, Any]:
        self.log.append(what)
        a = await call(self.stores[0])
        b = await call(self.stores[1])
        return a, b

    async def step(self) -> None:
        rng = self.rng
        choice = rng.choice(["enqueue", "claim", "claim", "finish", "finish", "cancel", "release", "expire"])
        if choice == "enqueue" or not self.uuids:
            now = time.time()
            insts = [Instance(uuid=str(uuid.uuid4()), kind=rng.choice(["a", "b"]), priority=rng.choice([0, 1]),
                              state=State.SCHEDULED, max_retries=rng.choice([0, 1, 2]), created_ts=now,
                              ready_ts=now - 1, max_abandons=rng.choice([None, 1, 2, 5]))
                     for _ in range(rng.randint(1, 3))]
            self.uuids += [i.uuid for i in insts]
            a, b = await self.both(f"enqueue {[i.uuid[:8] for i in insts]}",
                                   lambda s: s.enqueue([i.copy() for i in insts], node="p"))
            assert a == b
            return
        node = rng.choice(NODES)
        if choice in ("claim", "expire"):
            limit = rng.randint(1, 3)
            # a lease already lapsed ("expire") lets the next reclaim take it back at once
            lease = -1.0 if choice == "expire" else 30.0
            a, b = await self.both(f"claim {node} {limit} lease={lease}", lambda s: s.claim(node, limit, lease))
            assert sorted(i.uuid for i in a) == sorted(i.uuid for i in b), self.log
            a, b = await self.both(f"reclaim by {node}", lambda s: s.reclaim_expired(node))
            assert sorted(i.uuid for i in a) == sorted(i.uuid for i in b), self.log
            return
        target = rng.choice(self.uuids)
        if choice == "cancel":
            await self.both(f"cancel {target[:8]}", lambda s: s.cancel(target, node=node))
        elif choice == "release":
            await self.both(f"release {target[:8]} by {node}", lambda s: s.release(node, [target]))
        else:
            current = await self.stores[0].get_instance(target)
            attempt = current.attempts if current is not None else 0
            if rng.random() < 0.2:
                attempt = max(0, attempt - 1)  # a stale attempt: refused by both
            kind = rng.choice(["completed", "failed", "retry", "timed_out", "canceled"])
            outcome = {
                "completed": Outcome(target, State.COMPLETED, result={"r": rng.randint(0, 9)}, attempt=attempt),
                "failed": Outcome(target, State.TERMINATED, error="ValueError: boom", attempt=attempt),
                # due at once: the retry detail's delay reads 0.000 s on both clocks
                "retry": Outcome(target, State.TERMINATED, error="ValueError: again", retry_at=time.time() - 5,
                                 attempt=attempt),
                "timed_out": Outcome(target, State.TIMED_OUT, error="JobTimeoutError: late", attempt=attempt),
                "canceled": Outcome(target, State.CANCELED, detail="canceled while running", attempt=attempt),
            }[kind]
            a, b = await self.both(f"finish {target[:8]} {kind} attempt={attempt} by {node}",
                                   lambda s: s.finish(node, [outcome]))
            assert a == b, self.log


async def test_lua_scripts_apply_the_same_transitions_as_the_python_table(lua_store_factory: Any) -> None:
    for seed in range(SEQUENCES):
        memory, lua = MemoryStore(), lua_store_factory()
        await memory.start()
        await lua.start()
        try:
            walk = _Walk(seed, (memory, lua))
            for _ in range(STEPS):
                await walk.step()
                expected = await _snapshot(memory, walk.uuids)
                got = await _snapshot(lua, walk.uuids)
                for u in walk.uuids:
                    assert got[u] == expected[u], (f"seed {seed}: instance {u[:8]} after\n  " + "\n  ".join(walk.log)
                                                   + f"\nPython table: {expected[u]}\nLua scripts:  {got[u]}")
        finally:
            await lua.stop()
            await memory.stop()

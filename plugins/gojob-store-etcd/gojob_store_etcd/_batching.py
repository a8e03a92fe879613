"""Many instance changes in few requests, and the sizes of requests and reads.

Every change of an instance is one etcd transaction, guarded by the revisions it read. A batch of them
(claims, finishes, an enqueue of many) goes as one request whose operations are those transactions,
nested: one round trip, and an instance lost to a conflict fails its own nested transaction, not the
others. A :class:`Part` is one such nested transaction and the handler that reads its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gojob_core import StoreError

from ._client import EtcdClient

__all__ = ["INFLIGHT", "MAX_BYTES", "NEST", "PAGE", "Handler", "Part", "ignore", "send"]

PAGE = 1000            # keys per page of a large read (gRPC's receive limit, etcd's request costs)
NEST = 100             # nested transactions per request (etcd allows 128 operations per level)
MAX_BYTES = 1_000_000  # bytes per request (etcd's default --max-request-bytes is 1.5 MiB)
INFLIGHT = 8           # requests of one batch in flight at once

#: reads the answer of a part's operation (a ResponseOp) and the revision of the request it went in
Handler = Callable[[Any, int], None]


class Part(NamedTuple):
    """One operation of a batch (usually a nested transaction) and what to do with its answer."""

    op: Any
    handler: Handler
    size: int  #: about how many bytes it adds to a request (requests stay under MAX_BYTES)


def ignore(reply: Any, rev: int) -> None:
    """The handler of a part whose answer does not matter."""


async def send(client: EtcdClient, parts: Sequence[Part], head: Sequence[Any] = ()) -> None:
    """Send the parts' operations in as few requests as etcd allows; call each part's handler.

    ``head`` operations go in front of the first request, which is answered before the others are sent.
    """
    if not parts and not head:
        return
    chunks: list[list[Part]] = []
    cur: list[Part] = []
    size = sum(op.ByteSize() for op in head)
    for part in parts:
        if cur and (len(cur) + (len(head) if not chunks else 0) >= NEST or size + part.size > MAX_BYTES):
            chunks.append(cur)
            cur, size = [], 0
        cur.append(part)
        size += part.size
    chunks.append(cur)

    async def one(k: int, chunk: list[Part]) -> None:
        first = list(head) if k == 0 else []
        resp = await client.txn(first + [p.op for p in chunk])
        rev = resp.header.revision
        for part, r in zip(chunk, resp.responses[len(first):]):
            part.handler(r, rev)

    if len(chunks) == 1:
        await one(0, chunks[0])
        return
    sem = asyncio.Semaphore(INFLIGHT)
    errors: list[BaseException] = []

    async def guarded(k: int, chunk: list[Part]) -> None:
        async with sem:
            try:
                await one(k, chunk)
            except StoreError as exc:
                errors.append(exc)

    await one(0, chunks[0])  # the head goes first
    await asyncio.gather(*(guarded(k, c) for k, c in enumerate(chunks) if k > 0))
    if errors:
        raise errors[0]

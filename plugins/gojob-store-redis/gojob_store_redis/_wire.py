"""The RESP wire: one server connection as an asyncio protocol, replies parsed by hiredis.

Why the store does not send through redis-py's connection objects: their write and read path (stream
writer and reader, parser wrapper, timeout context) cost about 30 µs of CPU per round trip more than
this on the benchmark machine, and a job takes two round trips (its enqueue and its finish). Driving
gojob's own scripts, a sequential producer and one worker reached about 3,600 jobs/s over redis-py's
connections and about 4,900 over this wire, with no framework code on either side
(bench/results/resp-2026-11-25-s3.md). redis-py still supplies what a connection needs beyond bytes:
the TLS context of a ``rediss://`` URL or of a given client, and a given client's settings.

A ``Wire`` is pipelined: callers write requests as they come and replies are matched to them in order,
so one connection serves every concurrent call of a node. A caller cancelled while waiting leaves its
reply to be read and dropped; the connection stays in step. A call that outlives its timeout aborts
the connection (a server that does not answer in time may never answer on it); the next call opens a
new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

__all__ = ["Endpoint", "ReplyError", "Wire", "open_wire", "pack"]


class ReplyError(Exception):
    """An error reply from the server (the connection is fine)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: TCP (``host``, ``port``) or a unix socket (``path``)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def address(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP (arguments are str, bytes or numbers)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Wire(asyncio.Protocol):
    """One connection. In request mode each reply answers the oldest waiting request; in push mode
    (a subscribed connection) replies are messages, queued until read."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ReplyError, encoding="utf-8", errors="replace",
                                      notEnoughData=False)
        self._push = False
        # (reply future, deadline on the loop's clock, timeout) of each request not yet answered
        self._waiters: deque[tuple[asyncio.Future[Any], float, float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self._messages: deque[Any] = deque()
        self._message_waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: BaseException | None = None
        self._paused: asyncio.Future[None] | None = None

    # -- protocol callbacks ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if self._push:
                    self._messages.append(reply)
                else:
                    fut = self._waiters.popleft()[0]
                    if not fut.done():  # else its caller gave up: the reply is dropped, the order kept
                        fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(ConnectionError(f"protocol error from the server: {exc!r}"))
            return
        if self._push and self._messages and self._message_waiter is not None \
                and not self._message_waiter.done():
            self._message_waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}" if exc else "connection closed"))

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self._transport is not None:
            self._transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiters:
            fut = self._waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)
        for fut in (self._message_waiter, self._paused):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    # -- calls -------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lost is not None

    def close(self) -> None:
        self._fail(ConnectionError("connection closed"))

    def _send(self, data: bytes, n: int, timeout: float) -> list[asyncio.Future[Any]]:
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        deadline = self._loop.time() + timeout
        futs = [self._loop.create_future() for _ in range(n)]
        self._waiters.extend((f, deadline, timeout) for f in futs)
        self._transport.write(data)
        if self._watchdog is None or deadline < self._watch_at:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watch_at = deadline
            self._watchdog = self._loop.call_at(deadline, self._watch)
        return futs

    def _watch(self) -> None:
        """The deadlines of unanswered requests, checked by one timer per connection (a timer per call
        cost about 5 µs of CPU per round trip): a request past its own fails the connection."""
        self._watchdog = None
        now, first = self._loop.time(), None
        for fut, deadline, timeout in self._waiters:
            if fut.done():  # its caller gave up; the reply, when it comes, is dropped
                continue
            if deadline <= now:
                self._fail(TimeoutError(f"no reply within {timeout} s"))
                return
            first = deadline if first is None else min(first, deadline)
        if first is not None:
            self._watch_at = first
            self._watchdog = self._loop.call_at(first, self._watch)

    async def call(self, data: bytes, timeout: float) -> Any:
        """Send one packed request; its reply (a ``ReplyError`` is returned, not raised)."""
        if self._paused is not None:
            await self._paused
        return await self._send(data, 1, timeout)[0]

    async def call_many(self, data: bytes, n: int, timeout: float) -> list[Any]:
        """Send ``n`` packed requests at once; their replies in order."""
        if self._paused is not None:
            await self._paused
        return [await f for f in self._send(data, n, timeout)]

    def push(self, data: bytes) -> None:
        """Send ``data`` (SUBSCRIBE) and switch to push mode for good: every reply from now on is a
        message, read with ``receive`` (the server's confirmations among them)."""
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None and not self._waiters
        self._push = True
        self._transport.write(data)

    async def receive(self, timeout: float) -> Any:
        """Push mode: the next message, or None if none came within ``timeout`` seconds."""
        if not self._messages:
            if self._lost is not None:
                raise self._lost
            if timeout <= 0:
                return None
            fut = self._message_waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _set_none, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._message_waiter = None
            if not self._messages:
                return None
        return self._messages.popleft()


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def open_wire(endpoint: Endpoint, timeout: float) -> Wire:
    """Connect, authenticate and select the database; a ``ReplyError`` for a refused login, OSError or
    TimeoutError for an unreachable server."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if endpoint.path is not None:
            _, wire = await loop.create_unix_connection(Wire, endpoint.path, ssl=endpoint.ssl_context)
        else:
            _, wire = await loop.create_connection(
                Wire, endpoint.host, endpoint.port, ssl=endpoint.ssl_context,
                server_hostname=endpoint.host if endpoint.ssl_context is not None else None)
        try:
            hello: list[Any] = []
            if endpoint.password is not None:
                hello.append(["AUTH", endpoint.password] if endpoint.username is None
                             else ["AUTH", endpoint.username, endpoint.password])
            if endpoint.db:
                hello.append(["SELECT", endpoint.db])
            hello.append(["PING"])  # proves the server answers (and, with no password given, needs none)
            replies = await wire.call_many(b"".join(pack(c) for c in hello), len(hello), timeout)
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise reply
        except BaseException:
            wire.close()
            raise
    return wire

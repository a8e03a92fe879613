"""The Redis store: gojob_core.resp's layout and scripts over redis-py's asyncio client."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import redis.asyncio as aioredis
from gojob_core import StoreError
from gojob_core.resp import RespConnection, RespOptions, RespStore, RespSubscription, parse_resp_url
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

__all__ = ["RedisConnection", "RedisStore"]

_log = logging.getLogger("gojob.redis")


class _Subscription(RespSubscription):
    """A redis-py connection of its own, subscribed, read directly (redis-py's PubSub object wraps
    every read in health checks and a retry policy: a cost on each handed instance). After a
    connection error the next read reconnects and subscribes again; what was published meanwhile
    is lost, which the callers' safety nets (poll, heartbeat) cover."""

    def __init__(self, make: Any, channels: Sequence[str], timeout: float) -> None:
        self._make = make
        self._channels = list(dict.fromkeys(channels))
        self._timeout = timeout
        self._conn: Any = None

    async def open(self) -> None:
        """Connect and subscribe, returning once the server confirmed: nothing published later is missed."""
        conn = self._make()
        try:
            with anyio.fail_after(self._timeout):
                await conn.connect()
                await conn.send_packed_command(_pack(["SUBSCRIBE", *self._channels]), check_health=False)
                left = len(self._channels)
                while left > 0:
                    reply = await conn.read_response(disconnect_on_error=False)
                    if isinstance(reply, list) and reply and reply[0] == "subscribe":
                        left -= 1
        except (RedisError, OSError) as exc:
            await _drop(conn)
            raise StoreError(f"redis store: subscribe failed: {exc}") from exc
        except BaseException:
            await _drop(conn)
            raise
        self._conn = conn

    async def next_message(self, timeout: float) -> tuple[str, str] | None:
        if self._conn is None:
            await self.open()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                # a read that times out returns None and leaves the connection (and a message half
                # read into the parser's buffer) as it was
                reply = await self._conn.read_response(timeout=max(0.0, deadline - time.monotonic()),
                                                       disconnect_on_error=False)
            except (RedisError, OSError) as exc:
                conn, self._conn = self._conn, None
                await _drop(conn)
                raise StoreError(f"redis store: subscription interrupted: {exc}") from exc
            if reply is None:
                return None
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                return str(reply[1]), str(reply[2])
            # anything else (a confirmation) is read past

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _drop(conn)


async def _drop(conn: Any) -> None:
    """Close a connection, whatever state it is in."""
    try:
        with anyio.CancelScope(shield=True):
            await conn.disconnect(nowait=True)
    except Exception as exc:  # noqa: BLE001 - the connection is dropped either way
        _log.debug("redis store: closing a connection: %r", exc)


def _pack(args: Sequence[Any]) -> bytes:
    """One command in RESP (arguments are str, bytes or numbers)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Pool:
    """redis-py connection objects used directly: a free list under a cap, no per-call probe.

    redis-py's client path (a pool checkout that probes the socket, the retry wrapper, response
    callbacks) costs about 90 µs of CPU per call on this kind of machine, more than a script call
    itself (about 65 µs); a job takes a few calls, so that path set the store's speed. The
    connections are redis-py's own (RESP parsing, hiredis, TLS, AUTH, SELECT on connect).
    A connection whose call failed or was cancelled mid-reply is closed, never reused.
    """

    def __init__(self, make: Any, max_connections: int, timeout: float) -> None:
        self._make = make
        self._idle: list[Any] = []
        self._sem = anyio.Semaphore(max_connections)
        self._timeout = timeout
        self._closed = False

    async def acquire(self) -> Any:
        if self._closed:
            raise StoreError("redis store is not connected")
        try:
            self._sem.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(self._timeout) as scope:
                await self._sem.acquire()
            if scope.cancelled_caught:
                raise StoreError(f"redis store: no free connection within {self._timeout} s "
                                 f"(all in use; raise max_connections)") from None
        conn = self._idle.pop() if self._idle else self._make()
        if not conn.is_connected:
            try:
                await conn.connect()
            except BaseException:
                self._sem.release()
                raise
        return conn

    async def release(self, conn: Any, reusable: bool) -> None:
        if reusable and not self._closed:
            self._idle.append(conn)
            self._sem.release()
            return
        try:  # a half-read reply must not be read by the next call: drop the connection
            await _drop(conn)
        finally:
            self._sem.release()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with anyio.CancelScope(shield=True):
                await conn.disconnect()


class RedisConnection(RespConnection):
    """redis-py asyncio: its connection objects driven directly, pooled for commands and scripts (see
    ``_Pool``), one each for subscriptions. ``max_connections`` caps the connections for commands; a
    call waits for a free one (up to the timeout) rather than failing."""

    def __init__(self, options: RespOptions, *, client: aioredis.Redis | None = None,
                 max_connections: int = 64) -> None:
        self.options = options
        self._given = client
        self._max = max_connections
        self._pool: _Pool | None = None
        self._make_sub: Any = None

    def _connection_settings(self) -> tuple[type[Any], dict[str, Any]]:
        """The redis-py connection class and its arguments: a given client's, else the URL's."""
        o = self.options
        if self._given is not None:
            cp = self._given.connection_pool
            cls, kwargs = cp.connection_class, dict(cp.connection_kwargs)
        else:
            cls = aioredis.SSLConnection if o.tls else aioredis.Connection
            kwargs = {"host": o.host, "port": o.port, "db": o.db, "username": o.username,
                      "password": o.password, "socket_connect_timeout": o.connect_timeout}
        # replies as text in RESP2 shapes, whatever a given client was built with; our calls are
        # bounded by a cancel scope instead of socket_timeout (redis-py enforces that on a write by
        # running it as a separate task, asyncio.wait_for: a cost on every call)
        kwargs.update(decode_responses=True, protocol=2, socket_timeout=None)
        return cls, kwargs

    async def connect(self) -> None:
        o = self.options
        cls, kwargs = self._connection_settings()
        self._pool = _Pool(lambda: cls(**kwargs), self._max, o.timeout)
        self._make_sub = lambda: cls(**kwargs)
        try:
            await self.execute("PING")
        except StoreError as exc:
            if isinstance(exc.__cause__, AuthenticationError):
                raise StoreError(f"redis store: authentication failed at {o.host}:{o.port}: "
                                 f"{exc.__cause__}") from exc.__cause__
            raise StoreError(f"redis store: cannot connect to {o.host}:{o.port}: {exc.__cause__ or exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _p(self) -> _Pool:
        if self._pool is None:
            raise StoreError("redis store is not connected")
        return self._pool

    async def _call(self, args: Sequence[Any]) -> Any:
        """One command on a pooled connection; error replies raise ResponseError (connection kept)."""
        pool = self._p()
        conn = await pool.acquire()
        ok = False
        try:
            with anyio.fail_after(self.options.timeout):
                await conn.send_packed_command(_pack(args), check_health=False)
                try:
                    reply = await conn.read_response()
                except ResponseError:
                    ok = True  # the error reply was read whole: the connection is in step
                    raise
            ok = True
            return reply
        finally:
            await pool.release(conn, ok)

    async def execute(self, *args: Any) -> Any:
        try:
            return await self._call(args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: {args[0]} failed: {exc}") from exc

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if not commands:
            return []
        pool = self._p()
        try:
            conn = await pool.acquire()
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: pipeline failed: {exc}") from exc
        ok = False
        replies: list[Any] = []
        first_error: ResponseError | None = None
        try:
            with anyio.fail_after(self.options.timeout * max(1, len(commands) / 1000)):
                await conn.send_packed_command(b"".join(_pack(c) for c in commands), check_health=False)
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # keep reading: the other replies are on the wire
                        first_error = first_error or exc
                        replies.append(exc)
            ok = True
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: pipeline failed: {exc}") from exc
        finally:
            await pool.release(conn, ok)
        if first_error is not None:
            raise StoreError(f"redis store: pipeline failed: {first_error}") from first_error
        return replies

    async def run_script(self, sha: str, script: str, args: Sequence[Any]) -> Any:
        try:
            try:
                return await self._call(("EVALSHA", sha, 0, *args))
            except NoScriptError:
                return await self._call(("EVAL", script, 0, *args))
        except ResponseError as exc:
            raise StoreError(f"redis store: script failed: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: {exc}") from exc

    async def subscribe(self, channels: Sequence[str]) -> RespSubscription:
        sub = _Subscription(self._make_sub, channels, self.options.timeout)
        await sub.open()
        return sub


class RedisStore(RespStore):
    """Queue, history and logs on Redis, shared by every node pointed at the same server and prefix.

    ``RedisStore.from_url("redis://:password@host:6379/0?prefix=myapp:")``; ``rediss://`` for TLS;
    keyword options (``prefix``, ``timeout``, ``password``, ...) override the URL; ``client=`` takes
    an existing ``redis.asyncio.Redis``, whose connection settings (address, credentials, TLS, database)
    the store's own connections use.
    """

    SCHEMES: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio",)
    name = "redis"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        client = options.pop("client", None)
        max_connections = options.pop("max_connections", 64)
        opts = parse_resp_url(url, {"redis": False, "rediss": True}, **options)
        return cls(RedisConnection(opts, client=client, max_connections=max_connections), opts)

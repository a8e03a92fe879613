"""The Redis store: gojob_store_resp's layout and scripts over gojob's own RESP wire (``_wire``), with
redis-py supplying TLS contexts and a given client's settings."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import redis.asyncio as aioredis
from gojob_core import StoreError
from gojob_store_resp import RespConnection, RespOptions, RespStore, RespSubscription, parse_resp_url

from ._wire import Endpoint, ReplyError, Wire, open_wire, pack

__all__ = ["RedisConnection", "RedisStore"]


class _Subscription(RespSubscription):
    """A connection of its own (see ``_wire``), subscribed. After a connection error the next read
    reconnects and subscribes again; what was published meanwhile is lost, which the callers' safety
    nets (poll, heartbeat) cover."""

    def __init__(self, endpoint: Endpoint, channels: Sequence[str], timeout: float) -> None:
        self._endpoint = endpoint
        self._channels = list(dict.fromkeys(channels))
        self._timeout = timeout
        self._wire: Wire | None = None

    async def open(self) -> None:
        """Connect and subscribe, returning once the server confirmed: nothing published later is missed."""
        wire: Wire | None = None
        try:
            wire = await open_wire(self._endpoint, self._timeout)
            wire.push(pack(["SUBSCRIBE", *self._channels]))
            left = len(self._channels)
            deadline = time.monotonic() + self._timeout
            while left > 0:
                reply = await wire.receive(deadline - time.monotonic())
                if reply is None:
                    raise TimeoutError(f"no confirmation within {self._timeout} s")
                if isinstance(reply, list) and reply and reply[0] == "subscribe":
                    left -= 1
        except (ReplyError, OSError, TimeoutError) as exc:
            if wire is not None:
                wire.close()
            raise StoreError(f"redis store: subscribe failed at {self._endpoint.address}: {exc}") from exc
        except BaseException:
            if wire is not None:
                wire.close()
            raise
        self._wire = wire

    async def next_message(self, timeout: float) -> tuple[str, str] | None:
        if self._wire is None:
            await self.open()
        assert self._wire is not None
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                reply = await self._wire.receive(deadline - time.monotonic())
            except (OSError, TimeoutError) as exc:
                wire, self._wire = self._wire, None
                wire.close()
                raise StoreError(f"redis store: subscription interrupted: {exc}") from exc
            if reply is None:
                return None
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                return str(reply[1]), str(reply[2])
            # anything else (a confirmation) is read past

    async def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()


_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM")


class RedisConnection(RespConnection):
    """Commands and scripts pipelined over one connection (see ``_wire``), reopened on the next call
    after it failed; one connection for each subscription. Every call is bounded by ``timeout``."""

    def __init__(self, options: RespOptions, *, client: aioredis.Redis | None = None) -> None:
        self.options = options
        self._given = client
        self._endpoint: Endpoint | None = None
        self._wire: Wire | None = None
        self._opening: asyncio.Future[Wire] | None = None
        self._closed = False

    def _make_endpoint(self) -> Endpoint:
        """Where to connect: a given client's settings (redis-py builds its TLS context), else the URL's."""
        o = self.options
        if self._given is None:
            ctx = None
            if o.tls:  # the server's certificate and name checked, against the given CAs or the system's
                ctx = ssl.create_default_context(cafile=o.ca_file)
                if o.cert_file is not None:
                    ctx.load_cert_chain(o.cert_file, o.key_file)
            return Endpoint(host=o.host, port=o.port, ssl_context=ctx, username=o.username, password=o.password,
                            db=o.db)
        cp = self._given.connection_pool
        kw = dict(cp.connection_kwargs)
        username, password = kw.get("username"), kw.get("password")
        provider = kw.get("credential_provider")
        if provider is not None:
            creds = provider.get_credentials()
            username, password = (None, creds[0]) if len(creds) == 1 else (creds[0], creds[1])
        ctx = None
        if issubclass(cp.connection_class, aioredis.SSLConnection):
            ctx = cp.connection_class(**kw).ssl_context.get()
        return Endpoint(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)), path=kw.get("path"),
                        ssl_context=ctx, username=username, password=password, db=int(kw.get("db") or 0))

    async def _open(self) -> Wire:
        assert self._endpoint is not None
        return await open_wire(self._endpoint, self.options.connect_timeout)

    async def connect(self) -> None:
        o = self.options
        self._endpoint = self._make_endpoint()
        where = self._endpoint.address
        try:
            self._wire = await self._open()
        except ReplyError as exc:
            if str(exc).startswith(_AUTH_REPLIES) or "AUTH" in str(exc).upper():
                raise StoreError(f"redis store: authentication failed at {where}: {exc}") from exc
            raise StoreError(f"redis store: cannot connect to {where}: {exc}") from exc
        except TimeoutError as exc:
            raise StoreError(f"redis store: cannot connect to {where}: no answer within {o.connect_timeout} s") \
                from exc
        except OSError as exc:
            raise StoreError(f"redis store: cannot connect to {where}: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    async def _live(self) -> Wire:
        """The connection, reopened if the last one failed (concurrent callers share one attempt)."""
        wire = self._wire
        if wire is not None and not wire.closed:
            return wire
        if self._closed or self._endpoint is None:
            raise StoreError("redis store is not connected")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, fut: asyncio.Future[Wire]) -> None:
        self._opening = None
        if not fut.cancelled() and fut.exception() is None:
            if self._closed:
                fut.result().close()
            else:
                self._wire = fut.result()

    async def _call(self, args: Sequence[Any]) -> Any:
        """One command; an error reply raises ``ReplyError``, anything else ``OSError``/``TimeoutError``."""
        wire = self._wire
        if wire is None or wire.closed:
            wire = await self._live()
        reply = await wire.call(pack(args), self.options.timeout)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def execute(self, *args: Any) -> Any:
        try:
            return await self._call(args)
        except (ReplyError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis store: {args[0]} failed: {exc or type(exc).__name__}") from exc

    async def pipeline(self, commands: Sequence[Sequence[Any]], *, raise_on_error: bool = True) -> list[Any]:
        if not commands:
            return []
        try:
            wire = await self._live()
            replies = await wire.call_many(b"".join(pack(c) for c in commands), len(commands),
                                           self.options.timeout * max(1, len(commands) / 1000))
        except (ReplyError, OSError, TimeoutError) as exc:  # ReplyError: refused on reconnecting
            raise StoreError(f"redis store: pipeline failed: {exc or type(exc).__name__}") from exc
        if raise_on_error:  # else an error reply stays in its place, a ReplyError
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise StoreError(f"redis store: pipeline failed: {reply}") from reply
        return replies

    async def run_script(self, sha: str, script: str, args: Sequence[Any]) -> Any:
        try:
            try:
                return await self._call(("EVALSHA", sha, 0, *args))
            except ReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                return await self._call(("EVAL", script, 0, *args))
        except ReplyError as exc:
            raise StoreError(f"redis store: script failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"redis store: {exc or type(exc).__name__}") from exc

    async def subscribe(self, channels: Sequence[str]) -> RespSubscription:
        if self._endpoint is None:
            raise StoreError("redis store is not connected")
        sub = _Subscription(self._endpoint, channels, self.options.timeout)
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
        opts = parse_resp_url(url, {"redis": False, "rediss": True}, **options)
        return cls(RedisConnection(opts, client=client), opts)

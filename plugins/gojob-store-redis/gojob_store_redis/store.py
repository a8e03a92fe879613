"""The Redis store: gojob_core.resp's layout and scripts over redis-py's asyncio client."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import redis.asyncio as aioredis
from gojob_core import StoreError
from gojob_core.resp import RespConnection, RespOptions, RespStore, RespSubscription, parse_resp_url
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

__all__ = ["RedisConnection", "RedisStore"]


class _Subscription(RespSubscription):
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def next_message(self, timeout: float) -> tuple[str, str] | None:
        try:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=max(0.0, timeout))
        except (RedisError, OSError) as exc:
            # redis-py's PubSub reconnects and resubscribes on the next call; what was published
            # meanwhile is lost, which the callers' safety nets (poll, heartbeat) cover
            raise StoreError(f"redis store: subscription interrupted: {exc}") from exc
        if msg is None:
            return None
        return str(msg["channel"]), str(msg["data"])

    async def close(self) -> None:
        await self._pubsub.aclose()


class RedisConnection(RespConnection):
    """redis-py asyncio: one client with a blocking pool (waits for a free connection instead of failing)."""

    def __init__(self, options: RespOptions, *, client: aioredis.Redis | None = None,
                 max_connections: int = 64) -> None:
        self.options = options
        self._given = client
        self._max = max_connections
        self.client: aioredis.Redis | None = None

    async def connect(self) -> None:
        if self._given is not None:
            self.client = self._given
            return
        o = self.options
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.SSLConnection if o.tls else aioredis.Connection,
            max_connections=self._max, timeout=o.timeout, host=o.host, port=o.port, db=o.db,
            username=o.username, password=o.password, decode_responses=True, protocol=2,
            socket_timeout=o.timeout, socket_connect_timeout=o.connect_timeout,
        )
        self.client = aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
        try:
            await self.client.ping()
        except AuthenticationError as exc:
            raise StoreError(f"redis store: authentication failed at {o.host}:{o.port}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: cannot connect to {o.host}:{o.port}: {exc}") from exc

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and self._given is None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _c(self) -> aioredis.Redis:
        if self.client is None:
            raise StoreError("redis store is not connected")
        return self.client

    async def execute(self, *args: Any) -> Any:
        try:
            return await self._c().execute_command(*args)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: {args[0]} failed: {exc}") from exc

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        try:
            async with self._c().pipeline(transaction=False) as pipe:
                for cmd in commands:
                    pipe.execute_command(*cmd)
                return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: pipeline failed: {exc}") from exc

    async def run_script(self, sha: str, script: str, args: Sequence[Any]) -> Any:
        c = self._c()
        try:
            try:
                return await c.evalsha(sha, 0, *args)
            except NoScriptError:
                return await c.eval(script, 0, *args)
        except ResponseError as exc:
            raise StoreError(f"redis store: script failed: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis store: {exc}") from exc

    async def subscribe(self, channels: Sequence[str]) -> RespSubscription:
        pubsub = self._c().pubsub()
        try:
            await pubsub.subscribe(*channels)
        except (RedisError, OSError) as exc:
            await pubsub.aclose()
            raise StoreError(f"redis store: subscribe failed: {exc}") from exc
        return _Subscription(pubsub)


class RedisStore(RespStore):
    """Queue, history and logs on Redis, shared by every node pointed at the same server and prefix.

    ``RedisStore.from_url("redis://:password@host:6379/0?prefix=myapp:")``; ``rediss://`` for TLS;
    keyword options (``prefix``, ``timeout``, ``password``, ...) override the URL; ``client=`` takes
    an existing ``redis.asyncio.Redis`` (created with ``decode_responses=True``).
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

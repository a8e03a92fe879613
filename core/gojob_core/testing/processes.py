"""Worker node processes for multi-process store tests (pytest plugin: the ``workers`` fixture).

Each worker runs :mod:`gojob_core.testing.worker` on a store URL; a test schedules from its own Manager
(with no workers) and reads what every process ran. Every process is ended by PID at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from .._instance import Instance

__all__ = ["WORKER", "Workers", "block", "record", "wait_for", "workers"]

#: the command line (after the interpreter) of the worker program
WORKER = ["-m", "gojob_core.testing.worker"]


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: Callable[[], str],
                   interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail with ``what()`` after ``timeout`` seconds."""
    deadline = anyio.current_time() + timeout
    while not await condition():
        if anyio.current_time() > deadline:
            pytest.fail(f"not within {timeout}s: {what()}")
        await anyio.sleep(interval)


class Workers:
    """Worker processes running gojob_core.testing.worker; each is ended by PID at teardown."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, url: str, node: str, *, lease: float, num_workers: int) -> None:
        with open(self.dir / f"{node}.log", "wb") as log:
            self.procs[node] = subprocess.Popen(
                [sys.executable, *WORKER, url, node, str(lease), str(num_workers), str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, node: str) -> str:
        path = self.dir / f"{node}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {node} (exit {self.procs[node].poll()}) ---\n{text[-3000:]}"

    def logs(self) -> str:
        return "\n".join(self.log(n) for n in self.procs)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            for node, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"worker process {node} exited early:\n{self.log(node)}")
            return all((self.dir / f"{n}.ready").exists() for n in self.procs)

        await wait_for(ready, timeout, lambda: "worker processes not ready:\n" + self.logs())

    def ran(self) -> dict[str, list[int]]:
        """Each node's recorded runs (``record`` job indexes), in order."""
        out = {}
        for node in self.procs:
            path = self.dir / f"{node}.ran"
            lines = path.read_text().splitlines() if path.exists() else []
            out[node] = [int(x) for x in lines]
        return out

    def kill(self, node: str) -> None:
        proc = self.procs[node]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    async def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM every live worker (a graceful stop) and wait for it; their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)

        async def exited() -> bool:
            return all(p.poll() is not None for p in self.procs.values())

        await wait_for(exited, timeout, lambda: "worker processes did not stop on SIGTERM:\n" + self.logs())
        return {n: p.returncode for n, p in self.procs.items()}

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    out = tmp_path / "workers"
    out.mkdir()
    w = Workers(out)
    try:
        yield w
    finally:
        w.close()


# The scheduling node's copies of the jobs: same kinds and signatures as in the worker program. The
# scheduling Manager has no workers, so these executors never run.
async def record(i: int) -> None:
    raise AssertionError("the record job runs in the worker processes only")


async def block(instance: Instance) -> str:
    raise AssertionError("the block job runs in the worker processes only")


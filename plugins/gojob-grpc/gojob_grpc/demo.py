"""A tour of a gojob node and jobctl: ``python -m gojob_grpc.demo`` (or the ``gojob-grpc-demo`` command).

It runs what you would type in a terminal, and prints each command line before its output:

1. ``gojob serve`` on the memory store with the example jobs of :mod:`gojob_grpc.demo_jobs`, on free
   ports (``--listen 127.0.0.1:0 --metrics 127.0.0.1:0``), read back from its ready line;
2. ``jobctl schedule``: ``sum`` with string arguments (coerced to int by the node), ``flaky`` (fails
   its first attempt) with ``--max-retries 2``, ``report`` on a crontab spec, and ``slow`` delayed by
   an hour, then cancelled;
3. ``jobctl wait`` for the first two, ``jobctl instances``;
4. ``jobctl history`` and ``jobctl logs`` of the retried instance (both attempts), ``jobctl show`` of
   the recurring one;
5. the node's ``/metrics`` page (without comments, histogram buckets and zeros);
6. SIGTERM to the node, which stops cleanly (exit status 0).

jobctl and gojob are the console scripts installed next to this interpreter. It takes a few seconds;
the exit status is 0 when every step did what it shows.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

__all__ = ["main"]

_READY = re.compile(r"gojob serve: node (?P<node>\S+) ready: grpc (?P<grpc>\S+)[^,]*, metrics (?P<metrics>\S+),")
_BIN = Path(sys.executable).parent  # the venv's bin (Scripts) directory: not PATH


class DemoError(Exception):
    """A step did not do what the demo shows."""


def _command(name: str, module: str) -> list[str]:
    """The console script ``name`` next to this interpreter, else ``python -m module``."""
    for candidate in (_BIN / name, _BIN / f"{name}.exe"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", module]


def _say(text: str = "") -> None:
    print(text, flush=True)


def section(title: str) -> None:
    _say()
    _say(f"# {title}")


class Session:
    """Runs jobctl against one node, printing each command line and its output like a terminal."""

    def __init__(self, target: str) -> None:
        self.jobctl = _command("jobctl", "gojob_grpc.jobctl")
        self.env = {k: v for k, v in os.environ.items() if k not in ("GOJOB_TOKEN",)}
        self.env.update(GOJOB_TARGET=target, GRPC_VERBOSITY="ERROR")

    def __call__(self, *args: str, expect: int = 0) -> str:
        _say(f"$ {shlex.join(['jobctl', *args])}")
        proc = subprocess.run([*self.jobctl, *args], capture_output=True, text=True, env=self.env, timeout=30,
                              stdin=subprocess.DEVNULL)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                _say(stream.rstrip("\n"))
        if proc.returncode != expect:
            raise DemoError(f"jobctl {args[0]} exited {proc.returncode} (expected {expect})")
        return proc.stdout.strip()


def _ready_line(proc: subprocess.Popen[str], log: IO[str], timeout: float = 30.0) -> re.Match[str]:
    """Wait for the node's ready line on its stdout (it names the ports it bound)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                line = proc.stdout.readline()
                if not line:  # the node exited before it was ready
                    break
                _say(line.rstrip("\n"))
                if m := _READY.search(line):
                    return m
    if proc.poll() is None:
        raise DemoError(f"the node did not become ready within {timeout:g}s")
    proc.wait()
    log.seek(0)
    raise DemoError(f"the node did not start (exit status {proc.returncode}):\n{log.read()[-3000:]}")


def _metrics(url: str) -> list[str]:
    """The go_job_ samples of the /metrics page, without comments, histogram buckets and zeros."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    lines = []
    for line in text.splitlines():
        if not line.startswith("go_job_") or "_bucket{" in line or "_created" in line:
            continue
        if float(line.rsplit(" ", 1)[1]) == 0:
            continue
        lines.append(line)
    return lines


def _stop(node: subprocess.Popen[str]) -> int:
    """SIGTERM by PID, then wait for the node to finish (it hands back what it runs and exits 0)."""
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
        try:
            node.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.communicate(timeout=10)
    return node.returncode


def tour(node: subprocess.Popen[str], log: IO[str], serve_line: str) -> None:
    section("1. a node: gojob serve on the memory store with the example jobs (gojob_grpc.demo_jobs)")
    _say(f"$ {serve_line} &")
    ready = _ready_line(node, log)
    target, metrics_url = ready["grpc"], ready["metrics"]
    _say(f"$ export GOJOB_TARGET={target}")
    jobctl = Session(target)
    jobctl("jobs")

    section('2. schedule: "40" + "2" (strings, coerced to int), a flaky job with retries, a cron job, '
            "a delayed job cancelled")
    total = jobctl("schedule", "sum", '"40"', '"2"')
    flaky = jobctl("schedule", "flaky", "world", "--max-retries", "2")
    cron = jobctl("schedule", "report", "--cron", "* * * * *")
    delayed = jobctl("schedule", "slow", "5", "--after", "1h")
    jobctl("cancel", delayed)

    section("3. wait for the first two, then list the instances")
    jobctl("wait", total)
    jobctl("wait", flaky)  # exit 0: the retry COMPLETED
    jobctl("instances")

    section("4. the retried instance: its history and its log (both attempts); the cron instance")
    jobctl("history", flaky)
    jobctl("logs", flaky)
    jobctl("show", cron)

    section("5. metrics: the node's /metrics page (without comments, histogram buckets and zeros)")
    if metrics_url == "off":
        raise DemoError("the node serves no /metrics")
    _say(f"$ curl -s {metrics_url} | grep '^go_job_' | grep -v -e _bucket -e _created -e ' 0.0$'")
    lines = _metrics(metrics_url)
    for line in lines:
        _say(line)
    if not any(line.startswith("go_job_retried_total") for line in lines):
        raise DemoError("the metrics do not show the retry")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m gojob_grpc.demo`` and the ``gojob-grpc-demo`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(__doc__, file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    started = time.monotonic()
    serve = ["serve", "--store", "memory://", "--jobs", "gojob_grpc.demo_jobs", "--listen", "127.0.0.1:0",
             "--metrics", "127.0.0.1:0", "--log-level", "WARNING"]
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    status = 0
    with tempfile.TemporaryFile("w+") as log:  # the node's log (stderr), shown if something goes wrong
        node = subprocess.Popen([*_command("gojob", "gojob_grpc.cli"), *serve], stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
        try:
            tour(node, log, shlex.join(["gojob", *serve]))
        except (DemoError, OSError, subprocess.SubprocessError) as exc:
            _say(f"\ndemo failed: {exc}")
            status = 1
        except KeyboardInterrupt:
            _say("\ninterrupted")
            status = 130
        finally:
            section("6. stop: SIGTERM to the node, which stops cleanly")
            _say(f"$ kill -TERM {node.pid}; wait {node.pid}")
            rc = _stop(node)
            _say(f"node exited with status {rc}")
            if rc != 0:
                status = 1
            if status:
                log.seek(0)
                _say(f"the node's log:\n{log.read()[-3000:]}")
    _say(f"\ndone in {time.monotonic() - started:.1f} s" + ("" if status == 0 else " (with errors)"))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``python -m gojob_grpc.demo`` runs from start to end: a node, jobctl sessions, /metrics, a clean stop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

SECTIONS = ["# 1. a node: gojob serve", "# 2. schedule:", "# 3. wait for the first two", "# 4. the retried instance",
            "# 5. metrics:", "# 6. stop: SIGTERM"]


def test_demo_runs_and_shows_each_section() -> None:
    # jobctl and gojob are found next to the interpreter, not on PATH
    env = {k: v for k, v in os.environ.items() if k not in ("GOJOB_TARGET", "GOJOB_TOKEN", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in ("/usr/bin", "/bin") if os.path.isdir(p))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gojob_grpc.demo"], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=os.path.dirname(__file__))
    elapsed = time.monotonic() - t0
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    positions = [out.find(title) for title in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), (positions, out)

    ready = re.search(r"gojob serve: node \S+ ready: grpc 127\.0\.0\.1:\d+, metrics http://127\.0\.0\.1:\d+/metrics, "
                      r"store memory, (\d+) jobs", out)
    assert ready, out
    registered = int(ready[1])  # the 4 example jobs, and those of other installed plugins (system jobs)
    assert registered >= 4
    for command in ("$ jobctl jobs", """$ jobctl schedule sum '"40"' '"2"'""",
                    "$ jobctl schedule flaky world --max-retries 2", "$ jobctl schedule report --cron '* * * * *'",
                    "$ jobctl schedule slow 5 --after 1h", "$ jobctl cancel ", "$ jobctl wait ", "$ jobctl instances",
                    "$ jobctl history ", "$ jobctl logs ", "$ jobctl show "):
        assert command in out, command
    assert "result:    42" in out and 'result:    "hello, world"' in out and ": CANCELED" in out
    assert "attempts:  2 (max retries 2)" in out
    assert re.search(r"TERMINATED\s+1\s+\S+\s+ConnectionError: upstream not ready yet", out)  # history
    assert re.search(r"INFO\s+1\s+\S+\s+attempt 1: calling upstream", out)  # the log of both attempts
    assert re.search(r"INFO\s+2\s+\S+\s+attempt 2: calling upstream", out)
    # the cron instance: waiting for the next minute, unless that minute began while the demo ran
    shown = out[out.index("$ jobctl show "):]
    shown = shown[:min(i for i in (shown.find("\n$ ", 1), shown.find("\n# ", 1), len(shown)) if i > 0)]
    assert "crontab:   * * * * * (local time)" in shown, shown
    state = re.search(r"state:\s+(\w+)", shown)
    assert state and state[1] in ("SCHEDULED", "PROCESSING", "COMPLETED"), shown
    metrics = [line for line in out.splitlines() if line.startswith("go_job_")]
    for sample in ('go_job_completed_total{kind="sum"} 1.0', 'go_job_retried_total{kind="flaky"} 1.0',
                   'go_job_executed_total{kind="flaky"} 2.0', 'go_job_canceled_total{kind="slow"} 1.0',
                   "go_job_workers 4.0", f"go_job_registered {registered}.0"):
        assert sample in metrics, (sample, metrics)
    assert not any("_bucket" in line or line.endswith(" 0.0") for line in metrics)
    assert "node exited with status 0" in out and "demo failed" not in out
    assert elapsed < 60, elapsed  # about 4 s on an idle machine

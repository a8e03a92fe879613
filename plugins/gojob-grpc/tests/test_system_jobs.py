"""``gojob serve --system-jobs``: both cleaners scheduled with gojob-system-jobs' defaults, never doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gojob_core.testing.servers import Server
from gojob_system_jobs import DEFAULT_CRONTAB, DEFAULT_MAX_AGE, DEFAULT_PRIORITY, HISTORY_CLEANER, LOG_CLEANER
from grpc_nodes import OK, USAGE, Node, NodeFactory, child_env
from test_cluster import store_url


def cleaners(node: Node, kind: str) -> list[dict[str, Any]]:
    proc = node.jobctl("instances", "--kind", kind, "--json")
    assert proc.returncode == OK, proc.stderr
    return list(json.loads(proc.stdout))


def test_system_jobs_scheduled_with_the_documented_defaults(nodes: NodeFactory) -> None:
    node = nodes("--system-jobs")
    for kind in (HISTORY_CLEANER, LOG_CLEANER):
        [inst] = cleaners(node, kind)
        assert (inst["state"], inst["crontab_spec"], inst["priority"]) == ("SCHEDULED", DEFAULT_CRONTAB,
                                                                          DEFAULT_PRIORITY)
        assert inst["schedule_id"] and inst["timezone"] == "UTC"  # recurring; UTC so nodes in any zone agree
        assert inst["kwargs"] == {"max_age": 7 * 86400.0} and DEFAULT_MAX_AGE == "7d"  # coerced; sent as seconds
    assert f"system job {HISTORY_CLEANER} scheduled: {DEFAULT_CRONTAB}, max_age 7d" in node.output()


def test_system_jobs_overrides(nodes: NodeFactory) -> None:
    node = nodes("--system-jobs", "--system-jobs-max-age", "30d", "--system-jobs-cron", "0 4 * * 0")
    for kind in (HISTORY_CLEANER, LOG_CLEANER):
        [inst] = cleaners(node, kind)
        assert (inst["state"], inst["crontab_spec"], inst["kwargs"]) == ("SCHEDULED", "0 4 * * 0",
                                                                        {"max_age": 30 * 86400.0})


def test_without_the_flag_nothing_is_scheduled(node: Node) -> None:
    assert cleaners(node, HISTORY_CLEANER) == [] and cleaners(node, LOG_CLEANER) == []


def test_two_nodes_on_one_store_do_not_double_the_schedule(valkey_server: Server, nodes: NodeFactory) -> None:
    store = store_url(valkey_server)
    with ThreadPoolExecutor(2) as pool:  # both start (and schedule) at the same time
        a, b = pool.map(lambda name: nodes("--system-jobs", store=store, name=name), ["node-a", "node-b"])
    for kind in (HISTORY_CLEANER, LOG_CLEANER):
        seen_a, seen_b = cleaners(a, kind), cleaners(b, kind)
        assert seen_a == seen_b and len(seen_a) == 1, seen_a
        assert (seen_a[0]["state"], seen_a[0]["crontab_spec"]) == ("SCHEDULED", DEFAULT_CRONTAB)
    # a restart finds the schedule in place too
    assert b.stop() == 0
    again = nodes("--system-jobs", store=store, name="node-b")
    assert len(cleaners(again, HISTORY_CLEANER)) == len(cleaners(again, LOG_CLEANER)) == 1


def serve(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``gojob serve ARGS`` in-process after ``prelude`` (for the usage errors: it exits before serving)."""
    code = f"import sys\n{prelude}\nfrom gojob_grpc.cli import serve_main\nsys.exit(serve_main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "serve", "--jobs", "sample_jobs", "--listen", "127.0.0.1:0",
                           *args], capture_output=True, text=True, env=child_env(), timeout=60,
                          stdin=subprocess.DEVNULL)


def test_system_jobs_not_installed_exit_2() -> None:
    proc = serve("--system-jobs", prelude="sys.modules['gojob_system_jobs'] = None  # as if not installed")
    assert proc.returncode == USAGE, proc.stderr
    assert "--system-jobs needs the gojob-system-jobs distribution" in proc.stderr
    assert "pip install gojob-system-jobs" in proc.stderr and "Traceback" not in proc.stderr


def test_system_jobs_usage_errors_exit_2() -> None:
    bad_cron = serve("--system-jobs", "--system-jobs-cron", "61 * * * *")
    assert bad_cron.returncode == USAGE and "--system-jobs-cron '61 * * * *'" in bad_cron.stderr, bad_cron.stderr
    assert "invalid crontab_spec" in bad_cron.stderr
    bad_age = serve("--system-jobs", "--system-jobs-max-age=-3d")
    assert bad_age.returncode == USAGE and "--system-jobs-max-age '-3d'" in bad_age.stderr, bad_age.stderr
    alone = serve("--system-jobs-cron", "0 4 * * *")
    assert alone.returncode == USAGE and "applies with --system-jobs only" in alone.stderr
    for proc in (bad_cron, bad_age, alone):
        assert "Traceback" not in proc.stderr

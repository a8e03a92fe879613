"""``jobctl`` as a subprocess against a real ``gojob serve`` node: every command, --json, exit codes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import urllib.request
from typing import Any

import anyio
from gojob_core import State
from grpc_nodes import FAILURE, JOBCTL, NOT_FOUND, OK, UNAVAILABLE, USAGE, Node, child_env, jobctl


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == OK, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(proc))


def read_line(stream: Any, timeout: float) -> str:
    """One line from a subprocess pipe, failing the test after ``timeout`` seconds instead of hanging."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        assert sel.select(timeout), f"no output within {timeout}s"
    return str(stream.readline())


def wait_state(node: Node, uuid: str, state: State, timeout: float = 10) -> None:
    async def poll(c: Any) -> None:
        deadline = time.monotonic() + timeout
        while (await c.lookup_instance(uuid)).state is not state:
            assert time.monotonic() < deadline, f"{uuid} never reached {state}"
            await anyio.sleep(0.02)

    node.call(poll)


def test_health_and_jobs(node: Node) -> None:
    assert "SERVING" in ok(node.jobctl("health"))
    health = as_json(node.jobctl("health", "--json"))
    assert health["node_id"] == "main" and health["store"] == "memory" and health["status"] == "SERVING"
    table = ok(node.jobctl("jobs"))
    assert table.splitlines()[0].split()[:3] == ["KIND", "SIGNATURE", "PRIORITY"]
    jobs = {j["kind"]: j for j in as_json(node.jobctl("jobs", "--json"))}
    assert set(jobs) >= {"sum", "fail", "sleep", "greet", "first_slow", "registered.by.function"}
    assert jobs["sum"]["signature"] == "(a: int, b: int) -> int"
    assert jobs["registered.by.function"]["description"] == "from register(manager)"  # register(manager) ran
    assert (jobs["greet"]["priority"], jobs["greet"]["max_retries"], jobs["greet"]["timeout"]) == (5, 1, 30.0)


def test_schedule_wait_show_history_logs(node: Node) -> None:
    uuid = ok(node.jobctl("schedule", "sum", "40", '"2"')).strip()  # "2" is a JSON string, coerced to int
    assert len(uuid) == 36
    assert "result:    42" in ok(node.jobctl("wait", uuid))
    shown = as_json(node.jobctl("show", uuid, "--json"))
    assert (shown["state"], shown["result"], shown["args"], shown["node"]) == ("COMPLETED", 42, [40, 2], "main")
    assert "COMPLETED" in ok(node.jobctl("show", uuid))
    history = as_json(node.jobctl("history", uuid, "--json"))
    assert [r["state"] for r in history] == ["CREATED", "SCHEDULED", "PROCESSING", "COMPLETED"]
    assert "PROCESSING" in ok(node.jobctl("history", uuid))

    nap = ok(node.jobctl("schedule", "sleep", "0.05")).strip()
    ok(node.jobctl("wait", nap))
    logs = as_json(node.jobctl("logs", nap, "--json"))
    assert [r["message"] for r in logs] == ["sleeping 0.05s", "woke up"]
    assert "woke up" in ok(node.jobctl("logs", nap))

    # keyword arguments; a bare word is a string, a JSON date string is coerced to a date
    greeted = as_json(node.jobctl("schedule", "greet", "--kw", "name=world", "--kw", 'greeting="hi"',
                                  "--kw", "when=2026-01-02", "--json"))
    assert greeted["kwargs"] == {"name": "world", "greeting": "hi", "when": "2026-01-02"}
    assert as_json(node.jobctl("wait", greeted["uuid"], "--json"))["result"] == "hi, world on 2026-01-02"


def test_schedule_options(node: Node) -> None:
    at = (dt.datetime.now() + dt.timedelta(hours=2)).replace(microsecond=0)
    inst = as_json(node.jobctl("schedule", "sum", "1", "2", "--at", at.isoformat(), "--priority", "7",
                               "--max-retries", "2", "--timeout", "1m", "--json"))
    assert inst["state"] == "SCHEDULED"
    assert dt.datetime.fromisoformat(inst["ready_at"]).timestamp() == at.timestamp()
    assert (inst["priority"], inst["max_retries"], inst["timeout"]) == (7, 2, 60.0)

    later = as_json(node.jobctl("schedule", "sum", "1", "2", "--after", "1h30m", "--json"))
    ready = dt.datetime.fromisoformat(later["ready_at"]).timestamp()
    assert abs(ready - (time.time() + 5400)) < 60

    # a spec that cannot fire while the test runs (February 29th): the occurrence is still waiting when
    # it is canceled below (a */5 spec fired, and ran, when the test crossed a five-minute boundary)
    cron = as_json(node.jobctl("schedule", "sum", "3", "4", "--cron", "0 12 29 2 *", "--tz", "UTC", "--json"))
    assert (cron["crontab_spec"], cron["timezone"], cron["state"]) == ("0 12 29 2 *", "UTC", "SCHEDULED")
    fire = dt.datetime.fromisoformat(cron["ready_at"]).astimezone(dt.UTC)
    assert (fire.month, fire.day, fire.hour, fire.minute) == (2, 29, 12, 0)

    for uuid in (inst["uuid"], later["uuid"], cron["uuid"]):
        assert ok(node.jobctl("cancel", uuid)).strip() == f"{uuid}: CANCELED"
    assert as_json(node.jobctl("show", cron["uuid"], "--json"))["state"] == "CANCELED"
    # that occurrence only: the schedule goes on, until it is removed
    [sched] = [s for s in as_json(node.jobctl("schedules", "--json")) if s["id"] == cron["schedule_id"]]
    assert sched["state"] == "active" and sched["next_fire_at"] > cron["ready_at"]
    ok(node.jobctl("schedule", "remove", cron["schedule_id"]))


def test_schedule_commands(node: Node) -> None:
    added = as_json(node.jobctl("schedule", "add", "sum", "1", "2", "--every", "1h", "--id", "hourly-sum",
                                "--max-runs", "3", "--misfire-grace", "5m", "--coalesce", "all", "--json"))
    assert (added["id"], added["kind"], added["state"], added["args"], added["runs"]) == (
        "hourly-sum", "sum", "active", [1, 2], 1)
    assert (added["max_runs"], added["misfire_grace_time"], added["coalesce"]) == (3, 300.0, "all")
    assert added["trigger"]["type"] == "interval" and added["trigger"]["every"] == 3600.0
    table = ok(node.jobctl("schedules"))
    assert table.splitlines()[0].split() == ["ID", "KIND", "STATE", "TRIGGER", "NEXT", "FIRE", "RUNS"]
    assert any(line.startswith("hourly-sum") and "1/3" in line for line in table.splitlines())
    assert "paused" in ok(node.jobctl("schedule", "pause", "hourly-sum"))
    resumed = as_json(node.jobctl("schedule", "resume", "hourly-sum", "--json"))
    assert resumed["state"] == "active" and resumed["next_fire_at"] is not None
    updated = as_json(node.jobctl("schedule", "update", "hourly-sum", "--cron", "0 3 * * *", "--tz", "UTC", "--json"))
    assert updated["trigger"]["spec"] == "0 3 * * *" and updated["description"] == "cron '0 3 * * *' UTC"
    assert dt.datetime.fromisoformat(updated["next_fire_at"]).hour == 3
    ok(node.jobctl("schedule", "remove", "hourly-sum"))
    assert "hourly-sum" not in ok(node.jobctl("schedules"))
    gone = node.jobctl("schedule", "pause", "hourly-sum")
    assert gone.returncode == NOT_FOUND and "no schedule with id 'hourly-sum'" in gone.stderr
    bad = node.jobctl("schedule", "add", "sum", "1", "2", "--cron", "61 * * * *")
    assert bad.returncode == USAGE and "job 'sum': invalid crontab_spec '61 * * * *'" in bad.stderr
    bad = node.jobctl("schedule", "add", "sum", "1", "2", "--every", "1h", "--misfire-grace", "-5")
    assert bad.returncode == USAGE
    assert node.jobctl("schedule", "add", "sum", "1", "2").returncode == USAGE  # no trigger


def test_instances_filters(node: Node) -> None:
    done = [ok(node.jobctl("schedule", "sum", str(i), "1")).strip() for i in range(2)]
    for uuid in done:
        ok(node.jobctl("wait", uuid))
    listed = as_json(node.jobctl("instances", "--kind", "sum", "--state", "completed,terminated", "--since", "10m",
                                 "--until", "now", "--json"))
    uuids = [i["uuid"] for i in listed]
    assert set(done) <= set(uuids) and all(i["kind"] == "sum" and i["state"] == "COMPLETED" for i in listed)
    newest = as_json(node.jobctl("instances", "--kind", "sum", "--state", "COMPLETED", "--limit", "1", "--json"))
    assert [i["uuid"] for i in newest] == [uuids[-1]]
    table = ok(node.jobctl("instances", "--kind", "sum"))
    header = ["UUID", "KIND", "STATE", "ATTEMPTS", "PRIORITY", "CREATED", "READY", "NODE"]
    assert table.splitlines()[0].split() == header
    assert all(u in table for u in done)


def test_wait_exit_codes(node: Node) -> None:
    failing = ok(node.jobctl("schedule", "fail", "boom")).strip()
    waited = node.jobctl("wait", failing)
    assert waited.returncode == FAILURE and "TERMINATED" in waited.stdout and "RuntimeError: boom" in waited.stdout
    delayed = ok(node.jobctl("schedule", "sum", "1", "2", "--after", "1h")).strip()
    timed = node.jobctl("wait", delayed, "--timeout", "0.2")
    assert timed.returncode == FAILURE and "DEADLINE_EXCEEDED" in timed.stderr and "SCHEDULED" in timed.stderr
    ok(node.jobctl("cancel", delayed))


def test_cancel_running_and_finished(node: Node) -> None:
    uuid = ok(node.jobctl("schedule", "sleep", "30")).strip()
    wait_state(node, uuid, State.PROCESSING)
    # the node confirms the stop before the cancel returns: what it prints is final
    assert ok(node.jobctl("cancel", uuid)).strip() == f"{uuid}: CANCELED"
    waited = node.jobctl("wait", uuid, "--json")
    assert waited.returncode == FAILURE and json.loads(waited.stdout)["state"] == "CANCELED"
    finished = node.jobctl("cancel", uuid)  # already final: nothing to cancel
    assert finished.returncode == OK  # it is CANCELED, which is what was asked
    done = ok(node.jobctl("schedule", "sum", "1", "1")).strip()
    ok(node.jobctl("wait", done))
    late = node.jobctl("cancel", done)
    assert late.returncode == FAILURE and "already COMPLETED" in late.stderr


def test_workers(node: Node) -> None:
    assert ok(node.jobctl("workers")).strip() == "node main: 4 workers, 0 running"
    assert as_json(node.jobctl("workers", "6", "--json")) == {"num_workers": 6, "running": 0, "node_id": "main"}
    negative = node.jobctl("workers", "-1")
    assert negative.returncode == USAGE and "num_workers" in negative.stderr and "INVALID_ARGUMENT" in negative.stderr
    assert node.jobctl("workers", "100000").returncode == USAGE
    assert as_json(node.jobctl("workers", "4", "--json"))["num_workers"] == 4


def test_version_needs_no_node() -> None:
    from importlib.metadata import version

    # no node at the target and no command: --version answers alone, before anything connects
    for argv in (["--version"], ["--target", "127.0.0.1:1", "--version"]):
        proc = jobctl(*argv)
        assert proc.returncode == OK, (argv, proc.stderr)
        assert proc.stdout.strip() == f"jobctl: gojob-grpc {version('gojob-grpc')}, gojob-core {version('gojob-core')}"
        assert proc.stderr == ""


def test_usage_errors_exit_2(node: Node) -> None:
    assert jobctl().returncode == USAGE  # no command
    for args in (["schedule"], ["frobnicate"], ["instances", "--state", "sleepy"], ["schedule", "sum", "--at", "soon"],
                 ["schedule", "sum", "--after", "a while"], ["schedule", "sum", "1", "--kw", "a=1"],
                 ["schedule", "sum", "--kw", "novalue"], ["schedule", "sum", "--tz", "UTC"],
                 ["schedule", "sum", "--after", "1", "--at", "now"], ["workers", "many"]):
        proc = node.jobctl(*args)
        assert proc.returncode == USAGE, (args, proc.stdout, proc.stderr)
        assert proc.stderr


def test_bad_requests_named_by_the_node(node: Node) -> None:
    cases = {("sum", "1"): "arguments", ("sum", "x", "1"): "'a'",
             ("sum", "1", "2", "--cron", "61 * * * *"): "crontab_spec",
             ("sum", "1", "2", "--cron", "* * * * *", "--tz", "Mars/Olympus"): "timezone",
             ("sum", "1", "2", "--max-retries", "-1"): "max_retries"}
    for args, field in cases.items():
        proc = node.jobctl("schedule", *args)
        assert proc.returncode == USAGE, (args, proc.stderr)
        assert "INVALID_ARGUMENT" in proc.stderr and field in proc.stderr, (args, proc.stderr)
    assert "SERVING" in ok(node.jobctl("health"))


def test_not_found_exit_3(node: Node) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for args in (["show", missing], ["history", missing], ["logs", missing], ["cancel", missing], ["wait", missing]):
        proc = node.jobctl(*args)
        assert proc.returncode == NOT_FOUND, (args, proc.stderr)
        assert f"uuid: no job instance with uuid '{missing}'" in proc.stderr
    unknown = node.jobctl("schedule", "no.such.kind")
    assert unknown.returncode == NOT_FOUND and "kind: unknown job kind 'no.such.kind' (registered: " in unknown.stderr


def test_unavailable_exit_4_and_environment(node: Node) -> None:
    from gojob_core.testing.servers import free_port

    nobody = jobctl("health", target=f"127.0.0.1:{free_port()}")
    assert nobody.returncode == UNAVAILABLE and "UNAVAILABLE" in nobody.stderr
    # GOJOB_TARGET stands in for --target
    via_env = jobctl("workers", "--json", env=child_env(GOJOB_TARGET=node.target))
    assert json.loads(ok(via_env))["node_id"] == "main"
    # options go before or after the command name
    assert json.loads(ok(jobctl("--json", "--target", node.target, "health")))["node_id"] == "main"


def test_watch(node: Node) -> None:
    with subprocess.Popen([*JOBCTL, "--target", node.target, "watch", "--kind", "sum", "--count", "4", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()) as watcher:
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "watching state changes" in read_line(watcher.stderr, 30)  # subscribed: no later event is missed
        uuid = ok(node.jobctl("schedule", "sum", "2", "3")).strip()
        out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == OK
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["uuid"], e["state"]) for e in events] == [(uuid, s) for s in
                                                          ("CREATED", "SCHEDULED", "PROCESSING", "COMPLETED")]
    assert events[-1]["instance"]["result"] == 5 and events[-1]["node"] == "main"


def test_metrics_endpoint(node: Node) -> None:
    assert node.metrics_url is not None
    ok(node.jobctl("wait", ok(node.jobctl("schedule", "sum", "1", "2")).strip()))
    with urllib.request.urlopen(node.metrics_url, timeout=10) as r:
        text = r.read().decode()
    registered = as_json(node.jobctl("health", "--json"))["registered_jobs"]  # other plugins may add jobs
    assert f"go_job_registered {registered:.1f}" in text
    assert "go_job_workers 4.0" in text
    assert 'go_job_completed_total{kind="sum"}' in text
    assert 'go_job_duration_seconds_count{kind="sum"}' in text

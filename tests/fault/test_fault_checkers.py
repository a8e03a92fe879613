"""The fault suite's checkers, tested on their own: a deliberate double run, a lost instance, a start after
cancel returned, a re-run before its node died, a stale attempt's result... each must be counted and
reported (a checker that sees nothing would let every scenario pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_support import (
    REPORT_ENV,
    CancelCall,
    Death,
    Event,
    Verdict,
    check_cancels,
    check_fires,
    check_runs,
    read_events,
)
from gojob_core import Instance, State


def ev(e: str, uuid: str, t: float, *, attempt: int = 1, node: str = "a", inc: int = 100,
       fire: float | None = None) -> Event:
    return Event(e, uuid, attempt, node, inc, t, fire)


def run(uuid: str, t: float, end: float, **kw: object) -> list[Event]:
    """A run that started at ``t`` and returned at ``end``."""
    return [ev("s", uuid, t, **kw), ev("f", uuid, end, **kw)]  # type: ignore[arg-type]


def done(uuid: str, attempts: int = 1, *, state: State = State.COMPLETED, result_attempt: int | None = None,
         ready: float = 0.0) -> Instance:
    a = attempts if result_attempt is None else result_attempt
    return Instance(uuid=uuid, kind="work", state=state, attempts=attempts, result={"a": a, "n": "a"},
                    ready_ts=ready)


def verdict() -> Verdict:
    return Verdict("checker test", "none")


@pytest.fixture(autouse=True)
def no_report_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deliberate failures here must not land in a real run's results file."""
    monkeypatch.delenv(REPORT_ENV, raising=False)


# -- check_runs ----------------------------------------------------------------------------------------------
def test_a_clean_run_has_no_failures() -> None:
    v = verdict()
    check_runs(v, ["u1", "u2"], run("u1", 1, 2) + run("u2", 1, 2, node="b", inc=200), [],
               finals={"u1": done("u1"), "u2": done("u2")})
    assert v.failures() == [] and v.instances == 2
    assert (v.lost, v.duplicated, v.unexpected, v.reruns) == ([], [], [], 0)


def test_a_deliberate_double_run_is_counted_and_reported() -> None:
    v = verdict()
    events = run("u1", 1, 2) + run("u1", 3, 4, attempt=2, node="b", inc=200)  # no node died
    check_runs(v, ["u1"], events, [], finals={"u1": done("u1", 2)})
    assert v.duplicated == ["u1"]
    assert len(v.unexpected) == 1 and "u1" in v.unexpected[0] and "did not die" in v.unexpected[0]
    row = v.row()
    assert (row["duplicated"], row["unexpected_reruns"], row["passed"]) == (1, 1, False)
    with pytest.raises(pytest.fail.Exception, match="unexpected re-run: u1"):
        v.report()


def test_two_runs_at_once_on_the_same_node_are_unexpected() -> None:
    """Issue 19's defect 1: attempt 2 started beside attempt 1, which was never stopped."""
    v = verdict()
    events = [ev("s", "u1", 1), ev("s", "u1", 2, attempt=2), ev("f", "u1", 3), ev("f", "u1", 4, attempt=2)]
    check_runs(v, ["u1"], events, [], finals={"u1": done("u1", 2)})
    assert len(v.unexpected) == 1 and v.duplicated == ["u1"]


def test_lost_instances_are_counted() -> None:
    v = verdict()
    events = [ev("s", "u2", 1)] + run("u3", 1, 2) + run("u4", 1, 2)
    finals = {"u1": done("u1", 0, state=State.SCHEDULED), "u2": done("u2", 1, state=State.PROCESSING),
              "u3": done("u3", 1, state=State.TERMINATED)}  # u4: not in the store at all
    check_runs(v, ["u1", "u2", "u3", "u4"], events, [], finals=finals)
    assert len(v.lost) == 4
    assert "never started" in v.lost[0] and "never returned" in v.lost[1]
    assert "TERMINATED" in v.lost[2] and "no such instance" in v.lost[3]
    assert v.row()["lost"] == 4 and not v.row()["passed"]


def test_a_rerun_after_its_node_died_is_explained_with_its_delay() -> None:
    v = verdict()
    events = [ev("s", "u1", 1.0)] + run("u1", 5.5, 6.0, attempt=2, node="b", inc=200)
    check_runs(v, ["u1"], events, [Death("a", 100, 2.0)], finals={"u1": done("u1", 2)})
    assert v.failures() == [] and v.reruns == 1 and v.recovery == [pytest.approx(3.5)]


def test_a_rerun_that_started_before_the_kill_is_unexpected() -> None:
    v = verdict()
    events = [ev("s", "u1", 1.0)] + run("u1", 1.5, 1.8, attempt=2, node="b", inc=200)
    check_runs(v, ["u1"], events, [Death("a", 100, 2.0)], finals={"u1": done("u1", 2)})
    assert len(v.unexpected) == 1 and v.reruns == 0


def test_the_death_of_another_incarnation_of_the_node_explains_nothing() -> None:
    """The node was restarted under the same id: the new process did not die."""
    v = verdict()
    events = [ev("s", "u1", 3.0, inc=101)] + run("u1", 6.0, 6.5, attempt=2, node="b", inc=200)
    check_runs(v, ["u1"], events, [Death("a", 100, 2.0)], finals={"u1": done("u1", 2)})
    assert len(v.unexpected) == 1


def test_an_abandoned_attempt_explains_a_rerun_only_if_it_had_ended() -> None:
    ended = run("u1", 1, 2) + run("u1", 5, 6, attempt=2, node="b", inc=200)
    v = verdict()
    check_runs(v, ["u1"], ended, [], finals={"u1": done("u1", 2)}, abandoned={("u1", 1)})
    assert v.failures() == [] and v.reruns == 1
    stale = [ev("s", "u1", 1), ev("s", "u1", 5, attempt=2, node="b", inc=200), ev("f", "u1", 6),
             ev("f", "u1", 7, attempt=2, node="b", inc=200)]
    v = verdict()
    check_runs(v, ["u1"], stale, [], finals={"u1": done("u1", 2)}, abandoned={("u1", 1)})
    assert len(v.unexpected) == 1


def test_a_stale_attempts_result_is_reported() -> None:
    v = verdict()
    check_runs(v, ["u1"], run("u1", 1, 2), [], finals={"u1": done("u1", 2, result_attempt=1)})
    assert len(v.problems) == 1 and "stale attempt" in v.problems[0]


def test_more_starts_than_allowed_are_reported() -> None:
    v = verdict()
    events = [ev("s", "u1", 1), ev("s", "u1", 3, attempt=2, node="b", inc=200)] + \
        run("u1", 6, 7, attempt=3, node="c", inc=300)
    deaths = [Death("a", 100, 2), Death("b", 200, 4)]
    check_runs(v, ["u1"], events, deaths, finals={"u1": done("u1", 3)}, max_runs=2)
    assert v.unexpected == [] and v.reruns == 2
    assert len(v.problems) == 1 and "started 3 times" in v.problems[0]


def test_runs_of_instances_nobody_scheduled_are_reported() -> None:
    v = verdict()
    check_runs(v, ["u1"], run("u1", 1, 2) + run("zz", 1, 2), [], finals={"u1": done("u1")})
    assert len(v.problems) == 1 and "did not schedule" in v.problems[0]


# -- check_cancels ---------------------------------------------------------------------------------------------
def _cancel(uuid: str, state: State, *, called: float = 10.0, returned: float = 10.01,
            requested: bool = False) -> CancelCall:
    return CancelCall(uuid, called, returned, state, requested)


def test_a_start_after_cancel_returned_canceled_is_reported() -> None:
    v = verdict()
    events = [ev("s", "u1", 10.015), ev("x", "u1", 10.02)]
    check_cancels(v, [_cancel("u1", State.CANCELED)], events, {"u1": done("u1", state=State.CANCELED)})
    assert len(v.problems) == 1 and "started 5.0 ms after cancel_instance returned CANCELED" in v.problems[0]
    with pytest.raises(pytest.fail.Exception, match="started 5.0 ms after"):
        v.report()


def test_a_start_after_an_unconfirmed_processing_return_is_noted_not_failed() -> None:
    """The Manager waited its whole ``wait`` and could not confirm: it said so, and the start may come."""
    v = verdict()
    events = [ev("s", "u1", 15.015), ev("x", "u1", 15.02)]
    call = CancelCall("u1", 10.0, 15.01, State.PROCESSING, True, wait=5.0)
    check_cancels(v, [call], events, {"u1": done("u1", state=State.CANCELED)})
    assert v.failures() == [] and any("unconfirmed" in n for n in v.notes)


def test_processing_returned_before_the_wait_ran_out_is_the_cancel_race() -> None:
    """Issue 19's defect 2: PROCESSING at once for a claimed instance, which then starts 5 ms later."""
    v = verdict()
    events = [ev("s", "u1", 10.015), ev("x", "u1", 10.02)]
    call = CancelCall("u1", 10.0, 10.01, State.PROCESSING, True, wait=5.0)
    check_cancels(v, [call], events, {"u1": done("u1", state=State.CANCELED)})
    assert len(v.problems) == 1
    assert "before its wait of 5.0 s ran out; the executor then started 5.0 ms later" in v.problems[0]


def test_processing_without_cancel_requested_is_reported() -> None:
    v = verdict()
    check_cancels(v, [_cancel("u1", State.PROCESSING)], [], {"u1": done("u1", state=State.CANCELED)})
    assert len(v.problems) == 1 and "without cancel_requested" in v.problems[0]


def test_canceled_returned_while_the_executor_still_ran_is_reported_and_latency_kept() -> None:
    v = verdict()
    events = [ev("s", "u1", 9.0), ev("x", "u1", 10.5)]
    check_cancels(v, [_cancel("u1", State.CANCELED)], events, {"u1": done("u1", state=State.CANCELED)})
    assert len(v.problems) == 1 and "still ran" in v.problems[0]
    assert v.recovery == [pytest.approx(0.5)]


def test_a_stop_within_the_call_is_clean_and_its_latency_recorded() -> None:
    v = verdict()
    events = [ev("s", "u1", 9.0), ev("x", "u1", 10.004)]
    check_cancels(v, [_cancel("u1", State.CANCELED)], events, {"u1": done("u1", state=State.CANCELED)})
    assert v.failures() == [] and v.recovery == [pytest.approx(0.004)]


def test_a_store_that_disagrees_with_the_cancel_is_reported() -> None:
    v = verdict()
    calls = [_cancel("u1", State.CANCELED), _cancel("u2", State.PROCESSING, requested=True)]
    finals = {"u1": done("u1"), "u2": done("u2", state=State.TERMINATED)}
    check_cancels(v, calls, [], finals)
    assert len(v.problems) == 2


def test_an_executor_running_at_the_cancel_that_never_stopped_is_reported() -> None:
    v = verdict()
    check_cancels(v, [_cancel("u1", State.PROCESSING, requested=True)], [ev("s", "u1", 9.0)],
                  {"u1": done("u1", state=State.CANCELED)})
    assert len(v.problems) == 1 and "never stopped" in v.problems[0]


# -- check_fires -------------------------------------------------------------------------------------------------
def test_one_fire_time_enqueued_twice_is_reported() -> None:
    v = verdict()
    events = run("o1", 100.0, 100.4, fire=100.0) + run("o2", 100.1, 100.5, fire=100.0, node="b", inc=200)
    finals = {"o1": done("o1", ready=100.0), "o2": done("o2", ready=100.0)}
    check_fires(v, events, [], finals, canceled_at=110.0)
    assert any("ran as 2 occurrences" in p for p in v.problems)


def test_a_skipped_fire_and_a_fire_run_twice_are_reported() -> None:
    v = verdict()
    events = run("o1", 100.0, 100.4, fire=100.0) + run("o1", 101.0, 101.4, fire=100.0, node="b", inc=200)
    finals = {"o1": done("o1", 2, ready=100.0), "o2": done("o2", 0, state=State.CANCELED, ready=101.0)}
    check_fires(v, events, [], finals, canceled_at=110.0)
    assert len(v.unexpected) == 1 and len(v.lost) == 1 and "never run" in v.lost[0]


def test_a_fire_killed_mid_run_and_run_again_is_clean() -> None:
    v = verdict()
    events = [ev("s", "o1", 100.0, fire=100.0)] + run("o1", 103.5, 103.9, attempt=2, fire=100.0, node="b",
                                                      inc=200)
    finals = {"o1": done("o1", 2, ready=100.0), "o9": done("o9", 0, state=State.CANCELED, ready=110.0)}
    check_fires(v, events, [Death("a", 100, 100.2)], finals, canceled_at=110.0)
    assert v.failures() == [] and v.reruns == 1


# -- records and report --------------------------------------------------------------------------------------------
def test_events_are_read_in_time_order_and_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    line = {"e": "s", "u": "u1", "a": 1, "n": "a", "p": 1, "t": 2.0}
    (tmp_path / "a.events").write_text(json.dumps(line) + "\n" + '{"e": "f", "u": "u1", "a"')
    (tmp_path / "b.events").write_text(json.dumps({**line, "n": "b", "t": 1.0, "r": 5.0}) + "\n")
    got = read_events(tmp_path)
    assert [(e.node, e.t, e.fire) for e in got] == [("b", 1.0, 5.0), ("a", 2.0, None)]


def test_the_report_row_goes_to_the_file_named_by_the_env_var(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.jsonl"
    monkeypatch.setenv(REPORT_ENV, str(target))
    good = Verdict("ok scenario", "memory", instances=3, faults=1, fault_kind="kills", recovery=[1.0, 2.0, 4.0])
    good.report()
    bad = Verdict("bad scenario", "etcd", instances=2)
    bad.lost.append("u1: its executor never started")
    with pytest.raises(pytest.fail.Exception):
        bad.report()
    rows = [json.loads(x) for x in target.read_text().splitlines()]
    assert [(r["scenario"], r["passed"], r["lost"]) for r in rows] == [("ok scenario", True, 0),
                                                                      ("bad scenario", False, 1)]
    assert (rows[0]["recovery_p50_s"], rows[0]["recovery_max_s"], rows[0]["faults"]) == (2.0, 4.0, "1 kills")

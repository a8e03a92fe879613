"""A one-second tour of gojob: ``python -m gojob_core.demo`` (or the ``gojob-demo`` command).

It runs one Manager on the in-memory store (no server needed) and shows, one section at a time:

a. a job with type-coerced arguments ("40", "2" -> 42) and a complete processor that logs the result;
b. a job that fails on its first attempt and succeeds on its retry;
c. a recurring (cron) job: its next occurrence, then a cancel;
d. priorities: five instances queued while the pool is empty, run by one worker in priority order;
e. an async job that runs past its timeout (TIMED_OUT);
f. a running sync job canceled, which stops early by watching its Context;

and for each instance its final state, result or error, state history and log lines; at the end, the
Prometheus metrics the Manager kept. Read it top to bottom: it is written as an example of the API.
"""

from __future__ import annotations

import datetime as dt
import time

import anyio

import gojob_core as gojob

__all__ = ["main"]


# -- printing helpers ---------------------------------------------------------------------------------
def _clock(when: dt.datetime | None) -> str:
    return "-" if when is None else when.astimezone().strftime("%H:%M:%S.%f")[:-3]


def section(title: str) -> None:
    print()
    print(title)
    print("=" * len(title))


async def show(mgr: gojob.Manager, inst: gojob.Instance) -> None:
    """Print an instance as the store has it now: state, outcome, history and log."""
    inst = await mgr.lookup_instance(inst)
    print(f"instance {inst.uuid}  kind={inst.kind!r}  state={inst.state}  attempts={inst.attempts}")
    if inst.error is not None:
        print(f"  error : {inst.error}")
    elif inst.state is gojob.State.COMPLETED:
        print(f"  result: {inst.result!r}")
    print("  history:")
    print(f"    {'time':<12}  {'state':<10}  {'attempt':>7}  detail")
    for rec in await mgr.lookup_instance_history(gojob.Query(instance=inst)):
        print(f"    {_clock(rec.timestamp):<12}  {rec.state.value:<10}  {rec.attempt:>7}  {rec.detail or ''}".rstrip())
    logs = await mgr.lookup_instance_logs(gojob.Query(instance=inst))
    print("  log:" if logs else "  log: (empty)")
    for line in logs:
        print(f"    {_clock(line.timestamp):<12}  {line.level.value:<5}  attempt {line.attempt}: {line.message}")


# -- a. arguments are coerced to the executor's type hints ---------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


sum_job = gojob.Job(
    kind="sum",
    executor=add,
    complete_processor=lambda inst, results: inst.infof("sum = %d", results[0]),
)


async def demo_arguments(mgr: gojob.Manager) -> None:
    section('a. arguments: "40" + "2", coerced to int by the type hints')
    inst = await mgr.schedule_job(sum_job, arguments=("40", "2"))
    await mgr.wait(inst, timeout=2)
    await show(mgr, inst)
    # Bad input fails at the call, naming the job, the parameter and the value; nothing is written.
    try:
        await mgr.schedule_job(sum_job, arguments=("forty", "2"))
    except gojob.ArgumentError as exc:
        print(f"  bad input is refused at once: {exc}")


# -- b. retries: fail once, then succeed ------------------------------------------------------------------
def flaky(inst: gojob.Instance, name: str) -> str:
    # ``inst`` is injected (it is not one of the arguments); attempts is 1 on the first run.
    inst.infof("calling upstream for %s", name)
    if inst.attempts == 1:
        raise ConnectionError("upstream not ready yet")
    return f"hello, {name}"


flaky_job = gojob.Job(
    kind="flaky",
    executor=flaky,
    max_retries=2,                              # up to 2 retries after the first attempt
    backoff_strategy=lambda inst: 0.2,          # seconds before the next attempt
)


async def demo_retry(mgr: gojob.Manager) -> None:
    section("b. retries: the first attempt fails, the retry succeeds")
    inst = await mgr.schedule_job(flaky_job, arguments=("world",))
    await mgr.wait(inst, timeout=3)
    await show(mgr, inst)


# -- c. a recurring job: next occurrence, then cancel ---------------------------------------------------------
def tick() -> None:
    print("  tick")


async def demo_cron(mgr: gojob.Manager) -> None:
    section('c. cron: "* * * * *" (every minute), then canceled')
    cron_job = gojob.Job(kind="tick", executor=tick)
    inst = await mgr.schedule_job(cron_job, crontab_spec="* * * * *", timezone="UTC")
    print(f"  scheduled: state={inst.state}, next occurrence at {inst.ready_at:%Y-%m-%d %H:%M:%S %Z}")
    await mgr.cancel_instance(inst)             # cancels the schedule: no further occurrence
    await show(mgr, inst)


# -- d. priorities: lower runs first, like nice values ----------------------------------------------------
async def demo_priority(mgr: gojob.Manager) -> None:
    section("d. priorities: five instances queued on an empty pool, then one worker")
    order: list[str] = []

    def task(name: str) -> None:
        order.append(name)

    job = gojob.Job(kind="task", executor=task)
    await mgr.resize_workers(0)                 # nobody claims work while we queue it
    for name, priority in [("backup", 200), ("report", 50), ("urgent", 0), ("cleanup", 100), ("email", 10)]:
        await mgr.schedule_job(job, arguments=(name,), priority=priority)
        print(f"  queued {name:<8} priority={priority}")
    await mgr.resize_workers(1)
    for inst in await mgr.lookup_instances(gojob.Query(kind="task")):
        await mgr.wait(inst, timeout=2)
    print(f"  ran in this order: {', '.join(order)}")
    await mgr.resize_workers(4)


# -- e. a timeout: async executors are canceled for real -----------------------------------------------
async def slow(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "finished"                           # never reached: the timeout cancels the sleep


slow_job = gojob.Job(kind="slow", executor=slow, timeout=0.3)


async def demo_timeout(mgr: gojob.Manager) -> None:
    section("e. timeout: an async job sleeping 10 s with a 0.3 s timeout")
    inst = await mgr.schedule_job(slow_job, arguments=(10,))
    await mgr.wait(inst, timeout=2)
    await show(mgr, inst)


# -- f. cancel a running job --------------------------------------------------------------------------------
def crunch(ctx: gojob.Context, inst: gojob.Instance, steps: int) -> int:
    # A sync executor runs in a thread that Python cannot interrupt: it watches its Context.
    done = 0
    for _ in range(steps):
        if ctx.sleep(0.1):                      # True as soon as the instance is canceled or times out
            inst.warnf("stopping early: %s after %d steps", ctx.reason, done)
            return done
        done += 1
        inst.infof("step %d of %d", done, steps)
    return done


async def demo_cancel(mgr: gojob.Manager) -> None:
    section("f. cancel: a running sync job, canceled after about 0.35 s")
    running = anyio.Event()
    job = gojob.Job(
        kind="crunch",
        executor=crunch,
        # processors run on the event loop, so they may touch anyio objects
        state_change_processor=lambda inst, state: running.set() if state is gojob.State.PROCESSING else None,
    )
    inst = await mgr.schedule_job(job, arguments={"steps": 50})   # a dict gives keyword arguments
    await running.wait()
    await anyio.sleep(0.35)
    await mgr.cancel_instance(inst)
    await mgr.wait(inst, timeout=2)
    # The instance is CANCELED at once; the thread notices within its ctx.sleep() and logs a last line.
    await anyio.sleep(0.15)
    await show(mgr, inst)


# -- the tour --------------------------------------------------------------------------------------------
async def tour() -> None:
    started = time.monotonic()
    async with gojob.Manager(store="memory://", num_workers=4) as mgr:
        print(f"gojob {gojob.__version__}: {mgr!r}")
        await demo_arguments(mgr)
        await demo_retry(mgr)
        await demo_cron(mgr)
        await demo_priority(mgr)
        await demo_timeout(mgr)
        await demo_cancel(mgr)

        section("metrics (Prometheus text, without comments, histogram buckets and per-kind zeros)")
        for line in mgr.metrics.exposition().decode().splitlines():
            if not line.startswith("go_job_") or "_bucket{" in line or "_created" in line:
                continue
            if "{" in line and float(line.rsplit(" ", 1)[1]) == 0:
                continue
            print(f"  {line}")
    print(f"\ndone in {time.monotonic() - started:.1f} s")


def main() -> None:
    """Entry point of ``python -m gojob_core.demo`` and the ``gojob-demo`` command."""
    anyio.run(tour)


if __name__ == "__main__":
    main()

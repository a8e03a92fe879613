"""Running one attempt: the executor called under its cancel scope (timeout, cancel, lost lease), then
the outcome decided (completed, failed with or without a retry and its backoff, canceled) and written.

A mixin of :class:`~gojob_core.Manager`; ``_Running`` is the node's bookkeeping of one claimed instance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from ._arguments import encode_result, results_list
from ._context import Context
from ._instance import Instance
from ._job import Job
from ._scheduling import _Overrides
from ._state import State
from ._time import now, seconds
from ._worker import Worker
from .abc import Outcome
from .errors import JobTimeoutError, StoreError

__all__: list[str] = []  # internal: the Manager is the public face


#: a node stops an attempt itself once this share of the lease has passed since the claim or the last
#: renewal that reached the store (the store's own expiry comes later: the margin covers round trips and
#: the fence check's period)
_LEASE_MARGIN = 0.8

#: seconds a canceled sync executor's thread is given to return before the instance is recorded CANCELED
#: with a detail saying it may still be running
_CANCEL_GRACE = 1.0


class Attempts:
    """The Manager's attempts: run one claimed instance to its outcome and write it."""

    async def _run_instance(self, worker: Worker, inst: Instance) -> None:
        run = self._running.get(inst.uuid)
        if run is None or self._handed_back:  # stop() handed it back to the queue
            return
        inst._sink = self._log_sink
        job = self._jobs.get(inst.kind)
        if job is None:
            await self._finish(inst, None, Outcome(inst.uuid, State.TERMINATED,
                                                   error=f"UnknownJobError: job kind {inst.kind!r} is not "
                                                         f"registered on node {self.node_id}",
                                                   attempt=inst.attempts))
            return
        skip = await self._fire(inst) if inst.schedule_id is not None else None
        if (aw := self._state_changed(inst, State.PROCESSING, job)) is not None:
            await aw
        if skip is not None:  # a misfired occurrence: recorded, never run
            await self._finish(inst, job, Outcome(inst.uuid, State.CANCELED, detail=skip, attempt=inst.attempts))
            return
        sig = job._signature
        assert sig is not None
        ctx = Context(inst.timeout)
        run.ctx = ctx
        result: Any = None
        error: BaseException | None = None
        scope = anyio.CancelScope()
        if inst.timeout is not None:
            scope.deadline = anyio.current_time() + inst.timeout
        run.scope = scope
        try:
            args, kwargs = sig.prepare_call(inst.args, inst.kwargs, {"instance": inst, "manager": self,
                                                                    "worker": worker, "context": ctx})
            if run.previous is not None and run.previous.ended is not None:
                # an older attempt of this instance was told to stop here: it must be gone before this
                # one starts (an async one is at its next await; a thread is let go as on a cancel)
                await run.previous.ended.wait()
                if run.previous.ctx is not None:  # a thread it left running gets a moment to see its Context
                    await _thread_returned(run.previous.ctx, _CANCEL_GRACE)
                run.previous = None
            # the last moment before the executor starts: a cancel (or a lost lease) that reached this
            # node while the instance was claimed and waiting for its turn means it never starts
            if run.stop_reason == "canceled":
                await self._finish(inst, job, Outcome(inst.uuid, State.CANCELED, detail="canceled before it started",
                                                      attempt=inst.attempts))
                return
            if run.stop_reason is not None:
                return
            run.started = True
            with scope:
                result = await self._runners[inst.kind].run(job.executor, args, kwargs, ctx)
        except Exception as exc:  # the executor's failure (or bad stored arguments)
            error = exc
        stopped = scope.cancelled_caught or (scope.cancel_called and run.stop_reason is not None)
        if stopped:
            reason = run.stop_reason
            if reason is None:
                ctx._stop("timed out")
                error = JobTimeoutError(f"job {inst.kind!r} attempt {inst.attempts} timed out "
                                        f"after {inst.timeout}s")
            elif reason == "canceled":
                detail = "canceled while running"
                if not await _thread_returned(ctx, _CANCEL_GRACE):
                    detail = (f"canceled while running; its thread had not returned {_CANCEL_GRACE:g} s later "
                              "and may still be running")
                await self._finish(inst, job, Outcome(inst.uuid, State.CANCELED, detail=detail, attempt=inst.attempts))
                return
            else:  # "lost": another node owns it now; "shutdown": handed back by stop()
                return
        if error is None:
            await self._complete(inst, job, result)
        else:
            await self._fail(inst, job, error)

    async def _complete(self, inst: Instance, job: Job, result: Any) -> None:
        results = results_list(result)
        inst.result = encode_result(result)
        if job.complete_processor is not None:
            await self._call_processor("complete_processor", inst, job.complete_processor, inst, results)
        self.plugins.completed(self, inst, results)
        await self._finish(inst, job, Outcome(inst.uuid, State.COMPLETED, result=inst.result, attempt=inst.attempts))

    async def _fail(self, inst: Instance, job: Job, error: BaseException) -> None:
        timed_out = isinstance(error, JobTimeoutError)
        err: BaseException | None = error
        decided = self.plugins.terminated(self, inst, error)
        if decided is False:
            err = None
        elif isinstance(decided, BaseException):
            err = decided
        ov = self._overrides.get(inst.schedule_id or inst.uuid)
        processor = (ov.terminate if ov is not None and ov.terminate is not None else job.terminate_processor)
        if processor is not None and err is not None:
            try:
                err = await _maybe_await(processor(inst, err))
            except Exception as exc:
                inst.errorf("terminate_processor raised %s: %s", type(exc).__name__, exc)
        if err is None:  # the processor cleared the error: the attempt counts as a success
            await self._finish(inst, job, Outcome(inst.uuid, State.COMPLETED, detail=f"cleared: {_describe(error)}",
                                                  attempt=inst.attempts))
            return
        state = State.TIMED_OUT if timed_out and isinstance(err, JobTimeoutError) else State.TERMINATED
        message = _describe(err)
        inst.error = message
        retry_at = None
        if inst.attempts - inst.abandoned <= inst.max_retries:  # abandoned attempts are not failures
            retry_at = now() + self._backoff(inst, job, ov)
        await self._finish(inst, job, Outcome(inst.uuid, state, error=message, retry_at=retry_at,
                                              attempt=inst.attempts))

    def _backoff(self, inst: Instance, job: Job, ov: _Overrides | None) -> float:
        strategy = ov.backoff if ov is not None and ov.backoff is not None else job.backoff_strategy
        delay: Any = None
        if strategy is not None:
            try:
                delay = strategy(inst)
            except Exception as exc:
                inst.errorf("backoff_strategy raised %s: %s; using the default backoff", type(exc).__name__, exc)
        if delay is None:
            delay = self.plugins.backoff_delay(inst)
        if delay is None:  # a backoff plugin failed (it was reported): the built-in default applies
            delay = self._default_backoff.gojob_backoff_delay(inst)
        try:
            return max(0.0, seconds(delay, what="backoff delay"))
        except ValueError:
            inst.errorf("backoff_strategy returned %r, not seconds; retrying at once", delay)
            return 0.0

    async def _finish(self, inst: Instance, job: Job | None, outcome: Outcome) -> None:
        """Run the state-change processors, then write the outcome (logs first) in one store step."""
        if job is not None:
            inst.state = outcome.state
            if (aw := self._state_changed(inst, outcome.state, job)) is not None:
                await aw
            if outcome.retry_at is not None:
                inst.state = State.SCHEDULED
                if (aw := self._state_changed(inst, State.SCHEDULED, job)) is not None:
                    await aw
        if self.store.FINISH_MODE != "handoff":
            try:
                ok = await self._finisher.submit(outcome)
            except (StoreError, OSError) as exc:
                self._finished(inst, None, outcome, False, exc)
                return
            self._finished(inst, None, outcome, ok, None)
            return
        run = self._running.get(inst.uuid)
        if run is not None:
            run.finishing = True
        self._finisher.post(outcome, lambda ok, exc: self._finished(inst, run, outcome, ok, exc))

    def _finished(self, inst: Instance, run: _Running | None, outcome: Outcome, ok: bool,
                  error: BaseException | None) -> None:
        """The store answered a finish (``run``: the attempt, if its bookkeeping waited for it)."""
        if error is not None:
            self._report(f"finish of {inst.uuid} failed: {error!r}; its lease will expire and it will re-run")
        elif ok and outcome.retry_at is None and inst.schedule_id is None:
            self._overrides.pop(inst.uuid, None)
        if run is not None and self._running.get(inst.uuid) is run:
            del self._running[inst.uuid]
            self._check_idle()


class _Running:
    """This node's bookkeeping for one claimed instance."""

    __slots__ = ("ctx", "ended", "finishing", "inst", "lease_until", "lost", "previous", "returned", "scope",
                 "started", "stop_reason")

    def __init__(self, inst: Instance, lease_until: float, lost: Callable[[], None] | None = None) -> None:
        self.inst = inst
        self.lost = lost  # called once if the attempt is stopped for a lost lease (a metric)
        self.scope: anyio.CancelScope | None = None
        self.ctx: Context | None = None
        self.stop_reason: str | None = None
        self.finishing = False  # its outcome is with the finish writer, not yet answered
        self.started = False  # the executor was called
        self.returned = False  # the worker is done with this attempt (its outcome may still be being written)
        self.ended: anyio.Event | None = None  # made when a newer attempt must wait for this one to return
        self.previous: _Running | None = None  # an older attempt of the same instance still running here
        #: ``time.monotonic()`` by which this node must have renewed the lease, or stop the attempt itself
        #: (the store may hand the instance to another node, or to this one again, soon after)
        self.lease_until = lease_until

    def stop(self, reason: str) -> None:
        """Stop the attempt: "canceled" (user cancel), "lost" (lease lost), "shutdown" (node stopping)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            if reason == "lost" and self.lost is not None:
                self.lost()
        if self.ctx is not None:
            self.ctx._stop("canceled" if reason == "canceled" else reason)
        if self.scope is not None:
            self.scope.cancel()


async def _thread_returned(ctx: Context, grace: float) -> bool:
    """Whether the attempt's executor has returned, waiting up to ``grace`` seconds for a thread that the
    cancel released (an async executor has always returned by then)."""
    done = ctx._thread_done
    if done is None or done.is_set():
        return True
    with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
        while not done.is_set():
            await anyio.sleep(0.005)
    return done.is_set()


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value

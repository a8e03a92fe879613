"""The tracing plugin: spans from the gojob hooks, context carried in ``Instance.headers``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from gojob_core import State, hookimpl
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from gojob_core import Instance, Manager

__all__ = ["TracingPlugin", "attempt_span"]

_FINAL = {State.COMPLETED, State.TERMINATED, State.TIMED_OUT, State.CANCELED}
_FAILED = {State.TERMINATED, State.TIMED_OUT}
# the attempts running in this process, by (node, uuid): what attempt_span() finds
_open: dict[tuple[str, str], Span] = {}
_lock = threading.Lock()


def attempt_span(instance: Instance) -> Span:
    """The span of the attempt of ``instance`` running in this process (an executor's own spans nest
    under it with ``opentelemetry.trace.use_span(attempt_span(inst))``); a non-recording span if none."""
    with _lock:
        for (_, uuid), span in _open.items():
            if uuid == instance.uuid:
                return span
    return trace.INVALID_SPAN


class TracingPlugin:
    """The gojob hooks that make the spans (see the package docs).

    :param tracer_provider: where the spans go (default: the global tracer provider, read at each span).
    :param propagator: how the context is written into the headers (default: W3C Trace Context).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 propagator: TextMapPropagator | None = None) -> None:
        self._provider = tracer_provider
        self._propagator = propagator or TraceContextTextMapPropagator()

    def _tracer(self) -> trace.Tracer:
        return trace.get_tracer("gojob", tracer_provider=self._provider)

    @hookimpl
    def gojob_instance_scheduling(self, manager: Manager, instance: Instance) -> None:
        links: list[Link] = []
        if instance.headers.get("traceparent"):  # the next occurrence of a schedule: a trace of its own
            previous = trace.get_current_span(self._propagator.extract(instance.headers)).get_span_context()
            if previous.is_valid:
                links.append(Link(previous, {"gojob.link": "previous occurrence"}))
            for key in self._propagator.fields:
                instance.headers.pop(key, None)
            parent = trace.set_span_in_context(trace.INVALID_SPAN)
        else:
            parent = None  # the span current where schedule_job was called
        span = self._tracer().start_span(
            f"gojob.schedule {instance.kind}", context=parent, kind=SpanKind.PRODUCER, links=links,
            attributes={"gojob.kind": instance.kind, "gojob.instance.uuid": instance.uuid,
                        "gojob.node": manager.node_id, "gojob.priority": instance.priority})
        if instance.schedule_id is not None:
            span.set_attribute("gojob.schedule_id", instance.schedule_id)
        self._propagator.inject(instance.headers, context=trace.set_span_in_context(span))
        span.end()

    @hookimpl
    def gojob_instance_state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        key = (manager.node_id, instance.uuid)
        if state is State.PROCESSING:
            with _lock:
                stale = _open.pop(key, None)
            if stale is not None:  # an earlier attempt this node lost without an end
                _end(stale, "ABANDONED")
            parent = self._propagator.extract(instance.headers)
            span = self._tracer().start_span(
                f"gojob.run {instance.kind}", context=parent, kind=SpanKind.CONSUMER,
                attributes={"gojob.kind": instance.kind, "gojob.instance.uuid": instance.uuid,
                            "gojob.attempt": instance.attempts, "gojob.node": manager.node_id})
            with _lock:
                _open[key] = span
            return
        if state in _FINAL:
            with _lock:
                span = _open.pop(key, None)
            if span is not None:
                _end(span, state.value, instance.error if state in _FAILED else None)

    @hookimpl
    def gojob_manager_stopping(self, manager: Manager) -> None:
        # attempts still open are handed back (or cut short): their spans end here
        with _lock:
            mine = [k for k in _open if k[0] == manager.node_id]
            spans = [_open.pop(k) for k in mine]
        for span in spans:
            _end(span, "HANDED_BACK")


def _end(span: Any, state: str, error: str | None = None) -> None:
    span.set_attribute("gojob.state", state)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()

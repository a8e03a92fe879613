"""OpenTelemetry traces for gojob.

Installed, the plugin traces every instance through the global tracer provider (the application sets it
up as usual, with ``opentelemetry.trace.set_tracer_provider``); without one, OpenTelemetry's no-op
provider makes it cost next to nothing. Pass ``TracingPlugin(tracer_provider=...)`` to a Manager's
``plugins`` (with ``autoload_plugins=False``) for a provider of its own.

- **gojob.schedule {kind}** (PRODUCER): on the node that schedules an instance, a child of whatever span
  is current there (a web request, say). Its context is written into the instance's headers
  (``traceparent``, ``tracestate``: W3C Trace Context), which travel through the store.
- **gojob.run {kind}** (CONSUMER): one per attempt, on the node that runs it, a child of the schedule
  span read back from the headers: one trace from the request that scheduled the work to every attempt,
  whichever nodes ran them. Attributes: ``gojob.kind``, ``gojob.instance.uuid``, ``gojob.attempt``,
  ``gojob.node``, and at its end ``gojob.state`` (COMPLETED, TERMINATED, TIMED_OUT, CANCELED; or
  ABANDONED / HANDED_BACK when the node lost the attempt or stopped); failed attempts have status ERROR.
- The next occurrence of a recurring schedule starts a trace of its own, linked to the occurrence that
  enqueued it.

An executor's own spans nest under its attempt with ``opentelemetry.trace.use_span(attempt_span(inst))``.
"""

from __future__ import annotations

from ._tracing import TracingPlugin, attempt_span

__all__ = ["TracingPlugin", "attempt_span"]

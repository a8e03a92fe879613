"""Entry point of the ``gojob`` group: traces every Manager through the global tracer provider."""

from __future__ import annotations

from ._tracing import TracingPlugin

#: the plugin object pluggy registers (its hooks use the global tracer provider, read at each call)
tracing = TracingPlugin()

gojob_instance_scheduling = tracing.gojob_instance_scheduling
gojob_instance_state_changed = tracing.gojob_instance_state_changed
gojob_manager_stopping = tracing.gojob_manager_stopping

"""Traces across two nodes on a shared store, read back from the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from gojob_core import Instance, Job, Manager, MemoryStore, State
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gojob_otel import TracingPlugin, attempt_span

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    yield exp, provider
    provider.shutdown()


def _named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


async def test_one_trace_from_the_scheduling_request_to_each_attempt_on_another_node(
        exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    exp, provider = exporter
    store = MemoryStore()
    tries: list[int] = []

    def flaky(inst: Instance) -> str:
        tries.append(inst.attempts)
        if inst.attempts == 1:
            raise ValueError("first try fails")
        return "ok"

    job = Job(kind="otel.flaky", executor=flaky, max_retries=1, backoff_strategy=lambda inst: 0)
    tracer = provider.get_tracer("app")
    async with Manager(store, num_workers=0, node_id="web", plugins=[TracingPlugin(provider)],
                       autoload_plugins=False) as web, \
            Manager(store, num_workers=2, node_id="worker", plugins=[TracingPlugin(provider)],
                    autoload_plugins=False) as worker:
        await worker.register_job(job)
        with tracer.start_as_current_span("POST /orders") as request:
            inst = await web.schedule_job(job)
        assert "traceparent" in inst.headers
        done = await web.wait(inst, timeout=10)
    assert done.state is State.COMPLETED and tries == [1, 2]

    spans = exp.get_finished_spans()
    [schedule] = _named(spans, "gojob.schedule")
    runs = _named(spans, "gojob.run")
    trace_id = request.get_span_context().trace_id
    assert schedule.context.trace_id == trace_id and schedule.parent.span_id == request.get_span_context().span_id
    assert schedule.kind is SpanKind.PRODUCER and schedule.attributes["gojob.node"] == "web"
    assert [r.attributes["gojob.attempt"] for r in runs] == [1, 2]
    for run in runs:
        assert run.context.trace_id == trace_id and run.parent.span_id == schedule.context.span_id
        assert run.kind is SpanKind.CONSUMER and run.name == "gojob.run otel.flaky"
        assert run.attributes["gojob.node"] == "worker" and run.attributes["gojob.kind"] == "otel.flaky"
        assert run.attributes["gojob.instance.uuid"] == inst.uuid
    assert [r.attributes["gojob.state"] for r in runs] == ["TERMINATED", "COMPLETED"]
    assert runs[0].status.status_code is StatusCode.ERROR and "first try fails" in (runs[0].status.description or "")
    assert runs[1].status.status_code is StatusCode.UNSET


async def test_an_executor_nests_its_own_spans_under_its_attempt(
        exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    exp, provider = exporter

    async def work(inst: Instance) -> None:
        with trace.use_span(attempt_span(inst)):
            with provider.get_tracer("app").start_as_current_span("query the db"):
                await anyio.sleep(0)

    async with Manager(MemoryStore(), num_workers=1, plugins=[TracingPlugin(provider)],
                       autoload_plugins=False) as mgr:
        inst = await mgr.schedule_job(Job(kind="otel.nested", executor=work))
        assert (await mgr.wait(inst, timeout=10)).state is State.COMPLETED
    spans = exp.get_finished_spans()
    [run] = _named(spans, "gojob.run")
    [inner] = _named(spans, "query the db")
    assert inner.parent.span_id == run.context.span_id


async def test_each_cron_occurrence_is_a_trace_linked_to_the_one_before(
        exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    exp, provider = exporter
    async with Manager(MemoryStore(), num_workers=0, plugins=[TracingPlugin(provider)],
                       autoload_plugins=False) as mgr:
        first = await mgr.schedule_job(Job(kind="otel.cron", executor=lambda: None), crontab_spec="* * * * *")
        await mgr._chain_next_occurrence(first)
    one, two = _named(exp.get_finished_spans(), "gojob.schedule")
    assert two.context.trace_id != one.context.trace_id and two.parent is None
    assert [link.context.span_id for link in two.links] == [one.context.span_id]


async def test_a_node_that_stops_ends_the_spans_of_what_it_hands_back(
        exporter: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    exp, provider = exporter
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep(3600)

    mgr = Manager(MemoryStore(), num_workers=1, plugins=[TracingPlugin(provider)], autoload_plugins=False,
                  shutdown_timeout=0.1)
    async with mgr:
        await mgr.schedule_job(Job(kind="otel.forever", executor=forever))
        with anyio.fail_after(10):
            await started.wait()
    [run] = _named(exp.get_finished_spans(), "gojob.run")
    assert run.attributes["gojob.state"] == "HANDED_BACK"


def test_the_entry_point_plugin_is_found() -> None:
    from gojob_core._plugins import Plugins

    names = {name for name, _ in Plugins([], [], True).pm.list_name_plugin()}
    assert "otel" in names

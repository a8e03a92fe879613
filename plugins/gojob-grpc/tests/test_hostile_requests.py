"""Garbage bytes sent to every method of a node's server: INVALID_ARGUMENT, one warning line, nothing done.

The server runs in the test's process (caplog sees its log); the calls go over a real channel with
identity serializers, so the node receives the bytes exactly as sent.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import gojob_core as gojob
import grpc
import grpc.aio
import pytest
from set_aside_store import SetAsideStore

from gojob_grpc import ServerPlugin
from gojob_grpc.proto.gojob.v1 import jobs_pb2 as pb

#: every method of gojob.v1.JobService (a method added later is covered without touching this test)
METHODS = list(pb.DESCRIPTOR.services_by_name["JobService"].methods)
#: none of these decodes as any request message of the service
GARBAGE = (b"\xff" * 8, b"\x0a\x05ab", b"\x08", b"not a protobuf message \xff\x00")
TOKEN = "t0ken"


async def triple(x: int) -> int:
    return 3 * x


def served_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the node's server and grpc logged (not asyncio's slow-callback notes on a loaded machine)."""
    return [r for r in caplog.records if r.name.startswith(("gojob.grpc", "grpc")) and r.levelno >= logging.INFO]


def assert_one_clean_line(caplog: pytest.LogCaptureFixture, *words: str) -> None:
    lines = served_log(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert line.levelno == logging.WARNING and line.exc_info is None and line.exc_text is None
    text = line.getMessage()
    assert "\n" not in text and "Traceback" not in text and all(w in text for w in words), text
    assert not any(r.exc_info for r in caplog.records)  # no traceback from anyone else either


def shapes(method: Any) -> list[tuple[str, bool]]:
    """How to call a method: as what it is, and a streaming one also as a unary one (a client that
    knows nothing of the service would)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    return [(path, method.server_streaming)] + ([(path, False)] if method.server_streaming else [])


async def call_with(channel: grpc.aio.Channel, path: str, payload: bytes, *, streaming: bool,
                    metadata: Any = ()) -> grpc.aio.AioRpcError:
    """Send ``payload`` as the request of ``path`` (identity serializers); return the call's error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if streaming:
            async for _ in channel.unary_stream(path, request_serializer=None, response_deserializer=None)(
                    payload, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                payload, metadata=metadata, timeout=10)
    return info.value


async def test_garbage_to_every_method_is_invalid_argument(caplog: pytest.LogCaptureFixture) -> None:
    store = SetAsideStore()
    plugin = ServerPlugin(listen="127.0.0.1:0")
    async with gojob.Manager(store, node_id="n1", num_workers=2, plugins=[plugin]) as mgr:
        await mgr.register_job(gojob.Job(kind="triple", executor=triple))
        waiting = await mgr.schedule_registered_job("triple", arguments=(1,), schedule_after=3600)
        before = (await mgr.lookup_instances(gojob.Query()), await mgr.lookup_instance_history(gojob.Query()))
        assert plugin.server is not None
        async with grpc.aio.insecure_channel(plugin.server.address) as channel:
            for method in METHODS:
                for (path, streaming), garbage in itertools.product(shapes(method), GARBAGE):
                    caplog.clear()
                    with caplog.at_level(logging.DEBUG):
                        error = await call_with(channel, path, garbage, streaming=streaming)
                    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, garbage, error)
                    assert error.details() == (f"the request is not a valid {method.input_type.full_name}: Error "
                                               f"parsing message with type '{method.input_type.full_name}': Wire "
                                               "format was corrupt"), error.details()
                    assert ("gojob-error", "DecodeError") in tuple(error.trailing_metadata() or ())
                    assert_one_clean_line(caplog, f"refused a call to {path} from ", "Wire format was corrupt")
            # and the node still serves well-formed calls on the same channel
            health = channel.unary_unary("/gojob.v1.JobService/Health", request_serializer=None,
                                         response_deserializer=pb.HealthResponse.FromString)
            assert (await health(b"", timeout=10)).status == "SERVING"
        # nothing was written: no instance, no history record, no cancel, no resize, no record dropped
        after = (await mgr.lookup_instances(gojob.Query()), await mgr.lookup_instance_history(gojob.Query()))
        assert [i.to_dict() for i in after[0]] == [i.to_dict() for i in before[0]]
        assert after[1] == before[1] and (await mgr.lookup_instance(waiting.uuid)).state is gojob.State.SCHEDULED
        assert mgr.num_workers == 2 and store.dropped == [] and len(await store.corrupt_records()) == 2


async def test_garbage_with_a_token_configured(caplog: pytest.LogCaptureFixture) -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0", token=TOKEN)
    async with gojob.Manager(SetAsideStore(), node_id="n1", plugins=[plugin]) as mgr:
        assert plugin.server is not None
        async with grpc.aio.insecure_channel(plugin.server.address) as channel:
            for path, streaming in (shape for method in METHODS for shape in shapes(method)):
                caplog.clear()
                with caplog.at_level(logging.DEBUG):
                    # without the token: refused before the request is read (the token check comes first)
                    error = await call_with(channel, path, GARBAGE[0], streaming=streaming)
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (path, error)
                assert_one_clean_line(caplog, f"refused a call to {path}", "missing or wrong token")
                caplog.clear()
                with caplog.at_level(logging.DEBUG):
                    error = await call_with(channel, path, GARBAGE[0], streaming=streaming,
                                            metadata=(("authorization", f"Bearer {TOKEN}"),))
                assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, error)
                assert_one_clean_line(caplog, f"refused a call to {path}", "is not a valid")
        assert await mgr.lookup_instances(gojob.Query()) == []


# -- the plugins' services: every kind of method, async and sync --------------------------------------------
def _text(raw: bytes) -> str:
    return raw.decode("utf-8")  # raises UnicodeDecodeError on garbage


class Streams:
    """A plugin service with each kind of method (text messages), async and sync handlers."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @gojob.hookimpl
    def gojob_grpc_add_services(self, server: grpc.aio.Server, manager: gojob.Manager) -> None:
        seen = self.seen

        async def unary_unary(request: str, context: Any) -> str:
            seen.append(request)
            return request.upper()

        async def unary_stream(request: str, context: Any) -> AsyncIterator[str]:
            seen.append(request)
            yield request.upper()

        async def stream_unary(requests: AsyncIterator[str], context: Any) -> str:
            got = [r async for r in requests]
            seen.extend(got)
            return "".join(got).upper()

        async def stream_stream(requests: AsyncIterator[str], context: Any) -> AsyncIterator[str]:
            async for r in requests:
                seen.append(r)
                yield r.upper()

        def sync_unary_unary(request: str, context: Any) -> str:
            seen.append(request)
            return request.upper()

        def sync_unary_stream(request: str, context: Any) -> Iterator[str]:
            seen.append(request)
            yield request.upper()

        def sync_stream_unary(requests: Iterator[str], context: Any) -> str:
            got = list(requests)
            seen.extend(got)
            return "".join(got).upper()

        def sync_stream_stream(requests: Iterator[str], context: Any) -> Iterator[str]:
            for r in requests:
                seen.append(r)
                yield r.upper()

        options = {"request_deserializer": _text}  # responses: str, which grpc sends UTF-8 encoded
        handlers = {}
        for prefix, fns in (("", (unary_unary, unary_stream, stream_unary, stream_stream)),
                            ("Sync", (sync_unary_unary, sync_unary_stream, sync_stream_unary, sync_stream_stream))):
            handlers[f"{prefix}UnaryUnary"] = grpc.unary_unary_rpc_method_handler(fns[0], **options)
            handlers[f"{prefix}UnaryStream"] = grpc.unary_stream_rpc_method_handler(fns[1], **options)
            handlers[f"{prefix}StreamUnary"] = grpc.stream_unary_rpc_method_handler(fns[2], **options)
            handlers[f"{prefix}StreamStream"] = grpc.stream_stream_rpc_method_handler(fns[3], **options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Streams", handlers),))


@pytest.mark.parametrize("prefix", ["", "Sync"])
async def test_garbage_in_the_plugins_services(caplog: pytest.LogCaptureFixture, prefix: str) -> None:
    streams = Streams()
    plugin = ServerPlugin(listen="127.0.0.1:0")
    async with gojob.Manager("memory://", plugins=[plugin, streams]):
        assert plugin.server is not None
        async with grpc.aio.insecure_channel(plugin.server.address) as channel:
            def method(kind: str) -> Any:
                path = f"/test.Streams/{prefix}{kind}"
                factory = {"UnaryUnary": channel.unary_unary, "UnaryStream": channel.unary_stream,
                           "StreamUnary": channel.stream_unary, "StreamStream": channel.stream_stream}[kind]
                return factory(path, request_serializer=None, response_deserializer=None)

            # well-formed calls pass through unchanged
            assert await method("UnaryUnary")(b"a", timeout=10) == b"A"
            assert [r async for r in method("UnaryStream")(b"b", timeout=10)] == [b"B"]
            assert await method("StreamUnary")(iter([b"c", b"d"]), timeout=10) == b"CD"
            assert [r async for r in method("StreamStream")(iter([b"e", b"f"]), timeout=10)] == [b"E", b"F"]
            assert streams.seen == ["a", "b", "c", "d", "e", "f"]
            streams.seen.clear()

            bad = b"\xff\xfe"
            calls = {
                "UnaryUnary": lambda: method("UnaryUnary")(bad, timeout=10),
                "UnaryStream": lambda: _drain(method("UnaryStream")(bad, timeout=10)),
                # a good message first, then garbage: the handler has read the first when the call is refused
                "StreamUnary": lambda: method("StreamUnary")(iter([b"ok", bad, b"never"]), timeout=10),
                "StreamStream": lambda: _drain(method("StreamStream")(iter([b"ok", bad, b"never"]), timeout=10)),
            }
            for kind, call in calls.items():
                caplog.clear()
                with caplog.at_level(logging.DEBUG), pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (kind, info.value)
                assert (info.value.details() or "").startswith("the request cannot be decoded: 'utf-8' codec can't "
                                                               "decode byte 0xff"), info.value.details()
                assert_one_clean_line(caplog, f"refused a call to /test.Streams/{prefix}{kind}", "can't decode")
            assert "never" not in streams.seen and not any(s.startswith("\ufffd") for s in streams.seen)


async def _drain(call: Any) -> list[Any]:
    return [r async for r in call]

"""The server inside an application's own Manager: ServerPlugin, the gojob_grpc_* hooks, the entry point."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import anyio
import gojob_core as gojob
import grpc
import pytest

from gojob_grpc import Client, RpcError, ServerPlugin, UnauthenticatedError, UnavailableError


async def triple(x: int) -> int:
    return 3 * x


TRIPLE = gojob.Job(kind="triple", executor=triple)


async def test_server_plugin_serves_while_the_manager_runs() -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0", token="tok")
    async with gojob.Manager("memory://", num_workers=2, plugins=[plugin]) as mgr:
        await mgr.register_job(TRIPLE)
        assert plugin.server is not None and plugin.server.port
        target = plugin.server.address
        async with Client(target, token="tok") as c:
            assert (await c.health()).node_id == mgr.node_id
            inst = await c.schedule("triple", 14)
            assert (await c.wait(inst, timeout=10)).result == 42
            local = await mgr.schedule_registered_job("triple", arguments=(1,))  # the app's own calls are seen too
            assert (await c.wait(local.uuid, timeout=10)).result == 3
            assert (await mgr.lookup_instance(inst.uuid)).state is gojob.State.COMPLETED
        async with Client(target) as anonymous:
            with pytest.raises(UnauthenticatedError):
                await anonymous.health()
    # the Manager stopped: so did the server
    async with Client(target, token="tok", timeout=5) as c:
        with pytest.raises(UnavailableError):
            await c.health()


async def test_watch_and_wait_end_when_the_node_stops() -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0")
    mgr = gojob.Manager("memory://", plugins=[plugin])
    errors: list[BaseException] = []
    # the Manager's start() and stop() must see the same cancel scope: the task group goes around both
    async with anyio.create_task_group() as tg:
        await mgr.start()
        await mgr.register_job(TRIPLE)
        assert plugin.server is not None
        async with Client(plugin.server.address) as c:
            delayed = await c.schedule("triple", 1, schedule_after=3600)

            async def wait_for_it() -> None:
                try:
                    await c.wait(delayed)
                except RpcError as exc:
                    errors.append(exc)

            # stop only once the node is inside the wait (a fixed sleep lost that race on a loaded machine)
            waiting = anyio.Event()
            real_wait = mgr.wait

            async def observed_wait(*args: Any, **kwargs: Any) -> Any:
                waiting.set()
                return await real_wait(*args, **kwargs)

            mgr.wait = observed_wait  # type: ignore[method-assign]
            async with c.watch_instances() as events:
                tg.start_soon(wait_for_it)
                with anyio.fail_after(10):
                    await waiting.wait()
                await anyio.sleep(0.05)
                await mgr.stop()
                with pytest.raises(UnavailableError, match="stopping"):
                    async for _ in events:
                        pass
    assert len(errors) == 1 and isinstance(errors[0], UnavailableError), errors
    assert "stopping" in str(errors[0])


async def test_a_slow_watcher_is_cut_off_not_left_with_holes() -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0", watch_buffer=3)
    async with gojob.Manager("memory://", plugins=[plugin]) as mgr:
        await mgr.register_job(TRIPLE)
        assert plugin.server is not None
        async with Client(plugin.server.address) as c, c.watch_instances() as events:
            for i in range(3):  # 2 events each (CREATED, SCHEDULED) before any is read
                await mgr.schedule_registered_job("triple", arguments=(i,), schedule_after=3600)
            seen = []
            with pytest.raises(RpcError) as info:
                async for ev in events:
                    seen.append(ev.state)
            assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "fell 3 events behind" in info.value.details
            assert seen == [gojob.State.CREATED, gojob.State.SCHEDULED, gojob.State.CREATED]  # a prefix, no holes


class EchoService:
    """A plugin adding a service of its own to the node's server through gojob_grpc_add_services."""

    @gojob.hookimpl
    def gojob_grpc_add_services(self, server: grpc.aio.Server, manager: gojob.Manager) -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request + manager.node_id.encode()

        handler = grpc.method_handlers_generic_handler("test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))


async def test_plugins_add_services_behind_the_same_token() -> None:
    async with gojob.Manager("memory://", node_id="n1", plugins=[ServerPlugin(listen="127.0.0.1:0", token="t"),
                                                                  EchoService()]) as mgr:
        server = next(p for p in mgr.plugins.pm.get_plugins() if isinstance(p, ServerPlugin)).server
        assert server is not None
        async with grpc.aio.insecure_channel(server.address) as channel:
            echo = channel.unary_unary("/test.Echo/Echo")
            assert await echo(b"hi ", metadata=(("authorization", "Bearer t"),), timeout=10) == b"hi n1"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await echo(b"hi ", timeout=10)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_entry_point_publishes_the_hookspecs_without_importing_grpc() -> None:
    import subprocess
    import sys

    (ep,) = [e for e in entry_points(group="gojob") if e.name == "grpc"]
    assert ep.value == "gojob_grpc.plugin"
    code = ("import sys, gojob_core; m = gojob_core.Manager('memory://'); "
            "assert m.plugins.pm.hook.gojob_grpc_add_services.spec is not None; "
            "assert 'grpc' not in sys.modules, 'loading the entry point imported grpc'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_server_plugin_serves_one_manager() -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0")
    async with gojob.Manager("memory://", plugins=[plugin]):
        other = gojob.Manager("memory://", plugins=[plugin])
        with pytest.raises(RuntimeError, match="serves one Manager"):
            plugin.gojob_manager_started(other)

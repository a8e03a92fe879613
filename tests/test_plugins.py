"""The pluggy extension points: each ``gojob_*`` hook, driven by test plugins given to ``Manager(plugins=[...])``."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import gojob_core
import pluggy
import pytest
from gojob_core import Context, Instance, Job, Manager, MemoryStore, Query, State, UnknownStoreError, hookimpl
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families


def _mgr(*plugins: object, **options: Any) -> Manager:
    options.setdefault("num_workers", 2)
    return Manager(plugins=list(plugins), autoload_plugins=False, **options)


class Boom(Exception):
    pass


def _fail() -> None:
    raise Boom("the original failure")


# -- stores -----------------------------------------------------------------------------------------------------
class CustomStore(MemoryStore):
    SCHEMES = ("custom",)
    name = "custom"

    def __init__(self, url: str = "", options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.url = url
        self.options = options or {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> CustomStore:
        return cls(url, options)


class OtherCustomStore(MemoryStore):
    SCHEMES = ("custom",)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> OtherCustomStore:
        return cls()


class CustomStorePlugin:
    @hookimpl
    def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
        return [CustomStore]


class OtherCustomStorePlugin:
    @hookimpl
    def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
        return [OtherCustomStore]


def test_unknown_scheme_names_it_and_lists_installed_schemes() -> None:
    with pytest.raises(UnknownStoreError) as info:
        Manager(store="nosuch://x", autoload_plugins=False)
    err = info.value
    assert "'nosuch'" in str(err)
    assert "memory" in str(err)
    assert "nosuch://x" in str(err)
    assert err.scheme == "nosuch"
    assert err.url == "nosuch://x"
    assert "memory" in err.installed
    assert isinstance(err, ValueError)
    assert isinstance(err, gojob_core.GojobError)


def test_unknown_scheme_lists_plugin_schemes_too() -> None:
    with pytest.raises(UnknownStoreError) as info:
        Manager(store="nosuch://x", plugins=[CustomStorePlugin()], autoload_plugins=False)
    assert sorted(info.value.installed) == ["custom", "memory"]
    assert "custom, memory" in str(info.value)


def test_url_without_scheme_is_an_unknown_store() -> None:
    with pytest.raises(UnknownStoreError) as info:
        Manager(store="just-a-path", autoload_plugins=False)
    assert info.value.scheme == ""


async def test_plugin_store_is_used_for_its_scheme() -> None:
    mgr = Manager(store="custom://somewhere/0", plugins=[CustomStorePlugin()], autoload_plugins=False,
                  store_options={"answer": 42})
    assert type(mgr.store) is CustomStore
    assert mgr.store.url == "custom://somewhere/0"
    assert mgr.store.options == {"answer": 42}
    async with mgr:
        inst = await mgr.schedule_job(Job(kind="plug.add", executor=lambda a, b: a + b), arguments=(2, 3))
        done = await mgr.wait(inst, timeout=10)
        assert done.result == 5
        assert (await mgr.store.get_instance(inst.uuid)) is not None  # it went through the custom store


def test_scheme_match_is_case_insensitive() -> None:
    mgr = Manager(store="CUSTOM://x", plugins=[CustomStorePlugin()], autoload_plugins=False)
    assert type(mgr.store) is CustomStore


def test_memory_scheme_still_resolves_with_a_store_plugin() -> None:
    mgr = Manager(store="memory://", plugins=[CustomStorePlugin()], autoload_plugins=False)
    assert type(mgr.store) is MemoryStore


def test_two_plugins_claiming_one_scheme_name_both_classes() -> None:
    with pytest.raises(ValueError) as info:
        Manager(store="custom://", plugins=[CustomStorePlugin(), OtherCustomStorePlugin()], autoload_plugins=False)
    assert not isinstance(info.value, UnknownStoreError)
    message = str(info.value)
    assert "'custom'" in message
    assert "CustomStore" in message
    assert "OtherCustomStore" in message


def test_one_class_given_by_two_plugins_is_not_a_conflict() -> None:
    class AgainPlugin:
        @hookimpl
        def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
            return [CustomStore]

    mgr = Manager(store="custom://", plugins=[CustomStorePlugin(), AgainPlugin()], autoload_plugins=False)
    assert type(mgr.store) is CustomStore


def test_plugin_claiming_memory_conflicts_with_the_builtin() -> None:
    class MyMemory(MemoryStore):
        pass  # inherits SCHEMES = ("memory",)

    class MemoryPlugin:
        @hookimpl
        def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
            return [MyMemory]

    with pytest.raises(ValueError, match="MyMemory") as info:
        Manager(store="memory://", plugins=[MemoryPlugin()], autoload_plugins=False)
    assert "MemoryStore" in str(info.value)


def test_loading_the_installed_plugins_imports_no_client_library() -> None:
    """Every Manager loads every installed plugin: the store plugins stand in with lazy_store, so a
    Manager on the memory store imports neither valkey-glide, redis-py, grpc nor aetcd."""
    import subprocess

    code = ("import sys, gojob_core; gojob_core.Manager('memory://'); "
            "print(sorted(m for m in ('glide', 'redis', 'hiredis', 'grpc', 'aetcd') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_lazy_store_imports_its_class_when_a_url_names_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gojob_core.abc import lazy_store

    (tmp_path / "lazy_pkg_for_test").mkdir()
    (tmp_path / "lazy_pkg_for_test" / "__init__.py").write_text("")
    (tmp_path / "lazy_pkg_for_test" / "real.py").write_text(textwrap.dedent("""
        from gojob_core import MemoryStore

        class RealStore(MemoryStore):
            SCHEMES = ("lazyx",)

            @classmethod
            def from_url(cls, url, **options):
                store = cls()
                store.built_from = (url, options)
                return store
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    stand_in = lazy_store("lazy_pkg_for_test.real:RealStore", schemes=("lazyx",), name="lazyx")

    class LazyPlugin:
        @hookimpl
        def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
            return [stand_in]

    assert "lazy_pkg_for_test.real" not in sys.modules
    mgr = Manager(store="lazyx://somewhere?x=1", store_options={"opt": 2}, plugins=[LazyPlugin()],
                  autoload_plugins=False)
    assert type(mgr.store).__name__ == "RealStore"
    assert mgr.store.built_from == ("lazyx://somewhere?x=1", {"opt": 2})  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="package.module:Class"):
        lazy_store("no_colon_here", schemes=("x",), name="x")


# -- per-instance events -------------------------------------------------------------------------------------------
class StateRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, State]] = []
        self.completed: list[tuple[str, list[Any]]] = []

    @hookimpl
    def gojob_instance_state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        assert isinstance(manager, Manager)
        self.events.append((instance.uuid, state))

    @hookimpl
    def gojob_instance_completed(self, manager: Manager, instance: Instance, results: list[Any]) -> None:
        self.completed.append((instance.uuid, results))

    def states(self, inst: Instance) -> list[State]:
        return [s for u, s in self.events if u == inst.uuid]


async def test_state_changed_sees_every_transition_in_order() -> None:
    rec = StateRecorder()
    async with _mgr(rec) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.noop", executor=lambda: None))
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED
    assert rec.states(inst) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]


async def test_state_changed_sees_a_retry_and_the_final_failure() -> None:
    rec = StateRecorder()
    async with _mgr(rec) as mgr:
        job = Job(kind="plug.fails", executor=_fail, max_retries=1, backoff_strategy=lambda inst: 0.0)
        inst = await mgr.schedule_job(job)
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.TERMINATED
    assert rec.states(inst) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.TERMINATED,
                                State.SCHEDULED, State.PROCESSING, State.TERMINATED]


@pytest.mark.parametrize(("returned", "results"), [
    ((1, "two", 3.0), [1, "two", 3.0]),
    (None, []),
    (7, [7]),
    ([1, 2], [[1, 2]]),
    ((), []),
])
async def test_completed_receives_results(returned: Any, results: list[Any]) -> None:
    rec = StateRecorder()
    async with _mgr(rec) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.result", executor=lambda: returned))
        await mgr.wait(inst, timeout=10)
    assert rec.completed == [(inst.uuid, results)]


async def test_completed_is_not_called_for_a_failure() -> None:
    rec = StateRecorder()
    async with _mgr(rec) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail))
        await mgr.wait(inst, timeout=10)
    assert rec.completed == []


# -- terminated: clear or replace the error ----------------------------------------------------------------------------
class Clearer:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @hookimpl
    def gojob_instance_terminated(self, manager: Manager, instance: Instance, error: BaseException) -> bool:
        self.errors.append(error)
        return False


class Replacement(Exception):
    pass


class Replacer:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.replacement = Replacement("replaced by the plugin")

    @hookimpl
    def gojob_instance_terminated(self, manager: Manager, instance: Instance, error: BaseException) -> BaseException:
        self.errors.append(error)
        return self.replacement


async def test_terminated_returning_false_clears_the_error() -> None:
    clearer = Clearer()
    async with _mgr(clearer) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=3))
        done = await mgr.wait(inst, timeout=10)
        history = await mgr.lookup_instance_history(Query(instance=inst))
    assert done.state is State.COMPLETED
    assert done.attempts == 1  # no retry
    assert done.error is None
    assert [r.state for r in history] == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    assert len(clearer.errors) == 1
    assert isinstance(clearer.errors[0], Boom)


async def test_terminated_clearing_a_timeout_completes_the_instance() -> None:
    clearer = Clearer()

    async def slow() -> None:
        await anyio.sleep(30)

    async with _mgr(clearer) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.slow", executor=slow, timeout=0.1, max_retries=2))
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED
    assert done.attempts == 1
    assert isinstance(clearer.errors[0], gojob_core.JobTimeoutError)


async def test_terminated_replacement_reaches_the_terminate_processor_and_the_store() -> None:
    replacer = Replacer()
    received: list[BaseException] = []

    def processor(instance: Instance, error: BaseException) -> BaseException:
        received.append(error)
        return error

    async with _mgr(replacer) as mgr:
        job = Job(kind="plug.fails", executor=_fail, terminate_processor=processor)
        inst = await mgr.schedule_job(job)
        done = await mgr.wait(inst, timeout=10)
        history = await mgr.lookup_instance_history(Query(instance=inst, state=State.TERMINATED))
    assert isinstance(replacer.errors[0], Boom)  # the hook sees the original
    assert received == [replacer.replacement]  # the processor sees the replacement
    assert received[0] is replacer.replacement
    assert done.state is State.TERMINATED
    assert done.error is not None
    assert "Replacement" in done.error
    assert "replaced by the plugin" in done.error
    assert "Boom" not in done.error
    assert history and "Replacement" in (history[-1].detail or "")


async def test_terminated_returning_none_leaves_the_error() -> None:
    calls: list[BaseException] = []

    class Watcher:
        @hookimpl
        def gojob_instance_terminated(self, manager: Manager, instance: Instance, error: BaseException) -> None:
            calls.append(error)

    async with _mgr(Watcher()) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail))
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.TERMINATED
    assert done.error is not None and "Boom" in done.error and "the original failure" in done.error
    assert len(calls) == 1


async def test_terminated_is_first_result_wins() -> None:
    # calls are LIFO: the plugin registered last runs first, and its non-None answer stops the others
    replacer, clearer = Replacer(), Clearer()
    async with _mgr(replacer, clearer) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=2))
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED
    assert len(clearer.errors) == 1
    assert replacer.errors == []


# -- backoff -----------------------------------------------------------------------------------------------------
class FixedBackoff:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[int] = []

    @hookimpl
    def gojob_backoff_delay(self, instance: Instance) -> float:
        self.calls.append(instance.attempts)
        return self.delay


async def _processing_times(mgr: Manager, inst: Instance) -> list[float]:
    history = await mgr.lookup_instance_history(Query(instance=inst, state=State.PROCESSING))
    return [r.ts for r in history]


async def test_backoff_plugin_is_used_without_a_backoff_strategy() -> None:
    backoff = FixedBackoff(0.05)
    async with _mgr(backoff) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=1))
        done = await mgr.wait(inst, timeout=10)
        starts = await _processing_times(mgr, inst)
    assert done.state is State.TERMINATED
    assert done.attempts == 2
    assert backoff.calls == [1]  # asked once, after the first attempt
    assert len(starts) == 2
    gap = starts[1] - starts[0]
    assert gap >= 0.05
    assert gap < 0.35, f"{gap:.3f}s between attempts: the built-in default backoff (~0.5 s) was used"


async def test_backoff_strategy_of_the_job_wins_over_the_plugin() -> None:
    backoff = FixedBackoff(0.0)
    asked: list[int] = []

    def strategy(instance: Instance) -> float:
        asked.append(instance.attempts)
        return 0.3

    async with _mgr(backoff) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=1,
                                          backoff_strategy=strategy))
        await mgr.wait(inst, timeout=10)
        starts = await _processing_times(mgr, inst)
    assert backoff.calls == []
    assert asked == [1]
    assert starts[1] - starts[0] >= 0.3


async def test_backoff_strategy_given_at_schedule_time_wins_over_the_plugin() -> None:
    backoff = FixedBackoff(0.0)
    async with _mgr(backoff) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail), max_retries=1,
                                      backoff_strategy=lambda i: 0.3)
        await mgr.wait(inst, timeout=10)
        starts = await _processing_times(mgr, inst)
    assert backoff.calls == []
    assert starts[1] - starts[0] >= 0.3


# -- jobs ----------------------------------------------------------------------------------------------------------
class JobsPlugin:
    def __init__(self) -> None:
        self.managers: list[Manager] = []

    @hookimpl
    def gojob_register_jobs(self, manager: Manager) -> list[Job]:
        self.managers.append(manager)
        return [Job(kind="contrib.mul", executor=_mul, description="from a plugin")]


def _mul(a: int, b: int) -> int:
    return a * b


async def test_contributed_job_is_registered_on_start() -> None:
    plugin = JobsPlugin()
    mgr = _mgr(plugin)
    assert mgr.registered_jobs() == []
    assert plugin.managers == []  # registration happens when the Manager starts
    async with mgr:
        assert plugin.managers == [mgr]
        assert [j.kind for j in mgr.registered_jobs()] == ["contrib.mul"]
        assert mgr.lookup_job("contrib.mul").description == "from a plugin"
        inst = await mgr.schedule_registered_job("contrib.mul", arguments=("6", 7))
        done = await mgr.wait(inst, timeout=10)
    assert done.state is State.COMPLETED
    assert done.result == 42


async def test_contributed_job_does_not_replace_a_job_registered_before_start() -> None:
    mine = Job(kind="contrib.mul", executor=lambda a, b: a + b)
    mgr = _mgr(JobsPlugin())
    await mgr.register_job(mine)
    async with mgr:
        assert mgr.lookup_job("contrib.mul") is mine
        done = await mgr.wait(await mgr.schedule_registered_job("contrib.mul", arguments=(6, 7)), timeout=10)
    assert done.result == 13


# -- lifecycle ------------------------------------------------------------------------------------------------------
async def test_lifecycle_hooks_sync_and_async_are_called_once_in_order() -> None:
    log: list[str] = []

    class SyncLifecycle:
        @hookimpl
        def gojob_manager_started(self, manager: Manager) -> None:
            assert manager.running
            log.append("sync started")

        @hookimpl
        def gojob_manager_stopping(self, manager: Manager) -> None:
            log.append("sync stopping")

    class AsyncLifecycle:
        @hookimpl
        async def gojob_manager_started(self, manager: Manager) -> None:
            await anyio.sleep(0)
            assert manager.running
            log.append("async started")

        @hookimpl
        async def gojob_manager_stopping(self, manager: Manager) -> None:
            await anyio.sleep(0)
            log.append("async stopping")

    async with _mgr(SyncLifecycle(), AsyncLifecycle()) as mgr:
        assert sorted(log) == ["async started", "sync started"]
        log.append("running")
        inst = await mgr.schedule_job(Job(kind="plug.noop", executor=lambda: None))
        await mgr.wait(inst, timeout=10)
    assert log[2] == "running"
    assert sorted(log[:2]) == ["async started", "sync started"]
    assert sorted(log[3:]) == ["async stopping", "sync stopping"]
    assert len(log) == 5


async def test_started_hook_may_schedule_work() -> None:
    class Starter:
        def __init__(self) -> None:
            self.inst: Instance | None = None

        @hookimpl
        async def gojob_manager_started(self, manager: Manager) -> None:
            self.inst = await manager.schedule_job(Job(kind="plug.boot", executor=lambda: "booted"))

    starter = Starter()
    async with _mgr(starter) as mgr:
        assert starter.inst is not None
        assert (await mgr.wait(starter.inst, timeout=10)).result == "booted"


async def test_stopping_is_not_called_when_the_manager_never_started() -> None:
    called: list[str] = []

    class Lifecycle:
        @hookimpl
        def gojob_manager_stopping(self, manager: Manager) -> None:
            called.append("stopping")

    mgr = _mgr(Lifecycle())
    await mgr.stop()
    assert called == []


# -- executor runner ---------------------------------------------------------------------------------------------------
class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Context]] = []

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], ctx: Context) -> Any:
        self.calls.append((fn, args, kwargs, ctx))
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


class RunnerPlugin:
    def __init__(self) -> None:
        self.runner = RecordingRunner()
        self.asked: list[str] = []

    @hookimpl
    def gojob_executor_runner(self, manager: Manager, job: Job) -> RecordingRunner | None:
        self.asked.append(job.kind)
        return self.runner if job.kind.startswith("custom.") else None


async def test_custom_executor_runner_is_used() -> None:
    plugin = RunnerPlugin()

    def add(a: int, b: int) -> int:
        return a + b

    async def amul(a: int, b: int) -> int:
        return a * b

    async with _mgr(plugin) as mgr:
        i1 = await mgr.schedule_job(Job(kind="custom.add", executor=add), arguments=(2, 3))
        i2 = await mgr.schedule_job(Job(kind="custom.mul", executor=amul), arguments=(4, 5))
        i3 = await mgr.schedule_job(Job(kind="default.add", executor=add), arguments=(1, 1))
        results = [(await mgr.wait(i, timeout=10)).result for i in (i1, i2, i3)]
    assert results == [5, 20, 2]
    assert sorted(plugin.asked) == ["custom.add", "custom.mul", "default.add"]  # once per job
    calls = plugin.runner.calls
    assert sorted((c[0].__name__, c[1]) for c in calls) == [("add", (2, 3)), ("amul", (4, 5))]
    assert all(isinstance(c[3], Context) for c in calls)


async def test_executor_runner_is_asked_once_per_job() -> None:
    plugin = RunnerPlugin()
    async with _mgr(plugin) as mgr:
        job = Job(kind="custom.noop", executor=lambda: None)
        insts = await mgr.schedule_many(job, [(), (), ()])
        for inst in insts:
            await mgr.wait(inst, timeout=10)
    assert plugin.asked == ["custom.noop"]
    assert len(plugin.runner.calls) == 3


# -- metrics --------------------------------------------------------------------------------------------------------
class MetricsPlugin:
    def __init__(self) -> None:
        self.counter: Counter | None = None
        self.args: tuple[Manager, CollectorRegistry] | None = None

    @hookimpl
    def gojob_register_metrics(self, manager: Manager, registry: CollectorRegistry) -> None:
        self.args = (manager, registry)
        self.counter = Counter("plugin_events", "Events seen by a test plugin", ["kind"], registry=registry)

    @hookimpl
    def gojob_instance_completed(self, manager: Manager, instance: Instance, results: list[Any]) -> None:
        assert self.counter is not None
        self.counter.labels(kind=instance.kind).inc()


async def test_plugin_metrics_appear_in_the_exposition() -> None:
    plugin = MetricsPlugin()
    mgr = _mgr(plugin)
    assert plugin.args == (mgr, mgr.metrics.registry)
    async with mgr:
        job = Job(kind="plug.noop", executor=lambda: None)
        for _ in range(2):
            await mgr.wait(await mgr.schedule_job(job), timeout=10)
        text = mgr.metrics.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "plugin_events" in families
    samples = {(s.name, s.labels.get("kind")): s.value for s in families["plugin_events"].samples}
    assert samples[("plugin_events_total", "plug.noop")] == 2
    assert "go_job_executed" in families  # the built-in metrics are in the same registry


# -- addhooks ----------------------------------------------------------------------------------------------------
_myspec = pluggy.HookspecMarker("gojob")


class MyHookspecs:
    @_myspec
    def gojob_myplugin_greet(self, name: str) -> str:  # type: ignore[empty-body]
        """A hook of a third-party plugin's own."""

    @_myspec(firstresult=True)
    def gojob_myplugin_pick(self, options: list[str]) -> str | None:  # type: ignore[empty-body]
        """A firstresult hook of a third-party plugin's own."""


class SpecPlugin:
    @hookimpl
    def gojob_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
        pluginmanager.add_hookspecs(MyHookspecs)


class GreetPlugin:
    @hookimpl
    def gojob_myplugin_greet(self, name: str) -> str:
        return f"hello {name}"

    @hookimpl
    def gojob_myplugin_pick(self, options: list[str]) -> str:
        return options[-1]


@pytest.mark.parametrize("order", ["spec-first", "impl-first"])
def test_addhooks_lets_a_plugin_publish_its_own_hooks(order: str) -> None:
    plugins = [SpecPlugin(), GreetPlugin()]
    if order == "impl-first":
        plugins.reverse()
    mgr = Manager(plugins=plugins, autoload_plugins=False)
    hook = mgr.plugins.pm.hook
    assert hook.gojob_myplugin_greet(name="gojob") == ["hello gojob"]
    assert hook.gojob_myplugin_pick(options=["a", "b"]) == "b"


def test_unknown_gojob_hook_without_its_spec_is_refused() -> None:
    with pytest.raises(pluggy.PluginValidationError, match="gojob_myplugin_greet"):
        Manager(plugins=[GreetPlugin()], autoload_plugins=False)


def test_hookimpl_with_a_wrong_argument_is_refused() -> None:
    class Wrong:
        @hookimpl
        def gojob_backoff_delay(self, instance: Instance, nonsense: int) -> float:
            return 0.0

    with pytest.raises(pluggy.PluginValidationError, match="nonsense"):
        Manager(plugins=[Wrong()], autoload_plugins=False)


# -- entry points ----------------------------------------------------------------------------------------------------
class _LoadRecorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.groups: list[str] = []
        original = pluggy.PluginManager.load_setuptools_entrypoints
        recorder = self

        def load(self: pluggy.PluginManager, group: str, name: str | None = None) -> int:
            recorder.groups.append(group)
            return original(self, group, name)

        monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", load)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> _LoadRecorder:
    monkeypatch.delenv("GOJOB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("GOJOB_DISABLED_PLUGINS", raising=False)
    return _LoadRecorder(monkeypatch)


def test_entry_points_are_loaded_by_default(loads: _LoadRecorder) -> None:
    Manager()
    assert loads.groups == ["gojob"]


def test_disable_autoload_env_is_honoured(loads: _LoadRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOJOB_DISABLE_PLUGIN_AUTOLOAD", "1")
    Manager()
    assert loads.groups == []


def test_autoload_false_loads_nothing(loads: _LoadRecorder) -> None:
    Manager(autoload_plugins=False)
    assert loads.groups == []


def test_explicit_autoload_wins_over_the_env(loads: _LoadRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOJOB_DISABLE_PLUGIN_AUTOLOAD", "1")
    Manager(autoload_plugins=True)
    assert loads.groups == ["gojob"]


@pytest.fixture
def entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed distribution with a ``gojob`` entry point named ``epstore`` (a store for ``epstore://``)."""
    module = f"gojob_test_epplugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        from gojob_core import MemoryStore, hookimpl

        class EpStore(MemoryStore):
            SCHEMES = ("epstore",)

            @classmethod
            def from_url(cls, url, **options):
                return cls()

        @hookimpl
        def gojob_register_stores():
            return [EpStore]
    """))
    dist = tmp_path / "gojob_test_epplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gojob-test-epplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[gojob]\nepstore = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("GOJOB_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("GOJOB_DISABLED_PLUGINS", raising=False)
    yield module
    sys.modules.pop(module, None)


def test_entry_point_plugin_is_loaded(entry_point_plugin: str) -> None:
    mgr = Manager(store="epstore://")
    assert type(mgr.store).__name__ == "EpStore"
    assert mgr.plugins.pm.get_plugin("epstore") is sys.modules[entry_point_plugin]


def test_entry_point_plugin_not_loaded_without_autoload(entry_point_plugin: str) -> None:
    with pytest.raises(UnknownStoreError):
        Manager(store="epstore://", autoload_plugins=False)


@pytest.mark.parametrize("value", ["epstore", "other,epstore", " other , epstore "])
def test_disabled_plugins_env_blocks_a_named_plugin(entry_point_plugin: str, monkeypatch: pytest.MonkeyPatch,
                                                    value: str) -> None:
    monkeypatch.setenv("GOJOB_DISABLED_PLUGINS", value)
    with pytest.raises(UnknownStoreError) as info:
        Manager(store="epstore://")
    assert "epstore" not in info.value.installed
    mgr = Manager()
    assert mgr.plugins.pm.is_blocked("epstore")
    assert mgr.plugins.pm.get_plugin("epstore") is None


def test_disabled_plugins_env_blocks_a_named_plugin_object(monkeypatch: pytest.MonkeyPatch) -> None:
    class Named:
        __name__ = "my-named-plugin"

        @hookimpl
        def gojob_register_stores(self) -> list[type[gojob_core.Store]]:
            return [CustomStore]

    monkeypatch.setenv("GOJOB_DISABLED_PLUGINS", "my-named-plugin")
    with pytest.raises(UnknownStoreError):
        Manager(store="custom://", plugins=[Named()], autoload_plugins=False)
    monkeypatch.delenv("GOJOB_DISABLED_PLUGINS")
    assert type(Manager(store="custom://", plugins=[Named()], autoload_plugins=False).store) is CustomStore


# -- isolation -------------------------------------------------------------------------------------------------------
async def test_two_managers_do_not_share_plugins() -> None:
    rec = StateRecorder()
    backoff = FixedBackoff(0.0)
    async with _mgr(rec, backoff) as one, _mgr() as two:
        assert one.plugins.pm is not two.plugins.pm
        assert two.plugins.pm.get_name(rec) is None
        i2 = await two.schedule_job(Job(kind="plug.fails", executor=_fail), max_retries=1,
                                    backoff_strategy=None)
        await two.wait(i2, timeout=10)
        assert rec.events == []
        assert backoff.calls == []
        i1 = await one.schedule_job(Job(kind="plug.noop", executor=lambda: None))
        await one.wait(i1, timeout=10)
    assert {u for u, _ in rec.events} == {i1.uuid}


def test_two_managers_have_their_own_store_classes() -> None:
    with_plugin = Manager(store="custom://", plugins=[CustomStorePlugin()], autoload_plugins=False)
    assert type(with_plugin.store) is CustomStore
    with pytest.raises(UnknownStoreError):
        Manager(store="custom://", autoload_plugins=False)


# -- a failing hook -------------------------------------------------------------------------------------------------
class RaisingCompleted:
    @hookimpl
    def gojob_instance_completed(self, manager: Manager, instance: Instance, results: list[Any]) -> None:
        raise RuntimeError("bug in a plugin")


class RaisingStateChanged:
    @hookimpl
    def gojob_instance_state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        if state is State.PROCESSING:
            raise RuntimeError("bug in a plugin")


@pytest.mark.parametrize(("plugin", "hook"), [(RaisingCompleted, "gojob_instance_completed"),
                                              (RaisingStateChanged, "gojob_instance_state_changed")])
async def test_a_raising_hook_does_not_bring_the_manager_down(plugin: type, hook: str) -> None:
    async with _mgr(plugin()) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.one", executor=lambda: 1))
        done = await mgr.wait(inst, timeout=10)
        assert done.state is State.COMPLETED
        assert done.result == 1
        assert mgr.running
        logs = await mgr.lookup_instance_logs(Query(instance=inst))
        assert any(hook in r.message and "RuntimeError" in r.message and "bug in a plugin" in r.message
                   for r in logs), logs
        # the node goes on working
        again = await mgr.wait(await mgr.schedule_registered_job("plug.one"), timeout=10)
        assert again.state is State.COMPLETED


async def test_a_raising_hook_does_not_hide_the_event_from_other_plugins() -> None:
    rec = StateRecorder()  # registered before the raising plugin, so called after it
    async with _mgr(rec, RaisingStateChanged()) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.one", executor=lambda: 1))
        await mgr.wait(inst, timeout=10)
        text = mgr.metrics.exposition().decode()
    executed = {s.labels["kind"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "go_job_executed" for s in f.samples if s.name == "go_job_executed_total"}
    assert rec.states(inst) == [State.CREATED, State.SCHEDULED, State.PROCESSING, State.COMPLETED]
    assert executed.get("plug.one") == 1


class RaisingBackoff:
    @hookimpl
    def gojob_backoff_delay(self, instance: Instance) -> float:
        raise RuntimeError("bug in a backoff plugin")


async def test_a_raising_backoff_plugin_falls_back_to_the_default_backoff() -> None:
    async with _mgr(RaisingBackoff()) as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=1))
        done = await mgr.wait(inst, timeout=10)
        starts = await _processing_times(mgr, inst)
        logs = await mgr.lookup_instance_logs(Query(instance=inst))
    assert done.state is State.TERMINATED
    assert any("gojob_backoff_delay" in r.message for r in logs)
    assert starts[1] - starts[0] >= 0.3  # the built-in default: 0.5 s +/- 20%


async def test_a_raising_backoff_strategy_falls_back_to_the_default_backoff() -> None:
    def strategy(instance: Instance) -> float:
        raise RuntimeError("bug in a strategy")

    async with _mgr() as mgr:
        inst = await mgr.schedule_job(Job(kind="plug.fails", executor=_fail, max_retries=1,
                                          backoff_strategy=strategy))
        await mgr.wait(inst, timeout=10)
        starts = await _processing_times(mgr, inst)
        logs = await mgr.lookup_instance_logs(Query(instance=inst))
    assert any("backoff_strategy raised" in r.message for r in logs)
    assert starts[1] - starts[0] >= 0.3


class FailingStart:
    def __init__(self) -> None:
        self.later_awaited = False

    @hookimpl(tryfirst=True)
    def gojob_manager_started(self, manager: Manager) -> Any:
        async def boom() -> None:
            raise RuntimeError("cannot bind port 50051")
        return boom()


class LaterStart:
    def __init__(self) -> None:
        self.awaited = False

    @hookimpl(trylast=True)
    def gojob_manager_started(self, manager: Manager) -> Any:
        async def fine() -> None:
            self.awaited = True
        return fine()


async def test_a_failing_start_hook_raises_its_own_error_and_leaves_nothing_running() -> None:
    later = LaterStart()
    mgr = _mgr(FailingStart(), later)
    with pytest.raises(RuntimeError, match="cannot bind port 50051"):
        await mgr.start()
    assert not mgr.running and not later.awaited  # the later hook's coroutine was closed, not leaked
    async with _mgr() as again:  # nothing left behind: a new node starts as usual
        assert again.running


# -- the hook reference ------------------------------------------------------------------------------------------------
def _hookspecs() -> list[Any]:
    from gojob_core import hookspecs

    return [fn for name, fn in vars(hookspecs).items() if name.startswith("gojob_") and callable(fn)]


def _declared(fn: Any) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}:"


def test_every_hook_is_in_the_extension_guide_with_its_exact_signature() -> None:
    guide = (Path(__file__).parents[1] / "docs" / "extension-guide.md").read_text()
    specs = _hookspecs()
    assert len(specs) >= 11
    missing = [_declared(fn) for fn in specs if _declared(fn) not in guide]
    assert not missing, "hooks whose exact signature is not in docs/extension-guide.md:\n" + "\n".join(missing)


def test_every_hook_documents_each_parameter() -> None:
    for fn in _hookspecs():
        doc = inspect.getdoc(fn) or ""
        for name in inspect.signature(fn).parameters:
            assert f":param {name}:" in doc, f"{fn.__name__} does not document {name!r}"
        assert ".. versionadded::" in doc, fn.__name__


async def test_a_failing_stopping_hook_is_logged_and_the_stop_stays_graceful(caplog: pytest.LogCaptureFixture) -> None:
    started, finished = anyio.Event(), anyio.Event()

    class Failing:
        @hookimpl
        async def gojob_manager_stopping(self, manager: Manager) -> None:
            raise Boom("stopping hook")

    async def body() -> str:
        started.set()
        await anyio.sleep(0.2)
        finished.set()
        return "done"

    mgr = _mgr(Failing(), shutdown_timeout=10)
    await mgr.start()
    inst = await mgr.schedule_job(Job(kind="hook.graceful", executor=body))
    with anyio.fail_after(10):
        await started.wait()
    await mgr.stop()  # does not raise
    assert finished.is_set()  # the running instance was given its shutdown_timeout
    assert (await mgr.store.get_instance(inst.uuid)).state is State.COMPLETED  # type: ignore[union-attr]
    assert any("gojob_manager_stopping hook failed" in r.getMessage() and "stopping anyway" in r.getMessage()
               for r in caplog.records)


# -- headers and the scheduling hook -------------------------------------------------------------------------------
async def test_headers_travel_from_the_schedule_call_and_the_scheduling_hook_to_the_executor() -> None:
    seen: list[dict[str, str]] = []

    class Stamp:
        @hookimpl
        def gojob_instance_scheduling(self, manager: Manager, instance: Instance) -> None:
            instance.headers["stamped-by"] = manager.node_id

    async def body(inst: Instance) -> None:
        seen.append(dict(inst.headers))

    store = MemoryStore()
    async with _mgr(Stamp(), store=store, node_id="a") as producer, \
            Manager(store, num_workers=1, node_id="b", autoload_plugins=False) as runner:
        job = Job(kind="headers.body", executor=body)
        await runner.register_job(job)
        await producer.resize_workers(0)
        inst = await producer.schedule_job(job, headers={"request-id": "r-42"})
        assert inst.headers == {"request-id": "r-42", "stamped-by": "a"}
        done = await producer.wait(inst, timeout=10)
        assert done.headers == {"request-id": "r-42", "stamped-by": "a"}
    assert seen == [{"request-id": "r-42", "stamped-by": "a"}]  # on the other node, from the store


async def test_the_next_cron_occurrence_carries_the_headers_and_passes_the_hook_again() -> None:
    calls: list[str] = []

    class Count:
        @hookimpl
        def gojob_instance_scheduling(self, instance: Instance) -> None:
            calls.append(instance.uuid)

    async with _mgr(Count()) as mgr:
        first = await mgr.schedule_job(Job(kind="headers.cron", executor=lambda: None), crontab_spec="* * * * *",
                                       headers={"k": "v"})
        await mgr._chain_next_occurrence(first)
        found = await mgr.lookup_instances(gojob_core.Query(kind="headers.cron"))
        [follow] = [i for i in found if i.uuid != first.uuid]
    assert follow.headers == {"k": "v"} and calls == [first.uuid, follow.uuid]


async def test_bad_headers_are_refused_at_the_call() -> None:
    async with _mgr() as mgr:
        job = Job(kind="headers.bad", executor=lambda: None)
        for bad, shown in (({"n": 1}, "'n': 1"), (["x"], "['x']")):
            with pytest.raises(gojob_core.ScheduleError, match=r"job 'headers.bad': headers must") as caught:
                await mgr.schedule_job(job, headers=bad)  # type: ignore[arg-type]
            assert shown in str(caught.value)
        assert await mgr.lookup_instances(gojob_core.Query(kind="headers.bad")) == []


async def test_a_failing_scheduling_hook_is_reported_and_the_instance_is_scheduled(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        def gojob_instance_scheduling(self, instance: Instance) -> None:
            raise Boom("no headers today")

    async with _mgr(Broken()) as mgr:
        inst = await mgr.schedule_job(Job(kind="headers.broken", executor=lambda: None))
        assert (await mgr.wait(inst, timeout=10)).state is State.COMPLETED
    assert any("gojob_instance_scheduling" in r.getMessage() for r in caplog.records)

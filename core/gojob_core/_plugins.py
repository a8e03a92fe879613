"""The one place the core calls hooks: a typed facade over the Manager's pluggy plugin manager."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import UnknownStoreError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._instance import Instance
    from ._job import Job
    from ._manager import Manager
    from ._runners import ExecutorRunner
    from ._state import State
    from .abc import Store

__all__ = ["ENTRY_POINT_GROUP", "Plugins"]

_log = logging.getLogger("gojob")


def _hook_failed(hook: str, instance: Instance, exc: Exception) -> None:
    _log.error("plugin hook %s raised for instance %s of job %r", hook, instance.uuid, instance.kind, exc_info=exc)
    try:
        instance.errorf("plugin hook %s raised %s: %s", hook, type(exc).__name__, exc)
    except RuntimeError:  # an instance not attached to a manager
        pass

ENTRY_POINT_GROUP = "gojob"


class Plugins:
    """Builds the plugin manager (specs, built-ins, entry points, given plugins) and calls its hooks."""

    def __init__(self, builtins: Iterable[object], plugins: Iterable[object] = (),
                 autoload: bool | None = None) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        for name in filter(None, os.environ.get("GOJOB_DISABLED_PLUGINS", "").split(",")):
            pm.set_blocked(name.strip())
        for plugin in builtins:
            pm.register(plugin, name=f"gojob.builtin.{type(plugin).__name__}")
        if autoload is None:
            autoload = not os.environ.get("GOJOB_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for plugin in plugins:
            pm.register(plugin)
        pm.hook.gojob_addhooks.call_historic(kwargs={"pluginmanager": pm})
        pm.check_pending()
        self.pm = pm
        self._hook = pm.hook
        self._state_changed_impls: list[tuple[Any, tuple[int, ...]]] | None = None
        self._completed_impls: list[tuple[Any, tuple[int, ...]]] | None = None
        self._scheduling_impls: list[tuple[Any, tuple[int, ...]]] | None = None

    def freeze(self) -> None:
        """Resolve the per-instance hooks once (called at Manager start): they run several times per
        instance, so they skip pluggy's generic dispatch when no implementation is a wrapper."""
        self._state_changed_impls = self._direct("gojob_instance_state_changed", ("manager", "instance", "state"))
        self._completed_impls = self._direct("gojob_instance_completed", ("manager", "instance", "results"))
        self._scheduling_impls = self._direct("gojob_instance_scheduling", ("manager", "instance"))

    def _direct(self, name: str, argorder: tuple[str, ...]) -> list[tuple[Any, tuple[int, ...]]] | None:
        impls = getattr(self._hook, name).get_hookimpls()
        if any(i.hookwrapper or i.wrapper for i in impls):
            return None
        # pluggy calls the last registered first, passing only the arguments each one names
        return [(i.function, tuple(argorder.index(a) for a in i.argnames)) for i in reversed(impls)]

    # -- registration ------------------------------------------------------------------------------
    def store_classes(self) -> dict[str, type[Store]]:
        """URL scheme -> store class, from every plugin; a scheme claimed twice names both classes."""
        found: dict[str, type[Store]] = {}
        for classes in self._hook.gojob_register_stores():
            for cls in classes or ():
                for scheme in cls.SCHEMES:
                    other = found.get(scheme)
                    if other is not None and other is not cls:
                        raise ValueError(f"store scheme {scheme!r} is claimed by both "
                                         f"{other.__module__}.{other.__qualname__} and "
                                         f"{cls.__module__}.{cls.__qualname__}")
                    found[scheme] = cls
        return found

    def store_from_url(self, url: str, options: dict[str, Any]) -> Store:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        classes = self.store_classes()
        cls = classes.get(scheme)
        if cls is None:
            raise UnknownStoreError(url, scheme, list(classes))
        return cls.from_url(url, **options)

    def jobs(self, manager: Manager) -> list[Job]:
        return [job for jobs in self._hook.gojob_register_jobs(manager=manager) for job in (jobs or ())]

    def register_metrics(self, manager: Manager, registry: CollectorRegistry) -> None:
        self._hook.gojob_register_metrics(manager=manager, registry=registry)

    def executor_runner(self, manager: Manager, job: Job) -> ExecutorRunner:
        runner = self._hook.gojob_executor_runner(manager=manager, job=job)
        if runner is None:
            raise RuntimeError(f"no plugin provides a runner for job {job.kind!r}")
        return runner  # type: ignore[no-any-return]

    # -- per instance ------------------------------------------------------------------------------
    # A plugin's bug must not take the node down or strand an instance: per-instance hooks that raise
    # are reported (on the instance's log and the "gojob" logger) and the instance goes on.
    def state_changed(self, manager: Manager, instance: Instance, state: State) -> None:
        impls = self._state_changed_impls
        if impls != []:
            self._each("gojob_instance_state_changed", impls, ("manager", "instance", "state"),
                       (manager, instance, state))

    def scheduling(self, manager: Manager, instances: list[Instance]) -> None:
        impls = self._scheduling_impls
        if impls != []:
            for instance in instances:
                self._each("gojob_instance_scheduling", impls, ("manager", "instance"), (manager, instance))

    def completed(self, manager: Manager, instance: Instance, results: list[Any]) -> None:
        impls = self._completed_impls
        if impls != []:
            self._each("gojob_instance_completed", impls, ("manager", "instance", "results"),
                       (manager, instance, results))

    def _each(self, hook: str, impls: list[tuple[Any, tuple[int, ...]]] | None, names: tuple[str, ...],
              args: tuple[Any, ...]) -> None:
        """Call every implementation of a per-instance hook; one failing does not hide the event
        from the others (each failure is reported). ``args`` follow ``names``, the hook's order."""
        if impls is None:  # a wrapper is registered: pluggy must dispatch
            try:
                getattr(self._hook, hook)(**dict(zip(names, args)))
            except Exception as exc:
                _hook_failed(hook, args[1], exc)
            return
        for fn, idx in impls:
            try:
                fn(*[args[i] for i in idx])
            except Exception as exc:
                _hook_failed(hook, args[1], exc)

    def terminated(self, manager: Manager, instance: Instance, error: BaseException) -> BaseException | bool | None:
        try:
            return self._hook.gojob_instance_terminated(  # type: ignore[no-any-return]
                manager=manager, instance=instance, error=error)
        except Exception as exc:
            _hook_failed("gojob_instance_terminated", instance, exc)
            return None

    def backoff_delay(self, instance: Instance) -> float | None:
        try:
            return self._hook.gojob_backoff_delay(instance=instance)  # type: ignore[no-any-return]
        except Exception as exc:
            _hook_failed("gojob_backoff_delay", instance, exc)
            return None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def manager_started(self, manager: Manager) -> None:
        await _await_all(self._hook.gojob_manager_started(manager=manager))

    async def manager_stopping(self, manager: Manager) -> None:
        await _await_all(self._hook.gojob_manager_stopping(manager=manager))


async def _await_all(results: list[Any]) -> None:
    """Await the awaitables lifecycle hooks returned, in order; if one fails, close the rest
    (never leave a coroutine unawaited) and raise."""
    pending = [r for r in results if inspect.isawaitable(r)]
    try:
        while pending:
            await pending.pop(0)
    except BaseException:
        for rest in pending:
            close = getattr(rest, "close", None)
            if close is not None:
                close()
        raise

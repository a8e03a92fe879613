"""Every extension point of gojob, as pluggy hookspecs (project name ``"gojob"``).

Plugins are modules or objects with functions marked ``@gojob_core.hookimpl``, found through the
``gojob`` entry-point group or passed as ``Manager(plugins=[...])``. Each Manager has its own plugin
manager, so managers in one process never share plugin state.

Two shapes of hook:

- *registration* hooks run once when a Manager is built or started, return classes or objects, and
  do no I/O: :func:`gojob_register_stores`, :func:`gojob_register_jobs`,
  :func:`gojob_register_metrics`, :func:`gojob_executor_runner`.
- *event and decision* hooks run per instance: :func:`gojob_instance_scheduling`,
  :func:`gojob_instance_state_changed`, :func:`gojob_instance_completed`,
  :func:`gojob_instance_terminated`, :func:`gojob_backoff_delay`.

Lifecycle hooks (:func:`gojob_manager_started`, :func:`gojob_manager_stopping`) may return an
awaitable, which the Manager awaits. Hook arguments are only ever added, never removed or renamed.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._instance import Instance
    from ._job import Job
    from ._manager import Manager
    from ._runners import ExecutorRunner
    from ._state import State
    from .abc import Store

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "gojob"
_spec = pluggy.HookspecMarker(PROJECT_NAME)
hookspec = _spec
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- plugin management ------------------------------------------------------------------------------
@_spec(historic=True)
def gojob_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add hookspecs of a plugin's own (e.g. ``gojob_grpc_*``) with ``pluginmanager.add_hookspecs``.

    :param pluginmanager: the Manager's pluggy plugin manager.

    .. versionadded:: 0.1
    """


# -- registration -----------------------------------------------------------------------------------
@_spec
def gojob_register_stores() -> list[type[Store]]:
    """Store classes this plugin provides; each declares its URL ``SCHEMES`` and a ``from_url``.

    ``Manager(store="valkey://...")`` picks the class whose SCHEMES holds the URL's scheme.

    :returns: a list of :class:`gojob_core.abc.Store` subclasses.

    .. versionadded:: 0.1
    """


@_spec
def gojob_register_jobs(manager: Manager) -> list[Job]:
    """Job definitions this plugin contributes; registered on every Manager when it starts.

    :param manager: the Manager being started.
    :returns: :class:`gojob_core.Job` objects; a kind the application registered already is left alone.

    .. versionadded:: 0.1
    """


@_spec
def gojob_register_metrics(manager: Manager, registry: CollectorRegistry) -> None:
    """Add the plugin's own Prometheus collectors to the Manager's registry.

    Never put instance arguments or results in labels.

    :param manager: the Manager being built.
    :param registry: its Prometheus registry (``manager.metrics.registry``).

    .. versionadded:: 0.1
    """


@_spec(firstresult=True)
def gojob_executor_runner(manager: Manager, job: Job) -> ExecutorRunner | None:
    """The runner that runs this job's executor (thread, event loop, process, ...).

    Called once per job at registration. Stops at first non-None result; the built-in one runs async
    executors on the event loop and sync ones in a worker thread.

    :param manager: the Manager registering the job.
    :param job: the job being registered.
    :returns: an ``ExecutorRunner`` (``run(fn, args, kwargs, ctx)``), or None to leave the choice to others.

    .. versionadded:: 0.1
    """


# -- per-instance events and decisions -------------------------------------------------------------------
@_spec
def gojob_instance_state_changed(manager: Manager, instance: Instance, state: State) -> None:
    """An instance changed state on this node (the store has the matching history record).

    :param manager: the node that made the change.
    :param instance: the instance, as this node sees it after the change.
    :param state: the state it entered.

    .. versionadded:: 0.1
    """


@_spec
def gojob_instance_scheduling(manager: Manager, instance: Instance) -> None:
    """An instance is about to be written to the store by this node (scheduled, or the next occurrence of
    a recurring schedule): the last moment to add to ``instance.headers``, which travel with it through
    every store to the node that runs it (a trace context, say). Called once per instance, so keep it
    quick; a failure is reported and the instance is scheduled all the same.

    :param manager: the node that schedules it.
    :param instance: the instance, SCHEDULED, not yet in the store.

    .. versionadded:: 0.2
    """


@_spec
def gojob_instance_completed(manager: Manager, instance: Instance, results: list[Any]) -> None:
    """An attempt succeeded; ``results`` as for the complete processor.

    :param manager: the node that ran the attempt.
    :param instance: the instance (its ``result`` is set, the COMPLETED record not written yet).
    :param results: the items of a returned tuple, ``[value]``, or ``[]``.

    .. versionadded:: 0.1
    """


@_spec(firstresult=True)
def gojob_instance_terminated(manager: Manager, instance: Instance,
                              error: BaseException) -> BaseException | bool | None:
    """An attempt failed (error or timeout): return a replacement error, ``False`` to clear the error
    (the instance completes), or None to leave it. Runs before the job's terminate processor, which
    receives the error as this hook left it. Stops at first non-None result.

    :param manager: the node that ran the attempt.
    :param instance: the instance whose attempt failed.
    :param error: the executor's exception, or a :class:`gojob_core.JobTimeoutError`.
    :returns: a replacement error, ``False`` to clear it, or None.

    .. versionadded:: 0.1
    """


@_spec(firstresult=True)
def gojob_backoff_delay(instance: Instance) -> float | None:
    """Seconds to wait before retrying a failed instance that has no ``backoff_strategy`` of its own.

    Stops at first non-None result; the built-in default is exponential with jitter.

    :param instance: the failed instance (``attempts`` counts the attempt that failed).
    :returns: seconds, or None to leave the choice to other plugins and the default.

    .. versionadded:: 0.1
    """


# -- lifecycle ----------------------------------------------------------------------------------------
@_spec
def gojob_manager_started(manager: Manager) -> Awaitable[None] | None:
    """The Manager started (store connected, workers running). May return an awaitable.

    :param manager: the Manager that started.
    :returns: None, or an awaitable the Manager awaits (an error in it makes ``start()`` raise).

    .. versionadded:: 0.1
    """


@_spec
def gojob_manager_stopping(manager: Manager) -> Awaitable[None] | None:
    """The Manager is about to stop. May return an awaitable.

    :param manager: the Manager about to stop.
    :returns: None, or an awaitable the Manager awaits (an error in it is logged; the stop goes on).

    .. versionadded:: 0.1
    """

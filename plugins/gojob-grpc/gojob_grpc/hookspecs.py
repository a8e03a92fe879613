"""Hooks that gojob-grpc publishes for other plugins (project name ``"gojob"``, every hook ``gojob_grpc_*``).

They are added to a Manager's plugin manager by ``gojob_addhooks`` (from the ``gojob`` entry point
``grpc = "gojob_grpc.plugin"``, and from :class:`gojob_grpc.ServerPlugin`), so a plugin can implement
them without importing gojob_grpc at all.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pluggy
from gojob_core.hookspecs import PROJECT_NAME

if TYPE_CHECKING:
    import grpc.aio
    from gojob_core import Manager

__all__ = ["add_hookspecs"]

_spec = pluggy.HookspecMarker(PROJECT_NAME)


# -- server -----------------------------------------------------------------------------------------
@_spec
def gojob_grpc_add_services(server: grpc.aio.Server, manager: Manager) -> None:
    """Add gRPC services of the plugin's own to a node's server before it starts serving.

    Called once per server start, after ``gojob.v1.JobService`` is added. Use the generated
    ``add_XServicer_to_server(servicer, server)`` or ``server.add_generic_rpc_handlers(...)``. The
    node's token check and TLS apply to these services too.

    :param server: the node's ``grpc.aio.Server`` (not started yet).
    :param manager: the Manager the server serves.

    .. versionadded:: 0.1
    """


def add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Add this module's hookspecs to a plugin manager, once (a second call is a no-op)."""
    caller = getattr(pluginmanager.hook, "gojob_grpc_add_services", None)
    if caller is None or caller.spec is None:
        pluginmanager.add_hookspecs(sys.modules[__name__])

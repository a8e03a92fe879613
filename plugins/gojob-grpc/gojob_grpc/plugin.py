"""Entry point of the ``gojob`` group: publishes the ``gojob_grpc_*`` hookspecs on every Manager.

It starts no server: a node serves the API when it runs :class:`gojob_grpc.ServerPlugin` (passed as
``Manager(plugins=[ServerPlugin(...)])``) or under ``gojob serve``.
"""

from __future__ import annotations

import pluggy
from gojob_core import hookimpl

from .hookspecs import add_hookspecs


@hookimpl
def gojob_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    add_hookspecs(pluginmanager)

"""gojob over gRPC: serve a node's Manager as ``gojob.v1.JobService`` and talk to it.

- :class:`Client`: the typed async client (``async with Client("127.0.0.1:50051") as c: await c.schedule(...)``).
- :class:`ServerPlugin`: serve the API from a Manager the application runs
  (``Manager(plugins=[ServerPlugin(listen=..., token=...)])``).
- :class:`JobServer`: the server itself, for running it by hand next to a Manager.
- ``gojob serve`` runs a node in a process of its own; ``jobctl`` manages nodes from a shell.

Names are loaded on first use, so that the ``gojob`` entry point (``gojob_grpc.plugin``), which every
Manager loads, does not import grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import Client as Client
    from ._client import InstanceEvent as InstanceEvent
    from ._client import InstanceWatch as InstanceWatch
    from ._client import JobInfo as JobInfo
    from ._client import NodeInfo as NodeInfo
    from ._client import WorkersInfo as WorkersInfo
    from ._server import JobServer as JobServer
    from ._server import ServerPlugin as ServerPlugin
    from .errors import DeadlineExceededError as DeadlineExceededError
    from .errors import InvalidArgumentError as InvalidArgumentError
    from .errors import NotFoundError as NotFoundError
    from .errors import RpcError as RpcError
    from .errors import UnauthenticatedError as UnauthenticatedError
    from .errors import UnavailableError as UnavailableError

__all__ = [
    "Client",
    "DeadlineExceededError",
    "InstanceEvent",
    "InstanceWatch",
    "InvalidArgumentError",
    "JobInfo",
    "JobServer",
    "NodeInfo",
    "NotFoundError",
    "RpcError",
    "ServerPlugin",
    "UnauthenticatedError",
    "UnavailableError",
    "WorkersInfo",
]

_WHERE = {
    "Client": "._client", "InstanceEvent": "._client", "InstanceWatch": "._client", "JobInfo": "._client",
    "NodeInfo": "._client", "WorkersInfo": "._client", "JobServer": "._server", "ServerPlugin": "._server",
    "DeadlineExceededError": ".errors", "InvalidArgumentError": ".errors", "NotFoundError": ".errors",
    "RpcError": ".errors", "UnauthenticatedError": ".errors", "UnavailableError": ".errors",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gojob-grpc")
        except PackageNotFoundError:
            return "0.0.0+unknown"
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gojob_grpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])

"""gojob's etcd store: ``Manager(store="etcd://127.0.0.1:2379")`` (``etcds://`` for TLS).

Runs on the asyncio backend only: its client, aetcd, is built on grpc.aio, which does not run under
trio (use gojob-store-valkey there). Only one etcd client library may be imported per process.

The names below are imported on first use, so that loading the plugin's entry point (which every
Manager does) imports neither grpc nor aetcd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import EtcdOptions as EtcdOptions
    from ._client import parse_etcd_url as parse_etcd_url
    from .store import EtcdStore as EtcdStore

__all__ = ["EtcdOptions", "EtcdStore", "parse_etcd_url"]


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":
        from .store import EtcdStore

        return EtcdStore
    if name in ("EtcdOptions", "parse_etcd_url"):
        from . import _client

        return getattr(_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

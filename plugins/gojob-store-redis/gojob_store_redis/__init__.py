"""gojob's Redis store: ``Manager(store="redis://host:6379/0")`` (``rediss://`` for TLS).

Runs on the asyncio backend only (its wire is an asyncio protocol; gojob-store-valkey runs on trio and
talks to Redis too). The store is imported on first use, so that loading the plugin's entry point
(which every Manager does) does not import redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import RedisStore as RedisStore

__all__ = ["RedisStore"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from .store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

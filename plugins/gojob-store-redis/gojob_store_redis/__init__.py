"""gojob's Redis store: ``Manager(store="redis://host:6379/0")`` (``rediss://`` for TLS).

Runs on the asyncio backend only (redis.asyncio does not run under trio; use gojob-store-valkey there).
"""

from __future__ import annotations

from .store import RedisStore as RedisStore

__all__ = ["RedisStore"]

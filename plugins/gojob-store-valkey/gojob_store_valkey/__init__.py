"""gojob's Valkey store: ``Manager(store="valkey://host:6379/0")`` (``valkeys://`` for TLS).

Built on valkey-glide, which runs on both anyio backends (asyncio and trio). Works against Redis 7 too.
"""

from __future__ import annotations

from .store import ValkeyStore as ValkeyStore

__all__ = ["ValkeyStore"]

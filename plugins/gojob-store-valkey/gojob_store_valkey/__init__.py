"""gojob's Valkey store: ``Manager(store="valkey://host:6379/0")`` (``valkeys://`` for TLS).

Built on valkey-glide, which runs on both anyio backends (asyncio and trio). Works against Redis 7 too.
The store is imported on first use, so that loading the plugin's entry point (which every Manager
does) does not import valkey-glide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import ValkeyStore as ValkeyStore

__all__ = ["ValkeyStore"]


def __getattr__(name: str) -> Any:
    if name == "ValkeyStore":
        from .store import ValkeyStore

        return ValkeyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

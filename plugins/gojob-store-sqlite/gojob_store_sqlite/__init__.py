"""gojob's SQLite store: ``Manager(store="sqlite:///var/lib/myapp/jobs.db")``.

One file, shared by the processes of one host (WAL mode); no server. The store is imported on first
use, so that loading the plugin's entry point (which every Manager does) imports nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import SqliteStore as SqliteStore
    from .store import parse_sqlite_url as parse_sqlite_url

__all__ = ["SqliteStore", "parse_sqlite_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

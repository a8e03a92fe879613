"""gojob's PostgreSQL store: ``Manager(store="postgresql://user:pw@host:5432/db?schema=jobs")``.

Runs on the asyncio backend only (asyncpg is an asyncio library). The names below are imported on
first use, so that loading the plugin's entry point (which every Manager does) does not import asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import PostgresOptions as PostgresOptions
    from .store import PostgresStore as PostgresStore
    from .store import parse_postgres_url as parse_postgres_url

__all__ = ["PostgresOptions", "PostgresStore", "parse_postgres_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Entry point of the ``gojob`` group: registers the ``postgresql://`` and ``postgres://`` store.

Every Manager loads this module, so it stays light: the store (with asyncpg) is imported only when a
Manager is given a PostgreSQL URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

PostgresStoreFactory = lazy_store("gojob_store_postgres.store:PostgresStore", schemes=("postgresql", "postgres"),
                                  name="postgres", anyio_backends=("asyncio",))


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [PostgresStoreFactory]

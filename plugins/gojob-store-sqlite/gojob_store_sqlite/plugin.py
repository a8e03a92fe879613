"""Entry point of the ``gojob`` group: registers the ``sqlite://`` store.

Every Manager loads this module, so it stays light: the store is imported only when a Manager is given
a sqlite URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

SqliteStoreFactory = lazy_store("gojob_store_sqlite.store:SqliteStore", schemes=("sqlite",), name="sqlite",
                                anyio_backends=("asyncio", "trio"))


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [SqliteStoreFactory]

"""Entry point of the ``gojob`` group: registers the ``mysql://`` (and ``mariadb://``) store.

Every Manager loads this module, so it stays light: the store (and asyncmy) is imported only when a
Manager is given a mysql URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

MysqlStoreFactory = lazy_store("gojob_store_mysql.store:MysqlStore", schemes=("mysql", "mariadb"), name="mysql",
                               anyio_backends=("asyncio",))


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [MysqlStoreFactory]

"""Entry point of the ``gojob`` group: registers the ``etcd://`` and ``etcds://`` store.

Every Manager loads this module, so it stays light: the store (with grpc and aetcd) is imported only
when a Manager is given an etcd URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

EtcdStoreFactory = lazy_store("gojob_store_etcd.store:EtcdStore", schemes=("etcd", "etcds"), name="etcd",
                              anyio_backends=("asyncio",))


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [EtcdStoreFactory]

"""Entry point of the ``gojob`` group: registers the ``etcd://`` and ``etcds://`` store.

Every Manager loads this module, so it stays light: the store (with grpc and aetcd) is imported only
when a Manager is given an etcd URL.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gojob_core import Store, hookimpl


class EtcdStoreFactory(Store):
    """Stands for :class:`gojob_store_etcd.EtcdStore` in the scheme registry; ``from_url`` builds one."""

    SCHEMES: ClassVar[tuple[str, ...]] = ("etcd", "etcds")
    ANYIO_BACKENDS: ClassVar[tuple[str, ...]] = ("asyncio",)
    name = "etcd"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        from .store import EtcdStore

        return EtcdStore.from_url(url, **options)


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [EtcdStoreFactory]

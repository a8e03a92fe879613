"""Entry point of the ``gojob`` group: registers the ``valkey://`` and ``valkeys://`` store.

Every Manager loads this module, so it stays light: the store (with valkey-glide) is imported only
when a Manager is given a Valkey URL.
"""

from __future__ import annotations

from gojob_core import Store, hookimpl
from gojob_core.abc import lazy_store

ValkeyStoreFactory = lazy_store("gojob_store_valkey.store:ValkeyStore", schemes=("valkey", "valkeys"),
                                name="valkey")


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [ValkeyStoreFactory]

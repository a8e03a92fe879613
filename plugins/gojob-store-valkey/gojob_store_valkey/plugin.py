"""Entry point of the ``gojob`` group: registers the ``valkey://`` and ``valkeys://`` store."""

from __future__ import annotations

from gojob_core import Store, hookimpl

from .store import ValkeyStore


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [ValkeyStore]

"""Entry point of the ``gojob`` group: registers the ``redis://`` and ``rediss://`` store."""

from __future__ import annotations

from gojob_core import Store, hookimpl

from .store import RedisStore


@hookimpl
def gojob_register_stores() -> list[type[Store]]:
    return [RedisStore]

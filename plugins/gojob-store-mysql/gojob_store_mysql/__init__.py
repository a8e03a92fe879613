"""gojob's MySQL/MariaDB store: ``Manager(store="mysql://user:password@host:3306/jobs")``.

MySQL 8.0.1+ or MariaDB 10.6+ on InnoDB; many nodes share one queue, history and log. The store is
imported on first use, so that loading the plugin's entry point (which every Manager does) imports
nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import MysqlOptions as MysqlOptions
    from .store import MysqlStore as MysqlStore
    from .store import parse_mysql_url as parse_mysql_url

__all__ = ["MysqlOptions", "MysqlStore", "parse_mysql_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

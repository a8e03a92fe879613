"""The public surface of gojob_core: a sorted, pinned ``__all__``, clean module names, typing marker, version."""

from __future__ import annotations

import importlib.resources

import gojob_core
import pytest

#: The public names. Adding one is a decision: update this list in the same change.
PINNED_ALL = [
    "PLACEHOLDER",
    "ArgumentError",
    "BlockingManager",
    "Context",
    "CorruptRecordError",
    "CronTrigger",
    "DateTrigger",
    "GojobError",
    "Instance",
    "InstanceNotFoundError",
    "IntervalTrigger",
    "InvalidJobError",
    "Job",
    "JobCanceledError",
    "JobTimeoutError",
    "KvBackend",
    "KvStore",
    "LogLevel",
    "LogRecord",
    "Manager",
    "MemoryKvBackend",
    "MemoryStore",
    "Outcome",
    "Query",
    "Schedule",
    "ScheduleError",
    "ScheduleNotFoundError",
    "State",
    "StateRecord",
    "Store",
    "StoreError",
    "Trigger",
    "UnknownJobError",
    "UnknownStoreError",
    "UnserializableArgumentError",
    "WaitTimeoutError",
    "hookimpl",
]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then functions, each alphabetical."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted() -> None:
    assert gojob_core.__all__ == sorted(gojob_core.__all__, key=_isort_key)


def test_all_is_pinned() -> None:
    assert gojob_core.__all__ == PINNED_ALL


def test_all_has_no_duplicates() -> None:
    assert len(set(gojob_core.__all__)) == len(gojob_core.__all__)


@pytest.mark.parametrize("name", PINNED_ALL)
def test_every_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from gojob_core import {name}", namespace)  # the way users import it
    assert namespace[name] is getattr(gojob_core, name)


@pytest.mark.parametrize("name", [n for n in PINNED_ALL if isinstance(getattr(gojob_core, n), type)])
def test_classes_report_the_package_as_their_module(name: str) -> None:
    cls = getattr(gojob_core, name)
    assert cls.__module__ == "gojob_core"
    assert cls.__qualname__ == name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from gojob_core import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == sorted(PINNED_ALL)


def test_errors_share_one_base() -> None:
    errors = [getattr(gojob_core, n) for n in PINNED_ALL
              if isinstance(getattr(gojob_core, n), type) and issubclass(getattr(gojob_core, n), BaseException)]
    assert errors
    for err in errors:
        assert issubclass(err, gojob_core.GojobError), err


def test_py_typed_marker_is_shipped() -> None:
    marker = importlib.resources.files("gojob_core").joinpath("py.typed")
    assert marker.is_file()


def test_version_is_a_string() -> None:
    version = gojob_core.__version__
    assert isinstance(version, str)
    assert version
    assert version[0].isdigit()


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        gojob_core.no_such_name  # noqa: B018
    assert not hasattr(gojob_core, "no_such_name")


def test_hookimpl_is_the_gojob_marker() -> None:
    import pluggy

    assert isinstance(gojob_core.hookimpl, pluggy.HookimplMarker)
    assert gojob_core.hookimpl.project_name == "gojob"


def test_placeholder_is_question_mark() -> None:
    assert gojob_core.PLACEHOLDER == "?"

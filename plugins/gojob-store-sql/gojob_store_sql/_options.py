"""Checking store URLs and options: one ValueError naming the URL, the parameter and the value."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl

from ._dialect import check_identifier

__all__ = ["integer", "name", "query_params", "seconds"]


def _fail(url: str, message: str) -> ValueError:
    return ValueError(f"store URL {url!r}: {message}")


def query_params(url: str, query: str, known: set[str] | frozenset[str]) -> dict[str, str]:
    """The ``?a=b&c=d`` parameters of ``url`` (the last value of a repeated one); an unknown one raises."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise _fail(url, f"cannot read its parameters: {exc}") from None
    params = dict(pairs)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise _fail(url, f"unknown parameter(s) {unknown} (known: {sorted(known)})")
    return params


def seconds(url: str, param: str, value: Any, *, zero: bool = False) -> float:
    """A positive (or, with ``zero``, non-negative) finite number of seconds, from text or a number."""
    try:
        f = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f) or f < 0 or (f == 0 and not zero):
        raise _fail(url, f"{param} must be a {'non-negative' if zero else 'positive'} number of seconds, "
                         f"got {value!r}")
    return f


def integer(url: str, param: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer within [minimum, maximum], from text or an int."""
    n: int | None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().lstrip("+").isdigit():
        n = int(value)
    else:
        n = None
    if n is None or n < minimum or (maximum is not None and n > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise _fail(url, f"{param} must be an integer {bound}, got {value!r}")
    return n


def name(url: str, param: str, value: Any, *, prefix: bool = False) -> str:
    """A plain SQL name (or table prefix)."""
    try:
        return check_identifier(value, param, prefix=prefix)
    except ValueError as exc:
        raise _fail(url, str(exc)) from None

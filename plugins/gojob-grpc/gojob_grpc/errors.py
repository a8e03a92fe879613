"""What :class:`gojob_grpc.Client` raises when a call fails, one class per kind of failure.

::

    GojobError (gojob_core)
    └── RpcError                                 any failed call: .code, .details, .field, .error_type
        ├── InvalidArgumentError (ValueError)    INVALID_ARGUMENT: a bad field; .field names it
        ├── NotFoundError (LookupError)          NOT_FOUND: unknown instance uuid or job kind
        ├── UnauthenticatedError                 UNAUTHENTICATED / PERMISSION_DENIED: no or wrong token
        ├── UnavailableError (ConnectionError)   UNAVAILABLE: no node at the target, TLS mismatch, node stopping
        └── DeadlineExceededError (TimeoutError) DEADLINE_EXCEEDED: the call or a Wait ran out of time

``field`` is the request field the node rejected (``"crontab_spec"``, ``"arguments"``, ``"uuid"``...),
``parameter`` the executor parameter for an argument error, and ``error_type`` the name of the gojob
error the node raised (``"ArgumentError"``, ``"ScheduleError"``...), when the node said so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from gojob_core import GojobError

__all__ = [
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
]

#: trailing-metadata keys the server sets on a rejected call
FIELD_KEY = "gojob-field"
ERROR_KEY = "gojob-error"
PARAMETER_KEY = "gojob-parameter"


class RpcError(GojobError):
    """A call to a gojob node failed."""

    def __init__(self, code: grpc.StatusCode, details: str, *, field: str | None = None,
                 parameter: str | None = None, error_type: str | None = None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field
        self.parameter = parameter
        self.error_type = error_type


class InvalidArgumentError(RpcError, ValueError):
    """The node rejected a field of the request (INVALID_ARGUMENT)."""


class NotFoundError(RpcError, LookupError):
    """No instance with that uuid, or no job of that kind, on the node (NOT_FOUND)."""


class UnauthenticatedError(RpcError):
    """The call carried no token or a wrong one (UNAUTHENTICATED), or was not allowed (PERMISSION_DENIED)."""


class UnavailableError(RpcError, ConnectionError):
    """No node answered at the target, the TLS handshake failed, or the node is stopping (UNAVAILABLE)."""


class DeadlineExceededError(RpcError, TimeoutError):
    """The call's deadline passed, or a Wait gave up before the instance was final (DEADLINE_EXCEEDED)."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def from_grpc(error: grpc.RpcError) -> RpcError:
    """The RpcError subclass for a failed grpc call."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    details: str = error.details() or ""  # type: ignore[attr-defined]
    meta = _metadata(error.trailing_metadata())  # type: ignore[attr-defined]
    cls = _BY_CODE.get(code, RpcError)
    return cls(code, details, field=meta.get(FIELD_KEY), parameter=meta.get(PARAMETER_KEY),
               error_type=meta.get(ERROR_KEY))


def _metadata(md: Iterable[Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in md or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out.setdefault(str(key), str(value))
    return out

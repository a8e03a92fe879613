"""The jobs module of the ``gojob serve`` node in the hostile-input scenario (``--jobs fault_serve_jobs``)."""

from __future__ import annotations

import gojob_core as gojob


async def echo(x: int) -> int:
    return x


echo_job = gojob.Job(kind="echo", executor=echo)

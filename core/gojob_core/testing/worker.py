"""A worker node in a process of its own, for multi-process store tests (any store; used by the Valkey,
Redis and etcd suites, and by third-party stores).

Usage: ``python -m gojob_core.testing.worker STORE_URL NODE_ID LEASE_TIME NUM_WORKERS OUT_DIR``

Builds a Manager on the store URL (the URL carries the test's own key ``prefix``) under the given
node id, registers the test jobs and runs until SIGTERM or SIGINT, then stops gracefully and exits 0.

- ``record(i)`` appends the line ``i`` to ``OUT_DIR/NODE_ID.ran`` (written and flushed before the
  executor returns, so a line is there for every run this node started and finished).
- ``block(instance)`` sleeps for an hour on the instance's first attempt and returns this node's id
  on any later attempt (a re-run after the first node was killed finishes at once).

``OUT_DIR/NODE_ID.ready`` (holding the PID) appears once the Manager is started and the signal
handler is installed: from then on the node claims work and SIGTERM means a graceful stop.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio

from gojob_core import Instance, Job, Manager


def main(argv: list[str]) -> int:
    url, node, lease, workers, out_dir = argv[0], argv[1], float(argv[2]), int(argv[3]), Path(argv[4])

    async def run() -> None:
        with open(out_dir / f"{node}.ran", "a", encoding="utf-8") as out:

            async def record(i: int) -> None:
                out.write(f"{i}\n")
                out.flush()

            async def block(instance: Instance) -> str:
                if instance.attempts == 1:
                    await anyio.sleep(3600)
                return node

            async with Manager(url, num_workers=workers, node_id=node, lease_time=lease,
                               shutdown_timeout=5.0) as mgr:
                await mgr.register_job(Job(kind="record", executor=record))
                await mgr.register_job(Job(kind="block", executor=block))
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    tmp = out_dir / f"{node}.ready.tmp"
                    tmp.write_text(str(os.getpid()), encoding="utf-8")
                    tmp.rename(out_dir / f"{node}.ready")
                    async for _ in signals:
                        break

    anyio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

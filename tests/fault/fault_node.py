"""A node of the fault suite in a process of its own.

Usage: ``python fault_node.py STORE_URL NODE_ID LEASE_TIME NUM_WORKERS OUT_DIR``

Runs a Manager on the store under the given node id with the jobs of :mod:`fault_jobs`, recording to
``OUT_DIR/NODE_ID.events`` (incarnation: this process's id), until SIGTERM or SIGINT (a graceful stop,
exit 0). The ``crash`` job ends the process with ``os._exit(70)``, as a crashing extension would.
``OUT_DIR/NODE_ID-PID.ready`` appears once the Manager is started and claims work.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_jobs import CRASH_EXIT, Recorder, make_jobs  # noqa: E402
from gojob_core import Manager  # noqa: E402


def main(argv: list[str]) -> int:
    url, node, lease, workers, out_dir = argv[0], argv[1], float(argv[2]), int(argv[3]), Path(argv[4])
    rec = Recorder(out_dir, node, os.getpid())

    async def crash() -> None:
        os._exit(CRASH_EXIT)

    async def run() -> None:
        async with Manager(url, num_workers=workers, node_id=node, lease_time=lease, shutdown_timeout=2.0) as mgr:
            for job in make_jobs(rec, crash):
                await mgr.register_job(job)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                ready = out_dir / f"{node}-{os.getpid()}.ready"
                tmp = ready.with_suffix(".tmp")
                tmp.write_text(str(os.getpid()), encoding="utf-8")
                tmp.rename(ready)
                async for _ in signals:
                    break

    anyio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

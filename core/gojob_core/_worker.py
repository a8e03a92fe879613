"""A worker: one slot of a Manager's pool, running one instance at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._instance import Instance
    from ._manager import Manager

__all__ = ["Worker"]


class Worker:
    """One slot of the pool. Executors may ask for it (annotate a parameter ``gojob.Worker``)."""

    __slots__ = ("current", "id", "manager", "processed")

    def __init__(self, manager: Manager, id: int) -> None:
        self.manager = manager
        self.id = id
        #: The instance this worker is running, or None when idle.
        self.current: Instance | None = None
        #: How many attempts this worker has run.
        self.processed = 0

    def __repr__(self) -> str:
        busy = f"running {self.current.uuid}" if self.current is not None else "idle"
        return f"<Worker {self.id} of node {self.manager.node_id} {busy}>"

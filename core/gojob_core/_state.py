"""Instance states, as in go-job: CREATED -> SCHEDULED -> PROCESSING -> a final state."""

from __future__ import annotations

import enum

__all__ = ["FINAL_STATES", "LogLevel", "State"]


class State(str, enum.Enum):
    """The state of a job instance. Final states: COMPLETED, TERMINATED, CANCELED, TIMED_OUT.

    A TERMINATED or TIMED_OUT instance with retries left goes back to SCHEDULED after its backoff
    delay; the history keeps the failed attempt's record. A cancel is always final.
    """

    CREATED = "CREATED"
    SCHEDULED = "SCHEDULED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        """True for the states an instance stays in (unless a retry re-schedules it)."""
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: State | str) -> State:
        """A State from its name in any case ("timed_out", "TimedOut", "TIMED_OUT")."""
        if isinstance(value, State):
            return value
        key = str(value).strip().upper().replace("-", "_")
        if key == "TIMEDOUT":
            key = "TIMED_OUT"
        if key == "CANCELLED":
            key = "CANCELED"
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown instance state {value!r} (one of {names})") from None


FINAL_STATES = frozenset({State.COMPLETED, State.TERMINATED, State.CANCELED, State.TIMED_OUT})


class LogLevel(str, enum.Enum):
    """The level of an instance log line."""

    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value

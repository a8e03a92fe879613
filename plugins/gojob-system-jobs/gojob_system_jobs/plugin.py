"""Entry point of the ``gojob`` group: contributes the system jobs to every Manager."""

from __future__ import annotations

from gojob_core import Job, Manager, hookimpl

from ._jobs import history_cleaner_job, log_cleaner_job


@hookimpl
def gojob_register_jobs(manager: Manager) -> list[Job]:
    return [history_cleaner_job(), log_cleaner_job()]

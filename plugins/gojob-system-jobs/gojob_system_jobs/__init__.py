"""gojob's system jobs: ``system.history.cleaner`` and ``system.log.cleaner``.

Installed, they are registered on every Manager; schedule them like any job::

    await mgr.schedule_registered_job("system.history.cleaner", arguments={"max_age": "7d"},
                                      crontab_spec="17 3 * * *")

or both at once with the documented defaults: ``await schedule_system_jobs(mgr)``.
They remove records older than ``max_age`` and/or beyond the newest ``keep`` per instance (or per
kind), in batches, through the store contract only, and never touch the records of instances that
are waiting or running.
"""

from __future__ import annotations

from ._jobs import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from ._jobs import DEFAULT_CRONTAB as DEFAULT_CRONTAB
from ._jobs import DEFAULT_MAX_AGE as DEFAULT_MAX_AGE
from ._jobs import DEFAULT_PRIORITY as DEFAULT_PRIORITY
from ._jobs import HISTORY_CLEANER as HISTORY_CLEANER
from ._jobs import LOG_CLEANER as LOG_CLEANER
from ._jobs import clean_history as clean_history
from ._jobs import clean_logs as clean_logs
from ._jobs import history_cleaner_job as history_cleaner_job
from ._jobs import log_cleaner_job as log_cleaner_job
from ._jobs import schedule_system_jobs as schedule_system_jobs

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CRONTAB",
    "DEFAULT_MAX_AGE",
    "DEFAULT_PRIORITY",
    "HISTORY_CLEANER",
    "LOG_CLEANER",
    "clean_history",
    "clean_logs",
    "history_cleaner_job",
    "log_cleaner_job",
    "schedule_system_jobs",
]

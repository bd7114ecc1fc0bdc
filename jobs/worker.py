"""The portal's RQ worker: `rq worker -w jobs.worker.Worker` (the Procfile's worker).

RQ's fork worker notices at once when its work horse dies (SIGKILL, OOM) and
moves the job to the failed registry, but calls no failure callback then, so
the job's run would wait for the lock's TTL to be recognised as abandoned.
`handle_work_horse_killed` is RQ's hook for that moment: it calls the job's
failure callback with the reason.
"""

import os
from typing import Any

from rq import worker
from rq.exceptions import AbandonedJobError
from rq.job import Job

# Imported here, in the worker, so each forked work horse has the portal loaded
# already: otherwise every job (an instant upload too) imports it anew, the
# views create_app registers included, which costs more than an upload.
import jobs.sync  # noqa: E402, F401
import portal.web.admin  # noqa: E402, F401
import portal.web.api  # noqa: E402, F401
import portal.web.connect  # noqa: E402, F401
import portal.web.dataverse  # noqa: E402, F401
import portal.web.operator  # noqa: E402, F401
import portal.web.public  # noqa: E402, F401
import portal.web.service  # noqa: E402, F401


class Worker(worker.Worker):
    """RQ's fork worker, telling a job's failure callback when its work horse was killed."""

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        """Record on the job's run that its work horse died, and how."""
        how = (f"killed by signal {os.WTERMSIG(ret_val)}" if ret_val and os.WIFSIGNALED(ret_val)
               else f"exited with status {ret_val}")
        job.execute_failure_callback(self.death_penalty_class, AbandonedJobError,
                                     AbandonedJobError(f"its work horse was {how}"), None)

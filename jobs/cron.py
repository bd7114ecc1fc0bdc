"""The `rq cron` schedule: `rq cron jobs/cron.py`.

Entries only enqueue; workers do the work. The sync dispatcher runs every
minute and enqueues a sync run for each due connection with a unique job id,
moving the connection's next run on in the same step, so a second scheduler
process is harmless.
"""

from rq import cron

from jobs import maintenance, sync

cron.register(sync.dispatch, queue_name="default", interval=60, result_ttl=0, failure_ttl=3600)
cron.register(maintenance.heartbeat, queue_name="default", interval=60, result_ttl=0,
              failure_ttl=3600)

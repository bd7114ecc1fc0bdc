"""The `rq cron` schedule: `rq cron jobs/cron.py`.

Keep one entry per kind of periodic work. Entries only enqueue: the work is
done by workers. (The sync dispatcher joins here with the sync engine.)
"""

from rq import cron

from jobs import maintenance

cron.register(maintenance.heartbeat, queue_name="default", interval=60, result_ttl=0,
              failure_ttl=3600)

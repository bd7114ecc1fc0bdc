"""RQ job entry points, the periodic schedule and the `make run` launcher (the CLI: portal/cli).

Jobs are plain functions that take ids, open their own connections through
`jobs.context.app_context()`, and let exceptions reach RQ's failed registry.
"""

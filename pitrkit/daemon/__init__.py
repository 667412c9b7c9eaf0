"""`pitrkit daemon`, the one service a DBA leaves running (`service`): the streaming
sidecar as a child, base backups on the `schedule` (cron expressions: pitrkit/cron.py),
retention after each, and the status page and /metrics served by `status_server` from a
report collected on its own thread and rendered by pitrkit/views/.
"""

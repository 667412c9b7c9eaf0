"""The daemon's own facts: what only the running daemon knows (its schedule, its last
backup run, its sidecar), filled in by daemon/service.py for each render of its page,
/metrics and /status.json beside the status report (views/ renders them). Here beside
the status report rather than in daemon/, so that views/ depends only on the reports it
renders and the daemon, which serves the renderings, sits above both."""

from __future__ import annotations

from datetime import datetime

import msgspec


class ScheduledRun(msgspec.Struct, kw_only=True, frozen=True):
    """One backup the daemon's schedule started."""

    started_at: datetime
    finished_at: datetime
    ok: bool
    backup_id: str | None  # None when it failed before a manifest was stored
    message: str


class DaemonFacts(msgspec.Struct, kw_only=True, frozen=True):
    """What the daemon shows beside the status report."""

    started_at: datetime
    schedule: str | None  # "every 6h", "cron 30 2 * * *"; None: no scheduled backups
    next_backup_at: datetime | None
    # "full" or "incremental" ([daemon] full_every): the running backup's while one runs,
    # else what the next is expected to be (decided again when it starts); None: no schedule.
    next_backup_kind: str | None
    backup_running: bool
    last_run: ScheduledRun | None
    backups_taken: int
    backup_failures: int
    sidecar: str | None  # "running" | "restarting"; None: not configured
    sidecar_restarts: int
    retention_runs: int
    retention_failures: int
    drill_schedule: str | None = None  # "every 7d" ([drill] every); None: no scheduled drills
    next_drill_at: datetime | None = None
    drill_running: bool = False
    drills_run: int = 0  # scheduled drills ended since the daemon started
    drill_failures: int = 0


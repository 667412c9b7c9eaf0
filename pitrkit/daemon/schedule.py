"""When `pitrkit daemon` takes its backups: `[daemon] every` (a duration, slot to slot)
or `[daemon] cron` (five fields, in the host's time zone).

Both answer one question, `next_after(moment)`: the first backup time strictly after
`moment`. The daemon's Timetable asks it about the newest backup's start (so a slot
missed while it was down is due at once, and only once, however many slots were missed)
and about the slot of each backup it starts.

Cron expressions themselves (their fields, time zone and daylight saving time) are
cron.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from pitrkit.config import DaemonConfig, parse_duration
from pitrkit.cron import Cron


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled time strictly after `moment` (aware datetimes)."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Every:
    """A backup every `seconds` after the previous one's slot."""

    seconds: float
    text: str

    def next_after(self, moment: datetime) -> datetime:
        return moment + timedelta(seconds=self.seconds)

    def describe(self) -> str:
        return f"every {self.text}"


def from_config(daemon: DaemonConfig) -> Schedule | None:
    """The configured schedule; None when the daemon takes no backups. The values were
    checked when the configuration was loaded."""
    if daemon.every is not None:
        seconds = parse_duration(daemon.every)
        assert seconds is not None
        return Every(seconds, daemon.every)
    if daemon.cron is not None:
        return Cron.parse(daemon.cron)
    return None


class Timetable:
    """When the daemon's next backup is due.

    It starts from the newest finished backup's start: when the schedule had a slot after
    it that has already passed (the daemon was down, or the archive has no backup yet),
    a backup is due at once, and it is one backup, however many slots were missed. Each
    backup started (or skipped) then counts as the slot's backup: the next is the
    schedule's first time after that slot, or, if that time has passed too (a backup
    started late for a missed slot, or one that overran the next slot), the first time
    after its start: one more at once, never a queue of them."""

    def __init__(self, schedule: Schedule, newest_backup_start: datetime | None, now: datetime) -> None:
        self.schedule = schedule
        self.due = now if newest_backup_start is None else schedule.next_after(newest_backup_start)
        # The slot the daemon was down for, if any (for the log).
        self.missed = self.due if self.due <= now and newest_backup_start is not None else None

    def is_due(self, now: datetime) -> bool:
        return now >= self.due

    def started(self, at: datetime) -> None:
        # From the slot rather than from `at`: `every` would otherwise drift later by the
        # moments each start takes (the loop's tick, the look for another host's backup).
        following = self.schedule.next_after(self.due)
        self.due = following if following > at else self.schedule.next_after(at)

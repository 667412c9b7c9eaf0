"""Whether the daemon's next scheduled backup is full or incremental (`[daemon]
full_every`), and why.

Decided before the backup starts, from the catalog: an incremental is taken on the
newest finished backup (`backup-push --incremental --from <it>`), so that the chain
`full_every` counts on is the one the backup joins. It is full when `full_every` is not
set (the daemon does not ask then), when the archive has no backup, when the newest cannot be a parent (its chain is
broken or at its longest, it is of another cluster, or of another major: the first
backup after an upgrade is full), and when the chain's full is due by `full_every`.

What only the server knows (whether the newest backup is on its timeline's path), and
what only reading the parent shows (its manifest or block maps gone or unreadable), is
backup-push's to check: it then exits with `ParentRefused`'s code, and the daemon takes
a full at once instead (daemon/service.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from pitrkit.catalog.documents import MAX_CHAIN, BackupSummary
from pitrkit.config import FullEvery

# A backup starts moments after its slot (the loop's tick, the child's start, its
# connection), so a weekly full is a few seconds short of a week old at the slot a week
# later: without this grace the full would come one slot late, and drift later every
# week. At most a tenth of `full_every`, for very short ones.
_LATE_START = 300.0


class ClusterIdentity(NamedTuple):
    """The cluster the next backup is of, as the daemon knows it without a server session."""

    system_identifier: int  # the archive's (backup-push refuses any other server)
    major: int | None  # the data directory's PG_VERSION; None when it could not be read


class BackupKind(NamedTuple):
    parent: str | None  # the backup an incremental is taken on; None: a full backup
    reason: str  # for the log

    @property
    def kind(self) -> str:
        return "full" if self.parent is None else "incremental"


def next_backup_kind(rule: FullEvery, finished: list[BackupSummary], cluster: ClusterIdentity,
                     now: datetime) -> BackupKind:
    """The kind of the backup starting at `now` under `rule`, given the finished backups
    (oldest first, as survey_backups lists them)."""
    if not finished:
        return BackupKind(None, "the archive has no backup yet")
    # At the newest start, the shortest chain: a full backup-consolidate made of the
    # newest incremental counts as a full, and the next incremental builds on it.
    newest = max(finished, key=lambda backup: (backup.start_time, -len(backup.chain)))
    present = {backup.backup_id: backup for backup in finished}
    if why := _not_a_parent(newest, present, cluster):
        return BackupKind(None, f"the newest backup {newest.backup_id} cannot be the parent: {why}")
    full = present[newest.chain[0]] if newest.chain else newest
    if rule.incrementals is not None:
        taken = len(newest.chain)  # the incrementals on `full`: the rest of the chain, and the newest itself
        if taken >= rule.incrementals:
            return BackupKind(None, f"{taken} incrementals were taken on the full {full.backup_id} "
                                    f"(full_every {rule.incrementals} incrementals)")
        return BackupKind(newest.backup_id, f"incremental {taken + 1} of {rule.incrementals} on the full "
                                            f"{full.backup_id}")
    assert rule.seconds is not None
    age = now - full.start_time
    reason = f"the full {full.backup_id} started {_span(age)} ago (full_every {_span(timedelta(seconds=rule.seconds))})"
    if age >= timedelta(seconds=rule.seconds - min(_LATE_START, rule.seconds / 10)):
        return BackupKind(None, reason)
    return BackupKind(newest.backup_id, reason)


def _not_a_parent(newest: BackupSummary, present: dict[str, BackupSummary], cluster: ClusterIdentity) -> str | None:
    if newest.system_identifier != cluster.system_identifier:
        return (f"it is of the cluster with system identifier {newest.system_identifier}, not the archive's "
                f"{cluster.system_identifier}")
    if cluster.major is not None and newest.pg_major != cluster.major:
        return (f"it is of PostgreSQL {newest.pg_major} and the data directory of {cluster.major} (the first "
                "backup after an upgrade is full)")
    if missing := [ancestor for ancestor in newest.chain if ancestor not in present]:
        return f"its chain is broken: {missing[0]} is not in the archive"
    if len(newest.chain) >= MAX_CHAIN:
        return f"its chain already has {len(newest.chain) + 1} backups, the most one may have"
    return None


def _span(delta: timedelta) -> str:
    """A duration as a DBA reads it in a log line: "6d 23h 59m", "45m", "30s"."""
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{value}{unit}" for value, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if value]
    return " ".join(parts) or f"{seconds}s"

"""Full or incremental (pitrkit/daemon/backup_kind.py): `[daemon] full_every` as a duration
and as a count, and the full taken whenever the newest backup cannot be a parent (none
yet, a broken chain, a chain at its longest, another cluster, another major)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pitrkit.catalog.documents import MAX_CHAIN, BackupSummary
from pitrkit.config import FullEvery, parse_full_every
from pitrkit.daemon.backup_kind import ClusterIdentity, next_backup_kind
from pitrkit.postgres.wal import Lsn

T0 = datetime(2026, 11, 1, 0, 0, 0, tzinfo=UTC)
CLUSTER = ClusterIdentity(system_identifier=1, major=15)
WEEKLY = FullEvery(7 * 86400, None)


def backup(start: datetime, chain: list[BackupSummary] | None = None, *, system_identifier: int = 1,
           pg_version: int = 150014) -> BackupSummary:
    """A finished backup starting at `start`; incremental on the last of `chain`."""
    backup_id = start.strftime("%Y%m%dT%H%M%SZ")
    ancestors = [*chain[-1].chain, chain[-1].backup_id] if chain else []
    return BackupSummary(
        backup_id=backup_id, label=f"pitrkit {backup_id}", system_identifier=system_identifier,
        pg_version=pg_version, timeline=1, start_lsn=Lsn(0x2000028), start_time=start, stop_lsn=Lsn(0x2000100),
        stop_time=start + timedelta(minutes=1), first_segment="000000010000000000000002",
        last_segment="000000010000000000000002", size=100, stored_size=50, file_count=3, compression="zstd",
        pitrkit_version="test", parent=ancestors[-1] if ancestors else None, chain=ancestors)


def six_hourly(count: int, start: datetime = T0) -> list[BackupSummary]:
    """A full at `start` and `count - 1` incrementals on it, one every 6 h."""
    backups = [backup(start)]
    for number in range(1, count):
        backups.append(backup(start + timedelta(hours=6 * number), backups))
    return backups


def test_the_first_scheduled_backup_is_full() -> None:
    kind = next_backup_kind(WEEKLY, [], CLUSTER, T0)
    assert kind.parent is None and kind.kind == "full" and kind.reason == "the archive has no backup yet"


def test_by_duration_incrementals_until_the_full_is_that_old() -> None:
    backups = six_hourly(27)  # the full and 26 incrementals: the last at 6d 12h
    kind = next_backup_kind(WEEKLY, backups, CLUSTER, T0 + timedelta(days=6, hours=18))
    assert kind.kind == "incremental" and kind.parent == backups[-1].backup_id
    assert kind.reason == "the full 20261101T000000Z started 6d 18h ago (full_every 7d)"
    # The next slot, a week after the full's slot: the full started a few seconds after
    # its slot, and this backup starts a moment after its own; still a full, not 6 h late.
    backups.append(backup(T0 + timedelta(days=6, hours=18), backups))
    kind = next_backup_kind(WEEKLY, backups, CLUSTER, T0 + timedelta(days=7) - timedelta(seconds=3))
    assert kind.parent is None
    assert kind.reason == "the full 20261101T000000Z started 6d 23h 59m ago (full_every 7d)"


def test_by_duration_the_grace_is_bounded() -> None:
    backups = [backup(T0)]
    assert next_backup_kind(WEEKLY, backups, CLUSTER, T0 + timedelta(days=7, minutes=-6)).kind == "incremental"
    assert next_backup_kind(WEEKLY, backups, CLUSTER, T0 + timedelta(days=7, minutes=-5)).kind == "full"
    # A tenth of a short full_every, not five minutes of it.
    short = FullEvery(600, None)
    assert next_backup_kind(short, backups, CLUSTER, T0 + timedelta(seconds=539)).kind == "incremental"
    assert next_backup_kind(short, backups, CLUSTER, T0 + timedelta(seconds=540)).kind == "full"


def test_by_duration_the_full_of_the_newest_backups_chain_counts() -> None:
    # An older chain's full is old; the newest chain's is not.
    old = six_hourly(3)
    new = six_hourly(2, T0 + timedelta(days=10))
    kind = next_backup_kind(WEEKLY, [*old, *new], CLUSTER, T0 + timedelta(days=11))
    assert kind.parent == new[-1].backup_id and "the full 20261111T000000Z started 1d ago" in kind.reason


def test_by_count() -> None:
    rule = FullEvery(None, 3)
    backups = [backup(T0)]
    for number in range(1, 4):
        kind = next_backup_kind(rule, backups, CLUSTER, T0 + timedelta(hours=6 * number))
        assert kind.parent == backups[-1].backup_id
        assert kind.reason == f"incremental {number} of 3 on the full 20261101T000000Z"
        backups.append(backup(T0 + timedelta(hours=6 * number), backups))
    kind = next_backup_kind(rule, backups, CLUSTER, T0 + timedelta(days=1))
    assert kind.parent is None and kind.reason == "3 incrementals were taken on the full 20261101T000000Z " \
                                                  "(full_every 3 incrementals)"
    # A full taken meanwhile (by hand, say) starts the count again.
    backups.append(backup(T0 + timedelta(days=1)))
    assert next_backup_kind(rule, backups, CLUSTER, T0 + timedelta(days=1, hours=6)).reason == \
        "incremental 1 of 3 on the full 20261102T000000Z"


def test_a_broken_chain_gets_a_full() -> None:
    backups = six_hourly(4)
    del backups[1]  # an ancestor of the newest is gone
    kind = next_backup_kind(WEEKLY, backups, CLUSTER, T0 + timedelta(days=1))
    assert kind.parent is None
    assert kind.reason == ("the newest backup 20261101T180000Z cannot be the parent: its chain is broken: "
                           "20261101T060000Z is not in the archive")


def test_a_chain_at_its_longest_gets_a_full() -> None:
    backups = six_hourly(MAX_CHAIN + 1, T0 - timedelta(days=300))
    kind = next_backup_kind(FullEvery(10 * 365 * 86400, None), backups, CLUSTER, T0)
    assert kind.parent is None and f"its chain already has {MAX_CHAIN + 1} backups" in kind.reason
    assert next_backup_kind(FullEvery(10 * 365 * 86400, None), backups[:-1], CLUSTER, T0).kind == "incremental"


def test_after_an_upgrade_the_first_backup_is_full() -> None:
    backups = six_hourly(2)
    kind = next_backup_kind(WEEKLY, backups, ClusterIdentity(1, 17), T0 + timedelta(days=1))
    assert kind.parent is None
    assert kind.reason == ("the newest backup 20261101T060000Z cannot be the parent: it is of PostgreSQL 15 and "
                           "the data directory of 17 (the first backup after an upgrade is full)")
    # The data directory's major unknown: backup-push, which asks the server, decides.
    assert next_backup_kind(WEEKLY, backups, ClusterIdentity(1, None), T0 + timedelta(days=1)).kind == "incremental"


def test_another_clusters_backup_is_no_parent() -> None:
    backups = [backup(T0, system_identifier=2)]
    kind = next_backup_kind(FullEvery(None, 27), backups, CLUSTER, T0 + timedelta(hours=6))
    assert kind.parent is None and "system identifier 2, not the archive's 1" in kind.reason


@pytest.mark.parametrize(("text", "rule"), [
    ("7d", FullEvery(7 * 86400, None)), ("12h", FullEvery(12 * 3600, None)), ("1.5d", FullEvery(1.5 * 86400, None)),
    ("2w", FullEvery(14 * 86400, None)), (" 7 d ", FullEvery(7 * 86400, None)),
    ("27 incrementals", FullEvery(None, 27)), ("1 incremental", FullEvery(None, 1)),
    (f"{MAX_CHAIN} incrementals", FullEvery(None, MAX_CHAIN)),
])
def test_full_every_is_written_as_a_dba_writes_it(text: str, rule: FullEvery) -> None:
    assert parse_full_every(text) == rule


@pytest.mark.parametrize("text", ["27", "3600", "0d", "0 incrementals", f"{MAX_CHAIN + 1} incrementals", "weekly",
                                  "7 days", "-1d", "27incrementals", "27 fulls", "101y", "40000w", ""])
def test_a_bad_full_every_is_none(text: str) -> None:
    assert parse_full_every(text) is None

"""`retention apply` on synthetic archives on real local storage (synthetic_archive.py:
1 GiB segments, 4 per WAL folder, segment n stored at minute n): what goes and why, the
order of the removals, a run killed at every step and run again, leases, unfinished
backups, --dry-run. The policy's rules themselves are test_policy.py's."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from pitrkit import config as config_module
from pitrkit.catalog import documents, lease, lock, maintenance
from pitrkit.catalog.backups import backups, retention_state, survey_backups
from pitrkit.catalog.documents import RetentionState, WalFolderIndex
from pitrkit.catalog.lock import CATALOG_LOCK_KEY
from pitrkit.cli import main
from pitrkit.config import RetentionConfig
from pitrkit.demo.localpg import wait_for
from pitrkit.errors import ConfigError, RefusedError
from pitrkit.hookspecs import ObjectInfo, StorageError
from pitrkit.ops import retention
from pitrkit.progress import show_time
from pitrkit.restore import engine as restore
from pitrkit.restore import pgstart
from pitrkit.restore.plan import make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import codec
from pitrkit.storage.archive import RETENTION_STATE_KEY, lease_key, wal_index_key
from tests.unit.synthetic_archive import SyntheticArchive, lsn, name, stored_at

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEEP_TWO = RetentionConfig(keep_last=2)


def three_backups(root: Path) -> SyntheticArchive:
    """Timeline 1, segments 1..20; backups A (segments 2-3), B (6-7), C (12-13); the
    sealed WAL folders indexed, as backup-push leaves them."""
    store = SyntheticArchive(root)
    store.segments(1, 1, 20)
    for backup_id, first in (("A", 2), ("B", 6), ("C", 12)):
        maintenance.record_backup(store.archive, store.backup(backup_id, 1, first, first + 1))
    return store


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    return three_backups(tmp_path / "archive")


def stored_keys(store: SyntheticArchive) -> set[str]:
    return {str(path.relative_to(store.root)) for path in store.root.rglob("*") if path.is_file()}


def wal_present(store: SyntheticArchive, timeline: int = 1) -> list[int]:
    return sorted(segno for segno in range(0, 40) if (store.root / store.wal_key(timeline, segno)).exists())


def ids(store: SyntheticArchive) -> list[str]:
    return [backup.backup_id for backup in backups(store.archive)]


def state(store: SyntheticArchive) -> RetentionState:
    return retention_state(store.archive)


# --- what goes, and why -----------------------------------------------------------------


def test_older_backups_and_the_wal_before_the_oldest_kept_one_go(store):
    report = retention.apply(store.archive, KEEP_TWO, now=NOW)
    assert [(kept.backup_id, kept.reasons) for kept in report.kept] == [("B", ["last 2"]), ("C", ["last 2"])]
    assert [(gone.backup_id, gone.kind) for gone in report.removed_backups] == [("A", "backup")]
    [wal] = report.removed_wal
    assert (wal.first, wal.last, wal.files) == (name(1, 1), name(1, 5), 5)
    assert wal.why == "before the oldest retained backup on timeline 1"

    assert ids(store) == ["B", "C"]
    assert not (store.root / "backups/A").exists()
    assert wal_present(store) == list(range(6, 21))
    # The folder that lost part of its files has an index listing just the rest; the one
    # that lost all of them has none (and the folder itself is gone).
    index = codec.decode(store.archive.get(wal_index_key("wal/0000000100000001/")), WalFolderIndex, "index")
    assert [entry.name for entry in index.entries] == [name(1, 6), name(1, 7)]
    assert not (store.root / wal_index_key("wal/0000000100000000/")).exists()
    assert not (store.root / "wal/0000000100000000").exists()
    assert state(store).deleting == []
    assert state(store).last_run is not None and state(store).last_run.backups_removed == ["A"]
    assert state(store).last_run.wal_files_removed == 5 and state(store).last_run.bytes_freed == report.stored_bytes
    # Every kept backup still replays from its first segment on.
    before_c = make_plan(store.archive, Target(kind="lsn", lsn=lsn(11)))
    assert (before_c.backup.backup_id, before_c.segments[0], before_c.segments[-1]) == ("B", name(1, 6), name(1, 11))
    latest = make_plan(store.archive, Target(kind="latest"))
    assert (latest.backup.backup_id, latest.segments[-1]) == ("C", name(1, 20))


def test_nothing_more_goes_on_a_second_run(store):
    retention.apply(store.archive, KEEP_TWO, now=NOW)
    before = stored_keys(store)
    report = retention.apply(store.archive, KEEP_TWO, now=NOW)
    assert (report.removed_backups, report.removed_wal, report.stored_bytes) == ([], [], 0)
    assert stored_keys(store) == before


def test_history_files_stay_and_an_abandoned_timeline_goes_once_older_than_every_kept_backup(tmp_path):
    store = three_backups(tmp_path / "archive")
    # Timeline 2 branched off in segment 8 (after B started) and archived segments 8..10,
    # all stored before C started.
    store.history(2, [(1, lsn(8, 0x100))], at=stored_at(8))
    store.segments(2, 8, 10, at=stored_at(9))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
    assert [kept.backup_id for kept in report.kept] == ["C"]
    abandoned = [wal for wal in report.removed_wal if wal.timeline == 2]
    assert [(wal.first, wal.last) for wal in abandoned] == [(name(2, 8), name(2, 10))]
    assert abandoned[0].why.startswith("abandoned timeline 2")
    assert wal_present(store, 2) == []
    assert (store.root / "wal/00000002.history").exists()
    assert wal_present(store, 1) == list(range(12, 21))


def test_an_abandoned_timeline_written_after_the_oldest_kept_backup_started_stays(tmp_path):
    store = three_backups(tmp_path / "archive")
    store.history(2, [(1, lsn(8, 0x100))], at=stored_at(8))
    store.segments(2, 8, 10, at=stored_at(30))  # still archiving long after C started
    report = retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
    assert [wal.timeline for wal in report.removed_wal] == [1]
    assert wal_present(store, 2) == [8, 9, 10]


def test_a_branch_keeps_its_wal_while_a_kept_backup_is_on_its_path(tmp_path):
    store = three_backups(tmp_path / "archive")
    store.history(2, [(1, lsn(8, 0x100))], at=stored_at(8))
    store.segments(2, 8, 10, at=stored_at(9))
    retention.apply(store.archive, KEEP_TWO, now=NOW)  # B (6-7) is on timeline 2's path
    assert wal_present(store, 2) == [8, 9, 10]
    assert wal_present(store, 1) == list(range(6, 21))
    plan = make_plan(store.archive, Target(kind="latest"), timeline=2)
    assert (plan.backup.backup_id, plan.segments[-1]) == ("B", name(2, 10))


def test_without_a_finished_backup_no_wal_goes(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 10)
    report = retention.apply(store.archive, KEEP_TWO, now=NOW)
    assert (report.removed_backups, report.removed_wal) == ([], [])
    assert wal_present(store) == list(range(1, 11))


# --- unfinished backups -------------------------------------------------------------------


def test_an_unfinished_backup_goes_once_unwritten_for_the_grace_period(store):
    for backup_id, written in (("STALE", NOW - timedelta(hours=7)), ("RUNNING", NOW - timedelta(hours=1))):
        store.backup(backup_id, 1, 14, 15, manifest=False)
        os.utime(store.root / "backups" / backup_id / "data/0", (written.timestamp(), written.timestamp()))
    report = retention.apply(store.archive, RetentionConfig(keep_last=3, unfinished_grace="6h"), now=NOW)
    [gone] = report.removed_backups
    assert (gone.backup_id, gone.kind) == ("STALE", "unfinished")
    assert gone.why.startswith("unfinished (no manifest), last written ")
    assert not (store.root / "backups/STALE").exists()
    assert survey_backups(store.archive).unfinished == ["RUNNING"]


# --- --dry-run --------------------------------------------------------------------------


def test_a_dry_run_removes_nothing_and_says_what_a_run_would(tmp_path):
    store = three_backups(tmp_path / "archive")
    taken = lease.take(store.archive, "B", 1, name(1, 6))
    lease.hold_until(store.archive, taken, NOW - timedelta(hours=1))  # lapsed
    contents = {key: (store.root / key).read_bytes() for key in stored_keys(store)}
    dry = retention.apply(store.archive, RetentionConfig(keep_last=1), dry_run=True, now=NOW)
    assert {key: (store.root / key).read_bytes() for key in stored_keys(store)} == contents
    assert dry.expired_leases == [taken.lease_id]

    copy = three_backups(tmp_path / "copy")
    real = retention.apply(copy.archive, RetentionConfig(keep_last=1), now=NOW)
    assert msgspec.structs.replace(dry, dry_run=False, expired_leases=[]) == real
    assert dry.stored_bytes == sum(gone.stored_bytes for gone in dry.removed_backups) + sum(
        wal.stored_bytes for wal in dry.removed_wal) > 0


# --- the order, and a run killed at every step ----------------------------------------------


class SimulatedCrash(Exception):
    """The process dies here: nothing after this call happens."""


class RecordingStorage:
    """The archive's storage, recording every change and dying at change number `crash_at`."""

    def __init__(self, storage, crash_at: int | None = None) -> None:
        self.storage = storage
        self.url = storage.url
        self.crash_at = crash_at
        self.changes: list[tuple[str, str]] = []

    def _change(self, what: str, key: str) -> None:
        if self.crash_at is not None and len(self.changes) == self.crash_at:
            raise SimulatedCrash(f"{what} {key}")
        self.changes.append((what, key))

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self._change("put", key)
        self.storage.put(key, data, overwrite=overwrite)

    def delete(self, key: str) -> None:
        self._change("delete", key)
        self.storage.delete(key)

    def get(self, key: str) -> bytes:
        return self.storage.get(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.storage.stat(key)

    def list(self, prefix: str = ""):
        return self.storage.list(prefix)

    def list_folder(self, prefix: str):
        return self.storage.list_folder(prefix)


def record(store: SyntheticArchive, crash_at: int | None = None) -> RecordingStorage:
    recording = RecordingStorage(store.archive.storage, crash_at)
    store.archive.storage = recording
    return recording


def age(store: SyntheticArchive, key: str, by: timedelta) -> None:
    """Move an object's store time (the file's mtime) back by `by`, as if stored that long ago."""
    stamp = os.stat(store.root / key).st_mtime - by.total_seconds()
    os.utime(store.root / key, (stamp, stamp))


def test_the_intent_is_stored_before_anything_is_removed_and_manifests_before_parts(store):
    recording = record(store)
    retention.apply(store.archive, KEEP_TWO, now=NOW)
    changes = recording.changes
    # The catalog lock is held from before the first look to after the last write.
    assert changes[0] == ("put", CATALOG_LOCK_KEY) and changes[-1] == ("delete", CATALOG_LOCK_KEY)
    changes = changes[1:-1]
    assert changes[:2] == [("put", RETENTION_STATE_KEY), ("put", "catalog/backups.json")]
    assert changes[2:4] == [("delete", "backups/A/manifest.json"), ("delete", "backups/A/data/0")]
    # Each WAL folder's index before its files; folders and files oldest first.
    assert changes[4:-1] == [
        ("delete", wal_index_key("wal/0000000100000000/")),
        *[("delete", store.wal_key(1, segno)) for segno in (1, 2, 3)],
        ("put", wal_index_key("wal/0000000100000001/")),
        *[("delete", store.wal_key(1, segno)) for segno in (4, 5)],
    ]
    assert changes[-1] == ("put", RETENTION_STATE_KEY)


def steps_of_a_run(tmp_path) -> int:
    store = three_backups(tmp_path / "count")
    recording = record(store)
    retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
    return len(recording.changes)


def test_a_run_killed_at_any_step_leaves_nothing_half_usable_and_the_next_run_finishes(tmp_path):
    finished = three_backups(tmp_path / "finished")
    retention.apply(finished.archive, RetentionConfig(keep_last=1), now=NOW)
    expected = stored_keys(finished)
    steps = steps_of_a_run(tmp_path)
    assert steps > 10
    for crash_at in range(steps):
        store = three_backups(tmp_path / f"crash-{crash_at}")
        recording = record(store, crash_at)
        with pytest.raises(SimulatedCrash):
            retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
        store.archive.storage = recording.storage

        # Whatever a reader sees is whole: each listed backup has its manifest and its
        # data, and the planner's choice replays.
        for backup in backups(store.archive):
            assert (store.root / "backups" / backup.backup_id / "data/0").exists(), crash_at
        assert make_plan(store.archive, Target(kind="latest")).backup.backup_id == "C"
        survey = survey_backups(store.archive)
        assert not set(survey.deleting) & {backup.backup_id for backup in survey.finished}

        # Killed after storing the intent (change 1, after the lock) and before removing
        # B's last part (change 6): the backups not yet gone are named by `deleting`.
        assert bool(survey.deleting) == (2 <= crash_at <= 6), (crash_at, survey.deleting)

        # The dead run's lock is in the way until it lapses (10 minutes on the storage's
        # clock, which is the file's mtime here).
        if (store.root / CATALOG_LOCK_KEY).exists():
            with pytest.raises(lock.LockHeld, match="the catalog is locked by retention apply on "):
                retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
            age(store, CATALOG_LOCK_KEY, lock.HELD_FOR + timedelta(seconds=1))
        again = retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
        assert stored_keys(store) == expected, crash_at
        assert state(store).deleting == []
        interrupted = [gone.backup_id for gone in again.removed_backups if gone.kind == "interrupted"]
        assert interrupted == survey.deleting


# --- leases -------------------------------------------------------------------------------


def test_a_leased_backup_and_the_wal_after_it_stay(store):
    held = lease.take(store.archive, "A", 1, name(1, 2))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))  # leases are on the real clock
    kept = {kept.backup_id: kept.reasons for kept in report.kept}
    assert set(kept) == {"A", "C"}
    assert kept["A"] == [f"leased by {held.holder} until {show_time(held.expires_at)} "
                         f"(lease {held.lease_id})"]
    assert [gone.backup_id for gone in report.removed_backups] == ["B"]
    assert wal_present(store) == list(range(2, 21))
    assert (store.root / lease_key(held.lease_id)).exists()


def test_an_expired_lease_is_ignored_and_removed(store):
    held = lease.take(store.archive, "A", 1, name(1, 2))
    lease.hold_until(store.archive, held, datetime.now(UTC) - timedelta(seconds=1))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert report.expired_leases == [held.lease_id]
    assert [gone.backup_id for gone in report.removed_backups] == ["A", "B"]
    assert not (store.root / "leases").exists()


def take_on_a_skewed_clock(store: SyntheticArchive, monkeypatch, skew: timedelta) -> documents.Lease:
    """A lease on A, taken by a restore host whose clock is `skew` off retention's."""
    with monkeypatch.context() as patch:
        patch.setattr(lease, "_now", lambda: datetime.now(UTC) + skew)
        return lease.take(store.archive, "A", 1, name(1, 2))


def test_a_lease_from_a_host_whose_clock_is_behind_holds_while_renewed(store, monkeypatch):
    # An hour behind: its own expiry is already past on retention's clock, but it was
    # stored a moment ago, and holds HELD_FOR from then on the storage's clock.
    held = take_on_a_skewed_clock(store, monkeypatch, -timedelta(hours=1))
    assert held.expires_at < datetime.now(UTC)
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert "A" in {kept.backup_id for kept in report.kept} and not report.expired_leases
    assert (store.root / lease_key(held.lease_id)).exists()


def test_a_lease_not_renewed_for_its_duration_lapses_whatever_its_holder_clock_said(store, monkeypatch):
    # A day ahead: its own expiry is far off, but its holder stopped renewing it longer
    # than HELD_FOR ago on the storage's clock.
    held = take_on_a_skewed_clock(store, monkeypatch, timedelta(days=1))
    age(store, lease_key(held.lease_id), lease.HELD_FOR + timedelta(seconds=1))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert report.expired_leases == [held.lease_id]
    assert [gone.backup_id for gone in report.removed_backups] == ["A", "B"]


class NoStoreTimes(RecordingStorage):
    """A backend that reports no store times."""

    def stat(self, key: str) -> ObjectInfo:
        return self.storage.stat(key)._replace(modified=None)

    def list_folder(self, prefix: str):
        folder = self.storage.list_folder(prefix)
        return folder._replace(objects=[info._replace(modified=None) for info in folder.objects])


@pytest.mark.parametrize(("behind", "holds"), [(timedelta(minutes=14), True), (timedelta(minutes=16), False)])
def test_without_store_times_a_lease_gets_the_clock_skew_margin(store, monkeypatch, behind, holds):
    # HELD_FOR is 10 minutes and the margin 5: a holder up to 15 minutes behind still holds.
    store.archive.storage = NoStoreTimes(store.archive.storage)
    held = take_on_a_skewed_clock(store, monkeypatch, -behind)
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert ("A" in {kept.backup_id for kept in report.kept}) == holds
    assert report.expired_leases == ([] if holds else [held.lease_id])


def forge_lease(store: SyntheticArchive, lease_id: str = "forged", **fields: object) -> None:
    """A lease written by someone else (or by an older pitrkit: no `held_for`)."""
    document = {"lease_id": lease_id, "holder": "restore on db2 pid 7", "backup_id": "A", "timeline": 1,
                "first_segment": name(1, 2), "taken_at": "2026-11-30T12:00:00Z", "expires_at": "2026-11-30T12:10:00Z",
                **fields}
    (store.root / "leases").mkdir(exist_ok=True)
    (store.root / lease_key(lease_id)).write_bytes(msgspec.json.encode(document))


@pytest.mark.parametrize(("expires_at", "holds"), [
    ("9999-12-31T23:59:59.999999Z", True), ("9999-12-31T23:59:59-23:59", True), ("0001-01-01T00:00:00+23:59", False),
])
def test_a_lease_expiring_at_the_ends_of_time_is_judged_without_overflow(store, expires_at, holds):
    forge_lease(store, expires_at=expires_at)
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    kept = {each.backup_id: each.reasons for each in report.kept}
    assert ("A" in kept) == holds and report.expired_leases == ([] if holds else ["forged"])
    if holds:  # in local time, or as stored where local time cannot show it
        [reason] = kept["A"]
        assert reason.startswith("leased by restore on db2 pid 7 until 9999-12-31 23:59:59")
        assert reason.endswith(" (lease forged)")

def test_a_lease_taken_after_the_first_look_keeps_its_backup(store):
    # A restore leases A just as retention stores its intent to remove it: the restore
    # then refuses (it sees A in `deleting`), and retention's second look keeps A.
    recording = record(store)
    taken: list[documents.Lease] = []

    def put(key: str, data: bytes, *, overwrite: bool = False) -> None:
        RecordingStorage.put(recording, key, data, overwrite=overwrite)
        if key == RETENTION_STATE_KEY and not taken and "A" in json.loads(data)["deleting"]:
            taken.append(lease.take(store.archive, "A", 1, name(1, 2)))

    recording.put = put  # type: ignore[method-assign]
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert taken
    assert "A" in {kept.backup_id for kept in report.kept}
    assert ids(store) == ["A", "C"]
    assert wal_present(store) == list(range(2, 21))


def test_a_restore_refuses_a_backup_being_removed_and_drops_its_lease(store):
    plan = make_plan(store.archive, Target(kind="latest"))
    assert plan.backup.backup_id == "C"
    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["C"])), overwrite=True)
    with pytest.raises(RefusedError, match="being removed by retention"):
        restore.take_lease(store.archive, plan)
    assert lease.survey(store.archive, NOW) == lease.Leases([], [])


def test_a_restore_refuses_a_backup_a_whole_run_removed_since_its_plan(store):
    plan = make_plan(store.archive, Target(kind="lsn", lsn=lsn(5)))
    assert plan.backup.backup_id == "A"
    retention.apply(store.archive, RetentionConfig(keep_last=1))  # between the plan and the lease
    assert state(store).deleting == []
    with pytest.raises(RefusedError, match="being removed by retention"):
        restore.take_lease(store.archive, plan)
    assert lease.survey(store.archive, NOW) == lease.Leases([], [])


def test_a_command_reading_a_backup_holds_it_while_it_works_and_refuses_one_being_removed(store):
    # backup-push --incremental holds its parent, backup-consolidate the incremental:
    # retention keeps a held backup (and its chain) until the block ends.
    oldest = {each.backup_id: each for each in backups(store.archive)}["A"]
    with lease.holding(store.archive, oldest, "backup-push --incremental"):
        [held] = lease.survey(store.archive, NOW).active
        assert (held.backup_id, held.holder.split(" on ")[0]) == ("A", "backup-push --incremental")
        report = retention.apply(store.archive, RetentionConfig(keep_last=1))
        assert "A" in {kept.backup_id for kept in report.kept}
    assert lease.survey(store.archive, NOW) == lease.Leases([], [])
    assert "A" in ids(store)

    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["A"])), overwrite=True)
    with pytest.raises(RefusedError, match="being removed by retention"):
        with lease.holding(store.archive, oldest, "backup-consolidate"):
            raise AssertionError("held a backup retention is removing")
    assert lease.survey(store.archive, NOW) == lease.Leases([], [])


class ReadOnlyStorage(RecordingStorage):
    """The archive as a restore host with a read-only credential sees it."""

    def _change(self, what: str, key: str) -> None:
        raise StorageError(f"{self.url}: {key}: Permission denied")


def test_a_restore_from_an_archive_it_may_only_read_goes_on_without_a_lease(store, capsys):
    plan = make_plan(store.archive, Target(kind="latest"))
    store.archive.storage = ReadOnlyStorage(store.archive.storage)
    assert restore.take_lease(store.archive, plan) is None
    assert "warning: no lease taken" in capsys.readouterr().out
    with lease.Renewal(store.archive, None) as renewal:  # holding and releasing nothing is no error
        renewal.hold_until(NOW)
        renewal.release()
    assert lease.survey(store.archive, NOW) == lease.Leases([], [])
    # Without a lease it still refuses a backup retention is removing.
    store.archive.storage = store.archive.storage.storage
    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["C"])), overwrite=True)
    store.archive.storage = ReadOnlyStorage(store.archive.storage)
    with pytest.raises(RefusedError, match="being removed by retention"):
        restore.take_lease(store.archive, plan)


def test_a_lease_is_renewed_while_held_and_kept_or_released_at_the_end(store, monkeypatch):
    monkeypatch.setattr(lease, "RENEW_EVERY", timedelta(seconds=0.01))
    taken = lease.take(store.archive, "C", 1, name(1, 12))
    with lease.Renewal(store.archive, taken) as renewal:
        wait_for(lambda: lease.read(store.archive, taken.lease_id) != taken, 60, what="the lease to be renewed")
        assert lease.read(store.archive, taken.lease_id).expires_at > taken.expires_at
        later = datetime.now(UTC) + timedelta(hours=12)
        renewal.hold_until(later)
    assert lease.read(store.archive, taken.lease_id).expires_at == later
    with lease.Renewal(store.archive, taken) as renewal:
        renewal.release()
    assert lease.read(store.archive, taken.lease_id) is None


def test_a_backup_being_removed_is_listed_as_such(capsys, tmp_path):
    store = three_backups(tmp_path / "archive")
    store.archive.put(RETENTION_STATE_KEY, codec.encode(RetentionState(deleting=["A"])), overwrite=True)
    assert ids(store) == ["B", "C"]
    config = cli_config(tmp_path, store, retention=False)
    assert main(["--config", str(config), "backup-list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert ([b["backup_id"] for b in listing["backups"]], listing["deleting"]) == (["B", "C"], ["A"])


# --- the command --------------------------------------------------------------------------


def cli_config(tmp_path: Path, store: SyntheticArchive, retention: bool = True) -> Path:
    path = tmp_path / "pitrkit.toml"
    text = f'[repository]\nurl = "file://{store.root}"\nretries = 0\n'
    if retention:
        text += '[retention]\nkeep_last = 2\n'
    path.write_text(text)
    return path


def test_the_command_refuses_without_a_retention_section(capsys, tmp_path):
    store = three_backups(tmp_path / "archive")
    before = stored_keys(store)
    code = main(["--config", str(cli_config(tmp_path, store, retention=False)), "retention", "apply"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert err.startswith("pitrkit: ") and "[retention]" in err
    assert stored_keys(store) == before


def test_the_command_prints_the_decision_and_one_summary_line(capsys, tmp_path):
    store = three_backups(tmp_path / "archive")
    config = cli_config(tmp_path, store)
    assert main(["--config", str(config), "retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "keep    backup C: last 2" in out
    assert any(line.startswith("remove  backup A") and "kept by no rule (last 2)" in line for line in out)
    assert any(line.startswith(f"remove  WAL {name(1, 1)} .. {name(1, 5)}, 5 files") and
               line.endswith("before the oldest retained backup on timeline 1") for line in out)
    assert out[-1].startswith("retention dry run: would remove 1 backup (A), 5 WAL files; kept 2 backups")
    assert ids(store) == ["A", "B", "C"]

    assert main(["--config", str(config), "retention", "apply", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is False and [b["backup_id"] for b in report["removed_backups"]] == ["A"]
    assert ids(store) == ["B", "C"]


def test_what_a_forged_lease_says_is_shown_escaped_one_line_each(capsys, tmp_path):
    store = three_backups(tmp_path / "archive")
    config = cli_config(tmp_path, store)
    far = "2999-01-01T00:00:00Z"
    forge_lease(store, "forged", holder="restore on db2\nremove  backup C: \x1b[2J", expires_at=far)
    forge_lease(store, "gone", backup_id="gone\nnote: all clear", expires_at=far)
    forge_lease(store, "over\x1b[2J", expires_at="2000-01-01T00:00:00Z")  # lapsed
    assert main(["--config", str(config), "retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 7, lines  # policy, keep A, B, C, the expired lease, the note, the summary
    assert any(line.startswith("keep    backup A: leased by 'restore on db2\\nremove  backup C: \\x1b[2J' until ")
               and line.endswith(" (lease forged)") for line in lines), lines
    assert "expired lease 'over\\x1b[2J': ignored" in lines
    assert any(line.startswith("note: no WAL removed: leases hold 'gone\\nnote: all clear', not a finished backup")
               for line in lines), lines


def test_a_wal_index_written_by_a_concurrent_backup_never_names_what_the_run_removed(tmp_path):
    # A backup-push finishing elsewhere indexes the WAL folders sealed since its last
    # look (maintenance.refresh) just after this run listed `catalog/wal/`: its listings
    # still hold the files the run is about to remove.
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    for backup_id, first in (("A", 2), ("B", 6), ("C", 12)):
        store.backup(backup_id, 1, first, first + 1)
    assert not (store.root / "catalog/wal").exists()
    recording = record(store)

    def put(key: str, data: bytes, *, overwrite: bool = False) -> None:
        RecordingStorage.put(recording, key, data, overwrite=overwrite)
        if key == RETENTION_STATE_KEY and json.loads(data)["deleting"]:
            maintenance.refresh(store.archive)

    recording.put = put  # type: ignore[method-assign]
    retention.apply(store.archive, KEEP_TWO, now=NOW)
    assert wal_present(store) == list(range(6, 21))
    index = codec.decode(store.archive.get(wal_index_key("wal/0000000100000001/")), WalFolderIndex, "index")
    assert [entry.name for entry in index.entries] == [name(1, 6), name(1, 7)]
    assert not (store.root / wal_index_key("wal/0000000100000000/")).exists()


def test_a_second_run_while_one_is_at_work_refuses_and_changes_nothing(store, tmp_path, capsys):
    # Two runs at once (the daemon's, and one started by hand): the second, started while
    # the first is removing A, refuses with one line naming the first, before it looks.
    config = cli_config(tmp_path, store)
    recording = record(store)
    second: list[tuple[int, bool]] = []

    def delete(key: str) -> None:
        RecordingStorage.delete(recording, key)
        if key == "backups/A/manifest.json":
            before = {key: (store.root / key).read_bytes() for key in stored_keys(store)}
            code = main(["--config", str(config), "retention", "apply"])
            second.append((code, before == {key: (store.root / key).read_bytes() for key in stored_keys(store)}))

    recording.delete = delete  # type: ignore[method-assign]
    retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
    [(code, unchanged)] = second
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"pitrkit: the catalog is locked by retention apply on {socket.gethostname()} pid "
                             f"{os.getpid()} since ")
    assert unchanged
    assert ids(store) == ["C"] and state(store).deleting == []
    assert not (store.root / CATALOG_LOCK_KEY).exists()
    assert main(["--config", str(config), "retention", "apply"]) == 0  # free again


def test_a_run_keeps_the_intent_a_lockless_writer_stored_meanwhile(store):
    # A run of an older pitrkit takes no lock: the names it put in `deleting` while this
    # run was at work stay there when this run writes its result.
    recording = record(store)

    def delete(key: str) -> None:
        RecordingStorage.delete(recording, key)
        if key == "backups/A/manifest.json":
            store.archive.storage.storage.put(RETENTION_STATE_KEY, codec.encode(
                RetentionState(deleting=[*state(store).deleting, "B"])), overwrite=True)

    recording.delete = delete  # type: ignore[method-assign]
    retention.apply(store.archive, KEEP_TWO, now=NOW)
    assert state(store).deleting == ["B"]
    assert ids(store) == ["C"]


def test_a_grace_period_a_committing_backup_could_outlast_is_refused():
    # After its last part a backup-push waits up to backup.wal_timeout for its WAL, then
    # stores its manifest: a grace period no longer than that removes the parts of a
    # backup that then commits, a manifest naming parts that are gone.
    document = {"repository": {"url": "file:///srv/archive"}, "backup": {"wal_timeout": 1800},
                "retention": {"unfinished_grace": "30m"}}
    with pytest.raises(ConfigError, match="retention.unfinished_grace must be longer than backup.wal_timeout"):
        config_module.parse(document, "pitrkit.toml")
    document["retention"]["unfinished_grace"] = "31m"
    assert config_module.parse(document, "pitrkit.toml").retention.unfinished_grace == "31m"


def test_a_lease_on_a_backup_that_is_gone_holds_all_wal_and_says_so(store):
    # A restore that found its backup removed and died before dropping its lease: which
    # WAL it would read cannot be worked out, so none goes until the lease lapses.
    lease.take(store.archive, "GONE", 1, name(1, 2))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))
    assert report.removed_wal == [] and wal_present(store) == list(range(1, 21))
    assert report.notes == ["no WAL removed: leases hold GONE, not a finished backup (being removed by an "
                            "interrupted run, or gone): which WAL their restores read is unknown"]


def test_a_restore_interrupted_while_its_server_recovers_keeps_its_lease_for_the_operator(tmp_path, monkeypatch):
    # Ctrl-C while `restore --start` waits: the server it started (in its own session)
    # goes on replaying from the archive, so the lease must outlive the process, as after
    # a failed recovery, not lapse within minutes of the last renewal.
    store = three_backups(tmp_path / "archive")
    config = cli_config(tmp_path, store)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(pgstart, "find_bindir", lambda postgres, version, chosen=None: tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore, "start_and_report", interrupted)
    started = datetime.now(UTC)
    assert main(["--config", str(config), "restore", "--target-dir", str(tmp_path / "restored"), "--latest",
                 "--start"]) == 130
    [held] = lease.survey(store.archive, started).active
    assert held.backup_id == "C" and held.expires_at >= started + timedelta(hours=12)


# --- chains of incrementals ---------------------------------------------------------------


def a_chain(root: Path) -> SyntheticArchive:
    """Timeline 1, segments 1..20: a full F (segments 2-3), incrementals I1 on F (6-7) and
    I2 on I1 (10-11), and a full G (14-15); the sealed WAL folders indexed."""
    store = SyntheticArchive(root)
    store.segments(1, 1, 20)
    maintenance.record_backup(store.archive, store.backup("F", 1, 2, 3))
    maintenance.record_backup(store.archive, store.backup("I1", 1, 6, 7, parent="F"))
    maintenance.record_backup(store.archive, store.backup("I2", 1, 10, 11, parent="I1"))
    maintenance.record_backup(store.archive, store.backup("J", 1, 14, 15))
    return store


def test_a_kept_incremental_keeps_its_chain_and_the_wal_from_its_full(tmp_path):
    store = a_chain(tmp_path / "archive")
    report = retention.apply(store.archive, RetentionConfig(keep_last=2), now=NOW)
    assert [(kept.backup_id, kept.backup_type, kept.parent, kept.reasons) for kept in report.kept] == [
        ("F", "full", None, ["ancestor of I2"]), ("I1", "incremental", "F", ["ancestor of I2"]),
        ("I2", "incremental", "I1", ["last 2"]), ("J", "full", None, ["last 2"])]
    assert report.removed_backups == []
    assert wal_present(store) == list(range(2, 21))  # from F's first segment
    plan = make_plan(store.archive, Target(kind="lsn", lsn=lsn(12)))
    assert (plan.backup.backup_id, plan.chain) == ("I2", ["F", "I1"])


def test_a_chain_no_rule_keeps_goes_children_first(tmp_path):
    store = a_chain(tmp_path / "archive")
    recording = record(store)
    report = retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
    assert [kept.backup_id for kept in report.kept] == ["J"]
    assert [(gone.backup_id, gone.backup_type, gone.parent) for gone in report.removed_backups] == [
        ("F", "full", None), ("I1", "incremental", "F"), ("I2", "incremental", "I1")]
    manifests = [key for what, key in recording.changes if what == "delete" and key.endswith("manifest.json")]
    assert manifests == ["backups/I2/manifest.json", "backups/I1/manifest.json", "backups/F/manifest.json"]
    assert ids(store) == ["J"]
    assert wal_present(store) == list(range(14, 21))


def test_a_run_killed_at_any_step_never_leaves_an_incremental_without_its_parent(tmp_path):
    done = a_chain(tmp_path / "count")
    recording = record(done)
    retention.apply(done.archive, RetentionConfig(keep_last=1), now=NOW)
    for crash_at in range(len(recording.changes)):
        store = a_chain(tmp_path / f"crash-{crash_at}")
        crashing = record(store, crash_at)
        with pytest.raises(SimulatedCrash):
            retention.apply(store.archive, RetentionConfig(keep_last=1), now=NOW)
        store.archive.storage = crashing.storage
        # Even a reader that ignores `deleting` (it looks at the manifests alone) finds
        # every stored incremental's parent stored.
        stored = {path.parent.name for path in (store.root / "backups").glob("*/manifest.json")}
        for backup_id in stored:
            assert set(store.chains[backup_id]) <= stored, (crash_at, sorted(stored))


def test_an_incremental_whose_chain_is_broken_goes(tmp_path):
    store = a_chain(tmp_path / "archive")
    # I1 lost (removed by hand): I2 restores nothing, and the newest backup J is kept.
    for path in sorted((store.root / "backups/I1").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (store.root / "backups/I1").rmdir()
    report = retention.apply(store.archive, RetentionConfig(keep_last=2), now=NOW)
    assert [kept.backup_id for kept in report.kept] == ["F", "J"]
    removed = {gone.backup_id: gone.why for gone in report.removed_backups}
    assert removed == {"I2": "its chain is broken: its ancestor I1 is not in the archive"}
    assert ids(store) == ["F", "J"]


def test_a_lease_on_an_incremental_keeps_its_ancestors(tmp_path):
    store = a_chain(tmp_path / "archive")
    held = lease.take(store.archive, "I1", 1, name(1, 6))
    report = retention.apply(store.archive, RetentionConfig(keep_last=1))  # leases are on the real clock
    kept = {kept.backup_id: kept.reasons for kept in report.kept}
    assert kept == {"F": ["ancestor of I1"], "I1": [f"leased by {held.holder} until {show_time(held.expires_at)} "
                                                    f"(lease {held.lease_id})"], "J": ["last 1"]}
    assert [gone.backup_id for gone in report.removed_backups] == ["I2"]
    assert wal_present(store) == list(range(2, 21))


def test_the_dry_run_shows_each_backup_s_type_and_parent(capsys, tmp_path):
    store = a_chain(tmp_path / "archive")
    config = cli_config(tmp_path, store)
    assert main(["--config", str(config), "retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "keep    backup J: last 2" in out
    assert "keep    backup I1 (incremental on F): ancestor of I2" in out
    (tmp_path / "pitrkit.toml").write_text(config.read_text().replace("keep_last = 2", "keep_last = 1"))
    assert main(["--config", str(config), "retention", "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("remove  backup I2 (incremental on I1; 4 objects, ") for line in out), out
    (tmp_path / "pitrkit.toml").write_text(config.read_text().replace("keep_last = 1", "keep_last = 2"))
    assert main(["--config", str(config), "retention", "apply", "--dry-run", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(kept["backup_id"], kept["backup_type"], kept["parent"]) for kept in document["kept"]] == [
        ("F", "full", None), ("I1", "incremental", "F"), ("I2", "incremental", "I1"), ("J", "full", None)]

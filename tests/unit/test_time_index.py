"""The time index's stored objects and lookup (catalog/time_index.py): what a reader
refuses in a hostile object, how xids are kept, and how the lookup walks a path. The
reader of WAL records itself is tested on real WAL (tests/integration/test_walrecords.py);
here the entries are written as the index writes them, never as made-up WAL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from pitrkit.backup import restore_point
from pitrkit.catalog import restore_points, time_index
from pitrkit.catalog.archived_wal import ArchivedWal
from pitrkit.catalog.contents import WalListing, wal_rows
from pitrkit.catalog.documents import (
    IndexedRestorePoint,
    IndexedTransaction,
    RestorePoint,
    SegmentTimes,
    SegmentXids,
    TimeIndexFolder,
    XidIndexFolder,
)
from pitrkit.config import AgentConfig, Config, EncryptionConfig, RepositoryConfig
from pitrkit.errors import RefusedError
from pitrkit.postgres.wal import Lsn
from pitrkit.postgres.walrecords import full_xid
from pitrkit.progress import show_time
from pitrkit.restore.plan import PlanRefused, RestorePlan, describe, make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import codec, keys
from pitrkit.views.text import render
from pitrkit.wal.time_indexer import indexes_here
from tests.unit.synthetic_archive import SEGMENT_SIZE, SyntheticArchive, lsn, name, stored_at

FOLDER = "wal/0000000100000000/"


def entry(segno: int, first: int | None, last: int | None, *, final_xid: int = 700) -> SegmentTimes:
    final = None if last is None else IndexedTransaction(final_xid, last)
    return SegmentTimes(name(1, segno), first, last, [], final, True, 1000)


def decoded(text: str) -> TimeIndexFolder:
    return codec.decode(text.encode(), TimeIndexFolder, "catalog/times/0000000100000000")


@pytest.mark.parametrize(("segments", "why"), [
    ('[["000000010000000000000002",1,2,[],[5,2],true,9],["000000010000000000000001",1,2,[],[5,2],true,9]]',
     "not in WAL order"),
    ('[["000000020000000000000001",1,2,[],[5,2],true,9]]', "another folder"),
    ('[["000000010000000000000001",3,2,[],[5,2],true,9]]', "backwards"),
    ('[["000000010000000000000001",-1,2,[],[5,2],true,9]]', "out of range"),
    ('[["000000010000000000000001",1,2,[],null,true,9]]', "disagree"),
    ('[["000000010000000000000001",1,2,[["x",1,18446744073709551616]],[5,2],true,9]]', "LSN"),
    ('[["../../etc/passwd00000000",1,2,[],[5,2],true,9]]', "segment name"),
])
def test_a_hostile_time_index_does_not_decode(segments, why):
    with pytest.raises(ValueError, match=why):
        decoded(f'{{"folder":"{FOLDER}","segments":{segments},"indexed_at":"2026-12-07T01:00:00Z"}}')


def test_xid_ranges_must_be_sorted_and_disjoint():
    good = '{"folder":"wal/0000000100000000/","segments":[["000000010000000000000001",true,[[3,5],[7,7]]]]}'
    assert codec.decode(good.encode(), XidIndexFolder, "k").segments[0].xids == [(3, 5), (7, 7)]
    for ranges in ("[[3,5],[6,7]]", "[[7,7],[3,5]]", "[[5,3]]"):
        bad = good.replace("[[3,5],[7,7]]", ranges)
        with pytest.raises(ValueError, match="sorted and disjoint"):
            codec.decode(bad.encode(), XidIndexFolder, "k")


def test_xids_are_kept_as_ranges_and_given_the_nearest_epoch():
    assert time_index._ranges([9, 3, 4, 5, 9, 12]) == [(3, 5), (9, 9), (12, 12)]
    epoch = 7 << 32
    assert full_xid(100, epoch + 50) == epoch + 100
    assert full_xid(0xFFFFFFF0, epoch + 5) == epoch - (1 << 32) + 0xFFFFFFF0  # before the wrap
    assert full_xid(5, epoch - 10) == epoch + 5  # after it


@pytest.fixture
def indexed(tmp_path) -> SyntheticArchive:
    """Segments 1..6 of timeline 1; 1..5 indexed, their commits two seconds apart."""
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 6)
    times = [entry(1, None, None), entry(2, 10, 20, final_xid=702), entry(3, 30, 40, final_xid=703),
             entry(4, None, None), entry(5, 35, 60, final_xid=705)]
    xids = [SegmentXids(name(1, n), True, [(700 + n, 700 + n)]) for n in range(1, 6)]
    # These segments are large: a folder holds only a few of them.
    for log in sorted({t.segment[8:16] for t in times}):
        folder = f"wal/00000001{log}/"
        time_index._write(store.archive, time_index.times_key(1, int(log, 16)), TimeIndexFolder(
            folder=folder, segments=[t for t in times if t.segment[8:16] == log], indexed_at=codec_time()))
        time_index._write(store.archive, time_index.xids_key(1, int(log, 16)), XidIndexFolder(
            folder=folder, segments=[x for x in xids if x.segment[8:16] == log]))
    return store


def codec_time() -> datetime:
    return datetime(2026, 12, 7, 1, tzinfo=UTC)


def test_the_lookup_stops_at_the_first_segment_with_a_later_commit(indexed):
    wal = ArchivedWal(indexed.archive)
    path = wal.path(1)
    found = time_index.locate(indexed.archive, wal, path, 1, 6, time_index.after_time(25))
    assert isinstance(found, time_index.Located) and found.segno == 3
    assert found.before == IndexedTransaction(702, 20)  # the last commit of the segments before
    # A target later than a segment's latest commit skips it, whatever its earliest.
    found = time_index.locate(indexed.archive, wal, path, 1, 6, time_index.after_time(40))
    assert isinstance(found, time_index.Located) and found.segno == 5
    assert time_index.locate(indexed.archive, wal, path, 1, 6, time_index.after_time(20, exclusive=True)).segno == 2
    # Past every indexed commit, the lookup reaches segment 6, which has no entry.
    assert time_index.locate(indexed.archive, wal, path, 1, 6, time_index.after_time(60)) == \
        time_index.Unindexed(6, name(1, 6))
    assert time_index.locate(indexed.archive, wal, path, 1, 5, time_index.after_time(60)) == time_index.NotFound(5)
    found = time_index.locate_xid(indexed.archive, wal, path, 1, 6, 704)
    assert isinstance(found, time_index.Located) and found.segno == 4


def test_an_index_under_another_folders_key_is_ignored(indexed, caplog):
    moved = indexed.root / time_index.times_key(1, 0)
    moved.rename(indexed.root / time_index.times_key(1, 1))
    assert time_index.read_times(indexed.archive, 1, 1) is None
    assert "it is wal/0000000100000000/'s" in caplog.text


def test_a_corrupt_index_is_ignored_with_a_warning(indexed, caplog):
    stored = indexed.root / time_index.times_key(1, 0)
    stored.write_bytes(stored.read_bytes()[:-3])
    assert time_index.read_times(indexed.archive, 1, 0) is None
    assert "catalog rebuild" in caplog.text


def test_in_an_encrypted_archive_the_index_is_encrypted_and_read_back(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    store = SyntheticArchive(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    store.segments(1, 1, 2)
    # An xid of eight digits: three could be in the header's hex key id by chance.
    times = TimeIndexFolder(folder=FOLDER, segments=[entry(2, 10, 20, final_xid=70291357)], indexed_at=codec_time())
    time_index._write(store.archive, time_index.times_key(1, 0), times)
    stored = (store.root / time_index.times_key(1, 0)).read_bytes()
    assert name(1, 2).encode() not in stored and b"70291357" not in stored
    assert time_index.read_times(store.archive, 1, 0) == times


def test_wal_list_shows_each_indexed_segments_commit_times(indexed):
    rows = {row.name: row for row in wal_rows(indexed.archive)}
    assert (rows[name(1, 2)].indexed, rows[name(1, 2)].first_commit) == (True, datetime.fromtimestamp(10e-6, UTC))
    assert rows[name(1, 1)].indexed and rows[name(1, 1)].first_commit is None
    assert not rows[name(1, 6)].indexed
    text = {line.split()[0]: line for line in render(WalListing(files=list(rows.values()))).splitlines()[1:]}
    assert text[name(1, 2)].endswith(f"{show_time(rows[name(1, 2)].first_commit)} .. "
                                      f"{show_time(rows[name(1, 2)].last_commit)}")
    assert text[name(1, 1)].endswith(" none") and text[name(1, 6)].endswith(" -")


def test_a_time_plan_with_the_index_lists_the_wal_up_to_the_segment_it_stops_in(tmp_path):
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("A", 1, 2, 3)

    def micros(segno: int, before: int) -> int:
        return round((stored_at(segno) - timedelta(seconds=before)).timestamp() * 1_000_000)

    times = [entry(segno, micros(segno, 30), micros(segno, 10), final_xid=700 + segno) for segno in range(1, 21)]
    for log in sorted({t.segment[8:16] for t in times}):
        time_index._write(store.archive, time_index.times_key(1, int(log, 16)), TimeIndexFolder(
            folder=f"wal/00000001{log}/", segments=[t for t in times if t.segment[8:16] == log],
            indexed_at=codec_time()))
    target = stored_at(6) + timedelta(seconds=20)  # after segment 6's commits, before 7's
    plan = make_plan(store.archive, Target(kind="time", time=target, text=target.isoformat()))
    assert plan.segments == [name(1, segno) for segno in range(2, 8)]
    assert plan.stop is not None and plan.stop.segment == name(1, 7)
    # The WAL of these segments is a stand-in: the transactions either side stay unknown.
    assert (plan.stop.last_before, plan.stop.first_after) == (None, None)
    assert f"stops in:     {name(1, 7)} (time index)" in describe(plan)
    # Without segment 5's entry, the plan runs to the end of the WAL and says why.
    folder = time_index.read_times(store.archive, 1, 1)
    assert folder is not None
    time_index._write(store.archive, time_index.times_key(1, 1), TimeIndexFolder(
        folder=folder.folder, segments=[t for t in folder.segments if t.segment != name(1, 5)],
        indexed_at=codec_time()))
    plan = make_plan(store.archive, Target(kind="time", time=target, text=target.isoformat()))
    assert plan.stop is None and plan.segments[-1] == name(1, 20)
    assert any(f"segment {name(1, 5)} has no time index entry" in note for note in plan.notes)


def test_the_agent_indexes_only_where_it_can_read_the_archive_back():
    def config(**encryption: str) -> Config:
        return Config(repository=RepositoryConfig(url="file:///a"), encryption=EncryptionConfig(**encryption))

    assert indexes_here(config())
    assert indexes_here(config(mode="key", key_file="/k"))
    assert not indexes_here(config(mode="recipient", public_key_file="/p"))
    assert indexes_here(config(mode="recipient", public_key_file="/p", private_key_file="/s"))
    assert not indexes_here(msgspec.structs.replace(config(), agent=AgentConfig(time_index=False)))


# --- xid and name targets through the index ----------------------------------------------------


@pytest.fixture
def two_backups(tmp_path) -> SyntheticArchive:
    """Segments 1..20, every one indexed, segment n holding the commit of xid 700 + n;
    backups A (segments 2..3) and B (8..9); restore point 'hand' ends in segment 6,
    'early' in segment 9 before B is consistent (B's stop is at offset 0x100)."""
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("A", 1, 2, 3)
    store.backup("B", 1, 8, 9)
    points = {6: [IndexedRestorePoint("hand", 1, int(lsn(6, 0x500)))],
              9: [IndexedRestorePoint("early", 1, int(lsn(9, 0x50)))]}
    write_index(store, [SegmentTimes(name(1, n), n, n, points.get(n, []), IndexedTransaction(700 + n, n), True, 800)
                        for n in range(1, 21)])
    return store


def write_index(store: SyntheticArchive, times: list[SegmentTimes]) -> None:
    """Times as given, each segment's xid the one its final transaction names."""
    for log in sorted({t.segment[8:16] for t in times}):
        here = [t for t in times if t.segment[8:16] == log]
        time_index._write(store.archive, time_index.times_key(1, int(log, 16)), TimeIndexFolder(
            folder=f"wal/00000001{log}/", segments=here, indexed_at=codec_time()))
        time_index._write(store.archive, time_index.xids_key(1, int(log, 16)), XidIndexFolder(
            folder=f"wal/00000001{log}/",
            segments=[SegmentXids(t.segment, True, [(t.final.xid, t.final.xid)] if t.final else []) for t in here]))


def xid_plan(store: SyntheticArchive, xid: int) -> RestorePlan:
    return make_plan(store.archive, Target(kind="xid", xid=xid, text=str(xid)))


def test_an_indexed_xid_between_two_backups_is_planned_from_the_older(two_backups):
    plan = xid_plan(two_backups, 706)
    assert plan.backup.backup_id == "A" and plan.segments == [name(1, n) for n in range(2, 7)]
    assert any(f"places the commit of transaction 706 in segment {name(1, 6)}" in note for note in plan.notes)
    assert not any("could not check" in note for note in plan.notes)
    assert plan.fetch_until == name(1, 6)  # wal-fetch --until: recovery gets nothing past the plan
    after = xid_plan(two_backups, 715)
    assert after.backup.backup_id == "B" and after.segments == [name(1, n) for n in range(8, 16)]


def test_a_backup_consistent_inside_the_xids_segment_is_passed_over_with_a_note(two_backups):
    plan = xid_plan(two_backups, 709)
    assert plan.backup.backup_id == "A" and plan.segments[-1] == name(1, 9)
    assert any(f"backup B becomes consistent inside segment {name(1, 9)}" in note and "passed over" in note
               for note in plan.notes)


def test_an_xid_committed_before_every_backup_is_consistent_is_refused(two_backups):
    with pytest.raises(PlanRefused, match=f"no backup is consistent before the target transaction 702; the oldest "
                                          f"backup A .*places its commit in segment {name(1, 2)}"):
        xid_plan(two_backups, 702)


def test_an_xid_the_index_does_not_hold_runs_to_the_end_with_the_newest_backup(two_backups):
    plan = xid_plan(two_backups, 999)
    assert plan.backup.backup_id == "B" and plan.segments[-1] == name(1, 20)
    assert ("the index holds no commit of xid 999: recovery replays all the archived WAL and fails if it never "
            "meets it") in plan.notes
    assert any("could not check that backup B" in note for note in plan.notes)
    assert plan.fetch_until is None


def test_an_xid_behind_an_unindexed_segment_is_planned_as_without_an_index(two_backups):
    write_index(two_backups, [SegmentTimes(name(1, n), n, n, [], IndexedTransaction(700 + n, n), True, 800)
                              for n in range(1, 21) if n != 4])
    plan = xid_plan(two_backups, 706)
    assert plan.backup.backup_id == "B" and plan.segments[-1] == name(1, 20)
    assert any(f"segment {name(1, 4)} has no time index entry" in note and "transaction 706" in note
               for note in plan.notes)


def test_a_hand_made_restore_point_is_planned_from_the_index_like_a_recorded_one(two_backups):
    plan = make_plan(two_backups.archive, Target(kind="name", name="hand", text="hand"))
    assert plan.backup.backup_id == "A" and plan.segments == [name(1, n) for n in range(2, 7)]
    assert plan.target.lsn == lsn(6, 0x500) and plan.restore_point is None and plan.fetch_until == name(1, 6)
    # An LSN's stopping record may end in the next segment: that one is still served.
    assert make_plan(two_backups.archive, Target(kind="lsn", lsn=lsn(6, 0x500), text="")).fetch_until == name(1, 7)
    assert f"not in the catalog; the time index places it at LSN {lsn(6, 0x500)}" in describe(plan)
    # Its exact LSN is known: a backup consistent after it in the same segment is passed over.
    early = make_plan(two_backups.archive, Target(kind="name", name="early", text="early"))
    assert early.backup.backup_id == "A" and early.segments[-1] == name(1, 9)
    missing = make_plan(two_backups.archive, Target(kind="name", name="nowhere", text="nowhere"))
    assert missing.segments[-1] == name(1, 20)
    assert "the index holds no restore point 'nowhere'" in " ".join(missing.notes)


def test_a_restore_point_in_the_catalog_and_the_index_must_agree(two_backups):
    def recorded(at: Lsn) -> None:
        two_backups.archive.delete(restore_points.RESTORE_POINTS_KEY) if at != lsn(6, 0x500) else None
        restore_points.record(two_backups.archive, "hand", lambda: RestorePoint(
            name="hand", lsn=at, timeline=1, segment=name(1, (at - 1) // SEGMENT_SIZE),
            created_at=stored_at(6), system_identifier=1))

    recorded(lsn(6, 0x500))
    plan = make_plan(two_backups.archive, Target(kind="name", name="hand", text="hand"))
    assert plan.restore_point is not None and plan.segments[-1] == name(1, 6)
    recorded(lsn(7, 0x500))
    with pytest.raises(PlanRefused, match=f"the time index holds restore point 'hand' at LSN {lsn(6, 0x500)}"):
        make_plan(two_backups.archive, Target(kind="name", name="hand", text="hand"))


def test_restore_point_refuses_a_name_the_index_holds_before_asking_the_server(two_backups):
    # No server is configured: the refusal comes first.
    with pytest.raises(RefusedError, match=f"the time index holds a restore point 'hand' already .*segment "
                                           f"{name(1, 6)}"):
        restore_point.create(two_backups.archive, two_backups.archive.config, "hand")

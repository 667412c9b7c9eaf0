"""The restore planner on synthetic archives on real local storage (synthetic_archive.py):
which backup, which timeline, which segments, and every refusal naming what is missing.

Layout used throughout (1 GiB segments, 4 per WAL folder, segment n stored at T0 + n min):
timeline 1 holds segments 1..20; backup A starts in segment 2 and is consistent in 3,
backup B starts in 10 and is consistent in 11.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from pitrkit.catalog import lock, maintenance, restore_points
from pitrkit.catalog.documents import RestorePoint, RestorePointCatalog
from pitrkit.cli import main
from pitrkit.config import EncryptionConfig
from pitrkit.errors import PitrkitError
from pitrkit.postgres.wal import Lsn
from pitrkit.restore.plan import PlanRefused, RestorePlan, describe, latest_warning, make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import codec, keys
from pitrkit.storage.archive import TamperedDocument
from tests.unit.synthetic_archive import SEGMENT_SIZE, SyntheticArchive, lsn, name, stored_at


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    synthetic.backup("A", 1, 2, 3)
    synthetic.backup("B", 1, 10, 11)
    return synthetic


def at_lsn(segno: int, offset: int = 0x500) -> Target:
    return Target(kind="lsn", lsn=lsn(segno, offset), text=str(lsn(segno, offset)))


def at_time(segno: int, seconds: int = 20) -> Target:
    """A time while segment `segno` was the newest stored one."""
    moment = stored_at(segno) + timedelta(seconds=seconds)
    return Target(kind="time", time=moment, text=moment.isoformat())


LATEST = Target(kind="latest", text="latest")


def names(timeline: int, first: int, last: int) -> list[str]:
    return [name(timeline, segno) for segno in range(first, last + 1)]


def refusal(store: SyntheticArchive, target: Target, timeline=None) -> str:
    with pytest.raises(PlanRefused) as refused:
        make_plan(store.archive, target, timeline)
    message = str(refused.value)
    assert "\n" not in message
    return message


# --- two backups ----------------------------------------------------------------------


def test_target_before_the_first_backup_is_refused_naming_the_oldest(store):
    message = refusal(store, at_lsn(3, 0x50))  # backup A is consistent from 3/100
    assert "no backup is consistent before the target LSN" in message
    assert "the oldest backup A" in message and str(lsn(3, 0x100)) in message


def test_lsn_between_the_backups_uses_the_first(store):
    plan = make_plan(store.archive, at_lsn(6))
    assert plan.backup.backup_id == "A"
    assert plan.segments == names(1, 2, 6)
    assert plan.timeline == 1 and plan.history_files == []
    assert plan.wal_stored_size == sum(len(b"segment %d" % n) for n in range(2, 7))
    assert plan.archive_end == lsn(21)


def test_lsn_after_the_second_backup_uses_it(store):
    plan = make_plan(store.archive, at_lsn(15))
    assert plan.backup.backup_id == "B"
    assert plan.segments == names(1, 10, 15)


def test_lsn_inside_the_second_backup_uses_the_first(store):
    # B becomes consistent at 11/100: a target at 11/50 is before that.
    assert make_plan(store.archive, at_lsn(11, 0x50)).backup.backup_id == "A"


def test_time_targets_choose_by_stop_time_and_run_to_the_end_of_the_wal(store):
    between = make_plan(store.archive, at_time(6))
    assert between.backup.backup_id == "A"
    assert between.segments == names(1, 2, 20)  # which segment holds a time is unknown
    after = make_plan(store.archive, at_time(12))
    assert after.backup.backup_id == "B" and after.segments == names(1, 10, 20)
    message = refusal(store, at_time(1))
    assert "no backup is consistent before the target time" in message


def test_latest_uses_the_newest_backup_and_every_segment(store):
    plan = make_plan(store.archive, LATEST)
    assert plan.backup.backup_id == "B" and plan.segments == names(1, 10, 20)


# --- the end of the archive -----------------------------------------------------------


def test_lsn_past_the_archive_end_is_refused(store):
    message = refusal(store, at_lsn(21))
    assert message.startswith(f"the archive's WAL on timeline 1 ends at LSN {lsn(21)}, stored at ")
    assert message.endswith(f"the target LSN {lsn(21, 0x500)} is later")


def test_lsn_at_the_very_end_of_the_last_segment_is_refused(store):
    # Recovery to an LSN reads the record starting at or after it: in segment 21.
    assert "ends at LSN" in refusal(store, at_lsn(21, 0))


def test_time_past_the_newest_segment_is_refused(store):
    message = refusal(store, at_time(20, seconds=90))
    assert "the archive's WAL on timeline 1 ends at LSN" in message and "the target time" in message


# --- gaps -----------------------------------------------------------------------------


def test_a_gap_before_the_target_is_refused_naming_the_first_missing_segment(store):
    store.drop_segment(1, 5)
    store.drop_segment(1, 6)
    message = refusal(store, at_lsn(8))
    assert message.startswith(f"segment {name(1, 5)} is missing from the archive")
    # Up to the gap the plan still works, and the archive end is where the gap starts.
    plan = make_plan(store.archive, at_lsn(4))
    assert plan.segments == names(1, 2, 4) and plan.archive_end == lsn(5)


def test_a_gap_in_the_backups_own_wal_is_refused(store):
    store.drop_segment(1, 3)
    message = refusal(store, at_lsn(6))
    assert f"segment {name(1, 3)} is missing" in message
    assert f"backup A needs {name(1, 2)} to {name(1, 3)} to become consistent" in message


def test_latest_refuses_a_gap_before_the_newest_segment(store):
    store.drop_segment(1, 15)
    assert refusal(store, LATEST).startswith(f"segment {name(1, 15)} is missing")


def test_time_target_before_a_gap_is_planned_up_to_it_with_a_note(store):
    store.drop_segment(1, 15)
    plan = make_plan(store.archive, at_time(12))
    assert plan.segments == names(1, 10, 14)
    assert any(name(1, 15) in note for note in plan.notes)
    assert refusal(store, at_time(16)).startswith(f"segment {name(1, 15)} is missing")


# --- unfinished backups ---------------------------------------------------------------


def test_a_backup_without_its_manifest_is_never_chosen(store):
    store.backup("C", 1, 14, 15, manifest=False)
    assert make_plan(store.archive, at_lsn(18)).backup.backup_id == "B"
    assert make_plan(store.archive, LATEST).backup.backup_id == "B"


def test_an_archive_without_backups_is_refused(tmp_path):
    empty = SyntheticArchive(tmp_path / "archive")
    empty.segments(1, 1, 3)
    assert "holds no finished backup" in refusal(empty, LATEST)


# --- timelines ------------------------------------------------------------------------

SWITCH = lsn(8, 0x123456)  # timeline 2 branched off timeline 1 inside segment 8


@pytest.fixture
def branched(store) -> SyntheticArchive:
    """A copy restored to SWITCH was promoted at T0 + 12 min and archived into the same
    archive on timeline 2 (segments 8..14, from T0 + 13 min), while the original server
    went on archiving timeline 1 (to segment 20)."""
    store.history(2, [(1, SWITCH)], at=stored_at(12))
    store.segments(2, 8, 14, at=stored_at(13))
    return store


def test_a_target_on_both_timelines_is_refused_listing_them(branched):
    for target in (at_lsn(12), at_time(14)):
        message = refusal(branched, target)
        assert "lies on timelines 1 and 2" in message
        assert message.endswith("pass --timeline 1 or --timeline 2")


def test_timeline_2_follows_its_history_across_the_switch(branched):
    plan = make_plan(branched.archive, at_lsn(12), 2)
    # B started on timeline 1 after the switch: not on timeline 2's way.
    assert plan.backup.backup_id == "A"
    # The segment holding the switch point is read from the new timeline.
    assert plan.segments == names(1, 2, 7) + names(2, 8, 12)
    assert plan.history_files == ["00000002.history"]
    assert [(step.timeline, step.begin, step.end) for step in plan.path] == [(1, 0, SWITCH), (2, SWITCH, None)]
    assert plan.candidate_timelines == [1, 2] and plan.timeline == 2
    assert plan.archive_end == lsn(15)


def test_timeline_1_ignores_the_branch(branched):
    plan = make_plan(branched.archive, at_lsn(12), 1)
    assert plan.backup.backup_id == "B" and plan.segments == names(1, 10, 12)


def test_a_target_before_the_branch_needs_no_timeline(branched):
    plan = make_plan(branched.archive, at_lsn(5))
    assert plan.timeline == 1 and plan.candidate_timelines == [1]
    assert plan.segments == names(1, 2, 5)


def test_a_target_only_timeline_2_reaches_is_planned_on_it(store):
    # The original server stopped at segment 9; the branch went on to segment 14.
    for segno in range(10, 21):
        store.drop_segment(1, segno)
    store.history(2, [(1, SWITCH)], at=stored_at(12))
    store.segments(2, 8, 14, at=stored_at(13))
    plan = make_plan(store.archive, at_lsn(13))
    assert plan.timeline == 2 and plan.segments == names(1, 2, 7) + names(2, 8, 13)


def test_latest_defaults_to_the_highest_timeline(branched):
    plan = make_plan(branched.archive, LATEST)
    assert plan.timeline == 2 and plan.backup.backup_id == "A"
    assert plan.segments == names(1, 2, 7) + names(2, 8, 14)
    assert make_plan(branched.archive, LATEST, "latest").timeline == 2
    assert make_plan(branched.archive, LATEST, 1).segments == names(1, 10, 20)


def test_current_follows_the_chosen_backups_timeline(branched):
    plan = make_plan(branched.archive, at_lsn(12), "current")
    assert plan.timeline == 1 and plan.backup.backup_id == "B"


def test_a_timeline_the_archive_does_not_have_is_refused(branched):
    assert refusal(branched, at_lsn(12), 3) == "timeline 3 is not in the archive (it has timelines 1 and 2)"


def test_a_timeline_without_a_history_file_leads_nowhere(branched):
    branched.segments(3, 9, 10, at=stored_at(30))
    message = refusal(branched, at_lsn(9), 3)
    assert message.startswith("timeline 3 does not lead anywhere: timeline 3 has no history file 00000003.history")


def test_a_missing_switch_segment_on_the_new_timeline_is_a_gap(branched):
    branched.drop_segment(2, 8)
    assert refusal(branched, at_lsn(12), 2).startswith(f"segment {name(2, 8)} is missing")


# --- the catalog's indexes ------------------------------------------------------------


def test_plans_are_the_same_with_and_without_indexes(branched):
    targets = [(at_lsn(6), None), (at_lsn(12), 2), (at_time(12), 1), (LATEST, None)]
    before = [make_plan(branched.archive, target, timeline) for target, timeline in targets]
    written = maintenance.refresh(branched.archive)
    # Timeline 1 fills folders 0..5 (segments 1..20), timeline 2 folders 2..3: the
    # newest folder of each still receives WAL.
    expected = [f"catalog/wal/00000001{log:08X}.json" for log in range(5)] + ["catalog/wal/0000000200000002.json"]
    assert written == expected
    after = [make_plan(branched.archive, target, timeline) for target, timeline in targets]
    assert after == before


def test_a_segment_an_index_lacks_is_looked_for_before_it_is_called_missing(store):
    store.drop_segment(1, 5)
    maintenance.refresh(store.archive)  # the index of folder 1 says segment 5 is absent
    store.segments(1, 5, 5)  # a late push
    assert make_plan(store.archive, at_lsn(8)).segments == names(1, 2, 8)


def test_an_index_is_trusted_for_presence_until_rebuilt(store):
    maintenance.refresh(store.archive)
    store.drop_segment(1, 5)  # by hand, behind the catalog's back
    assert make_plan(store.archive, at_lsn(8)).segments == names(1, 2, 8)
    maintenance.rebuild(store.archive)
    assert refusal(store, at_lsn(8)).startswith(f"segment {name(1, 5)} is missing")


def test_a_corrupt_index_is_ignored(store):
    maintenance.refresh(store.archive)
    (store.root / "catalog/wal/0000000100000001.json").write_text("{not json")
    store.drop_segment(1, 5)
    assert refusal(store, at_lsn(8)).startswith(f"segment {name(1, 5)} is missing")


# --- showing --------------------------------------------------------------------------


def test_describe_names_the_target_backup_segments_and_archive_end(branched, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    plan = make_plan(branched.archive, at_time(12), 1)
    text = describe(plan)
    assert "target:       time '2026-11-23T12:12:20+00:00' = 2026-11-23 12:12:20+00:00" in text
    assert "backup:       B 'label B'" in text
    assert "chosen as the newest backup on this path that is consistent before the target (from 2026-11-23 " \
           "12:10:30+00:00)" in text
    assert f"11 segments, {name(1, 10)} .. {name(1, 20)}" in text
    assert f"archive end:  {lsn(21)}" in text
    assert "note:" in text


def test_a_plan_round_trips_through_json(branched):
    plan = make_plan(branched.archive, at_lsn(12), 2)
    assert codec.decode(codec.encode(plan), RestorePlan, "plan") == plan


def test_segment_size_is_the_archives(store):
    plan = make_plan(store.archive, at_lsn(6))
    assert plan.archive_end % SEGMENT_SIZE == 0


def test_backup_history_files_are_not_segments(store):
    store.archive.put(f"wal/{name(1, 4)[:16]}/{name(1, 4)}.00000028.backup", b"START WAL LOCATION: ...")
    store.archive.put(f"wal/{name(1, 21)[:16]}/{name(1, 21)}.00000028.backup", b"START WAL LOCATION: ...")
    maintenance.refresh(store.archive)
    assert make_plan(store.archive, LATEST).segments == names(1, 10, 20)
    assert make_plan(store.archive, at_lsn(6)).segments == names(1, 2, 6)
    assert "ends at LSN" in refusal(store, at_lsn(21))


# --- a partial segment at the end -------------------------------------------------------
# Segment 21 is open on the primary; a streaming receiver shipped what it holds so far as
# <segment>.partial, 30 s after segment 20 was stored: its WAL fills 5 pages.

PAGE = 8192


@pytest.fixture
def streamed(store) -> SyntheticArchive:
    store.partial(1, 21, pages=5, at=stored_at(20) + timedelta(seconds=30))
    return store


def test_latest_ends_in_the_newest_partial(streamed, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    plan = make_plan(streamed.archive, LATEST)
    assert plan.segments == [*names(1, 10, 20), f"{name(1, 21)}.partial"]
    assert plan.archive_end == lsn(21, 5 * PAGE)
    assert any(f"only stored as {name(1, 21)}.partial" in note and "upper bound" in note for note in plan.notes)
    assert plan.wal_stored_size > sum(len(b"segment %d" % n) for n in range(10, 21))
    assert f"{name(1, 10)} .. {name(1, 21)}.partial" in describe(plan)


def test_an_lsn_within_the_partials_wal_is_reached_one_past_it_is_refused(streamed):
    assert make_plan(streamed.archive, at_lsn(21, 3 * PAGE)).segments[-1] == f"{name(1, 21)}.partial"
    assert make_plan(streamed.archive, at_lsn(15)).segments == names(1, 10, 15)
    message = refusal(streamed, at_lsn(21, 5 * PAGE))
    assert message.startswith(f"the archive's WAL on timeline 1 ends at LSN {lsn(21, 5 * PAGE)} at most "
                              f"(in the partial segment {name(1, 21)}.partial, stored at ")
    assert "is later" in refusal(streamed, at_lsn(22))


def test_a_time_until_the_partial_was_shipped_is_reached(streamed):
    assert make_plan(streamed.archive, at_time(20, seconds=20)).segments[-1] == f"{name(1, 21)}.partial"
    assert "ends at LSN" in refusal(streamed, at_time(20, seconds=40))


def test_a_re_shipped_partial_moves_the_archive_end(streamed):
    streamed.partial(1, 21, pages=9, at=stored_at(20) + timedelta(seconds=40))
    assert make_plan(streamed.archive, LATEST).archive_end == lsn(21, 9 * PAGE)
    assert make_plan(streamed.archive, at_time(20, seconds=35)).segments[-1] == f"{name(1, 21)}.partial"


def test_the_full_segment_wins_over_its_partial(streamed):
    streamed.segments(1, 21, 21)
    plan = make_plan(streamed.archive, LATEST)
    assert plan.segments == names(1, 10, 21) and plan.archive_end == lsn(22)
    assert not any("partial" in note for note in plan.notes)


def test_a_partial_with_later_wal_after_it_is_a_gap(streamed):
    streamed.segments(1, 22, 22)
    assert refusal(streamed, LATEST).startswith(f"segment {name(1, 21)} is missing")
    assert make_plan(streamed.archive, at_lsn(20)).segments == names(1, 10, 20)


def test_a_partial_left_behind_an_archived_segment_is_ignored(store):
    store.partial(1, 19, pages=5, at=stored_at(19))  # its full segment came later
    plan = make_plan(store.archive, LATEST)
    assert plan.segments == names(1, 10, 20) and plan.archive_end == lsn(21)


def test_a_partial_on_the_old_timeline_does_not_end_the_new_ones_path(branched):
    # Timeline 1 stops at segment 20 and its open segment 21 was shipped as a partial:
    # timeline 2 (to segment 14) does not pass there.
    branched.partial(1, 21, pages=5, at=stored_at(21))
    assert make_plan(branched.archive, LATEST).segments == names(1, 2, 7) + names(2, 8, 14)
    assert make_plan(branched.archive, LATEST, 1).segments[-1] == f"{name(1, 21)}.partial"


def test_the_switch_segment_of_a_new_timeline_can_be_a_partial(store):
    """A promoted copy's first segment is still open: only its partial is stored."""
    store.history(2, [(1, SWITCH)], at=stored_at(12))
    end = store.partial(2, 8, pages=300, at=stored_at(13))
    plan = make_plan(store.archive, LATEST)
    assert plan.timeline == 2
    assert plan.segments == [*names(1, 2, 7), f"{name(2, 8)}.partial"] and plan.archive_end == end
    assert plan.segments[-1] == make_plan(store.archive, Target(kind="lsn", lsn=SWITCH + 16, text="x"), 2).segments[-1]


def test_plans_with_a_partial_are_the_same_with_and_without_indexes(streamed):
    """Indexes (of sealed folders) never hold a partial; a partial in the newest folder
    is always listed afresh."""
    targets = [LATEST, at_lsn(21, PAGE), at_time(20, seconds=20)]
    before = [make_plan(streamed.archive, target) for target in targets]
    maintenance.refresh(streamed.archive)
    assert [make_plan(streamed.archive, target) for target in targets] == before


# --- the server's timeline ----------------------------------------------------------------


def test_latest_along_a_branch_warns_naming_both_timelines(store):
    """A test restore promoted with archiving on leaves timeline 2 newest in the archive."""
    store.history(2, [(1, lsn(12, 0x500))], at=stored_at(12))
    store.segments(2, 12, 15, at=stored_at(21))
    plan = make_plan(store.archive, LATEST)
    assert plan.timeline == 2
    assert latest_warning(plan, 1) == (
        "warning: the newest timeline in the archive, 2, is not timeline 1 that the server in [postgres] conninfo "
        "is on: --latest follows timeline 2 (a restored copy promoted with archiving on?); to restore the "
        "server's own history, add --timeline server")
    assert latest_warning(plan, 2) is None and latest_warning(plan, None) is None
    assert latest_warning(make_plan(store.archive, LATEST, 1), 1) is None
    assert latest_warning(make_plan(store.archive, at_lsn(15), 1), 1) is None  # a target named: no surprise


def test_timeline_server_needs_the_server(store, tmp_path, capsys):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    assert main(["--config", str(config), "restore-plan", "--latest", "--timeline", "server"]) != 0
    assert capsys.readouterr().err == ("pitrkit: --timeline server needs the server's timeline: [postgres] conninfo "
                                       "is not set\n")


# --- chains of incrementals -----------------------------------------------------------


def remove_backup(store: SyntheticArchive, backup_id: str) -> None:
    for path in sorted((store.root / "backups" / backup_id).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (store.root / "backups" / backup_id).rmdir()


def test_an_incremental_is_chosen_like_a_full_and_its_plan_lists_its_chain(store):
    store.backup("C", 1, 14, 15, parent="B")
    store.backup("D", 1, 17, 18, parent="C")
    plan = make_plan(store.archive, LATEST)
    assert (plan.backup.backup_id, plan.chain, plan.notes) == ("D", ["B", "C"], [])
    assert plan.segments == names(1, 17, 20)
    assert "chain:        incremental: 2 ancestor(s) to fetch blocks from, B > C > D" in describe(plan).splitlines()
    assert codec.decode(codec.encode(plan), RestorePlan, "plan").chain == ["B", "C"]
    full = make_plan(store.archive, at_lsn(12))
    assert (full.backup.backup_id, full.chain) == ("B", [])
    assert "chain:" not in describe(full)


def test_a_newest_incremental_with_a_broken_chain_is_passed_over_saying_why(store):
    store.backup("C", 1, 14, 15, parent="B")
    store.backup("D", 1, 17, 18, parent="C")
    remove_backup(store, "C")
    plan = make_plan(store.archive, LATEST)
    assert (plan.backup.backup_id, plan.chain) == ("B", [])
    assert plan.notes == ["backup D is newer, but its chain is broken (its ancestor C is not in the archive): "
                          "planned from B"]
    assert plan.segments == names(1, 10, 20)


def test_only_broken_incrementals_before_the_target_is_a_refusal_naming_the_missing_ancestor(store):
    store.backup("C", 1, 14, 15, parent="B")
    remove_backup(store, "A")
    remove_backup(store, "B")
    assert refusal(store, LATEST) == ("no usable backup is consistent before the latest point: backup C's chain is "
                                      "broken: its ancestor B is not in the archive")


# --- xid, restore points, immediate, exclusive ---------------------------------------------


def point(name_: str, at: Lsn, timeline: int = 1, *, segment: str | None = None, system: int = 1) -> RestorePoint:
    """A restore point as `pitrkit restore-point` records it, its record ending at `at`."""
    return RestorePoint(name=name_, lsn=at, timeline=timeline,
                        segment=segment or name(timeline, (at - 1) // SEGMENT_SIZE),
                        created_at=stored_at((at - 1) // SEGMENT_SIZE), system_identifier=system)


def recorded(store: SyntheticArchive, *points: RestorePoint) -> None:
    for each in points:
        restore_points.record(store.archive, each.name, lambda each=each: each)


def test_immediate_replays_only_the_newest_backups_own_wal(store):
    plan = make_plan(store.archive, Target(kind="immediate", text="immediate"))
    assert plan.backup.backup_id == "B" and plan.segments == names(1, 10, 11)
    assert plan.replay_end == plan.backup.stop_lsn
    assert any("as soon as backup B is consistent" in note for note in plan.notes)
    # Along a timeline: the newest backup on its path.
    assert make_plan(store.archive, Target(kind="immediate"), 1).backup.backup_id == "B"


def test_immediate_is_refused_when_the_backups_own_wal_is_missing(store):
    store.drop_segment(1, 11)
    message = refusal(store, Target(kind="immediate"))
    assert f"segment {name(1, 11)} is missing" in message and "backup B needs" in message


def test_an_xid_runs_to_the_end_of_the_wal_saying_what_could_not_be_checked(branched):
    plan = make_plan(branched.archive, Target(kind="xid", xid=(1 << 32) + 1000, text="4294968296"))
    # Placed by nothing: the newest timeline, as PostgreSQL's default, to its end.
    assert plan.timeline == 2 and plan.segments == names(1, 2, 7) + names(2, 8, 14)
    notes = " ".join(plan.notes)
    assert "cannot tell which segment holds the commit of transaction 4294968296" in notes
    assert "could not check that backup A is consistent before it" in notes
    assert "planned along the newest, 2" in notes
    plan = make_plan(branched.archive, Target(kind="xid", xid=1000, inclusive=False), 1)
    assert plan.backup.backup_id == "B" and plan.segments == names(1, 10, 20)
    assert "recovery_target_inclusive = off" in " ".join(plan.notes)
    assert "planned along the newest" not in " ".join(plan.notes)


def test_an_xid_is_refused_past_a_gap_like_latest(store):
    store.drop_segment(1, 15)
    message = refusal(store, Target(kind="xid", xid=1000))
    assert f"segment {name(1, 15)} is missing" in message


def test_a_recorded_restore_point_is_planned_like_an_lsn_at_its_end(store):
    recorded(store, point("before upgrade", lsn(6, 0x500)))
    plan = make_plan(store.archive, Target(kind="name", name="before upgrade"))
    assert plan.backup.backup_id == "A" and plan.segments == names(1, 2, 6)
    assert plan.target.lsn == lsn(6, 0x500) and plan.replay_end == lsn(6, 0x500)
    assert plan.restore_point is not None and plan.restore_point.segment == name(1, 6)
    text = describe(plan)
    assert f"restore point 'before upgrade' at LSN {lsn(6, 0x500)} on timeline 1" in text
    assert "consistent before the target" in text
    assert not any("cannot tell" in note for note in plan.notes)


def test_a_restore_point_ending_a_segment_needs_no_later_one(store):
    for segno in range(13, 21):
        store.drop_segment(1, segno)
    recorded(store, point("edge", lsn(13)))  # its record ends exactly where segment 12 ends
    assert make_plan(store.archive, Target(kind="name", name="edge")).segments == names(1, 10, 12)


def test_a_restore_point_before_every_backup_or_past_the_archive_is_refused_naming_why(store):
    recorded(store, point("early", lsn(3, 0x50)), point("late", lsn(21, 0x40)))
    assert "no backup is consistent before restore point 'early'" in refusal(store, Target(kind="name", name="early"))
    message = refusal(store, Target(kind="name", name="late"))
    assert "ends at LSN" in message and "restore point 'late'" in message


def test_a_restore_point_on_timeline_1_before_the_branch_is_reached_from_timeline_2(branched):
    recorded(branched, point("p", lsn(5, 0x10)), point("after", lsn(12, 0x10)))
    plan = make_plan(branched.archive, Target(kind="name", name="p"))
    assert plan.timeline == 1 and plan.segments == names(1, 2, 5)
    assert make_plan(branched.archive, Target(kind="name", name="p"), 2).segments == names(1, 2, 5)
    # After the branch, timeline 2's path leaves timeline 1: it never meets the point.
    assert "never meets the point" in refusal(branched, Target(kind="name", name="after"), 2)


def test_a_forged_restore_point_is_refused(store):
    recorded(store, point("moved", lsn(6, 0x500), segment=name(1, 7)), point("foreign", lsn(6, 0x500), system=2))
    assert "does not hold that LSN" in refusal(store, Target(kind="name", name="moved"))
    assert "system identifier 2" in refusal(store, Target(kind="name", name="foreign"))


def test_an_unrecorded_restore_point_is_planned_like_a_time_saying_so(store):
    recorded(store, point("known", lsn(6, 0x500)))
    plan = make_plan(store.archive, Target(kind="name", name="made by hand"))
    assert plan.backup.backup_id == "B" and plan.segments == names(1, 10, 20) and plan.restore_point is None
    assert "which the catalog does not record" in " ".join(plan.notes)
    assert "not in the catalog" in describe(plan)


def test_a_recorded_name_is_refused_a_second_time_before_anything_is_made(store):
    recorded(store, point("twice", lsn(6, 0x500)))
    made = []
    with pytest.raises(restore_points.NameTaken, match="'twice' already exists"):
        restore_points.record(store.archive, "twice", lambda: made.append(1) or point("twice", lsn(7)))
    assert made == [] and [p.name for p in restore_points.restore_points(store.archive)] == ["twice"]


def test_catalog_rebuild_keeps_the_restore_points_and_says_why(store, tmp_path, capsys):
    recorded(store, point("a", lsn(6, 0x500)), point("b", lsn(7)))
    before = (store.root / restore_points.RESTORE_POINTS_KEY).read_bytes()
    report = maintenance.rebuild(store.archive)
    assert report[-1] == ("kept catalog/restore-points.json: 2 restore points (not rebuilt: pitrkit does not read "
                          "restore point records from the WAL yet)")
    assert (store.root / restore_points.RESTORE_POINTS_KEY).read_bytes() == before


def test_a_restore_points_document_that_does_not_decode_is_refused_not_ignored(store):
    store.archive.put(restore_points.RESTORE_POINTS_KEY, b'{"points": [{"name": ""}]}')
    with pytest.raises(restore_points.UnreadablePoints, match="restore-points.json"):
        make_plan(store.archive, Target(kind="name", name="x"))
    assert "cannot be read" in (restore_points.rebuild_line(store.archive) or "")


def test_an_xid_or_unrecorded_name_along_a_branch_warns_like_latest(store):
    store.history(2, [(1, lsn(12, 0x500))], at=stored_at(12))
    store.segments(2, 12, 15, at=stored_at(21))
    recorded(store, point("known", lsn(13, 0x10), timeline=2))
    xid = make_plan(store.archive, Target(kind="xid", xid=750))
    assert xid.timeline == 2 and "--xid follows timeline 2" in (latest_warning(xid, 1) or "")
    unrecorded = make_plan(store.archive, Target(kind="name", name="by hand"))
    assert "--name follows timeline 2" in (latest_warning(unrecorded, 1) or "")
    # A recorded point names its own timeline: no surprise.
    assert latest_warning(make_plan(store.archive, Target(kind="name", name="known")), 1) is None


def test_a_point_made_but_not_recorded_says_so_and_how_to_restore_to_it(store):
    successors = []

    def make() -> RestorePoint:
        # While the server made it, this writer's lock lapsed and another took it.
        store.archive.delete(lock.CATALOG_LOCK_KEY)
        successors.append(lock.take(store.archive, "retention apply"))
        return point("lost", lsn(7, 0x10))

    try:
        with pytest.raises(PitrkitError) as failed:
            restore_points.record(store.archive, "lost", make)
    finally:
        for each in successors:
            each.release()
    message = str(failed.value)
    assert "was made at LSN" in message and f"restore to it with --lsn {lsn(7, 0x10)}" in message
    assert restore_points.restore_points(store.archive) == []


def test_in_an_encrypted_archive_the_restore_points_are_authenticated(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    sealed = SyntheticArchive(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    sealed.segments(1, 1, 8)
    sealed.backup("A", 1, 2, 3)
    recorded(sealed, point("sealed", lsn(6, 0x500)))
    assert make_plan(sealed.archive, Target(kind="name", name="sealed")).segments == names(1, 2, 6)
    # A plain document in its place, moving the point: not authentic, refused (never taken for "no points").
    forged = RestorePointCatalog(points=[point("sealed", lsn(8, 0x500))])
    sealed.archive.put(restore_points.RESTORE_POINTS_KEY, codec.encode(forged), overwrite=True)
    with pytest.raises(TamperedDocument, match="restore-points.json does not authenticate"):
        make_plan(sealed.archive, Target(kind="name", name="sealed"))

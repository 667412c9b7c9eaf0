"""Point-in-time restore end to end, on PostgreSQL 15 and 18 (issue 3): backup-push, the
catalog, restore-plan and restore, run as the server user through the installed
`pitrkit`, with archive_command and restore_command exactly as PostgreSQL runs them.

The yardstick is always the data: a restore is right when every table's row count and
content hash equal those noted at the target (see tests/pitr_workload.py).
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from pitrkit.postgres.wal import Lsn

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    branch_at,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    recovered,
    refusal,
    restore_into,
    restore_plan,
    restore_started,
    succeeded,
    timeline,
    wait_until_paused,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration

SEGMENT_SIZE = 16 * 1024 * 1024  # the clusters' (initdb's default)
SEGMENTS_PER_LOG = (1 << 32) // SEGMENT_SIZE
INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?[+-]\d{2}:\d{2}")


def assert_nothing_copied(directory: Path) -> None:
    assert not directory.exists() or not any(directory.iterdir()), sorted(directory.iterdir())


def wait_for_history_archived(setup, restored: pgharness.Cluster) -> int:
    """The new timeline of a promoted restore, once its history file is in the archive: a
    later restore that promotes must see it, or it would pick the same timeline number."""
    new_timeline = timeline(restored)
    pgharness.wait_for(lambda: setup.stored(f"{new_timeline:08X}.history").exists(), 60,
                       what=f"{new_timeline:08X}.history to be archived")
    return new_timeline


def next_segment(name: str) -> tuple[str, str]:
    """The name of the 16 MiB segment after `name`, and the LSN where it starts."""
    segno = int(name[8:16], 16) * SEGMENTS_PER_LOG + int(name[16:], 16) + 1
    start = segno * SEGMENT_SIZE
    following = f"{name[:8]}{segno // SEGMENTS_PER_LOG:08X}{segno % SEGMENTS_PER_LOG:08X}"
    return following, f"{start >> 32:X}/{start & 0xFFFFFFFF:X}"


def reported_instants(report: str) -> set[datetime]:
    """Every instant a report prints with its offset (in whichever time zone it chose)."""
    return {datetime.fromisoformat(text) for text in INSTANT.findall(report)}


def names_timelines(message: str, *timelines: int) -> bool:
    return all(re.search(rf"\b{t}\b", message) for t in timelines)


# --- 1. end to end ---------------------------------------------------------------------------


def test_restore_to_a_time_an_lsn_and_the_latest(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, _ = primary_with_a_backup(cluster, setup)
    archive_everything(primary)  # the WAL after the backup spans segments
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    write_round(primary, 5)
    drop_doomed(primary)
    final = digests(primary)
    archive_everything(primary)
    assert "doomed" in point.digests and "doomed" not in final
    assert point.digests["events"] != final["events"]

    # Copy all three first: the restores that promote archive a new timeline, which must
    # not exist yet when the others are planned (that case is the timelines test's).
    at_time, result = restore_into(cluster, setup, "--to", point.time)
    succeeded(result)
    at_lsn, result = restore_into(cluster, setup, "--lsn", point.lsn, "--action", "pause")
    succeeded(result)
    latest, _ = restore_started(cluster, setup, "--latest")

    # Latest, started by pitrkit: everything, the drop included.
    wait_until_promoted(latest)
    assert digests(latest) == final
    first_branch = wait_for_history_archived(setup, latest)

    # The time, started by the DBA (the Cluster class): promotes by default.
    at_time.start(timeout=180)
    wait_until_promoted(at_time)
    assert digests(at_time) == point.digests
    assert wait_for_history_archived(setup, at_time) > first_branch

    # The LSN, paused at the target: read-only, still in recovery.
    at_lsn.start(timeout=180)
    wait_until_paused(at_lsn)
    assert at_lsn.sql("SELECT pg_is_in_recovery()")[0][0]
    assert digests(at_lsn) == point.digests


# --- 2. timelines ----------------------------------------------------------------------------


def test_restore_along_a_new_timeline_and_ambiguous_targets(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    backup_push(setup)
    write_round(primary, 1)
    branch = note_point(primary)
    write_round(primary, 2)
    archive_everything(primary)

    # A restore to `branch`, promoted: it archives into the same archive on timeline 2.
    _, on_two, last_on_two = branch_at(cluster, setup, branch)
    assert setup.stored("00000002.history").exists()
    assert last_on_two.startswith("00000002") and setup.stored(last_on_two).exists()

    # Timeline 1's archive ended before on_two.time: only timeline 2 reaches it.
    plan = restore_plan(setup, "--time", on_two.time)
    assert plan["timeline"] == 2
    restored = recovered(cluster, setup, "--to", on_two.time)
    assert digests(restored) == on_two.digests
    wait_for_history_archived(setup, restored)

    # The original keeps writing and archiving past on_two, in time and in LSN: now
    # on_two's time and LSN exist on both timelines.
    write_round(primary, 3)
    while Lsn.parse(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]) <= Lsn.parse(on_two.lsn):
        write_round(primary, 4)
        primary.switch_wal()
    archive_everything(primary)

    for target in (["--time", on_two.time], ["--lsn", on_two.lsn]):
        message = refusal(setup.run("restore-plan", *target))
        assert "timeline" in message and names_timelines(message, 1, 2), message
        assert restore_plan(setup, *target, "--timeline", "2")["timeline"] == 2
        assert restore_plan(setup, *target, "--timeline", "1")["timeline"] == 1
    refused, result = restore_into(cluster, setup, "--to", on_two.time)
    refusal(result)
    assert_nothing_copied(refused.pgdata)

    along_two = recovered(cluster, setup, "--lsn", on_two.lsn, "--timeline", "2", pause=True)
    assert digests(along_two) == on_two.digests


# --- 3. two backups --------------------------------------------------------------------------


def test_the_newest_backup_before_the_target_is_chosen(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    write_round(primary, 1)
    before = note_point(primary)
    write_round(primary, 2)
    first = backup_push(setup)["backup_id"]
    write_round(primary, 3)
    between = note_point(primary)
    write_round(primary, 4)
    second = backup_push(setup)["backup_id"]
    write_round(primary, 5)
    after = note_point(primary)
    write_round(primary, 6)
    archive_everything(primary)
    assert first != second

    listed = json.loads(succeeded(setup.run("backup-list", "--json")))
    assert [b["backup_id"] for b in listed["backups"]] == [first, second]

    for target in (["--time", before.time], ["--lsn", before.lsn]):
        assert "backup" in refusal(setup.run("restore-plan", *target))
    for target, chosen in ((["--time", between.time], first), (["--lsn", between.lsn], first),
                           (["--time", after.time], second), (["--lsn", after.lsn], second),
                           (["--latest"], second)):
        assert restore_plan(setup, *target)["backup"]["backup_id"] == chosen, target

    # The older backup, replayed past the newer one's start.
    restored = recovered(cluster, setup, "--to", between.time)
    assert digests(restored) == between.digests


# --- 4. refusals -----------------------------------------------------------------------------


def test_targets_outside_the_archive_are_refused(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    write_round(primary, 1)
    before = note_point(primary)
    write_round(primary, 2)
    backup_push(setup)
    write_round(primary, 3)
    last = archive_everything(primary)
    write_round(primary, 4)  # stays in pg_wal: the archive has nothing of it
    beyond = note_point(primary)
    first_missing, archive_end = next_segment(last)

    for target, missing_piece in (
        (["--to", before.time], "backup"), (["--lsn", before.lsn], "backup"),
        (["--to", beyond.time], None), (["--lsn", beyond.lsn], None),
    ):
        plan_message = refusal(setup.run("restore-plan", *target))
        refused, result = restore_into(cluster, setup, *target)
        message = refusal(result)
        for said in (plan_message, message):
            if missing_piece:
                assert missing_piece in said, said
            else:  # the segment that would hold the target, or where the archive ends
                assert first_missing in said or archive_end in said, said
        assert_nothing_copied(refused.pgdata)


def test_a_wal_gap_is_refused(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    backup = backup_push(setup)
    write_round(primary, 1)
    gone = archive_everything(primary)
    write_round(primary, 2)
    archive_everything(primary)
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    archive_everything(primary)
    assert gone > backup["last_segment"]
    restore_plan(setup, "--to", point.time)  # reachable while the segment is there

    setup.stored(gone).unlink()
    for target in (["--to", point.time], ["--lsn", point.lsn], ["--latest"]):
        assert gone in refusal(setup.run("restore-plan", *target)), target
        refused, result = restore_into(cluster, setup, *target)
        assert gone in refusal(result)
        assert_nothing_copied(refused.pgdata)


def test_a_backup_without_its_manifest_is_never_chosen(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    first = backup_push(setup)["backup_id"]
    write_round(primary, 1)
    second = backup_push(setup)["backup_id"]
    write_round(primary, 2)
    point = note_point(primary)
    write_round(primary, 3)
    archive_everything(primary)
    assert restore_plan(setup, "--to", point.time)["backup"]["backup_id"] == second

    # An interrupted backup: its data objects are stored, its manifest never was. The
    # catalog may still remember it; the manifest decides.
    (setup.archive / "backups" / second / "manifest.json").unlink()
    listed = json.loads(succeeded(setup.run("backup-list", "--json")))
    assert [b["backup_id"] for b in listed["backups"]] == [first]
    assert listed["unfinished"] == [second]
    for target in (["--to", point.time], ["--lsn", point.lsn], ["--latest"]):
        assert restore_plan(setup, *target)["backup"]["backup_id"] == first, target
    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

    (setup.archive / "backups" / first / "manifest.json").unlink()
    assert "backup" in refusal(setup.run("restore-plan", "--latest"))


# --- 5. restore --start ----------------------------------------------------------------------


def test_restore_start_reaches_the_target_and_reports_it(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    backup_push(setup)
    write_round(primary, 1)
    point = note_point(primary)
    write_round(primary, 2)
    archive_everything(primary)

    restored, report = restore_started(cluster, setup, "--to", point.time)
    wait_until_promoted(restored)
    assert digests(restored) == point.digests

    # What it reports is what the server says it replayed (both stay put after promotion).
    replayed_lsn, before_target = restored.sql(
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp() <= %s::timestamptz",
        [point.time])[0]
    assert replayed_lsn in report, report
    assert Lsn.parse(replayed_lsn) > Lsn.parse(point.lsn)  # round 2 replayed up to its commit
    assert before_target
    replayed_time = restored.sql("SELECT pg_last_xact_replay_timestamp()")[0][0]
    assert replayed_time in reported_instants(report), report


# --- 6. the catalog --------------------------------------------------------------------------


def test_catalog_rebuild_recreates_the_same_listings(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    first = backup_push(setup)["backup_id"]
    write_round(primary, 1)
    archive_everything(primary)
    # Jump to the next 4 GiB "log": the first WAL folder is closed, so the catalog
    # indexes it (catalog/wal/...), and rebuild has to recreate that index too.
    primary.stop()
    primary.run("pg_resetwal", "-l", "000000010000000100000000", primary.pgdata)
    primary.start()
    write_round(primary, 2)
    second = backup_push(setup)["backup_id"]
    write_round(primary, 3)
    last = archive_everything(primary)
    assert last.startswith("0000000100000001")

    commands = (["backup-list"], ["backup-list", "--json"], ["wal-list"], ["wal-list", "--json"],
                ["wal-list", "--timeline", "1"])
    listings = {tuple(args): succeeded(setup.run(*args)) for args in commands}
    assert first in listings[("backup-list",)] and second in listings[("backup-list",)]
    wal_listed = {row["name"] for row in json.loads(listings[("wal-list", "--json")])["files"]}
    assert last in wal_listed and "000000010000000000000001" in wal_listed
    catalog = setup.archive / "catalog"
    documents = sorted(p.relative_to(catalog) for p in catalog.rglob("*.json"))
    assert Path("backups.json") in documents and Path("wal/0000000100000000.json") in documents

    shutil.rmtree(catalog)
    succeeded(setup.run("catalog", "rebuild"))
    assert sorted(p.relative_to(catalog) for p in catalog.rglob("*.json")) == documents
    assert {tuple(args): succeeded(setup.run(*args)) for args in commands} == listings

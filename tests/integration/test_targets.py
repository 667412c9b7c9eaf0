"""Every recovery target kind end to end, on PostgreSQL 15 and 18 (issue 15): a named
restore point made with `pitrkit restore-point`, a transaction's commit by its xid
(inclusive and --exclusive), and --immediate, each restored from one backup and checked
by the tables' digests (tests/pitr_workload.py), with recovery's own stop line.

One cluster, one backup, several restores: the restores archive nothing
(--archive-mode off), so no new timeline changes what the next one plans.
"""

from __future__ import annotations

import pytest

from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    digests,
    note_point,
    refusal,
    restore_into,
    restore_plan,
    restore_started,
    succeeded,
    wait_until_paused,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration

POINT = "before round 3's 'upgrade'"  # quotes and spaces: written into postgresql.auto.conf as they are


def test_every_target_kind_restores_exactly_its_point(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    primary.sql("CREATE TABLE marked (id int PRIMARY KEY)")
    write_round(primary, 1)
    at_backup = digests(primary)
    backup_push(setup)
    write_round(primary, 2)
    before_point = note_point(primary)
    made = succeeded(setup.run("restore-point", POINT))
    assert "restore point \"before round 3's 'upgrade'\" at LSN" in made, made
    write_round(primary, 3)
    before_xid = digests(primary)
    (xid,) = primary.sql("INSERT INTO marked VALUES (1) RETURNING pg_current_xact_id()::text")[0]
    after_xid = digests(primary)
    write_round(primary, 4)
    primary.sql("SELECT pg_create_restore_point('made by hand')")
    archive_everything(primary)
    assert "marked" in after_xid and after_xid["marked"] != before_xid["marked"]

    # The name is taken: refused before the server makes a second point of it.
    assert "already exists" in refusal(setup.run("restore-point", POINT))
    assert "not to --latest" in refusal(setup.run("restore-plan", "--latest", "--exclusive"))

    # A recorded point is planned exactly: to the segment its record ends in.
    planned = restore_plan(setup, "--name", POINT)
    point = planned["restore_point"]
    assert point["name"] == POINT and planned["segments"][-1] == point["segment"]
    assert not any("cannot tell" in note for note in planned["notes"])
    # One made by hand is not recorded: planned to the end of the WAL, saying so.
    by_hand = restore_plan(setup, "--name", "made by hand")
    assert by_hand["restore_point"] is None and any("does not record" in note for note in by_hand["notes"])
    immediate = restore_plan(setup, "--immediate")
    assert immediate["segments"][-1] == immediate["backup"]["last_segment"]

    restored, report = restore_started(cluster, setup, "--name", POINT, "--archive-mode", "off")
    wait_until_promoted(restored)
    assert digests(restored) == before_point.digests
    assert "recovery stopping at restore point" in report, report

    restored, report = restore_started(cluster, setup, "--xid", xid, "--action", "pause", "--archive-mode", "off")
    wait_until_paused(restored)
    assert digests(restored) == after_xid
    assert f"recovery stopping after commit of transaction {int(xid) & 0xFFFFFFFF}" in report, report

    restored, report = restore_started(cluster, setup, "--xid", xid, "--exclusive", "--archive-mode", "off")
    wait_until_promoted(restored)
    assert digests(restored) == before_xid
    assert f"recovery stopping before commit of transaction {int(xid) & 0xFFFFFFFF}" in report, report

    restored, report = restore_started(cluster, setup, "--immediate", "--action", "pause", "--archive-mode", "off")
    wait_until_paused(restored)
    assert digests(restored) == at_backup
    assert "recovery stopping after reaching consistency" in report, report

    # Shut down at the point: the report is PostgreSQL's stop line, the server gone.
    _, result = restore_into(cluster, setup, "--name", POINT, "--action", "shutdown", "--archive-mode", "off",
                             start=True)
    report = succeeded(result)
    assert "recovery shut down" in report and "recovery stopping at restore point" in report, report

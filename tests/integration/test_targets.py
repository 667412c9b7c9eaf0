"""Every recovery target kind end to end, on PostgreSQL 15 and 18 (issue 15): a named
restore point made with `pitrkit restore-point`, one made by hand that the time index
places, a transaction's commit by its xid (inclusive and --exclusive), and --immediate,
each checked by the tables' digests (tests/pitr_workload.py), with recovery's own stop
line. The xid commits between two backups: the time index places it, and the plan takes
the older backup, the newer being consistent only after it.

One cluster, two backups, several restores: the restores archive nothing
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
    first = backup_push(setup)
    write_round(primary, 2)
    before_point = note_point(primary)
    made = succeeded(setup.run("restore-point", POINT))
    assert "restore point \"before round 3's 'upgrade'\" at LSN" in made, made
    write_round(primary, 3)
    before_xid = digests(primary)
    (xid,) = primary.sql("INSERT INTO marked VALUES (1) RETURNING pg_current_xact_id()::text")[0]
    after_xid = digests(primary)
    write_round(primary, 4)
    at_second = digests(primary)
    second = backup_push(setup)
    primary.sql("SELECT pg_create_restore_point('made by hand')")
    write_round(primary, 5)
    archive_everything(primary)
    assert "marked" in after_xid and after_xid["marked"] != before_xid["marked"]
    # The time index, as the agent builds it in the background, made now for certain.
    succeeded(setup.run("catalog", "rebuild"))

    # The name is taken: refused before the server makes a second point of it; one made
    # by hand is refused too, from the time index.
    assert "already exists" in refusal(setup.run("restore-point", POINT))
    assert "the time index holds a restore point 'made by hand'" in refusal(setup.run("restore-point", "made by hand"))
    assert "not to --latest" in refusal(setup.run("restore-plan", "--latest", "--exclusive"))

    # A recorded point is planned exactly: to the segment its record ends in.
    planned = restore_plan(setup, "--name", POINT)
    point = planned["restore_point"]
    assert point["name"] == POINT and planned["segments"][-1] == point["segment"]
    assert not any("cannot tell" in note for note in planned["notes"])
    # One made by hand is placed by the index, from the newer backup, exactly as well.
    by_hand = restore_plan(setup, "--name", "made by hand")
    assert by_hand["restore_point"] is None and by_hand["target"]["lsn"] is not None
    assert any("the time index places restore point 'made by hand'" in note for note in by_hand["notes"])
    assert by_hand["backup"]["backup_id"] == second["backup_id"]
    assert by_hand["fetch_until"] == by_hand["segments"][-1]
    # The xid committed between the backups: the older is the one consistent before it.
    by_xid = restore_plan(setup, "--xid", xid)
    assert by_xid["backup"]["backup_id"] == first["backup_id"], by_xid["notes"]
    assert any(f"places the commit of transaction {xid}" in note for note in by_xid["notes"])
    assert by_xid["segments"][-1] < second["last_segment"] or any("passed over" in n for n in by_xid["notes"])
    immediate = restore_plan(setup, "--immediate")
    assert immediate["segments"][-1] == immediate["backup"]["last_segment"] == second["last_segment"]

    restored, report = restore_started(cluster, setup, "--name", "made by hand", "--archive-mode", "off")
    wait_until_promoted(restored)
    assert digests(restored) == at_second
    assert "recovery stopping at restore point \"made by hand\"" in report, report

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
    assert digests(restored) == at_second
    assert "recovery stopping after reaching consistency" in report, report

    # Shut down at the point: the report is PostgreSQL's stop line, the server gone.
    _, result = restore_into(cluster, setup, "--name", POINT, "--action", "shutdown", "--archive-mode", "off",
                             start=True)
    report = succeeded(result)
    assert "recovery shut down" in report and "recovery stopping at restore point" in report, report

"""`pitrkit backup-consolidate` end to end on PostgreSQL 15 and 18: a chain full -> i1 ->
i2 under writes and DDL, i2 consolidated into a full backup from the archive alone, the
next incremental taken on that full, retention expiring the old chain, and every point
that remains restored exactly (table digests noted when each backup was taken).

Run through the installed `pitrkit` as the server user, as a DBA runs it.
"""

from __future__ import annotations

import json

import pytest

from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    digests,
    note_point,
    recovered,
    refusal,
    restore_plan,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def incremental_push(setup) -> dict:
    summary: dict = json.loads(succeeded(setup.run("backup-push", "--incremental", "--json", timeout=600)))
    return summary


def consolidate(setup, backup_id: str) -> dict:
    made: dict = json.loads(succeeded(setup.run("backup-consolidate", backup_id, "--json", timeout=600)))
    return made


def summarizing(pg_major: int) -> dict[str, object]:
    return {"summarize_wal": "on"} if pg_major >= 17 else {}


def listed(setup) -> list[dict]:
    backups: list[dict] = json.loads(succeeded(setup.run("backup-list", "--json")))["backups"]
    return backups


def with_retention(setup, primary, **rules: object) -> None:
    setup.write_config(postgres=primary)
    with open(setup.config, "a") as file:
        file.write("[retention]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in rules.items()))


def test_consolidate_then_expire_the_ancestors(cluster, pitrkit_setup, pg_major):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, **summarizing(pg_major))
    write_round(primary, 1)
    full = backup_push(setup)
    write_round(primary, 2)
    primary.sql("CREATE TABLE grown (id int PRIMARY KEY, payload text)")
    primary.sql("INSERT INTO grown SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g")
    first = incremental_push(setup)
    write_round(primary, 3)
    primary.sql("DROP TABLE doomed")
    primary.sql("TRUNCATE grown")
    primary.sql("INSERT INTO grown SELECT g, md5(g::text) FROM generate_series(1, 500) g")
    second = incremental_push(setup)
    at_second = note_point(primary)
    assert second["chain"] == [full["backup_id"], first["backup_id"]]

    # Refused: a full backup, an unknown id.
    assert "is a full backup: there is nothing to consolidate" in refusal(
        setup.run("backup-consolidate", full["backup_id"]))
    assert "there is no backup 20000101T000000Z" in refusal(setup.run("backup-consolidate", "20000101T000000Z"))

    made = consolidate(setup, second["backup_id"])
    synthetic = made["backup_id"]
    assert synthetic == f"{second['backup_id']}-full" and made["consolidated_from"] == second["backup_id"]
    summary = made["summary"]
    assert summary["parent"] is None and summary["chain"] == []
    for field in ("start_lsn", "stop_lsn", "timeline", "start_time", "stop_time", "first_segment", "last_segment",
                  "system_identifier", "size", "file_count", "label"):
        assert summary[field] == second[field], field
    # Its own stream's parts are copied whole (the storage copies them); the rest is
    # assembled from the chain here.
    assert made["parts_copied"] >= 1 and made["bytes_copied"] > 0 and made["server_side_copy"], made
    assert made["bytes_streamed"] > 0, made
    shown = {backup["backup_id"]: backup for backup in listed(setup)}
    assert shown[synthetic]["consolidated_from"] == second["backup_id"]
    assert shown[synthetic]["backup_type"] == "full"
    text = succeeded(setup.run("backup-list"))
    assert f"{synthetic}: a full backup backup-consolidate made of {second['backup_id']}, at its point" in text
    # The same point: restore-plan takes the shorter chain.
    archive_everything(primary)
    plan = restore_plan(setup, "--lsn", at_second.lsn)
    assert plan["backup"]["backup_id"] == synthetic and plan["chain"] == []

    write_round(primary, 4)
    between = note_point(primary)
    write_round(primary, 5)
    primary.sql("CREATE TABLE later AS SELECT g AS id FROM generate_series(1, 1000) g")
    third = incremental_push(setup)
    assert third["parent"] == synthetic and third["chain"] == [synthetic]
    at_third = note_point(primary)
    archive_everything(primary)

    # Only the newest points are kept: the synthetic full stands for the second's point.
    with_retention(setup, primary, keep_last=2)
    report = json.loads(succeeded(setup.run("retention", "apply", "--json", timeout=600)))
    gone = {backup["backup_id"]: backup["why"] for backup in report["removed_backups"]}
    assert set(gone) == {full["backup_id"], first["backup_id"], second["backup_id"]}, report
    assert "restores the same point with a shorter chain" in gone[second["backup_id"]]
    assert [backup["backup_id"] for backup in listed(setup)] == [synthetic, third["backup_id"]]

    succeeded(setup.run("verify", "--deep", timeout=600))
    for args, point in ((("--lsn", at_second.lsn), at_second), (("--time", between.time), between),
                        (("--lsn", at_third.lsn), at_third)):
        restored = recovered(cluster, setup, *args)
        assert digests(restored) == point.digests, args
        restored.stop()


def test_an_encrypted_chain_consolidates(cluster, encrypted_setup, pg_major):
    setup = encrypted_setup
    primary = archiving_primary(cluster, setup, **summarizing(pg_major))
    write_round(primary, 1)
    full = backup_push(setup)
    write_round(primary, 2)
    link = incremental_push(setup)
    at_link = note_point(primary)
    made = consolidate(setup, link["backup_id"])
    assert made["consolidated_from"] == link["backup_id"] and made["bytes_streamed"] > 0, made
    archive_everything(primary)
    with_retention(setup, primary, keep_last=1)
    report = json.loads(succeeded(setup.run("retention", "apply", "--json", timeout=600)))
    assert {backup["backup_id"] for backup in report["removed_backups"]} == {full["backup_id"], link["backup_id"]}
    succeeded(setup.run("verify", "--deep", timeout=600))
    restored = recovered(cluster, setup, "--lsn", at_link.lsn)
    assert digests(restored) == at_link.digests
    restored.stop()

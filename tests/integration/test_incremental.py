"""Incremental backups end to end on PostgreSQL 15 (pages read for their LSNs) and 18
(WAL summaries): a full backup and a chain of incrementals under writes and DDL, each
link restored and checked by its data, its catalog and `pg_amcheck`.

Run through the installed `pitrkit` as the server user, as a DBA runs it.
"""

from __future__ import annotations

import json

import pytest

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    attach,
    backup_push,
    digests,
    note_point,
    recovered,
    refusal,
    restore_into,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def incremental_push(setup, *args: str) -> dict:
    summary: dict = json.loads(succeeded(setup.run("backup-push", "--incremental", "--json", *args, timeout=600)))
    return summary


def summarizing(pg_major: int) -> dict[str, object]:
    return {"summarize_wal": "on"} if pg_major >= 17 else {}


def amcheck(cluster) -> None:
    """pg_amcheck over every database: heap and every index entry (--heapallindexed)."""
    cluster.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    result = cluster.run("pg_amcheck", "--all", "--heapallindexed", "--install-missing", "-h",
                         str(cluster.socket_dir), "-p", str(cluster.port), check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# Between the links of the chain: what each link must carry over (block maps of a relation
# that grew, shrank, vanished or is new; a new database; an unlogged table).
DDL = [
    ["CREATE TABLE grown (id int PRIMARY KEY, payload text)",
     "INSERT INTO grown SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g"],
    ["DROP TABLE doomed"],
    ["CREATE DATABASE second"],
    ["TRUNCATE grown", "INSERT INTO grown SELECT g, md5(g::text) FROM generate_series(1, 500) g"],
    ["VACUUM FULL accounts"],
    ["CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 1000) g",
     "DELETE FROM events WHERE id % 3 = 0", "VACUUM events"],
]


def test_a_chain_of_incrementals_restores_every_link(cluster, pitrkit_setup, pg_major):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, **summarizing(pg_major))
    write_round(primary, 1)
    full = backup_push(setup)
    links = [full]
    points = []
    for number, statements in enumerate(DDL, 2):
        write_round(primary, number)
        for statement in statements:
            primary.sql(statement)
        if statements[0].startswith("CREATE DATABASE"):
            primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", dbname="second")
        link = incremental_push(setup)
        assert link["parent"] == links[-1]["backup_id"]
        assert link["chain"] == [each["backup_id"] for each in links]
        expected = "wal-summaries" if pg_major >= 17 else "page-lsn"
        assert link["changed_blocks"]["method"] == expected, link["changed_blocks"]
        # Only what changed is stored: a fraction of the full's bytes.
        assert link["stored_size"] < full["stored_size"], (link["stored_size"], full["stored_size"])
        links.append(link)
        points.append(note_point(primary))
    archive_everything(primary)

    listing = json.loads(succeeded(setup.run("backup-list", "--json")))
    assert [backup["backup_id"] for backup in listing["backups"]] == [link["backup_id"] for link in links]
    assert [backup["backup_type"] for backup in listing["backups"]] == ["full"] + ["incremental"] * len(DDL)
    newest = listing["backups"][-1]
    assert newest["chain_stored_size"] == sum(link["stored_size"] for link in links)
    # verify --deep reads every object of the chain once (every super-block of the
    # incrementals checked against its map) and plans each link's chain as restore does.
    deep = json.loads(succeeded(setup.run("verify", "--deep", "--json", timeout=600)))
    assert deep["super_blocks"] > 0 and deep["bytes_read"] > sum(link["stored_size"] for link in links), deep
    plan = json.loads(succeeded(setup.run("restore-plan", "--latest", "--json")))
    assert plan["chain"] == [link["backup_id"] for link in links[:-1]]

    # Every link's end: the data as it was then. An unlogged table comes back empty, as
    # after any crash (only its init fork is backed up).
    for number, point in enumerate(points):
        restored = recovered(cluster, setup, "--lsn", point.lsn)
        found = digests(restored)
        if "scratch" in found:
            assert found.pop("scratch").rows == 0
        assert found == {table: digest for table, digest in point.digests.items() if table != "scratch"}, number
        if number == len(points) - 1:
            assert restored.sql("SELECT count(*) FROM t", dbname="second") == [(100,)]
            amcheck(restored)
        restored.stop()

    # A time between two links' ends: the plan takes the link before it and replays to it.
    between = recovered(cluster, setup, "--time", points[3].time)
    assert digests(between) == points[3].digests
    between.stop()


def test_an_incremental_needs_a_parent_of_this_cluster(cluster, pitrkit_setup, pg_major):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, **summarizing(pg_major))
    assert "take a full backup first" in refusal(setup.run("backup-push", "--incremental"))
    full = backup_push(setup)
    assert "no such backup" in refusal(setup.run("backup-push", "--from", "20000101T000000Z"))
    link = incremental_push(setup, "--from", full["backup_id"])
    assert link["parent"] == full["backup_id"]
    said = setup.run("backup-push", "--from", link["backup_id"], timeout=600)
    succeeded(said)
    method = "wal-summaries" if pg_major >= 17 else "page-lsn"
    assert f"incremental on {link['backup_id']} (chain of 3); changed blocks from {method}" in said.stderr, said.stderr
    if pg_major >= 17:
        # Without summaries the pages are read, and the backup says why.
        primary.sql("ALTER SYSTEM SET summarize_wal = off")
        primary.sql("SELECT pg_reload_conf()")
        read = incremental_push(setup)
        assert read["changed_blocks"]["method"] == "page-lsn"
        assert "summarize_wal" in read["changed_blocks"]["note"], read["changed_blocks"]


def test_a_relation_past_one_gigabyte(cluster, pitrkit_setup, pg_major):
    """A relation with a second segment file (these binaries' segments are 1 GiB): blocks
    changed in both files, then the second shrunk by VACUUM's truncation; the chain
    restores it exactly. One major is enough for the gigabyte: the one with summaries."""
    if pg_major < 17:
        pytest.skip("the 1 GiB relation runs on the major with WAL summaries")
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, summarize_wal="on")
    # fillfactor 10: about three rows a page, so 1.2 GiB of table costs little WAL.
    primary.sql("CREATE TABLE big (id int PRIMARY KEY, pad text) WITH (fillfactor = 10)")
    primary.sql("INSERT INTO big SELECT g, md5(g::text) || repeat('x', 200) FROM generate_series(1, 480000) g",
                timeout=600)
    # Hint bits and the visibility map set now, as on a table that has been around: the
    # first scan after a load sets them on every page, and with data checksums each such
    # page is WAL-logged (a full-page image), so it counts as changed.
    primary.sql("VACUUM (FREEZE) big", timeout=600)
    (path,) = primary.sql("SELECT pg_relation_filepath('big')")[0]
    assert (primary.pgdata / f"{path}.1").stat().st_size > 0, "big has no second segment file"
    full = backup_push(setup)

    primary.sql("UPDATE big SET pad = 'changed' WHERE id % 5000 = 0")
    first = incremental_push(setup)
    # Beside its changed blocks, an incremental's maps restate every block's checksum (8
    # bytes a block, cumulative, incompressible: ~1.2 MiB for this relation's 1.2 GiB),
    # which the full backup's maps hold too: compared without them.
    checksums = full["size"] // 1024
    assert (first["stored_size"] - checksums) * 20 < full["stored_size"] - checksums, \
        (first["stored_size"], full["stored_size"])
    primary.sql("DELETE FROM big WHERE id > 440000")
    primary.sql("VACUUM big")
    primary.sql("UPDATE big SET pad = 'again' WHERE id % 7000 = 0")
    incremental_push(setup)
    point = note_point(primary)
    archive_everything(primary)

    restored = recovered(cluster, setup, "--lsn", point.lsn)
    assert digests(restored) == point.digests
    size = primary.sql("SELECT pg_relation_size('big')")[0][0]
    assert restored.sql("SELECT pg_relation_size('big')")[0][0] == size
    restored.stop()


def test_a_tablespace_in_the_chain(cluster, pitrkit_setup, pg_major, server_tmp):
    """Relation files under pg_tblspc/ are block-mapped like those under base/; a table
    created in the tablespace after the full, and one moved into it, come whole; the chain
    restores into a mapped location."""
    setup = pitrkit_setup
    original = pgharness.make_server_dir(server_tmp / "space", mode=0o700)
    primary = archiving_primary(cluster, setup, **summarizing(pg_major))
    primary.sql(f"CREATE TABLESPACE fast LOCATION '{original}'")
    primary.sql("CREATE TABLE hot (id int PRIMARY KEY, payload text) TABLESPACE fast")
    primary.sql("INSERT INTO hot SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g")
    primary.sql("VACUUM (FREEZE) hot")
    backup_push(setup)
    primary.sql("UPDATE hot SET payload = 'changed' WHERE id % 50 = 0")
    primary.sql("CREATE TABLE warm TABLESPACE fast AS SELECT g AS id FROM generate_series(1, 5000) g")
    incremental_push(setup)
    primary.sql("UPDATE hot SET payload = 'again' WHERE id % 70 = 0")
    primary.sql("ALTER TABLE events SET TABLESPACE fast")
    incremental_push(setup)
    target = note_point(primary)
    archive_everything(primary)

    moved = server_tmp / "moved"
    restored, result = restore_into(cluster, setup, "--lsn", target.lsn, "--start",
                                    "--tablespace-map", f"{original}={moved}")
    succeeded(result)
    attach(restored)
    assert digests(restored) == target.digests
    restored.stop()

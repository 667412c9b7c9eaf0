"""`restore --delta` end to end on PostgreSQL 15 and 18: a restored copy is started,
written to, stopped and has files deleted, then brought back to a point of the archive
by `restore --delta` from a full backup and from a chain. Its data is exact, and only
the objects holding what differs are read, counted twice: by the command's report and
by the kernel (each archive object's access time, set behind its modification time
beforehand, moves only when the object is read).

Run through the installed `pitrkit` as the server user, as a DBA runs it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    attach,
    backup_push,
    digests,
    note_point,
    refusal,
    restore_into,
    succeeded,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration

# Big enough that its file fills several 32 MiB parts of the stream which nothing below
# changes: a delta that reads them fetched more than differs. Frozen before the backup:
# the first scan of a fresh table sets hint bits on every page, which is a change.
BULK = ["CREATE TABLE bulk (id int PRIMARY KEY, payload text)",
        "INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) "
        "FROM generate_series(1, 1000000) g",
        "VACUUM (FREEZE) bulk"]


def bulk_digest(cluster) -> tuple:
    return tuple(cluster.sql("SELECT count(*), sum(hashtext(payload)::bigint) FROM bulk")[0])


def objects_behind(archive: Path) -> None:
    """Every stored object's access time before its modification time: the next read
    moves it (relatime), so `read_objects` sees what was read since."""
    for path in archive.rglob("*"):
        if path.is_file():
            status = path.stat()
            os.utime(path, ns=(status.st_mtime_ns - 3600 * 10**9, status.st_mtime_ns))


def read_objects(archive: Path, folder: str) -> dict[str, int]:
    """The objects under backups/*/<folder>/ read since `objects_behind`, with their sizes."""
    return {str(path.relative_to(archive)): path.stat().st_size for path in archive.glob(f"backups/*/{folder}/*")
            if path.stat().st_atime_ns > path.stat().st_mtime_ns}


def delta(setup, restored, *args: str) -> tuple[str, int, int]:
    """`restore --delta` into `restored`'s data directory: its output, and the stored
    bytes of data it says it fetched and a restore into an empty directory reads."""
    result = setup.run("restore", *args, "--delta", "--archive-mode", "off", "--target-dir", str(restored.pgdata),
                       timeout=600)
    out = succeeded(result)
    print(out)  # shown when the test fails
    match = re.search(r"^delta: .*: (\d+) of (\d+) bytes$", out, re.MULTILINE)
    assert match, out
    return out, int(match[1]), int(match[2])


def diverge(restored, round_: int) -> None:
    """Changes a DBA makes on the copy (rows, a table created, one dropped), then files
    lost while it is stopped: a relation's segment and non-relation files."""
    restored.sql(f"UPDATE accounts SET balance = balance - 1 WHERE id % 50 = {round_};"
                 f"CREATE TABLE made_{round_} AS SELECT g FROM generate_series(1, 1000) g;"
                 "DROP TABLE IF EXISTS doomed;"
                 "CHECKPOINT")
    events = restored.sql("SELECT pg_relation_filepath('events')")[0][0]
    restored.stop()
    for lost in (events, "pg_xact/0000", "global/pg_filenode.map"):
        (restored.pgdata / lost).unlink()


def test_delta_brings_a_diverged_copy_back_fetching_only_what_differs(cluster, pitrkit_setup, pg_major):
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    for statement in BULK:
        primary.sql(statement)
    write_round(primary, 1)
    full = backup_push(setup)
    first = note_point(primary)
    bulk = bulk_digest(primary)
    write_round(primary, 2)
    primary.sql("CREATE TABLE later AS SELECT g AS id FROM generate_series(1, 5000) g")
    chained = json.loads(succeeded(setup.run("backup-push", "--incremental", "--json", timeout=600)))
    assert chained["parent"] == full["backup_id"]
    second = note_point(primary)
    archive_everything(primary)

    restored, result = restore_into(cluster, setup, "--lsn", first.lsn, "--archive-mode", "off")
    succeeded(result)
    restored.start(timeout=180)
    wait_until_promoted(restored)
    # A running server's directory is refused, before anything is written.
    refused = refusal(setup.run("restore", "--lsn", first.lsn, "--delta", "--target-dir", str(restored.pgdata)))
    assert "postmaster.pid" in refused and "stop it" in refused
    diverge(restored, 1)

    # From the full backup: the data as at `first`, reading only parts holding what changed.
    objects_behind(setup.archive)
    out, fetched, whole = delta(setup, restored, "--lsn", first.lsn)
    parts = read_objects(setup.archive, "data")
    assert 0 < fetched < whole / 2, out
    assert sum(parts.values()) == fetched, (parts, out)  # the kernel agrees with the report
    assert all(key.startswith(f"backups/{full['backup_id']}/") for key in parts)
    restored.start(timeout=180)
    wait_until_promoted(restored)
    assert digests(restored) == first.digests
    assert bulk_digest(restored) == bulk
    diverge(restored, 2)

    # From the chain, to `second`: the incremental's stream and super-blocks besides.
    objects_behind(setup.archive)
    out, fetched, whole = delta(setup, restored, "--lsn", second.lsn)
    assert 0 < fetched < whole / 2, out
    parts, blocks = read_objects(setup.archive, "data"), read_objects(setup.archive, "blocks")
    assert sum(parts.values()) <= fetched <= sum(parts.values()) + sum(blocks.values()), (parts, blocks, out)

    # Right again, with nothing changed since: only the files the restore itself rewrote
    # (the recovery settings in postgresql.auto.conf) are fetched again.
    objects_behind(setup.archive)
    out, fetched_again, _ = delta(setup, restored, "--lsn", second.lsn)
    assert re.search(r"delta: \d+ files kept, [01] fetched whole, 0 patched", out), out
    assert fetched_again < fetched and sum(read_objects(setup.archive, "data").values()) == fetched_again
    assert read_objects(setup.archive, "blocks") == {}
    restored.start(timeout=180)
    wait_until_promoted(restored)
    assert digests(restored) == second.digests
    assert bulk_digest(restored) == bulk
    restored.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    check = restored.run("pg_amcheck", "--all", "--heapallindexed", "--install-missing", "-h",
                         str(restored.socket_dir), "-p", str(restored.port), check=False, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def test_delta_over_a_copy_with_a_tablespace_then_started(cluster, pitrkit_setup, server_tmp):
    """The copy's tablespace lives in a mapped location: its relation files are compared
    through pg_tblspc's link like the others, what the backup lacks there is removed, a
    file lost there comes back, and `--start` runs the result to the target."""
    setup = pitrkit_setup
    original = pgharness.make_server_dir(server_tmp / "space", mode=0o700)
    primary = archiving_primary(cluster, setup)
    primary.sql(f"CREATE TABLESPACE fast LOCATION '{original}'")
    primary.sql("CREATE TABLE hot (id int PRIMARY KEY, payload text) TABLESPACE fast")
    primary.sql("INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    primary.sql("VACUUM (FREEZE) hot")
    write_round(primary, 1)
    backup_push(setup)
    point = note_point(primary)
    hot = primary.sql("SELECT count(*), sum(hashtext(payload)::bigint) FROM hot")[0]
    archive_everything(primary)

    moved = server_tmp / "moved"
    mapping = ("--tablespace-map", f"{original}={moved}")
    restored, result = restore_into(cluster, setup, "--lsn", point.lsn, "--archive-mode", "off", *mapping)
    succeeded(result)
    restored.start(timeout=180)
    wait_until_promoted(restored)
    restored.sql("UPDATE hot SET payload = 'changed' WHERE id % 10 = 0;"
                 "CREATE TABLE extra TABLESPACE fast AS SELECT g FROM generate_series(1, 1000) g;"
                 "CHECKPOINT")
    extra = restored.sql("SELECT pg_relation_filepath('extra')")[0][0]
    heap = restored.sql("SELECT pg_relation_filepath('hot')")[0][0]
    restored.stop()
    (restored.pgdata / heap).unlink()  # through the link: a file of the mapped location

    out = succeeded(setup.run("restore", "--lsn", point.lsn, "--delta", "--archive-mode", "off", *mapping,
                              "--start", "--port", str(restored.port), "--target-dir", str(restored.pgdata),
                              timeout=600))
    print(out)
    assert re.search(r"delta: \d+ files kept, [1-9]\d* fetched whole, [1-9]\d* patched", out), out
    assert not (restored.pgdata / extra).exists() and not os.path.lexists(restored.pgdata / extra)
    assert os.path.realpath(restored.pgdata / heap).startswith(str(moved))
    attach(restored)
    assert digests(restored) == point.digests
    assert restored.sql("SELECT count(*), sum(hashtext(payload)::bigint) FROM hot")[0] == hot
    assert restored.sql("SELECT count(*) FROM hot WHERE id BETWEEN 100 AND 200")[0][0] == 101  # by the index

"""Which blocks changed between two LSNs, asked of real servers: PostgreSQL 18's WAL
summaries (backup/changes.summarized_changes, postgres/summaries.py) and, without them,
the pages themselves (backup/page_scan.changed_pages) on PostgreSQL 15 and 18.

The LSNs are what an incremental backup has: the redo point of a checkpoint (the
parent's start) and the start pg_backup_start returns (this backup's)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pitrkit.backup.changes import NotSummarized, RelationFork, Summarized, relation_of, summarized_changes
from pitrkit.backup.page_scan import changed_pages
from pitrkit.catalog.documents import BLOCK_SIZE
from pitrkit.postgres import summaries
from pitrkit.postgres.wal import Lsn

import pgharness

pytestmark = pytest.mark.integration

WAIT = 60.0  # seconds the summarizer may take to catch up on a busy test machine
ROWS = 40000  # about 330 pages of `big`


def needs_summaries(pg_major: int) -> None:
    if pg_major < summaries.SUMMARIES_MAJOR:
        pytest.skip(f"PostgreSQL {pg_major} has no WAL summaries (see test_no_summaries_before_17)")


def started(cluster, **settings) -> pgharness.Cluster:
    """A cluster with data checksums (initdb -k; 18's default), no autovacuum (pages change
    only when the test changes them), and `big`: frozen, hint bits set, checkpointed."""
    made = cluster(init=False)
    made.initdb(extra_args=["-k"])
    made.conf(autovacuum=False, **settings)
    made.start()
    made.sql("CREATE TABLE big (id int, payload text) WITH (fillfactor = 100);"
             f"INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g")
    # Hint bits set now: with checksums, setting them later logs a full-page image, and the
    # block would count as changed.
    made.sql("VACUUM (FREEZE) big")
    made.sql("CHECKPOINT")
    return made


def checkpoint_redo(made: pgharness.Cluster) -> Lsn:
    made.sql("CHECKPOINT")
    return Lsn.parse(made.sql("SELECT redo_lsn::text FROM pg_control_checkpoint()")[0][0])


def update_rows_on(made: pgharness.Cluster, table: str, blocks: list[int]) -> set[int]:
    """Update the first row of each block; the blocks the old and the new row versions are on."""
    tids = ",".join(f"'({block},1)'" for block in blocks)
    moved = made.sql(f"UPDATE {table} SET payload = 'changed' WHERE ctid = ANY(ARRAY[{tids}]::tid[]) "
                     "RETURNING (ctid::text::point)[0]::int")
    assert len(moved) == len(blocks)
    return set(blocks) | {block for (block,) in moved}


def fork_of(made: pgharness.Cluster, relation: str, dbname: str = "postgres") -> RelationFork:
    (path,) = made.sql(f"SELECT pg_relation_filepath('{relation}')", dbname=dbname)[0]
    found = relation_of(path)
    assert found is not None, path
    return found[0]


def test_summaries_list_changed_blocks_limits_and_new_databases(cluster, pg_major):
    needs_summaries(pg_major)
    made = started(cluster, summarize_wal=True)
    space = pgharness.make_server_dir(made.directory / "space", mode=0o700)
    made.sql(f"CREATE TABLESPACE extra LOCATION '{space}'")
    made.sql("CREATE TABLE doomed (id int); INSERT INTO doomed SELECT generate_series(1, 50000);"
             "CREATE TABLE spaced (id int, payload text) TABLESPACE extra;"
             "INSERT INTO spaced SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    made.sql("VACUUM (FREEZE) spaced")
    made.sql("CHECKPOINT")
    big, doomed_before, spaced = fork_of(made, "big"), fork_of(made, "doomed"), fork_of(made, "spaced")
    (extra,) = made.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")[0]
    assert spaced.tablespace == extra
    (big_pages,) = made.sql("SELECT pg_relation_size('big') / 8192")[0]

    parent_start = checkpoint_redo(made)
    updated = update_rows_on(made, "big", [3, 250, big_pages - 2])
    made.sql("CREATE TABLE fresh (id int); INSERT INTO fresh SELECT generate_series(1, 10000)")
    made.sql("TRUNCATE doomed")
    made.sql("CREATE DATABASE copied STRATEGY FILE_COPY")
    made.sql("CREATE DATABASE logged STRATEGY WAL_LOG")
    made.sql("CREATE DATABASE plain")  # PostgreSQL 15+'s default strategy is WAL_LOG
    made.sql("CREATE DATABASE elsewhere TABLESPACE extra")
    spaced_updated = update_rows_on(made, "spaced", [2])
    databases = dict(made.sql("SELECT datname, oid FROM pg_database"))
    fresh, doomed_after = fork_of(made, "fresh"), fork_of(made, "doomed")

    with made.connect() as session:
        (start,) = session.execute("SELECT pg_backup_start('changed blocks', true)::text").fetchone()
        found = summarized_changes(session, pg_major, [(1, parent_start, Lsn.parse(start))], WAIT)
        session.execute("SELECT pg_backup_stop(false)")

    assert isinstance(found, Summarized), found
    assert found.summary_files > 0
    changed = found.forks[big]
    assert updated <= set(changed.blocks)
    # Only what the update touched: not the rest of a table of ~330 pages.
    assert len(changed.blocks) <= len(updated) + 2, changed.blocks
    assert changed.limit is None
    assert found.forks[fresh].limit == 0 and found.forks[fresh].blocks
    # TRUNCATE gives the table a new relfilenode; the old one is dropped: both limit 0.
    assert found.forks[doomed_after].limit == 0
    assert found.forks[doomed_before].limit == 0
    assert {(1663, databases[name]) for name in ("copied", "logged", "plain")} <= found.new_databases
    assert (extra, databases["elsewhere"]) in found.new_databases
    assert spaced_updated <= set(found.forks[spaced].blocks) and len(found.forks[spaced].blocks) <= 3
    assert (1663, big.database) not in found.new_databases


def test_summaries_that_cannot_vouch_for_the_range_fall_back_with_a_reason(cluster, pg_major):
    needs_summaries(pg_major)
    made = started(cluster, summarize_wal=True)
    begin = checkpoint_redo(made)
    update_rows_on(made, "big", [1])
    middle = checkpoint_redo(made)
    update_rows_on(made, "big", [2])
    end = checkpoint_redo(made)

    with made.connect() as session:
        assert isinstance(summarized_changes(session, pg_major, [(1, begin, end)], WAIT), Summarized)
        # Nothing summarizes WAL from before summarize_wal was first on.
        oldest = min(summaries.available_summaries(session)).start
        early = summarized_changes(session, pg_major, [(1, Lsn(oldest - 1), end)], WAIT)
        assert isinstance(early, NotSummarized) and f"nothing summarizes the WAL from {Lsn(oldest - 1)}" \
            in early.reason
        # Another timeline's summaries do not count.
        other = summarized_changes(session, pg_major, [(1, begin, middle), (2, middle, end)], WAIT)
        assert isinstance(other, NotSummarized) and "no WAL summaries on timeline 2" in other.reason
        # The summarizer cannot reach an LSN the server has not written yet.
        (now,) = session.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        ahead = Lsn(Lsn.parse(now) + (64 << 20))
        future = summarized_changes(session, pg_major, [(1, begin, ahead)], 1.0)
        assert isinstance(future, NotSummarized) and f"not to {ahead} after 1 s" in future.reason

        # A summary file gone (removed by hand, or by wal_summary_keep_time).
        covering = [summary for summary in summaries.available_summaries(session)
                    if summary.start < end and summary.end > begin]
        gone = next(summary for summary in covering if summary.start <= middle < summary.end)
        name = f"{gone.timeline:08X}{gone.start >> 32:08X}{gone.start & 0xFFFFFFFF:08X}" \
               f"{gone.end >> 32:08X}{gone.end & 0xFFFFFFFF:08X}.summary"
        (made.pgdata / "pg_wal" / "summaries" / name).unlink()
        missing = summarized_changes(session, pg_major, [(1, begin, end)], WAIT)
        assert isinstance(missing, NotSummarized) and f"have a gap: nothing summarizes the WAL from {gone.start}" \
            in missing.reason

        session.execute("ALTER SYSTEM SET summarize_wal = off")
        session.execute("SELECT pg_reload_conf()")
        pgharness.wait_for(lambda: not summaries.summarize_wal(session), 30, what="summarize_wal to be off")
        off = summarized_changes(session, pg_major, [(1, begin, middle)], WAIT)
        assert off == NotSummarized("summarize_wal is off on the server")


def test_no_summaries_before_17(cluster, pg_major):
    if pg_major >= summaries.SUMMARIES_MAJOR:
        pytest.skip(f"PostgreSQL {pg_major} has WAL summaries")
    made = cluster().start()
    with made.connect() as session:
        found = summarized_changes(session, pg_major, [(1, Lsn(0x1000000), Lsn(0x2000000))], 1.0)
        assert found == NotSummarized(f"PostgreSQL {pg_major} has no WAL summaries (they came with PostgreSQL 17)")
        assert summaries.data_checksums(session) is False  # initdb without -k


def test_a_page_scan_finds_the_pages_changed_since_an_lsn(cluster, pg_major, tmp_path):
    made = started(cluster)
    with made.connect() as session:
        assert summaries.data_checksums(session) is True
    (path,) = made.sql("SELECT pg_relation_filepath('big')")[0]
    (pages,) = made.sql("SELECT pg_relation_size('big') / 8192")[0]
    since = checkpoint_redo(made)
    everything = Lsn((1 << 64) - 1)

    def scan(file: Path, since: Lsn, count: int = pages) -> dict[int, bytes]:
        fd = os.open(file, os.O_RDONLY)
        try:
            return dict(changed_pages(fd, count, 0, since, True))
        finally:
            os.close(fd)

    relation = made.pgdata / path
    # Every page PostgreSQL wrote verifies and has a valid header: none is "changed" since
    # an LSN past them all.
    assert scan(relation, everything) == {}
    assert scan(relation, since) == {}

    updated = update_rows_on(made, "big", [0, 17, 300])
    made.sql("CHECKPOINT")
    (now_pages,) = made.sql("SELECT pg_relation_size('big') / 8192")[0]
    found = scan(relation, since, now_pages)
    assert set(found) == updated
    content = relation.read_bytes()
    assert all(found[block] == content[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE] for block in found)

    # A page whose bytes rotted on disk (a copy of the file, one bit flipped in block 9):
    # its checksum fails twice, and it is stored as it is.
    rotten = tmp_path / "rotten"
    shutil.copyfile(relation, rotten)
    with open(rotten, "r+b") as file:
        file.seek(9 * BLOCK_SIZE + 4000)
        byte = file.read(1)[0]
        file.seek(9 * BLOCK_SIZE + 4000)
        file.write(bytes([byte ^ 0x10]))
    assert set(scan(rotten, everything, now_pages)) == {9}
    # Nor is a page of one segment taken for another's: the block number is in the checksum.
    fd = os.open(relation, os.O_RDONLY)
    try:
        assert len(dict(changed_pages(fd, 4, 131072, everything, True))) == 4
    finally:
        os.close(fd)

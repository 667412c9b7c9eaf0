"""The WAL record reader (postgres/walrecords.py) on real WAL from PostgreSQL 15 and 18,
checked against what the server itself says (txid_current(), pg_xact_commit_timestamp)
and against the major's own pg_waldump over the same files: commits, aborts, COMMIT and
ROLLBACK PREPARED (one dropping a table, so that its record carries dropped stats before
the prepared xid), a restore point, records spanning pages and segments (1 MiB
segments, a big incompressible row), checkpoints' next full xid.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from pitrkit.postgres.wal import Lsn
from pitrkit.postgres.walrecords import XactRecord, full_xid, read_segment

pytestmark = pytest.mark.integration

_WALDUMP_XACT = re.compile(
    r"rmgr: Transaction .*?tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), .*?desc: "
    r"(COMMIT|ABORT|COMMIT_PREPARED|ABORT_PREPARED) (?:(\d+): )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)
_WALDUMP_RESTORE_POINT = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+), .*desc: RESTORE_POINT (\S+)")
_WALDUMP_CHECKPOINT = re.compile(r"desc: CHECKPOINT_(?:ONLINE|SHUTDOWN) .*?; xid (\d+):(\d+);")


def _micros(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def workload(primary) -> dict[str, object]:
    """Transactions of every kind the index reads; returns what the server says of them."""
    primary.sql("CREATE TABLE t (id int, body text); CREATE TABLE doomed (id int)")
    committed = []
    for n in range(20):
        committed.append(int(primary.sql(f"INSERT INTO t VALUES ({n}, 'x'); SELECT txid_current()")[0][0]))
    # A row of ~2.5 MiB of incompressible text: its records span pages and segments.
    primary.sql("ALTER TABLE t ALTER body SET STORAGE EXTERNAL")
    big = int(primary.sql(
        "INSERT INTO t SELECT 99, string_agg(md5(g::text), '') FROM generate_series(1, 80000) g;"
        " SELECT txid_current()")[0][0])
    committed.append(big)
    with primary.connect() as conn:
        conn.execute("BEGIN")
        aborted = int(conn.execute("SELECT txid_current()").fetchone()[0])
        conn.execute("INSERT INTO t VALUES (-1, 'aborted')")
        conn.execute("ROLLBACK")
    prepared = {}
    for gid, statement, finish in (("p1", "INSERT INTO t VALUES (-2, 'prepared')", "COMMIT PREPARED 'p1'"),
                                   ("p2", "INSERT INTO t VALUES (-3, 'rolled back')", "ROLLBACK PREPARED 'p2'"),
                                   ("p3", "DROP TABLE doomed", "COMMIT PREPARED 'p3'")):
        with primary.connect() as conn:
            conn.execute("BEGIN")
            prepared[gid] = int(conn.execute("SELECT txid_current()").fetchone()[0])
            conn.execute(statement)
            conn.execute(f"PREPARE TRANSACTION '{gid}'")
        primary.sql(finish)
    primary.sql("SELECT pg_create_restore_point('before-the-end')")
    primary.sql("CHECKPOINT")
    committed.append(int(primary.sql("INSERT INTO t VALUES (100, 'last'); SELECT txid_current()")[0][0]))
    times = {xid: _micros(str(primary.sql(
        "SELECT pg_xact_commit_timestamp(%s::text::xid) AT TIME ZONE 'UTC'", [xid])[0][0]))
        for xid in [*committed, prepared["p1"], prepared["p3"]]}
    return {"committed": committed, "aborted": aborted, "prepared": prepared, "times": times}


def test_reader_agrees_with_the_server_and_pg_waldump(cluster, server_tmp):
    primary = cluster(wal_segsize=1, max_prepared_transactions=5, track_commit_timestamp=True,
                      wal_keep_size="64MB").start()
    first_segment = primary.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
    known = workload(primary)
    last_segment = primary.switch_wal()
    primary.stop()
    copy = server_tmp / "wal"
    primary.shell(f"cp -r pg_wal {copy} && chmod -R a+rX {copy}")
    names = sorted(p.name for p in copy.iterdir()
                   if re.fullmatch(r"[0-9A-F]{24}", p.name) and first_segment <= p.name <= last_segment)
    assert len(names) >= 3, names  # the big row spans segments

    transactions: list[XactRecord] = []
    restore_points = []
    next_xids = []
    pending = None
    spanning = 0
    for name in names:
        records = read_segment((copy / name).read_bytes(), pending)
        assert records.major == primary.major
        assert records.start_known or name == first_segment
        transactions += records.transactions
        restore_points += records.restore_points
        next_xids += records.next_full_xids
        pending = records.pending
        spanning += pending is not None

    # The server's own account: every noted xid, kind and commit time.
    by_xid = {t.xid: t for t in transactions}
    for xid in known["committed"]:
        assert by_xid[xid].kind == "commit" and by_xid[xid].time_us == known["times"][xid]
    assert by_xid[known["aborted"]].kind == "abort"
    prepared = known["prepared"]
    assert by_xid[prepared["p1"]].kind == "commit_prepared"
    assert by_xid[prepared["p1"]].time_us == known["times"][prepared["p1"]]
    assert by_xid[prepared["p2"]].kind == "abort_prepared"
    assert by_xid[prepared["p3"]].kind == "commit_prepared"
    assert by_xid[prepared["p3"]].time_us == known["times"][prepared["p3"]]
    assert [p.name for p in restore_points] == ["before-the-end"]
    assert spanning >= 1

    # pg_waldump's account of the same files, record for record.
    primary.env["TZ"] = "UTC"
    dump = primary.run("pg_waldump", "-p", copy, names[0], names[-1], check=False, timeout=120)
    assert "rmgr: Transaction" in dump.stdout, dump.stderr
    expected = []
    for match in _WALDUMP_XACT.finditer(dump.stdout):
        header_xid, lsn, kind, prepared_xid, moment = match.groups()
        xid = int(prepared_xid) if prepared_xid else int(header_xid)
        expected.append((kind.lower(), xid, Lsn.parse(lsn), _micros(moment)))
    assert [(t.kind, t.xid, t.start_lsn, t.time_us) for t in transactions] == expected
    assert [m[2] for m in _WALDUMP_RESTORE_POINT.finditer(dump.stdout)] == [p.name for p in restore_points]
    dumped_next = [(int(epoch) << 32) | int(xid) for epoch, xid in _WALDUMP_CHECKPOINT.findall(dump.stdout)]
    assert next_xids == dumped_next and next_xids
    for t in transactions:
        assert full_xid(t.xid, next_xids[-1]) == t.xid  # epoch 0 on a new cluster

"""The sidecar follows a failover (issue 17), on PostgreSQL 15 and 18: a primary and a
streaming standby, both archiving with `pitrkit wal-push`, and `pitrkit wal-receive` with
both hosts in `[postgres] conninfo` (libpq multi-host, different ports on 127.0.0.1),
synchronous to the primary. The standby stops receiving while the primary goes on under
pgbench into later segments (the sidecar, synchronous, holds WAL past the point where
the standby will fork), the primary is stopped with `immediate`, and the standby is
promoted with `pg_ctl promote`. The sidecar must find the new primary, create its slot
there, ship the old timeline's WAL (past the fork too) and stream the new timeline from
the fork; `restore --latest` from the backup taken before the failover must follow the
new timeline to the new primary's exact contents.

Then case (a) of the issue at the wal-push level, with the real segments of that
failover: the old timeline's `.partial` as the promoted server's archiver pushes it
(ending in a recycled file's old WAL) against the copy a receiver stored, in both orders,
and a copy holding other valid WAL, which is refused.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pitrkit.config import load
from pitrkit.postgres.wal import Lsn, SegmentName, parse_history
from pitrkit.storage.archive import Archive
from tests.integration.test_receive import SLOT, configure, start_sidecar

import pgharness
from pitr_workload import backup_push, refusal, restore_started, succeeded, wait_until_promoted
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration

SEGMENT = 16 << 20


def pgbench(cluster: pgharness.Cluster, *args: str) -> None:
    cluster.run("pgbench", "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", pgharness.SUPERUSER,
                *args, "postgres", timeout=300)


def contents(cluster: pgharness.Cluster) -> dict[str, tuple[int, str]]:
    """Per table in public: rows and an md5 of them in order (pgbench_history has no key)."""
    tables = [row[0] for row in cluster.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return {table: tuple(cluster.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), "
                                     f"'')) FROM {table} t")[0]) for table in sorted(tables)}


def current(cluster: pgharness.Cluster) -> tuple[str, Lsn]:
    name, lsn = cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text")[0]
    return name, Lsn.parse(lsn)


def slot_active(cluster: pgharness.Cluster) -> bool:
    rows = cluster.sql("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
    return bool(rows and rows[0][0])


def test_the_sidecar_follows_a_promoted_standby_and_the_archive_has_no_gap(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    every_node = {"listen_addresses": "127.0.0.1", "archive_mode": "on", "archive_command": setup.archive_command,
           "checkpoint_timeout": "30s"}
    old = cluster(synchronous_standby_names=SLOT, **every_node)
    old.env.update(setup.env)
    setup.init(old)
    old.start()
    standby = cluster(init=False)
    standby.env.update(setup.env)
    old.pg_basebackup(standby.pgdata, "-R")
    standby.conf(synchronous_standby_names="")  # asynchronous to the sidecar once promoted
    standby.start()

    # Both hosts, the primary first; wal-receive adds target_session_attrs=primary.
    configure(setup, old, spool, synchronous=True)
    text = setup.config.read_text()
    setup.config.write_text(text.replace(
        f"host={old.socket_dir} port={old.port}", f"host=127.0.0.1,127.0.0.1 port={old.port},{standby.port}"))
    sidecar = start_sidecar(setup, spool)
    pgharness.wait_for(lambda: slot_active(old), 60, interval=0.1, what=f"the sidecar to stream\n{sidecar.log()}")
    pgbench(old, "-i", "-s", "1", "-q")
    backup_push(setup)
    pgbench(old, "-c", "2", "-t", "300")

    # The standby stops receiving; the primary goes on, two segments further.
    standby.sql("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'")
    standby.sql("SELECT pg_reload_conf()")
    pgharness.wait_for(lambda: not standby.sql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = "
                                               "'streaming'")[0][0], 60, interval=0.1, what="the standby to stop")
    pgbench(old, "-c", "2", "-t", "200")
    old.switch_wal()
    old.switch_wal()
    pgbench(old, "-c", "2", "-t", "100")
    _, old_end = current(old)
    sidecar.wait_until_archived(str(old_end))  # synchronous: it has every commit
    old.stop("immediate")
    standby.run("pg_ctl", "promote", "-D", standby.pgdata, "-w", timeout=120)
    wait_until_promoted(standby)
    history = parse_history((standby.pgdata / "pg_wal" / "00000002.history").read_text())
    fork = history[-1].switch_lsn
    assert fork // SEGMENT < old_end // SEGMENT - 1  # the sidecar holds timeline 1 two segments past the fork
    last_of_one = SegmentName.containing(1, fork, SEGMENT).name
    promoted_copy = (standby.pgdata / "pg_wal" / f"{last_of_one}.partial").read_bytes()

    # The sidecar follows: the old timeline shipped, the slot made on the new primary,
    # streaming from the fork on timeline 2.
    switch = sidecar.wait_for_event("timeline-switch", timeout=120)[0]
    assert (switch["old_timeline"], switch["timeline"]) == ("1", "2"), switch
    assert switch["server"] == f"127.0.0.1:{standby.port}"
    pgharness.wait_for(lambda: slot_active(standby), 120, interval=0.2,
                       what=f"the sidecar to stream from the promoted standby\n{sidecar.log()}")
    pgbench(standby, "-c", "2", "-t", "200")
    expected = contents(standby)
    name, new_end = current(standby)
    assert name.startswith("00000002")
    sidecar.wait_until_archived(str(new_end), timeout=120)
    state = sidecar.state()
    assert (state["following"], state["timeline"]) == (f"127.0.0.1:{standby.port}", 2), state
    status = json.loads(succeeded(setup.run("status", "--json")))
    assert status["receiver"]["following"] == f"127.0.0.1:{standby.port}"

    # The archive: the new history, the old timeline past the fork (only the sidecar had
    # it), the new timeline from the fork on.
    assert setup.stored("00000002.history").is_file()
    last_old = SegmentName.containing(1, Lsn(old_end - 1), SEGMENT).name
    assert setup.stored(last_old).is_file() or setup.stored(f"{last_old}.partial").is_file()
    first_new = SegmentName.containing(2, fork, SEGMENT).name
    pgharness.wait_for(lambda: setup.stored(first_new).is_file() or setup.stored(f"{first_new}.partial").is_file(),
                       60, what=f"{first_new} in the archive")
    assert not sidecar.events("timeline-gap"), sidecar.log()
    failed = standby.sql("SELECT failed_count FROM pg_stat_archiver")[0][0]
    assert failed == 0, standby.log()

    restored, _ = restore_started(cluster, setup, "--latest", "--archive-mode", "off")
    wait_until_promoted(restored)
    assert contents(restored) == expected
    assert restored.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][:8] == "00000003"
    assert sidecar.stop() == 0
    sidecar.assert_no_failures()

    archiver_partials(setup, promoted_copy, standby, fork, server_tmp)


def archiver_partials(setup: PitrkitSetup, ours: bytes, promoted: pgharness.Cluster, fork: Lsn,
                      directory: Path) -> None:
    """Case (a): the old timeline's last segment as the promoted server's archiver pushes
    it (`ours`, read from its pg_wal at the promotion), against the copy a receiver stored
    under the same name, in both orders."""
    segment = SegmentName.containing(1, fork, SEGMENT)
    name = f"{segment.name}.partial"
    work = pgharness.make_server_dir(directory / "partials")

    def fetched(wanted: str) -> bytes:
        path = work / "fetched"
        succeeded(setup.run("wal-fetch", wanted, str(path)))
        return path.read_bytes()

    cut = fork - segment.start_lsn
    assert 0 < cut < SEGMENT - 8192 and len(ours) == SEGMENT
    # The old primary's whole segment, archived: the same WAL to the fork, then more of timeline 1.
    theirs = fetched(segment.name)
    assert theirs[:cut] == ours[:cut] and theirs[cut:] != ours[cut:]
    receiver = theirs[: cut + 3000] + bytes(SEGMENT - cut - 3000)  # pg_receivewal's, 3000 bytes past the fork
    # A recycled file renamed at the promotion: the WAL to the fork, then an older segment's.
    recycled = ours[:cut] + fetched(SegmentName(1, segment.segno - 2, SEGMENT).name)[cut:]
    # Other valid WAL under the same name: timeline 2's first segment, the promoted
    # server's own records from the fork on.
    other = (promoted.pgdata / "pg_wal" / SegmentName(2, segment.segno, SEGMENT).name).read_bytes()
    stored = setup.stored(name)
    archive = Archive(load(setup.config))

    def push(data: bytes) -> subprocess.CompletedProcess[str]:
        path = work / name
        path.write_bytes(data)
        pgharness.give_to_server_user(path)
        return setup.run("wal-push", str(path))

    for first, second in ((receiver, recycled), (recycled, receiver), (receiver, ours), (ours, receiver)):
        stored.unlink(missing_ok=True)
        succeeded(push(first))
        succeeded(push(second))
        assert archive.read_wal(name) == receiver
    assert "diverges" in refusal(push(other))
    assert archive.read_wal(name) == receiver

"""The harness itself, on every PostgreSQL major: if these fail, no integration test means anything."""

from __future__ import annotations

import os
import shlex
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import pgharness
from pgharness import Cluster, PgInstall, RunnableInstall

pytestmark = pytest.mark.integration

MakeCluster = Callable[..., Cluster]
# XLogLongPageHeaderData: magic, info, tli, pageaddr, rem_len, (pad), sysid, seg_size, blcksz
LONG_PAGE_HEADER = struct.Struct("=HHIQI4xQII")
XLP_LONG_HEADER = 0x0002


def test_server_runs_as_server_user_on_its_own_socket(cluster: MakeCluster, pg_install: PgInstall):
    pg = cluster().start()

    assert int(pg.sql("SHOW server_version_num")[0][0]) // 10000 == pg_install.major
    assert pg.sql("SELECT version()")[0][0].startswith(f"PostgreSQL {pg_install.version}")
    assert pg.sql("SELECT current_user")[0][0] == pgharness.SUPERUSER
    assert pg.sql("SHOW listen_addresses")[0][0] == ""
    assert (pg.socket_dir / f".s.PGSQL.{pg.port}").is_socket()
    # The postmaster, which outlives any one connection (a backend's pid read over a
    # connection is gone once that connection closes, sooner or later).
    postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    assert Path(f"/proc/{postmaster}").stat().st_uid == pgharness.server_user().uid


def test_shell_runs_like_archive_command(cluster: MakeCluster, server_tmp: Path):
    pg = cluster()
    pg.env["PITRKIT_TEST_MARK"] = "from-env"
    pg.conf(archive_mode="on", archive_command=f"(env; id -un) > {server_tmp}/%f.env")
    pg.start()
    pg.wait_for_archived(pg.switch_wal())

    server = sorted(server_tmp.glob("*.env"))[0].read_text().splitlines()
    out = pg.shell("env; id -un").stdout.splitlines()

    user = pgharness.server_user()
    assert "PITRKIT_TEST_MARK=from-env" in server and "PITRKIT_TEST_MARK=from-env" in out
    for same in (f"PWD={pg.pgdata}", f"PGDATA={pg.pgdata}", f"HOME={user.home}", user.name):
        assert same in server and same in out


def test_switch_wal_completes_a_segment(cluster: MakeCluster):
    pg = cluster(wal_segsize=1).start()
    assert pg.sql("SHOW wal_segment_size")[0][0] == "1MB"

    done = pg.switch_wal()

    # Write after the switch: a position on the segment boundary still names the old segment.
    pg.sql("SELECT pg_logical_emit_message(false, 'test', 'after')")
    assert pg.sql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0] > done
    segment = (pg.pgdata / "pg_wal" / done).read_bytes()
    assert len(segment) == 1 << 20
    _, info, tli, _, _, sysid, seg_size, _ = LONG_PAGE_HEADER.unpack_from(segment)
    assert info & XLP_LONG_HEADER
    assert (tli, sysid, seg_size) == (1, pg.system_identifier, 1 << 20)


def test_archive_command_archives(cluster: MakeCluster, server_tmp: Path):
    # A space and a quote in the path prove conf() quotes values for postgresql.conf.
    archive = pgharness.make_server_dir(server_tmp / "arch 'ive")
    pg = cluster(archive_mode="on", archive_command=f"cp %p {shlex.quote(str(archive))}/%f").start()

    done = pg.switch_wal()
    pg.wait_for_archived(done)

    archived, failed = pg.sql("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    assert archived >= 1 and failed == 0
    assert (archive / done).read_bytes() == (pg.pgdata / "pg_wal" / done).read_bytes()
    assert os.stat(archive / done).st_uid == pgharness.server_user().uid


def test_fast_and_immediate_stop(cluster: MakeCluster):
    pg = cluster().start()
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")

    pg.stop("fast")
    assert not pg.is_running
    log_start = len(pg.log())
    pg.start()
    assert "automatic recovery in progress" not in pg.log()[log_start:]

    pg.stop("immediate")
    assert not pg.is_running
    log_start = len(pg.log())
    pg.start()
    assert "automatic recovery in progress" in pg.log()[log_start:]
    assert pg.sql("SELECT count(*) FROM t") == [(1000,)]


def test_pg_basebackup_makes_a_startable_copy(cluster: MakeCluster):
    primary = cluster().start()
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
    copy = cluster(init=False)

    primary.pg_basebackup(copy.pgdata)
    copy.start()

    assert copy.sql("SELECT sum(n) FROM t") == [(500500,)]
    assert copy.system_identifier == primary.system_identifier
    assert copy.port != primary.port and primary.is_running


def test_runnable_install_runs_as_server_user_without_the_checkout(
    runnable_install: RunnableInstall,
):
    out = pgharness.run_as_server_user(
        [runnable_install.python, "-c", "import pitrkit; print(pitrkit.__file__)"]
    ).stdout.strip()

    checkout = Path(__file__).resolve().parents[2]
    if pgharness.server_user().switch:  # the venv holds a real copy, not a link to the checkout
        assert not Path(out).is_relative_to(checkout)
    interpreter = runnable_install.pitrkit.read_text().splitlines()[0].removeprefix("#!")
    assert Path(interpreter).parent == runnable_install.python.parent
    assert os.access(runnable_install.pitrkit, os.X_OK)

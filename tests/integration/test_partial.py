"""Restoring from an archive whose newest WAL is a `.partial`, on PostgreSQL 15 and 18
(issue 4): the open segment, streamed by pg_receivewal and shipped with `wal-push` as
`<segment>.partial`, holds the last transactions; archive_command never shipped them,
because the primary was killed before the segment filled.

The receiver here is PostgreSQL's own pg_receivewal, run by the test, so that what is
tested is the archive's reading side (restore-plan, restore, wal-fetch through the
agent) on a real partial segment, whatever ships it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from pitrkit.demo import localpg
from pitrkit.postgres.wal import Lsn

import pgharness
from pitr_workload import (
    archive_everything,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    restore_plan,
    restore_started,
    succeeded,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration


def start_receiver(primary: pgharness.Cluster, directory: Path) -> subprocess.Popen[bytes]:
    """pg_receivewal streaming the primary's open segment into `directory`, as the server
    user, flushing and acknowledging every write (--synchronous), so that the flush
    position pg_stat_replication shows is what the directory holds."""
    user = localpg.server_user()
    return subprocess.Popen(
        [str(primary.install.bin("pg_receivewal")), "-D", str(directory), "-h", str(primary.socket_dir),
         "-p", str(primary.port), "-U", localpg.SUPERUSER, "--no-loop", "--no-password", "--synchronous"],
        env=localpg.server_env(), cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, user=user.uid if user.switch else None, group=user.gid if user.switch else None,
    )


def received_up_to(primary: pgharness.Cluster, lsn: str) -> bool:
    rows = primary.sql("SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = 'pg_receivewal'")
    return bool(rows) and rows[0][0] is not None and Lsn.parse(rows[0][0]) >= Lsn.parse(lsn)


def test_restore_latest_replays_the_transactions_only_a_partial_holds(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    primary, _ = primary_with_a_backup(cluster, setup)

    received = pgharness.make_server_dir(server_tmp / "received", mode=0o700)
    receiver = start_receiver(primary, received)
    try:
        write_round(primary, 3)
        write_round(primary, 4)
        # Everything so far is archived; what follows (a few kB) lands in the segment
        # that opens now, which archive_command will never see.
        last_archived = archive_everything(primary)
        drop_doomed(primary)
        write_round(primary, 5)
        point = note_point(primary)
        pgharness.wait_for(lambda: received_up_to(primary, point.lsn), 60, interval=0.1,
                           what=f"pg_receivewal to flush up to {point.lsn}")
    finally:
        receiver.send_signal(signal.SIGINT)  # stops cleanly, leaving the open segment as .partial
        output = receiver.communicate(timeout=60)[0].decode(errors="replace")
    open_segment = primary.sql("SELECT pg_walfile_name(%s::pg_lsn)", [point.lsn])[0][0]
    assert int(open_segment, 16) == int(last_archived, 16) + 1  # (within one 4 GiB log)
    partial = received / f"{open_segment}.partial"
    assert partial.is_file(), (sorted(os.listdir(received)), output)
    succeeded(setup.run("wal-push", str(partial)))

    # The crash: the open segment never reaches archive_command.
    primary.stop("immediate")
    assert not setup.stored(open_segment).exists()
    assert setup.stored(f"{open_segment}.partial").is_file()
    assert "doomed" not in point.digests  # the drop and round 5 live in the partial alone

    plan = restore_plan(setup, "--latest")
    assert plan["segments"][-1] == f"{open_segment}.partial"
    assert Lsn.parse(plan["archive_end"]) >= Lsn.parse(point.lsn)  # an upper bound of the WAL in it
    wal_list = succeeded(setup.run("wal-list"))
    assert f"{open_segment}.partial" in wal_list and "partial" in wal_list.splitlines()[-1]

    restored, report = restore_started(cluster, setup, "--latest", "--archive-mode", "off")
    assert "only stored as" in report
    wait_until_promoted(restored)
    assert digests(restored) == point.digests
    server_log = Path(re.search(r"; log: (\S+)", report)[1]).read_text()  # type: ignore[index]
    assert f'restored log file "{open_segment}" from archive' in server_log

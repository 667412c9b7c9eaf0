"""`pitrkit restore` against real PostgreSQL 15 and 18, run as the server user through the
installed `pitrkit` exactly as a DBA runs it: a base backup taken by backup-push, more
writes, then a restore into a fresh directory that PostgreSQL starts and recovers from
the archive through the restore_command restore wrote. The restored data must be what it
was at the target, to the row.

The end-to-end matrix (times, latest, timelines, two backups) lives in test_pitr.py;
these tests are about the restore engine itself: --start and what it reports, the
pause action, tablespaces, the directory it writes, and its refusals.
"""

from __future__ import annotations

import os
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.restore import recovery_conf

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    attach,
    backup_push,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    refusal,
    restore_into,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def reported(stdout: str, what: str) -> str:
    match = re.search(rf"^\s*{what}: (.+)$", stdout, re.MULTILINE)
    assert match, f"no '{what}' line in:\n{stdout}"
    return match[1]


def test_start_reaches_an_lsn_target_and_the_data_is_as_it_was_then(cluster, pitrkit_setup):
    primary, backup = primary_with_a_backup(cluster, pitrkit_setup)
    target = note_point(primary)
    write_round(primary, 3)
    drop_doomed(primary)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--start")
    out = succeeded(result)
    assert f"restoring backup {backup['backup_id']}" in out
    assert "recovery promoted" in out
    # Promotion happens on the first record past the target (inclusive stop).
    assert Lsn.parse(reported(out, "last replayed WAL location")) >= Lsn.parse(target.lsn)
    assert reported(out, "now on timeline") == "2"
    # The primary archives with pitrkit, and so will the promoted copy: said, not changed.
    assert "archive_mode = on" in result.stderr and "warning" in result.stderr

    attach(restored)
    assert digests(restored) == target.digests
    assert "doomed" in target.digests
    # What restore wrote: a private directory owned by the server user, recovery settings
    # calling the installed pitrkit with this configuration, the server's log beside it.
    info = restored.pgdata.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == pgharness.server_user().uid
    auto_conf = (restored.pgdata / recovery_conf.AUTO_CONF).read_text()
    # The installed pitrkit's interpreter, calling its front door (recovery_conf.pitrkit_executable).
    (command,) = [line for line in auto_conf.splitlines() if line.startswith("restore_command = ")]
    assert command.startswith(f"restore_command = '{pitrkit_setup.pitrkit.parent}/python")
    # Nothing past the plan's end is served: for an LSN, the segment after the one holding
    # it, where the record recovery stops at may end.
    until = SegmentName(1, Lsn.parse(target.lsn) // (16 << 20) + 1, 16 << 20).name
    assert command.endswith(f" -P -c ''from pitrkit.entry import run; run()'' --config {pitrkit_setup.config} "
                            f"wal-fetch %f %p --until {until}'")
    assert f"recovery_target_lsn = '{target.lsn}'" in auto_conf
    assert "recovery stopping" in (restored.pgdata / "log" / "restore.log").read_text()


def test_pause_waits_at_a_time_target_and_resume_promotes(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    write_round(primary, 2)
    drop_doomed(primary)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--to", target.time, "--action", "pause", "--start",
                                    "--archive-mode", "off")
    out = succeeded(result)
    assert "warning" not in result.stderr  # the copy will not archive: nothing to warn about
    assert "recovery paused" in out
    assert reported(out, "now on timeline") == "1"
    attach(restored)
    # Paused at the target, read-only: the DBA checks the data before promoting.
    assert restored.sql("SELECT pg_is_in_recovery()")[0][0]
    assert digests(restored) == target.digests
    restored.sql("SELECT pg_wal_replay_resume()")
    pgharness.wait_for(lambda: restored.sql("SELECT NOT pg_is_in_recovery()")[0][0], 120,
                       interval=0.2, what="the resumed server to promote")
    assert digests(restored) == target.digests
    # --archive-mode off: the promoted copy leaves the archive alone.
    assert restored.sql("SHOW archive_mode")[0][0] == "off"
    assert not pitrkit_setup.stored("00000002.history").exists()


def test_a_tablespace_is_restored_into_the_mapped_directory(cluster, pitrkit_setup, server_tmp):
    original = pgharness.make_server_dir(server_tmp / "space", mode=0o700)
    primary = archiving_primary(cluster, pitrkit_setup)
    primary.sql(f"CREATE TABLESPACE fast LOCATION '{original}'")
    primary.sql("CREATE TABLE hot (id int PRIMARY KEY, payload text) TABLESPACE fast;"
                "INSERT INTO hot SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g")
    backup_push(pitrkit_setup)
    primary.sql("UPDATE hot SET payload = 'changed' WHERE id % 3 = 0")
    target = note_point(primary)
    primary.sql("DELETE FROM hot")
    archive_everything(primary)

    # Without a mapping the original location is used: it is not empty, so refused.
    refused, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn)
    assert "tablespace 'fast' was at" in refusal(result) and "is not empty" in refusal(result)
    assert not refused.pgdata.exists()
    _, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--tablespace-map", "nosuch=/tmp/x")
    assert "no tablespace at or named 'nosuch'" in refusal(result)

    moved = server_tmp / "moved"  # absent: restore creates it
    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--start",
                                    "--tablespace-map", f"{original}={moved}")
    succeeded(result)
    attach(restored)
    links = list((restored.pgdata / "pg_tblspc").iterdir())
    assert [os.readlink(link) for link in links] == [str(moved)]
    assert restored.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'") == [
        (str(moved),)]
    assert digests(restored) == target.digests
    assert any(moved.iterdir()) and sorted(os.listdir(original)) == sorted(os.listdir(moved))


def test_refusals_come_before_anything_is_written(cluster, pitrkit_setup, server_tmp):
    primary = archiving_primary(cluster, pitrkit_setup)
    backup = backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    archive_everything(primary)

    # A WAL segment the plan needs, deleted after the catalog listed it.
    needed = pitrkit_setup.stored(backup["last_segment"])
    kept = needed.read_bytes()
    needed.unlink()
    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn)
    assert backup["last_segment"] in refusal(result)
    assert not restored.pgdata.exists()
    needed.write_bytes(kept)
    pgharness.give_to_server_user(needed)

    # A corrupt manifest is named.
    manifest = pitrkit_setup.archive / "backups" / backup["backup_id"] / "manifest.json"
    intact = manifest.read_bytes()
    manifest.chmod(0o600)
    manifest.write_bytes(intact[: len(intact) // 2])
    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn)
    assert f"backups/{backup['backup_id']}/manifest.json" in refusal(result)
    assert not restored.pgdata.exists()


def test_shutdown_action_stops_the_server_at_the_target(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    write_round(primary, 2)
    archive_everything(primary)

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", target.lsn, "--action", "shutdown", "--start")
    out = succeeded(result)
    assert "recovery shut down" in out
    assert "recovery stopping" in out  # the server's own line, reported
    assert not (restored.pgdata / "postmaster.pid").exists()


def test_a_target_the_wal_never_reaches_fails_the_restore_with_the_servers_reason(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    last = archive_everything(primary)
    # The last byte of the last archived segment: inside the archive as far as the names
    # tell (the plan accepts it), but that segment ends in a WAL switch, so no record
    # reaches it. Recovery runs out of WAL first, and PostgreSQL says so.
    log, segno = int(last[8:16], 16), int(last[16:24], 16)
    end = (log << 32) + (segno + 1) * 16 * 1024 * 1024
    unreachable = f"{(end - 1) >> 32:X}/{(end - 1) & 0xFFFFFFFF:X}"

    restored, result = restore_into(cluster, pitrkit_setup, "--lsn", unreachable, "--start", "--archive-mode", "off")
    error = refusal(result)
    assert "PostgreSQL stopped before reaching the recovery target: recovery ended before configured recovery " \
           "target was reached" in error
    assert not (restored.pgdata / "postmaster.pid").exists()


def test_a_postmaster_that_fails_after_restore_saw_its_pid_file_did_not_start(cluster, pitrkit_setup, server_tmp):
    # postmaster.pid appears before shared_preload_libraries is loaded (the race CI hit:
    # restore saw the file, then the postmaster failed). A library that is a FIFO holds
    # the postmaster there, postmaster.pid written, until the test writes to it, long
    # after restore (looking every 50 ms at most) has seen the file; then the library
    # fails to load, and the server never began recovery.
    library = server_tmp / "slow_library.so"
    os.mkfifo(library)
    pgharness.give_to_server_user(library)
    primary = archiving_primary(cluster, pitrkit_setup)
    primary.conf(shared_preload_libraries=str(library))  # after the primary started: only the restore loads it
    backup_push(pitrkit_setup)
    write_round(primary, 1)
    target = note_point(primary)
    archive_everything(primary)

    restored = cluster(init=False)
    restored.env.update(pitrkit_setup.env)
    pid_file = restored.pgdata / "postmaster.pid"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(pitrkit_setup.run, "restore", "--lsn", target.lsn, "--archive-mode", "off",
                              "--target-dir", str(restored.pgdata), "--start", "--port", str(restored.port),
                              timeout=600)
        try:
            pgharness.wait_for(lambda: pid_file.exists() or running.done(), 300, interval=0.05,
                               what="postmaster.pid")
            assert not running.done(), running.result().stderr
            time.sleep(1)
            assert len(pid_file.read_text().splitlines()) < 8  # no status line: held at the library
        finally:
            release(library)
        result = running.result()
    error = refusal(result)
    assert error.startswith(f'pitrkit: PostgreSQL did not start: could not load library "{library}"'), error
    assert not pid_file.exists()


def release(fifo: Path) -> None:
    """Let the postmaster waiting to read `fifo` go on, with bytes no library begins with."""
    try:
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody is waiting on it
    try:
        os.write(descriptor, b"not a shared library\n")
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("kind", ["lsn", "time"])
def test_recovery_settings_left_in_the_backed_up_configuration_cannot_bend_the_restore(cluster, pitrkit_setup,
                                                                                       server_tmp, kind):
    # What a standby's configuration, or an earlier point-in-time restore, leaves in
    # postgresql.conf: a primary ignores it, and the backup carries it to the restore.
    ran = server_tmp / "recovery_end_command-ran"
    primary = archiving_primary(cluster, pitrkit_setup, recovery_min_apply_delay="1h",
                                recovery_end_command=f"touch {ran}")
    write_round(primary, 1)
    stale = note_point(primary)
    primary.conf(recovery_target_time=stale.time)
    backup = backup_push(pitrkit_setup)
    write_round(primary, 2)
    target = note_point(primary)
    write_round(primary, 3)
    drop_doomed(primary)
    archive_everything(primary)

    # To an LSN, the old time would be a second target; to a time, the new one replaces
    # it by name, and the delay and the end command are what is left.
    chosen = ("--lsn", target.lsn) if kind == "lsn" else ("--to", target.time)
    restored, result = restore_into(cluster, pitrkit_setup, *chosen, "--start")
    out = succeeded(result)
    assert f"restoring backup {backup['backup_id']}" in out
    # Said, each as PostgreSQL would have read it.
    assert f"overrode recovery_target_time = '{stale.time}' from postgresql.conf" in out
    assert "overrode recovery_min_apply_delay = '1h' from postgresql.conf" in out
    assert f"overrode recovery_end_command = 'touch {ran}' from postgresql.conf" in out
    # Neither a second target (PostgreSQL would refuse to start), nor the old one, nor an
    # hour's delay: the restore reached its own target, exactly, and promoted.
    assert "recovery promoted" in out
    attach(restored)
    assert digests(restored) == target.digests
    assert not ran.exists()
    assert restored.sql("SHOW recovery_min_apply_delay")[0][0] == "0"

"""The streaming sidecar `pitrkit wal-receive` end to end, on PostgreSQL 15 and 18 (issue 4).

The sidecar runs as the server user through the installed `pitrkit`, as a subprocess
stopped with signals, exactly as systemd would run it. The yardstick is a restore
(`restore --latest` from the archive, fetch serving the newest `.partial`): every
acknowledged commit must be there (synchronous mode), or all but the last moment's; and
after kill -9 of either process, the restore is exact.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pitrkit.postgres.wal import Lsn

import pgharness
from pitr_workload import (
    archiving_primary,
    backup_push,
    digests,
    note_point,
    restore_started,
    wait_until_promoted,
    write_round,
)
from pitrkit_setup import PitrkitService, PitrkitSetup

pytestmark = pytest.mark.integration

SLOT = "pitrkit"


# --- the sidecar as a DBA runs it -------------------------------------------------------------


def configure(setup: PitrkitSetup, primary: pgharness.Cluster, spool: Path, *, synchronous: bool = False,
              partial_interval: float = 1, max_slot_retained: str = "4GB") -> None:
    """[postgres] naming `primary`, and a [receive] section for `spool`."""
    setup.write_config(postgres=primary)
    with open(setup.config, "a") as file:
        file.write(f'[receive]\nslot = "{SLOT}"\nspool = "{spool}"\npartial_interval = {partial_interval}\n'
                   f"synchronous = {'true' if synchronous else 'false'}\n"
                   f'max_slot_retained = "{max_slot_retained}"\n')


@dataclass
class Sidecar(PitrkitService):
    """`pitrkit wal-receive` spooling into `spool`."""

    command = "wal-receive"
    spool: Path

    def state(self) -> dict:
        try:
            state: dict = json.loads((self.spool / "pitrkit-receive.json").read_text())
            return state
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_until_archived(self, lsn: str, timeout: float = 60) -> dict:
        """Wait until the sidecar reports WAL up to `lsn` archived; its state then."""
        def archived() -> dict:
            assert self.process.poll() is None, f"wal-receive exited {self.process.returncode}:\n{self.log()}"
            state = self.state()
            done = state.get("last_archived_lsn")
            return state if done and Lsn.parse(done) >= Lsn.parse(lsn) else {}
        return pgharness.wait_for(archived, timeout, interval=0.1, what=f"the sidecar to archive up to {lsn}")

    def receiver_pid(self) -> int:
        """pg_receivewal, the sidecar's child."""
        def child() -> int:
            path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
            pids = [int(pid) for pid in Path(path).read_text().split()]
            return pids[0] if pids else 0
        return pgharness.wait_for(child, 30, what="pg_receivewal to run")

    def assert_no_failures(self) -> None:
        log = self.assert_no_traceback()
        for event in ("archive-failed", "partial-failed", "slot-lost"):
            assert not self.events(event), log


def start_sidecar(setup: PitrkitSetup, spool: Path, name: str = "sidecar") -> Sidecar:
    return Sidecar(setup, spool.parent / f"{name}.log", spool)


def slot_row(cluster: pgharness.Cluster) -> tuple | None:
    rows = cluster.sql("SELECT slot_type, active, restart_lsn IS NOT NULL FROM pg_replication_slots "
                       "WHERE slot_name = %s", (SLOT,))
    return rows[0] if rows else None


def wait_until_streaming(sidecar: Sidecar, cluster: pgharness.Cluster) -> None:
    pgharness.wait_for(lambda: (row := slot_row(cluster)) is not None and row[1], 60, interval=0.1,
                       what=f"the sidecar to stream from slot {SLOT}\n{sidecar.log()}")


def streaming_primary(cluster_factory, setup: PitrkitSetup, spool: Path, **settings: object) -> pgharness.Cluster:
    """A started primary that does not archive (archive_mode off): the sidecar is its only
    way into the archive. The workload's tables are created once the sidecar streams."""
    primary = cluster_factory(archive_mode="off", checkpoint_timeout="30s", **settings)
    primary.env.update(setup.env)
    primary.start()
    setup.init(primary)  # from the running server, over [postgres] conninfo
    return primary


def create_tables(primary: pgharness.Cluster) -> None:
    primary.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);"
        "CREATE TABLE events (id bigint PRIMARY KEY, round int NOT NULL, payload text);"
        "CREATE TABLE ticks (id int PRIMARY KEY, payload text);"
        "INSERT INTO accounts SELECT g, 1000, 'opened' FROM generate_series(1, 2000) g"
    )


def restore_latest(cluster_factory, setup: PitrkitSetup) -> pgharness.Cluster:
    """`restore --latest --start` from the archive into a fresh directory, promoted."""
    restored, _ = restore_started(cluster_factory, setup, "--latest", "--archive-mode", "off")
    wait_until_promoted(restored)
    return restored


# --- slots ------------------------------------------------------------------------------------


def test_slot_created_reused_and_a_server_down_at_start_is_retried(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    primary = cluster(archive_mode="off")
    setup.init(primary)  # the server is stopped: from pg_controldata
    configure(setup, primary, spool)

    # The server is down: the sidecar says so, clearly, and keeps trying with backoff.
    sidecar = start_sidecar(setup, spool)
    down = sidecar.wait_for_event("server-unreachable", count=2)
    assert (down[0]["retry_in"], down[1]["retry_in"]) == ("1s", "2s"), sidecar.log()
    assert "error" in down[0]
    primary.start()

    # Then the missing slot is created, physical and reserving WAL at once, and streamed from.
    sidecar.wait_for_event("slot-created")
    wait_until_streaming(sidecar, primary)
    assert slot_row(primary) == ("physical", True, True)
    assert sidecar.stop() == 0
    assert slot_row(primary) == ("physical", False, True)
    assert sidecar.state()["running"] is False

    # A restart reuses it, and warns when it holds back more WAL than configured (the
    # slot has kept everything since the last segment the sidecar completed).
    primary.sql("CREATE TABLE filler AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    configure(setup, primary, spool, max_slot_retained="1MB")
    again = start_sidecar(setup, spool, "again")
    again.wait_for_event("slot-reused")
    warning = again.wait_for_event("slot-retains-too-much")[0]
    assert (warning["level"], warning["limit"]) == ("warning", "1.0 MiB"), warning
    wait_until_streaming(again, primary)
    state = pgharness.wait_for(lambda: (s := again.state()).get("pid") == again.process.pid and s["slot"] and s,
                               30, what="the restarted sidecar's state file")
    assert state["slot"]["name"] == SLOT and state["slot"]["wal_status"] in ("reserved", "extended")
    assert state["server_reachable"] is True and state["receiving"] is True
    assert again.stop(signal.SIGINT) == 0
    for each in (sidecar, again):
        each.assert_no_failures()


# --- crash of the primary: the RPO ---------------------------------------------------------------


class Committer:
    """A client committing one row at a time into `ticks` until the server goes away,
    noting when each commit was acknowledged."""

    def __init__(self, primary: pgharness.Cluster) -> None:
        self.acknowledged: list[tuple[int, float]] = []  # (id, time.time() of the acknowledgement)
        self._connection = primary.connect()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while True:
            tick += 1
            try:
                self._connection.execute("INSERT INTO ticks VALUES (%s, repeat(md5(%s::text), 30))", (tick, tick))
            except psycopg.Error:
                return  # the server is gone; this commit was never acknowledged
            self.acknowledged.append((tick, time.time()))

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive()


def shipped_after_exit(sidecar: Sidecar) -> bool:
    """The sidecar saw pg_receivewal exit and then shipped the open segment by itself."""
    lines = sidecar.log().splitlines()
    exits = [n for n, line in enumerate(lines) if " event=receiver-exited " in line]
    return bool(exits) and any(" event=partial-shipped " in line for line in lines[exits[0]:])


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_a_crashed_primary_loses_no_acknowledged_commit(cluster, pitrkit_setup, server_tmp, synchronous):
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    primary = streaming_primary(cluster, setup, spool,
                                synchronous_standby_names=SLOT if synchronous else "")
    configure(setup, primary, spool, synchronous=synchronous)
    sidecar = start_sidecar(setup, spool)
    wait_until_streaming(sidecar, primary)
    create_tables(primary)
    backup_push(setup)
    for round_ in range(1, 4):  # complete segments go the full-segment way
        write_round(primary, round_)
        primary.switch_wal()

    committer = Committer(primary)
    pgharness.wait_for(lambda: len(committer.acknowledged) > 100, 60, what="commits")
    # Mid-segment, the open segment reaches the archive every partial_interval by itself.
    noted = len(committer.acknowledged)
    sidecar.wait_until_archived(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
    time.sleep(random.uniform(0.2, 2.0))  # a random moment
    primary.stop("immediate")
    committer.join()
    acknowledged = committer.acknowledged

    # The sidecar notices the server is gone and ships what it has, without being told;
    # after kill -9 only what it shipped by itself counts.
    pgharness.wait_for(lambda: shipped_after_exit(sidecar), 60, interval=0.1,
                       what=f"the sidecar to ship the open segment after the primary died\n{sidecar.log()}")
    sidecar.stop(signal.SIGKILL)

    restored = restore_latest(cluster, setup)
    ticks = [row[0] for row in restored.sql("SELECT id FROM ticks ORDER BY id")]
    assert ticks == list(range(1, len(ticks) + 1)), "the restored commits are not a prefix of those made"
    assert len(ticks) >= noted
    if synchronous:
        # synchronous_standby_names: the server acknowledged a commit only once it was
        # fsync'd in the sidecar's spool, and the sidecar shipped the spool.
        assert len(ticks) >= len(acknowledged), f"{len(acknowledged) - len(ticks)} acknowledged commits lost"
    lost = acknowledged[len(ticks):]
    rpo = lost[-1][1] - acknowledged[len(ticks) - 1][1] if lost else 0.0
    print(f"RPO {primary.major} {'synchronous' if synchronous else 'asynchronous'}: {len(acknowledged)} commits "
          f"acknowledged, {len(lost)} lost, {rpo:.3f} s")
    sidecar.assert_no_failures()


# --- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_of_the_sidecar_or_pg_receivewal_leaves_no_gap(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    primary = streaming_primary(cluster, setup, spool)
    configure(setup, primary, spool)
    first = start_sidecar(setup, spool, "first")
    wait_until_streaming(first, primary)
    create_tables(primary)
    backup_push(setup)
    write_round(primary, 1)
    first.wait_until_archived(note_point(primary).lsn)

    # kill -9 of pg_receivewal: the sidecar restarts it, which resumes where the spool ends.
    os.kill(first.receiver_pid(), signal.SIGKILL)
    first.wait_for_event("receiver-exited")
    first.wait_for_event("receiver-started", count=2)
    write_round(primary, 2)
    first.wait_until_archived(note_point(primary).lsn)

    # kill -9 of the sidecar mid-segment: its pg_receivewal goes too, and the slot keeps
    # the WAL written meanwhile, a completed segment included.
    write_round(primary, 3)
    first.stop(signal.SIGKILL)
    pgharness.wait_for(lambda: not slot_row(primary)[1], 30, what="pg_receivewal to follow the sidecar")
    write_round(primary, 4)
    primary.switch_wal()
    write_round(primary, 5)

    second = start_sidecar(setup, spool, "second")
    write_round(primary, 6)
    point = note_point(primary)
    second.wait_until_archived(point.lsn)
    restored = restore_latest(cluster, setup)
    assert digests(restored) == point.digests
    assert second.stop() == 0
    for each in (first, second):
        each.assert_no_failures()


# --- together with archive_command -------------------------------------------------------------


def test_the_sidecar_and_archive_command_archive_side_by_side(cluster, pitrkit_setup, server_tmp):
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    primary = archiving_primary(cluster, setup)
    configure(setup, primary, spool)
    sidecar = start_sidecar(setup, spool)
    wait_until_streaming(sidecar, primary)
    backup_push(setup)
    for round_ in range(1, 4):
        write_round(primary, round_)
        last = primary.switch_wal()
    primary.wait_for_archived(last)
    sidecar.wait_for_event("archived", count=3)  # the backup's and the rounds' segments, pushed twice
    write_round(primary, 4)
    point = note_point(primary)
    sidecar.wait_until_archived(point.lsn)

    failed, archived = primary.sql("SELECT failed_count, archived_count FROM pg_stat_archiver")[0]
    assert failed == 0 and archived >= 3
    restored = restore_latest(cluster, setup)
    assert digests(restored) == point.digests
    assert sidecar.stop() == 0
    sidecar.assert_no_failures()
    # Tidy: once a full segment is stored, the sidecar deletes the partial of it.
    stored = {path.name for path in (setup.archive / "wal").rglob("*") if path.is_file()}
    assert not [name for name in stored if name.endswith(".partial") and name.removesuffix(".partial") in stored]


# --- secrets ---------------------------------------------------------------------------------


def test_conninfo_secrets_never_reach_pg_receivewal_argv(cluster, pitrkit_setup, server_tmp):
    """`ps` shows every user each process's argv: a password or an sslpassword in
    [postgres] conninfo must reach pg_receivewal some other way (a service file, gone
    once it has connected)."""
    setup = pitrkit_setup
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    primary = streaming_primary(cluster, setup, spool)
    configure(setup, primary, spool)
    text = setup.config.read_text()
    assert "dbname=postgres\"" in text
    setup.config.write_text(text.replace("dbname=postgres\"", "dbname=postgres password=pw-s3cret "
                                         "sslpassword=ssl-s3cret\""))
    sidecar = start_sidecar(setup, spool)
    wait_until_streaming(sidecar, primary)  # the secrets reached libpq: it connected
    receiver = sidecar.receiver_pid()
    argv = Path(f"/proc/{receiver}/cmdline").read_bytes()
    assert b"pg_receivewal" in argv and b"s3cret" not in argv
    assert b"service=pitrkit-receive" in argv
    assert b"s3cret" not in Path(f"/proc/{sidecar.process.pid}/cmdline").read_bytes()
    environment = dict(item.split(b"=", 1) for item in Path(f"/proc/{receiver}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
    service_file = Path(os.fsdecode(environment[b"PGSERVICEFILE"]))
    pgharness.wait_for(lambda: not service_file.parent.exists(), 30, what="the service file to be removed")
    assert sidecar.stop() == 0
    sidecar.assert_no_failures()
    assert "s3cret" not in sidecar.log()

"""The daemon's parts without PostgreSQL: the timetable on a fake clock (a missed slot runs
once, an overrun is followed by one backup, not a queue), the other-host check, the
scheduled backups driven by a fake clock with a stand-in `pitrkit` child, the sidecar's
restart, a SIGTERM while the daemon starts, the status server on an empty archive, the
logfmt lines, and the events docs/operations.md lists. The daemon itself, with
PostgreSQL, is tested in tests/integration/test_daemon.py."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitrkit import config
from pitrkit.catalog.documents import BackupSummary
from pitrkit.catalog.lock import CATALOG_LOCK_KEY
from pitrkit.cron import Cron
from pitrkit.daemon.schedule import Every, Timetable
from pitrkit.daemon.service import (
    Backups,
    Child,
    Drills,
    Outcome,
    Sidecar,
    UnfinishedBackup,
    backup_in_progress,
    command,
    data_directory_major,
)
from pitrkit.daemon.status_server import StatusBoard, StatusServer, parse_listen
from pitrkit.demo.localpg import wait_for
from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.events import LogfmtFormatter
from pitrkit.ops.daemon_facts import DaemonFacts
from pitrkit.postgres.wal import Lsn
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive, manifest_key
from tests.unit.segments import init_archive

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


# --- the timetable --------------------------------------------------------------------------


def test_a_new_archive_gets_a_backup_at_once() -> None:
    table = Timetable(Every(3600, "1h"), None, T0)
    assert table.is_due(T0) and table.missed is None


def test_missed_slots_run_once_at_start() -> None:
    # Down for a day with hourly backups: one backup now, the next an hour after it.
    table = Timetable(Every(3600, "1h"), T0 - timedelta(days=1), T0)
    assert table.is_due(T0) and table.missed == T0 - timedelta(hours=23)
    table.started(T0)
    assert not table.is_due(T0 + timedelta(minutes=59)) and table.is_due(T0 + timedelta(hours=1))


def test_a_recent_backup_waits_for_its_next_slot() -> None:
    daily = Cron.parse("30 2 * * *", UTC)
    table = Timetable(daily, T0 - timedelta(hours=1), T0)
    # The backup at 11:00 came after today's 02:30: nothing was missed.
    assert table.missed is None and table.due == datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


def test_a_cron_slot_missed_while_down_runs_once() -> None:
    daily = Cron.parse("30 2 * * *", UTC)
    table = Timetable(daily, datetime(2026, 11, 20, 2, 30, tzinfo=UTC), T0)  # six slots missed
    assert table.missed == datetime(2026, 11, 21, 2, 30, tzinfo=UTC) and table.is_due(T0)
    table.started(T0)
    assert table.due == datetime(2026, 11, 27, 2, 30, tzinfo=UTC)


def test_late_starts_do_not_push_the_next_slots_back() -> None:
    table = Timetable(Every(3600, "1h"), T0 - timedelta(hours=1), T0 - timedelta(minutes=1))
    for _ in range(3):
        table.started(table.due + timedelta(seconds=0.25))  # the loop notices a due backup a tick late
    assert table.due == T0 + timedelta(hours=3)


def test_an_overrunning_backup_is_followed_by_one_at_once() -> None:
    table = Timetable(Every(60, "1m"), None, T0)
    table.started(T0)
    finished = T0 + timedelta(minutes=5)  # five slots passed during the backup
    assert table.is_due(finished)
    table.started(finished)
    assert not table.is_due(finished + timedelta(seconds=59))


# --- another host's backup ------------------------------------------------------------------


def test_backup_in_progress() -> None:
    recent = UnfinishedBackup("20261126T115900Z", T0 - timedelta(minutes=2))
    old = UnfinishedBackup("20261125T000000Z", T0 - timedelta(hours=3))
    unknown = UnfinishedBackup("20261126T115800Z", None)
    assert backup_in_progress([old, recent, unknown], set(), T0, 900) == recent
    assert backup_in_progress([old, recent, unknown], {recent.backup_id}, T0, 900) is None
    assert backup_in_progress([old, unknown], set(), T0, 900) is None


# --- scheduled backups with a stand-in pitrkit ------------------------------------------------

SUMMARY = BackupSummary(
    backup_id="20261126T120000Z", label="pitrkit 20261126T120000Z", system_identifier=1, pg_version=180001,
    timeline=1, start_lsn=Lsn(0x2000028), start_time=T0, stop_lsn=Lsn(0x2000100), stop_time=T0,
    first_segment="000000010000000000000002", last_segment="000000010000000000000002", size=100,
    stored_size=50, file_count=3, compression="zstd", pitrkit_version="test")

# `python FAKE --config X backup-push --json`: notes its pid in `pid` and its arguments in
# `runs`, waits for the file `go` next to it, then prints a summary (or fails when `fail`
# exists; refuses an incremental's parent, as backup-push does, when `refuse` exists).
FAKE_PITRKIT = """
import os, pathlib, sys, time
here = pathlib.Path(__file__).parent
(here / "pid.new").write_text(str(os.getpid()))
(here / "pid.new").rename(here / "pid")
(here / "runs").open("a").write(" ".join(sys.argv[1:]) + "\\n")
while not (here / "go").exists():
    time.sleep(0.01)
if (here / "fail").exists():
    print("pitrkit: WARNING: retrying", file=sys.stderr)
    sys.exit("pitrkit: cannot connect to the server")
if "--incremental" in sys.argv and (here / "refuse").exists():
    print("pitrkit: --from X: cannot take an incremental backup on it: it is not on timeline 2's path",
          file=sys.stderr)
    sys.exit(3)
sys.stdout.write(SUMMARY)
"""


@pytest.fixture
def archive_config(tmp_path: Path) -> config.Config:
    root = tmp_path / "archive"
    root.mkdir()
    return config.parse({"repository": {"url": f"file://{root}", "retries": 0}}, "test")


def fake_pitrkit(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_pitrkit.py"
    script.write_text(FAKE_PITRKIT.replace("SUMMARY", repr(codec.encode(SUMMARY).decode())))
    return [sys.executable, str(script)]


def run_until(backups: Backups, now: datetime, done: Callable[[], bool]) -> None:
    """Tick the loop at the fake time `now` until `done`."""
    def ticked() -> bool:
        backups.tick(now)
        return done()
    wait_for(ticked, 30, interval=0.01, what="the child to finish")


def test_backups_one_at_a_time_on_a_fake_clock(tmp_path: Path, archive_config: config.Config) -> None:
    backups = Backups(archive_config, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(archive_config), None)
    slot = backups.timetable.due
    now = datetime.now(UTC)
    assert backups.timetable.is_due(now)  # an empty archive: at once
    backups.tick(now)
    assert backups.running
    # However late it gets while the backup runs, no second one starts.
    for minutes in range(1, 5):
        backups.tick(now + timedelta(minutes=minutes))
    (tmp_path / "go").touch()
    run_until(backups, now + timedelta(minutes=5), lambda: not backups.running)
    assert (tmp_path / "runs").read_text().splitlines() == ["backup-push --json"]
    assert backups.taken == 1 and backups.last_run is not None and backups.last_run.backup_id == SUMMARY.backup_id
    assert backups.timetable.due == slot + timedelta(minutes=1)  # from its slot: overrun, so due at once
    (tmp_path / "fail").touch()
    later = now + timedelta(minutes=6)
    backups.tick(later)
    run_until(backups, later, lambda: not backups.running)
    assert backups.failures == 1 and backups.last_run is not None and not backups.last_run.ok
    assert backups.last_run.message == "cannot connect to the server"
    assert backups.timetable.due == later + timedelta(minutes=1)


def test_a_slot_is_skipped_while_another_host_writes_a_backup(tmp_path: Path,
                                                             archive_config: config.Config) -> None:
    other = tmp_path / "archive" / "backups" / "20261126T115959Z" / "data"
    other.mkdir(parents=True)
    (other / "0").write_bytes(b"a part being written by another host's backup-push")
    backups = Backups(archive_config, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(archive_config), None)
    slot = backups.timetable.due
    now = datetime.now(UTC)
    backups.tick(now)
    assert not backups.running and not (tmp_path / "runs").exists()
    assert backups.timetable.due == slot + timedelta(minutes=1)  # the next slot
    # Once that folder has been quiet for longer than a backup can be, it is abandoned.
    later = now + timedelta(seconds=archive_config.backup.wal_timeout + 601)
    backups.tick(later)
    assert backups.running
    backups.stop()


def test_a_stop_terminates_the_running_backup(tmp_path: Path, archive_config: config.Config) -> None:
    backups = Backups(archive_config, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(archive_config), None)
    backups.tick(datetime.now(UTC))
    assert backups.running
    backups.stop()
    assert not backups.running and backups.failures == 0
    assert backups.last_run is not None and backups.last_run.message == "terminated by the daemon's stop"


def test_a_backup_that_ended_before_the_stop_is_not_reported_as_terminated(
        tmp_path: Path, archive_config: config.Config, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "go").touch()
    backups = Backups(archive_config, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(archive_config), None)
    backups.tick(datetime.now(UTC))
    assert backups.running
    # It has exited (left unreaped, for the stop to find) before the loop polled it.
    wait_for(lambda: (tmp_path / "pid").exists(), 30, interval=0.01, what="the stand-in to start")
    os.waitid(os.P_PID, int((tmp_path / "pid").read_text()), os.WEXITED | os.WNOWAIT)
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        backups.stop()
    assert backups.taken == 1 and backups.last_run is not None and backups.last_run.ok
    assert backups.last_run.backup_id == SUMMARY.backup_id
    assert [record.getMessage() for record in caplog.records] == ["backup-finished"]


def test_a_retention_that_ended_before_the_stop_is_not_reported_as_terminated(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "archive"
    root.mkdir()
    settings = config.parse({"repository": {"url": f"file://{root}", "retries": 0}, "retention": {"keep_last": 1}},
                            "test")
    (tmp_path / "go").touch()
    backups = Backups(settings, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(settings), None)
    now = datetime.now(UTC)
    backups.tick(now)
    run_until(backups, now, lambda: not backups.running)  # the tick that saw it end started retention
    # No more ticks: retention's end is left for the stop to find.
    wait_for(lambda: (tmp_path / "runs").read_text().count("\n") == 2, 30, interval=0.01, what="retention to start")
    os.waitid(os.P_PID, int((tmp_path / "pid").read_text()), os.WEXITED | os.WNOWAIT)
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        backups.stop()
    assert [record.getMessage() for record in caplog.records] == ["retention-finished"]
    assert backups.retention_runs == 1


# The retention stand-in of test_a_stop_interrupts_retention, which holds the real catalog
# lock while it runs, as `retention apply` does.
LOCKING_RETENTION = """
import pathlib, sys, time
here = pathlib.Path(__file__).parent
if "retention" not in sys.argv:
    sys.stdout.write(SUMMARY)
    sys.exit()
from pitrkit import config
from pitrkit.catalog import lock
from pitrkit.storage.archive import Archive
settings = config.parse({"repository": {"url": "URL", "retries": 0}}, "test")
with lock.take(Archive(settings), "retention apply"):
    (here / "locked").touch()
    time.sleep(60)
"""


def test_a_stop_interrupts_retention(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Retention is stopped as with Ctrl-C: it releases the catalog lock. Killed at once
    (SIGTERM's default), it would leave the lock standing for lock.HELD_FOR, and every
    retention of a daemon restarted meanwhile would be refused."""
    root = tmp_path / "archive"
    root.mkdir()
    settings = config.parse({"repository": {"url": f"file://{root}", "retries": 0}, "retention": {"keep_last": 1}},
                            "test")
    script = tmp_path / "locking_retention.py"
    script.write_text(LOCKING_RETENTION.replace("SUMMARY", repr(codec.encode(SUMMARY).decode()))
                      .replace("URL", f"file://{root}"))
    backups = Backups(settings, [sys.executable, str(script)], Every(60, "1m"), Archive(settings), None)
    now = datetime.now(UTC)
    backups.tick(now)
    run_until(backups, now, lambda: not backups.running)  # the tick that saw it end started retention
    wait_for((tmp_path / "locked").exists, 30, interval=0.01, what="retention to take the catalog lock")
    assert (root / CATALOG_LOCK_KEY).exists()
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        backups.stop()
    assert [record.getMessage() for record in caplog.records] == ["retention-terminated"]
    assert not (root / CATALOG_LOCK_KEY).exists()


def test_a_backup_that_cannot_be_started_is_a_failed_backup(tmp_path: Path, archive_config: config.Config) -> None:
    backups = Backups(archive_config, [str(tmp_path / "no-such-python")], Every(60, "1m"), Archive(archive_config),
                      None)
    now = datetime.now(UTC)
    backups.tick(now)
    assert not backups.running and backups.failures == 1
    assert backups.last_run is not None and backups.last_run.message.startswith("cannot run ")
    assert backups.timetable.due > now  # the next slot, not again at once


# --- full or incremental ([daemon] full_every) ---------------------------------------------

FULL = msgspec.structs.replace(SUMMARY, backup_id="20261126T110000Z", start_time=T0 - timedelta(hours=1))


def incremental_config(tmp_path: Path, **postgres: str) -> config.Config:
    """An archive of cluster 1 holding one full backup of PostgreSQL 18, and the daemon
    set to take three incrementals on each full."""
    root = tmp_path / "archive"
    root.mkdir()
    settings = config.parse({"repository": {"url": f"file://{root}", "retries": 0}, "postgres": postgres,
                             "daemon": {"every": "1m", "full_every": "3 incrementals"}}, "test")
    archive = Archive(settings)
    init_archive(archive, sysid=FULL.system_identifier, major=FULL.pg_major)
    archive.put_document(manifest_key(FULL.backup_id), FULL, pretty=False)
    return settings


def test_full_every_takes_an_incremental_on_the_newest_backup(tmp_path: Path) -> None:
    settings = incremental_config(tmp_path)
    backups = Backups(settings, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(settings), None)
    assert backups.next_kind.parent == FULL.backup_id  # what the status shows before it starts
    (tmp_path / "go").touch()
    now = datetime.now(UTC)
    backups.tick(now)
    run_until(backups, now, lambda: not backups.running)
    assert (tmp_path / "runs").read_text().splitlines() == [f"backup-push --json --incremental --from {FULL.backup_id}"]
    assert backups.taken == 1 and backups.failures == 0


def test_a_refused_parent_is_followed_by_a_full_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = incremental_config(tmp_path)
    backups = Backups(settings, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(settings), None)
    (tmp_path / "refuse").touch()
    (tmp_path / "go").touch()
    now = datetime.now(UTC)
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        backups.tick(now)
        run_until(backups, now, lambda: not backups.running)
    assert (tmp_path / "runs").read_text().splitlines() == [
        f"backup-push --json --incremental --from {FULL.backup_id}", "backup-push --json"]
    assert backups.taken == 1 and backups.failures == 0
    started = [record.fields for record in caplog.records  # type: ignore[attr-defined]
               if record.getMessage() in ("backup-started", "backup-incremental-refused")]
    assert [(fields.get("kind"), fields.get("parent")) for fields in started] == [
        ("incremental", FULL.backup_id), (None, FULL.backup_id), ("full", None)]
    assert started[1]["error"] == "--from X: cannot take an incremental backup on it: it is not on timeline 2's path"
    assert started[2]["reason"] == f"the incremental on {FULL.backup_id} was refused: {started[1]['error']}"


def test_a_data_directory_of_another_major_gets_a_full(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text(f"{FULL.pg_major + 1}\n")
    settings = incremental_config(tmp_path, pgdata=str(pgdata))
    backups = Backups(settings, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(settings), None)
    assert backups.next_kind.parent is None and "the first backup after an upgrade is full" in backups.next_kind.reason
    (pgdata / "PG_VERSION").write_text(f"{FULL.pg_major}\n")
    now = datetime.now(UTC)
    backups.tick(now)  # decided again as it starts
    assert backups.running and backups.next_kind.parent == FULL.backup_id
    backups.stop()


@pytest.mark.parametrize(("content", "major"), [("15\n", 15), ("9.6\n", None), ("", None), (None, None),
                                                ("\xff", None)])
def test_data_directory_major(tmp_path: Path, content: str | None, major: int | None) -> None:
    if content is not None:
        (tmp_path / "PG_VERSION").write_text(content, encoding="latin-1")
    assert data_directory_major(str(tmp_path)) == major
    assert data_directory_major(None) is None


# --- children -------------------------------------------------------------------------------


def test_outcome_error_is_the_pitrkit_line() -> None:
    assert Outcome(2, "", "pitrkit: WARNING: retry\npitrkit: no route\n", 1).error == "no route"
    assert Outcome(-15, "", "", 1).error == "killed by SIGTERM"
    assert Outcome(70, "", "Segmentation fault\n", 1).error == "exited with code 70"
    assert Outcome(-40, "", "", 1).error == "killed by signal 40"  # a real-time signal has no name


def test_child_terminated() -> None:
    child = Child([sys.executable, "-c", "import time; time.sleep(60)"])
    outcome, killed = child.terminate()
    assert outcome.code == -15 and not killed


def test_the_sidecar_is_restarted_when_it_exits() -> None:
    sidecar = Sidecar([sys.executable, "-c", "raise SystemExit(3)"])
    sidecar.supervise()
    assert sidecar.state == "running"
    def supervised() -> bool:
        sidecar.supervise()
        return sidecar.restarts == 1
    wait_for(supervised, 30, interval=0.01, what="the exit")
    assert sidecar.state == "restarting"  # for the backoff's first second
    sidecar.stop()


def test_the_sidecar_is_stopped_with_sigterm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # It says when its handler is in place: a SIGTERM before that would kill it (code -15).
    ready = tmp_path / "ready"
    sidecar = Sidecar([sys.executable, "-c", "import pathlib, signal, sys, time\n"
                       "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                       f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)"])
    sidecar.supervise()
    wait_for(ready.exists, 30, interval=0.01, what="the sidecar's SIGTERM handler")
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        sidecar.stop()
    stopped = [record for record in caplog.records if record.getMessage() == "sidecar-stopped"]
    assert [record.fields["code"] for record in stopped] == [0]  # type: ignore[attr-defined]
    assert sidecar.restarts == 0


# --- the status server ----------------------------------------------------------------------


@pytest.mark.parametrize(("listen", "address"), [("127.0.0.1:9187", ("127.0.0.1", 9187)),
                                                 ("[::1]:80", ("::1", 80)), ("localhost:0", ("localhost", 0))])
def test_parse_listen(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address


@pytest.mark.parametrize("listen", ["9187", "127.0.0.1", ":9187", "host:http", "127.0.0.1:70000"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ConfigError, match="must be host:port"):
        parse_listen(listen)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_status_server_on_an_empty_archive(archive_config: config.Config) -> None:
    board = StatusBoard(archive_config, 0.2)

    def daemon_facts() -> DaemonFacts:  # the daemon's facts, as the daemon fills them
        return DaemonFacts(started_at=T0, schedule="every 1m", next_backup_at=T0, next_backup_kind="full",
                           backup_running=False,
                           last_run=None, backups_taken=0, backup_failures=0, sidecar=None, sidecar_restarts=0,
                           retention_runs=0, retention_failures=0)

    server = StatusServer("127.0.0.1:0", board, daemon_facts, 1)
    port = int(server.address.rpartition(":")[2])
    server.start()
    try:
        code, body = get(port, "/metrics")
        assert code == 503 and "not collected yet" in body  # nothing true to show yet
        board.start()
        wait_for(lambda: get(port, "/metrics")[0] == 200, 30, what="the first collection")
        names = {family.name for family in text_string_to_metric_families(get(port, "/metrics")[1])}
        assert {"pitrkit_status", "pitrkit_backups", "pitrkit_daemon_backups"} <= names
        code, page = get(port, "/")
        assert code == 200 and "<html" in page.lower()
        document = json.loads(get(port, "/status.json")[1])
        assert document["status"]["backups"] == 0 and document["daemon"]["schedule"] == "every 1m"
        assert get(port, "/nothing")[0] == 404
        head = ask(port, "HEAD", "/metrics")
        assert head.status == 200 and int(head.getheader("Content-Length")) > 0 and head.read() == b""
        refused = ask(port, "POST", "/")
        assert refused.status == 405 and refused.getheader("Allow") == "GET, HEAD"
    finally:
        server.stop()
        board.stop()


def ask(port: int, method: str, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path)
    return connection.getresponse()


def test_a_failing_page_is_a_500_without_a_traceback(archive_config: config.Config,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    board = StatusBoard(archive_config, 60)

    def broken_facts() -> DaemonFacts:
        raise RuntimeError("a bug")

    server = StatusServer("127.0.0.1:0", board, broken_facts, 1)
    port = int(server.address.rpartition(":")[2])
    server.start()
    board.start()
    try:
        wait_for(lambda: board.report()[0] is not None, 30, interval=0.05, what="the first collection")
        answer = ask(port, "GET", "/")
        assert answer.status == 500 and answer.read() == b"pitrkit: internal error: RuntimeError: a bug\n"
    finally:
        server.stop()
        board.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_sends_nothing_is_dropped(archive_config: config.Config) -> None:
    server = StatusServer("127.0.0.1:0", StatusBoard(archive_config, 60), lambda: None, 1,  # type: ignore
                          request_timeout=0.5)
    port = int(server.address.rpartition(":")[2])
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(30)
            assert idle.recv(1) == b""  # closed by the server, not held open
    finally:
        server.stop()


def test_a_port_in_use_is_one_line(archive_config: config.Config) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PitrkitError, match=f"cannot serve status on 127.0.0.1:{port}: Address already in use"):
            StatusServer(f"127.0.0.1:{port}", StatusBoard(archive_config, 1), lambda: None, 1)  # type: ignore


def test_a_daemon_with_nothing_to_run_is_refused(tmp_path: Path) -> None:
    settings = config.parse({"repository": {"url": f"file://{tmp_path}"}, "daemon": {"listen": ""}}, "test")
    with pytest.raises(ConfigError, match="has nothing to run"):
        command(None, settings, tmp_path / "pitrkit.toml")  # type: ignore[arg-type]


def test_the_command_line_reports_a_bad_cron_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{tmp_path}"\n[daemon]\ncron = "61 * * * *"\n')
    result = subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(path), "daemon"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"pitrkit: {path}: daemon.cron: cron minute 61 is outside 0-59\n"


# SIGTERM sent while `pitrkit daemon` is still setting up (building its schedule).
SIGTERM_WHILE_STARTING = """
import os, signal, sys
from pitrkit import cli
from pitrkit.daemon import service as daemon
real_from_config = daemon.from_config
def from_config(settings):
    os.kill(os.getpid(), signal.SIGTERM)
    return real_from_config(settings)
daemon.from_config = from_config
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_sigterm_while_starting_is_a_clean_stop(tmp_path: Path) -> None:
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{tmp_path}"\n[daemon]\nevery = "1h"\nlisten = ""\n')
    init_archive(Archive(config.load(path)))
    result = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_STARTING, "--config", str(path), "daemon"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "event=daemon-stopped signal=SIGTERM" in result.stderr
    assert "event=backup-started" not in result.stderr  # the stop came first


@pytest.mark.parametrize("text", ["ok\rlevel=error", "\x1b[2Jcleared", "one\u2028two", "one\x85two", "nul\x00"])
def test_a_field_cannot_break_or_forge_a_line(text: str) -> None:
    record = logging.LogRecord("pitrkit.daemon.service", logging.WARNING, __file__, 1, "backup-push", None, None)
    record.fields = {"message": text}
    line = LogfmtFormatter().format(record)
    assert line.isprintable()  # no control or line-separator character reaches the stream
    assert json.loads(line.partition(" message=")[2]) == text


def test_the_documented_events_are_the_emitted_ones() -> None:
    root = Path(__file__).resolve().parents[2]
    emitted = set()
    for module in ("daemon/service.py", "daemon/status_server.py"):
        source = (root / "pitrkit" / module).read_text()
        emitted |= set(re.findall(r'events\.emit\(log, [^,]+, "([a-z_-]+)"', source))
        emitted |= set(re.findall(r'_relay\("([a-z-]+)"', source))
    operations = (root / "docs" / "operations.md").read_text()
    section = operations.partition("\n## The daemon\n")[2].partition("\n## ")[0]
    table = section.partition("| event | when |")[2].partition("\n\n")[0]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("|")]
    documented = {name for cell in first_cells for name in re.findall(r"`([a-z_-]+)`", cell)}
    assert emitted and documented == emitted


# --- restore drills beside the backups ---------------------------------------------------


def test_drills_and_backups_run_one_at_a_time(tmp_path: Path, archive_config: config.Config) -> None:
    pitrkit = fake_pitrkit(tmp_path)
    backups = Backups(archive_config, pitrkit, Every(60, "1m"), Archive(archive_config), None)
    drills = Drills(pitrkit, Every(60, "1m"), Archive(archive_config), None)
    now = datetime.now(UTC)

    def tick(at: datetime) -> None:
        backups.tick(at, drill_running=drills.running)
        drills.tick(at, backup_busy=backups.busy)

    # Both due at once (an empty archive, no drill yet): the backup first, the drill waits.
    tick(now)
    assert backups.running and not drills.running
    (tmp_path / "go").touch()
    wait_for(lambda: tick(now) or drills.running, 30, interval=0.01, what="the drill after the backup")
    assert backups.taken == 1
    wait_for(lambda: tick(now) or not drills.running, 30, interval=0.01, what="the first drill to end")
    # The next drill runs (held by the fake until `go`): a backup due now waits for it.
    (tmp_path / "go").unlink()
    drills.tick(now + timedelta(minutes=2), backup_busy=False)
    assert drills.running
    for minutes in range(2, 5):
        tick(now + timedelta(minutes=minutes))
    assert drills.running and not backups.running
    (tmp_path / "go").touch()
    wait_for(lambda: tick(now + timedelta(minutes=5)) or backups.running, 30, interval=0.01,
             what="the backup after the drill")
    assert not drills.running and drills.runs == 2 and drills.failures == 0
    assert (tmp_path / "runs").read_text().splitlines()[:3] == ["backup-push --json", "drill", "drill"]
    backups.stop()
    drills.stop()


def test_a_backup_is_synced_into_each_optional_repository_then_retention_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """backup-push succeeds once every required repository holds the backup; an optional
    one that could not take it gets it from `repo sync` after the backup, one repository
    at a time, before retention; a failed sync is a warning and retention still runs."""
    for name in ("local", "dr", "cold"):
        (tmp_path / name).mkdir()
    settings = config.parse({"repository": [
        {"url": f"file://{tmp_path / 'local'}", "name": "local", "retries": 0},
        {"url": f"file://{tmp_path / 'dr'}", "name": "dr", "required": False, "spool": str(tmp_path / "spool")},
        {"url": f"file://{tmp_path / 'cold'}", "name": "cold", "required": False, "spool": str(tmp_path / "spool")}],
        "retention": {"keep_last": 1}}, "test")
    backups = Backups(settings, fake_pitrkit(tmp_path), Every(60, "1m"), Archive(settings), None)
    now = datetime.now(UTC)
    backups.tick(now)
    (tmp_path / "go").touch()
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        run_until(backups, now, lambda: not backups.busy)
    assert (tmp_path / "runs").read_text().splitlines() == [
        "backup-push --json", "repo sync --to dr", "repo sync --to cold", "retention apply --json"]
    assert [record.getMessage() for record in caplog.records if "sync" in record.getMessage()] == [
        "sync-started", "sync-finished", "sync-started", "sync-finished"]
    # A sync that fails (the repository still down) is a warning; retention follows all the same.
    (tmp_path / "runs").unlink()
    caplog.clear()
    later = now + timedelta(minutes=1)
    backups.tick(later)
    wait_for(lambda: (tmp_path / "runs").exists(), 30, interval=0.01, what="the backup to start")
    run_until(backups, later, lambda: not backups.running)
    (tmp_path / "fail").touch()
    with caplog.at_level(logging.INFO, "pitrkit.daemon.service"):
        run_until(backups, later, lambda: not backups.busy)
    assert (tmp_path / "runs").read_text().splitlines() == [
        "backup-push --json", "repo sync --to dr", "repo sync --to cold", "retention apply --json"]
    failed = [record for record in caplog.records if record.getMessage() == "sync-failed"]
    assert [record.levelno for record in failed] == [logging.WARNING, logging.WARNING]
    assert backups.retention_runs == 2 and backups.retention_failures == 1

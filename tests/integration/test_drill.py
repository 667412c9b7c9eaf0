"""`pitrkit drill` against real PostgreSQL 15 and 18, run as the server user through the
installed `pitrkit`: a drill on a good archive passes, with its RTO and the WAL it
replayed in the report it stores; a drill on an archive with a corrupted backup part or
a deleted WAL segment fails with the reason, and status turns FAIL; no drill leaves a
postmaster or its scratch directory behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import pgharness
from pitr_workload import archive_everything, primary_with_a_backup, refusal, succeeded, write_round
from pitrkit_setup import PitrkitService, running_processes

pytestmark = pytest.mark.integration


@dataclass
class Daemon(PitrkitService):
    """`pitrkit daemon`, as systemd runs it."""

    command = "daemon"
    event_timeout = 300  # a drill or a backup runs between events
    stop_timeout = 180


@dataclass
class RunningDrill(PitrkitService):
    """`pitrkit drill` left running, to be stopped as a service manager stops it."""

    command = "drill"


def configure_drills(setup, scratch: Path, checks: str) -> None:
    """[drill] appended to the test's configuration (replacing an earlier one): the
    scratch directory, no free space asked beyond the backup, and the checks."""
    text = setup.config.read_text().partition("[drill]")[0] + (
        f'[drill]\nscratch = "{scratch}"\nmin_free = 0\nmax_age = "1d"\nchecks = [{checks}]\n')
    setup.config.write_text(text)


def reports(setup) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((setup.archive / "drills").glob("*.json"))]


def status(setup) -> tuple[int, dict]:
    result = setup.run("status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def drill_check(report: dict) -> dict:
    return next(found for found in report["checks"] if found["name"] == "drill")


def postmasters_in(scratch: Path) -> list[int]:
    return [pid for pid, argv in running_processes() if any(os.fsencode(str(scratch)) in part for part in argv)]


def postmaster_pid(scratch: Path) -> int | None:
    """The pid the drill's postmaster wrote in its postmaster.pid, once written. Read from
    the file, not matched in /proc: a child the postmaster has just forked still shows
    the postmaster's argv until it sets its own title."""
    for pid_file in scratch.glob("*/data/postmaster.pid"):
        try:
            first = pid_file.read_text().partition("\n")[0]
        except FileNotFoundError:
            continue
        if first.isdigit():
            return int(first)
    return None


def test_a_drill_passes_on_a_good_archive_and_fails_on_a_corrupt_part_or_a_missing_segment(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    write_round(primary, 3)
    archive_everything(primary)
    accounts = primary.sql("SELECT count(*) FROM accounts")[0][0]
    scratch = pgharness.make_server_dir(setup.archive.parent / "scratch", mode=0o700)
    configure_drills(setup, scratch, f'{{sql = "SELECT count(*) FROM accounts", expect = "{accounts}"}}, '
                                     '{sql = "SELECT count(*) > 0 FROM accounts", expect = "t"}')

    out = succeeded(setup.run("drill", timeout=600))
    assert "PASSED" in out
    (good,) = reports(setup)
    assert good["result"] == "passed" and good["reason"] is None
    assert good["backup_id"] == backup["backup_id"] and good["target_kind"] == "latest"
    assert good["rto_seconds"] > 0 and good["rto_seconds"] >= good["replay_seconds"]
    assert good["wal_replayed_bytes"] > 0 and good["wal_segments"] >= 2
    databases = set(good["databases"])
    assert {"postgres", "template1"} <= databases
    kinds = [(check["kind"], check["database"]) for check in good["checks"]]
    assert {("connect", name) for name in databases} | {("amcheck", name) for name in databases} <= set(kinds)
    assert [(check["detail"], check["passed"]) for check in good["checks"] if check["kind"] == "sql"] == \
        [(str(accounts), True), ("t", True)]
    # Nothing left behind: no server, no scratch cluster.
    assert list(scratch.iterdir()) == []
    assert postmasters_in(scratch) == []
    code, report = status(setup)
    assert code == 0 and drill_check(report)["level"] == "OK", report["checks"]
    assert report["drills"]["last_success"]["drill_id"] == good["drill_id"]
    assert report["drills"]["last_success"]["rto_seconds"] == good["rto_seconds"]

    # A random point of the restorable range: restored to that LSN, said in the report.
    succeeded(setup.run("drill", "--random", timeout=600))
    random_report = reports(setup)[-1]
    assert random_report["result"] == "passed" and random_report["target_kind"] == "random"
    assert random_report["target_lsn"] is not None

    # A backup part corrupted in the archive: the drill fails, saying which part.
    manifest = json.loads((setup.archive / "backups" / backup["backup_id"] / "manifest.json").read_text())
    part_key = manifest["parts"][0]["key"]
    part = setup.archive / part_key
    original = part.read_bytes()
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF
    part.write_bytes(bytes(corrupted))
    line = refusal(setup.run("drill", timeout=600))
    assert "failed: the backup did not restore" in line and part_key in line, line
    failed = reports(setup)[-1]
    assert failed["result"] == "failed" and part_key in failed["reason"]
    assert list(scratch.iterdir()) == [] and postmasters_in(scratch) == []
    code, report = status(setup)
    assert code == 2 and report["overall"] == "FAIL"
    assert drill_check(report)["level"] == "FAIL" and failed["drill_id"] in drill_check(report)["message"]
    assert report["drills"]["last_success"]["drill_id"] == random_report["drill_id"]
    part.write_bytes(original)

    # A WAL segment the restore needs deleted: the drill fails, naming it.
    needed = setup.stored(backup["last_segment"])
    moved = needed.with_name("kept-aside")
    shutil.move(needed, moved)
    line = refusal(setup.run("drill", timeout=600))
    assert needed.name in line, line
    assert reports(setup)[-1]["result"] == "failed" and needed.name in reports(setup)[-1]["reason"]
    shutil.move(moved, needed)

    # A [drill] checks query that does not give its answer fails the drill, saying which.
    configure_drills(setup, scratch, '{sql = "SELECT count(*) FROM accounts WHERE balance < 0", expect = "1"}')
    line = refusal(setup.run("drill", timeout=600))
    assert "checks failed" in line and "balance < 0" in line, line
    checked = reports(setup)[-1]
    assert [check for check in checked["checks"] if check["kind"] == "sql"] == [
        {"kind": "sql", "database": "postgres", "passed": False, "detail": "0",
         "sql": "SELECT count(*) FROM accounts WHERE balance < 0", "expect": "1"}]
    assert all(check["passed"] for check in checked["checks"] if check["kind"] != "sql")
    assert checked["rto_seconds"] > 0  # restored and promoted: the checks failed after
    assert list(scratch.iterdir()) == [] and postmasters_in(scratch) == []

    # Stopped (SIGTERM) while its server runs: the server stopped, the scratch removed, no
    # report stored (an interrupted drill proves nothing), exit 130 as for Ctrl-C.
    stored = len(reports(setup))
    # A check that keeps the drill busy: a backup this small restores, replays and fails
    # a quick check in less time than it took this test to see the server and read its
    # priorities, and the drill then ended on its own before being stopped.
    configure_drills(setup, scratch, '{sql = "SELECT count(*) FROM pg_sleep(300)", expect = "1"}')
    running = RunningDrill(setup, setup.config.parent / "drill.log")
    try:
        postmaster = pgharness.wait_for(lambda: postmaster_pid(scratch), 300, interval=0.05,
                                        what=f"the drill's server to start\n{running.log()}")
        # The server runs at the drill's priority ([drill] nice 10, ionice best-effort 7),
        # below the database it shares the host with.
        assert os.getpriority(os.PRIO_PROCESS, postmaster) == 10
        assert subprocess.run(["ionice", "-p", str(postmaster)], capture_output=True, text=True,
                              check=True).stdout.strip() == "best-effort: prio 7"
    finally:
        code = running.stop()
    assert code == 130, running.log()
    assert "Traceback" not in running.log(), running.log()
    assert list(scratch.iterdir()) == [] and postmasters_in(scratch) == []
    assert len(reports(setup)) == stored


def spans(daemon, begin: str, ends: tuple[str, ...]) -> list[tuple[str, str]]:
    """(start, end) times of the daemon's runs of one kind, from its log, in order; the
    times are ISO text of one zone and one precision, so they compare as text."""
    starts = [event["time"] for event in daemon.events(begin)]
    finished = sorted(event["time"] for name in ends for event in daemon.events(name))
    return list(zip(starts, finished, strict=False))


def test_the_daemon_runs_drills_on_schedule_never_beside_a_backup(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, _ = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    scratch = pgharness.make_server_dir(setup.archive.parent / "scratch", mode=0o700)
    # Backups and drills both due every few seconds: they keep colliding.
    setup.config.write_text(setup.config.read_text() + '[daemon]\nlisten = ""\nevery = "3s"\n')
    configure_drills(setup, scratch, '{sql = "SELECT count(*) > 0 FROM accounts", expect = "t"}')
    setup.config.write_text(setup.config.read_text() + 'every = "2s"\n')
    daemon = Daemon(setup, setup.config.parent / "daemon.log")
    try:
        finished = daemon.wait_for_event("drill-finished", 2)
        daemon.wait_for_event("backup-finished", 2)
    finally:
        assert daemon.stop() == 0
    log = daemon.assert_no_traceback()
    assert "drill-failed" not in log, log
    stored = {report["drill_id"]: report for report in reports(setup)}
    assert all(stored[event["drill_id"]]["result"] == "passed" for event in finished)
    backups = spans(daemon, "backup-started", ("backup-finished", "backup-failed"))
    drills = spans(daemon, "drill-started", ("drill-finished", "drill-failed", "drill-terminated"))
    assert len(backups) >= 2 and len(drills) >= 2
    # One at a time: no drill starts while a backup runs, nor a backup while a drill does
    # (one may start in the tick that noticed the other end: the same millisecond).
    for drill_start, drill_end in drills:
        for backup_start, backup_end in backups:
            assert drill_end <= backup_start or backup_end <= drill_start, (drills, backups)
    assert list(scratch.iterdir()) == [], list(scratch.rglob("*"))[:20]
    assert postmasters_in(scratch) == []

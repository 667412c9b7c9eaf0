"""`pitrkit daemon` end to end, on PostgreSQL 15 and 18 (issue 6).

The daemon runs as the server user through the installed `pitrkit`, stopped with SIGTERM,
as conf/pitrkit.service runs it. It is judged by what it leaves: backups that backup-list
shows, what retention removed, what it serves on /metrics (parsed as Prometheus text, and
linted by promtool) and / (loaded in headless Chromium, its pictures read from the DOM),
and that a stop ends every child and exits 0. Every wait
is for a condition, with a deadline; nothing is timed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    digests,
    note_point,
    recovered,
    restore_plan,
    succeeded,
    write_round,
)
from pitrkit_setup import PitrkitService, PitrkitSetup, running_processes

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
PROMTOOL = Path("/usr/bin/promtool")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
# The commands the daemon runs as children, as they appear in a process's argv.
CHILD_COMMANDS = (b"daemon", b"backup-push", b"retention", b"wal-receive")


def configure(setup: PitrkitSetup, primary: pgharness.Cluster, port: int, *, every: str | None = "3s",
              spool: Path | None = None, keep_last: int | None = None, full_every: str | None = None) -> None:
    setup.write_config(postgres=primary)
    text = f'[daemon]\nlisten = "127.0.0.1:{port}"\nstatus_interval = 1\n'
    if every is not None:
        text += f'every = "{every}"\n'
    if full_every is not None:
        text += f'full_every = "{full_every}"\n'
    if spool is not None:
        text += f'[receive]\nspool = "{spool}"\npartial_interval = 1\n'
    if keep_last is not None:
        text += f"[retention]\nkeep_last = {keep_last}\n"
    with open(setup.config, "a") as file:
        file.write(text)


@dataclass
class RunningDaemon(PitrkitService):
    """`pitrkit daemon`, serving its pages on `port`."""

    command = "daemon"
    # A scheduled backup runs between events; the stop waits for its children.
    event_timeout = 300
    stop_timeout = 180
    port: int

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self) -> dict:
        code, body = self.get("/status.json")
        return json.loads(body) if code == 200 else {}

    def wait_for_event(self, name: str, count: int = 1, timeout: float | None = None) -> list[dict[str, str]]:
        """As PitrkitService's; one that gives up says what the daemon logged meanwhile."""
        try:
            return super().wait_for_event(name, count, timeout)
        except pgharness.TimedOut as exc:
            raise pgharness.TimedOut(f"{exc}\n{self.log()}") from None

    def assert_clean(self) -> None:
        log = self.assert_no_traceback()
        assert "internal error" not in log, log


def start_daemon(setup: PitrkitSetup, port: int, name: str) -> RunningDaemon:
    return RunningDaemon(setup, setup.config.parent / f"{name}.log", port)


def backup_listing(setup: PitrkitSetup) -> dict:
    listing: dict = json.loads(succeeded(setup.run("backup-list", "--json")))
    return listing


def pitrkit_processes(setup: PitrkitSetup) -> list[str]:
    """Running pitrkit commands of this configuration that the daemon starts (not agents,
    which archive_command starts), and pg_receivewal on this test's spool."""
    config = os.fsencode(str(setup.config))
    found = []
    for _, argv in running_processes():
        mine = config in argv and any(command in argv for command in CHILD_COMMANDS)
        receiver = argv[0].endswith(b"pg_receivewal") and any(os.fsencode(str(setup.config.parent)) in arg
                                                             for arg in argv)
        if mine or receiver:
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def test_daemon_takes_scheduled_backups_applies_retention_and_stops_cleanly(
        cluster, pitrkit_setup: PitrkitSetup, server_tmp: Path) -> None:
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup)
    spool = pgharness.make_server_dir(server_tmp / "spool", mode=0o700)
    port = pgharness.free_port()
    configure(setup, primary, port, spool=spool)

    # 1. With the sidecar: two scheduled backups, then a stop.
    daemon = start_daemon(setup, port, "daemon")
    try:
        daemon.wait_for_event("sidecar-started")
        pgharness.wait_for(lambda: slot_active(primary), 60, interval=0.1,
                           what=f"the daemon's sidecar to stream\n{daemon.log()}")
        write_round(primary, 1)
        ids = [event["backup_id"] for event in daemon.wait_for_event("backup-finished", 2)]
        assert [backup["backup_id"] for backup in backup_listing(setup)["backups"]][:2] == ids[:2]

        # /metrics carries the figures of the newest backup there is when it is scraped
        # (the schedule goes on meanwhile), once the status has been refreshed after the
        # second backup.
        def scraped() -> tuple[dict[str, float], dict] | None:
            code, text = daemon.get("/metrics")
            if code != 200:
                return None
            samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
                       for sample in family.samples if not sample.labels}
            listed = backup_listing(setup)["backups"]
            shown = [backup for backup in listed[1:]
                     if stop_timestamp(backup) == samples.get("pitrkit_last_backup_timestamp_seconds")]
            return (samples, shown[0]) if shown else None
        metrics, shown = pgharness.wait_for(scraped, 60, interval=0.2, what="/metrics to show a new backup")
        assert metrics["pitrkit_last_backup_size_bytes"] == shown["size"]
        assert metrics["pitrkit_last_backup_stored_bytes"] == shown["stored_size"]
        assert metrics["pitrkit_backups"] >= 2
        assert metrics["pitrkit_daemon_backups_total"] >= 2
        assert metrics["pitrkit_daemon_sidecar_running"] == 1
    finally:
        code = daemon.stop()
    daemon.assert_clean()
    assert code == 0, daemon.log()
    assert daemon.events("daemon-stopped")
    stopped = daemon.events("sidecar-stopped")
    assert stopped and stopped[0]["code"] == "0", daemon.log()  # wal-receive stopped cleanly
    assert pitrkit_processes(setup) == []
    assert not slot_active(primary)

    # 2. Restarted, without the sidecar and with retention: the slot missed while it was
    # down runs once at start, and retention after each backup keeps only the newest.
    configure(setup, primary, port, keep_last=1)
    listed = backup_listing(setup)["backups"]
    before = {backup["backup_id"] for backup in listed}
    # Down for longer than the interval: a slot was missed.
    newest_start = datetime.fromisoformat(listed[-1]["start_time"])
    pgharness.wait_for(lambda: datetime.now(UTC) > newest_start + timedelta(seconds=4), 10, interval=0.1,
                       what="the interval to pass")
    daemon = start_daemon(setup, port, "daemon-again")
    try:
        missed = daemon.wait_for_event("backup-missed")
        first = daemon.wait_for_event("backup-finished")[0]["backup_id"]
        assert first not in before
        assert daemon.events("backup-started")[0]["slot"] == missed[0]["slot"]
        daemon.wait_for_event("retention-finished")
    finally:
        code = daemon.stop()
    daemon.assert_clean()
    assert code == 0, daemon.log()
    assert len(daemon.events("backup-missed")) == 1
    assert pitrkit_processes(setup) == []
    finished = [event["backup_id"] for event in daemon.events("backup-finished")]
    listed = [backup["backup_id"] for backup in backup_listing(setup)["backups"]]
    assert before and not before & set(listed), daemon.log()
    if not daemon.events("retention-terminated"):
        # Retention ran after each backup (the stop may have cut the next backup short).
        assert len(daemon.events("retention-finished")) == len(finished), daemon.log()
        assert listed == finished[-1:]
    else:
        assert set(listed) <= set(finished)

    # 3. A stop while a backup runs: one that cannot finish, as the WAL it needs is never
    # archived. The newest backup is older than the interval, so it starts at once; the
    # stop comes once it has stored its parts and waits for that WAL.
    primary.sql("ALTER SYSTEM SET archive_command = 'false'")
    primary.sql("SELECT pg_reload_conf()")
    segment_not_archived(primary)
    daemon = start_daemon(setup, port, "daemon-stopped-mid-backup")
    try:
        daemon.wait_for_event("backup-started")
        pgharness.wait_for(lambda: stored_parts(setup), 300, interval=0.1,
                           what=f"the backup to store its parts\n{daemon.log()}")
    finally:
        code = daemon.stop()
    daemon.assert_clean()
    assert code == 0, daemon.log()
    terminated = daemon.events("backup-terminated")
    assert len(terminated) == 1 and terminated[0]["backup"] == "unfinished", daemon.log()
    assert not daemon.events("backup-finished") and not daemon.events("backup-failed")
    assert pitrkit_processes(setup) == []
    # The terminated backup-push removed what it had stored: nothing in the archive looks
    # like another host's backup at work, which a restarted daemon would wait for.
    assert backup_listing(setup)["unfinished"] == [] and stored_parts(setup) == [], daemon.log()

    # 4. Restarted at once, with archiving back: the missed slot's backup starts and finishes.
    primary.sql("ALTER SYSTEM RESET archive_command")
    primary.sql("SELECT pg_reload_conf()")
    daemon = start_daemon(setup, port, "daemon-after-the-stop")
    try:
        daemon.wait_for_event("backup-missed")
        pgharness.wait_for(lambda: daemon.events("backup-started") or daemon.events("backup-skipped"), 60,
                           interval=0.1, what=f"the missed slot's backup\n{daemon.log()}")
        assert not daemon.events("backup-skipped"), daemon.log()
        daemon.wait_for_event("backup-finished")
    finally:
        code = daemon.stop()
    daemon.assert_clean()
    assert code == 0, daemon.log()
    assert pitrkit_processes(setup) == []


def segment_not_archived(primary: pgharness.Cluster) -> str:
    """A segment written and switched away from that the archiver (its archive_command
    failing now) could not archive, and will not: no backup taken from now on has all of
    its WAL, not even by pushing the last segment itself beside the archiver, which
    backup-push does only once the segment before its first is stored. A switch may still
    be archived by the command it had before its reload; another follows then."""
    def failed() -> str | None:
        segment = primary.switch_wal()

        def verdict() -> str | None:
            archived, failed = primary.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
            return "failed" if failed == segment else "archived" if archived == segment else None
        return segment if pgharness.wait_for(verdict, 60, interval=0.1, what=f"the archiver to try {segment}") \
            == "failed" else None
    found: str = pgharness.wait_for(failed, 180, interval=0, what="a segment the archiver fails on")
    return found


def stored_parts(setup: PitrkitSetup) -> list[Path]:
    """The data parts in the archive's unfinished backup folders (those without a manifest)."""
    folders = [folder for folder in (setup.archive / "backups").iterdir() if not (folder / "manifest.json").exists()]
    return [part for folder in folders if (folder / "data").is_dir() for part in (folder / "data").iterdir()]


def slot_active(primary: pgharness.Cluster) -> bool:
    rows = primary.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pitrkit'")
    return bool(rows and rows[0][0])


def stop_timestamp(backup: dict) -> float:
    return datetime.fromisoformat(backup["stop_time"]).timestamp()


def test_status_page_in_chromium(cluster, pitrkit_setup: PitrkitSetup, server_tmp: Path, pg_major: int) -> None:
    """The daemon with only its status page, over an archive with a full backup, a gap in
    the WAL after it, an incremental backup after the gap and a restore drill of it (a
    real `pitrkit drill`): the page loads in headless Chromium, its timeline picture names
    both backups (by kind) and the gap, its drills picture the drill with its backup and
    RTO, the last WAL archived is shown, and a screenshot of it is taken
    (docs/status-page.png is one, refreshed with PITRKIT_UPDATE_SCREENSHOT=1). Its
    /metrics passes `promtool check metrics`."""
    chromium = required_tool(CHROMIUM, "chromium")
    promtool = required_tool(PROMTOOL, "prometheus")
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, **({"summarize_wal": "on"} if pg_major >= 17 else {}))
    full = backup_push(setup)
    write_round(primary, 2)
    lost = archive_everything(primary)
    write_round(primary, 3)
    resumes = archive_everything(primary)
    incremental: dict = json.loads(succeeded(setup.run("backup-push", "--incremental", "--json", timeout=600)))
    assert incremental["parent"] == full["backup_id"] and full["last_segment"] < lost < incremental["first_segment"]
    setup.stored(lost).unlink()  # a hole between the backups: the latest point still restores
    port = pgharness.free_port()
    configure(setup, primary, port, every=None)
    scratch = pgharness.make_server_dir(server_tmp / "drill-scratch", mode=0o700)
    with open(setup.config, "a") as file:
        file.write(f'[drill]\nscratch = "{scratch}"\nmin_free = 0\n')
    assert "PASSED" in succeeded(setup.run("drill", timeout=600))
    daemon = start_daemon(setup, port, "daemon")
    try:
        daemon.wait_for_event("server-listening")

        def shown() -> dict:
            report = daemon.status().get("status") or {}
            last_backup, last_wal = report.get("last_backup"), report.get("last_wal")
            return report if last_backup and last_backup["backup_id"] == incremental["backup_id"] and last_wal \
                and report.get("drills") else {}
        report = pgharness.wait_for(shown, 60, interval=0.2, what="/status.json to show the backups")
        [timeline] = report["timelines"]
        assert [(gap["missing_segment"], gap["resumes_at"]) for gap in timeline["gaps"]] == [(lost, resumes)]
        profile = server_tmp / "chromium-profile"
        browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}"]
        dumped = subprocess.run([*browser, "--dump-dom", f"http://127.0.0.1:{port}/"],
                                capture_output=True, text=True, timeout=120, check=False)
        assert dumped.returncode == 0, dumped.stderr
        dom = dumped.stdout
        assert report["last_wal"]["name"] in dom and "<table" in dom, dom
        [picture] = re.findall(r'<svg id="timelines-chart".*?</svg>', dom, re.DOTALL)
        for backup, kind in ((full, "full"), (incremental, "incremental")):
            assert f'data-backup="{backup["backup_id"]}" data-type="{kind}"' in picture, picture
            assert f"<title>backup {backup['backup_id']} ({kind}): " in picture, picture
        assert f'<g class="gap" data-segment="{lost}"><title>gap: segment {lost} is missing' in picture, picture
        assert f"WAL resumes at {resumes}" in picture and f">gap {lost}</text>" in picture, picture
        for other in ("wal-chart", "sizes-chart"):
            assert f'<svg id="{other}"' in dom
        drill = report["drills"]["last"]
        assert (drill["result"], drill["backup_id"]) == ("passed", incremental["backup_id"]) and drill["rto_seconds"]
        [drills] = re.findall(r'<svg id="drills-chart".*?</svg>', dom, re.DOTALL)
        assert f'<g class="drill" data-drill="{drill["drill_id"]}" data-result="passed"><title>drill ' \
               f'{drill["drill_id"]} passed ' in drills, drills
        assert f': backup {incremental["backup_id"]}, RTO ' in drills and ">passed " in drills, drills
        screenshot = server_tmp / "status-page.png"
        shot = subprocess.run([*browser, "--window-size=1000,1500", f"--screenshot={screenshot}",
                               f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=120,
                              check=False)
        assert shot.returncode == 0, shot.stderr
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("PITRKIT_UPDATE_SCREENSHOT"):
            shutil.copyfile(screenshot, DOCS_SCREENSHOT)

        code, metrics = daemon.get("/metrics")
        assert code == 200
        checked = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True,
                                 timeout=60, check=False)
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), metrics
    finally:
        code = daemon.stop()
        shutil.rmtree(server_tmp / "chromium-profile", ignore_errors=True)
    daemon.assert_clean()
    assert code == 0, daemon.log()
    assert not daemon.events("backup-started")  # no schedule: no backups


def required_tool(path: Path, package: str) -> Path:
    """A Debian tool a test needs: missing, a failure in CI (.ci/run installs it), else a skip."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing (.ci/run installs Debian's {package})")
        pytest.skip(f"{path} is not installed (Debian's {package})")
    return path


@contextmanager
def paused_after_backup(daemon: RunningDaemon, count: int) -> Iterator[dict[str, str]]:
    """The daemon frozen (SIGSTOP) from the end of the child of its `count`-th
    backup-started event until the block ends (SIGCONT): whatever the test does meanwhile
    (writes, a change to the archive) falls between that backup and the next, however
    short the schedule. Yields that event."""
    started = daemon.wait_for_event("backup-started", count)[count - 1]
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        # The child ends by itself; the frozen daemon can neither reap it nor start another.
        pgharness.wait_for(lambda: child_ended(int(started["pid"])), 300, interval=0.1,
                           what=f"backup-push {started['pid']} to end\n{daemon.log()}")
        assert len(daemon.events("backup-started")) == count, daemon.log()
        yield started
    finally:
        daemon.process.send_signal(signal.SIGCONT)


def child_ended(pid: int) -> bool:
    """Whether the process has exited (a zombie its stopped parent has not reaped, or gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_daemon_takes_incrementals_between_fulls_and_a_full_when_the_parent_is_refused(
        cluster, pitrkit_setup: PitrkitSetup, pg_major: int) -> None:
    """`full_every = "2 incrementals"`: full, incremental, incremental, full, with writes
    between them, and the second incremental restores exactly. Then the newest backup, an
    incremental, loses its block maps, which only backup-push sees (the catalog lists the
    backup and its chain is whole): the daemon's incremental on it is refused with
    ParentRefused's exit code, and the daemon takes a full at once. Then an incremental
    whose full is removed: that the daemon sees itself, and its next backup is full. Last,
    an incremental whose manifest no longer decodes: refused, and a full at once."""
    setup = pitrkit_setup
    primary = archiving_primary(cluster, setup, **({"summarize_wal": "on"} if pg_major >= 17 else {}))
    port = pgharness.free_port()
    configure(setup, primary, port, every="1s", full_every="2 incrementals")
    daemon = start_daemon(setup, port, "daemon")
    try:
        for number in range(1, 6):
            with paused_after_backup(daemon, number):
                write_round(primary, number)
                if number == 3:
                    point = note_point(primary)  # just after the second incremental
                if number == 5:
                    newest = backup_listing(setup)["backups"][-1]
                    maps = setup.archive / "backups" / newest["backup_id"] / "blockmap"
                    assert newest["parent"] and any(maps.iterdir()), newest
                    shutil.rmtree(maps)
        # The 6th start is the refused incremental, the 7th the full taken at once, the
        # 8th an incremental on that full.
        with paused_after_backup(daemon, 8):
            newest = backup_listing(setup)["backups"][-1]
            assert newest["parent"], newest
            shutil.rmtree(setup.archive / "backups" / newest["parent"])
        # The 9th start is that full, the 10th an incremental on it, whose manifest is
        # then no manifest: the catalog still lists the backup, only backup-push reads it.
        with paused_after_backup(daemon, 10):
            newest = backup_listing(setup)["backups"][-1]
            assert newest["parent"], newest
            (setup.archive / "backups" / newest["backup_id"] / "manifest.json").write_bytes(b"{not a manifest")
        daemon.wait_for_event("backup-finished", 10)
    finally:
        code = daemon.stop()
    daemon.assert_clean()
    assert code == 0, daemon.log()
    assert not daemon.events("backup-failed"), daemon.log()

    finished = [event["backup_id"] for event in daemon.events("backup-finished")]
    listing = backup_listing(setup)
    listed = {backup["backup_id"]: backup for backup in listing["backups"]}
    removed = finished[5]  # the full under the 8th backup
    assert list(listed) == [backup_id for backup_id in finished if backup_id != removed], daemon.log()
    # The refused incrementals stored nothing (a folder left is the one the stop cut short).
    assert all(folder > finished[9] for folder in listing["unfinished"]), listing
    f = finished
    parents = [None, f[0], f[1], None, f[3], None, f[5], None, f[7], None]
    chains = [[], f[:1], f[:2], [], f[3:4], [], f[5:6], [], f[7:8], []]
    for backup_id, parent, chain in zip(finished, parents, chains, strict=False):
        if backup_id != removed:
            assert (listed[backup_id]["parent"], listed[backup_id]["chain"]) == (parent, chain), listed[backup_id]
    method = "wal-summaries" if pg_major >= 17 else "page-lsn"
    assert all(backup["changed_blocks"]["method"] == method for backup in listed.values() if backup["parent"])

    started = daemon.events("backup-started")
    assert [(event["kind"], event.get("parent")) for event in started[:12]] == [
        ("full", None), ("incremental", f[0]), ("incremental", f[1]), ("full", None),
        ("incremental", f[3]), ("incremental", f[4]), ("full", None),
        ("incremental", f[5]), ("full", None),
        ("incremental", f[7]), ("incremental", f[8]), ("full", None)], daemon.log()
    refused = daemon.events("backup-incremental-refused")
    assert [event["parent"] for event in refused] == [f[4], f[8]], daemon.log()
    assert f"block map backups/{f[4]}/blockmap/" in refused[0]["error"], refused
    assert f"backups/{f[8]}/manifest.json is not a valid BackupManifest" in refused[1]["error"], refused
    assert f"the incremental on {f[4]} was refused" in started[6]["reason"]
    assert f"its chain is broken: {removed} is not in the archive" in started[8]["reason"]
    assert f"the incremental on {f[8]} was refused" in started[11]["reason"]

    # The second incremental, a chain of three, at the point just after it.
    assert restore_plan(setup, "--to", point.time)["backup"]["backup_id"] == finished[2]
    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

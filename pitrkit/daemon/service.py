"""`pitrkit daemon`: the one service a DBA leaves running (conf/pitrkit.service).

It runs, under one process:
* the streaming sidecar, `pitrkit wal-receive`, when `[receive] spool` is set: a child
  restarted with backoff whenever it exits, stopped with SIGTERM (its clean stop, which
  archives what it received);
* scheduled backups (`[daemon] every` or `cron`, see daemon/schedule.py): `pitrkit backup-push
  --json` as a child, one at a time, and not while another host's backup-push is writing
  into the archive; full, or with `[daemon] full_every` incremental on the newest backup
  (`--incremental --from <id>`, see daemon/backup_kind.py), and a full at once when
  backup-push refuses that parent;
* `pitrkit retention apply --json` as a child after each successful backup, when
  `[daemon] retention` is on and `[retention]` is configured;
* restore drills (`[drill] every`): `pitrkit drill` as a child, one at a time, never while
  a backup or its retention runs; a backup due during a drill waits for the drill to end
  (the drill reads a backup, and a backup's retention could remove it);
* catch-up of the optional repositories (`required = false`): their spools drained and
  what they lack copied from a required repository, in a thread (wal/catch_up.py);
* the status: a StatusReport refreshed every `[daemon] status_interval` and served on
  `[daemon] listen` (daemon/status_server.py).

The commands run as children of the same interpreter and configuration, not in this
process: a backup's memory, threads and server session end with it; a crash in one
cannot take the sidecar down; and a stop can terminate it. Their outcomes become the
daemon's events, one logfmt line each on stderr (journald), like wal-receive's; the
sidecar writes its own events to the same stderr.

SIGTERM or SIGINT: no new backup starts, a running backup-push is terminated (it removes
the unfinished folder it was storing, which a daemon started next would otherwise take
for another host's backup at work; what it cannot remove retention removes after
`unfinished_grace`, as a killed one's), a running
retention is interrupted (SIGINT: it releases the catalog lock; a rerun finishes what it started), a running drill is
terminated (it stops its scratch server, removes its directory and stores its report), the sidecar is stopped
cleanly, the server closed, and the daemon exits 0. Under systemd a SIGKILL of the
daemon also kills its children (the unit's control group).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, NamedTuple

from pitrkit import events
from pitrkit.catalog.backups import BackupSurvey, last_written, survey_backups
from pitrkit.catalog.documents import BackupSummary
from pitrkit.config import Config
from pitrkit.daemon.backup_kind import BackupKind, ClusterIdentity, next_backup_kind
from pitrkit.daemon.schedule import Every, Schedule, Timetable, from_config
from pitrkit.daemon.status_server import StatusBoard, StatusServer
from pitrkit.errors import ConfigError, ParentRefused, PitrkitError
from pitrkit.ops.daemon_facts import DaemonFacts, ScheduledRun
from pitrkit.ops.per_repository import PerRepository
from pitrkit.ops.retention import RetentionReport
from pitrkit.ops.status import newest_drills
from pitrkit.progress import human_bytes
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import open_all
from pitrkit.wal.catch_up import CatchUp

log = logging.getLogger(__name__)

_TICK = 0.25  # how soon a due backup, an exited child or a signal is noticed
_SIDECAR_BACKOFF_FIRST = 1.0
_SIDECAR_BACKOFF_MAX = 60.0
# A sidecar that ran this long before exiting was healthy: its restart is not delayed by
# the backoff of earlier quick failures.
_SIDECAR_STEADY_RUN = 60.0
# wal-receive stops pg_receivewal (up to 30 s) and then archives what it wrote.
_SIDECAR_STOP_TIMEOUT = 90.0
# Retention (SIGINT) and backup-push (SIGTERM) unwind: they release the catalog lock, and
# backup-push ends its server session and removes its unfinished folder; this bounds a
# hung storage call.
_CHILD_STOP_TIMEOUT = 30.0
# A drill stopped by SIGTERM stops its scratch server (at once, killed after 20 s) and
# removes its scratch directory before it exits: more than a backup-push needs.
_DRILL_STOP_TIMEOUT = 60.0
# Besides [backup] wal_timeout: a backup-push between its start and its first part
# (the server's checkpoint) writes nothing into the archive either.
_OTHER_BACKUP_MARGIN = 600.0


# --- children ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a child command ended."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error(self) -> str:
        """Its `pitrkit: ...` line, the one line every failed command ends with."""
        lines = [line.removeprefix("pitrkit: ") for line in self.stderr.splitlines() if line.startswith("pitrkit: ")]
        if lines:
            return lines[-1]
        if self.code >= 0:
            return f"exited with code {self.code}"
        try:
            return f"killed by {signal.Signals(-self.code).name}"
        except ValueError:  # real-time signals have no name
            return f"killed by signal {-self.code}"


class Child:
    """A pitrkit command run as a child; its output goes to temporary files (a pipe that
    nobody reads while the loop waits would fill up and stall the child)."""

    def __init__(self, argv: list[str]) -> None:
        """Raises OSError when it cannot be started (no such program, no fork, a full /tmp)."""
        self._stdout: IO[bytes] = tempfile.TemporaryFile()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._started = time.monotonic()
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                            stderr=self._stderr)
        except OSError:
            self._stdout.close()
            self._stderr.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Outcome | None:
        code = self.process.poll()
        return None if code is None else self._outcome(code)

    def terminate(self, timeout: float = _CHILD_STOP_TIMEOUT, how: signal.Signals = signal.SIGTERM
                  ) -> tuple[Outcome, bool]:
        """`how`, then SIGKILL if it does not end in time; the outcome, and whether it had
        to be killed."""
        self.process.send_signal(how)
        try:
            return self._outcome(self.process.wait(timeout)), False
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self._outcome(self.process.wait()), True

    def _outcome(self, code: int) -> Outcome:
        texts = []
        for file in (self._stdout, self._stderr):
            file.seek(0)
            texts.append(file.read().decode("utf-8", "replace"))
            file.close()
        return Outcome(code, texts[0], texts[1], time.monotonic() - self._started)


def _relay(command: str, outcome: Outcome) -> None:
    """A child's own messages (storage retries, warnings), one event each; a failed
    child's final error line is its failure event's `error`, not repeated."""
    lines = [line.removeprefix("pitrkit: ") for line in outcome.stderr.splitlines() if line.strip()]
    if outcome.code != 0 and lines and lines[-1] == outcome.error:
        lines.pop()
    for line in lines:
        events.emit(log, logging.WARNING, command, message=line)


def _cannot_run(argv: list[str], exc: OSError) -> str:
    return f"cannot run {argv[0]}: {exc.strerror}"


class Sidecar:
    """`pitrkit wal-receive`, kept running. Its stderr is ours: its events are logfmt lines
    already."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self._next_start = 0.0
        self._delay = _SIDECAR_BACKOFF_FIRST
        self.restarts = 0

    @property
    def state(self) -> str:
        return "running" if self._process is not None else "restarting"

    def supervise(self) -> None:
        if self._process is None:
            if time.monotonic() >= self._next_start:
                self._start()
            return
        code = self._process.poll()
        if code is None:
            return
        ran = time.monotonic() - self._started
        if ran >= _SIDECAR_STEADY_RUN:
            self._delay = _SIDECAR_BACKOFF_FIRST
        self._process = None
        self.restarts += 1
        self._retry(f"wal-receive exited with code {code} after {ran:.1f}s")

    def _start(self) -> None:
        try:
            self._process = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            self._retry(_cannot_run(self._argv, exc))
            return
        self._started = time.monotonic()
        events.emit(log, logging.INFO, "sidecar-started", pid=self._process.pid)

    def _retry(self, error: str) -> None:
        delay, self._delay = self._delay, min(self._delay * 2, _SIDECAR_BACKOFF_MAX)
        self._next_start = time.monotonic() + delay
        events.emit(log, logging.WARNING, "sidecar-exited", error=error, retry_in=f"{delay:g}s")

    def stop(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            code = process.wait(_SIDECAR_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            events.emit(log, logging.WARNING, "sidecar-killed", pid=process.pid,
                        error=f"wal-receive did not stop within {_SIDECAR_STOP_TIMEOUT:g}s of SIGTERM")
        events.emit(log, logging.INFO if code == 0 else logging.WARNING, "sidecar-stopped", pid=process.pid, code=code)


# --- another host's backup ----------------------------------------------------------------


class UnfinishedBackup(NamedTuple):
    backup_id: str
    last_written: datetime | None  # its newest object's store time, if the storage says


def backup_in_progress(unfinished: list[UnfinishedBackup], ours: set[str], now: datetime,
                       quiet_seconds: float) -> UnfinishedBackup | None:
    """An unfinished backup folder that another backup-push is probably still writing:
    one written to within `quiet_seconds`. Folders our own failed backups left are not
    anyone's running backup; a folder whose store times are unknown cannot be told from an
    abandoned one and does not block (it would block forever)."""
    for folder in unfinished:
        if folder.backup_id in ours or folder.last_written is None:
            continue
        if now - folder.last_written < timedelta(seconds=quiet_seconds):
            return folder
    return None


def _unfinished_backups(archive: Archive, survey: BackupSurvey) -> list[UnfinishedBackup]:
    return [UnfinishedBackup(backup_id, last_written(archive, backup_id)) for backup_id in survey.unfinished]


def data_directory_major(pgdata: str | None) -> int | None:
    """The major version the data directory says it is of (its PG_VERSION), read without
    a server session; None when there is no [postgres] pgdata or it does not say."""
    if pgdata is None:
        return None
    try:
        text = (Path(pgdata) / "PG_VERSION").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and len(text) <= 4 else None


# --- scheduled backups and retention --------------------------------------------------------


class Backups:
    """The schedule's backups, one at a time, each followed by `repo sync` into every
    optional repository (backup-push stored it in every required one; an optional one
    that could not take it then gets it, or fails again until it can) and retention."""

    def __init__(self, config: Config, pitrkit: list[str], schedule: Schedule, archive: Archive,
                 board: StatusBoard | None) -> None:
        self._pitrkit = pitrkit
        self._archive = archive
        self._board = board
        # `retention apply` applies each repository's own policy (ops/per_repository).
        self.retention_after = config.daemon.retention and any(
            config.for_repository(each).retention is not None for each in config.repositories)
        self._quiet = config.backup.wal_timeout + _OTHER_BACKUP_MARGIN
        self._optional = [each.name for each in config.repositories if not each.required]
        self._full_every = config.daemon.full_every_rule
        self._pgdata = config.postgres.pgdata
        self.schedule = schedule
        now = datetime.now(UTC)
        try:
            survey: BackupSurvey | None = survey_backups(archive)
        except PitrkitError as exc:
            # Unknown: a backup now is the safe side (if the archive is really down, the
            # backup says so).
            events.emit(log, logging.WARNING, "backups-not-listed", error=str(exc))
            survey = None
        newest_start = survey.finished[-1].start_time if survey is not None and survey.finished else None
        self.timetable = Timetable(schedule, newest_start, now)
        # The running backup's kind and slot, and the kind the next one is expected to be
        # (for the status: decided again, from a fresh listing, when it starts).
        self.next_kind = self._kind = self._plan(survey, self.timetable.due)
        self._slot = now
        self._backup: Child | None = None
        self._backup_started = now
        self._unfinished_before: set[str] = set()
        self._retention_child: Child | None = None
        # After a backup: the optional repositories still to sync, the running sync, and
        # whether retention follows them.
        self._sync_queue: list[str] = []
        self._sync_child: Child | None = None
        self._sync_target = ""
        self._retention_next = False
        self._ours: set[str] = set()  # unfinished folders our own failed backups left
        self._waiting_for: datetime | None = None  # a due slot waiting for a drill to end
        self.last_run: ScheduledRun | None = None
        self.taken = self.failures = self.retention_runs = self.retention_failures = 0

    @property
    def running(self) -> bool:
        return self._backup is not None

    def _plan(self, survey: BackupSurvey | None, at: datetime) -> BackupKind:
        """The kind of a backup starting `at`, from `survey` (None: the archive could not
        be listed, and a full needs no parent)."""
        if self._full_every is None:
            return BackupKind(None, "every scheduled backup is full ([daemon] full_every is not set)")
        if survey is None:
            return BackupKind(None, "the archive's backups could not be listed")
        try:
            system_identifier = self._archive.identity().current_era.system_identifier
        except PitrkitError as exc:
            return BackupKind(None, f"the archive's identity could not be read: {exc}")
        cluster = ClusterIdentity(system_identifier, data_directory_major(self._pgdata))
        return next_backup_kind(self._full_every, survey.finished, cluster, at)

    def _current_era(self) -> Archive:
        """The archive's newest era, which backups are taken into (`pitrkit upgrade`); the
        archive itself while archive.json cannot be read (backup-push then says why)."""
        try:
            return self._archive.current()
        except PitrkitError:
            return self._archive

    def _listing(self) -> BackupSurvey | None:
        """The archive's backups after a backup ended; None when they cannot be listed
        (the next backup lists them again, and says so)."""
        try:
            return survey_backups(self._current_era())
        except PitrkitError:
            return None

    @property
    def busy(self) -> bool:
        """A backup, its copies into optional repositories or its retention runs: no drill starts."""
        return self._backup is not None or self._sync_child is not None or self._retention_child is not None

    def tick(self, now: datetime, drill_running: bool = False) -> None:
        if self._backup is not None:
            if (outcome := self._backup.poll()) is not None:
                self._backup_ended(outcome, now)
        elif self._sync_child is not None:
            if (outcome := self._sync_child.poll()) is not None:
                self._sync_ended(outcome)
        elif self._retention_child is not None:
            if (outcome := self._retention_child.poll()) is not None:
                self._retention_ended(outcome)
        elif self.timetable.is_due(now):
            if drill_running:
                # A backup due during a drill waits for it to end (the drill is the one
                # that runs at low priority, and it reads a backup retention might remove).
                if self._waiting_for is None:
                    self._waiting_for = self.timetable.due
                    events.emit(log, logging.INFO, "backup-waiting", slot=_show(self.timetable.due),
                                reason="a restore drill is running")
                return
            self._waiting_for = None
            self._start_backup(now)

    def _start_backup(self, now: datetime) -> None:
        if self.timetable.missed is not None:
            events.emit(log, logging.INFO, "backup-missed", slot=_show(self.timetable.missed))
            self.timetable.missed = None
        slot = self.timetable.due
        self.timetable.started(now)
        survey: BackupSurvey | None = None
        unfinished: list[UnfinishedBackup] = []
        try:
            era = self._current_era()
            survey = survey_backups(era)
            unfinished = _unfinished_backups(era, survey)
        except PitrkitError as exc:
            events.emit(log, logging.WARNING, "backup-check-failed", error=str(exc))
        other = backup_in_progress(unfinished, self._ours, now, self._quiet)
        if other is not None:
            assert other.last_written is not None
            events.emit(log, logging.WARNING, "backup-skipped", slot=_show(slot), other_backup=other.backup_id,
                        last_written=_show(other.last_written),
                        reason="another backup-push is writing into the archive",
                        next_backup_at=_show(self.timetable.due))
            self.next_kind = self._plan(survey, self.timetable.due)
            return
        self._unfinished_before = {folder.backup_id for folder in unfinished}
        self._launch(now, slot, self._plan(survey, now))

    def _launch(self, now: datetime, slot: datetime, kind: BackupKind) -> None:
        self._slot, self._kind, self.next_kind = slot, kind, kind
        self._backup_started = now
        argv = [*self._pitrkit, "backup-push", "--json"]
        if kind.parent is not None:
            argv += ["--incremental", "--from", kind.parent]
        try:
            self._backup = Child(argv)
        except OSError as exc:
            self._backup_failed(now, _cannot_run(argv, exc))
            return
        events.emit(log, logging.INFO, "backup-started", pid=self._backup.pid, slot=_show(slot), kind=kind.kind,
                    parent=kind.parent, reason=kind.reason)

    def _backup_ended(self, outcome: Outcome, now: datetime, retention: bool = True) -> None:
        self._backup = None
        _relay("backup-push", outcome)
        parent = self._kind.parent
        if parent is not None and outcome.code == ParentRefused.exit_code:
            # Refused before the backup began (nothing stored): what only the server knows
            # (its timeline's path) or what changed since the daemon looked. The slot's
            # backup is then a full one, at once.
            events.emit(log, logging.WARNING, "backup-incremental-refused", parent=parent, error=outcome.error)
            self._launch(now, self._slot, BackupKind(None, f"the incremental on {parent} was refused: "
                                                           f"{outcome.error}"))
            return
        summary = _backup_summary(outcome) if outcome.code == 0 else None
        if summary is None:
            self._backup_failed(now, outcome.error, outcome.code, outcome.seconds)
            return
        self.taken += 1
        self.last_run = ScheduledRun(started_at=self._backup_started, finished_at=now, ok=True,
                                     backup_id=summary.backup_id, message=f"backup {summary.backup_id}")
        events.emit(log, logging.INFO, "backup-finished", backup_id=summary.backup_id, size=human_bytes(summary.size),
                    stored=human_bytes(summary.stored_size), files=summary.file_count,
                    seconds=f"{outcome.seconds:.1f}", next_backup_at=_show(self.timetable.due))
        if self._board is not None:
            self._board.refresh_soon()
        if self._full_every is not None:  # else every backup is full: no listing needed
            self.next_kind = self._plan(self._listing(), self.timetable.due)
        self._sync_queue = list(self._optional)
        self._retention_next = retention and self.retention_after
        self._next_follow_up()

    def _next_follow_up(self) -> None:
        """The next optional repository's sync, else retention when it follows."""
        while self._sync_queue:
            name = self._sync_queue.pop(0)
            argv = [*self._pitrkit, "repo", "sync", "--to", name]
            try:
                self._sync_child, self._sync_target = Child(argv), name
            except OSError as exc:
                events.emit(log, logging.WARNING, "sync-failed", repository=name, error=_cannot_run(argv, exc))
                continue
            events.emit(log, logging.INFO, "sync-started", pid=self._sync_child.pid, repository=name)
            return
        if self._retention_next:
            self._retention_next = False
            self._start_retention()

    def _sync_ended(self, outcome: Outcome) -> None:
        self._sync_child, name = None, self._sync_target
        if outcome.code != 0:
            # An optional repository: a warning, and the next backup's sync tries again
            # (status shows what it misses meanwhile).
            _relay("repo-sync", outcome)
            events.emit(log, logging.WARNING, "sync-failed", repository=name, code=outcome.code, error=outcome.error,
                        seconds=f"{outcome.seconds:.1f}")
        else:
            events.emit(log, logging.INFO, "sync-finished", repository=name, seconds=f"{outcome.seconds:.1f}")
        self._next_follow_up()

    def _backup_failed(self, now: datetime, error: str, code: int | None = None, seconds: float | None = None
                       ) -> None:
        self.failures += 1
        self.last_run = ScheduledRun(started_at=self._backup_started, finished_at=now, ok=False, backup_id=None,
                                     message=error)
        events.emit(log, logging.ERROR, "backup-failed", code=code, error=error,
                    seconds=None if seconds is None else f"{seconds:.1f}", next_backup_at=_show(self.timetable.due))
        survey = self._listing()
        if survey is not None:
            # The folder this backup left (unfinished, new since it started) is not
            # another host's running backup.
            self._ours |= set(survey.unfinished) - self._unfinished_before
        self.next_kind = self._plan(survey, self.timetable.due)

    def _start_retention(self) -> None:
        argv = [*self._pitrkit, "retention", "apply", "--json"]
        try:
            self._retention_child = Child(argv)
        except OSError as exc:
            self.retention_runs += 1
            self.retention_failures += 1
            events.emit(log, logging.ERROR, "retention-failed", error=_cannot_run(argv, exc))
            return
        events.emit(log, logging.INFO, "retention-started", pid=self._retention_child.pid)

    def _retention_ended(self, outcome: Outcome) -> None:
        self._retention_child = None
        self.retention_runs += 1
        if outcome.code != 0:
            self.retention_failures += 1
            _relay("retention", outcome)
            events.emit(log, logging.ERROR, "retention-failed", code=outcome.code, error=outcome.error,
                        seconds=f"{outcome.seconds:.1f}")
            return
        events.emit(log, logging.INFO, "retention-finished", seconds=f"{outcome.seconds:.1f}",
                    **_retention_fields(outcome))
        if self._board is not None:
            self._board.refresh_soon()

    def stop(self) -> None:
        if self._backup is not None:
            child, self._backup = self._backup, None
            outcome, killed = child.terminate()
            if outcome.code == 0:
                # It had finished (manifest written) before the loop noticed: a backup
                # like any other, but no retention is started during a stop.
                self._backup_ended(outcome, datetime.now(UTC), retention=False)
                return
            self.last_run = ScheduledRun(started_at=self._backup_started, finished_at=datetime.now(UTC), ok=False,
                                         backup_id=None, message="terminated by the daemon's stop")
            # Its folder had no manifest, and backup-push removed it (killed, it leaves it:
            # the planner never uses it, and retention removes it after unfinished_grace).
            events.emit(log, logging.WARNING, "backup-terminated", pid=child.pid, code=outcome.code, killed=killed,
                        backup="unfinished")
        self._sync_queue, self._retention_next = [], False
        if self._sync_child is not None:
            child, self._sync_child = self._sync_child, None
            # SIGINT, as retention below: it unwinds and releases what it holds; what it
            # copied stays (create-only, the manifest last), and the next sync goes on from there.
            outcome, killed = child.terminate(how=signal.SIGINT)
            events.emit(log, logging.INFO if outcome.code == 0 else logging.WARNING, "sync-terminated",
                        pid=child.pid, repository=self._sync_target, code=outcome.code, killed=killed)
        if self._retention_child is not None:
            child = self._retention_child
            # SIGINT: it unwinds as on Ctrl-C and releases the catalog lock; SIGTERM's
            # default death would leave the lock standing for lock.HELD_FOR (10 minutes),
            # and a restarted daemon's retention refused meanwhile.
            outcome, killed = child.terminate(how=signal.SIGINT)
            if outcome.code == 0:  # it had finished before the loop noticed
                self._retention_ended(outcome)
                return
            self._retention_child = None
            events.emit(log, logging.WARNING, "retention-terminated", pid=child.pid, code=outcome.code, killed=killed,
                        note="the next run finishes what it started")


class Drills:
    """`[drill] every`: `pitrkit drill` as a child (ops/drill.py: its nice and ionice, its
    disk-space check, its report stored in the archive), one at a time, started only
    while no backup or retention runs; a backup due meanwhile waits for it."""

    def __init__(self, pitrkit: list[str], schedule: Every, archive: Archive, board: StatusBoard | None) -> None:
        self._pitrkit = pitrkit
        self._board = board
        self.schedule = schedule
        try:
            newest = newest_drills(archive, 1)
        except PitrkitError as exc:
            events.emit(log, logging.WARNING, "drills-not-listed", error=str(exc))
            newest = []
        self.timetable = Timetable(schedule, newest[0].started_at if newest else None, datetime.now(UTC))
        self._child: Child | None = None
        self.runs = self.failures = 0

    @property
    def running(self) -> bool:
        return self._child is not None

    def tick(self, now: datetime, backup_busy: bool) -> None:
        if self._child is not None:
            if (outcome := self._child.poll()) is not None:
                self._ended(outcome)
        elif self.timetable.is_due(now) and not backup_busy:
            self.timetable.started(now)
            argv = [*self._pitrkit, "drill"]
            try:
                self._child = Child(argv)
            except OSError as exc:
                self.runs += 1
                self.failures += 1
                events.emit(log, logging.ERROR, "drill-failed", error=_cannot_run(argv, exc))
                return
            events.emit(log, logging.INFO, "drill-started", pid=self._child.pid)

    def _ended(self, outcome: Outcome) -> None:
        self._child = None
        self.runs += 1
        drill_id = next((line.split()[1].rstrip(":") for line in outcome.stdout.splitlines()
                         if line.startswith("drill ") and len(line.split()) > 1), None)
        if outcome.code != 0:
            self.failures += 1
            _relay("drill", outcome)
            events.emit(log, logging.ERROR, "drill-failed", drill_id=drill_id, code=outcome.code,
                        error=outcome.error, seconds=f"{outcome.seconds:.1f}", next_drill_at=_show(self.timetable.due))
        else:
            events.emit(log, logging.INFO, "drill-finished", drill_id=drill_id, seconds=f"{outcome.seconds:.1f}",
                        next_drill_at=_show(self.timetable.due))
        if self._board is not None:
            self._board.refresh_soon()

    def stop(self) -> None:
        if self._child is None:
            return
        child, self._child = self._child, None
        outcome, killed = child.terminate(_DRILL_STOP_TIMEOUT)
        events.emit(log, logging.WARNING, "drill-terminated", pid=child.pid, code=outcome.code, killed=killed)


def _backup_summary(outcome: Outcome) -> BackupSummary | None:
    try:
        return codec.decode(outcome.stdout.encode(), BackupSummary, "backup-push --json output")
    except ValueError as exc:
        events.emit(log, logging.ERROR, "backup-output-unreadable", error=str(exc))
        return None


def _retention_fields(outcome: Outcome) -> dict[str, object]:
    """What retention's --json report says it removed (the figures a log reader wants)."""
    # One repository's report, else a section per repository (ops/per_repository), whose
    # backups are named "repository:backup".
    try:
        reports = [("", codec.decode(outcome.stdout.encode(), RetentionReport, "retention apply --json output"))]
    except ValueError:
        try:
            reports = [(f"{section.repository}:", section.report) for section in codec.decode(
                outcome.stdout.encode(), PerRepository[RetentionReport], "retention apply --json output").repositories
                if section.report is not None]
        except ValueError as exc:
            return {"report": f"unreadable: {exc}"}
    return {"kept": ",".join(name + kept.backup_id for name, report in reports for kept in report.kept) or None,
            "removed": ",".join(name + removed.backup_id for name, report in reports
                                for removed in report.removed_backups) or None,
            "wal_files_removed": sum(wal.files for _, report in reports for wal in report.removed_wal),
            "freed": human_bytes(sum(report.stored_bytes for _, report in reports))}


def _show(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


# --- the daemon ---------------------------------------------------------------------------


class StopRequest:
    """SIGTERM or SIGINT, noted by the handler for the loop to act on.

    Installed before the daemon sets anything up, so that a stop sent while it starts (a
    slow archive listing, a status server binding) is a clean stop too, not the default
    action's death. The handler only stores the signal's name: taking a lock there (as
    threading.Event.set does) could deadlock with the main thread it interrupts, if that
    thread holds the same lock at that moment."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._received)
        signal.signal(signal.SIGINT, self._received)

    def _received(self, signal_number: int, _frame: object) -> None:
        self.signal = signal.Signals(signal_number).name


class Daemon:
    """The loop: supervises the sidecar, starts the scheduled backups and retention, and
    keeps the facts the status page shows, until its StopRequest notes a signal; then
    stops the running backup or retention, the sidecar and the status server, in that
    order."""

    def __init__(self, config: Config, config_path: Path, verbose: bool, stop: StopRequest) -> None:
        pitrkit = [sys.executable, "-m", "pitrkit", "--config", str(config_path), *(["-v"] if verbose else [])]
        self._config = config
        self._stop = stop
        self._started_at = datetime.now(UTC)
        settings = config.daemon
        self._board = StatusBoard(config, settings.status_interval) if settings.listen else None
        # Bound before anything starts: a port in use is a configuration error, reported
        # as one line, not a daemon that runs without its page.
        self._server = (StatusServer(settings.listen, self._board, lambda: self.facts, settings.status_interval)
                        if self._board is not None else None)
        self._sidecar = Sidecar([*pitrkit, "wal-receive"]) if config.receive.spool else None
        schedule = from_config(settings)
        self._backups = Backups(config, pitrkit, schedule, Archive(config), self._board) if schedule else None
        drill_every = config.drill.every_seconds
        self._drills = (Drills(pitrkit, Every(drill_every, f"{config.drill.every}"), Archive(config), self._board)
                        if drill_every is not None and config.drill.every is not None else None)
        # The optional repositories' spools drained in a thread of its own (wal/catch_up.py).
        self._catching_up = CatchUp(open_all(config))
        self.facts = self._facts()

    def run(self) -> str:
        backups = self._backups
        events.emit(log, logging.INFO, "daemon-started", pid=os.getpid(),
                    schedule=backups.schedule.describe() if backups else "none",
                    next_backup_at=_show(backups.timetable.due) if backups else None,
                    next_backup_kind=backups.next_kind.kind if backups else None,
                    sidecar=self._sidecar is not None, retention=bool(backups and backups.retention_after),
                    drills=self._drills.schedule.describe() if self._drills else None)
        if self._board is not None and self._server is not None:
            self._board.start()
            self._server.start()
        try:
            while self._stop.signal is None:
                if self._sidecar is not None:
                    self._sidecar.supervise()
                now = datetime.now(UTC)
                if backups is not None:
                    backups.tick(now, drill_running=bool(self._drills and self._drills.running))
                if self._drills is not None:
                    self._drills.tick(now, backup_busy=bool(backups and backups.busy))
                self.facts = self._facts()
                time.sleep(_TICK)
            events.emit(log, logging.INFO, "daemon-stopping", signal=self._stop.signal)
        finally:
            self._shut_down()
        taken = (f"took {backups.taken} scheduled backup(s), {backups.failures} failed" if backups
                 else "no scheduled backups")
        return f"daemon stopped ({self._stop.signal}): {taken}"

    def _shut_down(self) -> None:
        # Backups first: a backup-push must not outlive the daemon, and the sidecar keeps
        # archiving the WAL it needs meanwhile.
        if self._backups is not None:
            self._backups.stop()
        if self._drills is not None:
            self._drills.stop()  # its scratch server stopped, its directory removed
        if self._sidecar is not None:
            self._sidecar.stop()
        self._catching_up.close()
        if self._server is not None and self._board is not None:
            self._server.stop()
            self._board.stop()
        self.facts = self._facts()
        events.emit(log, logging.INFO, "daemon-stopped", signal=self._stop.signal)

    def _facts(self) -> DaemonFacts:
        backups, sidecar = self._backups, self._sidecar
        return DaemonFacts(
            started_at=self._started_at,
            schedule=backups.schedule.describe() if backups else None,
            next_backup_at=backups.timetable.due if backups else None,
            next_backup_kind=backups.next_kind.kind if backups else None,
            backup_running=bool(backups and backups.running),
            last_run=backups.last_run if backups else None,
            backups_taken=backups.taken if backups else 0,
            backup_failures=backups.failures if backups else 0,
            sidecar=sidecar.state if sidecar else None,
            sidecar_restarts=sidecar.restarts if sidecar else 0,
            retention_runs=backups.retention_runs if backups else 0,
            retention_failures=backups.retention_failures if backups else 0,
            drill_schedule=self._drills.schedule.describe() if self._drills else None,
            next_drill_at=self._drills.timetable.due if self._drills else None,
            drill_running=bool(self._drills and self._drills.running),
            drills_run=self._drills.runs if self._drills else 0,
            drill_failures=self._drills.failures if self._drills else 0,
        )


def command(args: Namespace, config: Config, config_path: Path) -> str:
    stop = StopRequest()
    stop.install()
    if from_config(config.daemon) is None and not config.receive.spool and not config.daemon.listen \
            and config.drill.every is None and all(each.required for each in config.repositories):
        raise ConfigError("[daemon] has nothing to run: set every or cron (scheduled backups), [receive] spool "
                           "(the streaming sidecar), listen (the status page), [drill] every (restore drills) or "
                           "an optional repository (required = false, caught up by the daemon)")
    # Every part of the service serves one archive, which `pitrkit init` creates.
    Archive(config).identity()
    events.log_to_stderr(args.verbose)
    return Daemon(config, config_path, args.verbose, stop).run()

"""`pitrkit wal-receive`: the streaming sidecar, which keeps the archive seconds behind the
primary instead of up to a whole segment behind.

It runs pg_receivewal on a physical replication slot into a local spool directory and
archives what arrives through exactly the wal-push path (`push.pushed_to_every`: validation,
compression, durable storage, duplicate handling): every completed segment, in order,
after which its spool copy is removed; and every `[receive] partial_interval` seconds the
segment still being written, as `<segment>.partial` (push replaces a stored partial only
with one that extends it). When a segment completes, the stored `.partial` of it is
deleted: the full segment wins anyway, and the archive stays tidy.

With several repositories each file goes to every one on wal-push's rules: a required
repository's failure keeps the file in this spool, retried with backoff, later files
waiting behind it; an optional one's puts the file in that repository's own spool
(wal/spool.py) for catch-up, and the stored partial is deleted only in the repositories
that took the full segment.

Why this shape (Barman's and pgBackRest's users know it): pg_receivewal speaks the
replication protocol, fsyncs, pads and renames segments, and resumes by itself from the
spool's newest file or, with an empty spool, from the slot's restart_lsn. The slot keeps
on the server every WAL byte the spool has not fsync'd (pg_receivewal reports a position
only once it is on disk), across restarts of either side; the spool keeps every byte the
archive has not stored, across restarts of the sidecar. So a kill -9 anywhere loses
nothing: the next run archives the spool's leftovers and pg_receivewal resumes.

One process, one thread: a loop that starts pg_receivewal (restarting it with backoff),
relays its messages, archives the spool and writes the health state (wal/receiver_health.py).
Events are logged one per line on stderr, as logfmt; SIGTERM or SIGINT stop pg_receivewal
cleanly, archive what it wrote (the open segment included) and exit 0.

After a failover (`[postgres] conninfo` may list every host; several get
`target_session_attrs=primary`), the restarts reach the promoted server: its slot is
created there, and when the spool's WAL is on an older timeline than the server's, that
timeline's files are archived and removed and streaming restarts at the fork on the next
timeline (wal/timeline_follow.py). The health state names the server followed.

Secrets in `[postgres] conninfo` (password, sslpassword) never reach pg_receivewal's argv,
which `ps` shows every user. libpq reads a password from PGPASSWORD but has no variable
for sslpassword, so both go through a connection service file: `[pitrkit-receive]` in a
0600 file in a fresh 0700 directory, named by PGSERVICEFILE, with `service=pitrkit-receive`
in argv. It exists from just before pg_receivewal starts until its first message (it has
connected, or failed to) or its exit, whichever comes first.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from argparse import Namespace
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from psycopg.conninfo import make_conninfo

from pitrkit import events
from pitrkit.config import Config
from pitrkit.errors import ConfigError, PitrkitError, RefusedError
from pitrkit.postgres.conninfo import connection_failure, conninfo_parameters
from pitrkit.postgres.wal import Lsn, SegmentName, WalFileKind, WalFileName
from pitrkit.progress import human_bytes
from pitrkit.storage.archive import wal_key
from pitrkit.storage.repositories import Repository, open_all
from pitrkit.wal import timeline_follow
from pitrkit.wal.push import pushed_to_every, stored_era
from pitrkit.wal.receiver_health import (
    LagClock,
    PrimaryError,
    PrimarySession,
    ReceiverHealth,
    ServerIdentity,
    ServerView,
    SlotState,
    read_state,
    write_state,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".pitrkit-receive.lock"

# pg_receivewal --status-interval: how stale the server's view of what the sidecar has
# written may be (pg_stat_replication, and so the health figures), in seconds.
_STATUS_INTERVAL = 1
_TICK = 0.25  # the loop's period: how soon a signal, an exit or a new segment is noticed
_OBSERVE_EVERY = 1.0
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 30.0
# A pg_receivewal that streamed this long before exiting was healthy: its restart starts
# the backoff afresh instead of waiting as long as after a run of quick failures.
_STEADY_RUN = 30.0
# pg_receivewal ends within a message once signalled; this bounds a hung one.
_STOP_TIMEOUT = 30.0
_RETAINED_WARNING_EVERY = 600.0
_PR_SET_PDEATHSIG = 1


class _Backoff:
    """Exponential backoff between attempts: 1 s, 2 s, 4 s ... capped at 30 s."""

    def __init__(self) -> None:
        self._delay = _BACKOFF_FIRST

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, _BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self._delay = _BACKOFF_FIRST


class Receiver:
    """pg_receivewal supervised, and its spool archived."""

    def __init__(self, config: Config, repositories: Sequence[Repository], spool: Path, pg_receivewal: Path) -> None:
        self._settings = config.receive
        self._repositories = repositories
        self._spool = spool
        conninfo = _primary_of_several(config.postgres.conninfo or "")
        self._server: ServerIdentity | None = None
        # The application_name is what synchronous_standby_names names; a name the DBA
        # put in conninfo wins.
        self._session = PrimarySession(conninfo, self._settings.slot)
        self._command = _receiver_command(pg_receivewal, conninfo, spool, self._settings.slot,
                                          self._settings.synchronous)
        self._argv = self._command.argv
        self._service_directory: str | None = None  # while a service file holds the secrets
        self._prctl = ctypes.CDLL(None, use_errno=True).prctl

        self._child: subprocess.Popen[bytes] | None = None
        self._child_started = 0.0
        self._child_output = b""
        self._next_start = 0.0
        self._receiver_backoff = _Backoff()
        self._restarts = 0

        self._archive_backoff = _Backoff()
        self._next_archive_attempt = 0.0
        self._shipped_partial: tuple[str, int] | None = None  # (name, mtime_ns) last shipped
        self._last_partial_ship = 0.0
        self._ship_partial_now = False
        self._segments_archived = 0
        self._partials_shipped = 0

        self._view: ServerView | None = None
        self._reachable = False
        self._last_observed = 0.0
        self._received: Lsn | None = None
        self._archived: Lsn | None = None
        self._archived_at: datetime | None = None
        self._lag = LagClock()
        self._retained_warned_at: float | None = None
        self._last_error: str | None = None
        self._stop_signal: str | None = None

    # -- the loop ----------------------------------------------------------------------

    def stop(self, signal_number: int, _frame: object = None) -> None:
        """Signal handler: only a flag, the loop does the work (and the logging)."""
        self._stop_signal = signal.Signals(signal_number).name

    def run(self) -> str:
        self._resume_health()
        try:
            while self._stop_signal is None:
                if self._child is None and time.monotonic() >= self._next_start:
                    self._start_receiver()
                self._reap_receiver()
                self._archive_spool()
                self._observe()
                self._wait(_TICK)
            events.emit(log, logging.INFO, "stopping", signal=self._stop_signal)
        finally:
            self._stop_receiver()
        # What pg_receivewal wrote before it stopped: complete segments, then the open one.
        self._archive_spool(final=True)
        self._observe(final=True)
        self._session.close()
        return (f"wal-receive stopped ({self._stop_signal}): archived {self._segments_archived} segments "
                f"and shipped the open segment {self._partials_shipped} times; last archived LSN "
                f"{self._archived or 'none'}")

    def _wait(self, timeout: float) -> None:
        if self._child is None or self._child.stderr is None:
            time.sleep(timeout)
            return
        select.select([self._child.stderr], [], [], timeout)
        self._relay_output()

    # -- pg_receivewal -----------------------------------------------------------------

    def _start_receiver(self) -> None:
        slot = self._settings.slot
        try:
            created, state = self._session.ensure_slot(slot)
        except PrimaryError as exc:
            self._retry_receiver(logging.WARNING, "server-unreachable", str(exc))
            return
        events.emit(log, logging.INFO, "slot-created" if created else "slot-reused", slot=slot,
                    restart_lsn=state.restart_lsn, wal_status=state.wal_status)
        if not self._follow_timeline(state):
            return
        if state.wal_status == "lost":
            # Not dropped and re-created by us: the WAL between what the archive holds and
            # the new slot's start is gone, and a DBA must know the archive has a gap.
            self._retry_receiver(logging.ERROR, "slot-lost", f"the server removed WAL slot {slot!r} still needed "
                                 "(max_slot_wal_keep_size exceeded): the archive has a gap. Drop the slot "
                                 "(it is re-created) and take a new base backup")
            return
        parent = os.getpid()
        environment = self._write_service_file()
        try:
            self._child = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, env=environment,
                                           preexec_fn=lambda: self._die_with(parent))
        except OSError as exc:  # e.g. removed by a package upgrade: retried, it may come back
            self._remove_service_file()
            self._retry_receiver(logging.ERROR, "receiver-not-started", f"cannot run {self._argv[0]}: {exc.strerror}")
            return
        assert self._child.stderr is not None
        os.set_blocking(self._child.stderr.fileno(), False)
        self._child_started = time.monotonic()
        events.emit(log, logging.INFO, "receiver-started", pid=self._child.pid, slot=slot,
                    synchronous=self._settings.synchronous, spool=self._spool)

    def _follow_timeline(self, slot: SlotState) -> bool:
        """Before pg_receivewal starts: when the server is on a later timeline than the
        spool's WAL (a failover), ship and remove the older timeline's files and start the
        next timeline at its fork (wal/timeline_follow.py); false to retry later."""
        try:
            self._server = server = self._session.identify()
            # The archive's, which every segment pushed into it has.
            segment_size = next(each for each in self._repositories if each.required).archive.identity() \
                .wal_segment_size
            switch = timeline_follow.plan(os.listdir(self._spool), server.timeline, server.history, segment_size)
        except (PrimaryError, OSError) as exc:
            self._retry_receiver(logging.WARNING, "server-unreachable", str(exc))
            return False
        except PitrkitError as exc:
            self._retry_receiver(logging.ERROR, "timeline-refused", str(exc))
            return False
        if switch is None:
            return True
        events.emit(log, logging.INFO, "timeline-switch", server=server.host, timeline=server.timeline,
                    old_timeline=switch.old_timeline, fork=switch.fork, start=switch.start)
        for name in sorted(os.listdir(self._spool)):
            try:
                file = WalFileName.parse(name)
            except PitrkitError:
                continue
            if file.kind not in (WalFileKind.SEGMENT, WalFileKind.PARTIAL) or file.timeline >= server.timeline:
                continue
            path = self._spool / name
            try:
                if _holds_wal(path):
                    summary = pushed_to_every(self._repositories, path).summary
                    events.emit(log, logging.INFO, "archived", file=name, detail=summary)
            except PitrkitError as exc:
                # The old timeline's WAL past the fork may exist nowhere else: never dropped.
                self._archive_failed(name, exc)
                self._retry_receiver(logging.ERROR, "timeline-switch-waits", f"archiving {name}: {exc}")
                return False
            path.unlink()
        # What is archived of the new timeline: the WAL before the fork, its history's
        # (in the archive on the old timeline). The old timeline's end, often further on
        # in LSNs, says nothing of the new one's: kept as the archived position, it would
        # report the new timeline's WAL up to there archived (no lag) before it is.
        self._archived, self._archived_at = switch.fork, datetime.now(UTC)
        if slot.restart_lsn is not None and slot.restart_lsn // segment_size > switch.start.segno:
            # The slot was made after the promotion: the server keeps WAL only from its
            # restart_lsn, so pg_receivewal starts there (from the slot) and the archive
            # has this timeline's WAL before it only if archive_command archived it.
            events.emit(log, logging.ERROR, "timeline-gap", timeline=switch.next_timeline,
                        error=f"the slot on {server.host} reserves WAL only from {slot.restart_lsn}: the WAL of "
                              f"timeline {switch.next_timeline} from {switch.fork} is in the archive only if "
                              "archive_command on that server archived it (docs/streaming.md, failover)")
            return True
        placeholder = self._spool / f"{switch.start.name}.partial"
        descriptor = os.open(placeholder, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(descriptor)
        return True

    def _write_service_file(self) -> dict[str, str]:
        """pg_receivewal's environment: ours, and PGSERVICEFILE naming a new service file
        when conninfo holds secrets (see the module's docstring)."""
        environment = dict(os.environ)
        if self._command.service is None:
            return environment
        self._remove_service_file()
        self._service_directory = tempfile.mkdtemp(prefix="pitrkit-receive-")  # 0700
        path = os.path.join(self._service_directory, "pg_service.conf")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(self._command.service)
        environment["PGSERVICEFILE"] = path
        return environment

    def _remove_service_file(self) -> None:
        if self._service_directory is not None:
            shutil.rmtree(self._service_directory, ignore_errors=True)
            self._service_directory = None

    def _die_with(self, parent: int) -> None:
        """In the child, before exec: pg_receivewal must not outlive a sidecar killed with
        SIGKILL. An orphan would keep the slot busy, so the restarted sidecar's own
        pg_receivewal could not stream, and nothing would archive what it writes."""
        self._prctl(_PR_SET_PDEATHSIG, signal.SIGINT)  # its clean stop (see _stop_receiver)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    def _retry_receiver(self, level: int, event: str, error: str) -> None:
        delay = self._receiver_backoff.next()
        self._next_start = time.monotonic() + delay
        self._last_error = error
        events.emit(log, level, event, error=error, retry_in=f"{delay:g}s")

    def _reap_receiver(self) -> None:
        if self._child is None or (code := self._child.poll()) is None:
            return
        self._relay_output(final=True)
        self._remove_service_file()
        ran = time.monotonic() - self._child_started
        if ran >= _STEADY_RUN:
            self._receiver_backoff.reset()
        self._child = None
        self._restarts += 1
        # The server went away (or pg_receivewal died): ship the open segment now, not at
        # the next interval. After a crash of the primary this is the last WAL there is.
        self._ship_partial_now = True
        self._retry_receiver(logging.WARNING, "receiver-exited",
                             f"pg_receivewal exited with code {code} after {ran:.1f}s")

    def _stop_receiver(self) -> None:
        if self._child is None:
            return
        # SIGINT, not SIGTERM: every pg_receivewal finishes the message it is writing,
        # fsyncs and exits 0 on SIGINT (before 16, SIGTERM kills it on the spot); the open
        # segment keeps its .partial name.
        self._child.send_signal(signal.SIGINT)
        try:
            code = self._child.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._child.kill()
            code = self._child.wait()
            events.emit(log, logging.WARNING, "receiver-killed", pid=self._child.pid,
                        error=f"pg_receivewal did not stop within {_STOP_TIMEOUT:g}s of SIGINT")
        self._relay_output(final=True)
        self._remove_service_file()
        events.emit(log, logging.INFO, "receiver-stopped", pid=self._child.pid, code=code)
        self._child = None

    def _relay_output(self, final: bool = False) -> None:
        """pg_receivewal's messages, one event each (it prefixes them `pg_receivewal: `)."""
        assert self._child is not None and self._child.stderr is not None
        while True:
            try:
                chunk = os.read(self._child.stderr.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._child_output += chunk
        *lines, self._child_output = self._child_output.split(b"\n")
        if final:
            lines.append(self._child_output)
            self._child_output = b""
        if lines:
            # Its first message comes once it has connected (or failed to): libpq has
            # read the service file, and the secrets need not stay on disk.
            self._remove_service_file()
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip().removeprefix("pg_receivewal: ")
            if not line:
                continue
            severity = line.partition(":")[0]
            level = {"error": logging.ERROR, "fatal": logging.ERROR, "warning": logging.WARNING}.get(
                severity, logging.INFO)
            if level == logging.ERROR:
                self._last_error = connection_failure(line)
            events.emit(log, level, "pg_receivewal", message=line)

    # -- the spool ---------------------------------------------------------------------

    def _spool_files(self) -> tuple[list[Path], Path | None]:
        """Complete WAL files in archiving order (history files first: a timeline's
        history must be archived before its segments), and the open `.partial`."""
        try:
            names = os.listdir(self._spool)
        except OSError as exc:
            raise PitrkitError(f"cannot list the spool {self._spool}: {exc.strerror}") from None
        complete, partials = [], []
        for name in names:
            try:
                file = WalFileName.parse(name)
            except PitrkitError:
                continue  # our state and lock files, pg_receivewal's .tmp files
            if file.kind == WalFileKind.PARTIAL:
                partials.append(name)
            elif file.kind in (WalFileKind.SEGMENT, WalFileKind.HISTORY):
                complete.append(file)
        complete.sort(key=lambda file: (file.kind != WalFileKind.HISTORY, file.name))
        return [self._spool / file.name for file in complete], self._spool / max(partials) if partials else None

    def _archive_spool(self, final: bool = False) -> None:
        if not final and time.monotonic() < self._next_archive_attempt:
            return
        complete, partial = self._spool_files()
        for path in complete:
            try:
                pushed = pushed_to_every(self._repositories, path)
            except PitrkitError as exc:
                # Later segments wait: the archive must never have one after a gap.
                self._archive_failed(path.name, exc)
                return
            self._archived_file(path, pushed.summary, pushed.holding)
        self._archive_backoff.reset()
        if partial is not None:
            self._ship_partial(partial, force=final or self._ship_partial_now)

    def _archive_failed(self, name: str, exc: PitrkitError) -> None:
        delay = self._archive_backoff.next()
        self._next_archive_attempt = time.monotonic() + delay
        self._last_error = f"archiving {name}: {exc}"
        events.emit(log, logging.ERROR, "archive-failed", file=name, error=str(exc), retry_in=f"{delay:g}s")

    def _archived_file(self, path: Path, summary: str, holding: list[Repository]) -> None:
        file = WalFileName.parse(path.name)
        if file.kind == WalFileKind.SEGMENT:
            segment = SegmentName.parse(file.name, path.stat().st_size)
            # The full segment wins over any partial of it; deleting the partial only
            # after the segment is durable never leaves the archive without that WAL.
            for repository in holding:
                try:
                    # In the era the segment went to (`pitrkit upgrade`).
                    stored_era(repository.archive, path).delete(wal_key(WalFileName.parse(f"{file.name}.partial")))
                except PitrkitError as exc:
                    events.emit(log, logging.WARNING, "partial-not-deleted", file=f"{file.name}.partial",
                                error=str(exc))
            self._note_archived(segment.end_lsn)
            self._segments_archived += 1
        # Only once the push is durable. A crash before this unlink (or before it reaches
        # the disk) leaves the file to be pushed again, which is an identical duplicate.
        path.unlink()
        events.emit(log, logging.INFO, "archived", file=file.name, detail=summary)

    def _ship_partial(self, path: Path, force: bool) -> None:
        """Ship the open segment as `<segment>.partial` when it changed and is due."""
        try:
            status = path.stat()
        except FileNotFoundError:
            return  # completed meanwhile: archived as a full segment next round
        shipped = (path.name, status.st_mtime_ns)
        due = time.monotonic() - self._last_partial_ship >= self._settings.partial_interval
        if not force and (shipped == self._shipped_partial or not due):
            return
        # What pg_receivewal had reported written before the file is read is surely in
        # what is read: the health figure for what this shipment archives.
        received = self._received
        if not _holds_wal(path):
            return  # just created: pg_receivewal has not written its first page yet
        self._last_partial_ship = time.monotonic()
        try:
            summary = pushed_to_every(self._repositories, path).summary
        except PitrkitError as exc:
            if path.exists():
                self._last_error = f"shipping {path.name}: {exc}"
                events.emit(log, logging.ERROR, "partial-failed", file=path.name, error=str(exc),
                            retry_in=f"{self._settings.partial_interval:g}s")
            return
        self._shipped_partial, self._ship_partial_now = shipped, False
        self._partials_shipped += 1
        segment = SegmentName.parse(path.name.removesuffix(".partial"), status.st_size)
        if received is not None and segment.start_lsn <= received <= segment.end_lsn:
            self._note_archived(received)
        events.emit(log, logging.INFO, "partial-shipped", file=path.name, detail=summary)

    def _note_archived(self, lsn: Lsn) -> None:
        if self._archived is None or lsn > self._archived:
            self._archived, self._archived_at = lsn, datetime.now(UTC)

    # -- health ------------------------------------------------------------------------

    def _observe(self, final: bool = False) -> None:
        """Look at the server (every second), warn about the slot, write the state file."""
        if not final and time.monotonic() - self._last_observed < _OBSERVE_EVERY:
            return
        self._last_observed = time.monotonic()
        try:
            view = self._session.observe(self._settings.slot)
        except PrimaryError as exc:
            if self._reachable:
                events.emit(log, logging.WARNING, "server-unreachable", error=str(exc))
            self._reachable = False
        else:
            self._view, self._reachable = view, True
            self._lag.sample(view.current_lsn)
            if view.received_lsn is not None:
                self._received = view.received_lsn
            self._check_slot(view.slot)
        try:
            write_state(self._spool, self.health(running=not final))
        except OSError as exc:
            events.emit(log, logging.WARNING, "state-not-written", error=exc.strerror)

    def _check_slot(self, slot: SlotState | None) -> None:
        if slot is None or slot.retained_bytes is None:
            return
        limit = self._settings.max_slot_retained_bytes
        if slot.retained_bytes <= limit and slot.wal_status != "unreserved":
            self._retained_warned_at = None
            return
        now = time.monotonic()
        if self._retained_warned_at is not None and now - self._retained_warned_at < _RETAINED_WARNING_EVERY:
            return
        self._retained_warned_at = now
        events.emit(log, logging.WARNING, "slot-retains-too-much", slot=slot.name,
                    retained=human_bytes(slot.retained_bytes), limit=human_bytes(limit), wal_status=slot.wal_status,
                    safe_wal_size=None if slot.safe_wal_size is None else human_bytes(slot.safe_wal_size))

    def health(self, running: bool = True) -> ReceiverHealth:
        view = self._view
        server_lsn = view.current_lsn if view is not None else None
        spool_bytes = spool_segments = 0
        for entry in os.scandir(self._spool):
            try:
                kind = WalFileName.parse(entry.name).kind
            except PitrkitError:
                continue
            spool_bytes += entry.stat().st_size
            spool_segments += kind == WalFileKind.SEGMENT
        return ReceiverHealth(
            observed_at=datetime.now(UTC),
            pid=os.getpid(),
            running=running,
            receiving=self._child is not None,
            server_reachable=self._reachable,
            server_lsn=server_lsn,
            last_received_lsn=self._received,
            last_archived_lsn=self._archived,
            last_archived_at=self._archived_at,
            lag_bytes=None if server_lsn is None or self._archived is None else max(server_lsn - self._archived, 0),
            lag_seconds=self._lag.lag_seconds(self._archived),
            spool_bytes=spool_bytes,
            spool_segments=spool_segments,
            slot=view.slot if view is not None else None,
            receiver_restarts=self._restarts,
            last_error=self._last_error,
            following=None if self._server is None else self._server.host,
            timeline=None if self._server is None else self._server.timeline,
        )

    def _resume_health(self) -> None:
        """Carry the last archived position over from the previous run's state file."""
        try:
            previous = read_state(self._spool)
        except PitrkitError:
            return
        self._archived, self._archived_at = previous.last_archived_lsn, previous.last_archived_at


def _holds_wal(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return any(file.read(16))
    except OSError:
        return False


# Connection parameters whose values are secrets: never in argv.
_SECRET_PARAMETERS = ("password", "sslpassword")
SERVICE_NAME = "pitrkit-receive"


class ReceiverCommand(NamedTuple):
    argv: list[str]
    # The service file's text when conninfo holds secrets (written only while needed).
    service: str | None


def _receiver_command(pg_receivewal: Path, conninfo: str, spool: Path, slot: str,
                      synchronous: bool) -> ReceiverCommand:
    """pg_receivewal's argv, and the service file that carries conninfo's secrets."""
    parameters = conninfo_parameters(conninfo)
    secrets = {name: str(parameters.pop(name)) for name in _SECRET_PARAMETERS if parameters.get(name)}
    service = None
    if secrets:
        if named := parameters.get("service") or os.environ.get("PGSERVICE"):
            # A service file cannot name another service: its own entry is the place.
            raise ConfigError(f"[postgres] conninfo uses service {named!r} and also sets "
                              f"{' and '.join(secrets)}: put {'them' if len(secrets) > 1 else 'it'} in that "
                              "service's entry instead")
        for name, value in secrets.items():
            # libpq's service file keeps a value to the end of its line, less trailing blanks.
            if "\n" in value or "\r" in value or value != value.rstrip():
                raise ConfigError(f"[postgres] conninfo's {name} ends in white space or holds a line break: "
                                  "wal-receive cannot pass it to pg_receivewal without putting it on its "
                                  "command line")
        service = f"[{SERVICE_NAME}]\n" + "".join(f"{name}={value}\n" for name, value in secrets.items())
        parameters["service"] = SERVICE_NAME
    parameters.setdefault("application_name", slot)
    argv = [
        str(pg_receivewal), "--dbname", make_conninfo("", **parameters), "--slot", slot, "--directory", str(spool),
        # Our loop restarts it, with backoff and a log line; its own loop would retry
        # silently every 5 s.
        "--no-loop",
        "--no-password",  # a daemon has nobody to type one
        f"--status-interval={_STATUS_INTERVAL}",
        "--verbose",  # a line per segment and per (re)connection: the event log
    ]
    if synchronous:
        argv.append("--synchronous")
    return ReceiverCommand(argv, service)


def _primary_of_several(conninfo: str) -> str:
    """conninfo, with `target_session_attrs=primary` when it lists several hosts and says
    nothing of it: the sidecar streams from whichever is the primary (libpq tries them in
    order), and after a failover from the promoted one."""
    parameters = conninfo_parameters(conninfo)
    several = any("," in str(parameters.get(key) or "") for key in ("host", "hostaddr"))
    if not several or parameters.get("target_session_attrs") or os.environ.get("PGTARGETSESSIONATTRS"):
        return conninfo
    return make_conninfo(conninfo, target_session_attrs="primary")


def _spool_directory(spool: str | None) -> Path:
    if not spool:
        raise ConfigError("[receive] spool is not set: wal-receive needs a local directory for pg_receivewal "
                          "to write into")
    path = Path(spool)
    # Not created here, like the archive root: a spool on an unmounted file system must
    # be an error, not a directory that vanishes on the next mount.
    if not path.is_dir():
        raise ConfigError(f"[receive] spool {spool} is not a directory: create it (owned by the user that runs "
                          "wal-receive, mode 0700)")
    return path.absolute()


def _pg_receivewal(bindir: str | None) -> Path:
    if bindir:
        path = Path(bindir) / "pg_receivewal"
        if not os.access(path, os.X_OK):
            raise ConfigError(f"[postgres] bindir {bindir} has no executable pg_receivewal")
        return path
    found = shutil.which("pg_receivewal")
    if found is None:
        raise ConfigError("[postgres] bindir is not set and pg_receivewal is not on PATH: set bindir to the "
                          "directory of the cluster's PostgreSQL binaries")
    return Path(found)


def _lock_spool(spool: Path) -> int:
    """Hold an exclusive lock on the spool for the process's lifetime: two sidecars on one
    spool would archive and remove each other's files mid-push."""
    path = spool / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PitrkitError(f"cannot create {path}: {exc.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "?"
        os.close(descriptor)
        raise RefusedError(f"another pitrkit wal-receive (pid {holder}) is using the spool {spool}") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


# --- logging --------------------------------------------------------------------------


# --- the command ----------------------------------------------------------------------


def command(args: Namespace, config: Config, config_path: Path) -> str:
    spool = _spool_directory(config.receive.spool)
    pg_receivewal = _pg_receivewal(config.postgres.bindir)
    repositories = open_all(config)
    for repository in repositories:
        if repository.required:
            # No archive.json: not an archive, nothing to stream into (`pitrkit init`).
            repository.archive.identity()
    lock = _lock_spool(spool)
    events.log_to_stderr(args.verbose)
    receiver = Receiver(config, repositories, spool, pg_receivewal)
    signal.signal(signal.SIGTERM, receiver.stop)
    signal.signal(signal.SIGINT, receiver.stop)
    try:
        return receiver.run()
    finally:
        os.close(lock)

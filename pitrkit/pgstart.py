"""`pitrkit restore --start`: start PostgreSQL on the restored directory and wait until
recovery reaches its target, or report why it never will.

The server is started with `pg_ctl` on a port and socket directory of our choosing and
logs to `<data dir>/log/restore.log`. Nothing here puts a time limit on recovery: a
large restore may replay for hours. We wait as long as the postmaster is alive; when it
dies before the target, the log says why (e.g. "recovery ended before configured
recovery target was reached"), and that line is the error.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.localpg import free_port
from pitrkit.progress import Progress
from pitrkit.wal import Lsn

LOG_DIR = "log"
LOG_FILE = "restore.log"
# Seconds between looks at the server. One look is a query on an open connection (well
# under a millisecond), and every look skipped after the promotion is time the caller
# waits for nothing: measured, a 0.5 s cap cost 0.25 s of a 5 s restore.
_POLL_FIRST = 0.02
_POLL_MAX = 0.05
# The postmaster writes postmaster.pid right after reading its configuration; if that
# has not happened by then, it is not starting. This bounds start-up, never recovery.
_PID_FILE_WAIT = 60.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
# SQLSTATEs that mean the server will not let us in at all: class 28 (invalid
# authorization: pg_hba, password) and 3D000 (no database "postgres"). Anything else is
# passing: starting up or not yet consistent (57P03), shutting down at the target
# (57P01), a connection lost as the postmaster exits; the next look tells which.
_REFUSED = ("28", "3D000")
# For this run only: every server message in our log file, in English whatever the
# restored configuration says, because we read the log to tell a clean stop at the
# target from a failure.
_SERVER_OPTIONS = "-c lc_messages=C -c logging_collector=off -c log_destination=stderr"
_LOG_PROBLEM = re.compile(r"\b(?:FATAL|PANIC):\s+(.*)")
# FATALs of client connections (ours among them), turned away while the server starts
# or recovers, or ended by a shutdown (recovery_target_action = shutdown, say): they say
# nothing about recovery.
_CLIENT_FATALS = ("the database system is", "terminating connection due to administrator command")


class RecoveryFailed(PitrkitError):
    """The server stopped before reaching the target, or could not be watched."""

    exit_code = 1


class Server(msgspec.Struct, kw_only=True, frozen=True):
    data_dir: Path
    bindir: Path
    port: int
    socket_dir: Path
    log: Path


class RecoveryResult(msgspec.Struct, kw_only=True, frozen=True):
    state: Literal["promoted", "paused", "shut down"]
    lsn: Lsn | None  # the last WAL location replayed, when the server could say
    last_transaction: datetime | None
    timeline: int | None
    seconds: float
    stop_line: str | None = None  # the log's "recovery stopping ..." line, if any


def find_bindir(configured: str | None, pg_version: int) -> Path:
    """`[postgres] bindir`, else the Debian layout for the backup's major; it must hold
    the same major as the backup (a data directory only starts under its own major)."""
    major = pg_version // 10000
    bindir = Path(configured) if configured else Path(f"/usr/lib/postgresql/{major}/bin")
    postgres = bindir / "postgres"
    if not (bindir / "pg_ctl").is_file() or not postgres.is_file():
        where = "[postgres] bindir" if configured else f"{bindir} (set [postgres] bindir to choose another)"
        raise RefusedError(f"--start needs PostgreSQL {major}'s pg_ctl and postgres; none in {where}")
    try:
        version = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RefusedError(f"cannot run {postgres}: {exc}") from None
    found = re.search(r"\(PostgreSQL\) (\d+)", version)
    if found is None or int(found[1]) != major:
        raise RefusedError(f"{postgres} is not PostgreSQL {major} (it says {version.strip()!r}); "
                           "the backup starts only under its own major version")
    return bindir


def _socket_dir(data_dir: Path, port: int) -> Path:
    """The data directory when the socket path fits in sun_path, else a private
    temporary directory (left behind, empty, when the server stops)."""
    if len(str(data_dir / f".s.PGSQL.{port}").encode()) <= _MAX_SOCKET_PATH:
        return data_dir
    return Path(tempfile.mkdtemp(prefix="pitrkit-"))


def start(data_dir: Path, bindir: Path, port: int | None) -> Server:
    port = port or free_port()
    log_dir = data_dir / LOG_DIR
    log_dir.mkdir(mode=0o700, exist_ok=True)
    server = Server(data_dir=data_dir, bindir=bindir, port=port, socket_dir=_socket_dir(data_dir, port),
                    log=log_dir / LOG_FILE)
    options = f"-p {port} -k {shlex.quote(str(server.socket_dir))} {_SERVER_OPTIONS}"
    # -W: return at once; waiting is ours, because pg_ctl's wait has a timeout and ends
    # at "ready for connections", which a server in recovery may never reach.
    argv = [str(bindir / "pg_ctl"), "start", "-W", "-D", str(data_dir), "-l", str(server.log), "-o", options]
    try:
        started = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RecoveryFailed(f"cannot run pg_ctl: {exc}") from None
    if started.returncode != 0:
        said = (started.stderr or started.stdout).strip().splitlines()
        raise RecoveryFailed(f"pg_ctl start failed: {said[-1] if said else f'exit {started.returncode}'}")
    return server


class _Watch:
    """What we know of the running server: its pid, once postmaster.pid names it, and
    the log it writes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pid: int | None = None
        self.started = time.monotonic()

    def alive(self) -> bool:
        if self.pid is None:
            try:
                self.pid = int((self.server.data_dir / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                # Not started yet, or already gone: a small recovery can start, reach a
                # shutdown target and exit between two looks.
                log = self.log()
                if (time.monotonic() - self.started > _PID_FILE_WAIT or failure_reason(log)
                        or _SHUT_DOWN in log):
                    return False
                return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log(self) -> str:
        try:
            return self.server.log.read_text(errors="replace")
        except OSError:
            return ""


def failure_reason(log: str) -> str | None:
    """The last FATAL or PANIC message that is about the server, not a client."""
    problems = [problem.strip() for problem in _LOG_PROBLEM.findall(log)
                if not problem.startswith(_CLIENT_FATALS)]
    return problems[-1] if problems else None


_SHUT_DOWN = "database system is shut down"


def stop_line(log: str) -> str | None:
    lines = [line for line in log.splitlines() if "recovery stopping" in line]
    return lines[-1].partition("LOG:")[2].strip() or lines[-1] if lines else None


def wait_for_target(server: Server, action: str, replay_from: Lsn, replay_to: Lsn,
                    timeline_at: Callable[[Lsn], int]) -> RecoveryResult:
    """Wait until the server has promoted (action promote), paused at the target
    (pause) or shut down at the target (shutdown, or pause without hot_standby)."""
    import psycopg

    watch = _Watch(server)
    connection: psycopg.Connection | None = None
    last_lsn: Lsn | None = None
    pause = _POLL_FIRST
    with Progress("replaying WAL", max(replay_to - replay_from, 0)) as progress:
        while True:
            if not watch.alive():
                return _after_exit(server, watch, last_lsn, timeline_at)
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(host=str(server.socket_dir), port=server.port, dbname="postgres",
                                                 autocommit=True, connect_timeout=10)
                result = _look(connection, action, timeline_at)
            except psycopg.OperationalError as exc:
                if connection is not None and not connection.closed:
                    connection.close()
                connection = None
                if exc.sqlstate is not None and exc.sqlstate.startswith(_REFUSED):
                    # The server answers but will not let us in (pg_hba, a missing
                    # "postgres" database): we cannot tell when the target is reached.
                    raise RecoveryFailed(f"cannot connect to the restored server to watch recovery: "
                                         f"{str(exc).strip().splitlines()[-1]}; it keeps running "
                                         f"(port {server.port}, socket {server.socket_dir})") from None
                result = None
            if isinstance(result, RecoveryResult):
                connection.close()  # type: ignore[union-attr]
                return msgspec.structs.replace(result, seconds=time.monotonic() - watch.started)
            if result is not None:
                progress.advance(max(result - max(last_lsn or replay_from, replay_from), 0))
                last_lsn = result
            time.sleep(pause)
            pause = min(pause * 1.5, _POLL_MAX)


def _look(connection, action: str, timeline_at: Callable[[Lsn], int]) -> RecoveryResult | Lsn | None:
    """One look at a server we are connected to: the result when the target is reached,
    else the LSN replay has reached."""
    in_recovery, lsn, last_transaction = connection.execute(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
    ).fetchone()
    replayed = Lsn.parse(lsn) if lsn else None
    if not in_recovery:
        (walfile,) = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        return RecoveryResult(state="promoted", lsn=replayed, last_transaction=last_transaction,
                              timeline=int(walfile[:8], 16), seconds=0)
    if action == "pause":
        query = ("SELECT pg_get_wal_replay_pause_state() = 'paused'" if connection.info.server_version >= 140000
                 else "SELECT pg_is_wal_replay_paused()")
        (paused,) = connection.execute(query).fetchone()
        if paused:
            return RecoveryResult(state="paused", lsn=replayed, last_transaction=last_transaction,
                                  timeline=timeline_at(replayed) if replayed is not None else None, seconds=0)
    return replayed


def _after_exit(server: Server, watch: _Watch, last_lsn: Lsn | None,
                timeline_at: Callable[[Lsn], int]) -> RecoveryResult:
    """The postmaster is gone: a clean stop at the target, or a failure named by the log."""
    log = watch.log()
    stop = stop_line(log)
    if stop is not None and _SHUT_DOWN in log and failure_reason(log) is None:
        return RecoveryResult(state="shut down", lsn=last_lsn, last_transaction=None,
                              timeline=timeline_at(last_lsn) if last_lsn is not None else None,
                              seconds=time.monotonic() - watch.started, stop_line=stop)
    if watch.pid is None and failure_reason(log) is None:
        reason = f"no postmaster.pid after {_PID_FILE_WAIT:.0f} s"
    else:
        reason = failure_reason(log) or "the server exited"
    raise RecoveryFailed(f"PostgreSQL stopped before reaching the recovery target: {reason} (log: {server.log})")

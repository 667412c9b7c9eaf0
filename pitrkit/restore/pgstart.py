"""`pitrkit restore --start`: start PostgreSQL on the restored directory and wait until
recovery reaches its target, or report why it never will.

The postmaster is started directly (as `pg_ctl start` does: its own session, output
appended to `<data dir>/log/restore.log`) on a port and socket directory of our
choosing, so that we know its pid: when it exits, we notice at the next look, and the
server's own words are the error, whether a FATAL line ("recovery ended before
configured recovery target was reached", "could not create any TCP/IP sockets" with the
"Address already in use" before it) or what it said before its logging started ("could
not access the server configuration file"). Nothing here puts a time limit on recovery:
a large restore may replay for hours, and we wait as long as the postmaster is alive.

Whether it "did not start" or "stopped before reaching the recovery target" is what the
postmaster itself last wrote in the status line of its postmaster.pid: the line appears
("starting") just before the postmaster starts recovery, after everything it checks at
start-up (configuration, preloaded libraries, sockets, shared memory). The file appears
before those checks and goes when the postmaster exits, so neither its presence at one
look nor its contents at the last look can tell: we hold it open from the first look
that finds it, and read it through that descriptor once the postmaster is gone (it
rewrites the file in place, and an unlinked file stays readable while open). A recovery
that fails within one look of the start is told by the postmaster's log line about its
startup process instead: there is one only when recovery ran.

When recovery pauses at the target, the relations replay holds locked are reported:
a transaction still open at the target (a DROP TABLE that commits after it) keeps its
AccessExclusiveLock while paused, and any query on those relations waits for it.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal

import msgspec

from pitrkit.config import PostgresConfig
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.postgres.wal import Lsn
from pitrkit.progress import Progress

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
_PID_FILE = "postmaster.pid"
# Far more than postmaster.pid holds: a few numbers, two paths, an address, the status.
_PID_FILE_MAX = 64 * 1024
# postmaster.pid's 8th line (LOCK_FILE_LINE_PM_STATUS in PostgreSQL's pidfile.h), padded
# with spaces to one length so that it is rewritten in place: "starting" just before
# recovery begins, then "ready" (accepting connections, read-only ones in hot standby),
# "standby" (recovery running with hot_standby off) or "stopping".
_PM_STATUS_LINE = 8
_PM_STATUSES = ("starting", "ready", "standby", "stopping")
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
_SERVER_OPTIONS = ("lc_messages=C", "logging_collector=off", "log_destination=stderr")
_LOG_PROBLEM = re.compile(r"\b(?:FATAL|PANIC):\s+(.*)")
# Lines before a FATAL that say which address or port it is about.
_LOG_CAUSE = re.compile(r"\b(?:LOG|HINT):\s+(.*(?:Address already in use|another postmaster).*)")
# What the postmaster prints before its logging starts: "postgres: could not access the
# server configuration file ..." (from PostgreSQL 14; "postgres cannot access" before).
_EARLY_PROBLEM = re.compile(r"^postgres:? (.*)$", re.MULTILINE)
# FATALs of client connections (ours among them), turned away while the server starts
# or recovers, or ended by a shutdown (recovery_target_action = shutdown, say): they say
# nothing about recovery. A connection still authenticating when the shutdown comes is
# ended with "canceling authentication due to timeout" (ProcessInterrupts says so for
# any termination during authentication; CI met it at --action shutdown).
_CLIENT_FATALS = ("the database system is", "terminating connection due to administrator command",
                  "canceling authentication due to timeout")
# The postmaster's words when its startup process (recovery) ends in failure: "exited with
# exit code 1", "was terminated by signal 9: Killed".
_RECOVERY_ENDED = re.compile(r"\bLOG:\s+(?:[0-9A-Z]{5}:\s+)?startup process \(PID \d+\) (?:exited|was terminated)")


class RecoveryFailed(PitrkitError):
    """The server stopped before reaching the target, or could not be watched."""

    exit_code = 1

    def __init__(self, message: str, running: bool = False) -> None:
        super().__init__(message)
        self.running = running  # the server keeps running (and may go on replaying)


class Server(msgspec.Struct, kw_only=True, frozen=True):
    data_dir: Path
    bindir: Path
    port: int
    socket_dir: Path
    log: Path
    process: subprocess.Popen | None = None  # the postmaster, our child
    log_from: int = 0  # where its output begins in `log` (a restored directory may hold an older log)


class LockedRelation(msgspec.Struct, kw_only=True, frozen=True):
    database: str  # name, or "oid N"
    relation: str  # schema-qualified name, or "oid N" when it cannot be resolved
    mode: str


class RecoveryResult(msgspec.Struct, kw_only=True, frozen=True):
    state: Literal["promoted", "paused", "shut down"]
    lsn: Lsn | None  # the last WAL location replayed, when the server could say
    last_transaction: datetime | None
    timeline: int | None
    seconds: float
    stop_line: str | None = None  # the log's "recovery stopping ..." line, if any
    locked: list[LockedRelation] = []  # paused: what replay holds locked


def find_bindir(postgres: PostgresConfig, pg_version: int, chosen: str | None = None) -> Path:
    """The binaries of the backup's major: `chosen` (restore's --bindir), else
    `[postgres.bindirs]` for that major, else `[postgres] bindir`, else the Debian layout
    for the major. After a `pitrkit upgrade`, `bindir` is the new major's, and a backup of
    an earlier era is started from its own major's binaries: a configured `bindir` of
    another major then gives way to the Debian layout's. Whichever is taken must hold the
    backup's major (a data directory only starts under its own major)."""
    major = pg_version // 10000
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if chosen:
        return _holding(Path(chosen), major, "--bindir")
    if (by_major := postgres.bindirs.get(str(major))) is not None:
        return _holding(Path(by_major), major, f"[postgres.bindirs] {major}")
    if postgres.bindir:
        try:
            return _holding(Path(postgres.bindir), major, "[postgres] bindir")
        except RefusedError:
            if not (debian / "postgres").is_file():
                raise
    return _holding(debian, major, f"{debian} (set [postgres.bindirs] \"{major}\" or --bindir to choose another)")


def _holding(bindir: Path, major: int, where: str) -> Path:
    postgres = bindir / "postgres"
    if not (bindir / "pg_ctl").is_file() or not postgres.is_file():
        raise RefusedError(f"--start needs PostgreSQL {major}'s pg_ctl and postgres; none in {where}")
    try:
        version = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RefusedError(f"cannot run {postgres}: {exc}") from None
    found = re.search(r"\(PostgreSQL\) (\d+)", version)
    if found is None or int(found[1]) != major:
        raise RefusedError(f"{postgres} ({where}) is not PostgreSQL {major} (it says {version.strip()!r}); "
                           f"the backup starts only under its own major version")
    return bindir


def socket_dir(data_dir: Path, port: int) -> Path:
    """The data directory when the socket path fits in sun_path, else a private
    temporary directory (left behind, empty, when the server stops)."""
    if len(str(data_dir / f".s.PGSQL.{port}").encode()) <= _MAX_SOCKET_PATH:
        return data_dir
    return Path(tempfile.mkdtemp(prefix="pitrkit-"))


def port_in_use(port: int) -> bool:
    """Whether something listens on `port` (on any IPv4 or IPv6 address), or it cannot be
    bound for another reason: a postmaster would fail on it."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As the postmaster binds: SO_REUSEADDR, so a port in TIME_WAIT is free.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue  # no IPv6 here
            return True
    return False


def free_port() -> int:
    """A TCP port nothing is bound to on 127.0.0.1 right now, as the kernel picks one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_port(port: int | None) -> int:
    """--port, refused when taken, or a free port."""
    if port is None:
        return free_port()
    if not 0 < port < 65536:
        raise RefusedError(f"--port {port}: not a TCP port")
    if port_in_use(port):
        raise RefusedError(f"--port {port} is in use (is another PostgreSQL listening on it?): choose another, "
                           "or leave --port out for a free one")
    return port


def start(data_dir: Path, bindir: Path, port: int, sockets: Path) -> Server:
    log_dir = data_dir / LOG_DIR
    log_dir.mkdir(mode=0o700, exist_ok=True)
    log = log_dir / LOG_FILE
    argv = [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", str(sockets),
            *(part for option in _SERVER_OPTIONS for part in ("-c", option))]
    try:
        with open(log, "ab") as output:
            log_from = output.tell()
            # Its own session, as pg_ctl starts it: a Ctrl-C of restore leaves the
            # server recovering (see restore/engine.py); it outlives this process.
            process = subprocess.Popen(argv, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise RecoveryFailed(f"cannot start {argv[0]}: {exc.strerror}") from None
    return Server(data_dir=data_dir, bindir=bindir, port=port, socket_dir=sockets, log=log, process=process,
                  log_from=log_from)


class _Watch:
    """What we know of the running server: whether the postmaster (our child) still
    runs, its postmaster.pid (held open from the first look that finds it), and the log
    it writes."""

    def __init__(self, server: Server) -> None:
        assert server.process is not None  # started by start()
        self.server = server
        self.process = server.process
        self.pid_file: int | None = None  # a descriptor of our postmaster's postmaster.pid
        self.started = time.monotonic()

    def alive(self) -> bool:
        # Opened before the exit is asked about: a postmaster that exits in between
        # leaves a file that is unlinked, but still ours to read.
        if self.pid_file is None:
            self.pid_file = _open_pid_file(self.server.data_dir / _PID_FILE, self.process.pid)
        if self.process.poll() is not None:
            return False
        # It is written right after the configuration is read: a postmaster still
        # without one is stuck before it could start recovery.
        return self.pid_file is not None or time.monotonic() - self.started < _PID_FILE_WAIT

    def status(self) -> str | None:
        """The status our postmaster last wrote in postmaster.pid; None when it wrote
        none (it never began recovery) or we never held the file."""
        if self.pid_file is None:
            return None
        try:
            text = os.pread(self.pid_file, _PID_FILE_MAX, 0)
        except OSError:
            return None
        return postmaster_status(text.decode(errors="replace"), self.process.pid)

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.pid_file is not None:
            os.close(self.pid_file)
            self.pid_file = None

    def log(self) -> str:
        """What the postmaster has written to the log."""
        try:
            with open(self.server.log, "rb") as log:
                log.seek(self.server.log_from)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


def _open_pid_file(path: Path, pid: int) -> int | None:
    """A read-only descriptor of `path` once it is the postmaster `pid`'s, else None (not
    written yet, half written, or a stale one the postmaster is about to replace)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)  # never wait on a FIFO
    except OSError:
        return None
    try:
        first, newline, _ = os.pread(descriptor, _PID_FILE_MAX, 0).partition(b"\n")
    except OSError:
        first, newline = b"", b""
    if newline and first.strip() == str(pid).encode():
        return descriptor
    os.close(descriptor)
    return None


def began_recovery(status: str | None, log: str) -> bool:
    """Whether an exited postmaster had started recovery, from the status it last wrote
    in postmaster.pid (None when never seen) and its log."""
    return status is not None or _RECOVERY_ENDED.search(log) is not None


def postmaster_status(pid_file: str, pid: int) -> str | None:
    """The status line of postmaster.pid's text `pid_file` when it is the postmaster
    `pid`'s and has one: "starting", "ready", "standby" or "stopping"; None when the
    postmaster never got as far as starting recovery."""
    lines = pid_file.split("\n")
    if len(lines) < _PM_STATUS_LINE or lines[0].strip() != str(pid):
        return None
    status = lines[_PM_STATUS_LINE - 1].strip()
    return status if status in _PM_STATUSES else None


def failure_reason(log: str) -> str | None:
    """The last FATAL or PANIC message that is about the server, not a client, with the
    lines just before it that name the address or port; else what the postmaster said
    before its logging started."""
    lines = log.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        problem = _LOG_PROBLEM.search(lines[index])
        if problem is None or problem[1].strip().startswith(_CLIENT_FATALS):
            continue
        causes = [cause[1].strip() for line in lines[max(index - 5, 0):index] if (cause := _LOG_CAUSE.search(line))]
        return problem[1].strip() + (f" ({'; '.join(causes)})" if causes else "")
    early = _EARLY_PROBLEM.findall(log)
    return early[-1].strip() if early else None


_SHUT_DOWN = "database system is shut down"


def stop_line(log: str) -> str | None:
    """The server's words on where recovery stopped, one line for every target kind:
    "recovery stopping before/after commit of transaction N" (a time or an xid),
    "... at restore point", "... after WAL location (LSN)", "... after reaching
    consistency" (immediate); None when it wrote none (a --latest that reached the end of
    the WAL, a log that went elsewhere)."""
    lines = [line for line in log.splitlines() if "recovery stopping" in line]
    return lines[-1].partition("LOG:")[2].strip() or lines[-1] if lines else None


def wait_for_target(server: Server, action: str, replay_from: Lsn, replay_to: Lsn,
                    timeline_at: Callable[[Lsn], int]) -> RecoveryResult:
    """Wait until the server has promoted (action promote), paused at the target
    (pause) or shut down at the target (shutdown, or pause without hot_standby)."""
    import psycopg

    connection: psycopg.Connection | None = None
    last_lsn: Lsn | None = None
    pause = _POLL_FIRST
    with _Watch(server) as watch, Progress("replaying WAL", max(replay_to - replay_from, 0)) as progress:
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
                                         f"(port {server.port}, socket {server.socket_dir})", running=True) from None
                result = None
            if isinstance(result, RecoveryResult):
                assert connection is not None
                if result.state == "paused":
                    result = msgspec.structs.replace(result, locked=_locked_by_replay(server, connection))
                connection.close()
                return msgspec.structs.replace(result, seconds=time.monotonic() - watch.started,
                                               stop_line=stop_line(watch.log()))
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
    reason = failure_reason(log)
    if watch.process.returncode is None:
        reason = f"the postmaster wrote no postmaster.pid in {_PID_FILE_WAIT:.0f} s; it keeps running (pid " \
                 f"{watch.process.pid})" + (f"; its log says: {reason}" if reason else "")
    elif reason is None:
        said = [line for line in log.splitlines() if line.strip()]
        reason = f"the postmaster exited with status {watch.process.returncode}" + (
            f"; the log ends: {said[-1].strip()}" if said else "")
    if watch.process.returncode is None:
        raise RecoveryFailed(f"PostgreSQL did not start: {reason} (log: {server.log})", running=True)
    if not began_recovery(watch.status(), log):
        # It exited before starting recovery (a library it cannot load, a port in use),
        # however long its postmaster.pid was there to be seen.
        raise RecoveryFailed(f"PostgreSQL did not start: {reason} (log: {server.log})")
    raise RecoveryFailed(f"PostgreSQL stopped before reaching the recovery target: {reason} (log: {server.log})")


def _locked_by_replay(server: Server, connection) -> list[LockedRelation]:
    """The relations the startup process holds locked, by database. pg_locks gives
    database and relation oids; a relation's name is only in its own database's
    pg_class, so each database with locks is asked (with a lock_timeout: reading
    pg_class takes no lock on the relation, but nothing here may hang). A database
    that cannot be asked leaves its relations as oids."""
    import psycopg

    rows = connection.execute("""
        SELECT l.database::bigint, coalesce(d.datname, ''), l.relation::bigint, l.mode
          FROM pg_locks l LEFT JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'relation'
           AND l.pid = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup')
         ORDER BY 2, 3""").fetchall()
    names: dict[tuple[int, int], str] = {}
    for database_oid, database in {(row[0], row[1]) for row in rows}:
        oids = [row[2] for row in rows if row[0] == database_oid]
        if not database:
            continue
        try:
            with psycopg.connect(host=str(server.socket_dir), port=server.port, dbname=database, autocommit=True,
                                 connect_timeout=10, options="-c lock_timeout=1s -c statement_timeout=10s") as there:
                for oid, name in there.execute(
                        "SELECT oid::bigint, relnamespace::regnamespace::text || '.' || quote_ident(relname) "
                        "FROM pg_class WHERE oid = ANY(%s)", (oids,)).fetchall():
                    names[(database_oid, oid)] = name
        except psycopg.Error:
            continue
    return [LockedRelation(database=database or f"oid {database_oid}",
                           relation=names.get((database_oid, relation), f"oid {relation}"), mode=mode)
            for database_oid, database, relation, mode in rows]

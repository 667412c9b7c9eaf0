"""One psycopg session with the PostgreSQL server being backed up: the facts backup-push
checks before it starts, the non-exclusive backup API (pg_backup_start /
pg_backup_stop, pg_start_backup / pg_stop_backup before PostgreSQL 15), and the
configuration files the server reads (`config_paths`, `files_read`), which
backup/config_capture.py copies when they lie outside the data directory. It also tells
the timeline the server is on (`current_timeline`, `configured_server_timeline`), for
ops/status.py and restore/plan.py, and, for a backup of a standby, the positions and the
WAL switch that backup/standby.py asks of the standby and of its primary.

A non-exclusive backup belongs to the session that started it: if the session ends
before pg_backup_stop, the server aborts the backup by itself. So `ServerSession` is held
open for the whole copy, and closing it is how a failed backup is abandoned.

psycopg is imported here only, and only by the commands that talk SQL: wal-push and
wal-fetch never load it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import NamedTuple

import psycopg

from pitrkit.errors import PitrkitError
from pitrkit.postgres.conninfo import connection_failure, conninfo_parameters
from pitrkit.postgres.wal import Lsn

_APPLICATION_NAME = "pitrkit backup-push"


class ServerError(PitrkitError):
    """The server could not be reached, or refused a statement."""


class ServerFacts(NamedTuple):
    version_num: int  # server_version_num, e.g. 150014
    data_directory: str
    system_identifier: int
    wal_segment_size: int
    in_recovery: bool
    archive_mode: str  # off, on or always
    archive_command: str
    archive_library: str  # PostgreSQL 15+; "" before

    @property
    def major(self) -> int:
        return self.version_num // 10000


class BackupLabel(NamedTuple):
    """What restore and the planner need from the backup_label text."""

    start_lsn: Lsn  # the redo point of the backup's checkpoint
    start_segment: str  # the WAL file holding it: the first one the backup needs
    timeline: int


class BackupStop(NamedTuple):
    stop_lsn: Lsn
    label_file: str  # backup_label, for the restored data directory
    tablespace_map: str  # tablespace_map; "" without tablespaces
    label: BackupLabel
    time: datetime  # the server's clock once pg_backup_stop had returned, UTC


_START_WAL = re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$", re.MULTILINE)
_START_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.MULTILINE)


def parse_backup_label(text: str) -> BackupLabel:
    """Parse the backup_label pg_backup_stop returns (see do_pg_backup_start's format)."""
    wal, timeline = _START_WAL.search(text), _START_TIMELINE.search(text)
    if wal is None or timeline is None:
        raise ServerError(f"the server returned a backup_label pitrkit cannot read: {text[:200]!r}")
    return BackupLabel(Lsn.parse(wal[1]), wal[2], int(timeline[1]))


def _one_line(exc: BaseException) -> str:
    # libpq messages span lines ("connection failed: ...\n\tIs the server running ...").
    return " ".join(str(exc).split())


def current_timeline(connection: psycopg.Connection) -> int | None:
    """The timeline the server is on: a primary's current WAL file names it (at once
    after a promotion, before any checkpoint); a standby's is its last checkpoint's, which
    pg_control_checkpoint() tells superusers and pg_monitor. None when it will not say."""
    (in_recovery,) = connection.execute("SELECT pg_is_in_recovery()").fetchone() or (None,)
    if not in_recovery:
        (walfile,) = connection.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone() or ("",)
        return int(walfile[:8], 16) if walfile else None
    try:
        (timeline,) = connection.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone() or (None,)
    except psycopg.errors.InsufficientPrivilege:
        return None
    return timeline


def configured_server_timeline(conninfo: str | None) -> int:
    """The timeline of the server in [postgres] conninfo; ServerError when it cannot be
    asked (the message says why, and never quotes the connection string)."""
    if conninfo is None:
        raise ServerError("[postgres] conninfo is not set")
    conninfo_parameters(conninfo)  # a malformed one is refused without libpq's words
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5,
                             fallback_application_name="pitrkit timeline check") as connection:
            timeline = current_timeline(connection)
    except psycopg.Error as exc:
        raise ServerError(f"cannot connect to PostgreSQL with [postgres] conninfo: "
                          f"{connection_failure(str(exc))}") from None
    if timeline is None:
        raise ServerError("the server in [postgres] conninfo does not say its timeline (a standby, and the role "
                          "lacks pg_monitor)")
    return timeline


class ServerSession:
    """An autocommit session; every failure is a `ServerError` naming what was attempted."""

    def __init__(self, conninfo: str | None, setting: str = "[postgres] conninfo") -> None:
        """`setting`: the configuration key `conninfo` comes from, for messages."""
        conninfo_parameters(conninfo, setting)  # a malformed one is refused without libpq's words
        try:
            # None means libpq's defaults (PGHOST, PGPORT, the default socket ...), as psql.
            # fallback_application_name: a name the DBA sets in conninfo wins.
            self._connection = psycopg.connect(conninfo or "", autocommit=True,
                                               fallback_application_name=_APPLICATION_NAME)
        except psycopg.Error as exc:
            raise ServerError(f"cannot connect to PostgreSQL with {setting}: "
                              f"{connection_failure(str(exc))}") from None
        self._version = self._connection.info.server_version
        # A copy of a large cluster can take hours with this session idle in between: a
        # server-wide idle_session_timeout or statement_timeout must not end it, or the
        # server would abort the backup at the last moment.
        self._execute("disabling statement_timeout for this session", "SET statement_timeout = 0")
        if self._version >= 140000:
            self._execute("disabling idle_session_timeout for this session", "SET idle_session_timeout = 0")

    def _execute(self, what: str, query: str, params: tuple = ()) -> psycopg.Cursor:
        try:
            return self._connection.execute(query, params)
        except psycopg.Error as exc:
            raise ServerError(f"PostgreSQL failed {what}: {_one_line(exc)}") from None

    def _row(self, what: str, query: str, params: tuple = ()) -> tuple:
        row = self._execute(what, query, params).fetchone()
        assert row is not None  # every query passed here returns one row
        return row

    def facts(self) -> ServerFacts:
        row = self._row("reading the server's settings", """
            SELECT current_setting('server_version_num')::int,
                   current_setting('data_directory'),
                   (SELECT system_identifier FROM pg_control_system()),
                   (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                   pg_is_in_recovery(),
                   current_setting('archive_mode'),
                   current_setting('archive_command'),
                   coalesce(current_setting('archive_library', true), '')""")
        version, data_directory, system_identifier, segment_size, in_recovery, mode, command, library = row
        # pg_control_system() shows the unsigned identifier as a signed bigint.
        return ServerFacts(version, data_directory, system_identifier & 0xFFFF_FFFF_FFFF_FFFF, segment_size,
                           in_recovery, mode, command, library)

    def config_paths(self) -> tuple[str, str, str]:
        """config_file, hba_file and ident_file, absolute as the server resolved them."""
        row = self._row("reading the configuration file settings", """
            SELECT current_setting('config_file'), current_setting('hba_file'), current_setting('ident_file')""")
        return row[0], row[1], row[2]

    def files_read(self) -> dict[str, list[str]]:
        """By role (see catalog/documents.ConfigFile), the configuration files the server says it
        reads: pg_file_settings, and pg_hba_file_rules and pg_ident_file_mappings on
        PostgreSQL 16+ (which name include files). These views are for superusers by
        default; without the privilege, backup-push follows the include lines alone."""
        queries = {"include": "SELECT DISTINCT sourcefile FROM pg_file_settings WHERE sourcefile IS NOT NULL"}
        if self._version >= 160000:
            queries["hba_include"] = "SELECT DISTINCT file_name FROM pg_hba_file_rules WHERE file_name IS NOT NULL"
            queries["ident_include"] = ("SELECT DISTINCT file_name FROM pg_ident_file_mappings "
                                        "WHERE file_name IS NOT NULL")
        found: dict[str, list[str]] = {}
        for role, query in queries.items():
            try:
                found[role] = [row[0] for row in self._connection.execute(query).fetchall()]
            except psycopg.errors.InsufficientPrivilege:
                found[role] = []
            except psycopg.Error as exc:
                raise ServerError(f"PostgreSQL failed listing the configuration files it reads: "
                                  f"{_one_line(exc)}") from None
        return found

    def clock(self) -> datetime:
        """The server's clock (not ours: targets are compared with the server's times)."""
        (now,) = self._row("reading the clock", "SELECT clock_timestamp()")
        return now.astimezone(UTC)

    @property
    def connection(self) -> psycopg.Connection:
        """The session's connection, for the queries of other modules of this layer."""
        return self._connection

    def timeline(self) -> int:
        timeline = current_timeline(self._connection)
        if timeline is None:
            raise ServerError("the server does not say which timeline it is on")
        return timeline

    def create_restore_point(self, name: str) -> tuple[Lsn, str, datetime]:
        """pg_create_restore_point(name): the end of its WAL record, the segment that
        record ends in (pg_walfile_name, which names the insert timeline), and the
        server's clock just after. The server refuses during recovery, with wal_level
        minimal, and a name of 64 bytes or more."""
        lsn, segment, made_at = self._row(
            "creating the restore point",
            "SELECT lsn::text, pg_walfile_name(lsn), clock_timestamp() FROM pg_create_restore_point(%s) AS lsn",
            (name,))
        return Lsn.parse(lsn), segment, made_at.astimezone(UTC)

    def tablespace_names(self) -> dict[int, str]:
        cursor = self._execute("listing tablespaces", "SELECT oid::bigint, spcname FROM pg_tablespace")
        return dict(cursor.fetchall())

    def start_backup(self, label: str) -> Lsn:
        """Start a non-exclusive backup with an immediate checkpoint (fast: the DBA asked
        for a backup now, not at the next scheduled checkpoint)."""
        if self._version >= 150000:
            (lsn,) = self._row("starting the backup", "SELECT pg_backup_start(%s, fast => true)::text", (label,))
        else:
            (lsn,) = self._row("starting the backup", "SELECT pg_start_backup(%s, true, false)::text", (label,))
        return Lsn.parse(lsn)

    def stop_backup(self) -> BackupStop:
        """End the backup. wait_for_archive is off: the server would wait forever for a
        broken archive_command; backup-push waits for the archive itself, with a timeout."""
        if self._version >= 150000:
            query = "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)"
        else:
            query = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        lsn, label_file, tablespace_map = self._row("stopping the backup", query)
        return BackupStop(Lsn.parse(lsn), label_file, tablespace_map or "", parse_backup_label(label_file),
                          self.clock())

    def current_wal_lsn(self) -> Lsn:
        """A primary's WAL write position: everything before it has been written."""
        (lsn,) = self._row("reading the WAL position", "SELECT pg_current_wal_lsn()::text")
        return Lsn.parse(lsn)

    def replay_lsn(self) -> Lsn | None:
        """A standby's replay position (pg_last_wal_replay_lsn); None before it replayed anything."""
        (lsn,) = self._row("reading the replay position", "SELECT pg_last_wal_replay_lsn()::text")
        return None if lsn is None else Lsn.parse(lsn)

    def recovery_timeline(self) -> int | None:
        """A standby's minimum recovery point's timeline (pg_control_recovery()): the
        timeline pg_backup_stop ends a backup on, or a later one; None when the role may
        not read it."""
        try:
            (timeline,) = self._connection.execute(
                "SELECT min_recovery_end_timeline FROM pg_control_recovery()").fetchone() or (None,)
        except psycopg.errors.InsufficientPrivilege:
            return None
        except psycopg.Error as exc:
            raise ServerError(f"PostgreSQL failed reading pg_control_recovery(): {_one_line(exc)}") from None
        return timeline or None

    def switch_wal(self) -> Lsn:
        """pg_switch_wal() on a primary: the current segment is complete and will be
        archived (a no-op when nothing was written to it)."""
        (lsn,) = self._row("switching to a new WAL segment", "SELECT pg_switch_wal()::text")
        return Lsn.parse(lsn)

    def slot_active(self, slot: str) -> bool:
        """Whether a client streams from the replication slot `slot` now."""
        (active,) = self._row("reading pg_replication_slots",
                              "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = %s",
                              (slot,))
        return bool(active)

    def archiver_failure(self) -> str:
        """What pg_stat_archiver says about failures, for an error message."""
        failed, last_failed = self._row("reading pg_stat_archiver",
                                        "SELECT failed_count, last_failed_wal FROM pg_stat_archiver")
        return f"pg_stat_archiver: {failed} failed attempts" + (f", the last for {last_failed}" if last_failed else "")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ServerSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What the `wal-receive` sidecar knows about its primary and about itself: the
replication slot, how far behind the server the archive is, and the state file in the
spool that a status view reads.

`PrimarySession` is the sidecar's one SQL session with the primary. It also creates the
slot when it is missing, because that is the same few catalog queries as watching it.
pg_receivewal itself holds the replication connection; this session only reads
`pg_replication_slots`, `pg_stat_replication` and the server's current LSN, and before each
start of pg_receivewal a short replication connection of its own asks the server's
timeline and history (`identify`), to follow a failover.

psycopg is imported here (and by wal/receive.py, which imports this), never by wal-push or
wal-fetch.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo

from pitrkit.errors import PitrkitError
from pitrkit.postgres.conninfo import connection_failure
from pitrkit.postgres.wal import Lsn
from pitrkit.storage import codec
from pitrkit.storage.codec import Time

STATE_FILE = "pitrkit-receive.json"
# How long the LSN-by-time samples behind `lag_seconds` reach back.
_LAG_HISTORY = 3600.0


class SlotState(msgspec.Struct, kw_only=True, frozen=True):
    """The slot as `pg_replication_slots` shows it."""

    name: str
    active: bool
    # The oldest WAL the server keeps for the slot; None until the slot reserved WAL.
    restart_lsn: Lsn | None
    # reserved / extended: WAL is kept; unreserved: max_slot_wal_keep_size is exceeded and
    # the WAL may go at the next checkpoint; lost: it went, and the archive has a gap.
    wal_status: str | None
    # pg_current_wal_lsn() - restart_lsn: the WAL the slot makes the server keep.
    retained_bytes: int | None
    # Bytes that can still be written before the slot is invalidated; None when
    # max_slot_wal_keep_size is -1 (unlimited).
    safe_wal_size: int | None


class ServerView(msgspec.Struct, kw_only=True, frozen=True):
    """One look at the primary."""

    current_lsn: Lsn
    # What pg_receivewal last reported as written to the spool; None while it is not
    # streaming from the slot.
    received_lsn: Lsn | None
    slot: SlotState | None


class ReceiverHealth(msgspec.Struct, kw_only=True, frozen=True):
    """The sidecar's health, as written to `<spool>/pitrkit-receive.json`."""

    observed_at: Time
    pid: int
    # False once the sidecar has stopped (the last state it wrote).
    running: bool
    # pg_receivewal is running (it may still be connecting).
    receiving: bool
    server_reachable: bool
    server_lsn: Lsn | None
    last_received_lsn: Lsn | None
    # The end of the WAL known to be in the archive: a full segment's end, or what had
    # been received when the open segment was last shipped as .partial.
    last_archived_lsn: Lsn | None
    last_archived_at: Time | None
    # server_lsn - last_archived_lsn.
    lag_bytes: int | None
    # Seconds since the last moment all the server's WAL was in the archive.
    lag_seconds: float | None
    # WAL files in the spool, and how many of them are complete segments waiting.
    spool_bytes: int
    spool_segments: int
    slot: SlotState | None
    receiver_restarts: int
    last_error: str | None
    # The server pg_receivewal was last started against (`host:port` as libpq reached
    # it: with several hosts in conninfo, the one that was the primary), and its timeline.
    following: str | None = None
    timeline: int | None = None


class ServerIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """The server a replication connection reaches: where, its timeline, and that
    timeline's history file (None on timeline 1)."""

    host: str
    timeline: int
    history: str | None


class PrimaryError(PitrkitError):
    """The primary could not be reached, or refused a statement."""


class PrimarySession:
    """An autocommit session with the primary, reconnected on demand."""

    def __init__(self, conninfo: str, application_name: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._connection: psycopg.Connection | None = None

    def _execute(self, query: str, params: tuple = ()) -> list[tuple]:
        try:
            if self._connection is None or self._connection.closed:
                # A dead host must not stall the sidecar's loop for libpq's default of forever.
                self._connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10,
                                                   fallback_application_name=self._application_name)
            return self._connection.execute(query, params).fetchall()
        except psycopg.Error as exc:
            self.close()
            raise PrimaryError(connection_failure(str(exc))) from exc

    def identify(self) -> ServerIdentity:
        """What pg_receivewal will find: a replication connection with the same conninfo
        (so the same host of several), IDENTIFY_SYSTEM and TIMELINE_HISTORY, which need
        only the REPLICATION privilege pg_receivewal needs anyway."""
        conninfo = make_conninfo(self._conninfo, replication="true", connect_timeout=10,
                                 fallback_application_name=f"{self._application_name} identify")
        connection = psycopg.pq.PGconn.connect(conninfo.encode())
        try:
            if connection.status != psycopg.pq.ConnStatus.OK:
                raise PrimaryError(connection_failure(connection.get_error_message()))
            timeline = int(self._replication_value(connection, "IDENTIFY_SYSTEM", 1))
            history = None
            if timeline > 1:
                history = self._replication_value(connection, f"TIMELINE_HISTORY {timeline}", 1)
            host = f"{connection.host.decode(errors='replace')}:{connection.port.decode(errors='replace')}"
        except ValueError:
            raise PrimaryError("the server answered IDENTIFY_SYSTEM with a timeline that is not a number") from None
        finally:
            connection.finish()
        return ServerIdentity(host=host, timeline=timeline, history=history)

    @staticmethod
    def _replication_value(connection: psycopg.pq.abc.PGconn, command: str, column: int) -> str:
        result = connection.exec_(command.encode())
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK or result.ntuples != 1 or result.nfields <= column:
            raise PrimaryError(f"{command}: {connection_failure(connection.get_error_message()) or 'no answer'}")
        value = result.get_value(0, column)
        try:
            return (value or b"").decode("ascii")
        except UnicodeDecodeError:
            raise PrimaryError(f"{command}: the server's answer is not ASCII") from None

    def ensure_slot(self, name: str) -> tuple[bool, SlotState]:
        """Create the physical slot `name` if missing, reserving WAL at once (so nothing
        written from now on can be removed before the sidecar has it); (created, state)."""
        existing = self._execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (name,))
        created = False
        if not existing:
            try:
                self._execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
                created = True
            except PrimaryError as exc:
                # Another sidecar (or the DBA) created it between the two statements.
                if not isinstance(exc.__cause__, pg_errors.DuplicateObject):
                    raise
        elif existing[0][0] != "physical":
            raise PitrkitError(f"replication slot {name!r} exists but is a {existing[0][0]} slot; "
                               "wal-receive needs a physical one: set [receive] slot to another name")
        state = self.slot_state(name)
        assert state is not None  # it exists now
        return created, state

    def slot_state(self, name: str) -> SlotState | None:
        rows = self._execute("""
            SELECT active, restart_lsn::text, wal_status,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, safe_wal_size
            FROM pg_replication_slots WHERE slot_name = %s""", (name,))
        if not rows:
            return None
        active, restart_lsn, wal_status, retained, safe = rows[0]
        return SlotState(name=name, active=active, restart_lsn=None if restart_lsn is None else Lsn.parse(restart_lsn),
                         wal_status=wal_status, retained_bytes=retained, safe_wal_size=safe)

    def observe(self, slot: str) -> ServerView:
        # The slot's active_pid is the walsender serving pg_receivewal: its row in
        # pg_stat_replication says what pg_receivewal has written.
        rows = self._execute("""
            SELECT pg_current_wal_lsn()::text,
                   (SELECT r.write_lsn::text FROM pg_stat_replication r JOIN pg_replication_slots s
                      ON r.pid = s.active_pid WHERE s.slot_name = %s)""", (slot,))
        current, received = rows[0]
        return ServerView(current_lsn=Lsn.parse(current),
                          received_lsn=None if received is None else Lsn.parse(received),
                          slot=self.slot_state(slot))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class LagClock:
    """When the server's WAL reached each LSN, sampled: `lag_seconds(archived)` is the
    time since the last sample the archive already covered. PostgreSQL computes
    pg_stat_replication's *_lag the same way, from an LSN-to-time history."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, Lsn]] = collections.deque()

    def sample(self, lsn: Lsn, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._samples.append((now, lsn))
        while self._samples and self._samples[0][0] < now - _LAG_HISTORY:
            self._samples.popleft()

    def lag_seconds(self, archived: Lsn | None, now: float | None = None) -> float | None:
        if not self._samples:
            return None
        now = time.time() if now is None else now
        if archived is not None and archived >= self._samples[-1][1]:
            return 0.0
        covered_at = self._samples[0][0]  # at least this far behind, if nothing is covered
        for at, lsn in self._samples:
            if archived is None or lsn > archived:
                break
            covered_at = at
        return round(max(now - covered_at, 0.0), 1)


def write_state(spool: Path, health: ReceiverHealth) -> None:
    """Replace the state file atomically: a reader sees the old or the new one, whole.
    No fsync: it is a view of the moment, rewritten every few seconds."""
    temporary = spool / f".{STATE_FILE}.tmp"
    temporary.write_bytes(codec.encode(health))
    os.replace(temporary, spool / STATE_FILE)


def read_state(spool: Path) -> ReceiverHealth:
    """The health the sidecar using `spool` last wrote."""
    path = spool / STATE_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PitrkitError(f"cannot read {path}: {exc.strerror} (has pitrkit wal-receive run on this spool?)") from None
    try:
        return codec.decode(data, ReceiverHealth, str(path))
    except ValueError as exc:
        raise PitrkitError(str(exc)) from None

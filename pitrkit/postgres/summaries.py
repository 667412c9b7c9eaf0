"""PostgreSQL 17+'s WAL summaries, as SQL shows them: whether the server summarizes WAL
(`summarize_wal`) and has data checksums, how far its WAL summarizer has got
(`pg_get_wal_summarizer_state()`), which summary files it holds
(`pg_available_wal_summaries()`) and what they say (`pg_wal_summary_contents()`).

Thin, typed queries on a psycopg connection: deciding what the summaries mean for a
backup is backup/changes.py's job. Every value the server returns is checked before it
is handed on; a summary the server cannot read, or one that says something impossible,
raises `SummaryUnreadable`, which the caller can answer by not trusting summaries at all.
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Sequence
from typing import NamedTuple

import psycopg

from pitrkit.errors import UsageError
from pitrkit.postgres.server import ServerError, _one_line
from pitrkit.postgres.wal import Lsn

# The first major with WAL summaries.
SUMMARIES_MAJOR = 17

# What a relation fork, tablespace and block may be (src/include/common/relpath.h:
# MAX_FORKNUM; block numbers are uint32 with InvalidBlockNumber = 0xFFFFFFFF).
MAX_FORK = 3
MAX_OID = 0xFFFF_FFFF
MAX_BLOCK = 0xFFFF_FFFE


class SummaryUnreadable(ServerError):
    """The server could not read a WAL summary, or returned one that cannot be true."""


class SummarizerState(NamedTuple):
    """pg_get_wal_summarizer_state(): summary files exist up to `summarized` (on
    `timeline`); the summarizer has read WAL up to `pending`; `pid` is None when no
    summarizer process runs."""

    timeline: int
    summarized: Lsn
    pending: Lsn
    pid: int | None


class WalSummary(NamedTuple):
    """One file of pg_wal/summaries: the WAL of `timeline` from `start` up to, not
    including, `end`."""

    timeline: int
    start: Lsn
    end: Lsn


class ForkSummary(NamedTuple):
    """What a set of summaries says about one relation fork (relfilenode 0 with fork 0:
    the database as a whole, see backup/changes.py). `limit`: the smallest limit block
    (None: there was none); `blocks`: the modified blocks, ascending, without repeats."""

    tablespace: int
    database: int
    relfilenode: int
    fork: int
    limit: int | None
    blocks: list[int]


def data_checksums(connection: psycopg.Connection) -> bool:
    """Whether pages may carry checksums worth verifying (initdb -k; the default from 18
    on). Anything but "off" counts: while checksums are being switched on or off (a state
    a later release may report), a page whose checksum fails is merely read again and
    stored, never trusted less."""
    (setting,) = _row(connection, "reading data_checksums", "SELECT current_setting('data_checksums')")
    return setting != "off"


def summarize_wal(connection: psycopg.Connection) -> bool:
    """The summarize_wal setting (PostgreSQL 17+)."""
    (setting,) = _row(connection, "reading summarize_wal", "SELECT current_setting('summarize_wal')")
    return _setting("summarize_wal", setting)


def summarizer_state(connection: psycopg.Connection) -> SummarizerState:
    tli, summarized, pending, pid = _row(connection, "reading the WAL summarizer's state", """
        SELECT summarized_tli, summarized_lsn::text, pending_lsn::text, summarizer_pid
        FROM pg_get_wal_summarizer_state()""")
    if not isinstance(tli, int) or not 0 <= tli <= MAX_OID or not (pid is None or isinstance(pid, int) and pid > 0):
        raise SummaryUnreadable(f"pg_get_wal_summarizer_state() returned an impossible state: "
                          f"timeline {tli!r}, pid {pid!r}")
    return SummarizerState(tli, _lsn("pg_get_wal_summarizer_state()", summarized),
                           _lsn("pg_get_wal_summarizer_state()", pending), pid)


def wait_for_summarizer(connection: psycopg.Connection, lsn: Lsn, timeout: float,
                        interval: float = 0.01) -> SummarizerState:
    """Poll until the summaries reach `lsn` (summarized >= lsn), at most `timeout`
    seconds; returns the last state seen, which the caller checks. The summarizer writes
    a summary when it reaches a checkpoint's redo point, so a backup's start LSN (the
    redo point of its checkpoint) is reached exactly once the summarizer has caught up.
    The pause starts short and doubles: the summarizer is usually a few milliseconds
    behind a checkpoint it has just been woken for, and a poll is one cheap query, while
    a first pause of 0.1 s was most of an incremental's wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        state = summarizer_state(connection)
        if state.summarized >= lsn or time.monotonic() >= deadline:
            return state
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 1.0)


def available_summaries(connection: psycopg.Connection) -> list[WalSummary]:
    """The summary files the server holds, by timeline and start."""
    rows = _execute(connection, "listing WAL summaries",
                    "SELECT tli, start_lsn::text, end_lsn::text FROM pg_available_wal_summaries()").fetchall()
    found = []
    for tli, start, end in rows:
        source = "pg_available_wal_summaries()"
        summary = WalSummary(tli, _lsn(source, start), _lsn(source, end))
        if not isinstance(tli, int) or not 0 < tli <= MAX_OID or summary.start >= summary.end:
            raise SummaryUnreadable(f"pg_available_wal_summaries() listed an impossible summary: timeline {tli!r} "
                              f"from {start} to {end}")
        found.append(summary)
    return sorted(found)


# Grouped by fork on the server: a summary of a busy range has millions of rows, and
# this way each fork's blocks come as one bytea of big-endian int8 (int8send), sorted.
_CONTENTS = """
    SELECT c.reltablespace, c.reldatabase, c.relfilenode, c.relforknumber,
           min(c.relblocknumber) FILTER (WHERE c.is_limit_block),
           coalesce(string_agg(int8send(c.relblocknumber), ''::bytea ORDER BY c.relblocknumber)
                    FILTER (WHERE NOT c.is_limit_block), ''::bytea)
    FROM unnest(%s::bigint[], %s::pg_lsn[], %s::pg_lsn[]) AS s(tli, start_lsn, end_lsn),
         LATERAL pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) AS c
    GROUP BY 1, 2, 3, 4"""


def summary_contents(connection: psycopg.Connection, summaries: Sequence[WalSummary]) -> list[ForkSummary]:
    """What `summaries` say together, per relation fork: pg_wal_summary_contents()'s rows
    (relfilenode, reltablespace, reldatabase, relforknumber, relblocknumber,
    is_limit_block) merged the way PostgreSQL merges summaries for an incremental backup
    (the smallest limit block, the union of modified blocks).

    A fork whose only news is its limit block (created, truncated or dropped, no block
    modified after) has a row of its own in every release: pg_wal_summary_contents()
    lacked it until commit ab4129091c, which reached REL_17_STABLE before 17.0."""
    if not summaries:
        return []
    params = ([summary.timeline for summary in summaries], [str(summary.start) for summary in summaries],
              [str(summary.end) for summary in summaries])
    try:
        rows = connection.execute(_CONTENTS, params).fetchall()
    except psycopg.Error as exc:
        if connection.broken or connection.closed:
            raise ServerError(f"PostgreSQL failed reading WAL summaries: {_one_line(exc)}") from None
        # E.g. a summary removed (wal_summary_keep_time) between the listing and now.
        raise SummaryUnreadable(f"PostgreSQL could not read its WAL summaries: {_one_line(exc)}") from None
    return [_fork(row) for row in rows]


def _fork(row: tuple) -> ForkSummary:
    tablespace, database, relfilenode, fork, limit, packed = row
    where = f"fork {fork!r} of relation {tablespace!r}/{database!r}/{relfilenode!r}"
    if not all(isinstance(oid, int) and 0 <= oid <= MAX_OID for oid in (tablespace, database, relfilenode)) \
            or tablespace == 0 or not isinstance(fork, int) or not 0 <= fork <= MAX_FORK \
            or (relfilenode == 0 and fork != 0):
        raise SummaryUnreadable(f"a WAL summary names an impossible relation: {where}")
    if limit is not None and not (isinstance(limit, int) and 0 <= limit <= MAX_BLOCK):
        raise SummaryUnreadable(f"a WAL summary gives {where} the impossible limit block {limit!r}")
    if not isinstance(packed, bytes) or len(packed) % 8:
        raise SummaryUnreadable(f"the server sent the blocks of {where} malformed")
    blocks = array("q", packed)
    if sys.byteorder == "little":  # int8send is big-endian
        blocks.byteswap()
    if blocks and not (0 <= min(blocks) and max(blocks) <= MAX_BLOCK):
        raise SummaryUnreadable(f"a WAL summary lists an impossible block number for {where}")
    # A block changed in several of the summaries is listed once.
    return ForkSummary(tablespace, database, relfilenode, fork, limit, sorted(set(blocks)))


def _execute(connection: psycopg.Connection, what: str, query: str) -> psycopg.Cursor:
    try:
        return connection.execute(query)
    except psycopg.Error as exc:
        raise ServerError(f"PostgreSQL failed {what}: {_one_line(exc)}") from None


def _row(connection: psycopg.Connection, what: str, query: str) -> tuple:
    row = _execute(connection, what, query).fetchone()
    if row is None:
        raise ServerError(f"PostgreSQL returned nothing {what}")
    return row


def _setting(name: str, value: object) -> bool:
    if value not in ("on", "off"):
        raise ServerError(f"the server's {name} is {value!r}, neither on nor off")
    return value == "on"


def _lsn(source: str, text: object) -> Lsn:
    try:
        if isinstance(text, str):
            return Lsn.parse(text)
    except UsageError:
        pass
    raise SummaryUnreadable(f"{source} returned {text!r}, which is not an LSN")

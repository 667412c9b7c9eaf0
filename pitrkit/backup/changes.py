"""Which blocks changed between two LSNs, from PostgreSQL 17+'s WAL summaries, and which
relation fork a data-directory file belongs to.

`summarized_changes` answers for an incremental backup: the blocks of every relation fork
modified between the parent's start and this backup's start, the forks created or
truncated meanwhile (their limit block), and the databases created (or dropped) meanwhile.
When the summaries cannot answer for the whole way it says why (`NotSummarized`), and
the caller reads the pages instead (backup/page_scan.py). It follows what PostgreSQL's
own incremental backup does with the same summaries
(src/backend/backup/basebackup_incremental.c, PrepareForIncrementalBackup and
GetFileBackupMethod).
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

import psycopg

from pitrkit.catalog.documents import BLOCKS_PER_SEGMENT
from pitrkit.postgres import summaries
from pitrkit.postgres.summaries import SUMMARIES_MAJOR, SummaryUnreadable, WalSummary
from pitrkit.postgres.wal import Lsn

DEFAULT_TABLESPACE = 1663  # pg_default: base/
GLOBAL_TABLESPACE = 1664  # pg_global: global/, database 0

_FORKS = {"": 0, "_fsm": 1, "_vm": 2, "_init": 3}
_OID = r"[1-9][0-9]{0,9}"
# A relation segment file: <relfilenode>[_fork][.<segno>] (src/common/relpath.c,
# GetRelationPath; segment 0 has no suffix). Temporary relations (t<backend>_<n>) do not
# match: they are never backed up.
_RELATION = re.compile(rf"(?P<relfilenode>{_OID})(?P<fork>_fsm|_vm|_init)?(?:\.(?P<segno>[1-9][0-9]{{0,9}}))?")
_DATABASE = re.compile(rf"base/(?P<database>{_OID})/(?P<file>[^/]+)")
_GLOBAL = re.compile(r"global/(?P<file>[^/]+)")
_TABLESPACE = re.compile(rf"pg_tblspc/(?P<tablespace>{_OID})/PG_[0-9]+_[0-9]+/(?P<database>{_OID})/(?P<file>[^/]+)")
# Block numbers are uint32: no relation has a segment past this.
_MAX_SEGNO = (1 << 32) // BLOCKS_PER_SEGMENT


class RelationFork(NamedTuple):
    tablespace: int
    database: int  # 0 for the shared catalogs of global/
    relfilenode: int
    fork: int  # 0 main, 1 fsm, 2 vm, 3 init


def relation_of(path: str) -> tuple[RelationFork, int] | None:
    """The relation fork and segment number of a data-directory-relative path, or None
    for anything that is not a segment file of a permanent relation."""
    if match := _DATABASE.fullmatch(path):
        tablespace, database = DEFAULT_TABLESPACE, int(match["database"])
    elif match := _GLOBAL.fullmatch(path):
        tablespace, database = GLOBAL_TABLESPACE, 0
    elif match := _TABLESPACE.fullmatch(path):
        tablespace, database = int(match["tablespace"]), int(match["database"])
    else:
        return None
    relation = _RELATION.fullmatch(match["file"])
    if relation is None:
        return None
    relfilenode, segno = int(relation["relfilenode"]), int(relation["segno"] or 0)
    if max(tablespace, database, relfilenode) > summaries.MAX_OID or segno >= _MAX_SEGNO:
        return None
    return RelationFork(tablespace, database, relfilenode, _FORKS[relation["fork"] or ""]), segno


class ForkChanges(NamedTuple):
    """What the summaries say of one relation fork over the range."""

    blocks: list[int]  # the modified blocks, absolute within the relation, ascending
    limit: int | None  # created or truncated: blocks at or past it never come from the parent

    def between(self, start: int, stop: int) -> list[int]:
        """The modified blocks in [start, stop): one segment file's."""
        return self.blocks[bisect.bisect_left(self.blocks, start):bisect.bisect_left(self.blocks, stop)]


class Summarized(NamedTuple):
    forks: dict[RelationFork, ForkChanges]
    # (tablespace, database) pairs created or dropped in the range: every file in them is
    # copied whole.
    new_databases: set[tuple[int, int]]
    summary_files: int  # how many summary files were read


class NotSummarized(NamedTuple):
    reason: str  # one line, for the DBA


def summarized_changes(connection: psycopg.Connection, major: int, path: list[tuple[int, Lsn, Lsn]],
                       timeout: float) -> Summarized | NotSummarized:
    """The changes over `path`, the (timeline, begin, end) steps from the parent's start
    to this backup's start, from the server's WAL summaries; waits up to `timeout`
    seconds for the summarizer to reach the end. NotSummarized when the summaries cannot
    vouch for every step completely."""
    if major < SUMMARIES_MAJOR:
        return NotSummarized(f"PostgreSQL {major} has no WAL summaries (they came with PostgreSQL 17)")
    steps = [(timeline, begin, end) for timeline, begin, end in path if begin < end]
    if bad := [timeline for timeline, _, _ in steps if not 0 < timeline <= summaries.MAX_OID]:
        return NotSummarized(f"the WAL between the two backups is said to be on timeline {bad[0]}, "
                             "which cannot exist")
    try:
        return _summarized(connection, steps, timeout)
    except SummaryUnreadable as exc:
        return NotSummarized(str(exc))


def _summarized(connection: psycopg.Connection, steps: list[tuple[int, Lsn, Lsn]],
                timeout: float) -> Summarized | NotSummarized:
    if not summaries.summarize_wal(connection):
        return NotSummarized("summarize_wal is off on the server")
    if not steps:
        return Summarized({}, set(), 0)
    end = max(end for _, _, end in steps)
    state = summaries.wait_for_summarizer(connection, end, timeout)
    if state.summarized < end:
        running = "" if state.pid is not None else " (no WAL summarizer process is running)"
        return NotSummarized(f"the WAL summarizer had summarized up to {state.summarized} and not to {end} "
                             f"after {timeout:g} s{running}")
    available = summaries.available_summaries(connection)
    needed: dict[WalSummary, None] = {}  # in order, each once
    for timeline, begin, stop in steps:
        covering = _covering(available, timeline, begin, stop)
        if isinstance(covering, str):
            return NotSummarized(covering)
        needed.update(dict.fromkeys(covering))
    return _merge(summaries.summary_contents(connection, list(needed)), len(needed))


def _covering(available: list[WalSummary], timeline: int, begin: Lsn, end: Lsn) -> list[WalSummary] | str:
    """The summaries of `timeline` that together cover [begin, end) without a gap, or why
    there are none (PostgreSQL's FilterWalSummaries and WalSummariesAreComplete).

    A summary covers [start, end): the blocks modified by the WAL records that begin in
    that range. One that reaches before `begin` or past `end` is used whole: the changes
    it adds outside the range can only make more blocks be stored, never fewer. Before
    the parent's start they are already in the parent's copy; after this backup's start
    replay writes them again."""
    overlapping = sorted(summary for summary in available
                         if summary.timeline == timeline and summary.start < end and summary.end > begin)
    reached = begin
    for count, summary in enumerate(overlapping, 1):
        if summary.start > reached:
            break
        reached = max(reached, summary.end)
        if reached >= end:
            return overlapping[:count]
    if not overlapping:
        return (f"there are no WAL summaries on timeline {timeline} from {begin} to {end} (summarize_wal was off, "
                "or they were older than wal_summary_keep_time)")
    return (f"the WAL summaries on timeline {timeline} from {begin} to {end} have a gap: nothing summarizes "
            f"the WAL from {reached} (summarize_wal was off then, or the summary was removed)")


def _merge(contents: list[summaries.ForkSummary], files: int) -> Summarized:
    forks: dict[RelationFork, ForkChanges] = {}
    new_databases: set[tuple[int, int]] = set()
    for fork in contents:
        if fork.relfilenode == 0:
            # walsummarizer.c, SummarizeDbaseRecord: CREATE DATABASE (XLOG_DBASE_CREATE_FILE_COPY,
            # which copies a template's files without logging them one by one, and
            # XLOG_DBASE_CREATE_WAL_LOG alike) and DROP DATABASE (XLOG_DBASE_DROP) set limit block
            # 0 on relfilenode 0's main fork in that database and tablespace. GetFileBackupMethod
            # then backs up every file of the pair fully when such an entry exists at all.
            new_databases.add((fork.tablespace, fork.database))
            continue
        forks[RelationFork(fork.tablespace, fork.database, fork.relfilenode, fork.fork)] = \
            ForkChanges(fork.blocks, fork.limit)
    return Summarized(forks, new_databases, files)


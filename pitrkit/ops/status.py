"""`pitrkit status`: one look at the archive and the server it serves, judged OK, WARN or
FAIL for monitoring: the `StatusReport` that the command prints and the daemon serves as
its page and /metrics (views/ renders it).

What is looked at, and what it costs: the backup catalog (as the planner reads it),
`catalog/retention.json`, the top of `wal/` and one index or listing per WAL folder
(ArchivedWal; never a listing of every object), the sidecar's state file when
[receive] spool is readable here, and `pg_stat_archiver` when [postgres] conninfo reaches
the server. A server that [postgres] conninfo names but that does not answer is a WARN,
not a FAIL (its archiver may be failing unseen); without conninfo the server is not
asked: status often runs on a host that only sees the archive.

Which timeline is judged. An archive can hold timelines that are not the server's: a
test restore promoted with archiving on archives its own timeline into the same archive,
numbered above the server's. So when the server answers, status asks which timeline it is
on and judges the WAL's freshness and the latest restorable point along that timeline's
history (the head); any timeline off that history is shown as a branch, never as the
head. Without the server, the head is the archive's newest timeline, as restore --latest
would take it.

Which era is judged: the archive's newest (storage/archive.py `Archive.era`), the cluster
that runs now; after a `pitrkit upgrade` the earlier eras' backups and WAL only age, and
`backup-list` and `wal-list` show them.

Levels. FAIL means a restore would not give what the operator expects now: no backup,
the newest backup cannot be restored to the end of the WAL (a gap after it), the server's
archiver failing at this moment, or the newest backup older than twice
[status] backup_max_age. WARN means it soon may: an old backup or WAL, a retention
promise the archive does not keep, an interrupted backup left behind, a stopped sidecar,
an incremental backup whose chain is broken, a configured server that does not answer.

Chains (catalog/chains.py): what restores is judged on the usable backups only; the
newest backup reported is the newest usable one, with its chain's length, and each
backup's share of its data it really stored.

Several repositories (`[[repository]]`, `collect_all`). Each is collected as a report of
its own, with its own retention; the report shown is the reference's, the first required
repository that answered, with one `repository <name>` check per repository and
`repositories`, a `RepositoryStatus` each: reachable or not, its backups, restorable
range and newest WAL, and what it misses of the reference's WAL and backups. A required
repository that cannot be read is a FAIL, an optional one a WARN; a repository's own
checks (backup, wal, restorable, chains, retention, unfinished) count at their level for
a required one and at most WARN for an optional one, as does being behind. With one
repository the report is exactly the one-repository report (`repositories` empty).
"""

from __future__ import annotations

import bisect
import math
from argparse import Namespace
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from pitrkit.catalog.archived_wal import ArchivedWal, TimelineStep, WalChain, on_path
from pitrkit.catalog.backups import last_written, retention_state, survey_backups
from pitrkit.catalog.chains import BrokenChain, chain_length, check_chains
from pitrkit.catalog.documents import BackupSummary, DrillReport, RetentionRun, WalIndexEntry
from pitrkit.config import Config, RepositoryConfig, RetentionConfig
from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.ops.policy import BackupVerdict, RetentionPolicy, select_backups, show_duration
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.progress import human_bytes, human_count, human_seconds, show_time
from pitrkit.storage.archive import DRILLS_PREFIX, Archive, ArchiveMissing, drill_key, stored_at
from pitrkit.storage.repositories import Repository, open_all
from pitrkit.wal import spool

Level = Literal["OK", "WARN", "FAIL"]
_SEVERITY: dict[Level, int] = {"OK": 0, "WARN": 1, "FAIL": 2}
# The server is asked only if it answers quickly: status must not hang on a dead host.
_CONNECT_TIMEOUT_SECONDS = 5
# The hours of WAL per hour the report carries: a week, the page's bar chart.
WAL_HOURS = 7 * 24
# An interrupted backup is told from a running one by its newest object's age; without
# [retention] this is the grace retention would use.


class StatusFailed(PitrkitError):
    """`status` could not read the archive: exit 2, as for a report at FAIL."""

    exit_code = 2


# The newest drill reports status reads (one document each, every status_interval in
# the daemon): the last success is looked for among them.
DRILLS_SHOWN = 10


# --- the report -------------------------------------------------------------------------


class Check(msgspec.Struct, kw_only=True, frozen=True):
    name: str  # backup, wal, restorable, chains, archiver, receiver, retention, unfinished, drill
    level: Level
    message: str


class LastBackup(msgspec.Struct, kw_only=True, frozen=True):
    backup_id: str
    label: str
    timeline: int
    start_time: datetime
    stop_time: datetime  # when it became usable: the oldest instant it restores to
    stop_lsn: Lsn
    age_seconds: float  # since stop_time
    duration_seconds: float
    size_bytes: int  # the files backed up
    stored_bytes: int  # its own objects (an incremental's ancestors' not included)
    backup_type: str = "full"  # or "incremental"
    parent: str | None = None
    chain_length: int = 1  # the backups a restore of it reads: its ancestors and itself
    stored_share: float | None = None  # stored_bytes / size_bytes; None for an empty backup


class StoredShare(msgspec.Struct, kw_only=True, frozen=True):
    """How much of a backup's data it really stored: an incremental stores the changed
    blocks, so its share is small; a full's is its compression ratio."""

    backup_id: str
    backup_type: str  # "full" or "incremental"
    chain_length: int
    size_bytes: int
    stored_bytes: int
    stored_share: float | None  # stored_bytes / size_bytes, rounded to 4 places; None when size is 0


class ArchivedFile(msgspec.Struct, kw_only=True, frozen=True):
    """The newest WAL file of a kind in the archive."""

    name: str
    timeline: int
    # Where its WAL ends: the end of the segment; for a `.partial`, the end of its last
    # valid page (what was received).
    end_lsn: Lsn
    stored_at: datetime | None
    age_seconds: float | None


class Receiver(msgspec.Struct, kw_only=True, frozen=True):
    """The streaming sidecar: the newest `.partial` it shipped, and its state file."""

    newest_partial: ArchivedFile | None
    # None when [receive] spool is not set or the state file could not be read here
    # (`state_problem` says which).
    observed_at: datetime | None = None
    running: bool | None = None
    receiving: bool | None = None
    last_received_lsn: Lsn | None = None
    last_archived_lsn: Lsn | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    last_error: str | None = None
    state_problem: str | None = None
    # The server it streams from (`host:port`: with several hosts in conninfo, the one
    # that was the primary when pg_receivewal last started) and that server's timeline.
    following: str | None = None
    timeline: int | None = None


class Archiver(msgspec.Struct, kw_only=True, frozen=True):
    """`pg_stat_archiver` of the server in [postgres] conninfo."""

    reachable: bool
    problem: str | None = None  # why it was not asked, or could not be
    # The timeline the server is on (its current WAL file's, or in recovery its last
    # checkpoint's); None when not reachable or it would not say.
    timeline: int | None = None
    archived_count: int | None = None
    failed_count: int | None = None
    last_archived_wal: str | None = None
    last_archived_time: datetime | None = None
    last_failed_wal: str | None = None
    last_failed_time: datetime | None = None
    stats_reset: datetime | None = None


class ArchiveSize(msgspec.Struct, kw_only=True, frozen=True):
    wal_files: int  # segments, partials, .backup and history files
    wal_segments: int  # full segments
    wal_stored_bytes: int
    wal_original_bytes: int  # full segments x the segment size
    backups: int
    backups_stored_bytes: int
    backups_size_bytes: int  # the files they hold


class OldestPoint(msgspec.Struct, kw_only=True, frozen=True):
    """The first instant a timeline restores to: the stop of the first usable backup on
    its path."""

    backup_id: str
    time: datetime
    lsn: Lsn


class NewestPoint(msgspec.Struct, kw_only=True, frozen=True):
    """The end of the unbroken WAL after the newest usable backup on the path."""

    segment: str  # the last segment of the run (a `.partial` when only that is stored)
    lsn: Lsn  # its end; for a partial, the end of its last valid page
    stored_at: datetime | None


class Gap(msgspec.Struct, kw_only=True, frozen=True):
    missing_segment: str
    resumes_at: str | None  # the next segment replay along the path could read
    after_backup: str  # the backup whose WAL runs into it
    # Its bounds, for the page's timeline: the WAL ends at `missing_lsn` (the missing
    # segment's start) and resumes at `resumes_lsn` (None: nothing after it); in time, the
    # store times of the segments on either side (None: the storage does not say, or there
    # is none). `restorable_again_at`: the stop of the first usable backup after the gap,
    # from which points restore again (None: no point after the gap restores).
    missing_lsn: Lsn | None = None
    resumes_lsn: Lsn | None = None
    before_stored_at: datetime | None = None
    resumes_stored_at: datetime | None = None
    restorable_again_at: datetime | None = None


class TimelineRange(msgspec.Struct, kw_only=True, frozen=True):
    timeline: int
    oldest: OldestPoint | None  # None: no usable backup lies on its path
    newest: NewestPoint | None
    gaps: list[Gap]
    # Off the server's history (a restored copy's timeline): shown, never judged. False
    # when the server's timeline is not known.
    branch: bool = False


class RetentionHealth(msgspec.Struct, kw_only=True, frozen=True):
    configured: bool
    policy: str  # the rules in a line: "last 2, 7 daily, window 7d"; "" without [retention]
    # What the next `retention apply` would decide for each backup, with the rules that
    # keep it (policy.select_backups); [] without [retention].
    verdicts: list[BackupVerdict]
    shortfalls: list[str]  # promises the archive does not keep
    deleting: list[str]  # backups retention is removing: they no longer count
    last_run: RetentionRun | None
    # The start of [retention] window (now - window): every point since is promised
    # restorable. None without a window.
    window_start: datetime | None = None


class BackupMark(msgspec.Struct, kw_only=True, frozen=True):
    """A finished backup as the page's pictures place it: on its timeline, in time, with
    its sizes."""

    backup_id: str
    backup_type: str  # "full" or "incremental"
    timeline: int  # the timeline it started on
    start_time: datetime
    stop_time: datetime
    start_lsn: Lsn
    stop_lsn: Lsn
    size_bytes: int
    stored_bytes: int
    usable: bool  # False: an incremental whose chain is broken (the chains check says why)


class WalHour(msgspec.Struct, kw_only=True, frozen=True):
    """The WAL segments that reached the archive in one hour, by their store times."""

    hour: datetime  # its start, UTC
    segments: int
    stored_bytes: int


class WalPerHour(msgspec.Struct, kw_only=True, frozen=True):
    """The WAL archived per hour from `since` (an hour's start, UTC) to the report's
    time: only the hours that received any; segments whose store time the storage does
    not say are not counted."""

    since: datetime
    hours: list[WalHour]


class DrillResult(msgspec.Struct, kw_only=True, frozen=True):
    """One stored restore drill (drills/<id>.json), as status shows it."""

    drill_id: str
    finished_at: datetime
    result: Literal["passed", "failed"]
    reason: str | None
    backup_id: str | None
    rto_seconds: float | None
    wal_replayed_bytes: int | None


class DrillHealth(msgspec.Struct, kw_only=True, frozen=True):
    """The restore drills (ops/drill.py): the newest few reports, read from the archive."""

    every: str | None  # [drill] every: how often the daemon runs one; None: only by hand
    max_age: str  # [drill] max_age
    last: DrillResult | None  # the newest drill, whatever its result
    last_success: DrillResult | None  # the newest that passed, among `recent`
    last_success_age_seconds: float | None
    recent: list[DrillResult]  # newest first, at most DRILLS_SHOWN


class MissingFromReference(msgspec.Struct, kw_only=True, frozen=True):
    """What a repository lacks that the reference repository holds: its full WAL segments
    and history files, and its finished backups. When the repository has a retention
    policy, what is older than its own oldest backup is left out: its retention may have
    removed it on purpose."""

    compared_with: str  # the reference repository's name
    wal_files: int
    oldest_wal: str | None  # the oldest missing WAL file, by position in the WAL
    newest_wal: str | None
    backups: list[str]  # oldest first

    @property
    def behind(self) -> bool:
        return bool(self.wal_files or self.backups)


class SpoolStatus(msgspec.Struct, kw_only=True, frozen=True):
    """An optional repository's durable spool: the WAL waiting locally for it. Its place
    comes from the configuration; the figures of what waits from the spool itself
    (wal/spool.py's `state`), None where this user or host cannot read it."""

    directory: str  # <[[repository]] spool>/<name>/
    max_bytes: int  # spool_max
    files_waiting: int | None = None
    bytes_waiting: int | None = None
    behind: bool | None = None  # it reached spool_max: what the repository lacks is copied from a required one
    oldest_waiting: str | None = None


class RepositoryStatus(msgspec.Struct, kw_only=True, frozen=True):
    """One repository of several, as status judged it (see the module's docstring)."""

    name: str
    url: str
    required: bool
    level: Level
    reachable: bool
    problem: str | None = None  # why it could not be read
    reference: bool = False  # the repository the others are compared with
    backups: int = 0
    unfinished_backups: list[str] = []
    last_backup: LastBackup | None = None
    last_wal: ArchivedFile | None = None
    head_timeline: int | None = None
    timelines: list[TimelineRange] = []
    size: ArchiveSize | None = None
    retention_shortfalls: int | None = None  # None without a retention policy
    # Its own checks as its report judged them: backup, wal, restorable, chains, retention, unfinished.
    checks: list[Check] = []
    missing: MissingFromReference | None = None  # None for the reference, and when it was not read
    spool: SpoolStatus | None = None  # None for a repository without a spool


class StatusReport(msgspec.Struct, kw_only=True, frozen=True):
    generated_at: datetime
    archive: str  # the repository url
    overall: Level
    checks: list[Check]
    backups: int
    unfinished_backups: list[str]
    last_backup: LastBackup | None
    last_wal: ArchivedFile | None  # the newest full segment along the head timeline's history
    receiver: Receiver
    archiver: Archiver
    size: ArchiveSize
    timelines: list[TimelineRange]
    retention: RetentionHealth
    # The timeline judged: the server's when it answered, else the archive's newest;
    # None without WAL.
    head_timeline: int | None = None
    # Every finished backup, oldest first: its type, chain length and stored share.
    stored_shares: list[StoredShare] = []
    # Every finished backup, oldest first, placed in time for the page's pictures.
    backup_marks: list[BackupMark] = []
    # The last WAL_HOURS hours; None: the archive holds no WAL.
    wal_per_hour: WalPerHour | None = None
    # The restore drills: None when none ran and none is scheduled.
    drills: DrillHealth | None = None
    # With several repositories, each of them (the reference's figures are the report's
    # own); [] with one.
    repositories: list[RepositoryStatus] = []
    # The archive's era judged, its newest (1 until a `pitrkit upgrade`).
    era: int = 1

    @property
    def exit_code(self) -> int:
        """`pitrkit status` exits 2 at FAIL: monitoring keys on it."""
        return StatusFailed.exit_code if self.overall == "FAIL" else 0


# --- collecting -------------------------------------------------------------------------


def collect(archive: Archive, config: Config, now: datetime | None = None,
            archiver: Archiver | None = None) -> StatusReport:
    """`archiver`: the server as already asked (tests give a known one); None asks it."""
    return _collect(archive, config, now or datetime.now(UTC), archiver).report


class _Collected(NamedTuple):
    """One repository's report, and what comparing it with another needs."""

    report: StatusReport
    wal: ArchivedWal | None


def newest_era(archive: Archive) -> Archive:
    """The archive's newest era, the one the server archives into and is judged on (after
    a `pitrkit upgrade`, the earlier eras' backups and WAL only age); the archive itself
    when it has no archive.json, which the checks then report."""
    try:
        return archive.current()
    except ArchiveMissing:
        return archive


def _collect(archive: Archive, config: Config, now: datetime, archiver: Archiver | None) -> _Collected:
    root, archive = archive, newest_era(archive)  # drill reports are the archive's, at its root
    # A backup retention is removing exists for no reader, even while its manifest is
    # still stored: the survey leaves it out.
    survey = survey_backups(archive)
    finished, unfinished = survey.finished, survey.unfinished
    # What restores is judged on the usable backups: an incremental whose chain is
    # broken restores nothing (the chains check names it).
    chains = check_chains(finished)
    usable = chains.usable
    try:
        wal: ArchivedWal | None = _PartialsReadOnce(archive)
    except ArchiveMissing:
        wal = None  # reported as no WAL, a FAIL: not mounted, or never created
    newest = usable[-1] if usable else None
    last_backup = None if newest is None else _last_backup(newest, now)
    archiver = archiver or _archiver(config)
    history = _server_history(wal, archiver.timeline) if wal else None
    timelines = _timelines(wal, usable, history) if wal else []
    head = _head(timelines)
    last_wal = _last_wal(wal, head.timeline, now) if wal and head else None
    # After the walks: the newest partial is usually where the latest one ended.
    receiver = _receiver(wal, config, now)
    size = _size(wal, finished)
    retention = _retention(config.retention, wal, finished, survey.deleting,
                           retention_state(archive).last_run, timelines, now)
    drills = _drills(root, config, now)

    judged: list[Check | None] = [
        _backup_check(last_backup, config),
        _wal_check(last_wal, receiver, config, now),
        _restorable_check(wal, usable, head),
        _chains_check(finished, chains.broken),
        _timeline_check(wal, archiver, timelines, head, config, now) if wal else None,
        _archiver_check(archiver, config),
        _receiver_check(receiver, config, now),
        _retention_check(retention),
        _unfinished_check(archive, unfinished, config, now),
        _drill_check(drills, config),
    ]
    checks = [check for check in judged if check is not None]
    usable_ids = {b.backup_id for b in usable}
    overall = max((check.level for check in checks), key=_SEVERITY.__getitem__)
    return _Collected(StatusReport(
        generated_at=now, archive=archive.storage.url, era=archive.era_number, overall=overall, checks=checks,
        backups=len(finished),
        unfinished_backups=unfinished, last_backup=last_backup, last_wal=last_wal, receiver=receiver,
        archiver=archiver, size=size, timelines=timelines, retention=retention,
        head_timeline=head.timeline if head else None, stored_shares=[_stored_share(b) for b in finished],
        backup_marks=[_mark(b, b.backup_id in usable_ids) for b in finished],
        wal_per_hour=_wal_per_hour(wal, now) if wal else None,
        drills=drills,
    ), wal)


def newest_drills(archive: Archive, count: int) -> list[DrillReport]:
    """The newest `count` drill reports, newest first: one listing of `drills/` (the names
    sort by start time), then only those documents. One that does not decode, or whose id
    is not its key's, is skipped; a tampered one raises (storage/archive.py)."""
    keys = sorted((info.key for info in archive.list(DRILLS_PREFIX) if info.key.endswith(".json")), reverse=True)
    found: list[DrillReport] = []
    for key in keys:
        if len(found) >= count:
            break
        try:
            report = archive.get_document(key, DrillReport)
        except (ValueError, ObjectNotFound):
            continue
        if drill_key(report.drill_id) == key:
            found.append(report)
    return found


def _drill_result(report: DrillReport) -> DrillResult:
    return DrillResult(drill_id=report.drill_id, finished_at=report.finished_at, result=report.result,
                       reason=report.reason, backup_id=report.backup_id, rto_seconds=report.rto_seconds,
                       wal_replayed_bytes=report.wal_replayed_bytes)


def _drills(archive: Archive, config: Config, now: datetime) -> DrillHealth | None:
    """None when no drill ran and none is scheduled: nothing to show."""
    recent = [_drill_result(each) for each in newest_drills(archive, DRILLS_SHOWN)]
    if not recent and config.drill.every is None:
        return None
    success = next((each for each in recent if each.result == "passed"), None)
    return DrillHealth(every=config.drill.every, max_age=config.drill.max_age, last=recent[0] if recent else None,
                       last_success=success,
                       last_success_age_seconds=_elapsed(success.finished_at, now) if success else None,
                       recent=recent)


def _drill_check(drills: DrillHealth | None, config: Config) -> Check | None:
    """FAIL when the newest drill failed (the archive did not restore, or the copy did not
    pass its checks); WARN when no drill passed within [drill] max_age."""
    if drills is None:
        return None
    if drills.last is None:
        return Check(name="drill", level="WARN", message=f"no restore drill has run yet ([drill] every = "
                     f"{drills.every})")
    last = drills.last
    if last.result == "failed":
        return Check(name="drill", level="FAIL", message=f"the last restore drill {last.drill_id} "
                     f"({show_time(last.finished_at)}) failed: {last.reason}")
    success = drills.last_success
    assert success is not None and drills.last_success_age_seconds is not None  # the newest passed
    age = drills.last_success_age_seconds
    rto = human_seconds(success.rto_seconds) if success.rto_seconds is not None else "unknown"
    words = f"the last restore drill {success.drill_id} passed {human_seconds(age)} ago (RTO {rto})"
    if age > config.drill.max_age_seconds:
        return Check(name="drill", level="WARN", message=f"{words}: older than [drill] max_age {drills.max_age}")
    return Check(name="drill", level="OK", message=words)


def _elapsed(since: datetime, now: datetime) -> float:
    return round((now - since).total_seconds(), 3)


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else _elapsed(moment, now)


def _last_backup(backup: BackupSummary, now: datetime) -> LastBackup:
    return LastBackup(
        backup_id=backup.backup_id, label=backup.label, timeline=backup.timeline, start_time=backup.start_time,
        stop_time=backup.stop_time, stop_lsn=backup.stop_lsn, age_seconds=_elapsed(backup.stop_time, now),
        duration_seconds=_elapsed(backup.start_time, backup.stop_time),
        size_bytes=backup.size, stored_bytes=backup.stored_size, backup_type=backup.kind, parent=backup.parent,
        chain_length=chain_length(backup), stored_share=_share(backup),
    )


def _share(backup: BackupSummary) -> float | None:
    return round(backup.stored_size / backup.size, 4) if backup.size else None


def _mark(backup: BackupSummary, usable: bool) -> BackupMark:
    return BackupMark(backup_id=backup.backup_id, backup_type=backup.kind, timeline=backup.timeline,
                      start_time=backup.start_time, stop_time=backup.stop_time, start_lsn=backup.start_lsn,
                      stop_lsn=backup.stop_lsn, size_bytes=backup.size, stored_bytes=backup.stored_size,
                      usable=usable)


def _stored_share(backup: BackupSummary) -> StoredShare:
    return StoredShare(backup_id=backup.backup_id, backup_type=backup.kind, chain_length=chain_length(backup),
                       size_bytes=backup.size, stored_bytes=backup.stored_size, stored_share=_share(backup))


class _PartialsReadOnce(ArchivedWal):
    """ArchivedWal reading each `.partial` at most once: the walks of the timelines, the
    restorable check and the last WAL received all end in the newest partial, and a read
    costs a segment's bytes, every status_interval in the daemon."""

    def __init__(self, archive: Archive) -> None:
        super().__init__(archive)
        # Keyed by the listing's entry: a partial re-shipped since (seen by a relist) is
        # another entry, and is read again.
        self._partial_ends: dict[WalIndexEntry, Lsn] = {}

    def partial_end(self, entry: WalIndexEntry) -> Lsn:
        if entry not in self._partial_ends:
            self._partial_ends[entry] = super().partial_end(entry)
        return self._partial_ends[entry]


def _file(entry: WalIndexEntry, timeline: int, end_lsn: Lsn, now: datetime) -> ArchivedFile:
    stored = stored_at(entry.modified)
    return ArchivedFile(name=entry.name, timeline=timeline, end_lsn=end_lsn, stored_at=stored,
                        age_seconds=_age(stored, now))


def _last_wal(wal: ArchivedWal, head: int, now: datetime) -> ArchivedFile | None:
    """The newest segment along the head's history: its own, else its parents' up to
    where it branched off them."""
    for step in reversed(wal.path(head)):
        last = math.inf if step.end is None else step.end // wal.segment_size
        if found := wal.newest_segment(step.timeline, last=last):
            segno, entry = found
            return _file(entry, step.timeline, SegmentName(step.timeline, segno, wal.segment_size).end_lsn, now)
    return None


def _last_received(wal: ArchivedWal, now: datetime) -> ArchivedFile | None:
    """The newest `.partial` the sidecar shipped, ending where its WAL ends."""
    for timeline in reversed(sorted(wal.logs)):
        if found := wal.newest_partial(timeline):
            entry = found[1]
            try:
                return _file(entry, timeline, wal.partial_end(entry), now)
            except PitrkitError:
                # Replaced by its full segment since the listing (last_wal reports that),
                # or unusable: nothing usable was received past the archived WAL.
                return None
    return None


def _receiver(wal: ArchivedWal | None, config: Config, now: datetime) -> Receiver:
    newest_partial = _last_received(wal, now) if wal is not None else None
    if config.receive.spool is None:
        return Receiver(newest_partial=newest_partial, state_problem="[receive] spool is not set")
    # receiver_health imports psycopg: only when a sidecar is configured.
    from pitrkit.wal.receiver_health import read_state

    try:
        health = read_state(Path(config.receive.spool))
    except PitrkitError as exc:
        # The sidecar may run on another host, or as a user whose spool we cannot read.
        return Receiver(newest_partial=newest_partial, state_problem=str(exc))
    return Receiver(
        newest_partial=newest_partial, observed_at=health.observed_at, running=health.running,
        receiving=health.receiving, last_received_lsn=health.last_received_lsn,
        last_archived_lsn=health.last_archived_lsn, lag_bytes=health.lag_bytes, lag_seconds=health.lag_seconds,
        last_error=health.last_error, following=health.following, timeline=health.timeline,
    )


def _archiver(config: Config) -> Archiver:
    conninfo = config.postgres.conninfo
    if conninfo is None:
        return Archiver(reachable=False, problem="[postgres] conninfo is not set")
    # Only when a server is configured does status talk SQL: without one it never loads
    # psycopg (nor postgres/conninfo.py and server.py, which import it).
    import psycopg

    from pitrkit.postgres.conninfo import connection_failure, conninfo_parameters
    from pitrkit.postgres.server import current_timeline

    try:
        conninfo_parameters(conninfo)
    except ConfigError as exc:
        # The report goes to pages, metrics hosts and logs: this message quotes nothing.
        return Archiver(reachable=False, problem=str(exc))
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS,
                             fallback_application_name="pitrkit status") as connection:
            row = connection.execute(
                "SELECT archived_count, failed_count, last_archived_wal, last_archived_time, last_failed_wal, "
                "last_failed_time, stats_reset FROM pg_stat_archiver").fetchone()
            timeline = current_timeline(connection)
    except psycopg.Error as exc:
        return Archiver(reachable=False, problem=connection_failure(str(exc)))
    assert row is not None  # pg_stat_archiver has exactly one row
    archived, failed, last_archived, archived_at, last_failed, failed_at, reset = row
    return Archiver(reachable=True, archived_count=archived, failed_count=failed, last_archived_wal=last_archived,
                    last_archived_time=_utc(archived_at), last_failed_wal=last_failed,
                    last_failed_time=_utc(failed_at), stats_reset=_utc(reset), timeline=timeline)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def _size(wal: ArchivedWal | None, finished: list[BackupSummary]) -> ArchiveSize:
    files = segments = stored = 0
    if wal is not None:
        for info in wal.history_files.values():
            files += 1
            stored += info.size
        for timeline, numbers in wal.logs.items():
            for log_number in numbers:
                folder = wal.folder(timeline, log_number)
                files += len(folder.entries)
                segments += len(folder.segments)
                stored += sum(entry.stored_size for entry in folder.entries)
    return ArchiveSize(
        wal_files=files, wal_segments=segments, wal_stored_bytes=stored,
        wal_original_bytes=segments * (wal.segment_size if wal else 0), backups=len(finished),
        backups_stored_bytes=sum(b.stored_size for b in finished), backups_size_bytes=sum(b.size for b in finished),
    )


def _wal_per_hour(wal: ArchivedWal, now: datetime) -> WalPerHour:
    """Counted from the folders' listings `_size` has already read (store times are in
    them): per timeline, newest folder first, stopping after the first folder that holds
    nothing from the window, since a timeline's folders fill in order. On a large
    archive that is the week's folders and one more per timeline."""
    since = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=WAL_HOURS - 1)
    start = since.timestamp()
    segments: dict[int, int] = {}
    stored: dict[int, int] = {}
    for timeline, numbers in wal.logs.items():
        for log_number in reversed(numbers):
            recent = False
            for entry in wal.folder(timeline, log_number).segments:
                if entry.modified is not None and entry.modified >= start:
                    recent = True
                    hour = min(int((entry.modified - start) // 3600), WAL_HOURS - 1)  # a clock behind the storage's
                    segments[hour] = segments.get(hour, 0) + 1
                    stored[hour] = stored.get(hour, 0) + entry.stored_size
            if not recent:
                break
    return WalPerHour(since=since, hours=[
        WalHour(hour=since + timedelta(hours=hour), segments=segments[hour], stored_bytes=stored[hour])
        for hour in sorted(segments)])


# --- restorable ranges ------------------------------------------------------------------


def _timelines(wal: ArchivedWal, finished: list[BackupSummary], history: set[int] | None) -> list[TimelineRange]:
    """A range per timeline; with the server's `history` known, those off it are branches."""
    ranges = []
    for timeline in wal.timelines:
        if timeline != 1 and timeline not in wal.history_files:
            continue  # no path leads to it: nothing can be restored along it
        found = _timeline_range(wal, timeline, finished)
        if history is not None and timeline not in history:
            found = msgspec.structs.replace(found, branch=True)
        ranges.append(found)
    return ranges


def _server_history(wal: ArchivedWal, server: int | None) -> set[int] | None:
    """The timelines of the server's history: its own and those it branched from. Its
    history file may not be archived yet (just promoted): then every timeline up to its
    own counts, the best the archive can tell."""
    if server is None:
        return None
    try:
        return {step.timeline for step in wal.path(server)}
    except PitrkitError:
        return {timeline for timeline in wal.timelines if timeline <= server}


def _head(timelines: list[TimelineRange]) -> TimelineRange | None:
    """The timeline judged: the newest one on the server's history, or, without the
    server, the archive's newest."""
    return next((t for t in reversed(timelines) if not t.branch), None)


def _timeline_range(wal: ArchivedWal, timeline: int, finished: list[BackupSummary]) -> TimelineRange:
    """Walk the path's WAL from its oldest backup on: each unbroken run restores from the
    first backup it makes consistent to its end; a run ending in a hole is a gap, and the
    next run starts at the first backup after it."""
    path = wal.path(timeline)
    waiting = sorted((b for b in finished if on_path(path, b)), key=lambda b: b.start_lsn)
    oldest: OldestPoint | None = None
    newest: NewestPoint | None = None
    gaps: list[Gap] = []
    restoring: list[BackupSummary] = []  # the backups that start a run and become consistent in it
    while waiting:
        backup = waiting.pop(0)
        chain, end = _replay_from(wal, path, backup)
        if end is not None and end >= backup.stop_lsn:
            restoring.append(backup)
            last = chain.segments[-1]
            if oldest is None:
                oldest = OldestPoint(backup_id=backup.backup_id, time=backup.stop_time, lsn=backup.stop_lsn)
            newest = NewestPoint(segment=last.name, lsn=end, stored_at=stored_at(last.modified))
        # Backups whose WAL starts inside this run share its end: they add nothing.
        covered = [backup, *(b for b in waiting if wal.segno(b.first_segment) <= chain.last_segno)]
        waiting = waiting[len(covered) - 1:]
        # A backup starting inside the hole the previous run ran into finds the same one.
        if chain.missing is not None and chain.gap and not (gaps and gaps[-1].missing_segment == chain.missing):
            gaps.append(_gap(wal, path, chain, chain.missing, covered[-1].backup_id))
    gaps = [msgspec.structs.replace(gap, restorable_again_at=next(
        (b.stop_time for b in restoring if wal.segno(b.first_segment) > wal.segno(gap.missing_segment)), None))
        for gap in gaps]
    return TimelineRange(timeline=timeline, oldest=oldest, newest=newest, gaps=gaps)


def _gap(wal: ArchivedWal, path: list[TimelineStep], chain: WalChain, missing: str, after_backup: str) -> Gap:
    """The hole `chain` ran into, with its bounds in LSN and store time."""
    segno = wal.segno(missing)
    resumes = wal.resumes_at(path, segno + 1)
    before = chain.segments[-1] if chain.segments else None
    resumed = None if resumes is None else _entry_on(wal, path, resumes)
    return Gap(missing_segment=missing, resumes_at=None if resumes is None else wal.name_on(path, resumes),
               after_backup=after_backup, missing_lsn=Lsn(segno * wal.segment_size),
               resumes_lsn=None if resumes is None else Lsn(resumes * wal.segment_size),
               before_stored_at=stored_at(before.modified) if before else None,
               resumes_stored_at=stored_at(resumed.modified) if resumed else None)


def _entry_on(wal: ArchivedWal, path: list[TimelineStep], segno: int) -> WalIndexEntry | None:
    """The stored segment replay along `path` reads for `segno`, if stored."""
    log_number, within = divmod(segno, wal.per_log)
    timeline = wal.serving_timeline(path, segno)
    if log_number not in wal.logs.get(timeline, ()):
        return None
    folder = wal.folder(timeline, log_number)
    position = bisect.bisect_left(folder.numbers, within)
    found = position < len(folder.numbers) and folder.numbers[position] == within
    return folder.segments[position] if found else None


def _replay_from(wal: ArchivedWal, path: list[TimelineStep], backup: BackupSummary) -> tuple[WalChain, Lsn | None]:
    """The unbroken run of WAL from `backup`'s first segment along `path`, and where it
    ends; the end is None when the run stops before the backup's last segment.

    A run ending in a `.partial` ends at the end of its last valid page: one read, as the
    planner does. The sidecar deletes a partial once its full segment is stored, so a
    partial gone between the listing and the read means the folder changed: list it
    again and walk once more."""
    for attempt in (1, 2):
        chain = wal.chain(path, wal.segno(backup.first_segment))
        if chain.last_segno < wal.segno(backup.last_segment):
            return chain, None
        if chain.partial is None:
            return chain, SegmentName.parse(chain.segments[-1].name, wal.segment_size).end_lsn
        try:
            return chain, wal.partial_end(chain.partial)
        except PitrkitError:
            if attempt == 2:
                raise
            name = chain.partial.name
            wal.relist(int(name[:8], 16), wal.segno(name) // wal.per_log)
    raise AssertionError("unreachable")


def _resumes_at(wal: ArchivedWal, path: list[TimelineStep], missing: str) -> str | None:
    """The first segment after `missing` that replay along `path` could read."""
    found = wal.resumes_at(path, wal.segno(missing) + 1)
    return None if found is None else wal.name_on(path, found)


# --- retention --------------------------------------------------------------------------


def _retention(config: RetentionConfig | None, wal: ArchivedWal | None, finished: list[BackupSummary],
               deleting: list[str], last_run: RetentionRun | None, timelines: list[TimelineRange],
               now: datetime) -> RetentionHealth:
    if config is None:
        return RetentionHealth(configured=False, policy="", verdicts=[], shortfalls=[], deleting=deleting,
                               last_run=last_run)
    policy = RetentionPolicy.from_config(config)
    verdicts = select_backups(finished, policy, now)
    shortfalls = []
    oldest_stop = min((b.stop_time for b in finished), default=None)
    # The calendar rules keep one backup per period that has one: fewer than promised
    # means backups were missed, once the archive is old enough to have filled them.
    for rule, promised, span in (("daily", policy.daily, timedelta(days=policy.daily)),
                                 ("weekly", policy.weekly, timedelta(weeks=policy.weekly)),
                                 ("monthly", policy.monthly, timedelta(days=31 * policy.monthly))):
        held = sum(1 for verdict in verdicts for reason in verdict.reasons if reason.startswith(rule + " "))
        if held < promised and oldest_stop is not None and oldest_stop <= now - span:
            shortfalls.append(f"{rule} {promised} promised, but only {held} {_unit(rule, held)} "
                              f"{'has' if held == 1 else 'have'} a backup; the oldest backup is from "
                              f"{show_time(oldest_stop)}")
    if policy.window is not None:
        # Only a usable backup restores the points after a gap.
        shortfalls += _window_shortfalls(wal, policy.window, check_chains(finished).usable, timelines, now)
    return RetentionHealth(configured=True, policy=policy.describe(), verdicts=verdicts, shortfalls=shortfalls,
                           deleting=deleting, last_run=last_run,
                           window_start=None if policy.window is None else now - policy.window)


def _window_shortfalls(wal: ArchivedWal | None, window: timedelta, finished: list[BackupSummary],
                       timelines: list[TimelineRange], now: datetime) -> list[str]:
    """The window promises restorable points, so it is judged against the WAL: a backup
    kept for it is no use if the WAL after it has a hole."""
    promised = f"window {show_duration(window)} promised"
    window_start = now - window
    shortfalls = []
    oldest_stop = min((b.stop_time for b in finished), default=None)
    restorable_from = min((r.oldest.time for r in timelines if r.oldest is not None), default=None)
    if restorable_from is not None and restorable_from > window_start and oldest_stop is not None \
            and oldest_stop <= window_start:
        shortfalls.append(f"{promised} (restorable from {show_time(window_start)}), but the oldest restorable "
                          f"point is {show_time(restorable_from)}")
    if wal is None or not timelines:
        return shortfalls
    # A gap loses the points from it to the stop of the next backup after it (or, without
    # one, every point after it): lost points inside the window break the promise.
    latest = _head(timelines)
    if latest is None:
        return shortfalls
    path = wal.path(latest.timeline)
    on = sorted((b for b in finished if on_path(path, b)), key=lambda b: b.start_lsn)
    for gap in latest.gaps:
        missing = wal.segno(gap.missing_segment)
        after = next((b for b in on if wal.segno(b.first_segment) > missing), None)
        if after is None:
            shortfalls.append(f"{promised}, but segment {gap.missing_segment} is missing: no point after it "
                              "restores")
        elif after.stop_time > window_start:
            shortfalls.append(f"{promised}, but segment {gap.missing_segment} is missing: nothing restores from "
                              f"it to the stop of backup {after.backup_id}, {show_time(after.stop_time)}")
    return shortfalls


def _unit(rule: str, count: int) -> str:
    unit = {"daily": "day", "weekly": "week", "monthly": "month"}[rule]
    return unit if count == 1 else unit + "s"


# --- judging ----------------------------------------------------------------------------


def _backup_check(last: LastBackup | None, config: Config) -> Check:
    if last is None:
        return Check(name="backup", level="FAIL", message="the archive holds no finished backup: nothing can be "
                                                        "restored")
    limit = config.status.backup_max_age_seconds
    said = (f"newest backup {last.backup_id} finished {show_time(last.stop_time)}, "
            f"{human_seconds(last.age_seconds)} ago ({human_bytes(last.size_bytes)}, "
            f"{human_bytes(last.stored_bytes)} stored, took {human_seconds(last.duration_seconds)})")
    if last.age_seconds > 2 * limit:
        return Check(name="backup", level="FAIL", message=f"{said}: more than twice backup_max_age "
                                                          f"{config.status.backup_max_age}")
    if last.age_seconds > limit:
        return Check(name="backup", level="WARN", message=f"{said}: older than backup_max_age "
                                                          f"{config.status.backup_max_age}")
    return Check(name="backup", level="OK", message=said)


def _wal_check(last: ArchivedFile | None, receiver: Receiver, config: Config, now: datetime) -> Check:
    # A partial the sidecar re-ships counts: with streaming, it is the WAL that moves.
    stored = [(f.stored_at, f.name) for f in (last, receiver.newest_partial) if f is not None and f.stored_at]
    if not stored:
        return Check(name="wal", level="WARN" if last is None else "OK",
                     message="the archive holds no WAL" if last is None else
                     f"newest segment {last.name} (the storage does not say when it was stored)")
    stored_at, name = max(stored)
    age = _elapsed(stored_at, now)
    said = f"newest WAL {name} stored {show_time(stored_at)}, {human_seconds(age)} ago"
    if age > config.status.wal_max_age_seconds:
        return Check(name="wal", level="WARN", message=f"{said}: older than wal_max_age {config.status.wal_max_age}"
                                                       " (is the server archiving? archive_timeout set?)")
    return Check(name="wal", level="OK", message=said)


def _restorable_check(wal: ArchivedWal | None, finished: list[BackupSummary], head: TimelineRange | None) -> Check:
    """Whether a restore to the latest point of the head timeline gets everything: its
    newest backup reaches the end of its WAL without a hole."""
    if not finished:
        return Check(name="restorable", level="FAIL", message="no backup: nothing is restorable")
    if wal is None or head is None:
        return Check(name="restorable", level="FAIL", message="the archive holds no WAL: no backup can become "
                                                              "consistent")
    latest = head
    path = wal.path(latest.timeline)
    on = [b for b in finished if on_path(path, b)]
    if not on:
        return Check(name="restorable", level="FAIL",
                     message=f"no backup lies on the path to timeline {latest.timeline}")
    newest_backup = max(on, key=lambda b: b.start_lsn)
    chain, end = _replay_from(wal, path, newest_backup)
    problem = None
    if end is None or end < newest_backup.stop_lsn:
        problem = f"segment {chain.missing} it needs to become consistent is missing"
    elif chain.gap:
        assert chain.missing is not None  # a gap is a missing segment with WAL after it
        resumes = _resumes_at(wal, path, chain.missing)
        problem = f"segment {chain.missing} is missing" + (f"; WAL resumes at {resumes}" if resumes else "")
    if problem is not None:
        return Check(name="restorable", level="FAIL",
                     message=f"the latest point is not restorable: after backup {newest_backup.backup_id} on "
                             f"timeline {latest.timeline}, {problem}")
    assert latest.oldest is not None and latest.newest is not None  # the newest backup restores
    gaps = f"; {len(latest.gaps)} older gap(s)" if latest.gaps else ""
    return Check(name="restorable", level="OK",
                 message=f"timeline {latest.timeline} restorable from {show_time(latest.oldest.time)} to "
                         f"LSN {latest.newest.lsn} ({latest.newest.segment}){gaps}")


def _chains_check(finished: list[BackupSummary], broken: list[BrokenChain]) -> Check:
    """Incrementals that restore nothing: an ancestor of theirs is missing or unusable."""
    incrementals = [b for b in finished if b.parent is not None]
    if broken:
        return Check(name="chains", level="WARN",
                     message="not restorable, their chains are broken: "
                             + "; ".join(f"{each.backup_id} ({each.problem})" for each in broken))
    if not incrementals:
        return Check(name="chains", level="OK", message="no incremental backup")
    longest = max(chain_length(b) for b in incrementals)
    return Check(name="chains", level="OK",
                 message=f"every chain is whole ({len(incrementals)} incremental backup"
                         f"{'' if len(incrementals) == 1 else 's'}, the longest chain {longest} backups)")


def _timeline_check(wal: ArchivedWal, archiver: Archiver, timelines: list[TimelineRange], head: TimelineRange | None,
                    config: Config, now: datetime) -> Check:
    """Which timeline was judged, and the branches beside it. A branch still receiving
    WAL means another server archives into this archive: a WARN."""
    if head is None:
        return Check(name="timeline", level="OK", message="the archive holds no timeline to judge")
    server = archiver.timeline
    if server is None:
        why = "server not asked" if config.postgres.conninfo is None else "server unreachable"
        return Check(name="timeline", level="OK", message=f"judged on timeline {head.timeline}, the archive's newest "
                                                          f"(the server's timeline is unknown: {why})")
    said = f"the server is on timeline {server}"
    if head.timeline != server:
        said += f" (none of its WAL archived yet: judged on timeline {head.timeline}, on its history)"
    branches = [t.timeline for t in timelines if t.branch]
    if not branches:
        return Check(name="timeline", level="OK", message=said)
    said += f"; {_words(branches)} {'is a branch' if len(branches) == 1 else 'are branches'} off its history"
    if max(branches) > head.timeline:
        said += (f" (restore --latest would follow timeline {max(branches)}: use --timeline server for the "
                 "server's)")
    fresh = [t for t in branches if (stored := _last_stored(wal, t)) is not None
             and _elapsed(stored, now) <= config.status.wal_max_age_seconds]
    if fresh:
        return Check(name="timeline", level="WARN",
                     message=f"{said}; {_words(fresh)} received WAL within wal_max_age "
                             f"{config.status.wal_max_age}: another server archives into this archive (a restored "
                             "copy promoted with archiving on? restore test copies with --archive-mode off)")
    return Check(name="timeline", level="OK", message=said)


def _words(timelines: list[int]) -> str:
    return ("timeline " if len(timelines) == 1 else "timelines ") + ", ".join(map(str, timelines))


def _last_stored(wal: ArchivedWal, timeline: int) -> datetime | None:
    """When WAL of `timeline` last reached the archive: its newest segment or partial."""
    stamps = [found[1].modified for found in (wal.newest_segment(timeline), wal.newest_partial(timeline))
              if found is not None and found[1].modified is not None]
    return stored_at(max(stamps)) if stamps else None


def _archiver_check(archiver: Archiver, config: Config) -> Check:
    if not archiver.reachable:
        if config.postgres.conninfo is None:
            return Check(name="archiver", level="OK", message=f"server not asked: {archiver.problem}")
        # A server configured but not answering: its archiver may be failing unseen.
        return Check(name="archiver", level="WARN", message=f"server unreachable through [postgres] conninfo: "
                                                            f"{archiver.problem}")
    failing = archiver.last_failed_time is not None and (
        archiver.last_archived_time is None or archiver.last_failed_time > archiver.last_archived_time)
    said = f"pg_stat_archiver: {archiver.archived_count} archived, {archiver.failed_count} failed"
    if failing:
        return Check(name="archiver", level="FAIL",
                     message=f"{said}; archiving is failing: {archiver.last_failed_wal} failed "
                             f"{show_time(archiver.last_failed_time)}, after the last success "
                             f"{show_time(archiver.last_archived_time)}")
    return Check(name="archiver", level="OK", message=said + (f", last {archiver.last_archived_wal}"
                                                              if archiver.last_archived_wal else ""))


def _receiver_check(receiver: Receiver, config: Config, now: datetime) -> Check:
    if config.receive.spool is None:
        return Check(name="receiver", level="OK", message="no streaming sidecar configured")
    if receiver.state_problem is not None:
        return Check(name="receiver", level="OK", message=f"sidecar state not readable here: "
                                                          f"{receiver.state_problem}")
    if not receiver.running:
        return Check(name="receiver", level="WARN", message=f"the sidecar stopped (its last state, "
                                                            f"{show_time(receiver.observed_at)})"
                     + (f": {receiver.last_error}" if receiver.last_error else ""))
    stale = _age(receiver.observed_at, now)
    if stale is not None and stale > config.status.wal_max_age_seconds:
        return Check(name="receiver", level="WARN",
                     message=f"the sidecar's state is {human_seconds(stale)} old: is it still running?")
    lag = "" if receiver.lag_bytes is None else f", {human_bytes(receiver.lag_bytes)} behind the server"
    return Check(name="receiver", level="OK", message=f"sidecar running, received to {receiver.last_received_lsn}"
                                                      f"{lag}")


def _retention_check(retention: RetentionHealth) -> Check:
    if not retention.configured:
        return Check(name="retention", level="OK", message="no [retention] policy: nothing is removed")
    if retention.shortfalls:
        return Check(name="retention", level="WARN", message="; ".join(retention.shortfalls))
    return Check(name="retention", level="OK", message=f"the policy ({retention.policy}) is kept")


def _unfinished_check(archive: Archive, unfinished: list[str], config: Config, now: datetime) -> Check:
    if not unfinished:
        return Check(name="unfinished", level="OK", message="no unfinished backup")
    grace = (config.retention or RetentionConfig()).unfinished_grace_seconds
    # One listing per unfinished folder: a running backup keeps storing parts.
    stale = []
    for backup_id in unfinished:
        last = last_written(archive, backup_id)
        if last is None or last.timestamp() < now.timestamp() - grace:
            stale.append(backup_id)
    if stale:
        return Check(name="unfinished", level="WARN",
                     message=f"interrupted backups (no manifest, nothing stored for {human_seconds(grace)}): "
                             f"{', '.join(stale)}")
    return Check(name="unfinished", level="OK", message=f"backups in progress: {', '.join(unfinished)}")


# --- several repositories ------------------------------------------------------------


# The checks that judge one repository's content; the others (timeline, archiver,
# receiver, drill) are the server's and the reference's.
_REPOSITORY_CHECKS = ("backup", "wal", "restorable", "chains", "retention", "unfinished")


def collect_all(repositories: Sequence[Repository], config: Config, now: datetime | None = None,
                archiver: Archiver | None = None) -> StatusReport:
    """Every repository's status (the module's docstring); with one, `collect`'s report.
    Raises StatusFailed when no required repository can be read."""
    now = now or datetime.now(UTC)
    if len(repositories) == 1:
        only = repositories[0]
        return _collect(only.archive, config.for_repository(only.settings), now, archiver).report
    archiver = archiver or _archiver(config)
    seen: dict[str, _Collected | PitrkitError] = {}
    for repository in repositories:
        try:
            # An archive that is not there is a repository that cannot be read, never an
            # empty one (collect alone reports it as holding nothing).
            repository.archive.identity()
            seen[repository.name] = _collect(repository.archive, config.for_repository(repository.settings), now,
                                             archiver)
        except PitrkitError as exc:
            seen[repository.name] = exc
    reference = next((each for each in repositories if each.required and isinstance(seen[each.name], _Collected)),
                     None)
    if reference is None:
        raise StatusFailed("no required repository can be read: " + "; ".join(
            f"repository {each.name!r}: {seen[each.name]}" for each in repositories if each.required))
    base = seen[reference.name]
    assert isinstance(base, _Collected)
    states = [_repository_status(each, seen[each.name], base, reference, config) for each in repositories]
    checks = base.report.checks + [_repository_check(state) for state in states]
    return msgspec.structs.replace(base.report, checks=checks, repositories=states,
                                   overall=max((check.level for check in checks), key=_SEVERITY.__getitem__))


def _repository_status(repository: Repository, seen: _Collected | PitrkitError, base: _Collected,
                       reference: Repository, config: Config) -> RepositoryStatus:
    settings = repository.settings
    spooled = None if settings.spool is None else _spool_status(settings)
    unread = RepositoryStatus(name=repository.name, url=repository.archive.storage.url, required=repository.required,
                              spool=spooled, level="FAIL" if repository.required else "WARN", reachable=False)
    if isinstance(seen, PitrkitError):
        return msgspec.structs.replace(unread, problem=str(seen))
    report = seen.report
    own = [check for check in report.checks if check.name in _REPOSITORY_CHECKS]
    missing = None
    if repository is not reference:
        retention = config.for_repository(settings).retention
        missing = missing_from(Held(base.wal, base.report.backup_marks), Held(seen.wal, seen.report.backup_marks),
                               reference.name, horizon=retention is not None)
    levels: list[Level] = [check.level for check in own] + ["WARN" if missing and missing.behind else "OK"]
    if spooled is not None and (spooled.behind or spooled.files_waiting):
        levels.append("WARN")  # WAL the repository does not hold yet, whatever the comparison saw
    level = max(levels, key=_SEVERITY.__getitem__)
    if not repository.required and level == "FAIL":
        level = "WARN"  # an optional repository never fails the status: nothing waits for it
    return msgspec.structs.replace(
        unread, level=level, reachable=True, reference=repository is reference, backups=report.backups,
        unfinished_backups=report.unfinished_backups, last_backup=report.last_backup, last_wal=report.last_wal,
        head_timeline=report.head_timeline, timelines=report.timelines, size=report.size,
        retention_shortfalls=len(report.retention.shortfalls) if report.retention.configured else None,
        checks=own, missing=missing)


def _spool_status(settings: RepositoryConfig) -> SpoolStatus:
    """The spool's place, and what waits in it when it can be read here (status may run
    as a user, or on a host, that cannot read the postgres user's spool)."""
    place = SpoolStatus(directory=str(spool.directory(settings)), max_bytes=settings.spool_max_bytes)
    try:
        now = spool.state(settings)
    except PitrkitError:
        return place
    return msgspec.structs.replace(place, files_waiting=now.waiting, bytes_waiting=now.bytes, behind=now.behind,
                                   oldest_waiting=now.oldest)


class Held(NamedTuple):
    """What a repository holds, as comparing it with another needs it."""

    wal: ArchivedWal | None  # None: it holds no WAL
    backups: list[BackupMark] | list[BackupSummary]  # its finished backups, oldest first

    @classmethod
    def read(cls, archive: Archive) -> Held:
        """Read afresh (verify); status compares what its reports already read."""
        archive = newest_era(archive)
        try:
            wal: ArchivedWal | None = ArchivedWal(archive)
        except ArchiveMissing:
            wal = None
        return cls(wal, survey_backups(archive).finished)


def missing_from(base: Held, held: Held, reference: str, horizon: bool) -> MissingFromReference:
    """The reference's (`base`) WAL files and finished backups that `held` lacks.
    `horizon`: the repository has a retention policy, so what is older than its oldest
    backup may have been removed on purpose and is not counted."""
    have = {backup.backup_id for backup in held.backups}
    oldest = min(held.backups, key=lambda backup: backup.start_lsn, default=None) if horizon else None
    backups = [backup.backup_id for backup in base.backups if backup.backup_id not in have
               and (oldest is None or backup.start_lsn >= oldest.start_lsn)]
    # A segment's position in the WAL is its name past the timeline: a horizon in
    # positions holds across timelines.
    first = None if oldest is None or base.wal is None else SegmentName.containing(
        oldest.timeline, oldest.start_lsn, base.wal.segment_size).name[8:]
    wal = sorted((name for name in _wal_names(base.wal) - _wal_names(held.wal)
                  if first is None or len(name) != 24 or name[8:] >= first), key=_wal_position)
    return MissingFromReference(compared_with=reference, wal_files=len(wal), oldest_wal=wal[0] if wal else None,
                                newest_wal=wal[-1] if wal else None, backups=backups)


def _wal_position(name: str) -> tuple[str, str]:
    """Segments by their place in the WAL (then timeline); history files, named by their
    timeline alone, first."""
    return (name[8:], name[:8]) if len(name) == 24 else ("", name)


def _wal_names(wal: ArchivedWal | None) -> set[str]:
    """The full segments and history files of the archive, from the folders the report
    has already read."""
    if wal is None:
        return set()
    names = {f"{timeline:08X}.history" for timeline in wal.history_files}
    for timeline, numbers in wal.logs.items():
        for log_number in numbers:
            names.update(entry.name for entry in wal.folder(timeline, log_number).segments)
    return names


def _repository_check(state: RepositoryStatus) -> Check:
    role = "required" if state.required else "optional"
    name = f"repository {state.name}"
    if not state.reachable:
        return Check(name=name, level=state.level, message=f"{role}, cannot be read: {state.problem}")
    words = [f"{role}{', the reference' if state.reference else ''}",
             f"{human_count(state.backups, 'backup')}"]
    head = next((t for t in state.timelines if t.timeline == state.head_timeline), None)
    if head is not None and head.oldest is not None and head.newest is not None:
        words.append(f"restorable from {show_time(head.oldest.time)} to LSN {head.newest.lsn}")
    words.append(f"newest WAL {state.last_wal.name}" if state.last_wal else "no WAL")
    missing = state.missing
    if missing is not None and missing.behind:
        lacks = []
        if missing.wal_files:
            lacks.append(f"{human_count(missing.wal_files, 'WAL file')} (oldest {missing.oldest_wal})")
        if missing.backups:
            lacks.append(f"backup{'' if len(missing.backups) == 1 else 's'} {', '.join(missing.backups)}")
        words.append(f"behind {missing.compared_with}: misses {' and '.join(lacks)}")
    words += [f"{check.name}: {check.message}" for check in state.checks if check.level != "OK"]
    return Check(name=name, level=state.level, message="; ".join(words))


# --- the command ----------------------------------------------------------------------


def command_report(args: Namespace, config: Config, config_path: Path) -> StatusReport:
    """`pitrkit status`: the report cli.py prints (views/ renders it)."""
    try:
        return collect_all(open_all(config), config)
    except PitrkitError as exc:
        # An archive that cannot be read is the worst status there is: monitoring keys on
        # exit 2, whatever went wrong underneath.
        raise StatusFailed(f"status FAIL: cannot read the archive: {exc}") from None

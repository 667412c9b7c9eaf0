"""`pitrkit retention apply`: remove what the `[retention]` policy no longer keeps — old
backups, the WAL only they needed, interrupted backups — and, with `--dry-run`, take
that decision without acting on it. Either way the result is a `RetentionReport`
(views/ renders it).

What to keep is ops/policy.py's (pure rules); this module reads the archive, decides what
goes and removes it in an order that keeps every reader safe at every step:

1. Decide from fresh listings: the backup folders and their manifests, every WAL folder
   listed afresh (an index may lag a push; what is deleted must be what is stored), the
   leases. A leased backup is kept, with its chain's ancestors and the WAL its lease's
   replay reads; an incremental whose chain is broken goes.
2. Store `catalog/retention.json` naming the backups to remove (`deleting`), then
   `catalog/backups.json` without them. From here they exist for no reader.
3. List the leases again: a restore that took one since step 1 did not see step 2, so
   what it holds is kept after all (catalog/lease.py has the protocol).
4. Per backup, each incremental before its ancestors (catalog/chains.py): its manifest,
   then its parts. A crash after the manifest leaves a folder that `deleting` still
   names, and without a manifest no reader would use it anyway; a crash between two
   backups never leaves an incremental stored without its parent.
5. WAL, oldest first per timeline: a folder's index (`catalog/wal/<folder>.json`) is
   rewritten or removed before the objects it lists, so that no index names a removed
   segment. History files always stay: they are tiny, and PostgreSQL reads them to pick
   a new timeline's number.
6. `catalog/retention.json` with this run's backups taken out of `deleting` and the
   run's result.

Two runs never overlap: a run holds the catalog lock (`locks/catalog.json`, catalog/lock.py)
from before its first look to its last write, and a second run refuses with one line
naming the holder. (The daemon logs that as a failed retention run; the next backup's
run tries again.) Each run's writes of `catalog/retention.json` still keep any names
they did not put there: a run of an older pitrkit, which takes no lock, may be at work.
The lock's store time is also the storage's "now" that leases are judged by (catalog/lease.py).
A `--dry-run` writes nothing, so takes no lock.

A run that dies midway leaves `deleting` set; the next run removes those backups first,
whatever the policy says now, and decides the rest afresh.

An archive with several eras (`pitrkit upgrade`, storage/archive.py `Archive.era`) is
treated as timelines are: the rules see the backups of every era together (the last N
are the newest N whichever cluster they are of), and each era is then decided and
removed on its own, under its own lock, keeping the WAL its own kept backups need: no
era's WAL is judged by another era's backups. An earlier era none of whose backups is
kept loses all its WAL (but its history files): its cluster is gone, no backup of it will
be taken again, and no restore reads it. The newest era without a kept backup keeps its
WAL, as an archive without backups does.
"""

from __future__ import annotations

import logging
import re
from argparse import Namespace
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple, TypedDict

import msgspec

from pitrkit.catalog import documents, lease, lock
from pitrkit.catalog.archived_wal import ArchivedWal, TimelineStep
from pitrkit.catalog.backups import retention_state, survey_backups
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import (
    BackupCatalog,
    BackupSummary,
    Lease,
    RetentionRun,
    RetentionState,
    WalFolderIndex,
    shown,
)
from pitrkit.config import Config, RetentionConfig
from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.hookspecs import ObjectInfo
from pitrkit.ops import policy
from pitrkit.ops.per_repository import NothingToDo, PerRepository, run_each
from pitrkit.postgres.wal import SegmentName
from pitrkit.progress import show_time
from pitrkit.storage.archive import (
    BACKUP_CATALOG_KEY,
    RETENTION_STATE_KEY,
    Archive,
    backup_prefix,
    log_folder,
    manifest_key,
    wal_index_key,
)
from pitrkit.storage.codec import Time
from pitrkit.storage.repositories import Repository, chosen, open_all

log = logging.getLogger(__name__)

_SEGMENT_FILE = re.compile(r"[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?")

# --- the decision, as --dry-run and --json show it ----------------------------------------


class KeptBackup(msgspec.Struct, kw_only=True, frozen=True):
    backup_id: str
    stop_time: Time | None  # None: a backup an interrupted run was removing, held by a lease
    # The rules that keep it ("last 7", "daily 2026-11-20"), the leases holding it, and
    # the kept backups whose chains need it ("ancestor of B").
    reasons: list[str]
    # "full" or "incremental" and, for an incremental, the backup it was taken against;
    # None when its summary is not read (one an interrupted run was removing).
    backup_type: str | None = None
    parent: str | None = None
    era: int = 1  # the archive's era the backup is of


class RemovedBackup(msgspec.Struct, kw_only=True, frozen=True):
    backup_id: str
    # "backup": a finished backup no rule keeps, or an incremental whose chain is broken;
    # "unfinished": a folder without a manifest past the grace period; "interrupted": one
    # an earlier run decided to remove.
    kind: Literal["backup", "unfinished", "interrupted"]
    why: str
    objects: int
    stored_bytes: int
    # As in KeptBackup: for a finished backup only.
    backup_type: str | None = None
    parent: str | None = None
    era: int = 1


class RemovedWal(msgspec.Struct, kw_only=True, frozen=True):
    """WAL files of one timeline removed for one reason (not necessarily consecutive)."""

    timeline: int
    first: str
    last: str
    files: int
    stored_bytes: int
    why: str
    era: int = 1


class RetentionReport(msgspec.Struct, kw_only=True, frozen=True):
    dry_run: bool
    decided_at: Time
    policy: str  # the rules, e.g. "last 2, 7 daily, window 7d"
    kept: list[KeptBackup]
    removed_backups: list[RemovedBackup]
    removed_wal: list[RemovedWal]
    expired_leases: list[str]  # lapsed leases: ignored, and removed unless dry_run
    stored_bytes: int  # what the removals free (dry run: would free)
    notes: list[str] = []

    @property
    def exit_code(self) -> int:
        """0: the decision is the command's result, acted on or not (a run that cannot
        finish raises instead)."""
        return 0


# --- what is stored, listed afresh --------------------------------------------------------


class _Stored:
    """The archive as this run found it: backups through their manifests, every WAL
    folder listed (never read from its index: what is deleted must be what is stored),
    and the objects of a backup folder listed when it is to go."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        survey = survey_backups(archive)
        self.finished = survey.finished
        self.unfinished = survey.unfinished
        self.interrupted = survey.deleting
        self.wal_folders: dict[tuple[int, int], list[ObjectInfo]] = {}
        self._backup_objects: dict[str, list[ObjectInfo]] = {}
        # No archive.json: ArchiveMissing. An archive that is not there is not an empty
        # one, and retention has nothing to decide on it.
        self.wal = ArchivedWal(archive)
        for timeline, numbers in sorted(self.wal.logs.items()):
            for log_number in numbers:
                self.wal_folders[(timeline, log_number)] = archive.list_folder(log_folder(timeline, log_number)).objects

    def backup_objects(self, backup_id: str) -> list[ObjectInfo]:
        """The folder's objects, listed once per run."""
        if backup_id not in self._backup_objects:
            self._backup_objects[backup_id] = list(self.archive.list(backup_prefix(backup_id)))
        return self._backup_objects[backup_id]


# --- deciding -----------------------------------------------------------------------------


class _WalFile(NamedTuple):
    info: ObjectInfo
    why: str


class _WalFolderRemoval(NamedTuple):
    timeline: int
    log_number: int
    removed: list[_WalFile]  # in key order: oldest first
    remaining: list[ObjectInfo]


class _Decision(NamedTuple):
    report: RetentionReport
    # Finished and interrupted backups to remove: the intent stored before anything goes.
    deleting: list[str]
    # Interrupted removals a lease holds: they stay in `deleting`, untouched, until it lapses.
    held: list[str]
    backups: list[str]  # every backup folder to remove (unfinished ones too), in order
    wal: list[_WalFolderRemoval]  # oldest first per timeline


def _decide(stored: _Stored, rules: policy.RetentionPolicy, grace: timedelta, leases: lease.Leases,
            now: datetime, dry_run: bool, others: Sequence[BackupSummary] = ()) -> _Decision:
    """`others`: the other eras' finished backups, which the rules weigh this era's
    against (module docstring); only this era's are decided."""
    by_id = {backup.backup_id: backup for backup in stored.finished}
    holders: dict[str, list[Lease]] = {}
    for each in leases.active:
        holders.setdefault(each.backup_id, []).append(each)
    # A lease holds its backup and, through policy's ancestor rule, the backup's chain.
    verdicts = [verdict for verdict in policy.select_backups(
        [*stored.finished, *(other for other in others if other.backup_id not in by_id)], rules, now,
        held={backup_id: _lease_words(found) for backup_id, found in holders.items()})
        if verdict.backup_id in by_id]
    broken = check_chains(stored.finished).broken_by_id()
    kept = [KeptBackup(backup_id=verdict.backup_id, stop_time=by_id[verdict.backup_id].stop_time,
                       reasons=verdict.reasons, **_chain_fields(by_id[verdict.backup_id]))
            for verdict in verdicts if verdict.keep]
    held = [backup_id for backup_id in stored.interrupted if backup_id in holders]
    kept += [KeptBackup(backup_id=backup_id, stop_time=None,
                        reasons=["being removed by an interrupted run", *_lease_words(holders[backup_id])])
             for backup_id in held]

    removed: list[RemovedBackup] = []
    # An interrupted run's intent first: those backups are gone for every reader already.
    for backup_id in stored.interrupted:
        if backup_id not in holders:
            removed.append(_removed(stored, backup_id, "interrupted", "an earlier retention run was removing it"))
    # A kept backup at a removed one's point (the full backup-consolidate made of it).
    kept_at = {policy.point_of(by_id[item.backup_id]): item.backup_id for item in kept if item.backup_id in by_id}
    for verdict in verdicts:
        if not verdict.keep:
            backup = by_id[verdict.backup_id]
            why = f"its chain is broken: {broken[backup.backup_id].problem}" if backup.backup_id in broken \
                else f"kept by no rule ({rules.describe()})"
            if (same := kept_at.get(policy.point_of(backup))) is not None and backup.backup_id not in broken:
                why = f"backup {same} restores the same point with a shorter chain"
            removed.append(_removed(stored, verdict.backup_id, "backup", why, backup))
    deleting = [item.backup_id for item in removed]
    for backup_id in stored.unfinished:
        objects = stored.backup_objects(backup_id)
        written = [info.modified for info in objects if info.modified is not None]
        # A running backup keeps writing parts; one whose store times are unknown stays.
        if objects and len(written) == len(objects) and now.timestamp() - max(written) > grace.total_seconds():
            last = show_time(datetime.fromtimestamp(max(written), UTC))
            removed.append(_removed(stored, backup_id, "unfinished", f"unfinished (no manifest), last written {last}"))

    notes: list[str] = []
    unknown = sorted(holders.keys() - by_id.keys())
    if unknown:
        # Which WAL a lease on a half-removed or vanished backup (a restore that refused
        # it and died before dropping its lease) reads cannot be worked out without the
        # backup's summary: keep all of it until the lease lapses.
        notes.append(f"no WAL removed: leases hold {', '.join(map(shown, unknown))}, not a finished backup (being "
                     "removed by an interrupted run, or gone): which WAL their restores read is unknown")
        wal: list[_WalFolderRemoval] = []
    else:
        # Ancestors are kept backups too: the WAL from the oldest of a chain on stays.
        keepers = [by_id[item.backup_id] for item in kept if item.backup_id in by_id]
        wal = _wal_removals(stored, keepers, notes)
    removed_wal = _wal_rows(wal)
    report = RetentionReport(
        dry_run=dry_run, decided_at=now, policy=rules.describe(), kept=kept, removed_backups=removed,
        removed_wal=removed_wal, expired_leases=[each.lease_id for each in leases.expired],
        stored_bytes=sum(item.stored_bytes for item in removed) + sum(item.stored_bytes for item in removed_wal),
        notes=notes,
    )
    return _Decision(report, deleting, held, _children_first(removed, by_id), wal)


def _children_first(removed: list[RemovedBackup], by_id: dict[str, BackupSummary]) -> list[str]:
    """The folders to remove in the order that never leaves a stored incremental without
    its parent, were the run to stop between two: the longest chains first, so that each
    backup goes before its ancestors (whose chains are shorter). Interrupted removals keep
    their place at the head: they exist for no reader already. Otherwise the report's
    order (oldest first)."""
    def depth(item: RemovedBackup) -> int:
        backup = by_id.get(item.backup_id)
        return len(backup.chain) if backup is not None and item.kind == "backup" else -1

    ahead = [item for item in removed if item.kind == "interrupted"]
    rest = sorted((item for item in removed if item.kind != "interrupted"), key=depth, reverse=True)
    return [item.backup_id for item in [*ahead, *rest]]


class _ChainFields(TypedDict):
    backup_type: str
    parent: str | None


def _chain_fields(backup: BackupSummary) -> _ChainFields:
    return {"backup_type": backup.kind, "parent": backup.parent}


def _lease_words(leases: list[Lease]) -> list[str]:
    return [f"leased by {shown(each.holder)} until {show_time(each.expires_at)} (lease {shown(each.lease_id)})"
            for each in leases]


def _removed(stored: _Stored, backup_id: str, kind: Literal["backup", "unfinished", "interrupted"],
             why: str, backup: BackupSummary | None = None) -> RemovedBackup:
    objects = stored.backup_objects(backup_id)
    return RemovedBackup(backup_id=backup_id, kind=kind, why=why, objects=len(objects),
                         stored_bytes=sum(info.size for info in objects),
                         backup_type=None if backup is None else backup.kind,
                         parent=None if backup is None else backup.parent)


def _wal_removals(stored: _Stored, keepers: list[BackupSummary], notes: list[str]) -> list[_WalFolderRemoval]:
    """Per WAL folder, the files no kept backup's replay reads (policy.wal_to_keep), and
    those of abandoned timelines once they are older than every kept backup."""
    wal = stored.wal
    if not keepers:
        ended = _era_ended(stored.archive)
        if ended is None:
            return []  # no backup at all: nothing says which WAL is worth keeping, so all of it is
        return _all_wal(stored, ended)
    paths: dict[int, list[TimelineStep]] = {}
    for timeline in wal.timelines:
        try:
            paths[timeline] = wal.path(timeline)
        except PitrkitError as exc:
            notes.append(f"timeline {timeline}'s WAL is kept: {exc}")
    ranges = policy.wal_to_keep(paths, keepers, wal.segment_size)
    oldest = min(keepers, key=lambda backup: backup.start_time)
    abandoned = {
        timeline: f"abandoned timeline {timeline}: no kept backup replays it, and all of its WAL was stored before "
                  f"the oldest kept backup {oldest.backup_id} started ({show_time(oldest.start_time)})"
        for timeline in paths if timeline not in ranges and _all_stored_before(stored, timeline, oldest.start_time)
    }

    removals = []
    for (timeline, log_number), objects in stored.wal_folders.items():
        if timeline not in paths:
            continue
        removed: list[_WalFile] = []
        remaining: list[ObjectInfo] = []
        for info in objects:
            why = _why_removed(info, timeline, log_number, ranges.get(timeline), abandoned.get(timeline),
                               wal.segment_size)
            if why is None:
                remaining.append(info)
            else:
                removed.append(_WalFile(info, why))
        if removed:
            removals.append(_WalFolderRemoval(timeline, log_number, removed, remaining))
    return removals


def _era_ended(archive: Archive) -> str | None:
    """Why an era's WAL all goes when none of its backups is kept: a later era exists
    (`pitrkit upgrade`), so no backup of this era will ever be taken again and no restore
    reads its WAL. None for the newest era, whose next backup needs its WAL."""
    newest = archive.identity().current_era
    if archive.era_number == newest.era:
        return None
    return (f"era {archive.era_number} has no kept backup, and its cluster was upgraded (era {newest.era} is "
            "newest): no restore reads its WAL")


def _all_wal(stored: _Stored, why: str) -> list[_WalFolderRemoval]:
    """Every WAL file of every folder (history files stay, as everywhere)."""
    removals = []
    for (timeline, log_number), objects in stored.wal_folders.items():
        own = f"{timeline:08X}{log_number:08X}"
        removed = [_WalFile(info, why) for info in objects
                   if _SEGMENT_FILE.fullmatch(_name(info)) and _name(info)[:16] == own]
        if removed:
            gone = {file.info.key for file in removed}
            removals.append(_WalFolderRemoval(timeline, log_number, removed,
                                              [info for info in objects if info.key not in gone]))
    return removals


def _all_stored_before(stored: _Stored, timeline: int, moment: datetime) -> bool:
    """Whether every WAL file of `timeline` is known to have been stored before `moment`
    (a file whose store time the storage does not say could be new)."""
    times = [info.modified for (owner, _), objects in stored.wal_folders.items() if owner == timeline
             for info in objects]
    return all(stamp is not None and stamp < moment.timestamp() for stamp in times)


def _why_removed(info: ObjectInfo, timeline: int, log_number: int, kept: list[policy.SegmentRange] | None,
                 abandoned: str | None, segment_size: int) -> str | None:
    """Why a file of WAL folder (timeline, log_number) goes; None: it stays. `kept`: the
    timeline's ranges to keep, None when no kept backup replays any of it; `abandoned`:
    then, why all of it goes, if it may."""
    name = _name(info)
    if not _SEGMENT_FILE.fullmatch(name) or name[:16] != f"{timeline:08X}{log_number:08X}":
        return None  # not a WAL file of this folder: not retention's to judge
    if kept is None:
        return abandoned
    segno = SegmentName.parse(name[:24], segment_size).segno
    if any(first <= segno and (last is None or segno <= last) for first, last in kept):
        return None
    if segno < kept[0][0]:
        return f"before the oldest retained backup on timeline {timeline}"
    return f"no kept backup's replay reads timeline {timeline}'s copy of it"


def _name(info: ObjectInfo) -> str:
    return info.key.rpartition("/")[2]


def _wal_rows(removals: list[_WalFolderRemoval]) -> list[RemovedWal]:
    """The WAL removals grouped by timeline and reason, for people."""
    groups: dict[tuple[int, str], list[ObjectInfo]] = {}
    for removal in removals:
        for file in removal.removed:
            groups.setdefault((removal.timeline, file.why), []).append(file.info)
    return [RemovedWal(timeline=timeline, first=_name(files[0]), last=_name(files[-1]), files=len(files),
                       stored_bytes=sum(info.size for info in files), why=why)
            for (timeline, why), files in groups.items()]


# --- acting -------------------------------------------------------------------------------


def apply(archive: Archive, settings: RetentionConfig, *, dry_run: bool = False,
          now: datetime | None = None) -> RetentionReport:
    """Decide, and unless `dry_run` remove, in the order the module's docstring gives,
    holding the catalog lock."""
    now = now or datetime.now(UTC)
    rules = policy.RetentionPolicy.from_config(settings)
    grace = timedelta(seconds=settings.unfinished_grace_seconds)
    eras = archive.eras()
    if len(eras) == 1:
        return _apply_era(archive, rules, grace, now, dry_run, [])
    # Each era weighed against the others' backups as they were before any era's run:
    # a backup removed meanwhile only counted for more, which keeps more.
    finished = {era.era_number: survey_backups(era).finished for era in eras}
    reports = [_in_era(_apply_era(era, rules, grace, now, dry_run,
                                  [backup for number, found in finished.items() if number != era.era_number
                                   for backup in found]), era.era_number)
               for era in eras]
    return RetentionReport(
        dry_run=dry_run, decided_at=now, policy=rules.describe(),
        kept=[item for report in reports for item in report.kept],
        removed_backups=[item for report in reports for item in report.removed_backups],
        removed_wal=[item for report in reports for item in report.removed_wal],
        expired_leases=[item for report in reports for item in report.expired_leases],
        stored_bytes=sum(report.stored_bytes for report in reports),
        notes=[f"era {number}: {note}" for number, report in enumerate(reports, 1) for note in report.notes])


def _in_era(report: RetentionReport, era: int) -> RetentionReport:
    """An era's report with its backups and WAL saying their era."""
    if era == 1:
        return report
    return msgspec.structs.replace(
        report, kept=[msgspec.structs.replace(item, era=era) for item in report.kept],
        removed_backups=[msgspec.structs.replace(item, era=era) for item in report.removed_backups],
        removed_wal=[msgspec.structs.replace(item, era=era) for item in report.removed_wal])


def _apply_era(archive: Archive, rules: policy.RetentionPolicy, grace: timedelta, now: datetime, dry_run: bool,
               others: list[BackupSummary]) -> RetentionReport:
    if dry_run:
        leases = lease.survey(archive, now)
        return _decide(_Stored(archive), rules, grace, leases, now, dry_run, others).report
    with lock.take(archive, "retention apply") as held:
        return _apply(archive, rules, grace, now, held, others)


def _apply(archive: Archive, rules: policy.RetentionPolicy, grace: timedelta, now: datetime,
           held: lock.Held, others: list[BackupSummary]) -> RetentionReport:
    before = retention_state(archive)
    stored = _Stored(archive)
    # Leases are judged on the storage's clock: the lock was stored a moment ago. Every
    # later look uses the same reading, which only makes leases look younger.
    storage_now = held.stored_at
    leases = lease.survey(archive, now, storage_now)
    decision = _decide(stored, rules, grace, leases, now, dry_run=False, others=others)

    # An earlier run's intent is this run's to finish (stored.interrupted): its names
    # are this run's too.
    claimed = set(before.deleting)
    held.check()
    _store_intent(archive, decision, stored, claimed, before.last_run, now)
    # A restore that leased a backup after the first look did not see the intent: keep
    # what it holds. Leases released meanwhile still count, so the intent only shrinks
    # and needs no new look.
    again = lease.survey(archive, now, storage_now)
    if {each.lease_id for each in again.active} - {each.lease_id for each in leases.active}:
        active = {each.lease_id: each for each in [*leases.active, *again.active]}
        decision = _decide(stored, rules, grace, lease.Leases(list(active.values()), leases.expired), now,
                           dry_run=False, others=others)
        _store_intent(archive, decision, stored, claimed, before.last_run, now)

    held.check()
    for backup_id in decision.backups:
        _remove_backup(archive, backup_id)
    held.check()
    for removal in decision.wal:
        _remove_wal(archive, removal, stored.wal.is_sealed(removal.timeline, removal.log_number))
    for expired in leases.expired:
        _remove_if_lapsed(archive, expired, now, storage_now)

    report = decision.report
    run = RetentionRun(
        finished_at=datetime.now(UTC).replace(microsecond=0),
        backups_removed=[item.backup_id for item in report.removed_backups],
        wal_files_removed=sum(item.files for item in report.removed_wal),
        bytes_freed=report.stored_bytes,
    )
    state = RetentionState(deleting=[*decision.held, *_other_runs_intent(archive, claimed)], decided_at=now,
                           last_run=run)
    archive.put_document(RETENTION_STATE_KEY, state, overwrite=True)
    return report


def _store_intent(archive: Archive, decision: _Decision, stored: _Stored, claimed: set[str],
                  last_run: RetentionRun | None, now: datetime) -> None:
    """Step 2: from here the backups named exist for no reader. The backup catalog is
    only a cache, rewritten so that it stops listing them. `claimed`: every name this
    run has put in `deleting`; the decision's are added to it."""
    deleting = [*decision.deleting, *decision.held]
    others = _other_runs_intent(archive, claimed)
    claimed.update(deleting)
    state = RetentionState(deleting=[*deleting, *others], decided_at=now, last_run=last_run)
    archive.put_document(RETENTION_STATE_KEY, state, overwrite=True)
    gone = {*deleting, *others}
    remaining = [backup for backup in stored.finished if backup.backup_id not in gone]
    archive.put_document(BACKUP_CATALOG_KEY, BackupCatalog(backups=remaining), overwrite=True)


def _other_runs_intent(archive: Archive, claimed: set[str]) -> list[str]:
    """The backups another run stored its intent to remove since this one read
    `catalog/retention.json`: only a run that takes no lock (an older pitrkit) can have."""
    return [backup_id for backup_id in retention_state(archive).deleting if backup_id not in claimed]


def _remove_backup(archive: Archive, backup_id: str) -> None:
    """The manifest first: without it the folder is no backup for any reader, even one
    that never read `deleting`. Then whatever the folder holds, listed now."""
    manifest = manifest_key(backup_id)
    archive.delete(manifest)
    for info in archive.list(backup_prefix(backup_id)):
        archive.delete(info.key)
    log.info("removed backup %s", backup_id)


def _remove_wal(archive: Archive, removal: _WalFolderRemoval, sealed: bool) -> None:
    """The folder's index first, so that it never names a removed file, then the files
    oldest first.

    Every sealed folder's index is written (or removed), not just those this run saw: a
    backup-push finishing meanwhile indexes newly sealed folders (maintenance.refresh) from
    listings that still hold the files going here. Its create-only put then either comes
    first and is replaced (or removed), or comes after the rewritten index and is refused.
    (After the removal of an emptied folder's index it still lands; it names a folder no
    reader lists, and `catalog rebuild` removes it.)"""
    prefix = log_folder(removal.timeline, removal.log_number)
    index_key = wal_index_key(prefix)
    if sealed:
        # Indexes never hold a `.partial` (see catalog/archived_wal.py).
        entries = [documents.WalIndexEntry(_name(info), info.size, info.modified) for info in removal.remaining
                   if not info.key.endswith(".partial")]
        if entries:
            index = WalFolderIndex(folder=prefix, entries=entries, indexed_at=datetime.now(UTC).replace(microsecond=0))
            archive.put_document(index_key, index, pretty=False, overwrite=True)
        else:
            archive.delete(index_key)
    for file in removal.removed:
        archive.delete(file.info.key)


def _remove_if_lapsed(archive: Archive, expired: Lease, now: datetime, storage_now: float | None) -> None:
    """Remove a lapsed lease unless its holder renewed it since it was read (the store
    time is read after the document: a renewal between the two only makes it younger)."""
    current = lease.read(archive, expired.lease_id)
    if current is not None and not lease.holds(current, lease.stored_at(archive, expired.lease_id), now, storage_now):
        lease.release(archive, current)


# --- the command --------------------------------------------------------------------------


def command_report(args: Namespace, config: Config,
                   config_path: Path) -> RetentionReport | PerRepository[RetentionReport]:
    """`pitrkit retention apply [--repo NAME] [--dry-run]`: the report cli.py prints (views/
    renders it); each repository under its own policy (its entry's retention table, else
    [retention]), one repository's report as before several existed (ops/per_repository)."""
    repositories = chosen(open_all(config), args.repo)
    if all(config.for_repository(each.settings).retention is None for each in repositories):
        raise ConfigError(f"{config_path} has no [retention] section: retention apply needs a policy to apply "
                          "(see docs/operations.md)")

    def run(repository: Repository, seen: Config) -> RetentionReport:
        if seen.retention is None:
            raise NothingToDo("no retention policy for this repository ([retention], or a retention table in its "
                              "[[repository]] entry): nothing removed")
        return apply(repository.archive, seen.retention, dry_run=args.dry_run)

    return run_each("retention apply", repositories, config, run)

"""The restore planner: from a recovery target to the backup a restore unpacks, the
timeline path, and the WAL segments recovery will replay, checked to be archived; or a
refusal naming the missing piece. The planner fetches no WAL: recovery asks for each
segment through `restore_command` (wal/fetch.py, with wal/lookahead.py reading ahead).

It decides in this order, each step refusing with the piece that is missing:
1. the timeline to end on: the one whose own WAL holds the target (refusing when several
   do, unless --timeline says which), or what --timeline names; a restore point the
   catalog records names its own; an xid or an unrecorded name ends on the newest
   timeline (PostgreSQL's default), and --immediate on the newest backup's;
2. that timeline's path, from its history file;
3. the newest usable backup on the path that is consistent before the target: a full
   backup, or an incremental whose whole chain is stored (catalog/chains.py; a newer
   broken one is passed over, and a note says why); an incremental's plan lists its
   chain, the ancestors a restore fetches blocks from;
4. the unbroken run of segments from the backup's first one along the path, which must
   cover the backup's consistency point and reach the target: up to the segment holding
   an LSN or a restore point, the backup's own last segment for --immediate, the
   segment the time index places a time or an xid in, else the end of the unbroken WAL.

The time index (catalog/time_index.py) places a time, an xid and a restore point the
catalog does not record (made with pg_create_restore_point() by hand), searched along the
path: a time from the chosen backup's first segment on; an xid and a name before the
backup is chosen, from the oldest backup's, so that the backup can be chosen consistent
before them. A name the index places is planned like a recorded one, at the end of its
record; an xid, whose place within its segment the index does not keep, from a backup
consistent by the start of its segment (one consistent inside it is passed over, with a
note), refused when no backup is. Where a segment on the way has no index entry, or the
index holds no such record, the plan runs to the end of the unbroken WAL and a note says
so; an xid or a name is then planned from the newest backup, unchecked. A restore point
`pitrkit restore-point` recorded (catalog/restore_points.py) is planned at the end of its
record, and refused when the index places the first point of that name elsewhere.

The run may end in a `<segment>.partial` (see catalog/archived_wal.py): the open segment a
streaming receiver shipped, when it is the newest WAL of its timeline. Where its WAL
ends is known only by reading it, so the planner reads that one object and takes the end
of its last valid page as the archive's end: an upper bound, less than a page past the
last record. wal-fetch then serves the partial when recovery asks for the segment.

It reads only what it needs (see catalog/archived_wal.py): never a listing of every segment.

An archive a `pg_upgrade` continued (`pitrkit upgrade`) holds several eras, each a
cluster with its own backups and WAL (storage/archive.py `Archive.era`); pg_upgrade
starts no WAL of the new cluster before its first backup can be restored, so a target
is reached from one era alone. `plan_eras` plans in the newest era first and goes back
an era while one refuses: a target before the newest era's first backup is an older
era's, restored with that era's major (the plan's backup says which).
"""

from __future__ import annotations

import logging
import math
import sys
from argparse import Namespace
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from pitrkit.catalog import restore_points
from pitrkit.catalog.archived_wal import ArchivedWal, TimelineStep, WalChain, on_path
from pitrkit.catalog.backups import backups
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import (
    BackupSummary,
    IndexedRestorePoint,
    IndexedTransaction,
    RestorePoint,
    WalIndexEntry,
    shown,
)
from pitrkit.catalog.time_index import Located, NotFound, after_time, around_time, has_restore_point, locate, locate_xid
from pitrkit.config import Config
from pitrkit.errors import ConfigError, PitrkitError, RefusedError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.progress import human_bytes, show_time
from pitrkit.restore import pgconf
from pitrkit.restore.targets import Target, TimelineChoice, target_from_args, timeline_from_args
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive, TamperedDocument
from pitrkit.storage.repositories import Repository, chosen, open_all

log = logging.getLogger(__name__)

__all__ = ["PlanRefused", "RestorePlan", "TimelineStep", "describe", "make_plan"]


class PlanRefused(RefusedError):
    """The target cannot be reached from what the archive holds; the message names the
    missing piece (no backup before the target, the first missing segment, a timeline
    that does not lead there, an ambiguous target)."""


class TimeStop(msgspec.Struct, kw_only=True, frozen=True):
    """Where the time index says recovery stops: the first segment on the path holding
    a commit/abort record later than the target, and the transactions either side (xid
    and Unix microseconds; None when not read)."""

    segment: str
    last_before: IndexedTransaction | None
    first_after: IndexedTransaction | None


class RestorePlan(msgspec.Struct, kw_only=True, frozen=True):
    target: Target
    # recovery_target_timeline to write: the timeline recovery ends on.
    timeline: int
    path: list[TimelineStep]
    backup: BackupSummary
    # An incremental backup's ancestors, the full backup first ([] for a full backup):
    # what a restore reads blocks from besides `backup`.
    chain: list[str] = []
    # Every WAL file recovery will ask restore_command for (the restore itself fetches
    # none; it checks that each is stored), in replay order: segment names from the
    # backup's first segment to the one holding the target (or the newest on the path
    # for --latest), then the history files of the path's timelines. The last may be
    # `<segment>.partial`: recovery asks for the segment and is served the partial.
    segments: list[str]
    history_files: list[str]
    wal_stored_size: int
    # End of the gap-free WAL the archive holds on this path: the end of its last
    # segment, or, when that is a partial, of the partial's last valid page. With a
    # `stop`, the run is read only that far: the end of the segment recovery stops in.
    archive_end: Lsn
    # Timelines on which the target exists; more than one means it was ambiguous and
    # --timeline decided.
    candidate_timelines: list[int]
    notes: list[str] = []
    # A time target found in the time index (catalog/time_index.py): the segment where
    # recovery stops and the transactions either side; None without an index.
    stop: TimeStop | None = None
    # The last segment recovery may fetch (restore_command's `wal-fetch --until`), when
    # the plan knows where recovery stops: an LSN, a restore point the catalog records or
    # the index places, --immediate, a time or an xid the index places. wal-fetch answers
    # a later segment "not archived", and the look-ahead reads none, so recovery never
    # replays past the plan: where the plan was wrong, it fails rather than promote at a
    # wrong point. None (--latest, a target nothing places): recovery fetches to the end.
    fetch_until: str | None = None
    # What the backup's configuration files would run (restore-plan reads them; see
    # restore/pgconf.py); None when not read.
    configuration: pgconf.Found | None = None
    # --name: the restore point as the catalog records it; None when it does not (the
    # time index may place it: target.lsn then says where) and for the other kinds.
    restore_point: RestorePoint | None = None
    # With several repositories, the one planned from (and restored from: `planned_in`);
    # None with one.
    repository: str | None = None
    # The archive's era the backup and the WAL are of (1 until a `pitrkit upgrade`):
    # restore_command's `wal-fetch --era`.
    era: int = 1

    @property
    def replay_end(self) -> Lsn:
        """Where replay is planned to end, for progress: the target's LSN (an LSN, a
        recorded restore point), the backup's consistency point (--immediate), else the
        archive's end."""
        if self.target.kind == "immediate":
            return self.backup.stop_lsn
        return self.target.lsn if self.target.lsn is not None else self.archive_end


def make_plan(archive: Archive, target: Target, timeline: TimelineChoice = None, *,
              wal: ArchivedWal | None = None, finished: list[BackupSummary] | None = None) -> RestorePlan:
    """`wal` and `finished`: the archive as the caller has already read it (verify plans
    to every backup's stop point on one reading, and to that backup alone)."""
    if wal is None:
        wal = ArchivedWal(archive)  # no archive.json: ArchiveMissing, a fault rather than "no WAL"
    if finished is None:
        finished = backups(archive)
    if not finished:
        raise PlanRefused(f"the archive {archive.storage.url} holds no finished backup")
    point = _recorded_point(archive, wal, target)
    if point is not None:
        target = msgspec.structs.replace(target, lsn=point.lsn)
    candidates = [point.timeline] if point is not None else _candidate_timelines(wal, target)
    ending = _ending_timeline(wal, finished, target, timeline, candidates)
    try:
        path = wal.path(ending)
    except PitrkitError as exc:
        raise PlanRefused(f"timeline {ending} does not lead anywhere: {exc}") from None
    if point is not None and _timeline_at(path, point.lsn) != point.timeline:
        raise PlanRefused(f"restore point {shown(point.name)!r} lies on timeline {point.timeline} at LSN {point.lsn}, "
                          f"where timeline {ending}'s path is on timeline {_timeline_at(path, point.lsn)}: recovery "
                          f"along it never meets the point; leave --timeline out, or pass --timeline {point.timeline}")
    notes: list[str] = []
    located = None
    if target.kind in ("xid", "name"):
        # Placed before the backup is chosen: the backup must be consistent before it.
        first = min((wal.segno(b.first_segment) for b in finished if on_path(path, b)), default=None)
        located = None if first is None else _located(archive, wal, path, first, target, notes, point)
        if located is not None and target.kind == "name":
            # The index knows where the point's record ends: planned like a recorded point.
            target = msgspec.structs.replace(target, lsn=_point_lsn(_indexed_point(located, target)))
    backup = _choose_backup(path, finished, target, ending, notes,
                            None if located is None or target.kind != "xid" else (located, wal.segment_size))
    if target.kind == "time":
        located = _located(archive, wal, path, wal.segno(backup.first_segment), target, notes, None)
    # With the target's segment known, the run is walked only up to it.
    bound = None if located is None else max(located.segno, wal.segno(backup.last_segment))
    chain = wal.chain(path, wal.segno(backup.first_segment), bound)
    if bound is not None and chain.last_segno < bound:
        raise PlanRefused(_short_of(chain, target, Lsn((chain.last_segno + 1) * wal.segment_size)))
    if chain.partial is not None:
        archive_end = wal.partial_end(chain.partial)
    else:
        archive_end = SegmentName.parse(chain.segments[-1].name, wal.segment_size).end_lsn if chain.segments \
            else Lsn(chain.first_segno * wal.segment_size)
    segments = _segments_to_target(wal, chain, backup, target, archive_end, located)
    stop = None if located is None or target.kind != "time" else _time_stop(archive, located, target)

    if len(candidates) > 1:
        notes.append(f"the target lies on timelines {_listing(candidates)}; --timeline chose {ending}")
    if target.kind == "time" and stop is None:
        notes.append("the plan runs to the end of the unbroken WAL; recovery stops at the first transaction after "
                     "the target")
        if chain.missing and chain.gap:
            notes.append(f"segment {chain.missing} is missing: WAL after it is out of reach")
    notes += _kind_notes(target, backup, timeline, ending, chain, located, point is not None)
    if segments[-1] is chain.partial:
        stored = "" if chain.partial.modified is None else f", as of {show_time(_instant(chain.partial.modified))}"
        notes.append(f"the last segment is only stored as {chain.partial.name}, the open segment a streaming "
                     f"receiver shipped{stored}: recovery replays its WAL and ends there; the archive end is the "
                     "end of its last valid page, an upper bound (the last record ends within that page)")
    return RestorePlan(
        target=target,
        timeline=ending,
        path=path,
        backup=backup,
        chain=list(backup.chain),
        segments=list(map(attrgetter("name"), segments)),
        history_files=[f"{step.timeline:08X}.history" for step in path if step.timeline != 1],
        wal_stored_size=sum(map(attrgetter("stored_size"), segments)),
        archive_end=archive_end,
        candidate_timelines=candidates or [ending],
        notes=notes,
        stop=stop,
        restore_point=point,
        fetch_until=_fetch_until(wal, target, located, segments[-1].name),
    )


def plan_eras(archive: Archive, target: Target, timeline: TimelineChoice = None) -> RestorePlan:
    """`make_plan` in the newest era that can reach the target, going back an era while
    one refuses (module docstring); each era's refusal is said when none can. A time in
    an older era that lies after the next era was recorded is refused: between the old
    cluster's end and the new one's first backup no era can restore."""
    eras = archive.eras()
    if len(eras) == 1:
        return make_plan(archive, target, timeline)
    refusals: list[str] = []
    unplaced: tuple[RestorePlan, int] | None = None
    for era in reversed(eras):
        number = era.era_number
        try:
            made = make_plan(era, target, timeline)
        except PlanRefused as exc:
            refusals.append(f"era {number}: {exc}")
            continue
        if target.kind in ("xid", "name") and made.fetch_until is None:
            # Nothing in this era places the xid or the name (xids go on across a
            # pg_upgrade): an older era whose catalog or index does is the target's.
            unplaced = unplaced or (made, number)
            refusals.append(f"era {number}: nothing in its WAL places the target")
            continue
        if number < len(eras):
            later = eras[number].era_record
            if target.kind == "time" and target.time is not None and target.time >= later.recorded_at:
                refusals.append(f"era {number}: the target is after era {later.era} (PostgreSQL "
                                f"{later.pg_version}) was recorded at {show_time(later.recorded_at)}, past this "
                                "era's cluster")
                break
            note = (f"the target is in era {number} of the archive (PostgreSQL {era.era_record.pg_version}, "
                    f"system identifier {era.era_record.system_identifier}): newer eras refused it ("
                    f"{'; '.join(refusals)})")
            made = msgspec.structs.replace(made, notes=[*made.notes, note])
        return msgspec.structs.replace(made, era=number)
    if unplaced is not None:
        # As in one era: planned, unchecked, in the newest era that can plan it.
        return msgspec.structs.replace(unplaced[0], era=unplaced[1])
    raise PlanRefused("no era of the archive can restore to the target: " + "; ".join(refusals))


def _fetch_until(wal: ArchivedWal, target: Target, located: Located | None, last: str) -> str | None:
    """See RestorePlan.fetch_until; `last`: the plan's last segment (or its partial)."""
    if target.kind == "latest" or (target.kind in ("time", "xid") and located is None) or target.lsn is None \
            and target.kind == "name":
        return None
    segment = SegmentName.parse(last[:24], wal.segment_size)
    # An LSN target stops at the first record starting at or after it, which may end in
    # the next segment (a restore point's record ends at its LSN; the index places a time
    # or an xid by the segment its record ends in).
    return segment.next().name if target.kind == "lsn" else segment.name


def _recorded_point(archive: Archive, wal: ArchivedWal, target: Target) -> RestorePoint | None:
    """--name's restore point when the catalog records it, checked against the archive:
    a point of another cluster, or whose segment does not hold its LSN, is refused."""
    if target.kind != "name":
        return None
    assert target.name is not None
    point = restore_points.find(archive, target.name)
    if point is None:
        return None
    system = archive.era_record.system_identifier
    if point.system_identifier != system:
        raise PlanRefused(f"{restore_points.RESTORE_POINTS_KEY} records restore point {shown(point.name)!r} for the "
                          f"cluster with system identifier {point.system_identifier}, not this archive's ({system})")
    try:
        holding = SegmentName.parse(point.segment, wal.segment_size)
    except PitrkitError:
        holding = None
    if holding is None or holding.segno != (point.lsn - 1) // wal.segment_size:
        raise PlanRefused(f"{restore_points.RESTORE_POINTS_KEY} records restore point {shown(point.name)!r} at LSN "
                          f"{point.lsn} in segment {point.segment}, which does not hold that LSN")
    return point


def _timeline_at(path: list[TimelineStep], lsn: Lsn) -> int:
    """The timeline a recovery along `path` replays the record ending at `lsn` on."""
    for step in path:
        if step.end is None or lsn <= step.end:
            return step.timeline
    return path[-1].timeline


def _kind_notes(target: Target, backup: BackupSummary, choice: TimelineChoice, ending: int,
                chain: WalChain, located: Located | None, recorded: bool) -> list[str]:
    """What the plan could and could not check for an xid, a restore point and
    --immediate, and what --exclusive changes."""
    notes = []
    if located is not None and target.kind == "xid":
        notes.append(f"the time index places the commit of transaction {target.xid} in segment "
                     f"{located.entry.segment}: the plan runs to it, from the newest backup consistent before that "
                     "segment starts")
    if located is not None and target.kind == "name" and target.name is not None and not recorded:
        point = _indexed_point(located, target)
        notes.append(f"the time index places restore point {shown(target.name)!r} in segment {located.entry.segment}, "
                     f"its record ending at LSN {_point_lsn(point)}: planned like a recorded point")
    if target.kind in ("xid", "name") and located is None and target.lsn is None:
        what = (f"the commit of transaction {target.xid}" if target.kind == "xid"
                else f"restore point {shown(target.name or '')!r}, which the catalog does not record (it was not made "
                     "with pitrkit restore-point)")
        notes.append(f"the archive cannot tell which segment holds {what}, so the plan runs to the end of the "
                     "unbroken WAL; recovery stops where it meets it")
        ended, unknown = (("the transaction ended", "the time index does not place it") if target.kind == "xid"
                          else ("the point was made", "neither the catalog nor the time index places it"))
        notes.append(f"the planner could not check that backup {backup.backup_id} is consistent before it ({unknown}); "
                     f"it took the newest backup: if {ended} before {show_time(backup.stop_time)}, recovery never "
                     "meets it and stops with 'recovery ended before configured recovery target was reached'")
        if chain.missing and chain.gap:
            notes.append(f"segment {chain.missing} is missing: WAL after it is out of reach")
    if target.kind in ("xid", "name") and choice is None and not recorded:
        notes.append(f"nothing in the archive says which timeline it is on: planned along the newest, {ending} "
                     "(PostgreSQL's default); --timeline chooses another")
    if target.kind == "xid":
        notes.append("checked: the id names a normal transaction (its low 32 bits, which PostgreSQL compares, "
                     "are 3 or more); recovery stops at the first commit or abort of those 32 bits it replays")
    if target.kind == "immediate":
        notes.append(f"recovery stops as soon as backup {backup.backup_id} is consistent (LSN {backup.stop_lsn}), "
                     "replaying only its own WAL")
    if not target.inclusive:
        notes.append("--exclusive: recovery stops just before the target (recovery_target_inclusive = off)")
    return notes


# --- 1. which timeline ------------------------------------------------------------------


class _OwnRange(NamedTuple):
    """Where a timeline's own WAL lies: from its branch point (exclusive; timeline 1 from
    the start) to the end of its newest segment, and in time from when its history file
    was stored to when its newest segment was."""

    timeline: int
    branch: Lsn
    end: Lsn
    created: float  # -inf for timeline 1
    last_stored: float  # +inf when the storage does not say

    def holds(self, target: Target) -> bool:
        if target.kind == "lsn":
            assert target.lsn is not None
            after_branch = target.lsn >= self.branch if self.timeline == 1 else target.lsn > self.branch
            return after_branch and target.lsn < self.end
        if target.kind == "time":
            assert target.time is not None
            return self.created < target.time.timestamp() <= self.last_stored
        return False

    def starts_before(self, target: Target) -> bool:
        if target.kind == "lsn":
            assert target.lsn is not None
            return self.branch <= target.lsn
        assert target.time is not None
        return self.created < target.time.timestamp()


def _own_ranges(wal: ArchivedWal) -> list[_OwnRange]:
    ranges = []
    for timeline in wal.timelines:
        if timeline != 1 and timeline not in wal.history_files:
            continue  # no path leads to it
        history = wal.history(timeline)
        branch = history[-1].switch_lsn if history else Lsn(0)
        newest = wal.newest_segment(timeline, branch // wal.segment_size)
        partial = wal.newest_partial(timeline)
        if partial is not None and (newest is None or partial[0] > newest[0]):
            # Its segment's end: an upper bound that costs no read. The chain's check
            # against the partial's real end refuses an LSN past it.
            newest = partial
        if newest is None:
            continue  # nothing archived on it yet
        segno, entry = newest
        created = -math.inf if timeline == 1 else wal.history_files[timeline].modified or -math.inf
        ranges.append(_OwnRange(timeline, branch, Lsn((segno + 1) * wal.segment_size), created,
                                math.inf if entry.modified is None else entry.modified))
    return ranges


def _candidate_timelines(wal: ArchivedWal, target: Target) -> list[int]:
    return [own.timeline for own in _own_ranges(wal) if own.holds(target)]


def _ending_timeline(wal: ArchivedWal, finished: list[BackupSummary], target: Target, choice: TimelineChoice,
                     candidates: list[int]) -> int:
    timelines = wal.timelines
    if not timelines:
        raise PlanRefused("the archive holds no WAL")
    if choice == "latest" or (choice is None and (target.kind == "latest"
                                                  or (target.kind in ("xid", "name") and not candidates))):
        # PostgreSQL's own default: recovery_target_timeline = 'latest'.
        return timelines[-1]
    if choice == "current" or (choice is None and target.kind == "immediate"):
        consistent = [b for b in check_chains(finished).usable if _consistent_before(b, target)]
        if not consistent:
            raise PlanRefused(_nothing_consistent(target, finished))
        return max(consistent, key=lambda b: (b.start_time, b.backup_id)).timeline
    if isinstance(choice, int):
        if choice not in timelines:
            raise PlanRefused(f"timeline {choice} is not in the archive (it has timelines {_listing(timelines)})")
        return choice
    if len(candidates) > 1:
        raise PlanRefused(
            f"{_target_words(target)} lies on timelines {_listing(candidates)} (a restored server branched off "
            f"and both went on archiving); pass " + " or ".join(f"--timeline {t}" for t in candidates)
        )
    if candidates:
        return candidates[0]
    # On no timeline: plan on the newest one it comes after, so that the WAL check below
    # names what is missing there (the first gap, or where the archive ends).
    preceding = [own.timeline for own in _own_ranges(wal) if own.starts_before(target)]
    return max(preceding) if preceding else timelines[-1]


# --- 3. which backup --------------------------------------------------------------------


def _consistent_before(backup: BackupSummary, target: Target) -> bool:
    """Whether the backup is consistent before the target, as far as the catalog can
    tell: an xid and an unrecorded restore point are taken as after every backup."""
    if target.kind in ("lsn", "name") and target.lsn is not None:
        return backup.stop_lsn <= target.lsn
    if target.kind == "time":
        assert target.time is not None
        return backup.stop_time <= target.time
    return True


def _nothing_consistent(target: Target, considered: list[BackupSummary]) -> str:
    oldest = min(considered, key=lambda b: (b.start_time, b.backup_id))
    return (f"no backup is consistent before {_target_words(target)}; the oldest backup {oldest.backup_id} is "
            f"consistent from {show_time(oldest.stop_time)} (LSN {oldest.stop_lsn})")


def _choose_backup(path: list[TimelineStep], finished: list[BackupSummary], target: Target,
                   ending: int, notes: list[str], xid_in: tuple[Located, int] | None) -> BackupSummary:
    """The newest usable backup on `path` consistent before `target`; each newer one passed
    over because its chain is broken is a note. `xid_in`: the segment the time index
    places an xid's commit in, and the segment size: a backup is certainly consistent
    before the commit when it is by the segment's start (the index does not say where in
    the segment the commit is); one that ends inside the segment is passed over (a note)."""
    on = [b for b in finished if on_path(path, b)]
    if not on:
        found = ", ".join(f"{b.backup_id} (timeline {b.timeline})" for b in finished)
        raise PlanRefused(f"no backup lies on the way to timeline {ending} ({_path_words(path)}); backups: {found}")
    if xid_in is None:
        consistent = [b for b in on if _consistent_before(b, target)]
    else:
        located, segment_size = xid_in
        start = Lsn(located.segno * segment_size)
        consistent = [b for b in on if b.stop_lsn <= start]
        inside = [b for b in on if start < b.stop_lsn <= start + segment_size]
        if consistent:
            notes += [f"backup {b.backup_id} becomes consistent inside segment {located.entry.segment} (LSN "
                      f"{b.stop_lsn}), which holds the commit of transaction {target.xid}: it may be consistent only "
                      "after it, so it was passed over" for b in inside]
    if not consistent:
        refusal = _nothing_consistent(target, on)
        if xid_in is not None:
            refusal += f"; the time index places its commit in segment {xid_in[0].entry.segment}"
        raise PlanRefused(refusal)
    # The chains are judged among all finished backups: an ancestor need not lie on
    # this path (a full taken before a branch point does, one after it on another
    # timeline would not be an ancestor).
    broken = check_chains(finished).broken_by_id()
    usable = [b for b in consistent if b.backup_id not in broken]
    # Along one path LSNs only grow, so the newest backup is the one starting last.
    passed = [b for b in consistent if b.backup_id in broken
              and (not usable or b.start_lsn > max(usable, key=lambda u: u.start_lsn).start_lsn)]
    if not usable:
        raise PlanRefused("no usable backup is consistent before " + _target_words(target) + ": "
                          + "; ".join(f"backup {b.backup_id}'s chain is broken: {broken[b.backup_id].problem}"
                                      for b in passed))
    # At one start, the shortest chain: the full backup-consolidate made of an incremental.
    chosen = max(usable, key=lambda b: (b.start_lsn, -len(b.chain)))
    notes += [f"backup {b.backup_id} is newer, but its chain is broken ({broken[b.backup_id].problem}): planned "
              f"from {chosen.backup_id}" for b in sorted(passed, key=lambda b: b.start_lsn, reverse=True)]
    return chosen


# --- 4. which segments ------------------------------------------------------------------


def _segments_to_target(wal: ArchivedWal, chain: WalChain, backup: BackupSummary, target: Target,
                        archive_end: Lsn, located: Located | None) -> list[WalIndexEntry]:
    if chain.last_segno < wal.segno(backup.last_segment):
        raise PlanRefused(f"segment {chain.missing} is missing from the archive: backup {backup.backup_id} needs "
                          f"{backup.first_segment} to {backup.last_segment} to become consistent")
    if backup.stop_lsn > archive_end:
        raise PlanRefused(f"backup {backup.backup_id} becomes consistent at LSN {backup.stop_lsn}, but "
                          f"{_ends_at(chain, archive_end)}")
    if target.kind == "immediate":
        return chain.segments[: wal.segno(backup.last_segment) - chain.first_segno + 1]
    if target.kind == "lsn":
        assert target.lsn is not None
        holding = target.lsn // wal.segment_size
        if chain.last_segno < holding or target.lsn >= archive_end:
            raise PlanRefused(_short_of(chain, target, archive_end))
        return chain.segments[: holding - chain.first_segno + 1]
    if target.kind == "name" and target.lsn is not None:
        # A recorded restore point: recovery stops right after its record, which ends at target.lsn.
        holding = (target.lsn - 1) // wal.segment_size
        if chain.last_segno < holding or target.lsn > archive_end:
            raise PlanRefused(_short_of(chain, target, archive_end))
        return chain.segments[: holding - chain.first_segno + 1]
    if located is not None:
        if chain.last_segno < located.segno:
            raise PlanRefused(_short_of(chain, target, archive_end))
        return chain.segments[: max(located.segno, wal.segno(backup.last_segment)) - chain.first_segno + 1]
    if target.kind == "time":
        assert target.time is not None
        stored = chain.segments[-1].modified
        if stored is not None and stored < target.time.timestamp():
            raise PlanRefused(_short_of(chain, target, archive_end))
    elif chain.gap:
        # Recovery would stop at the hole and promote there, without the WAL after it.
        raise PlanRefused(_short_of(chain, target, archive_end))
    return chain.segments


def _located(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], first: int, target: Target,
             notes: list[str], recorded: RestorePoint | None) -> Located | None:
    """The segment the time index says recovery stops in, searched on `path` from segment
    number `first`: for a time, the first holding a commit/abort later than the target;
    for an xid, the one holding its commit/abort; for a name, the first holding a restore
    point of that name. None (and a note) where a segment on the way has no index entry
    or none holds it: the plan then runs to the end of the unbroken WAL as without an
    index. A point the catalog records (`recorded`) must be the one the index finds
    first, else recovery would stop at the other."""
    newest = wal.newest_on_path(path)
    if newest is None:
        return None
    if target.kind == "xid":
        assert target.xid is not None
        found = locate_xid(archive, wal, path, first, newest[0], target.xid)
    elif target.kind == "name":
        assert target.name is not None
        found = locate(archive, wal, path, first, newest[0], has_restore_point(target.name))
    else:
        assert target.time is not None
        found = locate(archive, wal, path, first, newest[0],
                       after_time(_micros(target.time), exclusive=not target.inclusive))
    if recorded is not None:
        if isinstance(found, Located) and _point_lsn(_indexed_point(found, target)) != recorded.lsn:
            raise PlanRefused(f"the time index holds restore point {shown(recorded.name)!r} at LSN "
                              f"{_point_lsn(_indexed_point(found, target))} (segment {found.entry.segment}), the "
                              f"catalog at LSN {recorded.lsn}: recovery stops at the first point of a name it "
                              "replays, so the two disagree on where it stops; restore to --lsn instead")
        return found if isinstance(found, Located) else None
    if isinstance(found, NotFound):
        notes.append({
            "time": "the time index holds no transaction after the target: recovery replays all the archived WAL",
            "xid": f"the index holds no commit of xid {target.xid}: recovery replays all the archived WAL and "
                   "fails if it never meets it",
            "name": f"the index holds no restore point {shown(target.name or '')!r}: recovery replays all the "
                    "archived WAL and fails if it never meets it",
        }[target.kind])
        return None
    if not isinstance(found, Located):
        notes.append(f"segment {found.segment} has no time index entry ('pitrkit catalog rebuild' makes it), so the "
                     f"archive cannot tell which segment holds {_located_words(target)}")
        return None
    return found


def _indexed_point(located: Located, target: Target) -> IndexedRestorePoint:
    return next(p for p in located.entry.restore_points if p.name == target.name)


def _point_lsn(point: IndexedRestorePoint) -> Lsn:
    """Where a restore point's record ends as pg_create_restore_point() reports it, and
    the catalog records it: the index keeps the record's own end, which PostgreSQL
    rounds up to the next 8-byte boundary, where the next record starts."""
    return Lsn((point.end_lsn + 7) & ~7)


def _located_words(target: Target) -> str:
    if target.kind == "xid":
        return f"the commit of transaction {target.xid}"
    if target.kind == "name":
        return f"restore point {shown(target.name or '')!r}"
    return "the target time"


def _time_stop(archive: Archive, located: Located, target: Target) -> TimeStop:
    assert target.time is not None
    around = around_time(archive, located, _micros(target.time), exclusive=not target.inclusive)
    return TimeStop(segment=located.entry.segment, last_before=around.before, first_after=around.after)


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _short_of(chain: WalChain, target: Target, archive_end: Lsn) -> str:
    if chain.gap:
        return (f"segment {chain.missing} is missing from the archive: the WAL between the backup and "
                f"{_target_words(target)} has a gap there")
    return f"{_ends_at(chain, archive_end)}; {_target_words(target)} is later"


def _ends_at(chain: WalChain, archive_end: Lsn) -> str:
    last = chain.segments[-1]
    stored = "" if last.modified is None else f", stored at {show_time(_instant(last.modified))}"
    if chain.partial is not None:
        return (f"the archive's WAL on timeline {int(last.name[:8], 16)} ends at LSN {archive_end} at most "
                f"(in the partial segment {last.name}{stored})")
    return f"the archive's WAL on timeline {int(last.name[:8], 16)} ends at LSN {archive_end}{stored}"


# --- showing ----------------------------------------------------------------------------


def _instant(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _listing(numbers: list[int]) -> str:
    words = [str(number) for number in numbers]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _target_words(target: Target) -> str:
    if target.kind == "lsn":
        return f"the target LSN {target.lsn}"
    if target.kind == "xid":
        return f"the target transaction {target.xid}"
    if target.kind == "name":
        return f"restore point {shown(target.name or '')!r}" + ("" if target.lsn is None else f" (LSN {target.lsn})")
    if target.kind == "immediate":
        return "the end of the backup"
    if target.kind == "time":
        assert target.time is not None
        return f"the target time {target.time.astimezone(UTC).isoformat(sep=' ')}"
    return "the latest point"


def _point_words(point: RestorePoint | None, target: Target) -> str:
    if point is None:
        placed = "" if target.lsn is None else f"; the time index places it at LSN {target.lsn}"
        return ", not in the catalog" + placed
    return (f" at LSN {point.lsn} on timeline {point.timeline}, made "
            f"{point.created_at.astimezone(UTC).isoformat(sep=' ', timespec='seconds')} (in segment {point.segment})")


def _path_words(path: list[TimelineStep]) -> str:
    return ", then ".join(
        f"timeline {step.timeline} from {step.begin}" + ("" if step.end is None else f" to {step.end}")
        for step in path
    )


def describe(plan: RestorePlan) -> str:
    """The plan as a person reads it before restoring."""
    target = plan.target
    if target.kind == "time":
        assert target.time is not None
        resolved = (f"{target.time.astimezone(UTC).isoformat(sep=' ')} "
                    f"(local {target.time.astimezone().isoformat(sep=' ')})")
        target_line = f"time {target.text!r} = {resolved}"
    elif target.kind == "lsn":
        target_line = f"LSN {target.lsn}"
    elif target.kind == "xid":
        target_line = f"transaction {target.xid} (recovery_target_xid)"
    elif target.kind == "name":
        target_line = f"restore point {shown(target.name or '')!r}" + _point_words(plan.restore_point, target)
    elif target.kind == "immediate":
        target_line = "immediate: as soon as the backup is consistent"
    else:
        target_line = "latest: the end of the archived WAL"
    if target.kind in ("time", "lsn", "xid"):
        target_line += ", inclusive: stops after it" if target.inclusive else ", exclusive: stops just before it"
    backup = plan.backup
    why = {
        "time": f" that is consistent before the target (from {show_time(backup.stop_time)})",
        "lsn": f" that is consistent before the target (from LSN {backup.stop_lsn})",
        "name": f" that is consistent before the target (from LSN {backup.stop_lsn})" if target.lsn is not None
        else "",
        "xid": "",
        "immediate": "",
        "latest": "",
    }[target.kind]
    lines = [] if plan.repository is None else [f"repository:   {plan.repository}"]
    lines += [
        f"target:       {target_line}",
        f"timeline:     {plan.timeline} (path: {_path_words(plan.path)})",
        f"backup:       {backup.backup_id} '{backup.label}', started {show_time(backup.start_time)} at "
        f"{backup.start_lsn} on timeline {backup.timeline}",
        f"              chosen as the newest backup on this path{why}",
    ]
    if plan.chain:
        lines.append(f"chain:        incremental: {len(plan.chain)} ancestor(s) to fetch blocks from, "
                     f"{' > '.join(plan.chain)} > {backup.backup_id}")
    lines += [
        f"WAL:          {len(plan.segments)} segments, {plan.segments[0]} .. {plan.segments[-1]}, "
        f"{human_bytes(plan.wal_stored_size)} stored",
    ]
    if plan.history_files:
        lines.append(f"history:      {', '.join(plan.history_files)}")
    if plan.stop is None:
        lines.append(f"archive end:  {plan.archive_end} (end of the unbroken WAL on this path)")
    else:
        lines.append(f"WAL end:      {plan.archive_end} (the end of the segment recovery stops in; the WAL after it "
                     "was not read)")
    if plan.stop is not None:
        lines.append(f"stops in:     {plan.stop.segment} (time index): the first transaction after the target "
                     f"ends there; {_transaction_words('last before', plan.stop.last_before)}; "
                     f"{_transaction_words('first after', plan.stop.first_after)}")
    if plan.fetch_until is not None:
        lines.append(f"fetch until:  {plan.fetch_until} (restore_command's wal-fetch serves no later segment: "
                     "recovery ends there at the latest)")
    lines += [f"note:         {note}" for note in plan.notes]
    if plan.configuration is not None:
        lines += [f"warning:      {line}" if number == 0 else f"              {line}"
                  for number, line in enumerate(pgconf.describe(plan.configuration))]
        lines += [f"configuration: {note}" for note in plan.configuration.notes]
    return "\n".join(lines)


def _transaction_words(which: str, transaction: IndexedTransaction | None) -> str:
    if transaction is None:
        return f"{which}: not known"
    moment = datetime.fromtimestamp(transaction.time_us / 1_000_000, UTC)
    return f"{which}: xid {transaction.xid} at {moment.isoformat(sep=' ', timespec='microseconds')}"


def backup_configuration(archive: Archive, backup_id: str) -> pgconf.Found:
    """The code-running settings of the backup's configuration files, read from its
    parts. A part that cannot be read (a host with only a public key, a damaged part)
    is a note here: the restore would say more; a manifest that does not authenticate
    is refused, as everywhere."""
    try:
        return pgconf.code_settings(pgconf.in_backup(archive, backup_id))
    except TamperedDocument:
        raise
    except ObjectNotFound:
        return pgconf.Found(notes=["the backup's configuration files were not read: its manifest is gone"])
    except PitrkitError as exc:
        return pgconf.Found(notes=[f"the backup's configuration files were not read: {exc}"])


def server_choice(target: Target, choice: TimelineChoice | Literal["server"],
                  config: Config) -> tuple[TimelineChoice, int | None]:
    """--timeline with `server` resolved to the configured server's timeline, and that
    timeline when it was asked: for `server` (which needs the answer) and for a plan to
    the latest point along the archive's newest timeline (which may be a restored copy's
    branch, see latest_warning; a server that does not answer then is no error)."""
    # psycopg (through postgres/server.py) only when the server is asked
    from pitrkit.postgres.server import ServerError, configured_server_timeline

    if choice == "server":
        try:
            server = configured_server_timeline(config.postgres.conninfo)
        except ServerError as exc:
            raise PlanRefused(f"--timeline server needs the server's timeline: {exc}") from None
        return server, server
    if _follows_newest(target) and choice in (None, "latest") and config.postgres.conninfo is not None:
        try:
            return choice, configured_server_timeline(config.postgres.conninfo)
        except (ServerError, ConfigError) as exc:
            log.debug("not checking the server's timeline: %s", exc)
    return choice, None


def latest_warning(plan: RestorePlan, server: int | None) -> str | None:
    """A plan along a timeline that is not the server's, made without naming it: the
    newest timeline in the archive is a branch (a test restore promoted with archiving
    on), and --latest would restore the abandoned copy's history, not the server's."""
    if server is None or plan.timeline == server or not _follows_newest(plan.target) or plan.restore_point:
        return None
    option = {"latest": "--latest", "xid": "--xid", "name": "--name"}[plan.target.kind]
    return (f"warning: the newest timeline in the archive, {plan.timeline}, is not timeline {server} that the "
            f"server in [postgres] conninfo is on: {option} follows timeline {plan.timeline} (a restored copy "
            "promoted with archiving on?); to restore the server's own history, add --timeline server")


def _follows_newest(target: Target) -> bool:
    """Whether the plan follows the archive's newest timeline when --timeline is left out:
    --latest, and the targets nothing in the archive places (an xid; a restore point's
    name, unless the catalog records it, and then its own timeline is taken)."""
    return target.kind in ("latest", "xid", "name")


def planned_in(repositories: Sequence[Repository], plan: Callable[[Archive], RestorePlan]
               ) -> tuple[Repository, RestorePlan]:
    """The first repository `plan` succeeds in, and its plan (recording the repository's
    name when there are several). A repository that cannot answer (unreachable, no
    archive.json, a document that does not authenticate) and one that holds no backup
    reaching the target are both passed over, with a warning, for the next: a restore
    needs one repository holding the whole of it. When none can, each one's reason is
    said, as a refusal when every one refused, else as the first fault."""
    failures: list[tuple[Repository, PitrkitError]] = []
    for repository in repositories:
        try:
            made = plan(repository.archive)
        except PitrkitError as exc:
            if len(repositories) == 1:
                raise
            if repository is not repositories[-1]:
                log.warning("repository %r: %s; planning from the next repository", repository.name, exc)
            failures.append((repository, exc))
            continue
        return repository, made if len(repositories) == 1 else msgspec.structs.replace(made, repository=repository.name)
    said = "; ".join(f"repository {repository.name!r}: {exc}" for repository, exc in failures)
    faults = [exc for _, exc in failures if not isinstance(exc, PlanRefused)]
    if not faults:
        raise PlanRefused(f"no repository can restore to the target: {said}")
    faults[0].args = (f"no repository can restore to the target: {said}",)
    raise faults[0]


def command(args: Namespace, config: Config, config_path: Path) -> str:
    target = target_from_args(args)
    choice, server = server_choice(target, timeline_from_args(args), config)
    repository, plan = planned_in(chosen(open_all(config), args.repo), lambda each: plan_eras(each, target, choice))
    archive = repository.archive.era(plan.era)
    plan = msgspec.structs.replace(plan, configuration=backup_configuration(archive, plan.backup.backup_id))
    if warning := latest_warning(plan, server):
        print(f"pitrkit: {warning}", file=sys.stderr)
    text = codec.encode(plan).decode() if args.json else describe(plan) + "\n"
    sys.stdout.write(text)
    return (f"restore plan: backup {plan.backup.backup_id}, {len(plan.segments)} segments to "
            f"{plan.segments[-1]}, timeline {plan.timeline}")

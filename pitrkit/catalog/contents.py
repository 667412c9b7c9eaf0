"""What `backup-list` and `wal-list` report: the archive's backups with their chains,
and every archived WAL file with the backup it belongs to and what it is for (a backup needs it, a restore
can use it, or retention would remove it). Every era of the archive (storage/archive.py
`Archive.era`) is listed, oldest first; each row says its era.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from pitrkit.catalog.archived_wal import PARTIAL_SUFFIX, ArchivedWal, on_path
from pitrkit.catalog.backups import backups, survey_backups
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import BackupSummary, SegmentTimes, WalIndexEntry
from pitrkit.catalog.time_index import read_times
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.storage.archive import WAL_PREFIX, Archive, stored_at


class ListedBackup(BackupSummary, kw_only=True, frozen=True):
    """A finished backup as `backup-list` shows it: its summary (`stored_size` its own
    objects' bytes), and its place in its chain (catalog/chains.py)."""

    backup_type: str  # "full" or "incremental"
    # The stored bytes of its whole chain: its ancestors that are stored, and itself.
    chain_stored_size: int
    # Why it cannot be restored, when its chain is broken; None when it can be.
    broken: str | None = None
    # The archive's era the backup is of (1 until a `pitrkit upgrade`).
    era: int = 1


class BackupListing(msgspec.Struct, kw_only=True, frozen=True):
    """What `backup-list` shows: the finished backups, oldest first, and the folders under
    `backups/` that are not, or no longer, a backup."""

    backups: list[ListedBackup]
    unfinished: list[str]
    deleting: list[str] = []  # being removed by retention: not restorable

    @property
    def exit_code(self) -> int:
        """0: a listing is the command's result, whatever it lists."""
        return 0


def backup_listing(archive: Archive) -> BackupListing:
    listed: list[ListedBackup] = []
    unfinished: list[str] = []
    deleting: list[str] = []
    for era in archive.eras():
        survey = survey_backups(era)
        # A folder of a later era is named with it: an id alone is looked for in era 1.
        named = "" if era.era_number == 1 else f" (era {era.era_number})"
        listed += listed_backups(survey.finished, era.era_number)
        unfinished += [each + named for each in survey.unfinished]
        deleting += [each + named for each in survey.deleting]
    return BackupListing(backups=listed, unfinished=unfinished, deleting=deleting)


def listed_backups(finished: list[BackupSummary], era: int = 1) -> list[ListedBackup]:
    """Each finished backup with its type, its chain's stored size and, if its chain is
    broken, why."""
    stored = {backup.backup_id: backup.stored_size for backup in finished}
    broken = check_chains(finished).broken_by_id()
    return [ListedBackup(**msgspec.structs.asdict(backup), backup_type=backup.kind,
                         chain_stored_size=sum(stored.get(each, 0) for each in [*backup.chain, backup.backup_id]),
                         broken=broken[backup.backup_id].problem if backup.backup_id in broken else None, era=era)
            for backup in finished]


class WalRow(msgspec.Struct, kw_only=True, frozen=True):
    """One archived WAL file, as `wal-list` shows it."""

    name: str
    timeline: int
    start_lsn: Lsn | None  # None for history files
    # The segment's end; for a partial, the end of the segment it is the start of: its
    # WAL ends before that, where only reading it can tell.
    end_lsn: Lsn | None
    stored_size: int
    stored_at: datetime | None
    backup: str | None  # the newest backup whose start precedes it on its timeline's path
    # "backup": needed to make a backup consistent; "restorable": after a backup's start;
    # "obsolete": before every backup on its path, what retention would remove;
    # "before-first-backup": the archive holds no backup yet (retention keeps it all);
    # "history": a timeline history file, always kept.
    state: str
    # A `.partial`: the open segment of a streaming receiver, replaced as it grows.
    partial: bool = False
    # From the time index (catalog/time_index.py): the earliest and latest commit/abort
    # time of the records ending in the segment; `indexed` false when it has no entry.
    indexed: bool = False
    first_commit: datetime | None = None
    last_commit: datetime | None = None
    # The archive's era the file is of (1 until a `pitrkit upgrade`).
    era: int = 1


class WalListing(msgspec.Struct, kw_only=True, frozen=True):
    """What `wal-list` shows: every archived WAL file, in timeline and segment order."""

    files: list[WalRow]

    @property
    def exit_code(self) -> int:
        """0: a listing is the command's result, whatever it lists."""
        return 0


class _BackupSpan(NamedTuple):
    first: int  # segment numbers: the backup needs first..last to become consistent
    last: int
    backup_id: str
    # The highest `last` of this and every earlier span: a segment at or below it is
    # inside some backup's first..last if its owner's span or an earlier one reaches it.
    reach: int


def wal_rows(archive: Archive, only_timeline: int | None = None) -> list[WalRow]:
    """A row per segment and history file, oldest first per era and timeline."""
    rows: list[WalRow] = []
    for era in archive.eras():
        found = _era_wal_rows(era, only_timeline)
        rows += found if era.era_number == 1 else [msgspec.structs.replace(row, era=era.era_number) for row in found]
    return rows


def _era_wal_rows(archive: Archive, only_timeline: int | None) -> list[WalRow]:
    wal = ArchivedWal(archive)
    # A segment belongs to a backup that can be restored: an incremental whose chain is
    # broken makes no WAL "restorable".
    finished = check_chains(backups(archive)).usable
    rows: list[WalRow] = []
    for timeline in wal.timelines:
        if only_timeline is not None and timeline != only_timeline:
            continue
        if info := wal.history_files.get(timeline):
            rows.append(WalRow(name=info.key.removeprefix(WAL_PREFIX), timeline=timeline, start_lsn=None,
                               end_lsn=None, stored_size=info.size, stored_at=stored_at(info.modified),
                               backup=None, state="history"))
        path = wal.path(timeline)
        # Backups replay along this path passes, by where their WAL starts: a segment
        # belongs to the newest one starting at or before it.
        spans: list[_BackupSpan] = []
        for first, last, backup_id in sorted(
            (SegmentName.parse(b.first_segment, wal.segment_size).segno,
             SegmentName.parse(b.last_segment, wal.segment_size).segno, b.backup_id)
            for b in finished if on_path(path, b)
        ):
            spans.append(_BackupSpan(first, last, backup_id, max(last, spans[-1].reach if spans else last)))
        firsts = [span.first for span in spans]
        branch = path[-1].begin // wal.segment_size
        for log_number in wal.logs.get(timeline, []):
            folder = wal.folder(timeline, log_number)
            indexed = read_times(archive, timeline, log_number)
            times = {} if indexed is None else {entry.segment: entry for entry in indexed.segments}
            numbered = [*zip(folder.numbers, folder.segments, strict=True),
                        *((int(entry.name[16:24], 16), entry) for entry in folder.partials)]
            if folder.partials:
                numbered.sort(key=lambda pair: pair[1].name)
            for number, entry in numbered:
                segment = SegmentName(timeline, log_number * wal.per_log + number, wal.segment_size)
                # A file from before its own timeline's branch point is on no path.
                owner = _owner(spans, firsts, segment.segno) if segment.segno >= branch else None
                rows.append(_with_times(_segment_row(segment, entry, owner, fresh=not finished),
                                        times.get(entry.name)))
    return rows


def _with_times(row: WalRow, times: SegmentTimes | None) -> WalRow:
    if times is None:
        return row
    return msgspec.structs.replace(row, indexed=True, first_commit=_instant(times.first_us),
                                   last_commit=_instant(times.last_us))


def _instant(time_us: int | None) -> datetime | None:
    return None if time_us is None else datetime.fromtimestamp(time_us / 1_000_000, UTC)


def _owner(spans: list[_BackupSpan], firsts: list[int], segno: int) -> _BackupSpan | None:
    """The newest backup whose WAL starts at or before segment `segno`."""
    position = bisect.bisect_right(firsts, segno) - 1
    return spans[position] if position >= 0 else None


def _segment_row(segment: SegmentName, entry: WalIndexEntry, owner: _BackupSpan | None, fresh: bool) -> WalRow:
    if fresh:
        state = "before-first-backup"
    elif owner is None:
        state = "obsolete"
    elif segment.segno <= owner.reach:
        state = "backup"
    else:
        state = "restorable"
    return WalRow(name=entry.name, timeline=segment.timeline, start_lsn=segment.start_lsn, end_lsn=segment.end_lsn,
                  stored_size=entry.stored_size, stored_at=stored_at(entry.modified),
                  backup=owner.backup_id if owner else None, state=state,
                  partial=entry.name.endswith(PARTIAL_SUFFIX))

"""The WAL time index: per archived segment, the commit/abort times, xids and restore
points of the records that end in it (postgres/walrecords.py reads them), stored per WAL
folder as `catalog/times/<TLI><LOG>` and `catalog/xids/<TLI><LOG>` (docs/archive-format.md,
"Time index"), and the lookup a plan makes in it: which segment on a path holds a target.

The index is a cache like the rest of the catalog: built after the push, off the push
path, by `index_wal` (`catalog rebuild`, or whoever runs it in the background), from the
archived WAL alone. A plan uses it where it exists and falls back to today's plan (to
the end of the unbroken WAL) where a segment on the way lacks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

import msgspec

from pitrkit.catalog.archived_wal import ArchivedWal, TimelineStep
from pitrkit.catalog.documents import (
    IndexedRestorePoint,
    IndexedTransaction,
    SegmentTimes,
    SegmentXids,
    TimeIndexFolder,
    XidIndexFolder,
)
from pitrkit.errors import PitrkitError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import InvalidSegment, WalFileKind, WalFileName
from pitrkit.postgres.walrecords import Pending, SegmentRecords, XactRecord, full_xid, read_segment
from pitrkit.progress import human_count
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import Archive, log_folder

log = logging.getLogger(__name__)

TIMES_PREFIX = "catalog/times/"
XIDS_PREFIX = "catalog/xids/"
_Folder = TypeVar("_Folder", TimeIndexFolder, XidIndexFolder)


def times_key(timeline: int, log_number: int) -> str:
    return f"{TIMES_PREFIX}{timeline:08X}{log_number:08X}"


def xids_key(timeline: int, log_number: int) -> str:
    return f"{XIDS_PREFIX}{timeline:08X}{log_number:08X}"


# --- one segment --------------------------------------------------------------------------


def index_segment(name: str, records: SegmentRecords, reference: int | None) -> tuple[SegmentTimes, SegmentXids]:
    """The index entries of one segment read by `read_segment`. `reference`: the next
    full xid carried from the previous segment's entry, if known; else the segment's own
    first checkpoint gives the xids their epoch (see full_xid)."""
    if reference is None and records.next_full_xids:
        reference = records.next_full_xids[0]
    transactions = records.transactions
    resolved = [x.xid if reference is None else full_xid(x.xid, reference) for x in transactions]
    times = [x.time_us for x in transactions]
    carried = records.next_full_xids[-1] if records.next_full_xids else reference
    if carried is not None and resolved and reference is not None:
        carried = max(carried, max(resolved) + 1)
    entry = SegmentTimes(
        segment=name,
        first_us=min(times) if times else None,
        last_us=max(times) if times else None,
        restore_points=[IndexedRestorePoint(p.name, p.time_us, int(p.end_lsn)) for p in records.restore_points],
        final=IndexedTransaction(resolved[-1], times[-1]) if transactions else None,
        start_known=records.start_known,
        next_full_xid=carried,
    )
    return entry, SegmentXids(segment=name, epoch_known=reference is not None, xids=_ranges(resolved))


def _ranges(xids: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for xid in sorted(set(xids)):
        if ranges and ranges[-1][1] + 1 == xid:
            ranges[-1] = (ranges[-1][0], xid)
        else:
            ranges.append((xid, xid))
    return ranges


# --- stored folders -------------------------------------------------------------------------


def read_times(archive: Archive, timeline: int, log_number: int) -> TimeIndexFolder | None:
    """The folder's time index; None when it has none, or an unreadable one (a warning:
    `catalog rebuild` rewrites it)."""
    return _read(archive, times_key(timeline, log_number), TimeIndexFolder, log_folder(timeline, log_number))


def read_xids(archive: Archive, timeline: int, log_number: int) -> XidIndexFolder | None:
    return _read(archive, xids_key(timeline, log_number), XidIndexFolder, log_folder(timeline, log_number))


def _read(archive: Archive, key: str, kind: type[_Folder], folder: str) -> _Folder | None:
    try:
        blob = archive.get(key)
    except ObjectNotFound:
        return None
    try:
        document = codec.decode(objects.decode(key, blob, archive.plugins.compressor, archive.cipher()), kind, key)
    except (objects.CorruptObject, ValueError) as exc:
        log.warning("ignoring the time index %s: %s; 'pitrkit catalog rebuild' rewrites it", key, exc)
        return None
    if document.folder != folder:
        log.warning("ignoring the time index %s: it is %s's; 'pitrkit catalog rebuild' rewrites it",
                    key, document.folder)
        return None
    return document


def _write(archive: Archive, key: str, document: msgspec.Struct) -> None:
    # Encrypted like WAL in an encrypted archive: commit times and xids are the archive's content.
    compression = archive.config.compression
    compressor = archive.plugins.compressor(compression.algorithm, compression.level, compression.threads)
    blob, _header = objects.encode(codec.encode(document, pretty=False), compressor, archive.write_cipher())
    archive.put(key, blob, overwrite=True)


# --- building ---------------------------------------------------------------------------------


class IndexProgress(NamedTuple):
    done: int  # segments indexed so far in this run
    total: int  # segments this run indexes
    wal_bytes: int  # WAL bytes read so far


Carried = dict[str, tuple[SegmentTimes, Pending | None]]  # by the name of the segment they carry into


def index_wal(archive: Archive, wal: ArchivedWal, *, again: bool = False,
              progress: Callable[[IndexProgress], None] | None = None,
              folders: Collection[tuple[int, int]] | None = None, carried: Carried | None = None) -> list[str]:
    """Index every archived segment that has no entry yet (`again`: every one), reading
    the WAL from the archive; returns one line per folder written. Segments are read in
    WAL order per timeline, so that a record continued from the previous segment and the
    previous segment's xid reference carry over; where the previous segment was indexed
    in an earlier run, it is read again for its unfinished record, unless `carried` (kept
    by a caller that indexes again and again) has it. `folders`: only these (timeline,
    log number) folders."""
    plans = []
    for timeline in sorted(wal.logs):
        for log_number in wal.logs[timeline]:
            if folders is not None and (timeline, log_number) not in folders:
                continue
            names = [entry.name for entry in wal.folder(timeline, log_number).entries
                     if WalFileName.parse(entry.name).kind == WalFileKind.SEGMENT]
            times = None if again else read_times(archive, timeline, log_number)
            xids = None if again else read_xids(archive, timeline, log_number)
            known = set() if times is None or xids is None else {e.segment for e in times.segments}
            missing = [name for name in names if name not in known]
            if missing:
                plans.append((timeline, log_number, times, xids, missing))
    total = sum(len(plan[4]) for plan in plans)
    done = wal_bytes = 0
    report = []
    unreadable: list[str] = []
    carried = {} if carried is None else carried
    for timeline, log_number, times, xids, missing in plans:
        entries = {e.segment: e for e in times.segments} if times is not None and xids is not None else {}
        xid_entries = {e.segment: e for e in xids.segments} if times is not None and xids is not None else {}
        indexed_here = 0
        for name in missing:
            previous = carried.pop(name, None) or _previous(archive, wal, name, entries)
            try:
                data = archive.read_wal(name)
                records = read_segment(data, previous[1] if previous else None)
            except (InvalidSegment, PitrkitError) as exc:
                unreadable.append(f"{name}: {exc}")
                continue
            entry, xid_entry = index_segment(name, records, previous[0].next_full_xid if previous else None)
            entries[name], xid_entries[name] = entry, xid_entry
            carried[wal.segment_name(timeline, wal.segno(name) + 1)] = (entry, records.pending)
            done += 1
            indexed_here += 1
            wal_bytes += len(data)
            if progress is not None:
                progress(IndexProgress(done, total, wal_bytes))
        if not indexed_here:
            continue
        folder = log_folder(timeline, log_number)
        now = datetime.now(UTC).replace(microsecond=0)
        _write(archive, xids_key(timeline, log_number),
               XidIndexFolder(folder=folder, segments=[xid_entries[n] for n in sorted(xid_entries)]))
        _write(archive, times_key(timeline, log_number),
               TimeIndexFolder(folder=folder, segments=[entries[n] for n in sorted(entries)], indexed_at=now))
        report.append(f"wrote {times_key(timeline, log_number)} and {xids_key(timeline, log_number)}: "
                      f"{human_count(indexed_here, 'segment')} indexed")
    if unreadable:
        report.append(f"time index: {human_count(len(unreadable), 'segment')} not indexed, unreadable as WAL "
                      f"(first {unreadable[0]})")
    return report


def remove_stale(archive: Archive, wal: ArchivedWal) -> list[str]:
    """Remove the time index objects of folders no longer in `wal/` (retention removed
    their WAL); one line per object removed."""
    present = {f"{timeline:08X}{log_number:08X}" for timeline, numbers in wal.logs.items() for log_number in numbers}
    removed = []
    for prefix in (TIMES_PREFIX, XIDS_PREFIX):
        for info in archive.list_folder(prefix).objects:
            if info.key.removeprefix(prefix) not in present:
                archive.delete(info.key)
                removed.append(f"removed {info.key}: its folder is gone")
    return removed


def _previous(archive: Archive, wal: ArchivedWal, name: str,
              entries: dict[str, SegmentTimes]) -> tuple[SegmentTimes, Pending | None] | None:
    """The previous segment's entry and unfinished record, when it is indexed: the entry
    from this folder's index or the previous folder's, the record by reading it again."""
    segno = wal.segno(name)
    if segno == 0:
        return None
    timeline = int(name[:8], 16)
    before = wal.segment_name(timeline, segno - 1)
    entry = entries.get(before)
    if entry is None:
        per_log = 0x100000000 // wal.segment_size
        times = read_times(archive, timeline, (segno - 1) // per_log)
        entry = next((e for e in times.segments if e.segment == before), None) if times is not None else None
    if entry is None:
        return None
    try:
        return entry, read_segment(archive.read_wal(before)).pending
    except (InvalidSegment, PitrkitError):
        return entry, None


# --- looking up -------------------------------------------------------------------------------


class Located(NamedTuple):
    """The first segment on the path whose index holds the target."""

    segno: int
    entry: SegmentTimes
    before: IndexedTransaction | None  # the last commit/abort in the segments before it (from `first`)
    reference: int | None  # the previous segment's next full xid, for the epoch of its xids


class Unindexed(NamedTuple):
    """A segment on the way that has no index entry: the plan falls back."""

    segno: int
    segment: str


class NotFound(NamedTuple):
    """Every segment up to `last` is indexed, none holds the target."""

    last: int


Holds = Callable[[SegmentTimes], bool]


def after_time(target_us: int, exclusive: bool = False) -> Holds:
    """A segment holds a time target when a commit/abort record in it is later than the
    target (at or later for an exclusive target): where recovery stops."""
    if exclusive:
        return lambda entry: entry.last_us is not None and entry.last_us >= target_us
    return lambda entry: entry.last_us is not None and entry.last_us > target_us


def has_restore_point(name: str) -> Holds:
    return lambda entry: any(point.name == name for point in entry.restore_points)


def locate(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], first: int, last: int,
           holds: Holds) -> Located | Unindexed | NotFound:
    """The first segment from `first` to `last` (segment numbers, along `path`) for
    which `holds` is true, reading one index document per folder and stopping there."""
    before = reference = None
    for segno, entry in _entries(archive, wal, path, first, last):
        if entry is None:
            return Unindexed(segno, wal.name_on(path, segno))
        if holds(entry):
            return Located(segno, entry, before, reference)
        before = entry.final or before
        reference = entry.next_full_xid
    return NotFound(last)


def locate_xid(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], first: int, last: int,
               xid: int) -> Located | Unindexed | NotFound:
    """The segment whose commit/abort records hold `xid` (64-bit; a segment whose epoch
    is unknown matches on the low 32 bits)."""
    before = reference = None
    for segno, entry in _entries(archive, wal, path, first, last):
        if entry is None:
            return Unindexed(segno, wal.name_on(path, segno))
        xids = _xid_entry(archive, wal, path, segno)
        if xids is None:
            return Unindexed(segno, entry.segment)
        wanted = xid if xids.epoch_known else xid & 0xFFFFFFFF
        if any(low <= wanted <= high for low, high in xids.xids):
            return Located(segno, entry, before, reference)
        before = entry.final or before
        reference = entry.next_full_xid
    return NotFound(last)


def _entries(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], first: int,
             last: int) -> Iterator[tuple[int, SegmentTimes | None]]:
    per_log = 0x100000000 // wal.segment_size
    segno = first
    while segno <= last:
        timeline = wal.serving_timeline(path, segno)
        log_number = segno // per_log
        times = read_times(archive, timeline, log_number)
        by_name = {} if times is None else {e.segment: e for e in times.segments}
        folder_end = min(last, (log_number + 1) * per_log - 1)
        while segno <= folder_end:
            if wal.serving_timeline(path, segno) != timeline:
                break
            yield segno, by_name.get(wal.segment_name(timeline, segno))
            segno += 1


def _xid_entry(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], segno: int) -> SegmentXids | None:
    per_log = 0x100000000 // wal.segment_size
    timeline = wal.serving_timeline(path, segno)
    xids = read_xids(archive, timeline, segno // per_log)
    name = wal.segment_name(timeline, segno)
    return None if xids is None else next((e for e in xids.segments if e.segment == name), None)


def indexed_restore_point(archive: Archive, wal: ArchivedWal, name: str) -> tuple[str, IndexedRestorePoint] | None:
    """The first restore point called `name` the index holds on any timeline, with the
    segment it ends in; None when none is indexed (the unindexed WAL is not read)."""
    for timeline in sorted(wal.logs):
        for log_number in wal.logs[timeline]:
            times = read_times(archive, timeline, log_number)
            for entry in [] if times is None else times.segments:
                for point in entry.restore_points:
                    if point.name == name:
                        return entry.segment, point
    return None


# --- the stop -------------------------------------------------------------------------------


class Neighbours(NamedTuple):
    """The transactions either side of a time target: the last whose commit/abort record
    recovery replays, and the first, where it stops."""

    before: IndexedTransaction | None
    after: IndexedTransaction | None


def around_time(archive: Archive, located: Located, target_us: int, exclusive: bool = False) -> Neighbours:
    """Read the located segment's WAL for the record where recovery stops and the one
    before it (the earlier segments' last when the stop is the segment's first). A
    commit record begun in the previous segment is not seen here (it would need that
    segment read too): the stop is then reported one transaction late."""
    try:
        records = read_segment(archive.read_wal(located.entry.segment))
    except (InvalidSegment, PitrkitError) as exc:
        log.warning("could not read %s for the transactions around the target: %s", located.entry.segment, exc)
        return Neighbours(None, None)
    before = located.before
    reference = located.reference
    for record in records.transactions:
        if record.time_us >= target_us if exclusive else record.time_us > target_us:
            return Neighbours(before, _indexed(record, reference))
        before = _indexed(record, reference)
    return Neighbours(before, None)


def _indexed(record: XactRecord, reference: int | None) -> IndexedTransaction:
    return IndexedTransaction(record.xid if reference is None else full_xid(record.xid, reference), record.time_us)

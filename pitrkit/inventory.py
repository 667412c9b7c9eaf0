"""What the archive holds — its backups and its WAL — and the catalog that makes asking
cheap: `backup-list`, `wal-list` and `catalog rebuild`.

The catalog (`catalog/...`) is a cache. Manifests are the truth about backups and the
objects under `wal/` are the truth about WAL; every reader here reconciles with them, and
`catalog rebuild` recreates the catalog from them alone, so losing or corrupting it never
loses data.

* `catalog/backups.json` lists the summaries of finished backups. Reading it is checked
  against one listing of `backups/`: a backup folder it does not know is read from its
  manifest, an entry whose folder is gone is dropped.
* `catalog/retention.json` names the backups retention is removing (retention.py): they
  exist for no reader from the moment it is stored, while their objects go.
* `catalog/wal/<TLI><LOG>.json` is the listing of one sealed WAL folder `wal/<TLI><LOG>/`:
  one that a later folder of the same timeline exists for. PostgreSQL archives segments in
  order, so a sealed folder receives nothing more and its listing can be kept. The
  newest folder of each timeline is always listed afresh.

Every rewrite of a catalog document holds the catalog lock (lock.py): `catalog rebuild`
refuses while another writer holds it; a backup's own update is skipped (backup.py
warns, and readers find the backup from its manifest meanwhile).

So a reader never lists every object: it lists `wal/` and `catalog/wal/` one level (the
history files and one name per 4 GiB of WAL), then reads an index, or lists one folder,
for just the folders it needs. An index is trusted for what it says is present; a segment
it says is absent is confirmed by listing the folder before anyone is told it is missing.

A `<segment>.partial` (the open segment a streaming receiver ships, replaced as it grows
and deleted once the full segment is stored) counts only as the newest WAL of its
timeline, where replay can end inside it. Indexes never record one: they list sealed
folders, and a partial in a sealed folder has later WAL after it, so nothing reads it;
and an index must only hold what cannot change under it.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import sys
from argparse import Namespace
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple, overload

import msgspec

from pitrkit import catalog, lock
from pitrkit.archive import (
    BACKUP_CATALOG_KEY,
    BACKUPS_PREFIX,
    RETENTION_STATE_KEY,
    WAL_INDEX_PREFIX,
    WAL_PREFIX,
    Archive,
    backup_prefix,
    log_folder,
    manifest_key,
    wal_folder,
    wal_index_key,
)
from pitrkit.catalog import BackupCatalog, BackupSummary, RetentionState, WalFolderIndex, WalIndexEntry
from pitrkit.config import Config
from pitrkit.errors import NotInArchive, PitrkitError, UsageError
from pitrkit.fetch import read
from pitrkit.hookspecs import ObjectExists, ObjectInfo, ObjectNotFound
from pitrkit.progress import human_bytes, human_count
from pitrkit.wal import (
    HistoryEntry,
    InvalidSegment,
    Lsn,
    SegmentName,
    parse_history,
    read_page_header,
    segments_per_log,
    valid_end,
)

log = logging.getLogger(__name__)

# Manifest checks in flight when surveying backups: tiny, latency-bound requests.
_MANIFEST_THREADS = 8
_LOG_FOLDER = re.compile(r"wal/(?P<timeline>[0-9A-F]{8})(?P<log>[0-9A-F]{8})/")
_HISTORY_KEY = re.compile(r"wal/(?P<timeline>[0-9A-F]{8})\.history")
_PARTIAL_SUFFIX = ".partial"


# --- backups --------------------------------------------------------------------------


class BackupSurvey(NamedTuple):
    finished: list[BackupSummary]  # oldest first
    # Folders under backups/ without a manifest: a backup in progress, or one that was
    # interrupted and awaits cleanup. Neither exists for the planner.
    unfinished: list[str]
    # Folders of backups retention is removing (in catalog/retention.json): whatever of
    # them is still stored, they exist for no reader.
    deleting: list[str]


def backups(archive: Archive) -> list[BackupSummary]:
    """The backups whose manifests exist and that retention is not removing, oldest first."""
    return survey_backups(archive).finished


def retention_state(archive: Archive) -> RetentionState:
    """`catalog/retention.json`; the empty state when there is none. An unreadable one is
    ignored with a warning: retention removes a backup's manifest before anything else
    of it, so a backup whose manifest is stored is complete, and the next run rewrites
    the document."""
    try:
        return archive.get_document(RETENTION_STATE_KEY, RetentionState)
    except ObjectNotFound:
        return RetentionState()
    except ValueError as exc:
        log.warning("ignoring %s; the next 'pitrkit retention apply' rewrites it", exc)
        return RetentionState()


def backup_folders(archive: Archive) -> list[str]:
    """The ids of the folders under `backups/`: finished, unfinished or being removed."""
    return [folder.removeprefix(BACKUPS_PREFIX).rstrip("/") for folder in archive.list_folder(BACKUPS_PREFIX).folders]


def survey_backups(archive: Archive) -> BackupSurvey:
    # Retention's intent first, the folders after: a backup retention starts removing
    # after this read still has its manifest when listed, so it is still complete.
    being_removed = set(retention_state(archive).deleting)
    cached = {summary.backup_id: summary for summary in _read_backup_catalog(archive)}
    listed = backup_folders(archive)
    ids = [backup_id for backup_id in listed if backup_id not in being_removed]

    def summary_of(backup_id: str) -> BackupSummary | None:
        # A cached entry still needs its manifest: the manifest is what makes a backup
        # exist, and a deletion interrupted after removing it leaves the folder behind.
        if backup_id in cached:
            return cached[backup_id] if manifest_present(archive, backup_id) else None
        return _read_summary(archive, backup_id)

    finished: list[BackupSummary] = []
    unfinished: list[str] = []
    with ThreadPoolExecutor(_MANIFEST_THREADS, thread_name_prefix="manifests") as pool:
        for backup_id, summary in zip(ids, pool.map(summary_of, ids), strict=True):
            if summary is None:
                unfinished.append(backup_id)
            else:
                finished.append(summary)
    return BackupSurvey(_oldest_first(finished), unfinished,
                        [backup_id for backup_id in listed if backup_id in being_removed])


def last_written(archive: Archive, backup_id: str) -> datetime | None:
    """When the newest object of a backup folder was stored (one listing), None when the
    storage does not say: how an unfinished backup that is still running (it keeps
    storing parts) is told from one that was interrupted."""
    stamps = [info.modified for info in archive.list(backup_prefix(backup_id)) if info.modified is not None]
    return stored_at(max(stamps)) if stamps else None


def manifest_present(archive: Archive, backup_id: str) -> bool:
    """Whether the backup's commit marker is stored: what makes it exist."""
    try:
        archive.stat(manifest_key(backup_id))
    except ObjectNotFound:
        return False
    return True


def record_backup(archive: Archive, summary: BackupSummary) -> None:
    """Add a backup whose manifest has just been stored to `catalog/backups.json`, and
    index the WAL folders sealed since the last time.

    Under the catalog lock: `LockHeld` when another writer has it (retention, a rebuild,
    another backup's update), and the caller skips the update."""
    with lock.take(archive, "backup-push"):
        known = [entry for entry in _read_backup_catalog(archive) if entry.backup_id != summary.backup_id]
        document = BackupCatalog(backups=_oldest_first([*known, summary]))
        archive.put_document(BACKUP_CATALOG_KEY, document, overwrite=True)
        refresh(archive)


def _oldest_first(summaries: list[BackupSummary]) -> list[BackupSummary]:
    return sorted(summaries, key=lambda summary: (summary.start_time, summary.backup_id))


def _read_backup_catalog(archive: Archive) -> list[BackupSummary]:
    try:
        return archive.get_document(BACKUP_CATALOG_KEY, BackupCatalog).backups
    except ObjectNotFound:
        return []
    except ValueError as exc:
        # Only a cache: the manifests say the same, they just cost more to read.
        log.warning("ignoring the backup catalog (%s); reading the manifests instead; "
                    "'pitrkit catalog rebuild' rewrites it", exc)
        return []


def _read_summary(archive: Archive, backup_id: str) -> BackupSummary | None:
    """The backup's summary from its manifest; None when the manifest is absent."""
    key = manifest_key(backup_id)
    try:
        summary = archive.get_document(key, BackupSummary)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise PitrkitError(f"backup {backup_id} is unusable: {exc}") from None
    if summary.backup_id != backup_id:
        raise PitrkitError(f"backup {backup_id} is unusable: {key} names backup {summary.backup_id!r}")
    return summary


# --- WAL ------------------------------------------------------------------------------


class TimelineStep(msgspec.Struct, kw_only=True, frozen=True):
    """Replay runs on `timeline` from `begin` until `end`, where the path switches to the
    next step's timeline (None on the last step)."""

    timeline: int
    begin: Lsn
    end: Lsn | None


def serving_timeline(path: list[TimelineStep], segno: int, segment_size: int) -> int:
    """Whose file replay along `path` reads for segment `segno`: the newest step that has
    begun by that segment. The segment holding a switch point is read from the new
    timeline (its copy holds the old timeline's WAL up to the switch), as
    XLogFileReadAnyTLI does."""
    serving = path[0].timeline
    for step in path:
        if step.begin // segment_size <= segno:
            serving = step.timeline
    return serving


class LogFolder:
    """The files of one WAL folder `wal/<TLI><LOG>/`, with its segments by number.

    Planning reads thousands of these, so the common case (nothing but the folder's own
    segments) costs no Python work per file: names come in key order (storage lists keys
    in order, and indexes are written from listings), and a segment's number is only
    parsed when a search looks at it."""

    def __init__(self, timeline: int, log_number: int, entries: list[WalIndexEntry], from_index: bool,
                 sealed: bool) -> None:
        """`sealed`: a later folder of the timeline exists; its partials are dropped
        (see the module's docstring)."""
        self.timeline = timeline
        self.log_number = log_number
        self.from_index = from_index
        prefix = f"{timeline:08X}{log_number:08X}"
        names = list(map(_NAME, entries))
        # Sorted names sharing a prefix at both ends share it throughout; all 24
        # characters long means no `.partial` or `.backup` file among them.
        if not names or (names[0][:16] == prefix == names[-1][:16] and max(map(len, names)) == 24):
            self.entries = self.segments = entries
            self.partials: list[WalIndexEntry] = []
        else:
            if sealed:
                entries = [entry for entry in entries if not entry.name.endswith(_PARTIAL_SUFFIX)]
            self.entries = entries
            self.segments = [entry for entry in entries if entry.name[:16] == prefix and len(entry.name) == 24]
            self.partials = [entry for entry in entries
                             if entry.name[:16] == prefix and entry.name == entry.name[:24] + _PARTIAL_SUFFIX]
        self.numbers = _SegmentNumbers(self.segments)


_NAME = attrgetter("name")


class _SegmentNumbers(Sequence[int]):
    """The segment numbers within their log of sorted segment entries, parsed on access."""

    def __init__(self, segments: list[WalIndexEntry]) -> None:
        self._segments = segments

    def __len__(self) -> int:
        return len(self._segments)

    @overload
    def __getitem__(self, position: int) -> int: ...
    @overload
    def __getitem__(self, position: slice) -> list[int]: ...
    def __getitem__(self, position: int | slice) -> int | list[int]:
        if isinstance(position, slice):
            return [int(entry.name[16:], 16) for entry in self._segments[position]]
        return int(self._segments[position].name[16:], 16)


class WalChain(NamedTuple):
    """Consecutive segments that are all present, as replay along a timeline path reads
    them, and what stopped the run."""

    first_segno: int
    # In replay order. The last may be a `.partial`: the newest WAL of its timeline,
    # stored only as the open segment; replay ends inside it.
    segments: list[WalIndexEntry]
    missing: str | None  # the first absent segment
    # True when the path has segments after `missing`: a hole, not the end of the WAL.
    gap: bool

    @property
    def last_segno(self) -> int:
        """The newest segment of the run; first_segno - 1 when the run is empty."""
        return self.first_segno + len(self.segments) - 1

    @property
    def partial(self) -> WalIndexEntry | None:
        """The last segment's `.partial`, when only that is stored."""
        if self.segments and self.segments[-1].name.endswith(_PARTIAL_SUFFIX):
            return self.segments[-1]
        return None


class ArchivedWal:
    """The archive's WAL as this module reads it: the top of `wal/` (history files and
    log folders) once, then folders and history files on demand, each at most once."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.segment_size = archive.identity().wal_segment_size
        self.per_log = segments_per_log(self.segment_size)
        self.history_files: dict[int, ObjectInfo] = {}
        self.logs: dict[int, list[int]] = {}  # timeline -> its folders' log numbers, ascending
        top = archive.list_folder(WAL_PREFIX)
        for info in top.objects:
            if match := _HISTORY_KEY.fullmatch(info.key):
                self.history_files[int(match["timeline"], 16)] = info
        for folder in top.folders:
            if match := _LOG_FOLDER.fullmatch(folder):
                self.logs.setdefault(int(match["timeline"], 16), []).append(int(match["log"], 16))
        for numbers in self.logs.values():
            numbers.sort()
        self.indexed = {info.key for info in archive.list_folder(WAL_INDEX_PREFIX).objects}
        self._folders: dict[tuple[int, int], LogFolder] = {}
        self._histories: dict[int, list[HistoryEntry]] = {}

    # -- timelines -----------------------------------------------------------------------

    @property
    def timelines(self) -> list[int]:
        return sorted(self.logs.keys() | self.history_files.keys())

    def history(self, timeline: int) -> list[HistoryEntry]:
        """The parsed `<timeline>.history`; [] for timeline 1, which has none."""
        if timeline == 1:
            return []
        if timeline not in self._histories:
            name = f"{timeline:08X}.history"
            if timeline not in self.history_files:
                raise PitrkitError(f"timeline {timeline} has no history file {name} in the archive")
            try:
                text = read(self.archive, name)  # verified, corrupt reads retried
                self._histories[timeline] = parse_history(text.decode("ascii", "replace"), WAL_PREFIX + name)
            except NotInArchive:
                raise PitrkitError(f"timeline {timeline} has no history file {name} in the archive") from None
            except UsageError as exc:
                raise PitrkitError(str(exc)) from None
        return self._histories[timeline]

    def path(self, timeline: int) -> list[TimelineStep]:
        """The timelines replay follows to end on `timeline`, oldest first."""
        steps: list[TimelineStep] = []
        begin = Lsn(0)
        for entry in self.history(timeline):
            steps.append(TimelineStep(timeline=entry.parent, begin=begin, end=entry.switch_lsn))
            begin = entry.switch_lsn
        steps.append(TimelineStep(timeline=timeline, begin=begin, end=None))
        return steps

    def serving_timeline(self, path: list[TimelineStep], segno: int) -> int:
        return serving_timeline(path, segno, self.segment_size)

    def _next_switch_segno(self, path: list[TimelineStep], segno: int) -> int | None:
        """The first segment after `segno` that a later step serves."""
        for step in path:
            begins = step.begin // self.segment_size
            if begins > segno:
                return begins
        return None

    # -- folders -------------------------------------------------------------------------

    def folder(self, timeline: int, log_number: int) -> LogFolder:
        found = self._folders.get((timeline, log_number))
        if found is None:
            found = self._read_folder(timeline, log_number)
            self._folders[(timeline, log_number)] = found
        return found

    def is_sealed(self, timeline: int, log_number: int) -> bool:
        numbers = self.logs.get(timeline, [])
        return bool(numbers) and log_number < numbers[-1]

    def _read_folder(self, timeline: int, log_number: int) -> LogFolder:
        prefix = log_folder(timeline, log_number)
        index_key = wal_index_key(prefix)
        if index_key in self.indexed and self.is_sealed(timeline, log_number):
            try:
                index = self.archive.get_document(index_key, WalFolderIndex)
                return LogFolder(timeline, log_number, index.entries, from_index=True, sealed=True)
            except ObjectNotFound:
                pass  # removed since we listed catalog/wal/: list the folder instead
            except ValueError as exc:
                log.warning("ignoring %s; 'pitrkit catalog rebuild' rewrites it", exc)
        return self.relist(timeline, log_number)

    def relist(self, timeline: int, log_number: int) -> LogFolder:
        """List the folder itself, whatever its index says."""
        listing = self.archive.list_folder(log_folder(timeline, log_number))
        found = LogFolder(timeline, log_number, [_index_entry(info) for info in listing.objects], from_index=False,
                          sealed=self.is_sealed(timeline, log_number))
        self._folders[(timeline, log_number)] = found
        return found

    def newest_segment(self, timeline: int, first: int = 0, last: float = math.inf) -> tuple[int, WalIndexEntry] | None:
        """The newest segment of `timeline` numbered from `first` to `last`, with its number."""
        for log_number in reversed(self.logs.get(timeline, [])):
            if log_number * self.per_log > last:
                continue
            if (log_number + 1) * self.per_log <= first:
                return None
            folder = self.folder(timeline, log_number)
            base = log_number * self.per_log
            position = bisect.bisect_right(folder.numbers, last - base) - 1
            if position >= 0 and base + folder.numbers[position] >= first:
                return base + folder.numbers[position], folder.segments[position]
        return None

    def newest_partial(self, timeline: int) -> tuple[int, WalIndexEntry] | None:
        """The `.partial` that is the newest WAL of `timeline`, with its segment number:
        no segment or partial of the timeline comes after it, and its full segment is
        not stored (which always wins)."""
        numbers = self.logs.get(timeline)
        if not numbers:
            return None
        folder = self.folder(timeline, numbers[-1])
        if not folder.partials:
            return None
        entry = folder.partials[-1]
        within = int(entry.name[16:24], 16)
        if folder.numbers and folder.numbers[-1] >= within:
            return None
        return numbers[-1] * self.per_log + within, entry

    def partial_end(self, entry: WalIndexEntry) -> Lsn:
        """Where the WAL in a stored `.partial` ends, at most: the end of its last valid
        page (wal.valid_end). A listing cannot tell, so this reads the object."""
        try:
            data = read(self.archive, entry.name)  # verified, corrupt reads retried
        except NotInArchive:
            raise PitrkitError(f"{entry.name} is gone from the archive: it was replaced by its full segment, or "
                               "deleted; plan again") from None
        try:
            return valid_end(data, read_page_header(data))
        except InvalidSegment as exc:
            raise PitrkitError(f"{wal_folder(entry.name)}{entry.name} is unusable: {exc}") from None

    def newest_on_path(self, path: list[TimelineStep]) -> tuple[int, WalIndexEntry] | None:
        """The newest segment replay along `path` could read."""
        for number, step in reversed(list(enumerate(path))):
            first = step.begin // self.segment_size
            last = math.inf if number + 1 == len(path) else path[number + 1].begin // self.segment_size - 1
            if found := self.newest_segment(step.timeline, first, last):
                return found
        return None

    def segment_name(self, timeline: int, segno: int) -> str:
        return SegmentName(timeline, segno, self.segment_size).name

    def name_on(self, path: list[TimelineStep], segno: int) -> str:
        """The name of the file replay along `path` reads for segment `segno`."""
        return self.segment_name(self.serving_timeline(path, segno), segno)

    def segno(self, name: str) -> int:
        """The number of segment `name` (its first 24 characters: a segment, or its
        `.partial`)."""
        return SegmentName.parse(name[:24], self.segment_size).segno

    # -- walking a path ------------------------------------------------------------------

    def chain(self, path: list[TimelineStep], first: int) -> WalChain:
        """The unbroken run of segments from number `first` along `path`, as far as the
        archive holds them."""
        segments: list[WalIndexEntry] = []
        segno = first
        while True:
            timeline = self.serving_timeline(path, segno)
            log_number, within = divmod(segno, self.per_log)
            # The stretch this folder serves: to its end, or to the next switch.
            end = (log_number + 1) * self.per_log - 1
            if (switch := self._next_switch_segno(path, segno)) is not None:
                end = min(end, switch - 1)
            folder = self._present_folder(timeline, log_number)
            start = bisect.bisect_left(folder.numbers, within) if folder else 0
            run = _run_length(folder.numbers, start, within, end - log_number * self.per_log) if folder else 0
            if folder and run:
                segments.extend(folder.segments[start : start + run])
            segno += run
            if segno <= end:
                if folder and folder.from_index:
                    self.relist(timeline, log_number)  # an index may lag a late push: look again
                    continue
                partial = self.newest_partial(timeline)
                if partial is not None and partial[0] == segno:
                    # Replay ends inside it: nothing after it can be reached.
                    segments.append(partial[1])
                    segno += 1
                    timeline = self.serving_timeline(path, segno)
                missing = self.segment_name(timeline, segno)
                newest = self.newest_on_path(path)
                return WalChain(first, segments, missing, gap=newest is not None and newest[0] > segno)

    def resumes_at(self, path: list[TimelineStep], segno: int) -> int | None:
        """The first stored segment numbered `segno` or later that replay along `path`
        reads: where WAL resumes after a gap. Each step serves its timeline's segments
        from where it begins to where the next step begins (see serving_timeline)."""
        for number, step in enumerate(path):
            ends = math.inf if number + 1 == len(path) else path[number + 1].begin // self.segment_size - 1
            first = max(step.begin // self.segment_size, segno)
            for log_number in self.logs.get(step.timeline, []):
                base = log_number * self.per_log
                if base + self.per_log <= first:
                    continue
                if base > ends:
                    break
                folder = self.folder(step.timeline, log_number)
                position = bisect.bisect_left(folder.numbers, first - base)
                if position < len(folder.numbers) and base + folder.numbers[position] <= ends:
                    return base + folder.numbers[position]
        return None

    def _present_folder(self, timeline: int, log_number: int) -> LogFolder | None:
        if log_number not in self.logs.get(timeline, ()):
            return None
        return self.folder(timeline, log_number)


def _run_length(numbers: Sequence[int], start: int, first: int, last: int) -> int:
    """How many consecutive numbers `first`, `first + 1`, ... up to `last` the sorted,
    distinct `numbers` hold from position `start`."""
    if start >= len(numbers) or numbers[start] != first:
        return 0
    whole = last - first
    if start + whole < len(numbers) and numbers[start + whole] == last:
        return whole + 1  # distinct and sorted, so everything between is there too
    count = 1
    while start + count < len(numbers) and numbers[start + count] == first + count and first + count <= last:
        count += 1
    return count


def _index_entry(info: ObjectInfo) -> WalIndexEntry:
    return WalIndexEntry(info.key.rpartition("/")[2], info.size, info.modified)


def on_path(path: list[TimelineStep], backup: BackupSummary) -> bool:
    """Whether replay along `path` passes through the point where `backup` started."""
    return any(
        step.timeline == backup.timeline
        and step.begin <= backup.start_lsn
        and (step.end is None or backup.start_lsn < step.end)
        for step in path
    )


# --- catalog maintenance --------------------------------------------------------------


def refresh(archive: Archive) -> list[str]:
    """Index the sealed WAL folders that have no index yet; returns the keys written.
    Cheap: two one-level listings, then one listing per folder sealed since last time."""
    wal = ArchivedWal(archive)
    written = []
    for timeline, numbers in wal.logs.items():
        for log_number in numbers[:-1]:
            key = wal_index_key(log_folder(timeline, log_number))
            if key in wal.indexed:
                continue
            try:
                archive.put_document(key, _folder_index(wal.relist(timeline, log_number)), pretty=False)
            except ObjectExists:
                continue  # a concurrent refresh indexed it from the same sealed folder
            written.append(key)
    return written


def rebuild(archive: Archive) -> list[str]:
    """Recreate the whole catalog from the objects, under the catalog lock; returns one
    line per change."""
    with lock.take(archive, "catalog rebuild"):
        return _rebuild(archive)


def _rebuild(archive: Archive) -> list[str]:
    report = []
    finished: list[BackupSummary] = []
    unfinished: list[str] = []
    for backup_id in backup_folders(archive):
        summary = _read_summary(archive, backup_id)
        if summary is None:
            unfinished.append(backup_id)
        else:
            finished.append(summary)
    finished = _oldest_first(finished)
    archive.put_document(BACKUP_CATALOG_KEY, BackupCatalog(backups=finished), overwrite=True)
    line = f"wrote {BACKUP_CATALOG_KEY}: {human_count(len(finished), 'backup')}"
    if unfinished:
        line += f" (left out, no manifest: {', '.join(unfinished)})"
    report.append(line)

    wal = ArchivedWal(archive)
    wanted = set()
    for timeline, numbers in sorted(wal.logs.items()):
        for log_number in numbers[:-1]:
            listed = wal.relist(timeline, log_number)
            key = wal_index_key(log_folder(timeline, log_number))
            archive.put_document(key, _folder_index(listed), pretty=False, overwrite=True)
            wanted.add(key)
            report.append(f"wrote {key}: {human_count(len(listed.entries), 'file')}")
    for key in sorted(wal.indexed - wanted):
        archive.delete(key)
        report.append(f"removed {key}: its folder is gone or still receives WAL")
    return report


def _folder_index(folder: LogFolder) -> WalFolderIndex:
    return WalFolderIndex(
        folder=log_folder(folder.timeline, folder.log_number),
        entries=folder.entries,
        indexed_at=datetime.now(UTC).replace(microsecond=0),
    )


# --- wal-list -------------------------------------------------------------------------


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


class WalListing(msgspec.Struct, kw_only=True, frozen=True):
    files: list[WalRow]


class _BackupSpan(NamedTuple):
    first: int  # segment numbers: the backup needs first..last to become consistent
    last: int
    backup_id: str
    # The highest `last` of this and every earlier span: a segment at or below it is
    # inside some backup's first..last if its owner's span or an earlier one reaches it.
    reach: int


def wal_rows(archive: Archive, only_timeline: int | None = None) -> list[WalRow]:
    """A row per segment and history file, oldest first per timeline."""
    wal = ArchivedWal(archive)
    finished = backups(archive)
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
            numbered = [*zip(folder.numbers, folder.segments, strict=True),
                        *((int(entry.name[16:24], 16), entry) for entry in folder.partials)]
            if folder.partials:
                numbered.sort(key=lambda pair: pair[1].name)
            for number, entry in numbered:
                segment = SegmentName(timeline, log_number * wal.per_log + number, wal.segment_size)
                # A file from before its own timeline's branch point is on no path.
                owner = _owner(spans, firsts, segment.segno) if segment.segno >= branch else None
                rows.append(_segment_row(segment, entry, owner, fresh=not finished))
    return rows


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
                  partial=entry.name.endswith(_PARTIAL_SUFFIX))


def stored_at(modified: float | None) -> datetime | None:
    """An object's store time (`ObjectInfo.modified`, POSIX seconds) as an instant."""
    return None if modified is None else datetime.fromtimestamp(modified, UTC)


# --- showing --------------------------------------------------------------------------


def show_time(moment: datetime | None) -> str:
    """A stored instant as the reader's local time, with its offset."""
    if moment is None:
        return "-"
    try:
        return moment.astimezone().isoformat(sep=" ", timespec="seconds")
    except OverflowError:  # year 1 or 9999 in a forged document: shown as it is stored
        return moment.isoformat(sep=" ", timespec="seconds")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def _configuration(backup: BackupSummary) -> str:
    """Where the backed-up server's configuration was: with the data directory, or how
    many files came from outside it (copied with the backup; see server_config.py)."""
    if backup.configuration is None:
        return "-"
    files = backup.configuration.files
    return f"{len(files)} outside" if files else "in pgdata"


def _backup_table(survey: BackupSurvey) -> str:
    rows = [
        [b.backup_id, b.label, show_time(b.start_time), show_time(b.stop_time), str(b.start_lsn), str(b.stop_lsn),
         str(b.timeline), human_bytes(b.size), human_bytes(b.stored_size), str(b.pg_major),
         _configuration(b)]
        for b in survey.finished
    ]
    rows += [[backup_id, "(unfinished: no manifest)", *["-"] * 9] for backup_id in survey.unfinished]
    rows += [[backup_id, "(being removed by retention)", *["-"] * 9] for backup_id in survey.deleting]
    return _table(["ID", "LABEL", "START", "STOP", "START LSN", "STOP LSN", "TL", "SIZE", "STORED", "PG", "CONFIG"],
                  rows)


def _wal_table(rows: list[WalRow]) -> str:
    def lsn(value: Lsn | None) -> str:
        return "-" if value is None else str(value)

    def state(row: WalRow) -> str:
        said = "before the first backup" if row.state == "before-first-backup" else row.state
        return f"{said}, partial" if row.partial else said

    table = _table(
        ["NAME", "TL", "START LSN", "END LSN", "STORED", "STORED AT", "BACKUP", "STATE"],
        [[row.name, str(row.timeline), lsn(row.start_lsn), lsn(row.end_lsn), human_bytes(row.stored_size),
          show_time(row.stored_at), row.backup or "-", state(row)] for row in rows],
    )
    if any(row.state == "before-first-backup" for row in rows):
        # A fresh archive: WAL with no backup yet is normal, and none of it is removed.
        table += ("\nno backup yet: this WAL is kept, but a restore needs a base backup to start from "
                  "(pitrkit backup-push)")
    return table


class BackupListing(msgspec.Struct, kw_only=True, frozen=True):
    backups: list[BackupSummary]
    unfinished: list[str]
    deleting: list[str] = []  # being removed by retention: not restorable


def command(args: Namespace, config: Config, config_path: Path) -> str:
    archive = Archive(config)
    if args.command == "backup-list":
        survey = survey_backups(archive)
        listing = BackupListing(backups=survey.finished, unfinished=survey.unfinished, deleting=survey.deleting)
        _print(catalog.encode(listing).decode() if args.json else _backup_table(survey))
        return (f"listed {human_count(len(survey.finished), 'backup')}, {len(survey.unfinished)} unfinished, "
                f"{len(survey.deleting)} being removed")
    if args.command == "wal-list":
        rows = wal_rows(archive, args.timeline)
        _print(catalog.encode(WalListing(files=rows)).decode() if args.json else _wal_table(rows))
        return f"listed {human_count(len(rows), 'WAL file')}"
    if args.command == "catalog" and args.action == "rebuild":
        report = rebuild(archive)
        _print("\n".join(report))
        return f"rebuilt the catalog: {human_count(len(report), 'change')}"
    raise UsageError(f"inventory has no command {args.command!r}")


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")

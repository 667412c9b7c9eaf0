"""The archive's WAL as readers see it: its timelines and their paths, the files of each
WAL folder, and the unbroken run of segments replay along a path can read.

The objects under `wal/` are the truth about WAL. `catalog/wal/<TLI><LOG>.json` is the
listing of one sealed WAL folder `wal/<TLI><LOG>/`: one that a later folder of the same
timeline exists for. PostgreSQL archives segments in order, so a sealed folder receives
nothing more and its listing can be kept (catalog/maintenance.py writes them;
ops/retention.py rewrites or removes the index of a folder it removes WAL from). The
newest folder of each timeline is always listed afresh.

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
from collections.abc import Sequence
from operator import attrgetter
from typing import NamedTuple, overload

import msgspec

from pitrkit.catalog.documents import BackupSummary, WalFolderIndex, WalIndexEntry
from pitrkit.errors import NotInArchive, PitrkitError, UsageError
from pitrkit.hookspecs import ObjectInfo, ObjectNotFound
from pitrkit.postgres.wal import (
    HistoryEntry,
    InvalidSegment,
    Lsn,
    SegmentName,
    parse_history,
    read_page_header,
    segments_per_log,
    valid_end,
)
from pitrkit.storage.archive import (
    WAL_INDEX_PREFIX,
    WAL_PREFIX,
    Archive,
    log_folder,
    wal_folder,
    wal_index_key,
)

log = logging.getLogger(__name__)

_LOG_FOLDER = re.compile(r"wal/(?P<timeline>[0-9A-F]{8})(?P<log>[0-9A-F]{8})/")
_HISTORY_KEY = re.compile(r"wal/(?P<timeline>[0-9A-F]{8})\.history")
PARTIAL_SUFFIX = ".partial"


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
                entries = [entry for entry in entries if not entry.name.endswith(PARTIAL_SUFFIX)]
            self.entries = entries
            self.segments = [entry for entry in entries if entry.name[:16] == prefix and len(entry.name) == 24]
            self.partials = [entry for entry in entries
                             if entry.name[:16] == prefix and entry.name == entry.name[:24] + PARTIAL_SUFFIX]
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
        if self.segments and self.segments[-1].name.endswith(PARTIAL_SUFFIX):
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
                text = self.archive.read_wal(name)  # verified, corrupt reads retried
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
            data = self.archive.read_wal(entry.name)  # verified, corrupt reads retried
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

    def chain(self, path: list[TimelineStep], first: int, last: int | None = None) -> WalChain:
        """The unbroken run of segments from number `first` along `path`, as far as the
        archive holds them, or only up to number `last` (a plan that knows where it stops:
        `missing` is then the segment after `last` when the run reaches it)."""
        segments: list[WalIndexEntry] = []
        segno = first
        while True:
            if last is not None and segno > last:
                after = self.segment_name(self.serving_timeline(path, segno), segno)
                return WalChain(first, segments, after, gap=False)
            timeline = self.serving_timeline(path, segno)
            log_number, within = divmod(segno, self.per_log)
            # The stretch this folder serves: to its end, or to the next switch.
            end = (log_number + 1) * self.per_log - 1
            if last is not None:
                end = min(end, last)
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

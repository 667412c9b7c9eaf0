"""The WAL model: LSNs, timelines, segment and file names, history files, page headers.

Everything here is pure arithmetic and parsing over PostgreSQL's on-disk formats
(src/include/access/xlog_internal.h), so it is shared by push, fetch, the planner and the
tests without touching storage.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

from pitrkit.errors import UsageError

# A WAL segment size is a power of two from 1 MiB to 1 GiB (initdb --wal-segsize).
MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30
DEFAULT_SEGMENT_SIZE = 16 << 20

# XLOG_PAGE_MAGIC changes with every major release whose WAL format changes; it is how we
# tell WAL from garbage and which major wrote a segment.
PAGE_MAGIC_TO_MAJOR = {
    0xD101: 12,
    0xD106: 13,
    0xD10D: 14,
    0xD110: 15,
    0xD113: 16,
    0xD116: 17,
    0xD118: 18,
}
XLP_LONG_HEADER = 0x0002

# XLogLongPageHeaderData, native byte order as PostgreSQL writes it:
# magic u16, info u16, tli u32, pageaddr u64, rem_len u32, (pad 4), sysid u64,
# seg_size u32, xlog_blcksz u32.
_LONG_PAGE_HEADER = struct.Struct("=HHIQI4xQII")
# XLogPageHeaderData, the start of every page: magic u16, info u16, tli u32, pageaddr u64.
_PAGE_START = struct.Struct("=HHIQ")


_SEGMENT_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")
_WAL_FILE_NAME = re.compile(
    r"(?P<segment>(?P<tli>[0-9A-F]{8})[0-9A-F]{16})(?:(?P<partial>\.partial)|\.(?P<offset>[0-9A-F]{8})\.backup)?"
    r"|(?P<history>[0-9A-F]{8})\.history"
)


class Lsn(int):
    """A WAL location (XLogRecPtr), printed the way PostgreSQL prints it: `0/16B3748`."""

    _TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        match = cls._TEXT.fullmatch(text.strip())
        if match is None:
            raise UsageError(f"not an LSN: {text!r} (expected the form 0/16B3748)")
        return cls((int(match[1], 16) << 32) | int(match[2], 16))

    def __new__(cls, value: int) -> Lsn:
        if not 0 <= value < 1 << 64:
            raise ValueError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


def check_segment_size(size: int) -> int:
    if size & (size - 1) or not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"invalid WAL segment size {size}: not a power of two from 1 MiB to 1 GiB")
    return size


class SegmentName(NamedTuple):
    """A WAL segment's identity: timeline and segment number, for a given segment size.

    The name's middle and last 8 hex digits are the "log" and "seg" parts of
    XLogFileName(): segno / segments-per-4GiB and segno % segments-per-4GiB.
    """

    timeline: int
    segno: int
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @classmethod
    def parse(cls, name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName:
        match = _SEGMENT_NAME.fullmatch(name)
        if match is None:
            raise UsageError(f"not a WAL segment name: {name!r}")
        timeline, log, seg = (int(part, 16) for part in match.groups())
        per_log = segments_per_log(segment_size)
        if timeline == 0 or seg >= per_log:
            raise UsageError(f"not a WAL segment name for {segment_size >> 20} MiB segments: {name!r}")
        return cls(timeline, log * per_log + seg, segment_size)

    @classmethod
    def containing(cls, timeline: int, lsn: Lsn, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName:
        return cls(timeline, lsn // segment_size, segment_size)

    @property
    def name(self) -> str:
        per_log = segments_per_log(self.segment_size)
        return f"{self.timeline:08X}{self.segno // per_log:08X}{self.segno % per_log:08X}"

    @property
    def start_lsn(self) -> Lsn:
        return Lsn(self.segno * self.segment_size)

    @property
    def end_lsn(self) -> Lsn:
        """The first LSN past this segment."""
        return Lsn((self.segno + 1) * self.segment_size)

    def next(self) -> SegmentName:
        return self._replace(segno=self.segno + 1)

    def __str__(self) -> str:
        return self.name


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // check_segment_size(segment_size)


class WalFileKind:
    SEGMENT = "segment"
    PARTIAL = "partial"
    BACKUP = "backup"
    HISTORY = "history"


class WalFileName(NamedTuple):
    """Any file name PostgreSQL archives or asks for: a segment, `<segment>.partial`,
    `<segment>.<offset>.backup` (a backup history file) or `<timeline>.history`."""

    name: str
    kind: str
    timeline: int
    # The 24-digit segment part for segment, partial and backup files; "" for history files.
    segment: str

    @classmethod
    def parse(cls, name: str) -> WalFileName:
        match = _WAL_FILE_NAME.fullmatch(name)
        if match is None:
            raise UsageError(f"not a WAL file name: {name!r}")
        if match["history"]:
            kind, timeline, segment = WalFileKind.HISTORY, int(match["history"], 16), ""
        else:
            kind = (
                WalFileKind.PARTIAL
                if match["partial"]
                else WalFileKind.BACKUP
                if match["offset"]
                else WalFileKind.SEGMENT
            )
            timeline, segment = int(match["tli"], 16), match["segment"]
        if timeline == 0:
            raise UsageError(f"not a WAL file name (timeline 0): {name!r}")
        return cls(name, kind, timeline, segment)

    @property
    def has_page_header(self) -> bool:
        return self.kind in (WalFileKind.SEGMENT, WalFileKind.PARTIAL)


class HistoryEntry(NamedTuple):
    """One line of a timeline history file: `parent` ended at `switch_lsn`."""

    parent: int
    switch_lsn: Lsn
    reason: str


def parse_history(text: str, name: str = "history file") -> list[HistoryEntry]:
    """Parse a `<timeline>.history` file the way readTimeLineHistory() does: blank and
    `#` lines are ignored; each entry is `parentTLI <tab> switchpoint <tab> reason`, in
    increasing timeline order."""
    entries: list[HistoryEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        try:
            parent = int(fields[0])
            switch = Lsn.parse(fields[1])
        except (IndexError, ValueError, UsageError):
            raise UsageError(f"{name}: line {number} is not 'timeline<TAB>LSN<TAB>reason': {line!r}") from None
        if entries and parent <= entries[-1].parent:
            raise UsageError(f"{name}: line {number}: timeline ids must increase")
        entries.append(HistoryEntry(parent, switch, fields[2] if len(fields) > 2 else ""))
    return entries


class PageHeader(NamedTuple):
    """The long page header at the start of every WAL segment."""

    magic: int
    info: int
    timeline: int
    page_address: Lsn
    system_identifier: int
    segment_size: int
    block_size: int

    @property
    def major(self) -> int:
        return PAGE_MAGIC_TO_MAJOR[self.magic]


LONG_PAGE_HEADER_SIZE = _LONG_PAGE_HEADER.size


class InvalidSegment(ValueError):
    """A file that claims to be a WAL segment but is not a valid one."""


def read_page_header(data: bytes | memoryview) -> PageHeader:
    if len(data) < LONG_PAGE_HEADER_SIZE:
        raise InvalidSegment(f"too short for a WAL page header ({len(data)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_PAGE_HEADER.unpack_from(data)
    if magic not in PAGE_MAGIC_TO_MAJOR:
        raise InvalidSegment(
            f"bad WAL page magic 0x{magic:04X}: not a WAL segment, or from a PostgreSQL "
            "release this pitrkit does not know"
        )
    if not info & XLP_LONG_HEADER:
        raise InvalidSegment("first page lacks the long header flag")
    return PageHeader(magic, info, tli, Lsn(pageaddr), sysid, seg_size, blcksz)


def validate_segment(file: WalFileName, data: bytes | memoryview) -> PageHeader:
    """Check that `data` is the WAL segment `file` names: a known page magic, a long
    header whose segment size matches the data, and a page address equal to the start of
    the named segment. A `.partial` file may be shorter than a segment (pg_receivewal
    writes them padded, but PostgreSQL's own end-of-timeline copy is a full segment)."""
    header = read_page_header(data)
    try:
        check_segment_size(header.segment_size)
    except ValueError as exc:
        raise InvalidSegment(str(exc)) from None
    if file.kind == WalFileKind.SEGMENT and len(data) != header.segment_size:
        raise InvalidSegment(f"size {len(data)} differs from the segment size {header.segment_size} in its header")
    try:
        expected = SegmentName.parse(file.segment, header.segment_size)
    except UsageError as exc:
        raise InvalidSegment(str(exc)) from None
    if header.page_address != expected.start_lsn:
        raise InvalidSegment(
            f"page address {header.page_address} does not match the file name (expected {expected.start_lsn})"
        )
    # After a timeline switch the first segment of the new timeline starts with pages of
    # the old one, so the page's timeline may be lower than the name's, never higher.
    if header.timeline > file.timeline:
        raise InvalidSegment(f"page timeline {header.timeline} is newer than the file name's {file.timeline}")
    return header


def valid_end(data: bytes | memoryview, header: PageHeader) -> Lsn:
    """An upper bound of where the WAL in a partial segment ends: the end of its last
    valid page, one carrying the segment's page magic and its own address.

    A `.partial` ends where its writer stopped. pg_receivewal pads the rest with zeros,
    and a segment PostgreSQL renamed to `.partial` may hold recycled WAL of an older
    segment after the end; neither has valid page headers. Where the last record ends
    within the last valid page can only be told by decoding records, so this is a bound,
    at most one page (XLOG_BLCKSZ) too far."""
    page_size = header.block_size
    if page_size <= 0 or header.segment_size % page_size:
        raise InvalidSegment(f"page size {page_size} does not divide the segment size {header.segment_size}")
    end = 0
    for offset in range(0, min(len(data), header.segment_size) - _PAGE_START.size + 1, page_size):
        magic, _info, _tli, address = _PAGE_START.unpack_from(data, offset)
        if magic != header.magic or address != header.page_address + offset:
            break
        end = offset + page_size
    return Lsn(header.page_address + min(end, len(data)))

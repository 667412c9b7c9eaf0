"""Which of two copies of one partial WAL segment holds more valid WAL, or whether they
hold different WAL.

Two writers archive a timeline's last segment as `<segment>.partial`: a streaming
receiver (pg_receivewal pads what it received with zeros) and, at promotion, the
promoted server's archiver (PostgreSQL renames its copy of the old timeline's last
segment, which after the switch point holds whatever the file held before: zeros, a torn
record, or the recycled WAL of an older segment). Both copies are the same timeline's WAL
up to where each stops; past that one holds more of it and the other holds bytes that are
not WAL. Comparing bytes cannot tell those apart; PostgreSQL's own reader can, and this is
its test: a record is valid when its page carries the segment's page magic and its own
address, its header's xl_prev is the start of the record before it, and its CRC-32C
matches. Where the copies first differ, the record there is valid in one (that copy is
kept), in both (they hold different WAL: two servers wrote this timeline) or in neither;
the last two, and a difference in the tail of a record begun in the previous segment
(whose CRC cannot be checked here), are refused as before.

Pure Python, only `struct`: this runs on the wal-push path, and only when two copies of a
partial differ. The CRC is computed for the one record at the difference.
"""

from __future__ import annotations

import functools
import struct

from pitrkit.postgres.wal import PageHeader, read_page_header

_PAGE_START = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_LONG_PAGE_HEADER_SIZE = 40
_SHORT_PAGE_HEADER_SIZE = 24
_XLP_FIRST_IS_CONTRECORD = 0x0001
_RECORD_HEADER = struct.Struct("<IIQBB2xI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, pad, xl_crc
_RECORD_HEADER_SIZE = 24
_CRC_OFFSET = 20  # offsetof(XLogRecord, xl_crc): the CRC covers the header up to it
_CHUNK = 1 << 16


class Verdict:
    """What `compare` found (plain strings: an Enum costs the wal-push path an import)."""

    STORED = "the stored copy holds all the valid WAL of the new one"
    NEW = "the new copy holds all the valid WAL of the stored one, and more"
    DIVERGE = "the copies hold different WAL, or it cannot be told"


def compare(stored: bytes, new: bytes) -> str:
    """Which copy to keep; both are `<segment>.partial` files of the same name, whose first
    page header wal-push has checked."""
    header = read_page_header(stored)
    if read_page_header(new)[:4] != header[:4]:
        return Verdict.DIVERGE
    a, b = _Stream(stored, header), _Stream(new, header)
    position, previous, checked = a.first_record(), None, 0
    if a.first_rem != b.first_rem:
        return Verdict.DIVERGE
    while True:
        difference = _first_difference(a.content, b.content, checked)
        if difference is None:
            return Verdict.STORED  # the same valid pages: the rest is no WAL in either
        if difference < position:
            # In the tail of a record begun in the previous segment, whose CRC cannot be
            # checked here.
            return Verdict.DIVERGE
        # The records before the difference are the same in both: walk them to the one
        # the difference falls in (or the first one after it, when it is in padding).
        while True:
            if position + _RECORD_HEADER_SIZE > difference:
                break
            length, _xid, _prev, _info, _rmid, _crc = _RECORD_HEADER.unpack_from(a.content, position)
            if length < _RECORD_HEADER_SIZE:
                return Verdict.STORED  # both end here: the same WAL
            if position + length > difference:
                break
            previous = a.lsn(position)
            position = (position + length + 7) & ~7
        valid_a, valid_b = a.valid_record(position, previous), b.valid_record(position, previous)
        if valid_a and valid_b:
            length = _RECORD_HEADER.unpack_from(a.content, position)[0]
            if a.content[position : position + length] != b.content[position : position + length]:
                return Verdict.DIVERGE
            previous, position = a.lsn(position), (position + length + 7) & ~7
            checked = position
            continue  # they differed only in the padding before this record
        if valid_a != valid_b:
            return Verdict.NEW if valid_b else Verdict.STORED
        # Valid in neither: both end their WAL before the difference, but nothing proves
        # either's bytes there are not WAL this reader does not know; refused, as before.
        return Verdict.DIVERGE


class _Stream:
    """A copy's WAL as one byte stream: its valid pages without their headers."""

    def __init__(self, data: bytes, header: PageHeader) -> None:
        self.magic, self.page_size, self.start = header.magic, header.block_size, header.page_address
        self.segment_size = header.segment_size
        self.first_rem = _PAGE_START.unpack_from(data)[4] if header.info & _XLP_FIRST_IS_CONTRECORD else 0
        view = memoryview(data)
        parts = [view[_LONG_PAGE_HEADER_SIZE : self.page_size]]
        for offset in range(self.page_size, len(view) - self.page_size + 1, self.page_size):
            magic, _info, _tli, address, _rem = _PAGE_START.unpack_from(view, offset)
            if magic != self.magic or address != self.start + offset:
                break
            parts.append(view[offset + _SHORT_PAGE_HEADER_SIZE : offset + self.page_size])
        self.content = b"".join(parts)

    def first_record(self) -> int:
        return (self.first_rem + 7) & ~7

    def lsn(self, position: int) -> int:
        """The LSN a record starting at `position` of the stream starts at."""
        first = self.page_size - _LONG_PAGE_HEADER_SIZE
        if position < first:
            return self.start + _LONG_PAGE_HEADER_SIZE + position
        page, within = divmod(position - first, self.page_size - _SHORT_PAGE_HEADER_SIZE)
        return self.start + (page + 1) * self.page_size + _SHORT_PAGE_HEADER_SIZE + within

    def valid_record(self, position: int, previous: int | None) -> bool:
        """Would PostgreSQL replay the record starting at `position`? `previous` is the
        start of the record before it, None for this segment's first record, whose
        predecessor is in an earlier segment."""
        if position + _RECORD_HEADER_SIZE > len(self.content):
            return False
        length, _xid, prev, _info, _rmid, crc = _RECORD_HEADER.unpack_from(self.content, position)
        if length < _RECORD_HEADER_SIZE or position + length > len(self.content):
            return False
        if previous is not None and prev != previous:
            return False
        # The first record's predecessor: in the previous segment, never in an older one,
        # which is where the records of a recycled segment file point.
        if previous is None and not self.start - self.segment_size <= prev < self.lsn(position):
            return False
        record = self.content[position : position + length]
        return _crc32c(record[:_CRC_OFFSET], _crc32c(record[_RECORD_HEADER_SIZE:], 0xFFFFFFFF)) ^ 0xFFFFFFFF == crc


def _first_difference(a: bytes, b: bytes, start: int) -> int | None:
    """The first offset from `start` where the streams differ (one ending counts); None
    when they are the same to the end."""
    end = min(len(a), len(b))
    for offset in range(start, end, _CHUNK):
        stop = min(offset + _CHUNK, end)
        if a[offset:stop] != b[offset:stop]:
            return next(i for i in range(offset, stop) if a[i] != b[i])
    return None if len(a) == len(b) else end


@functools.cache  # built on the first comparison, not at every wal-push's import
def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


def _crc32c(data: bytes, crc: int) -> int:
    """CRC-32C (Castagnoli) as PostgreSQL's COMP_CRC32C: `crc` is the running state,
    0xFFFFFFFF to begin, and the result is XORed with it again to finish."""
    table = _table()
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc

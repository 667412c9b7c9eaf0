"""Reading the records of one WAL segment for the time index: the commit and abort
records (COMMIT/ABORT PREPARED included) with their xid, time and end LSN, the restore
points, and the checkpoints' next full xid that gives 32-bit xids their epoch.

The layouts are PostgreSQL 15-18's (src/include/access/xlogrecord.h, xlog_internal.h,
xact.h, catalog/pg_control.h; xact.c's ParseCommitRecord/ParseAbortRecord). Only the
headers of every record are read; the body is decoded only for the RM_XLOG and RM_XACT
records that matter, which is what keeps the walk fast enough in pure Python (see
docs/archive-format.md, "Time index").

A record belongs to the segment where it ends. A segment may begin with the tail of a
record that started in the previous one: its kind is known only from the previous
segment's `Pending` (what `read_segment` returns for a record left unfinished at the
end); without it the segment's `start_known` is false. A segment ends either with a
record continuing into the next one (`pending`), with XLOG_SWITCH (the rest is padding),
or with the end of the written WAL (a zero length, a page that is not this segment's).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pitrkit.postgres.wal import PAGE_MAGIC_TO_MAJOR, InvalidSegment, Lsn, read_page_header

RM_XLOG_ID = 0
RM_XACT_ID = 1
XLOG_CHECKPOINT_SHUTDOWN = 0x00
XLOG_CHECKPOINT_ONLINE = 0x10
XLOG_SWITCH = 0x40
XLOG_RESTORE_POINT = 0x70
XLOG_XACT_OPMASK = 0x70
XLOG_XACT_HAS_INFO = 0x80
XACT_KINDS = {0x00: "commit", 0x20: "abort", 0x30: "commit_prepared", 0x40: "abort_prepared"}
_XINFO_HAS_DBINFO = 1 << 0
_XINFO_HAS_SUBXACTS = 1 << 1
_XINFO_HAS_RELFILELOCATORS = 1 << 2
_XINFO_HAS_INVALS = 1 << 3
_XINFO_HAS_TWOPHASE = 1 << 4
_XINFO_HAS_DROPPED_STATS = 1 << 8
_XLP_FIRST_IS_CONTRECORD = 0x0001
_RECORD_HEADER = struct.Struct("<IIQBB2xI")  # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, pad, xl_crc
_RECORD_HEADER_SIZE = 24
_TOT_LEN_AND_RMID = struct.Struct("<I13xB")
_PAGE_HEADER = struct.Struct("<HHIQI")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len
_SHORT_PAGE_HEADER_SIZE = 24
_LONG_PAGE_HEADER_SIZE = 40
_MAX_BLOCK_ID = 32
_BLOCK_ID_DATA_SHORT = 255
_BLOCK_ID_DATA_LONG = 254
_BLOCK_ID_ORIGIN = 253
_BLOCK_ID_TOPLEVEL_XID = 252
_BKPBLOCK_HAS_IMAGE = 0x10
_BKPBLOCK_SAME_REL = 0x80
_BKPIMAGE_HAS_HOLE = 0x01
_BKPIMAGE_COMPRESSED = 0x04 | 0x08 | 0x10  # PGLZ, LZ4, ZSTD (15+)
# CheckPoint: redo u64, ThisTimeLineID u32, PrevTimeLineID u32, fullPageWrites bool
# (and from 18 wal_level int), then nextXid, a FullTransactionId aligned to 8: offset 24.
_CHECKPOINT_NEXT_XID = struct.Struct("<24xQ")
_RESTORE_POINT_NAME_SIZE = 64  # MAXFNAMELEN
# TimestampTz counts microseconds from 2000-01-01 (POSTGRES_EPOCH_JDATE); the index
# stores Unix microseconds.
POSTGRES_EPOCH_UNIX_US = 946_684_800_000_000
_XID_HALF = 1 << 31


class XactRecord(NamedTuple):
    """A commit or abort record: what recovery_target_time/xid compare against."""

    kind: str  # "commit", "abort", "commit_prepared", "abort_prepared"
    xid: int  # 32-bit; the prepared transaction's own xid for the PREPARED kinds
    time_us: int  # Unix microseconds (xact_time)
    start_lsn: Lsn
    end_lsn: Lsn


class RestorePoint(NamedTuple):
    name: str
    time_us: int
    end_lsn: Lsn


class Pending(NamedTuple):
    """The start of a record that continues into the next segment: its bytes so far when
    its kind matters to the index (RM_XLOG, RM_XACT, or a header not yet whole), else
    none, and the next segment's first LSN, to check that it is the one continued."""

    next_segment_lsn: Lsn
    start_lsn: Lsn
    head: bytes  # empty when the record is of no interest
    wanted: bool


class SegmentRecords(NamedTuple):
    major: int
    transactions: list[XactRecord]
    restore_points: list[RestorePoint]
    next_full_xids: list[int]  # each checkpoint's nextXid, in WAL order
    start_known: bool  # false when it began with the tail of a record of unknown kind
    pending: Pending | None
    end_lsn: Lsn  # where the records read end (the segment's end, or the end of written WAL)


def read_segment(data: bytes | memoryview, previous: Pending | None = None) -> SegmentRecords:
    """Read one WAL segment (or a .partial file's written part). Raises InvalidSegment
    on a first page that is not WAL or on a record that cannot be decoded."""
    header = read_page_header(data)
    major = PAGE_MAGIC_TO_MAJOR[header.magic]
    page_size = header.block_size
    if page_size not in (1024, 2048, 4096, 8192, 16384, 32768) or len(data) > header.segment_size:
        raise InvalidSegment(f"implausible WAL page size {page_size} or segment size {header.segment_size}")
    start = header.page_address
    stream = _content(data, page_size, header.magic, start)
    transactions: list[XactRecord] = []
    restore_points: list[RestorePoint] = []
    next_full_xids: list[int] = []

    def decode(record: bytes | memoryview, begin: Lsn, end: int) -> bool:
        """Decode one whole record; false when it is XLOG_SWITCH (the rest is padding)."""
        tot_len, xid, _prev, info, rmid, _crc = _RECORD_HEADER.unpack_from(record)
        if rmid == RM_XACT_ID:
            kind = XACT_KINDS.get(info & XLOG_XACT_OPMASK)
            if kind is not None:
                main = _main_data(record, tot_len)
                time_us, xid = _xact(main, info, xid, kind, major)
                transactions.append(XactRecord(kind, xid, time_us, begin, _lsn(start, end, page_size)))
        elif rmid == RM_XLOG_ID:
            what = info & 0xF0
            if what == XLOG_SWITCH:
                return False
            if what in (XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN):
                next_full_xids.append(_CHECKPOINT_NEXT_XID.unpack_from(_main_data(record, tot_len))[0])
            elif what == XLOG_RESTORE_POINT:
                main = _main_data(record, tot_len)
                if len(main) < 8 + _RESTORE_POINT_NAME_SIZE:
                    raise InvalidSegment("a restore point record too short")
                (time_pg,) = struct.unpack_from("<q", main)
                name = bytes(main[8 : 8 + _RESTORE_POINT_NAME_SIZE]).split(b"\0", 1)[0].decode("utf-8", "replace")
                restore_points.append(RestorePoint(name, time_pg + POSTGRES_EPOCH_UNIX_US, _lsn(start, end, page_size)))
        return True

    first_page_rem = _PAGE_HEADER.unpack_from(data)[4]
    position = 0
    start_known = True
    if header.info & _XLP_FIRST_IS_CONTRECORD:
        tail = min(first_page_rem, len(stream))
        if previous is not None and previous.next_segment_lsn == start and tail == first_page_rem:
            if previous.wanted:
                record = previous.head + bytes(stream[:tail])
                if len(record) < _RECORD_HEADER_SIZE or _RECORD_HEADER.unpack_from(record)[0] != len(record):
                    raise InvalidSegment("the record continued from the previous segment does not add up")
                if not decode(record, previous.start_lsn, tail):
                    return SegmentRecords(major, transactions, restore_points, next_full_xids, True, None, Lsn(start))
        else:
            start_known = False
        position = (tail + 7) & ~7
    end = len(stream)
    unpack = _TOT_LEN_AND_RMID.unpack_from
    pending = None
    while position + _RECORD_HEADER_SIZE <= end:
        tot_len, rmid = unpack(stream, position)
        if tot_len < _RECORD_HEADER_SIZE:
            if tot_len == 0:
                break  # the end of the written WAL
            raise InvalidSegment(f"a record length {tot_len} at {_lsn(start, position, page_size)}")
        record_end = position + tot_len
        if record_end > end:
            break
        if rmid <= RM_XACT_ID and not decode(
            stream[position:record_end], _lsn(start, position, page_size, True), record_end
        ):
            end = position = record_end
            break
        position = (record_end + 7) & ~7
    whole = len(data) == header.segment_size and len(stream) == _content_size(header.segment_size, page_size)
    if position < end and whole and end == len(stream):
        # The segment ends inside a record: it belongs to the next segment.
        head = stream[position:end]
        if len(head) >= 4 and struct.unpack_from("<I", head)[0] == 0:
            pending = None
        else:
            wanted = len(head) < _RECORD_HEADER_SIZE or head[17] <= RM_XACT_ID
            pending = Pending(
                Lsn(start + len(data)), _lsn(start, position, page_size, True), bytes(head) if wanted else b"", wanted
            )
    return SegmentRecords(
        major, transactions, restore_points, next_full_xids, start_known, pending, _lsn(start, position, page_size)
    )


def _content(data: bytes | memoryview, page_size: int, magic: int, start: int) -> bytes:
    """The segment's pages without their headers, up to the first page that is not this
    segment's (a recycled file's old content after the end of the written WAL)."""
    view = memoryview(data)
    parts = [view[_LONG_PAGE_HEADER_SIZE:page_size]]
    unpack = _PAGE_HEADER.unpack_from
    for offset in range(page_size, len(view) - page_size + 1, page_size):
        page_magic, _info, _tli, address, _rem = unpack(view, offset)
        if page_magic != magic or address != start + offset:
            break
        parts.append(view[offset + _SHORT_PAGE_HEADER_SIZE : offset + page_size])
    return b"".join(parts)


def _content_size(segment_size: int, page_size: int) -> int:
    pages = segment_size // page_size
    return page_size - _LONG_PAGE_HEADER_SIZE + (pages - 1) * (page_size - _SHORT_PAGE_HEADER_SIZE)


def _lsn(start: int, position: int, page_size: int, starting: bool = False) -> Lsn:
    """The LSN of a position in `_content`'s stream: a record `starting` at a page's
    content starts after its header; one ending there ends at the page boundary."""
    first = page_size - _LONG_PAGE_HEADER_SIZE
    if position < first:
        return Lsn(start + _LONG_PAGE_HEADER_SIZE + position)
    page, within = divmod(position - first, page_size - _SHORT_PAGE_HEADER_SIZE)
    if within == 0 and not starting:
        # A record ending exactly at a page's end ends there, not after the next header.
        return Lsn(start + (page + 1) * page_size)
    return Lsn(start + (page + 1) * page_size + _SHORT_PAGE_HEADER_SIZE + within)


def _main_data(record: bytes | memoryview, tot_len: int) -> memoryview:
    """The record's main data (DecodeXLogRecord's walk over the block headers); it comes
    last in the record."""
    view = memoryview(record)
    position = _RECORD_HEADER_SIZE
    data_total = 0
    main_len = 0
    try:
        while tot_len - position > data_total:
            block_id = view[position]
            position += 1
            if block_id == _BLOCK_ID_DATA_SHORT:
                main_len = view[position]
                position += 1
                break
            if block_id == _BLOCK_ID_DATA_LONG:
                (main_len,) = struct.unpack_from("<I", view, position)
                position += 4
                break
            if block_id == _BLOCK_ID_ORIGIN:
                position += 2
            elif block_id == _BLOCK_ID_TOPLEVEL_XID:
                position += 4
            elif block_id <= _MAX_BLOCK_ID:
                fork_flags = view[position]
                (data_length,) = struct.unpack_from("<H", view, position + 1)
                position += 3
                data_total += data_length
                if fork_flags & _BKPBLOCK_HAS_IMAGE:
                    image_length, _hole_offset, image_info = struct.unpack_from("<HHB", view, position)
                    position += 5
                    data_total += image_length
                    if image_info & _BKPIMAGE_HAS_HOLE and image_info & _BKPIMAGE_COMPRESSED:
                        position += 2
                if not fork_flags & _BKPBLOCK_SAME_REL:
                    position += 12  # RelFileLocator
                position += 4  # BlockNumber
            else:
                raise InvalidSegment(f"a record with block id {block_id}")
    except (IndexError, struct.error):
        raise InvalidSegment("a record whose block headers overrun it") from None
    if main_len > tot_len - position:
        raise InvalidSegment("a record whose main data overruns it")
    return view[tot_len - main_len : tot_len]


def _xact(main: memoryview, info: int, xid: int, kind: str, major: int) -> tuple[int, int]:
    """(time in Unix microseconds, xid) of a commit or abort record, the xid being the
    prepared transaction's for the PREPARED kinds (ParseCommitRecord/ParseAbortRecord)."""
    try:
        (time_pg,) = struct.unpack_from("<q", main)
        if not info & XLOG_XACT_HAS_INFO:
            return time_pg + POSTGRES_EPOCH_UNIX_US, xid
        (xinfo,) = struct.unpack_from("<I", main, 8)
        position = 12
        if xinfo & _XINFO_HAS_DBINFO:
            position += 8
        if xinfo & _XINFO_HAS_SUBXACTS:
            position += 4 + 4 * struct.unpack_from("<i", main, position)[0]
        if xinfo & _XINFO_HAS_RELFILELOCATORS:
            position += 4 + 12 * struct.unpack_from("<i", main, position)[0]
        if xinfo & _XINFO_HAS_DROPPED_STATS:
            # xl_xact_stats_item: kind, dboid, objoid (12 bytes) until 17; 18 made the
            # object id 64-bit (objid_lo, objid_hi: 16 bytes).
            item_size = 16 if major >= 18 else 12
            position += 4 + item_size * struct.unpack_from("<i", main, position)[0]
        if xinfo & _XINFO_HAS_INVALS and kind in ("commit", "commit_prepared"):
            position += 4 + 16 * struct.unpack_from("<i", main, position)[0]  # SharedInvalidationMessage
        if xinfo & _XINFO_HAS_TWOPHASE:
            (xid,) = struct.unpack_from("<I", main, position)
        elif kind.endswith("_prepared"):
            raise InvalidSegment(f"a {kind} record without its prepared transaction's xid")
    except struct.error:
        raise InvalidSegment(f"a {kind} record too short for its contents") from None
    return time_pg + POSTGRES_EPOCH_UNIX_US, xid


def full_xid(xid: int, reference: int) -> int:
    """The 64-bit xid whose low 32 bits are `xid`, nearest to `reference` (a next full
    xid read from a checkpoint): xids in use are within 2^31 of each other, which is what
    PostgreSQL's own wraparound rules guarantee."""
    candidate = (reference & ~0xFFFFFFFF) | xid
    if candidate - reference > _XID_HALF:
        candidate -= 1 << 32
    elif reference - candidate > _XID_HALF:
        candidate += 1 << 32
    return max(candidate, xid)

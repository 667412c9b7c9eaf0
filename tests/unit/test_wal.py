"""pitrkit.postgres.wal: LSNs, segment names, WAL file names, history files and page headers.

Expected values are computed the way PostgreSQL defines them (xlog_internal.h), not by
calling back into pitrkit, so that a wrong formula in pitrkit cannot agree with itself.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pitrkit.errors import UsageError
from pitrkit.postgres.wal import (
    InvalidSegment,
    Lsn,
    SegmentName,
    WalFileKind,
    WalFileName,
    parse_history,
    read_page_header,
    validate_segment,
)
from tests.unit.segments import MIB, PG15_MAGIC, SEG_16MIB, SYSID, long_header, segment

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SEGMENT_SIZES = [1 << shift for shift in range(20, 31)]  # 1 MiB .. 1 GiB
segment_sizes = st.sampled_from(SEGMENT_SIZES)
timelines = st.integers(min_value=1, max_value=0xFFFFFFFF)


# --- Lsn --------------------------------------------------------------------------------


@given(U64)
def test_lsn_str_parse_round_trip(value):
    text = str(Lsn(value))
    # PostgreSQL's "%X/%X": upper-case hex, no leading zeros, two 32-bit halves.
    assert re.fullmatch(r"(0|[1-9A-F][0-9A-F]{0,7})/(0|[1-9A-F][0-9A-F]{0,7})", text)
    high, low = text.split("/")
    assert (int(high, 16) << 32) | int(low, 16) == value
    assert Lsn.parse(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", 0x16_B374D848),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
        ("a/b", (0xA << 32) | 0xB),  # PostgreSQL's pg_lsn input accepts lower case too
    ],
)
def test_lsn_parse_known_values(text, value):
    assert Lsn.parse(text) == value


@pytest.mark.parametrize(
    "text", ["0/", "G/1", "1/2/3", "123456789/0", "", "/1", "0/123456789", "0x1/0", "-1/0", "1 /2", "1/-2"]
)
def test_lsn_parse_rejects_malformed(text):
    with pytest.raises(UsageError, match="not an LSN"):
        Lsn.parse(text)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_lsn_out_of_range(value):
    with pytest.raises(ValueError):
        Lsn(value)


# --- SegmentName ------------------------------------------------------------------------


@st.composite
def segment_names(draw):
    size = draw(segment_sizes)
    per_log = (1 << 32) // size
    # The very last segment of the 64-bit space is left out: its end LSN is 2^64, which is
    # not an LSN (PostgreSQL's arithmetic wraps there too).
    segno = draw(st.integers(min_value=0, max_value=(1 << 32) * per_log - 2))
    return SegmentName(draw(timelines), segno, size)


@given(segment_names())
def test_segment_name_layout_and_round_trip(segment_name):
    size, start = segment_name.segment_size, segment_name.segno * segment_name.segment_size
    name = segment_name.name
    # XLogFileName: TLI, then the "log" (high 32 bits of the start LSN), then the segment
    # number within that log (low 32 bits / segment size).
    assert name == f"{segment_name.timeline:08X}{start >> 32:08X}{(start & 0xFFFFFFFF) // size:08X}"
    assert str(segment_name) == name
    assert SegmentName.parse(name, size) == segment_name


@given(segment_names())
def test_segment_start_and_end_lsn(segment_name):
    size = segment_name.segment_size
    assert segment_name.start_lsn == segment_name.segno * size
    assert segment_name.end_lsn - segment_name.start_lsn == size
    assert isinstance(segment_name.start_lsn, Lsn) and isinstance(segment_name.end_lsn, Lsn)
    assert segment_name.next().start_lsn == segment_name.end_lsn


@given(segment_sizes, timelines, st.data())
def test_containing_contains_the_lsn(size, timeline, data):
    lsn = Lsn(data.draw(st.integers(min_value=0, max_value=2**64 - 1 - size)))
    found = SegmentName.containing(timeline, lsn, size)
    assert found.timeline == timeline and found.segment_size == size
    assert found.start_lsn <= lsn < found.end_lsn


@given(segment_names())
def test_containing_segment_boundaries(segment_name):
    tli, size = segment_name.timeline, segment_name.segment_size
    assert SegmentName.containing(tli, segment_name.start_lsn, size) == segment_name
    assert SegmentName.containing(tli, Lsn(segment_name.end_lsn - 1), size) == segment_name
    # The end LSN is the first byte of the next segment, not the last of this one.
    assert SegmentName.containing(tli, segment_name.end_lsn, size) == segment_name.next()


@given(segment_names())
def test_next_sorts_after_and_keeps_timeline(segment_name):
    following = segment_name.next()
    assert following.timeline == segment_name.timeline
    assert following.segno == segment_name.segno + 1
    # Archive listings rely on names sorting in WAL order within a timeline.
    assert following.name > segment_name.name


@pytest.mark.parametrize("size", SEGMENT_SIZES, ids=lambda size: f"{size // MIB}MiB")
def test_next_crosses_the_4gib_log_boundary(size):
    last_seg = (1 << 32) // size - 1
    last = SegmentName.parse(f"00000001" f"00000000" f"{last_seg:08X}", size)
    assert last.end_lsn == 1 << 32
    assert last.next().name == "000000010000000100000000"


def test_log_boundary_known_names():
    assert SegmentName.parse("0000000100000000000000FF").next().name == "000000010000000100000000"
    gib = 1 << 30
    assert SegmentName.parse("000000010000000000000003", gib).next().name == "000000010000000100000000"
    # ...and 00000004 does not exist with 1 GiB segments.
    with pytest.raises(UsageError):
        SegmentName.parse("000000010000000000000004", gib)
    assert SegmentName.parse("000000010000000000000004", gib // 2).start_lsn == 4 * (gib // 2)


def test_default_segment_size_is_16mib():
    assert SegmentName.parse("000000010000000000000002").start_lsn == 2 * SEG_16MIB
    assert SegmentName.containing(1, Lsn.parse("0/16B3748")).name == "000000010000000000000001"


@pytest.mark.parametrize(
    "name",
    [
        "00000001000000000000000a",  # lower-case hex: PostgreSQL never writes it
        "0000000100000000000000AG",
        "00000001000000000000000",  # 23 characters
        "0000000100000000000000001",  # 25 characters
        "000000010000000000000100",  # seg part 0x100 >= 256 segments per log (16 MiB)
        "000000000000000000000001",  # timeline 0 does not exist
        "000000010000000000000001.partial",
        " 000000010000000000000001",
        "",
    ],
)
def test_segment_name_rejects_invalid(name):
    with pytest.raises(UsageError):
        SegmentName.parse(name)


@given(segment_sizes, st.data())
def test_segment_name_rejects_seg_part_beyond_the_log(size, data):
    per_log = (1 << 32) // size
    seg = data.draw(st.integers(min_value=per_log, max_value=0xFFFFFFFF))
    with pytest.raises(UsageError):
        SegmentName.parse(f"0000000100000000{seg:08X}", size)


@pytest.mark.parametrize("size", [0, 3 * MIB, MIB // 2, 2 << 30])
def test_segment_name_rejects_invalid_segment_size(size):
    with pytest.raises(ValueError, match="segment size"):
        SegmentName.parse("000000010000000000000001", size)


# --- WalFileName ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "segment_part", "has_page_header"),
    [
        ("000000010000000000000002", WalFileKind.SEGMENT, 1, "000000010000000000000002", True),
        ("0000000A00000003000000FF", WalFileKind.SEGMENT, 10, "0000000A00000003000000FF", True),
        ("000000020000000000000005.partial", WalFileKind.PARTIAL, 2, "000000020000000000000005", True),
        ("000000010000000000000002.00000028.backup", WalFileKind.BACKUP, 1, "000000010000000000000002", False),
        ("00000002.history", WalFileKind.HISTORY, 2, "", False),
        ("0000001F.history", WalFileKind.HISTORY, 31, "", False),
    ],
)
def test_wal_file_name_parse(name, kind, timeline, segment_part, has_page_header):
    parsed = WalFileName.parse(name)
    assert parsed.name == name
    assert parsed.kind == kind
    assert parsed.timeline == timeline
    assert parsed.segment == segment_part
    assert parsed.has_page_header is has_page_header


@pytest.mark.parametrize(
    "name",
    [
        "RECOVERYXLOG",
        "RECOVERYHISTORY",
        "000000010000000000000002.foo",
        "000000010000000000000002.partial.backup",
        "000000010000000000000002.0000028.backup",
        "000000010000000000000002.backup",
        "../x",
        "../000000010000000000000002",
        "pg_wal/000000010000000000000002",
        "00000001000000000000000a",
        "0000000a.history",
        "00000000.history",
        "000000000000000000000002",
        "1.history",
        "",
    ],
)
def test_wal_file_name_rejects(name):
    with pytest.raises(UsageError):
        WalFileName.parse(name)


# --- history files ----------------------------------------------------------------------

# What PostgreSQL 15 writes for timeline 3 (writeTimeLineHistory), plus the comments and
# blank lines readTimeLineHistory() tolerates.
HISTORY_TEXT = (
    "# written by hand after an incident\n"
    "1\t0/3000148\tno recovery target specified\n"
    "\n"
    "   \n"
    "2\t0/50000D8\tat restore point \"before upgrade\"\n"
)


def test_parse_history_real_format():
    entries = parse_history(HISTORY_TEXT, "00000003.history")
    assert entries == [
        (1, 0x3000148, "no recovery target specified"),
        (2, 0x50000D8, 'at restore point "before upgrade"'),
    ]
    assert all(isinstance(entry.switch_lsn, Lsn) for entry in entries)
    assert entries[1].parent == 2 and entries[1].reason.startswith("at restore point")


def test_parse_history_empty_and_comment_only():
    assert parse_history("") == []
    assert parse_history("# nothing yet\n\n") == []


def test_parse_history_reason_is_optional():
    assert parse_history("1\t0/3000148\n") == [(1, 0x3000148, "")]


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ("2\t0/5000000\tb\n1\t0/3000000\ta\n", 2),  # decreasing
        ("1\t0/3000000\ta\n1\t0/5000000\tb\n", 2),  # repeated
        ("hello world\n", 1),
        ("1\tnot-an-lsn\treason\n", 1),
        ("1\n", 1),  # no switch point
        ("# comment\n\nx\t0/1\treason\n", 3),  # line numbers count comments and blanks
    ],
)
def test_parse_history_rejects(text, bad_line):
    with pytest.raises(UsageError, match=f"00000003.history: line {bad_line}\\b"):
        parse_history(text, "00000003.history")


# --- page headers and segment validation ------------------------------------------------

REAL_SEGMENT = Path("/srv/walbench/d/wal/000000010000000000000002")


def _real_segment_or_skip() -> bytes:
    if not (REAL_SEGMENT.is_file() and os.access(REAL_SEGMENT, os.R_OK)):
        pytest.skip(f"no real PostgreSQL WAL segment at {REAL_SEGMENT}")
    return REAL_SEGMENT.read_bytes()


def test_synthetic_header_layout_matches_real_postgresql_15():
    """The fakes below are only as good as their layout; compare one to a real segment.
    Fields are read from their documented offsets, not with the struct under test."""
    raw = _real_segment_or_skip()[:40]

    def field(offset, size):
        return int.from_bytes(raw[offset : offset + size], sys.byteorder)

    assert field(0, 2) == PG15_MAGIC
    assert raw[20:24] == b"\0\0\0\0"  # alignment padding before the 8-byte system id
    rebuilt = long_header(
        info=field(2, 2), timeline=1, pageaddr=2 * SEG_16MIB, rem_len=field(16, 4),
        sysid=field(24, 8), seg_size=SEG_16MIB, blcksz=8192,
    )
    assert rebuilt == raw


def test_real_postgresql_15_segment_validates():
    raw = _real_segment_or_skip()
    header = validate_segment(WalFileName.parse(REAL_SEGMENT.name), raw)
    assert header.major == 15
    assert header.timeline == 1
    assert header.page_address == 2 * SEG_16MIB
    assert header.segment_size == SEG_16MIB and header.block_size == 8192
    # The same bytes under another segment's name do not match their page address.
    with pytest.raises(InvalidSegment, match="page address"):
        validate_segment(WalFileName.parse("000000010000000000000003"), raw)


def test_read_page_header_fields():
    header = read_page_header(long_header(info=0x0007, timeline=3, pageaddr=0x16_00000000, rem_len=77))
    assert header.magic == PG15_MAGIC and header.major == 15
    assert header.info == 0x0007
    assert header.timeline == 3
    assert header.page_address == 0x16_00000000 and isinstance(header.page_address, Lsn)
    assert header.system_identifier == SYSID
    assert header.segment_size == SEG_16MIB
    assert header.block_size == 8192


@pytest.mark.parametrize(
    ("magic", "major"), [(0xD101, 12), (0xD106, 13), (0xD10D, 14), (0xD110, 15), (0xD113, 16), (0xD116, 17)]
)
def test_read_page_header_knows_majors(magic, major):
    assert read_page_header(long_header(magic=magic, pageaddr=0)).major == major


def test_read_page_header_rejects_short_data():
    with pytest.raises(InvalidSegment, match="too short"):
        read_page_header(long_header(pageaddr=0)[:39])


SEG2 = WalFileName.parse("000000010000000000000002")


def test_validate_segment_accepts_valid():
    data = segment(2)
    assert len(data) == SEG_16MIB
    header = validate_segment(SEG2, data)
    assert header.page_address == 2 * SEG_16MIB and header.system_identifier == SYSID


@given(segment_sizes, st.integers(min_value=0, max_value=10_000))
def test_validate_segment_any_segment_size(size, segno):
    name = SegmentName(1, segno, size).name
    # A short .partial keeps this fast for 1 GiB segments; the address check still applies.
    data = segment(segno, seg_size=size, length=8192)
    assert validate_segment(WalFileName.parse(name + ".partial"), data).segment_size == size
    with pytest.raises(InvalidSegment, match="page address"):
        validate_segment(WalFileName.parse(SegmentName(1, segno + 1, size).name + ".partial"), data)


def test_validate_segment_rejects_bad_magic():
    data = bytearray(segment(2))
    data[0:2] = b"\x00\x00"
    with pytest.raises(InvalidSegment, match="magic"):
        validate_segment(SEG2, bytes(data))


def test_validate_segment_rejects_garbage():
    with pytest.raises(InvalidSegment):
        validate_segment(SEG2, b"not WAL, just text " * (SEG_16MIB // 19) + b"x" * (SEG_16MIB % 19))


def test_validate_segment_rejects_missing_long_header_flag():
    with pytest.raises(InvalidSegment, match="long header"):
        validate_segment(SEG2, segment(2, info=0x0005))  # every flag but XLP_LONG_HEADER


@pytest.mark.parametrize("pageaddr", [0, 3 * SEG_16MIB, 2 * SEG_16MIB + 8192, (1 << 32) + 2 * SEG_16MIB])
def test_validate_segment_rejects_wrong_page_address(pageaddr):
    with pytest.raises(InvalidSegment, match="page address"):
        validate_segment(SEG2, segment(2, pageaddr=pageaddr))


@pytest.mark.parametrize("length", [SEG_16MIB - 1, SEG_16MIB + 1, SEG_16MIB // 2, 8192])
def test_validate_segment_rejects_size_not_matching_header(length):
    with pytest.raises(InvalidSegment, match="size"):
        validate_segment(SEG2, segment(2, length=length))


def test_validate_segment_rejects_invalid_segment_size_in_header():
    # A 16 MiB file whose header claims 3 MiB segments (not a power of two).
    with pytest.raises(InvalidSegment, match="segment size"):
        validate_segment(SEG2, segment(2, seg_size=3 * MIB, pageaddr=2 * SEG_16MIB, length=SEG_16MIB))


def test_validate_segment_page_timeline():
    name_tli2 = WalFileName.parse("000000020000000000000002")
    # The first segment of a new timeline starts with pages written on the old one.
    assert validate_segment(name_tli2, segment(2, timeline=1)).timeline == 1
    assert validate_segment(name_tli2, segment(2, timeline=2)).timeline == 2
    with pytest.raises(InvalidSegment, match="timeline 3"):
        validate_segment(name_tli2, segment(2, timeline=3))


def test_validate_segment_short_partial_is_accepted():
    partial = WalFileName.parse("000000010000000000000002.partial")
    assert validate_segment(partial, segment(2, length=8192)).page_address == 2 * SEG_16MIB
    assert validate_segment(partial, segment(2)).page_address == 2 * SEG_16MIB
    # ...but it must still be the named segment's WAL.
    with pytest.raises(InvalidSegment, match="page address"):
        validate_segment(partial, segment(3, length=8192))
    with pytest.raises(InvalidSegment, match="too short"):
        validate_segment(partial, segment(2, length=20))


def test_validate_segment_checks_name_against_the_headers_segment_size():
    # 000000010000000000000004 is a fine name for 512 MiB segments, but there is no
    # fourth segment per 4 GiB log with 1 GiB segments. This file cannot be what its
    # name says, whichever error reports it.
    gib = 1 << 30
    name = WalFileName.parse("000000010000000000000004.partial")
    assert validate_segment(name, segment(4, seg_size=gib // 2, length=8192)).segment_size == gib // 2
    with pytest.raises((InvalidSegment, UsageError)):
        validate_segment(name, segment(4, seg_size=gib, pageaddr=4 * gib, length=8192))

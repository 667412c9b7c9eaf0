"""Two copies of one `.partial` compared as WAL (pitrkit/postgres/partial_copies.py), on
synthetic records within the first page; tests/integration/test_failover.py does it with
a real promotion's segments, records across pages and real CRCs."""

from __future__ import annotations

import struct

from pitrkit.postgres.partial_copies import Verdict, _crc32c, compare
from tests.unit.segments import SEG_16MIB, segment

SEGNO = 3
START = SEGNO * SEG_16MIB
FIRST = START + 40  # the first record, right after the long page header


def records(*payloads: bytes, first_prev: int = START - 200) -> bytes:
    """WAL records chained by xl_prev, each with its CRC-32C, MAXALIGNed."""
    out, previous = b"", first_prev
    for payload in payloads:
        length = 24 + len(payload)
        head = struct.pack("<IIQBB2x", length, 700, previous, 0, 1)
        crc = _crc32c(head, _crc32c(payload, 0xFFFFFFFF)) ^ 0xFFFFFFFF
        previous = FIRST + len(out)
        out += (head + struct.pack("<I", crc) + payload).ljust((length + 7) & ~7, b"\0")
    return out


def copy(wal: bytes, tail: bytes = b"") -> bytes:
    return segment(SEGNO, filler=wal + tail)


COMMON = records(b"a" * 100, b"b" * 60, b"c" * 30)
LONGER = records(b"a" * 100, b"b" * 60, b"c" * 30, b"d" * 80, b"e" * 10)
JUNK = struct.pack("<IIQBB2xI", 64, 9, 4242, 0, 1, 1234) + b"\x17" * 40  # a recycled file's old bytes


def test_the_copy_with_more_valid_wal_is_kept_whichever_is_stored():
    receiver, promoted = copy(LONGER), copy(COMMON, JUNK)
    assert compare(receiver, promoted) == Verdict.STORED
    assert compare(promoted, receiver) == Verdict.NEW


def test_a_torn_record_is_not_wal():
    torn = copy(LONGER[: len(COMMON) + 50], JUNK)  # record d cut short, then other bytes
    assert compare(copy(LONGER), torn) == Verdict.STORED
    assert compare(torn, copy(LONGER)) == Verdict.NEW


def test_a_record_that_does_not_chain_is_not_wal():
    # Valid on its own (its CRC matches) but its xl_prev points elsewhere: an older
    # segment's record at the same offset of a recycled file.
    stray = records(b"d" * 80, first_prev=SEG_16MIB // 2)
    assert compare(copy(LONGER), copy(COMMON, stray)) == Verdict.STORED
    assert compare(copy(COMMON, stray), copy(LONGER)) == Verdict.NEW


def test_different_valid_wal_is_refused():
    other = records(b"a" * 100, b"b" * 60, b"c" * 30, b"X" * 80)
    assert compare(copy(LONGER), copy(other)) == Verdict.DIVERGE


def test_no_valid_wal_at_the_difference_is_refused():
    assert compare(copy(COMMON, JUNK), copy(COMMON, JUNK[:8] + b"\x18" * 40)) == Verdict.DIVERGE


def test_a_difference_in_the_tail_of_the_previous_segments_record_is_refused():
    rem = 16
    stored = segment(SEGNO, filler=b"\x01" * 16 + records(b"a" * 100, first_prev=START - 100), rem_len=rem, info=3)
    new = segment(SEGNO, filler=b"\x02" * 16 + records(b"a" * 100, first_prev=START - 100), rem_len=rem, info=3)
    assert compare(stored, new) == Verdict.DIVERGE

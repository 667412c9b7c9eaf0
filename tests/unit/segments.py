"""Synthetic WAL segments for tests, built independently of pitrkit.postgres.wal.

The layout is PostgreSQL's XLogLongPageHeaderData (src/include/access/xlog_internal.h)
in native byte order; test_wal.py checks it against a real PostgreSQL 15 segment when
one is available, so these fakes are known to look like the real thing.
"""

from __future__ import annotations

import struct

from pitrkit.ops.init import ClusterFacts, initialise
from pitrkit.storage.archive import Archive

LONG_HEADER = struct.Struct("=HHIQI4xQII")
PG15_MAGIC = 0xD110
XLP_LONG_HEADER = 0x0002
MIB = 1 << 20
SEG_16MIB = 16 * MIB
SYSID = 7312345678901234567


def long_header(
    *,
    magic: int = PG15_MAGIC,
    info: int = XLP_LONG_HEADER,
    timeline: int = 1,
    pageaddr: int,
    rem_len: int = 0,
    sysid: int = SYSID,
    seg_size: int = SEG_16MIB,
    blcksz: int = 8192,
) -> bytes:
    return LONG_HEADER.pack(magic, info, timeline, pageaddr, rem_len, sysid, seg_size, blcksz)


def segment(segno: int, *, length: int | None = None, filler: bytes = b"", **fields) -> bytes:
    """A WAL segment whose first page claims to start segment `segno`; zero-padded to
    `length` (default: the header's segment size). `filler` goes right after the header,
    to make two segments with the same name but different content."""
    seg_size = fields.get("seg_size", SEG_16MIB)
    fields.setdefault("pageaddr", segno * seg_size)
    head = long_header(**fields) + filler
    return head.ljust(seg_size if length is None else length, b"\0")[: seg_size if length is None else length]


def init_archive(archive: Archive, *, sysid: int = SYSID, seg_size: int = SEG_16MIB, major: int = 15) -> None:
    """Create `archive.json` the way `pitrkit init` does (its own code), for the cluster
    these segments come from: nothing is pushed into an archive that was not created."""
    initialise(archive, ClusterFacts(sysid, seg_size, major, "the test"))

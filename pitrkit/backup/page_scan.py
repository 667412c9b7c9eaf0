"""Finding the changed pages of a relation segment file by reading it: the fallback when
WAL summaries cannot say which blocks changed (PostgreSQL before 17, summarize_wal off, a
range the summaries do not cover).

A page must be stored when its LSN (pd_lsn) is at or past `since` (the parent's start:
WAL from there on changed it), and whenever the page cannot vouch for itself: a new page
(pd_upper 0, all zeros or not: never trusted as "absent") or a header that is not valid.
With data checksums a page whose checksum fails is read again once: a concurrent write
may have torn the first read. If the second read verifies and its LSN is old, the page
is unchanged and is not stored; otherwise (it still fails, or it changed between the
reads) it is stored as read the second time.

Why an old, valid page may come from the parent: the backup's start checkpoint wrote
every page changed before it, so a page whose LSN is before the parent's start has not
changed since the parent's start; the parent's copy, taken after that start, is the same
page. A write racing this read after the checkpoint is logged after this backup's start
with a full-page image (a running backup forces full_page_writes), and replay from that
start rewrites the page.

The checksum is PostgreSQL's pg_checksum_page (src/include/storage/checksum_impl.h),
computed with numpy over many pages at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pitrkit.catalog.documents import BLOCK_SIZE
from pitrkit.postgres.wal import Lsn

if TYPE_CHECKING:
    import numpy

# Read this many pages per pread (4 MiB).
CHUNK_PAGES = 512

# checksum_impl.h: N_SUMS parallel FNV-1a-like sums over the page as uint32 words.
N_SUMS = 32
FNV_PRIME = 16777619
CHECKSUM_BASE_OFFSETS = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)

# PageHeaderData (src/include/storage/bufpage.h), as 16-bit words: pd_lsn 0-3,
# pd_checksum 4, pd_flags 5, pd_lower 6, pd_upper 7, pd_special 8, pd_pagesize_version 9.
_CHECKSUM, _FLAGS, _LOWER, _UPPER, _SPECIAL, _PAGESIZE_VERSION = 4, 5, 6, 7, 8, 9
_HEADER_SIZE = 24  # SizeOfPageHeaderData
_VALID_FLAGS = 0x0007  # PD_VALID_FLAG_BITS
_PAGE_LAYOUT_VERSION = 4
_MAXALIGN = 8

Pread = Callable[[int, int, int], bytes]


def changed_pages(fd: int, block_count: int, first_block: int, since: Lsn, checksums: bool,
                  pread: Pread = os.pread) -> Iterator[tuple[int, bytes]]:
    """(block index within the file, page) for every page of the first `block_count`
    blocks of the open segment file `fd` that must be stored, ascending. `first_block`
    is the file's first block's number in the relation (the checksum mixes it in). A file
    shorter than `block_count` (truncated under the scan) just ends. `pread` is os.pread
    except in tests (a writer racing the re-read)."""
    import numpy as np  # only when a backup reads pages: wal-push and wal-fetch never load numpy

    for chunk_start in range(0, block_count, CHUNK_PAGES):
        wanted = min(CHUNK_PAGES, block_count - chunk_start)
        data = pread(fd, wanted * BLOCK_SIZE, chunk_start * BLOCK_SIZE)
        pages = len(data) // BLOCK_SIZE
        if pages == 0:
            return
        data = data[:pages * BLOCK_SIZE]
        store, suspect = _triage(data, pages, first_block + chunk_start, since, checksums)
        for index in np.flatnonzero(store | suspect).tolist():
            page = data[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE]
            block = chunk_start + index
            if suspect[index]:
                again = pread(fd, BLOCK_SIZE, block * BLOCK_SIZE)
                if len(again) < BLOCK_SIZE:
                    return  # truncated meanwhile
                keep, still_suspect = _triage(again, 1, first_block + block, since, checksums)
                if not keep[0] and not still_suspect[0]:
                    continue  # the first read was torn; the page itself is unchanged
                page = again
            yield block, page
        if pages < wanted:
            return


def _triage(data: bytes, pages: int, first_block: int, since: Lsn,
            checksums: bool) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Per page: stored for certain (changed, new or not valid), and suspect (old and
    valid but its checksum fails: read it again)."""
    import numpy as np  # only when a backup reads pages

    halves = np.frombuffer(data, dtype=np.uint16, count=pages * BLOCK_SIZE // 2).reshape(pages, BLOCK_SIZE // 2)
    words = np.frombuffer(data, dtype=np.uint32, count=pages * BLOCK_SIZE // 4).reshape(pages, BLOCK_SIZE // 4)
    # pd_lsn is two native uint32: xlogid (the high half), then xrecoff.
    lsn = (words[:, 0].astype(np.uint64) << np.uint64(32)) | words[:, 1].astype(np.uint64)
    lower, upper, special = halves[:, _LOWER], halves[:, _UPPER], halves[:, _SPECIAL]
    # PageIsVerified's header checks (src/backend/storage/page/bufpage.c), and beside them
    # pd_lower past the header and the page size and layout version; pd_upper 0 is a new page.
    valid = ((halves[:, _FLAGS] & ~np.uint16(_VALID_FLAGS)) == 0) & (lower >= _HEADER_SIZE) & (lower <= upper) \
        & (upper <= special) & (special <= BLOCK_SIZE) & (special % _MAXALIGN == 0) \
        & (halves[:, _PAGESIZE_VERSION] == (BLOCK_SIZE | _PAGE_LAYOUT_VERSION))
    store = ~valid | (lsn >= np.uint64(since))
    suspect = np.zeros(pages, dtype=bool)
    if checksums and not store.all():
        old = np.flatnonzero(~store)
        computed = checksums_of(words[old], first_block + old)
        suspect[old] = computed != halves[old, _CHECKSUM]
    return store, suspect


def checksums_of(words: numpy.ndarray, blocks: numpy.ndarray) -> numpy.ndarray:
    """pg_checksum_page for each row of `words` (pages as native uint32 words) at its
    block number in `blocks`: the 32 sums run side by side, and so do the pages."""
    import numpy as np  # only when a backup reads pages

    pages = words.shape[0]
    grid = words.reshape(pages, BLOCK_SIZE // (4 * N_SUMS), N_SUMS)
    prime = np.uint32(FNV_PRIME)
    shift = np.uint32(17)
    sums = np.broadcast_to(np.array(CHECKSUM_BASE_OFFSETS, dtype=np.uint32), (pages, N_SUMS)).copy()
    # The checksum is computed with pd_checksum (the low-addressed half of word 2) zeroed.
    without_checksum = np.frombuffer(b"\x00\x00\xff\xff", dtype=np.uint32)[0]
    for row in range(grid.shape[1]):
        value = grid[:, row, :]
        if row == 0:
            value = value.copy()
            value[:, 2] &= without_checksum
        mixed = sums ^ value
        sums = mixed * prime ^ (mixed >> shift)
    for _ in range(2):  # two rounds of zeros for the final mixing
        sums = sums * prime ^ (sums >> shift)
    folded = np.bitwise_xor.reduce(sums, axis=1) ^ blocks.astype(np.uint32)
    return (folded % np.uint32(65535) + np.uint32(1)).astype(np.uint16)

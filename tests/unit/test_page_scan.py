"""The page scan (backup/page_scan.py): which pages of a relation file an incremental
backup stores when it reads them, and PostgreSQL's page checksum it relies on, checked
against a plain transcription of checksum_impl.h and against pages a real PostgreSQL 18
wrote with data checksums (pages/pg18-checksummed-pages.bin: heap blocks 0 and 1, the
visibility map's block 0, a btree's block 0)."""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from pitrkit.backup import page_scan
from pitrkit.catalog.documents import BLOCK_SIZE, BLOCKS_PER_SEGMENT
from pitrkit.postgres.wal import Lsn

REAL_PAGES = Path(__file__).parent / "pages" / "pg18-checksummed-pages.bin"
REAL_BLOCKS = [0, 1, 0, 0]  # each real page's block number in its relation
ENDIAN = "<" if sys.byteorder == "little" else ">"

# --- the checksum, as checksum_impl.h writes it ---------------------------------------------


def reference_checksum(page: bytes, block: int) -> int:
    """pg_checksum_page, one uint32 at a time, as plainly as the C."""
    words = list(struct.unpack(f"{ENDIAN}{BLOCK_SIZE // 4}I", page))
    words[2] &= struct.unpack(f"{ENDIAN}I", b"\x00\x00\xff\xff")[0]  # pd_checksum counts as 0

    def comp(checksum: int, value: int) -> int:
        tmp = checksum ^ value
        return ((tmp * 16777619) & 0xFFFFFFFF) ^ (tmp >> 17)

    sums = list(page_scan.CHECKSUM_BASE_OFFSETS)
    for row in range(BLOCK_SIZE // (4 * 32)):
        for column in range(32):
            sums[column] = comp(sums[column], words[row * 32 + column])
    for _ in range(2):
        for column in range(32):
            sums[column] = comp(sums[column], 0)
    result = 0
    for value in sums:
        result ^= value
    return ((result ^ block) % 65535) + 1


def numpy_checksums(pages: bytes, blocks: list[int]) -> list[int]:
    words = np.frombuffer(pages, dtype=np.uint32).reshape(len(blocks), BLOCK_SIZE // 4)
    return page_scan.checksums_of(words, np.array(blocks)).tolist()


def stored_checksum(page: bytes) -> int:
    return struct.unpack_from(f"{ENDIAN}H", page, 8)[0]


def real_pages() -> list[bytes]:
    data = REAL_PAGES.read_bytes()
    return [data[n * BLOCK_SIZE:(n + 1) * BLOCK_SIZE] for n in range(len(data) // BLOCK_SIZE)]


def test_the_checksum_offsets_are_postgresqls():
    # The table's first and last entries, as checksum_impl.h has them.
    assert page_scan.CHECKSUM_BASE_OFFSETS[0] == 0x5B1F36E9
    assert page_scan.CHECKSUM_BASE_OFFSETS[-2:] == (0xF2CA9FD3, 0x959BD756)
    assert len(page_scan.CHECKSUM_BASE_OFFSETS) == page_scan.N_SUMS == 32


def test_pages_postgresql_wrote_verify():
    pages = real_pages()
    assert len(pages) == len(REAL_BLOCKS)
    for page, block in zip(pages, REAL_BLOCKS, strict=True):
        assert stored_checksum(page) != 0
        assert reference_checksum(page, block) == stored_checksum(page)
    assert numpy_checksums(b"".join(pages), REAL_BLOCKS) == [stored_checksum(page) for page in pages]


def test_a_flipped_byte_or_another_block_number_does_not_verify():
    page = bytearray(real_pages()[0])
    page[5000] ^= 0x01
    assert reference_checksum(bytes(page), 0) != stored_checksum(page)
    assert numpy_checksums(bytes(page), [0]) != [stored_checksum(page)]
    # The same page moved elsewhere in its relation.
    original = real_pages()[0]
    assert numpy_checksums(original, [1]) != [stored_checksum(original)]
    assert numpy_checksums(original, [BLOCKS_PER_SEGMENT]) != [stored_checksum(original)]


def test_numpy_and_the_reference_agree_on_random_pages():
    generator = random.Random(14)
    blocks = [0, 1, 65535, 65536, BLOCKS_PER_SEGMENT * 3 + 17, 0xFFFFFFFE] + \
        [generator.randrange(1 << 32) for _ in range(10)]
    pages = [generator.randbytes(BLOCK_SIZE) for _ in blocks]
    assert numpy_checksums(b"".join(pages), blocks) == [reference_checksum(page, block)
                                                        for page, block in zip(pages, blocks, strict=True)]


# --- which pages the scan stores --------------------------------------------------------------

SINCE = Lsn.parse("1/00000000")
OLD = Lsn.parse("0/5000000")
NEW = Lsn.parse("1/100")


def page(lsn: int, block: int, *, lower: int = 40, upper: int = 8000, special: int = BLOCK_SIZE,
         flags: int = 0, checksum: bool = True, fill: int = 7) -> bytes:
    """A heap-like page with a valid header, its checksum computed for `block`."""
    body = bytearray(bytes([fill]) * BLOCK_SIZE)
    struct.pack_into(f"{ENDIAN}IIHHHHHHI", body, 0, lsn >> 32, lsn & 0xFFFFFFFF, 0, flags, lower, upper, special,
                     BLOCK_SIZE | 4, 0)
    if checksum:
        struct.pack_into(f"{ENDIAN}H", body, 8, reference_checksum(bytes(body), block))
    return bytes(body)


def write_file(tmp_path: Path, pages: list[bytes]) -> int:
    path = tmp_path / "16384.2"
    path.write_bytes(b"".join(pages))
    return os.open(path, os.O_RDWR)


def scan(fd: int, count: int, first: int, checksums: bool = True, **kwargs) -> dict[int, bytes]:
    return dict(page_scan.changed_pages(fd, count, first, SINCE, checksums, **kwargs))


FIRST = 2 * BLOCKS_PER_SEGMENT  # the file is segment 2


def test_changed_new_and_invalid_pages_are_stored_unchanged_ones_not(tmp_path):
    zero = bytes(BLOCK_SIZE)
    new_but_not_zero = bytearray(page(OLD, FIRST + 5))
    struct.pack_into(f"{ENDIAN}H", new_but_not_zero, 14, 0)  # pd_upper 0: PageIsNew
    pages = [
        page(OLD, FIRST + 0),  # unchanged
        page(NEW, FIRST + 1),  # changed
        page(SINCE, FIRST + 2),  # changed exactly at the parent's start
        zero,  # a new page
        page(OLD, FIRST + 4, lower=9000),  # not a valid header: pd_lower past pd_upper
        bytes(new_but_not_zero),
        page(OLD, FIRST + 6, flags=0x10),  # a flag PostgreSQL does not know
        page(OLD, FIRST + 7, special=8190),  # pd_special not MAXALIGNed
        page(OLD, FIRST + 8),  # unchanged
    ]
    fd = write_file(tmp_path, pages)
    try:
        found = scan(fd, len(pages), FIRST)
    finally:
        os.close(fd)
    assert sorted(found) == [1, 2, 3, 4, 5, 6, 7]
    assert all(found[index] == pages[index] for index in found)


def test_a_page_whose_checksum_fails_is_stored_and_only_with_checksums_on(tmp_path):
    corrupt = bytearray(page(OLD, FIRST + 1))
    corrupt[4000] ^= 0xFF
    pages = [page(OLD, FIRST), bytes(corrupt), page(OLD, FIRST + 2)]
    fd = write_file(tmp_path, pages)
    try:
        assert scan(fd, 3, FIRST) == {1: bytes(corrupt)}  # read twice, failed twice: kept
        assert scan(fd, 3, FIRST, checksums=False) == {}
        # Checksums computed for another block number (first_block wrong): none verify.
        assert sorted(scan(fd, 3, 0)) == [0, 1, 2]
    finally:
        os.close(fd)


class RacingWriter:
    """os.pread, except that just before the scan re-reads block `block` alone, a
    concurrent writer puts `replacement` there (in the real file, read back by the real
    os.pread)."""

    def __init__(self, fd: int, block: int, replacement: bytes) -> None:
        self.fd, self.block, self.replacement = fd, block, replacement
        self.rereads = 0

    def __call__(self, fd: int, length: int, offset: int) -> bytes:
        if length == BLOCK_SIZE and offset == self.block * BLOCK_SIZE:
            self.rereads += 1
            os.pwrite(self.fd, self.replacement, offset)
        return os.pread(fd, length, offset)


def torn(first_half_of: bytes, second_half_of: bytes) -> bytes:
    return first_half_of[:BLOCK_SIZE // 2] + second_half_of[BLOCK_SIZE // 2:]


def test_a_torn_read_of_an_unchanged_page_is_read_again_and_not_stored(tmp_path):
    # A hint-bit write (same LSN) caught half done: the first read fails its checksum,
    # the second sees the whole page, which verifies and is old.
    before, after = page(OLD, FIRST + 1, fill=1), page(OLD, FIRST + 1, fill=2)
    pages = [page(OLD, FIRST), torn(before, after), page(OLD, FIRST + 2)]
    fd = write_file(tmp_path, pages)
    try:
        racing = RacingWriter(fd, 1, after)
        assert scan(fd, 3, FIRST, pread=racing) == {}
        assert racing.rereads == 1
    finally:
        os.close(fd)


def test_a_page_changed_between_the_reads_is_stored_as_read_the_second_time(tmp_path):
    before, after = page(OLD, FIRST + 1, fill=1), page(NEW, FIRST + 1, fill=2)
    pages = [page(OLD, FIRST), torn(before, after)]
    fd = write_file(tmp_path, pages)
    try:
        racing = RacingWriter(fd, 1, after)
        assert scan(fd, 2, FIRST, pread=racing) == {1: after}
        assert racing.rereads == 1
    finally:
        os.close(fd)


def test_a_page_still_torn_on_the_second_read_is_stored(tmp_path):
    before, after = page(OLD, FIRST + 1, fill=1), page(OLD, FIRST + 1, fill=2)
    still_torn = torn(after, before)
    pages = [torn(before, after)]
    fd = write_file(tmp_path, pages)
    try:
        assert scan(fd, 1, FIRST + 1, pread=RacingWriter(fd, 0, still_torn)) == {0: still_torn}
    finally:
        os.close(fd)


def test_pages_across_chunks_keep_their_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(page_scan, "CHUNK_PAGES", 4)
    changed = {2, 3, 4, 9, 13}
    pages = [page(NEW if n in changed else OLD, FIRST + n, fill=n) for n in range(14)]
    fd = write_file(tmp_path, pages)
    try:
        found = scan(fd, 14, FIRST)
    finally:
        os.close(fd)
    assert found == {n: pages[n] for n in sorted(changed)}


def test_a_file_shorter_than_asked_just_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(page_scan, "CHUNK_PAGES", 4)
    pages = [page(NEW, FIRST + n) for n in range(6)]
    fd = write_file(tmp_path, pages)
    try:
        assert sorted(scan(fd, 20, FIRST)) == list(range(6))
        os.ftruncate(fd, 3 * BLOCK_SIZE + 100)  # a partial last page is not a page
        assert sorted(scan(fd, 20, FIRST)) == [0, 1, 2]
        os.ftruncate(fd, 0)
        assert scan(fd, 20, FIRST) == {}
    finally:
        os.close(fd)


def test_only_block_count_blocks_are_read(tmp_path):
    pages = [page(NEW, FIRST + n) for n in range(5)]
    fd = write_file(tmp_path, pages)
    try:
        assert sorted(scan(fd, 3, FIRST)) == [0, 1, 2]
        assert scan(fd, 0, FIRST) == {}
    finally:
        os.close(fd)


@pytest.mark.parametrize("checksums", [True, False])
def test_real_pages_at_their_blocks_are_unchanged_since_a_later_lsn(tmp_path, checksums):
    # Each real page alone in a file whose first block is the page's own number.
    for real, block in zip(real_pages(), REAL_BLOCKS, strict=True):
        fd = write_file(tmp_path, [real])
        try:
            lsn = Lsn(int.from_bytes(real[:4], sys.byteorder) << 32 | int.from_bytes(real[4:8], sys.byteorder))
            assert dict(page_scan.changed_pages(fd, 1, block, Lsn(lsn + 1), checksums)) == {}
            assert dict(page_scan.changed_pages(fd, 1, block, lsn, checksums)) == {0: real}
        finally:
            os.close(fd)

"""The checksums a format_version 2 backup records of the files it restores to
(docs/archive-format.md, "Checksums"): per 8 KiB block of a relation file, in its block
map, and per file, in its manifest record. Backup-push computes them as it copies, and
restore checks the files it wrote against them (restore/checked.py).

- a block's checksum: xxh3_64 (seed 0) of the page, 8 bytes little-endian;
- a file's checksum, 16 bytes (xxh3_128's canonical digest, big-endian): for a relation
  file with a block map, of its blocks' checksums concatenated in block order, so that
  the whole reassembled file is covered and can be checked from the written file alone;
  for any other file, of its bytes.

xxhash: never imported on the wal-push / wal-fetch path (which reaches storage/ only).
"""

from __future__ import annotations

import array
import sys

import xxhash

from pitrkit.catalog.blockmap import CHECKSUM_SIZE
from pitrkit.catalog.documents import BLOCK_SIZE


def page_checksum(page: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(page)


def page_checksums(data: bytes | memoryview) -> array.array[int]:
    """The checksums of the whole pages in `data` (its length a multiple of BLOCK_SIZE)."""
    view = memoryview(data)
    digest = xxhash.xxh3_64_intdigest
    return array.array("Q", [digest(view[start:start + BLOCK_SIZE]) for start in range(0, len(view), BLOCK_SIZE)])


def packed(checksums: array.array[int]) -> bytes:
    """Block checksums as a block map stores them: 8 bytes each, little-endian."""
    if sys.byteorder != "little":
        checksums = array.array("Q", checksums)
        checksums.byteswap()
    return checksums.tobytes()


def unpacked(data: bytes) -> array.array[int]:
    checksums = array.array("Q")
    checksums.frombytes(data)
    if sys.byteorder != "little":
        checksums.byteswap()
    return checksums


def of_blocks(packed_checksums: bytes) -> bytes:
    """A block-mapped (or mappable) relation file's checksum, from its blocks' checksums."""
    return xxhash.xxh3_128_digest(packed_checksums)


def covers(size: int, checksum: bytes, packed_checksums: bytes) -> bool:
    """Whether a file record (`size`, `checksum`) is the file these block checksums
    describe: one for each of its blocks, and its checksum theirs. Restore checks a map
    against its record so before reading the file back, verify --deep as it reads maps."""
    return len(packed_checksums) * BLOCK_SIZE == size * CHECKSUM_SIZE and of_blocks(packed_checksums) == checksum


def of_bytes(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def file_hasher() -> xxhash.xxh3_128:
    """The checksum of a file's bytes, fed as they go by."""
    return xxhash.xxh3_128()


class PageHasher:
    """Block checksums of a file whose bytes arrive in pieces of any length (a page may
    straddle two part buffers): whole pages are hashed in place, a page cut short is
    kept until its rest arrives."""

    def __init__(self) -> None:
        self.checksums: array.array[int] = array.array("Q")
        self._carry = bytearray()

    def update(self, data: memoryview) -> None:
        start = 0
        if self._carry:
            start = min(BLOCK_SIZE - len(self._carry), len(data))
            self._carry += data[:start]
            if len(self._carry) < BLOCK_SIZE:
                return
            self.checksums.append(xxhash.xxh3_64_intdigest(self._carry))
            self._carry.clear()
        whole = start + (len(data) - start) // BLOCK_SIZE * BLOCK_SIZE
        self.checksums.extend(page_checksums(data[start:whole]))
        self._carry += data[whole:]

    @property
    def whole_pages(self) -> bool:
        """No page cut short at the end."""
        return not self._carry

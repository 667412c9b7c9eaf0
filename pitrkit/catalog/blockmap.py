"""Block maps: for each relation file of an incremental backup, which backup of its chain
holds each block, and where this backup's own blocks lie. The binary side of the
incremental format (docs/archive-format.md, "Incremental backups").

A block map object (`backups/<id>/blockmap/<n>`, a stored object: compressed, and
encrypted with encryption on) is a msgpack `BlockMapDocument`: one `FileMap` per file.
A `FileMap` is the newest word on its file, cumulative over the chain, so restore reads
only the newest backup's maps to know where every block comes from:

- `runs`: run-length encoded over blocks from the same backup, `Run` records
  (first block, length, source, position) that tile the file from block 0 to its end.
  `source` indexes the chain with the backup itself appended (0 is the full); `position`
  is the run's first block among the blocks that source stored of the file (for a
  source that copied the file whole into its stream, the block number itself).
- `super_blocks`: this backup's own stored blocks of the file, positions 0, 1, ... in
  block order, grouped into super-blocks of a few pages, `SuperBlock` records (block
  part, offset, stored length, first position, pages, digest). Each super-block is a
  stored object of its own, so it is fetched with a ranged read, verified by its header,
  and its header's digest must be the one the map records (`recorded_digest`).
- `checksums`: every block's checksum (catalog/checksums.py), 8 bytes each in block
  order, cumulative like the runs: a block another backup holds has that backup's
  checksum of it. Restore checks every written block against it.

Every relation file of a backup has a map, also one the backup copies whole into its
stream (a full backup's, for instance): one run of its own blocks, position = block
number, no super-blocks. The manifest points only at block-mapped files' maps
(`BlockFile.block_map`); a stream file's map is found by reading all the backup's map
objects, by path.

Everything here comes from storage: `FileMap.__post_init__` checks the runs tile the
file, sources stay in the chain, super-blocks are ordered, contiguous in positions and
inside their objects' bounds, before any of it is used.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

if TYPE_CHECKING:
    import numpy as np

from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    BLOCKS_PER_SEGMENT,
    MAX_CHAIN,
    MAX_PART_SIZE,
    BackupPart,
    check_data_path,
)
from pitrkit.errors import RefusedError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive

_RUN = struct.Struct("<IIII")
_SUPER_BLOCK = struct.Struct("<IQIII32s")
# Pages per super-block: the unit of compression, encryption and fetching. A chain
# restore decodes a super-block whole for any of its pages that is the newest, so
# smaller wastes less where later links changed a link's pages again; but each is a
# decode call and a header to check, and zstd is slower on small frames. Measured on
# pgbench pages (zstd -1, one decompressor used again): 8 pages 3.0 GB/s at ratio 27,
# 32 pages 4.5 GB/s at ratio 30, no faster beyond. A scale-150 chain of 7 (every link
# changing 60 % of the table's pages) decodes 15,000 super-blocks of 32 and 5.9 GiB,
# against 30,000 of 8 and 4.1 GiB: its restore took about the same CPU either way,
# while each incremental stored 8 % less in 10 % less time. 32 pages is pgBackRest's
# default super-block of an incremental too (repo-block-size-super, 256 KiB). Restore
# takes any count up to a segment's: this is what backup-push writes.
SUPER_BLOCK_PAGES = 32
# Bytes of checksum per block (catalog/checksums.py, which computes them; kept apart so
# that decoding a map does not need xxhash).
CHECKSUM_SIZE = 8


class Run(NamedTuple):
    first: int  # block number in the file
    length: int  # blocks
    source: int  # index in chain + [this backup]
    position: int  # the first block's position among the source's stored blocks of the file


class SuperBlock(NamedTuple):
    part: int  # index in the manifest's block_parts
    offset: int  # in that object
    length: int  # stored bytes
    first: int  # position of its first page among this backup's stored blocks of the file
    pages: int
    # The plaintext's digest, as its header has it (`recorded_digest`): the header alone
    # would not tell a super-block from another valid one put in its place; the map
    # (verified through the manifest, authenticated in an encrypted archive) binds the
    # pages themselves.
    digest: bytes


def recorded_digest(header: objects.ObjectHeader) -> bytes:
    """A super-block's digest as its map records it, 32 bytes: the SHA-256 of a format
    version 1 object, or the XXH3-128 of a version 2 one followed by 16 zero bytes (an
    unencrypted archive's, docs/archive-format.md "The digest of a super-block"). A
    header of the other algorithm does not match: a SHA-256 would have to end in 16
    zero bytes (a 2^-128 chance, and a 128-bit preimage to forge)."""
    return header.sha256 or header.xxh3_128 + bytes(16)


class MisplacedSuperBlock(objects.CorruptObject):
    """A super-block that is a sound object, but not the one its map records."""


def super_block_pages(archive: Archive, key: str, blob: bytes, pages: int, digest: bytes) -> bytes:
    """The verified pages of one super-block (`blob`, its stored bytes in block part
    `key`), as restore and verify read them: its object's own checks, and its map's
    record of it, `pages` pages and `digest` (`recorded_digest`). The digest binds the
    pages, so another valid super-block in its place is refused (MisplacedSuperBlock),
    and the size is checked before anything is decompressed. CorruptObject otherwise."""

    def recorded(header: objects.ObjectHeader) -> None:
        if recorded_digest(header) != digest or header.size != pages * BLOCK_SIZE:
            raise MisplacedSuperBlock(key, f"not the one the block map records ({header.size} bytes, "
                                           f"{digest_text(recorded_digest(header))}, the map says "
                                           f"{pages * BLOCK_SIZE} bytes, {digest_text(digest)})")

    return objects.decode(key, blob, archive.plugins.compressor, archive.cipher(), expect=recorded)


def digest_text(recorded: bytes) -> str:
    """A recorded digest as messages name it: `sha256 ab12...` or `xxh3_128 ab12...`."""
    if recorded[16:] == bytes(16):
        return f"xxh3_128 {recorded[:16].hex()[:16]}..."
    return f"sha256 {recorded.hex()[:16]}..."


class FileMap(msgspec.Struct, array_like=True, frozen=True):
    path: str
    blocks: int  # the file's length in blocks
    sources: int  # len(chain) + 1: what `runs` may point to
    runs: bytes
    super_blocks: bytes
    checksums: bytes  # 8 bytes per block: `CHECKSUM_SIZE`

    def __post_init__(self) -> None:
        check_data_path(self.path)
        if not 0 <= self.blocks <= BLOCKS_PER_SEGMENT or not 0 < self.sources <= MAX_CHAIN + 1:
            raise ValueError(f"{self.path}: a block map of {self.blocks} blocks and {self.sources} sources")
        if len(self.checksums) != CHECKSUM_SIZE * self.blocks:
            raise ValueError(f"{self.path}: a block map of {self.blocks} blocks with {len(self.checksums)} bytes "
                             f"of checksums, not {CHECKSUM_SIZE} per block")
        if len(self.runs) % _RUN.size or len(self.super_blocks) % _SUPER_BLOCK.size:
            raise ValueError(f"{self.path}: a block map whose records are cut short")
        # A map of a 1 GiB segment whose blocks alternate between backups has over
        # 100,000 runs, and a chain's restore checks such a map of every link: numpy
        # checks a large map's records in a few passes in C (5 ms against 35 for the
        # loops below), which then run only to name the first bad record.
        if len(self.runs) // _RUN.size + len(self.super_blocks) // _SUPER_BLOCK.size >= _CHECKED_IN_BULK \
                and _records_sound(self):
            return
        # One pass over each kind of record, fields unpacked in place.
        position = 0
        for part, offset, length, first, pages, _ in _SUPER_BLOCK.iter_unpack(self.super_blocks):
            if first != position or not 0 < pages <= BLOCKS_PER_SEGMENT \
                    or not 0 < length <= 2 * MAX_PART_SIZE or offset > 2 * MAX_PART_SIZE:
                raise ValueError(f"{self.path}: super-block {(part, offset, length, first, pages)} does not follow "
                                 f"position {position}")
            position += pages
        own, sources, copied = self.sources - 1, self.sources, not self.super_blocks
        end = 0
        for first, length, source, start in _RUN.iter_unpack(self.runs):
            if first != end or length <= 0 or source >= sources or start + length > BLOCKS_PER_SEGMENT:
                raise ValueError(f"{self.path}: block map run {(first, length, source, start)} does not follow "
                                 f"block {end}")
            # No super-blocks: the map of a file this backup copied whole into its
            # stream, where its own blocks' positions are their block numbers.
            if source == own and (start != first if copied else start + length > position):
                raise ValueError(f"{self.path}: block map run {(first, length, source, start)} points past the "
                                 f"{position} blocks this backup stored")
            end += length
        if end != self.blocks:
            raise ValueError(f"{self.path}: block map runs end at block {end}, the file has {self.blocks}")

    def iter_runs(self) -> Iterator[Run]:
        return (Run(*fields) for fields in _RUN.iter_unpack(self.runs))

    def iter_super_blocks(self) -> Iterator[SuperBlock]:
        return (SuperBlock(*fields) for fields in _SUPER_BLOCK.iter_unpack(self.super_blocks))

    def super_block(self, number: int) -> SuperBlock:
        return SuperBlock._make(_SUPER_BLOCK.unpack_from(self.super_blocks, number * _SUPER_BLOCK.size))

    def super_block_table(self) -> np.ndarray:
        """The super-block records as a numpy structured array (fields part, offset,
        length, first, pages): restore/chain.py finds the ones holding 100,000s of
        positions in a few passes."""
        return _super_block_table(self.super_blocks)

    @property
    def stored_blocks(self) -> int:
        return sum(fields[4] for fields in _SUPER_BLOCK.iter_unpack(self.super_blocks))


# Records of one map from which numpy checks them first (below it, importing and
# calling numpy costs more than the loops).
_CHECKED_IN_BULK = 256
# A `_SUPER_BLOCK` record as numpy reads it.
_SUPER_BLOCK_FIELDS: Any = {"names": ["part", "offset", "length", "first", "pages"],
                            "formats": ["<u4", "<u8", "<u4", "<u4", "<u4"],
                            "offsets": [0, 4, 12, 16, 20], "itemsize": _SUPER_BLOCK.size}


def _super_block_table(records: bytes) -> np.ndarray:
    import numpy as np  # only for a restore's plan and a large map's checks

    fields: Any = np.dtype(_SUPER_BLOCK_FIELDS)
    return np.frombuffer(records, dtype=fields)


def _records_sound(file_map: FileMap) -> bool:
    """Whether FileMap.__post_init__'s loops would pass `file_map`'s runs and super-blocks
    (the same checks, record by record, with the same running positions)."""
    import numpy as np  # only for a large map: wal-push and wal-fetch never decode one

    blocks = _super_block_table(file_map.super_blocks)
    pages = blocks["pages"].astype(np.int64)
    ends = np.cumsum(pages)
    position = int(ends[-1]) if len(ends) else 0
    if not (np.array_equal(blocks["first"], ends - pages) and (pages > 0).all() and (pages <= BLOCKS_PER_SEGMENT).all()
            and (blocks["length"] > 0).all() and (blocks["length"] <= 2 * MAX_PART_SIZE).all()
            and (blocks["offset"] <= 2 * MAX_PART_SIZE).all()):
        return False
    first, length, source, start = run_table(file_map.runs).T
    ends = np.cumsum(length)
    own = source == file_map.sources - 1
    return bool(np.array_equal(first, ends - length) and (length > 0).all() and (source < file_map.sources).all()
                and (start + length <= BLOCKS_PER_SEGMENT).all()
                and ((start[own] == first[own]).all() if not file_map.super_blocks
                     else (start[own] + length[own] <= position).all())
                and (int(ends[-1]) if len(ends) else 0) == file_map.blocks)


class BlockMapDocument(msgspec.Struct, kw_only=True, frozen=True):
    files: list[FileMap]


def pack_runs(runs: Iterable[Sequence[int]]) -> bytes:
    """Runs (`Run`s, or any (first, length, source, position)) packed."""
    return b"".join(_RUN.pack(*run) for run in runs)


def unpack_runs(packed: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Packed runs as (first, length, source, position), unchecked: for runs taken from
    a FileMap, which checked them."""
    return _RUN.iter_unpack(packed)


def run_table(packed: bytes) -> np.ndarray:
    """Packed runs as numpy: one row per run, the columns first, length, source and
    position, as int64 (so that sums and shifts of them do not wrap). Unchecked, as
    `unpack_runs`."""
    import numpy as np  # only for a restore's plan, an incremental's and a large map's checks

    return np.frombuffer(packed, dtype="<u4").reshape(-1, 4).astype(np.int64)


def pack_super_blocks(blocks: list[SuperBlock]) -> bytes:
    return b"".join(_SUPER_BLOCK.pack(*block) for block in blocks)


def block_runs(sources: list[int], positions: list[int]) -> list[Run]:
    """Run-length encode per-block (source, position) pairs: a run continues while the
    source stays and the position goes up by one."""
    runs: list[Run] = []
    for block, (source, position) in enumerate(zip(sources, positions, strict=True)):
        if runs and runs[-1].source == source and runs[-1].position + runs[-1].length == position:
            last = runs[-1]
            runs[-1] = last._replace(length=last.length + 1)
        else:
            runs.append(Run(block, 1, source, position))
    return runs


def expand(file_map: FileMap) -> tuple[list[int], list[int]]:
    """Per block of the file: (source, position). The inverse of `block_runs`."""
    sources: list[int] = []
    positions: list[int] = []
    for run in file_map.iter_runs():
        sources.extend([run.source] * run.length)
        positions.extend(range(run.position, run.position + run.length))
    return sources, positions


decode_block_map = msgspec.msgpack.Decoder(BlockMapDocument).decode
encode_block_map = msgspec.msgpack.Encoder().encode



def read_block_map(archive: Archive, part: BackupPart) -> list[FileMap]:
    """One block map object, verified by its own header and against the manifest's
    record of it (size and SHA-256: a valid map object of another backup put in its
    place is refused), then decoded, every map checked."""
    try:
        blob = archive.get(part.key)
    except ObjectNotFound:
        raise RefusedError(f"block map {part.key} is missing from the archive") from None
    try:
        header, _ = objects.read_header(part.key, blob)
        if header.size != part.size or header.sha256.hex() != part.sha256:
            raise RefusedError(f"block map {part.key} is not the one the manifest lists ({header.size} bytes, "
                               f"sha256 {header.sha256.hex()[:16]}...)")
        data = objects.decode(part.key, blob, archive.plugins.compressor, archive.cipher())
    except objects.CorruptObject as exc:
        raise RefusedError(str(exc)) from None
    try:
        return decode_block_map(data).files
    except ValueError as exc:  # msgspec.DecodeError, and a map that fails its checks
        raise RefusedError(f"block map {part.key} is corrupt: {exc}") from None

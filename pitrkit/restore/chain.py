"""Restoring an incremental backup from its chain: where every byte of the target's
files comes from (`plan_chain`), each block fetched and written exactly once whatever
the chain's length. restore/chain_writes.py writes the plan.

What is written is the target's file list and nothing else (a file only older backups
have was removed since): its stream files whole from its own stream, as a full backup is
restored, and each block-mapped file created at its recorded length, then every block
written once from the backup its map names (docs/archive-format.md, "Incremental
backups"):

- from an older backup that copied the file whole into its stream: that backup's
  stream parts are read, only those holding wanted blocks, and only the wanted ranges
  are written (none of that backup's files is written as such);
- from the super-blocks of the backup that stored it: one ranged read of its block part
  per group of super-blocks lying (nearly) back to back, each super-block decoded and
  verified on its own (its header's digest must be the map's, its pages the map's
  count), fetched once however many of its pages are wanted.

The maps read: the target's, all of them (they are cumulative: they say, for every
block, which backup holds it); and of an older incremental only the map objects holding
files a target run takes super-blocks from, since a position in that backup means
nothing without its own super-block records. Each map object is read once, in parallel,
and as soon as it is decoded it is turned into the reads it asks for and dropped: what
the plan keeps is proportional to what will be fetched.

The target's maps also give every relation file's block checksums (those of its stream
files too, found by path in the same map objects): once all is written, every file is
read back and checked against them (restore/checked.py).

Everything read is hostile: manifests agree on the chain (each link's `chain` and
`parent` are its predecessors), every run's source holds the blocks it is said to hold
(a stream file long enough, stored positions that exist), super-blocks lie inside their
objects. All of it is checked before anything is written.
"""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from pitrkit.catalog.blockmap import FileMap, SuperBlock, read_block_map, run_table
from pitrkit.catalog.documents import BLOCK_SIZE, BackupFile, BackupManifest, BackupPart, BlockFile
from pitrkit.errors import RefusedError
from pitrkit.progress import human_bytes
from pitrkit.restore import unpack
from pitrkit.restore.unpack import CorruptManifest, Slice
from pitrkit.storage.archive import Archive

# Super-blocks of one block part are read together when at most this many bytes of
# others lie between them (reading over them costs less than another request), up to
# this many bytes per read: what one worker holds in memory.
_READ_GAP = 256 << 10
_READ_SIZE = 8 << 20


class StreamRead(NamedTuple):
    """A part of a backup's stream and the slices of it that are written."""

    source: int  # index in the plan's manifests
    part: BackupPart
    slices: list[Slice]


class BlockRead(NamedTuple):
    """One ranged read of a block part: super-blocks, each with the slices of its
    pages that are written (`part_offset` in the super-block's plaintext)."""

    source: int
    key: str
    offset: int
    length: int
    blocks: list[tuple[SuperBlock, list[Slice]]]


class ChainPlan(NamedTuple):
    archive: Archive
    manifests: list[BackupManifest]  # the full first, the target last
    files: list[BackupFile | BlockFile]  # what is written: the target's stream files, then its block-mapped ones
    stream_reads: list[StreamRead]
    block_reads: list[BlockRead]
    # The target's block checksums (its maps', packed) of every relation file, by path:
    # what the written files are checked against (restore/checked.py).
    block_checksums: dict[str, bytes]

    @property
    def target(self) -> BackupManifest:
        return self.manifests[-1]

    @property
    def super_blocks(self) -> int:
        return sum(len(read.blocks) for read in self.block_reads)

    @property
    def decoded(self) -> int:
        """Bytes decoded: every part and super-block read, whole, however little of it
        is written. Beside the bytes written it says what the chain costs a restore (a
        link's blocks that later links changed again are decoded for nothing), and so
        when consolidating it pays (backup-consolidate)."""
        return sum(read.part.size for read in self.stream_reads) \
            + sum(block.pages * BLOCK_SIZE for read in self.block_reads for block, _ in read.blocks)

    @property
    def written(self) -> int:
        return sum(piece.length for read in self.stream_reads for piece in read.slices) \
            + sum(piece.length for read in self.block_reads for _, slices in read.blocks for piece in slices)

    def describe(self) -> str:
        sources = {read.source for read in self.stream_reads} | {read.source for read in self.block_reads}
        return (f"reading {len(self.stream_reads)} stream parts and {self.super_blocks} super-blocks "
                f"({len(self.block_reads)} ranged reads) from {len(sources)} of the chain's {len(self.manifests)} "
                f"backups: {human_bytes(self.decoded)} decoded for {human_bytes(self.written)} written")


# --- the plan -----------------------------------------------------------------------------------


class _Needs(NamedTuple):
    """What the target's file number `file` takes from one source: the runs of its map
    from that source, rows (first block, blocks, position) of an int64 array, in block
    order (a position is a block number in the source's stream copy, or a stored
    position among the blocks it stored of the file). Arrays, not a tuple per run: a
    chain of 7 at pgbench scale 150 plans 220,000 runs, and turning each into slices in
    Python was most of the planning's CPU; numpy splits them in a few passes."""

    file: int
    runs: np.ndarray


class _Source:
    """One backup of the chain, as the plan uses it."""

    def __init__(self, manifest: BackupManifest) -> None:
        self.manifest = manifest
        self.stream = {file.path: index for index, file in enumerate(manifest.files)}
        self.mapped = {file.path: file for file in manifest.block_files}
        if len(self.stream) != len(manifest.files) or len(self.mapped) != len(manifest.block_files) \
                or not self.stream.keys().isdisjoint(self.mapped):
            raise CorruptManifest(f"backup {manifest.backup_id}'s manifest lists a file twice")
        # What the target takes from it, by path: from its stream, from its super-blocks.
        self.from_stream: dict[str, _Needs] = {}
        self.from_blocks: dict[str, _Needs] = {}


def plan_chain(archive: Archive, manifests: list[BackupManifest], workers: int = 4) -> ChainPlan:
    """Where each byte of the target's files comes from. `manifests`: the chain's, the
    full first and the target last, each already checked against the catalog. Reads the
    target's block maps and the map objects of older incrementals it takes super-blocks
    from, `workers` at a time; refuses (RefusedError, one line) anything inconsistent."""
    _check_chain(manifests)
    sources = [_Source(manifest) for manifest in manifests]
    target = sources[-1]
    own = len(sources) - 1
    files: list[BackupFile | BlockFile] = [*target.manifest.files, *target.manifest.block_files]
    first_block_file = len(target.manifest.files)
    block_index = {file.path: first_block_file + number for number, file in enumerate(target.manifest.block_files)}
    reads: dict[tuple[int, int, int], tuple[SuperBlock, list[Slice]]] = {}
    block_checksums: dict[str, bytes] = {}

    def take_target_maps(_: int, number: int, maps: list[FileMap]) -> list[str]:
        done = []
        for file_map in maps:
            if file_map.path in block_checksums:
                raise RefusedError(f"backup {target.manifest.backup_id}'s block maps map {file_map.path} twice")
            if file_map.path in target.stream or file_map.path in target.mapped:
                block_checksums[file_map.path] = file_map.checksums
        for file_map in _maps_of(target, number, maps):
            record = target.mapped[file_map.path]
            if file_map.sources != len(sources) or file_map.blocks * BLOCK_SIZE != record.size \
                    or file_map.stored_blocks != record.stored_blocks:
                raise RefusedError(f"backup {target.manifest.backup_id}'s block map of {record.path} does not "
                                   f"match its manifest ({file_map.blocks} blocks, {file_map.sources} sources, "
                                   f"{file_map.stored_blocks} stored)")
            file_number = block_index[record.path]
            runs = run_table(file_map.runs)
            by_source = runs[:, 2]
            for index in np.unique(by_source).tolist():
                needs = _Needs(file_number, runs[by_source == index][:, [0, 1, 3]])
                source = sources[index]
                if index == own:
                    _add_super_blocks(reads, own, target.manifest, file_map, record.stored_blocks, needs)
                elif record.path in source.stream:
                    source.from_stream[record.path] = needs
                elif record.path in source.mapped:
                    source.from_blocks[record.path] = needs
                else:
                    raise RefusedError(f"backup {target.manifest.backup_id}'s block map takes blocks of "
                                       f"{record.path} from backup {source.manifest.backup_id}, which has no copy "
                                       "of that file")
            done.append(file_map.path)
        return done

    everything = [(own, number) for number in range(len(target.manifest.block_maps))]
    mapped = set(_read_maps(archive, sources, everything, workers, take_target_maps))
    if missing := [file.path for file in target.manifest.block_files if (own, file.path) not in mapped]:
        raise RefusedError(f"backup {target.manifest.backup_id}'s block maps lack {missing[0]}")

    def take_source_maps(index: int, number: int, maps: list[FileMap]) -> list[str]:
        source = sources[index]
        done = []
        for file_map in _maps_of(source, number, maps):
            if file_map.path not in source.from_blocks:
                continue
            record = source.mapped[file_map.path]
            if file_map.sources != len(source.manifest.chain) + 1 or file_map.blocks * BLOCK_SIZE != record.size \
                    or file_map.stored_blocks != record.stored_blocks:
                raise RefusedError(f"backup {source.manifest.backup_id}'s block map of {record.path} does not "
                                   "match its manifest")
            _add_super_blocks(reads, index, source.manifest, file_map, record.stored_blocks,
                              source.from_blocks[file_map.path])
            done.append(file_map.path)
        return done

    # Of the older links, only the map objects holding files the target takes their
    # super-blocks from; all of them in one go.
    wanted = sorted({(index, source.mapped[path].block_map) for index, source in enumerate(sources[:-1])
                     for path in source.from_blocks})
    found = set(_read_maps(archive, sources, wanted, workers, take_source_maps))
    for index, source in enumerate(sources[:-1]):
        if missing := [path for path in source.from_blocks if (index, path) not in found]:
            raise RefusedError(f"backup {source.manifest.backup_id}'s block maps lack {missing[0]}")

    stream_reads = [StreamRead(own, target.manifest.parts[number], slices) for number, slices
                    in enumerate(unpack.slices_by_part(target.manifest.files, target.manifest.parts)) if slices]
    for index, source in enumerate(sources[:-1]):
        stream_reads += _stream_reads(index, source)
    block_reads = coalesced(reads, manifests)
    return ChainPlan(archive, manifests, files, stream_reads, block_reads, block_checksums)


def _check_chain(manifests: list[BackupManifest]) -> None:
    """Each manifest is sound alone and they are one chain: the target's chain is the
    others, in order, and every link's chain and parent are its predecessors."""
    if not manifests:
        raise ValueError("a chain of no backups")
    ids = [manifest.backup_id for manifest in manifests]
    target = manifests[-1]
    for number, manifest in enumerate(manifests):
        unpack.check_manifest(manifest)
        parent = ids[number - 1] if number else None
        if manifest.chain != ids[:number] or manifest.parent != parent:
            raise RefusedError(f"backup {target.backup_id}'s chain is {' '.join(target.chain) or 'empty'}, but "
                               f"backup {manifest.backup_id} names parent {manifest.parent} and chain "
                               f"{' '.join(manifest.chain) or 'empty'}: the manifests do not make one chain")
        if manifest.system_identifier != target.system_identifier or manifest.pg_major != target.pg_major:
            raise RefusedError(f"backup {manifest.backup_id} of backup {target.backup_id}'s chain is of another "
                               f"cluster or PostgreSQL major ({manifest.system_identifier}, {manifest.pg_major})")


def _maps_of(source: _Source, number: int, maps: list[FileMap]) -> Iterator[FileMap]:
    """The maps in map object `number` of `source` that its manifest puts there, each
    once (a map the manifest does not place there is not used)."""
    seen: set[str] = set()
    for file_map in maps:
        record = source.mapped.get(file_map.path)
        if record is None or record.block_map != number:
            continue
        if file_map.path in seen:
            raise RefusedError(f"backup {source.manifest.backup_id}'s block map object {number} maps "
                               f"{file_map.path} twice")
        seen.add(file_map.path)
        yield file_map


def _read_maps(archive: Archive, sources: list[_Source], wanted: list[tuple[int, int]], workers: int,
               take: Callable[[int, int, list[FileMap]], list[str]]) -> Iterator[tuple[int, str]]:
    """Map objects (source, number), each once, `workers` at a time; `take` turns one
    into reads and says which files it mapped, yielded as (source, path). `take` runs on
    the worker's thread, so that decoded maps are dropped as soon as they are used
    (memory holds at most `workers` map objects), one `take` at a time: it adds to the
    plan's shared tables, and costs little beside the reading and decoding, which run in
    parallel."""
    lock = threading.Lock()

    def read(which: tuple[int, int]) -> list[tuple[int, str]]:
        index, number = which
        maps = read_block_map(archive, sources[index].manifest.block_maps[number])
        with lock:
            paths = take(index, number, maps)
        return [(index, path) for path in paths]

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="block-maps") as pool:
        for paths in pool.map(read, wanted):
            yield from paths


def _add_super_blocks(reads: dict[tuple[int, int, int], tuple[SuperBlock, list[Slice]]], index: int,
                      manifest: BackupManifest, file_map: FileMap, stored: int, needs: _Needs) -> None:
    """The super-blocks of `file_map` (backup `index`'s own map of a file, of `stored`
    blocks: its manifest's count, which the map's was checked against) that hold the
    needed positions, each with the slices of its pages to write: each run cut where a
    super-block ends."""
    first, length, position = needs.runs.T
    if len(position) and (past := np.flatnonzero(position + length > stored)).size:
        at = int(past[0])
        raise RefusedError(f"a block map takes blocks {position[at]} to {position[at] + length[at] - 1} of "
                           f"{file_map.path} from backup {manifest.backup_id}, which stored {stored} of it")
    starts = file_map.super_block_table()["first"].astype(np.int64)
    run, held, start, stop = _cut(starts, stored, position, position + length)
    cut = _slices(needs.file, (first[run] + start - position[run]) * BLOCK_SIZE, (start - starts[held]) * BLOCK_SIZE,
                  (stop - start) * BLOCK_SIZE)
    for number, at, count in _groups(held):
        _, slices = _wanted(reads, index, manifest, file_map, file_map.super_block(number))
        slices += cut[at : at + count]


def _cut(starts: np.ndarray, limit: int, begins: np.ndarray, ends: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ranges `begins` to `ends` (excluded), each cut where a holder ends: holders lie
    back to back from `starts` (ascending, the first 0) to `limit`, and every range
    lies inside them. Per piece: its range's index, its holder's, and its bounds."""
    low = np.searchsorted(starts, begins, side="right") - 1
    high = np.searchsorted(starts, ends - 1, side="right") - 1
    count = high - low + 1
    run = np.repeat(np.arange(len(begins)), count)
    held = low[run] + np.arange(len(run)) - np.repeat(np.cumsum(count) - count, count)
    return (run, held, np.maximum(begins[run], starts[held]),
            np.minimum(ends[run], np.append(starts[1:], limit)[held]))


def _slices(file: int, file_offsets: np.ndarray, part_offsets: np.ndarray, lengths: np.ndarray) -> list[Slice]:
    """Slices of file number `file`, a column of numbers per field."""
    return list(map(Slice, itertools.repeat(file, len(lengths)), file_offsets.tolist(), part_offsets.tolist(),
                    lengths.tolist()))


def _groups(keys: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Runs of equal values in `keys`: (value, first index, count). The pieces of one
    super-block or part are consecutive (the runs come in block order, each source's
    positions with them), and where a hostile map's are not, each group is still right."""
    if not len(keys):
        return
    cuts = np.flatnonzero(np.diff(keys)) + 1
    firsts = np.concatenate(([0], cuts))
    counts = np.diff(np.append(firsts, len(keys)))
    yield from zip(keys[firsts].tolist(), firsts.tolist(), counts.tolist(), strict=True)


def _wanted(reads: dict[tuple[int, int, int], tuple[SuperBlock, list[Slice]]], index: int, manifest: BackupManifest,
            file_map: FileMap, super_block: SuperBlock) -> tuple[SuperBlock, list[Slice]]:
    """`super_block` (of backup `index`'s map of a file) among the reads, once checked to
    lie inside its block parts; with the slices it gives."""
    if super_block.part >= len(manifest.block_parts) or super_block.length > _most_stored(super_block.pages) \
            or super_block.offset + super_block.length > manifest.block_parts[super_block.part].stored_size:
        raise RefusedError(f"backup {manifest.backup_id}'s block map of {file_map.path} puts a super-block "
                           f"of {super_block.length} bytes outside its block parts (part {super_block.part}, "
                           f"offset {super_block.offset})")
    key = (index, super_block.part, super_block.offset)
    entry = reads.get(key)
    if entry is None:
        entry = reads[key] = (super_block, [])
    elif entry[0] != super_block:
        raise RefusedError(f"backup {manifest.backup_id}'s block maps put two super-blocks at offset "
                           f"{super_block.offset} of {manifest.block_parts[super_block.part].key}")
    return entry


def _most_stored(pages: int) -> int:
    """More than a super-block of `pages` pages can take stored: twice its plaintext
    (compression and encryption add far less) and the largest object header. A map
    claiming more would make a read allocate for nothing."""
    return 2 * pages * BLOCK_SIZE + (64 << 10)


def coalesced(reads: dict[tuple[int, int, int], tuple[SuperBlock, list[Slice]]],
              manifests: list[BackupManifest]) -> list[BlockRead]:
    """Super-blocks, by (source, block part, offset), as ranged reads: by block part and
    offset, neighbours (at most `_READ_GAP` apart) in one read of at most `_READ_SIZE`
    bytes."""
    result: list[BlockRead] = []
    for (index, part, _), (block, slices) in sorted(reads.items(), key=lambda item: item[0]):
        key = manifests[index].block_parts[part].key
        end = block.offset + block.length
        if result and result[-1].key == key and 0 <= block.offset - (result[-1].offset + result[-1].length) \
                <= _READ_GAP and end - result[-1].offset <= _READ_SIZE:
            last = result[-1]
            last.blocks.append((block, slices))
            result[-1] = last._replace(length=end - last.offset)
        else:
            result.append(BlockRead(index, key, block.offset, block.length, [(block, slices)]))
    return result


def narrowed_reads(reads: list[BlockRead], keep: Callable[[int, SuperBlock, list[Slice]], list[Slice]]
                   ) -> list[BlockRead]:
    """`reads` with each super-block's slices cut to those `keep(source, super_block,
    slices)` returns: a super-block left with none is not read, and a read is cut where
    one lay (no byte of it is read)."""
    result: list[BlockRead] = []
    for read in reads:
        runs: list[list[tuple[SuperBlock, list[Slice]]]] = [[]]
        for block, slices in read.blocks:
            if kept := keep(read.source, block, slices):
                runs[-1].append((block, kept))
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if run:
                first, last = run[0][0], run[-1][0]
                result.append(BlockRead(read.source, read.key, first.offset, last.offset + last.length - first.offset,
                                        run))
    return result


def _stream_reads(index: int, source: _Source) -> list[StreamRead]:
    """The parts of an older backup's stream holding blocks the target takes from it,
    with only those blocks' slices: each run cut where a part ends."""
    if not source.from_stream:
        return []
    files = source.manifest.files
    wanted = {source.stream[path]: needs for path, needs in source.from_stream.items()}
    # Where each wanted file lies in the stream: its pieces (part, slice), in file order.
    lying: dict[int, list[tuple[int, Slice]]] = defaultdict(list)
    for part, slices in enumerate(unpack.slices_by_part(files, source.manifest.parts)):
        for piece in slices:
            if piece.file in wanted:
                lying[piece.file].append((part, piece))
    by_part: dict[int, list[Slice]] = defaultdict(list)
    for number, needs in wanted.items():
        first, length, position = needs.runs.T
        if len(position) and (past := np.flatnonzero((position + length) * BLOCK_SIZE > files[number].size)).size:
            at = int(past[0])
            raise RefusedError(f"a block map takes blocks {position[at]} to {position[at] + length[at] - 1} of "
                               f"{files[number].path} from backup {source.manifest.backup_id}, whose copy has "
                               f"{files[number].size} bytes")
        pieces = lying[number]
        parts = np.array([part for part, _ in pieces], dtype=np.int64)
        lows = np.array([piece.file_offset for _, piece in pieces], dtype=np.int64)
        shifts = np.array([piece.part_offset - piece.file_offset for _, piece in pieces], dtype=np.int64)
        start = position * BLOCK_SIZE
        run, held, within, stop = _cut(lows, files[number].size, start, (position + length) * BLOCK_SIZE)
        cut = _slices(needs.file, first[run] * BLOCK_SIZE + within - start[run], within + shifts[held], stop - within)
        for holder, at, many in _groups(held):
            by_part[int(parts[holder])] += cut[at : at + many]
    return [StreamRead(index, source.manifest.parts[part], by_part[part]) for part in sorted(by_part)]

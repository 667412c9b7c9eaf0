"""Proving a restored data directory: every file written is read back and checked against
the checksums its backup recorded (format_version 2, catalog/checksums.py), after all of
it is written and before `backup_label` is, so a directory that fails is never started.

A relation file with a block map is checked block by block against the map's checksums
(the first block that differs is named; `differing_blocks` lists them all, what a restore
that rewrites only differing blocks would use); any other file by the checksum of its
bytes. A version 1 backup records no checksums: its files are not checked.

Where the maps come from: a block-mapped file's is the one the restore used; a file its
backup copied whole has its map in the same map objects, found by path (the manifest
points only at block-mapped files' maps), so a full backup's are read here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pitrkit.catalog import checksums
from pitrkit.catalog.blockmap import read_block_map
from pitrkit.catalog.documents import BLOCK_SIZE, CHECKSUMMED_FORMAT_VERSION, BackupFile, BackupManifest, BlockFile
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.storage.archive import Archive

# Bytes read per call: whole pages, so that each read's pages are hashed in place.
_READ_SIZE = 1024 * BLOCK_SIZE


class NotAsBackedUp(RefusedError):
    """A restored file differs from what its backup recorded."""


def stream_map_checksums(archive: Archive, manifest: BackupManifest) -> dict[str, bytes]:
    """The block checksums of the relation files `manifest` copied whole into its
    stream, by path: every map object of the backup read (each verified against the
    manifest's record of it), the maps of its stream files kept."""
    if manifest.format_version < CHECKSUMMED_FORMAT_VERSION:
        return {}
    stream = {file.path for file in manifest.files}
    found: dict[str, bytes] = {}
    for part in manifest.block_maps:
        for file_map in read_block_map(archive, part):
            if file_map.path in found:
                raise RefusedError(f"backup {manifest.backup_id}'s block maps map {file_map.path} twice")
            if file_map.path in stream:
                found[file_map.path] = file_map.checksums
    return found


def check_directory(root: Path, manifest: BackupManifest, files: Sequence[BackupFile | BlockFile],
                    block_checksums: Mapping[str, bytes], workers: int) -> None:
    """Read back every one of `files` under `root` (tablespace files through their
    links) and refuse (NotAsBackedUp, naming the file and block) the first that is not
    what `manifest` recorded; `block_checksums`: the packed block checksums of the files
    with a map, by path."""
    def check(file: BackupFile | BlockFile) -> None:
        if file.checksum:
            check_file(root, manifest.backup_id, file, block_checksums.get(file.path))

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="restore-check") as pool:
        for _ in pool.map(check, files):
            pass


def check_file(root: Path, backup_id: str, file: BackupFile | BlockFile, block_checksums: bytes | None) -> None:
    where = f"the restored {file.path} is not what backup {backup_id} holds"
    if block_checksums is None:
        hasher = checksums.file_hasher()
        for chunk in _chunks(root / file.path):
            hasher.update(chunk)
        if hasher.digest() != file.checksum:
            raise NotAsBackedUp(f"{where}: the checksum of its bytes is {hasher.hexdigest()}, the manifest records "
                                f"{file.checksum.hex()}")
        return
    if not checksums.covers(file.size, file.checksum, block_checksums):
        raise NotAsBackedUp(f"backup {backup_id}'s block map of {file.path} does not match its manifest (its block "
                            "checksums are not the ones the manifest's checksum covers)")
    for block, got, expected in differing_blocks(root / file.path, block_checksums):
        if expected is None:
            raise NotAsBackedUp(f"{where}: it has more than its {file.size // BLOCK_SIZE} blocks")
        if got is None:
            raise NotAsBackedUp(f"{where}: it ends before block {block} of its {file.size // BLOCK_SIZE}")
        raise NotAsBackedUp(f"{where}: block {block} has checksum {got:016x}, its block map records {expected:016x}")


def differing_blocks(path: Path, block_checksums: bytes) -> Iterator[tuple[int, int | None, int | None]]:
    """The blocks of the file at `path` whose checksum is not the packed one expected:
    (block, its checksum, the expected one); None for a block the file lacks or has
    beyond the expected ones (a partial block at the end counts as one)."""
    expected = checksums.unpacked(block_checksums)
    block = 0
    for chunk in _chunks(path):
        whole = len(chunk) // BLOCK_SIZE * BLOCK_SIZE
        sums = checksums.page_checksums(chunk[:whole])
        if whole < len(chunk):
            sums.append(checksums.page_checksum(chunk[whole:]))
        # A chunk's checksums compared at once (in C), and one by one only to name the
        # blocks that differ: a loop over every block was a tenth of a restore's CPU.
        if sums != expected[block : block + len(sums)]:
            for got in sums:
                want = expected[block] if block < len(expected) else None
                if got != want:
                    yield block, got, want
                block += 1
        else:
            block += len(sums)
    for missing in range(block, len(expected)):
        yield missing, None, expected[missing]


_buffers = threading.local()


def _chunks(path: Path) -> Iterator[memoryview]:
    """The file's bytes, in reads of whole pages (the last may be short), into one
    buffer per thread: a fresh 8 MiB for each of a thousand files cost more CPU (its
    mapping, first touch and unmapping) than hashing their pages. A chunk is used before
    the next is read, and a thread reads one file at a time."""
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(_READ_SIZE))
    try:
        with open(path, "rb", buffering=0) as reader:
            while True:
                filled = 0
                while filled < _READ_SIZE and (count := reader.readinto(view[filled:])):
                    filled += count
                if not filled:
                    return
                yield view[:filled]
                if filled < _READ_SIZE:
                    return
    except OSError as exc:
        raise PitrkitError(f"cannot read back {path}: {exc.strerror}") from None

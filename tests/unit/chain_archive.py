"""Chains of incremental backups in a real file:// archive, stored through the real
object code (objects.encode, Archive.put, the block map encoding, BackupManifest), laid
out as backup-push lays them out: a stream of whole files cut into parts, super-blocks
of up to 8 pages back to back in block parts, block maps in map objects, and maps that
are cumulative over the chain, every relation file mapped (those in the stream too),
checksums as format_version 2 has them. Each backup is given the whole data directory as
it stands and which blocks of which files it stores; everything else is derived."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pitrkit.backup.changes import relation_of
from pitrkit.catalog import blockmap, checksums
from pitrkit.catalog.blockmap import FileMap, SuperBlock
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    INCREMENTAL_FORMAT_VERSION,
    BackupDirectory,
    BackupFile,
    BackupManifest,
    BackupPart,
    BlockFile,
    BlockPart,
)
from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.hookspecs import Compressor
from pitrkit.postgres.wal import Lsn
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive, manifest_key
from pitrkit.storage.plugins.compression import Zstd
from tests.unit.segments import SYSID, init_archive

LABEL = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Small objects, so that files span parts, block parts hold a few super-blocks and
# block maps fill several objects; super-blocks of a few pages (backup-push makes them
# of blockmap.SUPER_BLOCK_PAGES), so that a file's stored blocks fill several.
PART_SIZE = 3 * BLOCK_SIZE + 1000
BLOCK_PART_SIZE = 3
MAPS_PER_OBJECT = 2
SUPER_BLOCK_PAGES = 8

# (sources, positions) per block of a file, in the child's numbering: how a tamper
# hook sees, and may change, a block map before it is stored.
Tamper = Callable[[str, list[int], list[int]], None]


# Windows of a few blocks (restore/chain_writes.py) for `small_windows`: the test
# chains' files of 10 blocks or more are written window by window, cut at byte offsets
# inside parts' slices, super-blocks and runs.
WINDOWED_FILE = 10 * BLOCK_SIZE
WINDOW = 3 * BLOCK_SIZE + 100
MOST_WINDOW = 5 * BLOCK_SIZE


def small_windows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pitrkit.restore import chain_writes

    monkeypatch.setattr(chain_writes, "_WINDOWED_FILE", WINDOWED_FILE)
    monkeypatch.setattr(chain_writes, "_WINDOW", WINDOW)
    monkeypatch.setattr(chain_writes, "_MOST", MOST_WINDOW)


def page(tag: str, number: int) -> bytes:
    """A distinct 8 KiB page."""
    seed = hashlib.sha256(f"{tag}:{number}".encode()).digest()
    return (seed * (BLOCK_SIZE // len(seed) + 1))[:BLOCK_SIZE]


def pages(tag: str, count: int) -> bytes:
    return b"".join(page(tag, number) for number in range(count))


class CountingArchive(Archive):
    """The real archive, counting what is read: whole objects by key, ranges by (key,
    offset, length). Measuring, not mocking: every call goes to the real storage."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.gets: list[str] = []
        self.ranges: list[tuple[str, int, int]] = []
        self._in_range = False

    def get(self, key: str) -> bytes:
        if "/blocks/" not in key:  # a block part is read only through get_range
            self.gets.append(key)
        return super().get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((key, offset, length))
        return super().get_range(key, offset, length)


class ChainBuilder:
    def __init__(self, root: Path, encryption: EncryptionConfig | None = None,
                 compressor: Compressor | None = None, super_block_digest: str | None = None) -> None:
        """`super_block_digest`: objects.SHA256 or XXH3_128; by default what backup-push
        picks (XXH3-128 unless encrypted)."""
        root.mkdir()
        self.root = root
        self.archive = CountingArchive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0),
                                              encryption=encryption or EncryptionConfig()))
        init_archive(self.archive, sysid=SYSID)
        self.cipher = self.archive.write_cipher()
        self.compressor = compressor or Zstd(3, 1)
        self.super_block_digest = super_block_digest or (objects.SHA256 if self.cipher else objects.XXH3_128)
        self.manifests: list[BackupManifest] = []
        self.maps: list[dict[str, FileMap]] = []  # each backup's block maps, by path

    def put(self, key: str, data: bytes) -> tuple[bytes, objects.ObjectHeader]:
        blob, header = objects.encode(data, self.compressor, self.cipher)
        self.archive.put(key, blob)
        return blob, header

    def backup(self, state: dict[str, bytes], stored: dict[str, set[int]] | None = None,
               tamper: Tamper | None = None, format_version: int = INCREMENTAL_FORMAT_VERSION,
               wrong_block: tuple[str, int] | None = None, wrong_file: str | None = None) -> BackupManifest:
        """Store the data directory `state` as the next backup of the chain (the first is
        full): the files in `stored` block-mapped, storing those blocks (and every block
        past the parent's copy), the others copied whole into its stream. A lie that
        decodes: `wrong_block` (path, block) gets a wrong checksum in the file's map (and
        the file's checksum is the one of the map's), `wrong_file` a wrong file checksum.
        Format version 1 has no checksums and no maps of stream files."""
        checksummed = format_version >= INCREMENTAL_FORMAT_VERSION

        def wrong(path: str, sums: bytes) -> bytes:
            if wrong_block is None or wrong_block[0] != path:
                return sums
            at = wrong_block[1] * blockmap.CHECKSUM_SIZE
            return sums[:at] + bytes(byte ^ 0xFF for byte in sums[at:at + 8]) + sums[at + 8:]

        def file_checksum(path: str, value: bytes) -> bytes:
            if not checksummed:
                return b""
            return bytes(byte ^ 0xFF for byte in value) if path == wrong_file else value

        stored = stored or {}
        number = len(self.manifests)
        backup_id = (T0 + timedelta(days=number)).strftime("%Y%m%dT%H%M%SZ")
        prefix = f"backups/{backup_id}/"
        chain = [manifest.backup_id for manifest in self.manifests]
        own = number

        whole = {path: content for path, content in state.items() if path not in stored}
        stream = b"".join(whole.values())
        files, offset = [], 0
        maps: dict[str, FileMap] = {}
        for path, content in whole.items():
            count = len(content) // BLOCK_SIZE
            if checksummed and relation_of(path) is not None and len(content) % BLOCK_SIZE == 0:
                sums = wrong(path, checksums.packed(checksums.page_checksums(content)))
                maps[path] = FileMap(path, count, own + 1,
                                     blockmap.pack_runs([blockmap.Run(0, count, own, 0)] if count else []), b"", sums)
                checksum = checksums.of_blocks(sums)
            else:
                checksum = checksums.of_bytes(content)
            files.append(BackupFile(path, len(content), 0o600, 1_700_000_000 + number, offset // PART_SIZE,
                                    offset % PART_SIZE, file_checksum(path, checksum)))
            offset += len(content)
        parts = []
        for start in range(0, len(stream), PART_SIZE):
            data = stream[start:start + PART_SIZE]
            key = f"{prefix}data/{start // PART_SIZE:08d}"
            blob, header = self.put(key, data)
            parts.append(BackupPart(key=key, size=len(data), stored_size=len(blob), sha256=header.sha256.hex()))

        block_parts: list[BlockPart] = []
        current = bytearray()

        def cut() -> None:
            nonlocal current
            key = f"{prefix}blocks/{len(block_parts):08d}"
            self.archive.put(key, bytes(current))
            block_parts.append(BlockPart(key=key, stored_size=len(current)))
            current = bytearray()

        in_part = 0
        records: list[BlockFile] = []
        for path, blocks in stored.items():
            content = state[path]
            count = len(content) // BLOCK_SIZE
            sources, positions, base_sums = self._base(path, own)
            sources, positions = sources[:count], positions[:count]
            wanted = sorted(set(blocks) | set(range(len(sources), count)))
            sources += [own] * (count - len(sources))
            positions += [0] * (count - len(positions))
            sums = checksums.unpacked(base_sums[:count * blockmap.CHECKSUM_SIZE])
            sums.extend([0] * (count - len(sums)))
            for position, block in enumerate(wanted):
                sources[block], positions[block] = own, position
                sums[block] = checksums.page_checksum(content[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE])
            packed = wrong(path, checksums.packed(sums))
            if tamper is not None:
                tamper(path, sources, positions)
            super_blocks = []
            for first in range(0, len(wanted), SUPER_BLOCK_PAGES):
                group = wanted[first:first + SUPER_BLOCK_PAGES]
                data = b"".join(content[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE] for block in group)
                blob, header = objects.encode(data, self.compressor, self.cipher, digest=self.super_block_digest)
                super_blocks.append(SuperBlock(len(block_parts), len(current), len(blob), first, len(group),
                                               blockmap.recorded_digest(header)))
                current += blob
                in_part += 1
                if in_part == BLOCK_PART_SIZE:
                    cut()
                    in_part = 0
            maps[path] = FileMap(path, count, own + 1, blockmap.pack_runs(blockmap.block_runs(sources, positions)),
                                 blockmap.pack_super_blocks(super_blocks), packed)
            records.append(BlockFile(path, len(content), 0o600, 1_700_000_000 + number,
                                     len(records) // MAPS_PER_OBJECT, len(wanted),
                                     file_checksum(path, checksums.of_blocks(packed))))
        if current:
            cut()
        block_maps = []
        # The block-mapped files' maps first (BlockFile.block_map counts on it), then the
        # stream files'.
        paths = [*stored, *(path for path in maps if path not in stored)]
        for first in range(0, len(paths), MAPS_PER_OBJECT):
            document = blockmap.BlockMapDocument(files=[maps[path] for path in paths[first:first + MAPS_PER_OBJECT]])
            key = f"{prefix}blockmap/{first // MAPS_PER_OBJECT:08d}"
            blob, header = self.put(key, blockmap.encode_block_map(document))
            block_maps.append(BackupPart(key=key, size=header.size, stored_size=len(blob),
                                         sha256=header.sha256.hex()))

        directories = {"": 0o700} | {str(parent): 0o700 for path in state for parent in Path(path).parents
                                     if str(parent) != "."}
        manifest = BackupManifest(
            format_version=format_version,
            backup_id=backup_id, label="test", system_identifier=SYSID, pg_version=150000, timeline=1,
            start_lsn=Lsn(0x2000028 + number), start_time=T0 + timedelta(days=number), stop_lsn=Lsn(0x2000100 + number),
            stop_time=T0 + timedelta(days=number), first_segment="000000010000000000000002",
            last_segment="000000010000000000000002", size=sum(len(content) for content in state.values()),
            stored_size=sum(part.stored_size for part in [*parts, *block_parts, *block_maps]),
            file_count=len(state), compression=self.compressor.name, pitrkit_version="test",
            parent=chain[-1] if chain else None, chain=chain, backup_label=LABEL, parts=parts,
            directories=[BackupDirectory(path, mode) for path, mode in directories.items()], files=files,
            block_files=records, block_maps=block_maps, block_parts=block_parts,
        )
        self.archive.put_document(manifest_key(backup_id), manifest)
        self.manifests.append(manifest)
        self.maps.append(maps)
        return manifest

    def _base(self, path: str, own: int) -> tuple[list[int], list[int], bytes]:
        """The parent's copy of a file, per block, as (source, position), and its
        checksums: its map (of a stream copy in a version 1 parent, made up: source the
        parent, position the block number, no checksums)."""
        assert self.manifests, "the full backup copies every file whole"
        parent = self.manifests[-1]
        if path in self.maps[-1]:
            file_map = self.maps[-1][path]
            return *blockmap.expand(file_map), file_map.checksums
        whole = next(file for file in parent.files if file.path == path)
        count = whole.size // BLOCK_SIZE
        return [own - 1] * count, list(range(count)), bytes(blockmap.CHECKSUM_SIZE * count)

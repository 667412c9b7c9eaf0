"""Synthetic archives on real local storage, for the catalog and planner tests.

The planner reads keys, sizes and store times of WAL objects, history files and the
newest `.partial` (decoded, so they are real stored objects), `archive.json` (made by
`pitrkit init`'s code) and backup manifests; everything else can be small fake bytes.
Store times are set with os.utime, as the storage reports the file's mtime. Segments are
1 GiB, so that a WAL folder (one 4 GiB "log") holds 4 of them and tests cross folders
after a few segments.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import xxhash

from pitrkit.catalog.blockmap import (
    BlockMapDocument,
    FileMap,
    Run,
    SuperBlock,
    encode_block_map,
    pack_runs,
    pack_super_blocks,
    recorded_digest,
)
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    INCREMENTAL_FORMAT_VERSION,
    BackupDirectory,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BlockFile,
    BlockPart,
    ChangeSource,
    RetentionState,
)
from pitrkit.catalog.maintenance import rebuild
from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import RETENTION_STATE_KEY, Archive, backup_prefix, manifest_key
from pitrkit.storage.plugins import Plugins
from tests.unit.segments import init_archive
from tests.unit.segments import segment as wal_segment

SEGMENT_SIZE = 1 << 30
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def stored_at(segno: int) -> datetime:
    """When segment `segno` reaches the archive in these tests: one per minute."""
    return T0 + timedelta(minutes=segno)


def lsn(segno: int, offset: int = 0) -> Lsn:
    return Lsn(segno * SEGMENT_SIZE + offset)


def name(timeline: int, segno: int) -> str:
    return SegmentName(timeline, segno, SEGMENT_SIZE).name


class SyntheticArchive:
    """With `encryption`, archive.json records it and the manifests are authenticated
    (the WAL and backup objects stay fake bytes: the planner only lists them)."""

    def __init__(self, root: Path, encryption: EncryptionConfig | None = None) -> None:
        root.mkdir()
        self.root = root
        self.archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0),
                                      encryption=encryption or EncryptionConfig()))
        init_archive(self.archive, sysid=1, seg_size=SEGMENT_SIZE)
        self.chains: dict[str, list[str]] = {}  # each backup made here: its chain

    def _stamp(self, key: str, when: datetime) -> None:
        os.utime(self.root / key, (when.timestamp(), when.timestamp()))

    def wal_key(self, timeline: int, segno: int) -> str:
        segment = name(timeline, segno)
        return f"wal/{segment[:16]}/{segment}"

    def segments(self, timeline: int, first: int, last: int, *, at: datetime | None = None) -> None:
        """Segments first..last of `timeline`; stored one a minute (from `at`, else
        at `stored_at(segno)`)."""
        for number, segno in enumerate(range(first, last + 1)):
            key = self.wal_key(timeline, segno)
            self.archive.put(key, b"segment %d" % segno)
            self._stamp(key, stored_at(segno) if at is None else at + timedelta(minutes=number))

    def drop_segment(self, timeline: int, segno: int) -> None:
        (self.root / self.wal_key(timeline, segno)).unlink()

    def partial(self, timeline: int, segno: int, pages: int, *, at: datetime) -> Lsn:
        """`<segment>.partial` as a streaming receiver ships it: real WAL page headers on
        its first `pages` pages, then zeros (the planner reads it to find where its WAL
        ends). Replaces an earlier one; returns the end of its last valid page."""
        page = 8192
        data = bytearray(wal_segment(segno, seg_size=SEGMENT_SIZE, timeline=timeline, length=(pages + 2) * page))
        for number in range(1, pages):
            data[number * page : number * page + 24] = wal_segment(
                segno, seg_size=SEGMENT_SIZE, timeline=timeline, info=0, length=24, pageaddr=lsn(segno, number * page))
        key = self.wal_key(timeline, segno) + ".partial"
        blob, _ = objects.encode(bytes(data), Plugins().compressor("none"))
        self.archive.put(key, blob, overwrite=True)
        self._stamp(key, at)
        return lsn(segno, pages * page)

    def drop_partial(self, timeline: int, segno: int) -> None:
        (self.root / (self.wal_key(timeline, segno) + ".partial")).unlink()

    def history(self, timeline: int, switches: list[tuple[int, Lsn]], at: datetime) -> None:
        text = "".join(f"{parent}\t{point}\tbefore 2026-11-23 12:00:00+00\n" for parent, point in switches)
        blob, _ = objects.encode(text.encode(), Plugins().compressor("none"))
        key = f"wal/{timeline:08X}.history"
        self.archive.put(key, blob)
        self._stamp(key, at)

    def backup(self, backup_id: str, timeline: int, start_segno: int, stop_segno: int, *,
               manifest: bool = True, at: datetime | None = None, parent: str | None = None,
               chain: list[str] | None = None, system_identifier: int = 1,
               pg_version: int = 150014) -> BackupSummary:
        """A backup starting in segment `start_segno` and consistent in `stop_segno`;
        without `manifest` it is one that was interrupted. Its objects are stored now,
        or, with `at`, stamped as stored then.

        With `parent`, an incremental backup (format_version 2) on the backup of that id
        made here before: its chain is the parent's and the parent (or `chain`, to forge
        one), and besides its one whole file it has a block-mapped file of 2 blocks, one
        stored in its block part, and its block map (real, its checksums zeros)."""
        # One file of 1000 bytes in one stored part: a manifest restore accepts.
        data = b"x" * 1000
        blob, header = objects.encode(data, Plugins().compressor("none"))
        part = BackupPart(key=backup_prefix(backup_id) + "data/0", size=len(data), stored_size=len(blob),
                          sha256=header.sha256.hex())
        stored = {part.key: blob}
        block_fields: dict = {}
        if parent is not None:
            chain = [*self.chains[parent], parent] if chain is None else chain
            block_blob, block_header = objects.encode(b"y" * BLOCK_SIZE, Plugins().compressor("none"))
            # Block 0 from the parent, block 1 stored here; checksums of zeros.
            own = len(chain)
            file_map = FileMap("base_relation", 2, own + 1, pack_runs([Run(0, 1, own - 1, 0), Run(1, 1, own, 0)]),
                               pack_super_blocks([SuperBlock(0, 0, len(block_blob), 0, 1,
                                                             recorded_digest(block_header))]),
                               bytes(16))
            map_blob, map_header = objects.encode(encode_block_map(BlockMapDocument(files=[file_map])),
                                                  Plugins().compressor("none"))
            block_map = BackupPart(key=backup_prefix(backup_id) + "blockmap/0", size=map_header.size,
                                   stored_size=len(map_blob), sha256=map_header.sha256.hex())
            block_part = BlockPart(key=backup_prefix(backup_id) + "blocks/0", stored_size=len(block_blob))
            stored |= {block_map.key: map_blob, block_part.key: block_blob}
            block_fields = {"format_version": INCREMENTAL_FORMAT_VERSION, "parent": parent, "chain": chain,
                            "changed_blocks": ChangeSource(method="page-lsn", note="synthetic"),
                            "block_files": [BlockFile("base_relation", 2 * BLOCK_SIZE, 0o600, 0, 0, 1,
                                                      xxhash.xxh3_128_digest(bytes(16)))],
                            "block_maps": [block_map], "block_parts": [block_part]}
        block_size = 2 * BLOCK_SIZE if parent is not None else 0
        document = BackupManifest(
            backup_id=backup_id, label=f"label {backup_id}", system_identifier=system_identifier,
            pg_version=pg_version, timeline=timeline,
            start_lsn=lsn(start_segno, 0x28), start_time=stored_at(start_segno) - timedelta(seconds=30),
            stop_lsn=lsn(stop_segno, 0x100), stop_time=stored_at(stop_segno) - timedelta(seconds=30),
            first_segment=name(timeline, start_segno), last_segment=name(timeline, stop_segno),
            size=1000 + block_size, stored_size=sum(map(len, stored.values())), file_count=1 + (parent is not None),
            compression="zstd", pitrkit_version="0.1.0",
            backup_label="START WAL LOCATION: ...", parts=[part], directories=[BackupDirectory("", 0o700)],
            files=[BackupFile("base_file", len(data), 0o600, 0, 0, 0,
                              xxhash.xxh3_128_digest(data) if parent is not None else b"")], **block_fields,
        )
        self.chains[backup_id] = list(document.chain)
        for key, content in stored.items():
            self.archive.put(key, content)
        if manifest:
            self.archive.put_document(manifest_key(backup_id), document, pretty=False)
        if at is not None:
            for key in [*stored, manifest_key(backup_id)] if manifest else stored:
                self._stamp(key, at)
        return codec.decode(codec.encode(document), BackupSummary, "summary")

    def rebuild_catalog(self) -> None:
        """`catalog/backups.json` and the indexes of the sealed WAL folders, made from the
        objects stored so far (what `pitrkit catalog rebuild` writes)."""
        rebuild(self.archive)

    def being_removed(self, backup_ids: list[str], decided_at: datetime) -> None:
        """`catalog/retention.json` naming backups a retention run was removing when it
        was interrupted: they exist for no reader, though their objects are stored."""
        state = RetentionState(deleting=backup_ids, decided_at=decided_at)
        self.archive.put_document(RETENTION_STATE_KEY, state, overwrite=True)

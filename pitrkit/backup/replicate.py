"""Copying stored objects and whole backups from one repository into another, as
stored or re-encoded: the machinery of `pitrkit repo sync` (ops/repo_sync.py) and of
backup-push's copy of a backup into each repository after the first.

Nothing in the target is overwritten or deleted: an object already there is left, and
counts as copied when it holds the same content (an earlier, interrupted copy, or
another process copying the same backup), else the copy is refused naming it. A
backup's parts, super-blocks and block maps go first, its manifest (the commit marker)
last, and only once its chain is in the target, as backup-push stores them.

Two repositories may encode differently: each has its own [encryption] (and keys), and
encrypted objects are bound to their key. Where both encode alike (both plain, or the
same encryption settings and archive.json parameters) objects are copied as stored,
each checked first by decoding it through the source's cipher against the digest its
manifest (or block map) records. Otherwise each object is decoded through the source's
cipher, checked the same way, encoded again through the target's (with the digest the
target's own backups use: SHA-256 when encrypted, XXH3-128 for stream parts and
super-blocks when plain) and read back through the target's cipher where this host
can decrypt. Re-encoding changes stored sizes and the super-blocks' offsets in their
block parts, so a backup's block maps and manifest are written anew for the target;
the plaintext checksums of files and blocks (catalog/checksums.py) do not change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from pitrkit.catalog import blockmap, maintenance
from pitrkit.catalog.backups import manifest_present, read_summary
from pitrkit.catalog.blockmap import FileMap, SuperBlock
from pitrkit.catalog.documents import BackupManifest, BackupPart, BackupSummary, BlockPart
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.hookspecs import Cipher, ObjectExists, ObjectNotFound
from pitrkit.postgres.wal import SegmentName, WalFileName
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive, manifest_key, wal_key
from pitrkit.storage.repositories import Repository, Written, to_every

log = logging.getLogger(__name__)

# Objects copied at once: each is held in memory (a part is at most 32 MiB), and each
# copy waits mostly on storage round trips.
WORKERS = 4


def encodes_alike(source: Archive, target: Archive) -> bool:
    """Whether an object stored in `source` reads back in `target` as it is: the same
    encryption settings, and the same recorded parameters (key ids, a passphrase's salt)."""
    return (source.config.encryption == target.config.encryption
            and source.identity().encryption == target.identity().encryption)


class Copier:
    """Copies objects from one archive into another, as stored or re-encoded (module
    docstring), create-only, never replacing what the target holds."""

    def __init__(self, source: Archive, target: Archive) -> None:
        self.source = source
        self.target = target
        ours, theirs = source.identity(), target.identity()
        if (ours.system_identifier, ours.wal_segment_size) != (theirs.system_identifier, theirs.wal_segment_size) \
                or source.era_record.system_identifier != target.era_record.system_identifier:
            raise RefusedError(f"{target.storage.url} is the archive of the cluster with system identifier "
                               f"{theirs.system_identifier}, {source.storage.url} of {ours.system_identifier}: "
                               "refusing to copy between archives of different clusters")
        self.as_stored = encodes_alike(source, target)
        self._source_cipher = source.cipher()
        self._target_cipher: Cipher | None = None if self.as_stored else target.write_cipher()
        compression = target.config.compression
        self._compressor = target.plugins.compressor(compression.algorithm, compression.level, threads=1)
        self.written = 0  # bytes stored, by the copying threads under `_counting`
        self._counting = threading.Lock()

    @staticmethod
    def _read(archive: Archive, key: str) -> bytes:
        try:
            return archive.get(key)
        except ObjectNotFound:
            # Listed a moment ago: removed since (retention), and so not copied.
            raise RefusedError(f"{archive.storage.url}/{key} is no longer stored") from None

    @property
    def copying(self) -> str:
        return "as stored" if self.as_stored else "re-encoded"

    def plaintext(self, key: str, blob: bytes) -> tuple[objects.ObjectHeader, bytes]:
        """The verified plaintext of a source object, with its header."""
        try:
            header, _ = objects.read_header(key, blob)
            return header, objects.decode(key, blob, self.source.plugins.compressor, self._source_cipher)
        except objects.CorruptObject as exc:
            raise RefusedError(f"{self.source.storage.url}: {exc}") from None

    def encoded(self, key: str, blob: bytes, data: bytes, *, cheap_digest: bool = False
                ) -> tuple[bytes, objects.ObjectHeader]:
        """The object to store in the target: `blob` itself, or `data` encoded again.
        `cheap_digest`: a stream part or super-block, XXH3-128 where the target is plain."""
        if self.as_stored:
            return blob, objects.read_header(key, blob)[0]
        digest = objects.XXH3_128 if cheap_digest and self._target_cipher is None else objects.SHA256
        return objects.encode(data, self._compressor, self._target_cipher, digest=digest)

    def store(self, key: str, blob: bytes, header: objects.ObjectHeader | None,
              check: Callable[[bytes], None] | None = None) -> None:
        """Store `blob` create-only; an object already there is left, and must hold the
        same plaintext (`check` decides for a block part, whose super-blocks are objects
        of their own; else its header's size and digest, and its content where this host
        can decrypt). Re-encoded, it is read back through the target's cipher."""
        try:
            self.target.put(key, blob)
        except ObjectExists:
            stored = self._read(self.target, key)
            if stored != blob:
                self._same_content(key, stored, header, check)
            return
        with self._counting:
            self.written += len(blob)
        if not self.as_stored:
            self._same_content(key, self._read(self.target, key), header, check)

    def _same_content(self, key: str, stored: bytes, header: objects.ObjectHeader | None,
                      check: Callable[[bytes], None] | None) -> None:
        where = f"{self.target.storage.url}/{key}"
        try:
            if check is not None:
                check(stored)
                return
            assert header is not None  # given with every object but a block part
            theirs, _ = objects.read_header(key, stored)
            if (theirs.size, theirs.digest) != (header.size, header.digest):
                raise RefusedError(f"{where} is already stored with other content; left as it is")
            cipher = self.target.cipher()
            if cipher is None or cipher.can_decrypt:
                objects.decode(key, stored, self.target.plugins.compressor, cipher)
        except objects.CorruptObject as exc:
            raise RefusedError(f"{where} does not read back: {exc}; left as it is") from None

    def copy_object(self, key: str, *, cheap_digest: bool = False) -> objects.ObjectHeader:
        """Copy the source object `key` (WAL, a time index folder); returns the stored header."""
        blob = self._read(self.source, key)
        _, data = self.plaintext(key, blob)
        new_blob, header = self.encoded(key, blob, data, cheap_digest=cheap_digest)
        self.store(key, new_blob, header)
        return header

    # -- one backup ------------------------------------------------------------------------

    def copy_backup(self, backup_id: str, command: str = "repo sync") -> BackupManifest:
        """Copy the backup, its manifest last; its chain must be in the target already.
        Returns the manifest as stored in the target. `command`: who copies, for the
        target's catalog lock."""
        key = manifest_key(backup_id)
        try:
            manifest = self.source.get_document(key, BackupManifest)
        except ObjectNotFound:
            raise RefusedError(f"backup {backup_id} is no longer in {self.source.storage.url}") from None
        except ValueError as exc:
            raise RefusedError(f"backup {backup_id} in {self.source.storage.url} is unusable: {exc}") from None
        if manifest.backup_id != backup_id:
            raise RefusedError(f"{self.source.storage.url}/{key} names backup {manifest.backup_id!r}")
        lacking = [ancestor for ancestor in manifest.chain if not manifest_present(self.target, ancestor)]
        if lacking:
            raise RefusedError(f"backup {backup_id} is incremental on {', '.join(lacking)}, which "
                               f"{self.target.storage.url} does not hold: copy the chain first")
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="repo-sync") as pool:
            parts = list(pool.map(self._copy_part, manifest.parts))
            maps = [blockmap.read_block_map(self.source, part) for part in manifest.block_maps]
            moved = list(pool.map(lambda numbered: self._copy_block_part(maps, *numbered),
                                  enumerate(manifest.block_parts)))
        block_parts = [part for part, _ in moved]
        placed = {(number, old): new for number, (_, layout) in enumerate(moved) for old, new in layout.items()}
        block_maps = [self._copy_block_map(part, files, placed) for part, files in zip(manifest.block_maps, maps,
                                                                                      strict=True)]
        stored_size = sum(part.stored_size for part in [*parts, *block_maps]) + sum(
            part.stored_size for part in block_parts)
        copied = msgspec.structs.replace(manifest, parts=parts, block_maps=block_maps, block_parts=block_parts,
                                         stored_size=stored_size)
        try:
            self.target.put_document(key, copied, pretty=False)
        except ObjectExists:
            log.info("%s is already in %s", key, self.target.storage.url)  # another copy committed it
        try:
            maintenance.record_backup(self.target, copied.summary(), command=command)
        except PitrkitError as exc:
            log.warning("backup %s is stored in %s, but updating its catalog failed (%s); 'pitrkit catalog "
                        "rebuild' rewrites it", backup_id, self.target.storage.url, exc)
        return copied

    def copy_backup_wal(self, manifest: BackupSummary) -> list[str]:
        """The WAL segments the backup needs that the target lacks, copied; their names.
        (backup-push stores a manifest only once its WAL is archived: so does a copy.)"""
        size = self.source.identity().wal_segment_size
        segment = SegmentName.parse(manifest.first_segment, size)
        last = SegmentName.parse(manifest.last_segment, size)
        copied = []
        while True:
            key = wal_key(WalFileName.parse(segment.name))
            try:
                self.target.stat(key)
            except ObjectNotFound:
                self.copy_object(key)
                copied.append(segment.name)
            if segment == last:
                return copied
            segment = segment.next()

    def _copy_part(self, part: BackupPart) -> BackupPart:
        blob = self._read(self.source, part.key)
        header, data = self.plaintext(part.key, blob)
        if (header.size, header.digest) != (part.size, part.digest):
            raise RefusedError(f"{self.source.storage.url}/{part.key} is not the part the manifest lists")
        new_blob, new_header = self.encoded(part.key, blob, data, cheap_digest=True)
        self.store(part.key, new_blob, new_header)
        return part if self.as_stored else BackupPart.of(part.key, new_header, len(new_blob))

    def _copy_block_part(self, maps: list[list[FileMap]], number: int, part: BlockPart
                         ) -> tuple[BlockPart, dict[int, SuperBlock]]:
        """One object of super-blocks, each checked against the digest its map records;
        re-encoded, laid back to back in the same order. Returns the part as stored and,
        by old offset, where each super-block now lies."""
        blob = memoryview(self._read(self.source, part.key))
        blocks = sorted({block.offset: block for files in maps for file in files
                         for block in file.iter_super_blocks() if block.part == number}.values(),
                        key=lambda block: block.offset)
        pieces: list[bytes] = []
        layout: dict[int, SuperBlock] = {}
        at = 0
        for block in blocks:
            name = f"{part.key} at {block.offset}"
            stored = bytes(blob[block.offset:block.offset + block.length])
            header, data = self.plaintext(name, stored)
            if blockmap.recorded_digest(header) != block.digest:
                raise RefusedError(f"{self.source.storage.url}: the super-block of {name} is not the one its map "
                                   "records")
            piece, new_header = self.encoded(name, stored, data, cheap_digest=True)
            # As stored, the part (and the maps pointing into it) stay as they are.
            layout[block.offset] = block if self.as_stored else block._replace(
                offset=at, length=len(piece), digest=blockmap.recorded_digest(new_header))
            pieces.append(piece)
            at += len(piece)
        new_blob = bytes(blob) if self.as_stored else b"".join(pieces)

        def check(stored: bytes) -> None:
            # Another run's copy of the same super-blocks: same layout (zstd and the
            # cipher's overhead are deterministic), each decoding to the same pages.
            cipher = self.target.cipher()
            for block in layout.values():
                piece = stored[block.offset:block.offset + block.length]
                theirs, _ = objects.read_header(part.key, piece)
                if blockmap.recorded_digest(theirs) != block.digest:
                    raise RefusedError(f"{self.target.storage.url}/{part.key} is already stored with other "
                                       "content; left as it is")
                if cipher is None or cipher.can_decrypt:
                    objects.decode(part.key, piece, self.target.plugins.compressor, cipher)

        self.store(part.key, new_blob, None, check)
        return BlockPart(key=part.key, stored_size=len(new_blob)), layout

    def _copy_block_map(self, part: BackupPart, files: list[FileMap], placed: dict[tuple[int, int], SuperBlock]
                        ) -> BackupPart:
        if self.as_stored:
            blob = self._read(self.source, part.key)
            self.store(part.key, blob, objects.read_header(part.key, blob)[0])
            return part
        moved = [msgspec.structs.replace(file, super_blocks=blockmap.pack_super_blocks(
            [placed[(block.part, block.offset)] for block in file.iter_super_blocks()])) for file in files]
        data = blockmap.encode_block_map(blockmap.BlockMapDocument(files=moved))
        blob, header = self.encoded(part.key, b"", data)
        self.store(part.key, blob, header)
        return BackupPart.of(part.key, header, len(blob))


def copy_with_chain(source: Archive, target: Archive, summary: BackupSummary, command: str) -> list[str]:
    """Copy the backup into `target` with whatever of its chain and its WAL the target
    lacks, ancestors first; the ids copied."""
    copier = Copier(source, target)
    copied = []
    for backup_id in [*summary.chain, summary.backup_id]:
        if manifest_present(target, backup_id):
            continue
        link = read_summary(source, backup_id)
        if link is None:
            raise RefusedError(f"backup {backup_id} is no longer in {source.storage.url}")
        copier.copy_backup_wal(link)
        copier.copy_backup(backup_id, command)
        copied.append(backup_id)
    return copied


def copy_to_others(first: Repository, others: list[Repository], summary: BackupSummary) -> Written[list[str]]:
    """backup-push's copy of the backup it took into `first` into each of `others`, at
    once; raises (after every copy has ended) when a required one fails, with a message
    saying where the backup is and how to finish it. What an optional one missed is
    returned, and logged."""
    try:
        return to_every(others, lambda archive: copy_with_chain(first.archive, archive.era(first.archive.era_number),
                                                                summary, "backup-push"))
    except PitrkitError as exc:
        exc.args = (f"backup {summary.backup_id} is stored in repository {first.name!r}, but copying it into a "
                    f"required repository failed: {exc}; `pitrkit repo sync` finishes the copy (it resumes where "
                    "this one stopped), or a new backup-push takes another backup",)
        raise

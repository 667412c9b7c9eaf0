"""`pitrkit verify [--deep] [--json]`: the archive checked against storage, reporting every
problem found rather than stopping at the first (a `VerifyReport`; views/ renders it).

What is checked, from one listing of every WAL folder and of every backup folder (and the
top-level listings ArchivedWal makes), never two:

* backups: each manifest decodes, names its own folder and the archive's system, adds up
  (part sizes against file sizes; its size against its files and block-mapped files; its
  stored size against its parts, block parts and block maps), and every object it lists
  is stored with the stored size it records; `catalog/backups.json` against the
  manifests;
* chains (catalog/chains.py): every ancestor of an incremental is stored and usable, each
  parent started before its child on the same system and PostgreSQL major, and each
  chain is its parent's chain and the parent: a backup whose chain breaks is not
  restorable, naming the ancestor at fault;
* WAL: each `catalog/wal/<folder>.json` index against its folder's listing (presence and
  stored size of every file it names); continuity per timeline along the path its history
  files give, from the oldest backup on that path to the newest WAL, naming the first
  missing segment of each gap and where WAL resumes;
* restore drills' reports (`drills/<id>.json`): each decodes, is authentic in an encrypted
  archive (an error if not) and names its own key (a warning if not: a drill's report is
  no data, but status reads it);
* restorability: every backup's data is intact and the planner can plan a restore to its
  stop point (its first..last segments along its timeline, through its history files);
* with `--deep`, the content of every backup part and WAL file: read in full, decoded
  (decompressed and decrypted by the same code a restore uses), its plaintext size and
  SHA-256 checked against its header and, for a part, the manifest; a WAL segment's page
  header against its name and the archive (magic, page address, system identifier);
* with `--deep`, a backup's blocks: each block map object read once, verified against
  the manifest and decoded (every map checked; in format_version 2 each map's block
  checksums must be the ones its file's manifest checksum covers, and of its length);
  each block part (an incremental's) read once, whole,
  and every super-block its backup's maps list found inside it, not overlapping another,
  decoded, its header's SHA-256 the map's record and its plaintext exactly its pages;
  bytes of a block part no super-block covers are a warning. Then restore's own chain
  planning (restore/chain.py `plan_chain`: the target's maps and the ancestors' it takes
  blocks from, every run pointing at blocks its source really holds) runs for each
  incremental not already failed: with the reading above, proof that a restore would
  find, and could decode, every block, without writing a data directory.

Without `--deep` nothing is read but documents (manifests, catalogs, history files):
sizes come from listings, because `Storage.get` returns whole objects and reading every
segment is exactly what `--deep` is for.

Two severities, so that an operator can tell loss from untidiness. "error": something is
missing or damaged, or a backup cannot be restored. "warning": the catalog (a cache)
disagrees with storage, or nothing is restorable yet; `pitrkit catalog rebuild` fixes
the catalog, and no data is lost. Backups that retention is removing
(`catalog/retention.json`) do not exist for verify, as for every reader.
"""

from __future__ import annotations

import os
import re
import struct
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from pitrkit.catalog import checksums
from pitrkit.catalog.archived_wal import ArchivedWal, LogFolder, on_path
from pitrkit.catalog.backups import backup_folders, retention_state
from pitrkit.catalog.blockmap import FileMap, MisplacedSuperBlock, read_block_map, super_block_pages
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import (
    CHECKSUMMED_FORMAT_VERSION,
    BackupCatalog,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BlockFile,
    BlockPart,
    DrillReport,
    WalFolderIndex,
)
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, PluginError, RefusedError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.ops.per_repository import PerRepository, Section, run_each
from pitrkit.ops.status import Held, missing_from
from pitrkit.postgres.wal import InvalidSegment, WalFileKind, WalFileName, parse_history, validate_segment
from pitrkit.progress import Progress
from pitrkit.restore import unpack
from pitrkit.restore.chain import plan_chain
from pitrkit.restore.plan import make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import objects
from pitrkit.storage.archive import (
    BACKUP_CATALOG_KEY,
    BACKUPS_PREFIX,
    DRILLS_PREFIX,
    IDENTITY_KEY,
    WAL_PREFIX,
    Archive,
    ArchiveMissing,
    ArchiveUnavailable,
    TamperedDocument,
    backup_prefix,
    drill_key,
    log_folder,
    manifest_key,
    wal_folder,
)
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.objects import ObjectHeader
from pitrkit.storage.repositories import Repository, chosen, open_all

Severity = Literal["error", "warning"]

# Listings and document reads in flight: tiny, latency-bound requests.
_LISTING_THREADS = 8
_INDEX_KEY = re.compile(r"catalog/wal/(?P<timeline>[0-9A-F]{8})(?P<log>[0-9A-F]{8})\.json")
_REBUILD = "'pitrkit catalog rebuild' rewrites it"


class Finding(msgspec.Struct, kw_only=True, frozen=True):
    severity: Severity
    key: str  # the stored object (or prefix) that is wrong
    problem: str


class BackupVerdict(msgspec.Struct, kw_only=True, frozen=True):
    backup_id: str
    restorable: bool
    era: int = 1  # the archive's era the backup is of


class TimelineVerdict(msgspec.Struct, kw_only=True, frozen=True):
    timeline: int
    path: list[int]  # the timelines replay follows to end on this one, oldest first
    # The stretch checked: from the first segment of the oldest backup on the path to
    # the newest WAL on it; None when no backup lies on the path (nothing to restore).
    checked_from: str | None
    checked_to: str | None
    gaps: list[str]  # the first missing segment of each gap
    era: int = 1  # the archive's era the timeline is of


class VerifyReport(msgspec.Struct, kw_only=True, frozen=True):
    archive: str
    deep: bool
    errors: int
    warnings: int
    findings: list[Finding]
    backups: list[BackupVerdict]
    unfinished: list[str]  # backup folders without a manifest: running or interrupted
    being_removed: list[str]  # backup folders retention is removing: not checked
    timelines: list[TimelineVerdict]
    wal_files: int  # segments, partials, .backup and history files stored
    objects_read: int  # with --deep: objects read in full (block parts and block maps too)
    bytes_read: int  # ... and their stored bytes
    super_blocks: int  # with --deep: super-blocks of the block parts read, each decoded and checked
    notes: list[str] = []  # what was not checked, and why

    @property
    def exit_code(self) -> int:
        """`pitrkit verify` exits 1 when it found anything, a warning too."""
        return 1 if self.findings else 0


# --- backups --------------------------------------------------------------------------


class _BackupFolder(NamedTuple):
    """One folder under `backups/`, as its listing and its manifest show it."""

    backup_id: str
    manifest: BackupManifest | None  # None: absent, or unusable (then `findings` says why)
    has_manifest: bool  # the manifest object is stored, usable or not
    findings: list[Finding]
    stored_bytes: int  # of every object in the folder


def _check_backup_folder(archive: Archive, backup_id: str, identity: ArchiveIdentity | None) -> _BackupFolder:
    prefix = backup_prefix(backup_id)
    stored = {info.key: info.size for info in archive.list(prefix)}
    stored_bytes = sum(stored.values())
    key = manifest_key(backup_id)
    if key not in stored:
        return _BackupFolder(backup_id, None, False, [], stored_bytes)

    def unusable(problem: str) -> _BackupFolder:
        return _BackupFolder(backup_id, None, True, [Finding(severity="error", key=key, problem=problem)],
                             stored_bytes)

    try:
        manifest = archive.get_document(key, BackupManifest)
    except ObjectNotFound:
        return _BackupFolder(backup_id, None, False, [], stored_bytes)  # removed since the listing
    except TamperedDocument as exc:
        return unusable(str(exc))
    except ValueError as exc:
        return unusable(f"unusable manifest: {exc}")
    if manifest.backup_id != backup_id:
        return unusable(f"names backup {manifest.backup_id!r}, not the folder's {backup_id!r}")
    if identity is not None and manifest.system_identifier != identity.system_identifier:
        return unusable(f"a backup of system {manifest.system_identifier}, not of this archive's system "
                        f"{identity.system_identifier}")
    if problem := _adds_up(manifest):
        return unusable(f"does not add up: {problem}")
    try:  # what restore refuses, verify reports
        unpack.check_manifest(manifest)
    except unpack.CorruptManifest as exc:
        return unusable(str(exc))

    findings = []
    for what, key, recorded in _objects(manifest):
        size = stored.get(key) if key.startswith(prefix) else _stored_size(archive, key)
        if size is None:
            findings.append(Finding(severity="error", key=key, problem=f"missing: {what} of backup {backup_id}"))
        elif size != recorded:
            findings.append(Finding(severity="error", key=key,
                                    problem=f"stored size {size} bytes, the manifest of backup {backup_id} says "
                                            f"{recorded}: truncated or replaced"))
    return _BackupFolder(backup_id, manifest, True, findings, stored_bytes)


def _objects(manifest: BackupManifest) -> list[tuple[str, str, int]]:
    """(what it is, key, recorded stored size) of every object the manifest lists."""
    return [*(("part", part.key, part.stored_size) for part in manifest.parts),
            *(("block map", block_map.key, block_map.stored_size) for block_map in manifest.block_maps),
            *(("block part", block_part.key, block_part.stored_size) for block_part in manifest.block_parts)]


def _adds_up(manifest: BackupManifest) -> str | None:
    """Why the manifest's figures disagree with what it lists, beyond what restore's own
    check_manifest refuses (counts, block map indexes, whose objects); None when they agree.

    The stream is the whole files' contents cut into parts: if the sizes do not add up, a
    restore would cut the stream into files in the wrong places. `stored_size` is every
    object the backup stored (parts, block parts, block maps)."""
    streamed = sum(part.size for part in manifest.parts)
    whole = sum(file.size for file in manifest.files)
    if streamed != whole:
        return f"its parts hold {streamed} bytes, its whole files {whole}"
    stored = sum(recorded for _, _, recorded in _objects(manifest))
    if manifest.stored_size != stored:
        return f"its objects' stored sizes add up to {stored} bytes, its stored size says {manifest.stored_size}"
    return None


def _stored_size(archive: Archive, key: str) -> int | None:
    try:
        return archive.stat(key).size
    except ObjectNotFound:
        return None


def _check_backup_catalog(archive: Archive, folders: list[_BackupFolder], being_removed: set[str]) -> list[Finding]:
    """`catalog/backups.json` against the manifests. The catalog is a cache every reader
    reconciles with the manifests, so whatever is wrong here is a warning."""
    try:
        entries = archive.get_document(BACKUP_CATALOG_KEY, BackupCatalog).backups
    except ObjectNotFound:
        entries = []
    except TamperedDocument as exc:
        return [Finding(severity="error", key=BACKUP_CATALOG_KEY, problem=f"{exc}; {_REBUILD}")]
    except ValueError as exc:
        return [Finding(severity="warning", key=BACKUP_CATALOG_KEY, problem=f"unusable: {exc}; {_REBUILD}")]
    by_id = {folder.backup_id: folder for folder in folders}
    findings = []
    for entry in entries:
        if entry.backup_id in being_removed:
            continue
        folder = by_id.get(entry.backup_id)
        if folder is None or not folder.has_manifest:
            findings.append(Finding(severity="warning", key=BACKUP_CATALOG_KEY,
                                    problem=f"lists backup {entry.backup_id}, whose manifest "
                                            f"{manifest_key(entry.backup_id)} is gone; {_REBUILD}"))
        elif folder.manifest is not None and entry != folder.manifest.summary():
            findings.append(Finding(severity="warning", key=BACKUP_CATALOG_KEY,
                                    problem=f"its entry for backup {entry.backup_id} differs from the manifest; "
                                            f"{_REBUILD}"))
    listed = {entry.backup_id for entry in entries}
    for folder in folders:
        if folder.manifest is not None and folder.backup_id not in listed:
            findings.append(Finding(severity="warning", key=BACKUP_CATALOG_KEY,
                                    problem=f"does not list backup {folder.backup_id} (its manifest is stored); "
                                            f"{_REBUILD}"))
    return findings


# --- WAL ------------------------------------------------------------------------------


def _check_drill_reports(archive: Archive, pool: ThreadPoolExecutor) -> list[Finding]:
    def check(key: str) -> Finding | None:
        try:
            report = archive.get_document(key, DrillReport)
        except ObjectNotFound:
            return None  # removed since the listing
        except TamperedDocument as exc:
            return Finding(severity="error", key=key, problem=str(exc))
        except ValueError as exc:
            return Finding(severity="warning", key=key, problem=f"unusable drill report (status skips it): {exc}")
        if drill_key(report.drill_id) != key:
            return Finding(severity="warning", key=key, problem=f"names drill {report.drill_id!r}, not its key's "
                                                                 "(status skips it)")
        return None

    keys = [info.key for info in archive.list(DRILLS_PREFIX)]
    return [found for found in pool.map(check, keys) if found is not None]


def _check_indexes(archive: Archive, wal: ArchivedWal, pool: ThreadPoolExecutor) -> list[Finding]:
    """Every `catalog/wal/<folder>.json` against its folder's listing (already read)."""
    findings = []
    readable = []
    for key in sorted(wal.indexed):
        match = _INDEX_KEY.fullmatch(key)
        if match is None:
            findings.append(Finding(severity="warning", key=key, problem=f"not the index of a WAL folder; {_REBUILD}"))
            continue
        timeline, log_number = int(match["timeline"], 16), int(match["log"], 16)
        folder = log_folder(timeline, log_number)
        if log_number not in wal.logs.get(timeline, ()):
            findings.append(Finding(severity="warning", key=key,
                                    problem=f"indexes {folder}, which holds nothing; {_REBUILD}"))
        elif not wal.is_sealed(timeline, log_number):
            findings.append(Finding(severity="warning", key=key,
                                    problem=f"indexes {folder}, which still receives WAL; readers ignore it; "
                                            f"{_REBUILD}"))
        else:
            readable.append((key, wal.folder(timeline, log_number)))
    for found in pool.map(lambda each: _check_index(archive, *each), readable):
        findings += found
    return findings


def _check_index(archive: Archive, key: str, listed: LogFolder) -> list[Finding]:
    prefix = log_folder(listed.timeline, listed.log_number)
    try:
        index = archive.get_document(key, WalFolderIndex)
    except ObjectNotFound:
        return []  # removed since the listing (catalog rebuild, retention)
    except TamperedDocument as exc:
        return [Finding(severity="error", key=key, problem=f"{exc}; {_REBUILD}")]
    except ValueError as exc:
        return [Finding(severity="warning", key=key, problem=f"unusable: {exc}; readers list the folder instead; "
                                                             f"{_REBUILD}")]
    if index.folder != prefix:
        return [Finding(severity="warning", key=key, problem=f"names folder {index.folder}, not {prefix}; {_REBUILD}")]
    stored = {entry.name: entry.stored_size for entry in listed.entries}
    findings = []
    gone = []
    for entry in index.entries:
        size = stored.pop(entry.name, None)
        if size is None:
            gone.append(entry.name)
        elif size != entry.stored_size:
            findings.append(Finding(severity="error", key=prefix + entry.name,
                                    problem=f"stored size {size} bytes, {key} says {entry.stored_size}: "
                                            "truncated or replaced since it was archived"))
    if gone:
        # Archived once (the index is a listing), lost since. The continuity check
        # names the gaps this makes where a backup needs the WAL.
        findings.append(Finding(severity="error", key=key,
                                problem=f"lists {len(gone)} file(s) of {prefix} that storage no longer has: "
                                        f"{_some(gone)}"))
    if stored:
        # Harmless to readers (an index is trusted only for what it says is present),
        # but what it lacks it hides from nobody else.
        unlisted = sorted(stored)
        findings.append(Finding(severity="warning", key=key,
                                problem=f"does not list {len(unlisted)} stored file(s) of {prefix} "
                                        f"({_some(unlisted)}); {_REBUILD}"))
    return findings


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def _wal_key(name: str) -> str:
    return wal_folder(name) + name


def _check_continuity(wal: ArchivedWal,
                      finished: Sequence[BackupSummary]) -> tuple[list[TimelineVerdict], list[Finding]]:
    """Per timeline, the WAL along its path from its oldest backup's first segment to the
    newest WAL on the path: every gap, with where WAL resumes after it. A gap before a
    branch point lies on every later timeline's path too; it is reported once."""
    verdicts = []
    findings = []
    reported: set[str] = set()
    for timeline in wal.timelines:
        try:
            path = wal.path(timeline)
        except ArchiveUnavailable:
            raise
        except PitrkitError as exc:
            findings.append(Finding(severity="error", key=f"{WAL_PREFIX}{timeline:08X}.history",
                                    problem=f"timeline {timeline} is unreachable: {exc}"))
            continue
        on = [b for b in finished if on_path(path, b)]
        if not on:
            verdicts.append(TimelineVerdict(timeline=timeline, path=[step.timeline for step in path],
                                            checked_from=None, checked_to=None, gaps=[]))
            continue
        first = min(wal.segno(b.first_segment) for b in on)
        gaps = []
        chain = wal.chain(path, first)
        while chain.gap:
            missing = chain.last_segno + 1
            resumes = wal.resumes_at(path, missing + 1)
            assert chain.missing is not None and resumes is not None  # a gap: WAL follows the hole
            gaps.append(chain.missing)
            if (key := _wal_key(chain.missing)) not in reported:
                reported.add(key)
                hole = chain.missing if resumes == missing + 1 else \
                    f"{chain.missing} to {wal.name_on(path, resumes - 1)}"
                findings.append(Finding(
                    severity="error", key=key,
                    problem=f"missing: the WAL of timeline {timeline} has a gap ({hole}); it resumes at "
                            f"{wal.name_on(path, resumes)}: no backup before the gap restores past it"))
            chain = wal.chain(path, resumes)
        verdicts.append(TimelineVerdict(timeline=timeline, path=[step.timeline for step in path],
                                        checked_from=wal.name_on(path, first),
                                        checked_to=chain.segments[-1].name if chain.segments else None, gaps=gaps))
    return verdicts, findings


# --- content (--deep) -------------------------------------------------------------------


class _Content(NamedTuple):
    """An object --deep reads in full. Decoding checks its plaintext against its own
    header; `expect` checks what else it must be, returning the problem or None."""

    key: str
    stored_size: int
    expect: Callable[[ObjectHeader, bytes], str | None]


def _part_content(part: BackupPart, backup_id: str) -> _Content:
    def expect(header: ObjectHeader, data: bytes) -> str | None:
        # A part that decodes can still be another part or another backup's: the
        # manifest's size and checksum must match too.
        if len(data) == part.size and header.digest == part.digest:
            return None
        return (f"not the part the manifest of backup {backup_id} lists: {len(data)} bytes, "
                f"{header.digest[:25]}...; the manifest says {part.size} bytes, {part.digest[:25]}...")

    return _Content(part.key, part.stored_size, expect)


def _wal_content(key: str, file: WalFileName, stored_size: int, identity: ArchiveIdentity) -> _Content:
    def expect(header: ObjectHeader, data: bytes) -> str | None:
        if file.kind == WalFileKind.HISTORY:
            try:
                parse_history(data.decode("ascii", "replace"), key)
            except UsageError as exc:
                return f"not a timeline history file: {exc}"
            return None
        if not file.has_page_header:
            return None  # a .backup file: nothing more to check than its header
        try:
            page = validate_segment(file, data)
        except InvalidSegment as exc:
            return f"not the WAL its name says: {exc}"
        if page.system_identifier != identity.system_identifier:
            return (f"WAL of system {page.system_identifier}, not of this archive's system "
                    f"{identity.system_identifier}")
        if page.segment_size != identity.wal_segment_size:
            return f"{page.segment_size}-byte segment; the archive's segments are {identity.wal_segment_size} bytes"
        return None

    return _Content(key, stored_size, expect)


def _wal_contents(wal: ArchivedWal, identity: ArchiveIdentity) -> list[_Content]:
    contents = [_wal_content(info.key, WalFileName.parse(info.key.removeprefix(WAL_PREFIX)), info.size, identity)
                for info in wal.history_files.values()]
    for timeline, numbers in sorted(wal.logs.items()):
        for log_number in numbers:
            prefix = log_folder(timeline, log_number)
            for entry in wal.folder(timeline, log_number).entries:
                try:
                    file = WalFileName.parse(entry.name)
                except UsageError:
                    continue  # not WAL: nothing reads it
                contents.append(_wal_content(prefix + entry.name, file, entry.stored_size, identity))
    return contents


def _read_content(archive: Archive, content: _Content) -> Finding | None:
    try:
        blob = archive.get(content.key)
    except ObjectNotFound:
        return Finding(severity="error", key=content.key, problem="missing: it was removed while verify ran")
    try:
        header, _ = objects.read_header(content.key, blob)
        data = objects.decode(content.key, blob, archive.plugins.compressor, archive.cipher())
    except objects.CorruptObject as exc:
        return Finding(severity="error", key=content.key, problem=f"corrupt: {exc.why}")
    except PluginError as exc:
        return Finding(severity="error", key=content.key, problem=f"unreadable: {exc}")
    problem = content.expect(header, data)
    return None if problem is None else Finding(severity="error", key=content.key, problem=problem)


# --- block parts (--deep) ---------------------------------------------------------------

# A super-block as the index keeps it, packed (a big incremental lists millions):
# offset in its block part, stored length, pages, the file (index in block_files), its recorded digest.
_RECORD = struct.Struct("<QIII32s")


class _Read(NamedTuple):
    """What --deep read of some objects, and found."""

    findings: list[Finding]
    objects: int
    stored_bytes: int
    super_blocks: int = 0
    notes: list[str] = []


class _SuperBlockIndex(NamedTuple):
    """Every super-block one backup's own block maps list, by block part (packed records)."""

    by_part: list[bytearray]
    complete: bool  # every map object was read, every file's map found: a byte no record covers is covered by none


def _checksums_problem(backup: BackupManifest, records: Mapping[str, BackupFile | BlockFile],
                       file_map: FileMap) -> str | None:
    """Why a map's block checksums are not those of the file the manifest lists (its
    length, or the checksum the manifest records of them); None when they are, and
    before format_version 2, which has none."""
    if backup.format_version < CHECKSUMMED_FORMAT_VERSION:
        return None
    record = records.get(file_map.path)
    if record is None or not checksums.covers(record.size, record.checksum, file_map.checksums):
        return (f"its block map of {file_map.path} is not of the file backup {backup.backup_id}'s manifest lists "
                "(its length or its block checksums)")
    return None


def _index_super_blocks(archive: Archive, backup: BackupManifest, known: set[str], pool: ThreadPoolExecutor,
                        advance: Callable[[int], None]) -> tuple[_SuperBlockIndex, _Read]:
    """Read the backup's block map objects, each once (verified against the manifest,
    decoded, every map checked: catalog/blockmap.py), and index the super-blocks of the
    maps the manifest places in each. Which blocks the maps' runs take from where is
    restore's planning's to check (`_chain_refusal`)."""
    by_part = [bytearray() for _ in backup.block_parts]
    files = {file.path: number for number, file in enumerate(backup.block_files)}
    written: list[BackupFile | BlockFile] = [*backup.files, *backup.block_files]
    records = {file.path: file for file in written}
    findings: list[Finding] = []
    unread = [part for part in backup.block_maps if part.key in known]

    def read(part: BackupPart) -> Finding | list[FileMap]:
        try:
            return read_block_map(archive, part)
        except (RefusedError, PluginError) as exc:
            return Finding(severity="error", key=part.key, problem=str(exc))
        finally:
            advance(part.stored_size)

    readable = [(number, part) for number, part in enumerate(backup.block_maps) if part.key not in known]
    for (number, part), maps in zip(readable, pool.map(read, [part for _, part in readable]), strict=True):
        if isinstance(maps, Finding):
            findings.append(maps)
            unread.append(part)
            continue
        for file_map in maps:
            if (problem := _checksums_problem(backup, records, file_map)) is not None:
                findings.append(Finding(severity="error", key=part.key, problem=problem))
            file = files.get(file_map.path)
            if file is None or backup.block_files[file].block_map != number:
                continue  # not the manifest's: restore does not use it either
            files.pop(file_map.path)  # a file mapped twice is indexed once
            for block in file_map.iter_super_blocks():
                if block.part >= len(by_part):
                    findings.append(Finding(severity="error", key=part.key, problem=(
                        f"its map of {file_map.path} puts the super-block of positions {block.first} to "
                        f"{block.first + block.pages - 1} in block part {block.part}; backup {backup.backup_id} has "
                        f"{len(by_part)}")))
                    break  # one finding for the file
                by_part[block.part] += _RECORD.pack(block.offset, block.length, block.pages, file, block.digest)
    read_bytes = sum(part.stored_size for _, part in readable)
    return _SuperBlockIndex(by_part, not unread and not files), _Read(findings, len(readable), read_bytes)


def _check_block_part(archive: Archive, backup: BackupManifest, part: BlockPart, records: bytearray,
                      complete: bool) -> _Read:
    """Read one block part whole and check every super-block `records` puts in it; the
    bad ones make one finding (the first named), bytes no super-block covers another."""
    try:
        blob = archive.get(part.key)
    except ObjectNotFound:
        return _Read([Finding(severity="error", key=part.key, problem="missing: it was removed while verify ran")],
                     0, 0)
    listed = sorted(_RECORD.iter_unpack(records))
    first_bad: str | None = None
    bad = 0
    end = 0  # of the bytes covered so far
    uncovered = 0
    first_uncovered = 0
    previous = ""
    for offset, length, pages, file, digest in listed:
        where = (f"the super-block at offset {offset} ({pages} pages of {backup.block_files[file].path} in backup "
                 f"{backup.backup_id}'s block maps)")
        if offset < end:
            problem: str | None = f"overlaps {previous}"
        elif offset + length > len(blob):
            problem = f"runs past the end of the object, at {len(blob)} bytes"
        else:
            problem = _super_block_problem(archive, part.key, blob[offset : offset + length], pages, digest)
        if problem is not None:
            bad += 1
            first_bad = first_bad or f"{where} {problem}"
        if offset > end:
            first_uncovered = first_uncovered if uncovered else end
            uncovered += offset - end
        end = max(end, offset + length)
        previous = where
    if len(blob) > end:
        first_uncovered = first_uncovered if uncovered else end
        uncovered += len(blob) - end
    findings = []
    if first_bad is not None:
        findings.append(Finding(severity="error", key=part.key, problem=first_bad if bad == 1 else
                                f"{bad} of its {len(listed)} super-blocks are bad; the first: {first_bad}"))
    if uncovered and complete:
        # No map points there, so no restore reads these bytes: lost space, not lost data.
        findings.append(Finding(severity="warning", key=part.key, problem=(
            f"{uncovered} of its {len(blob)} bytes lie in no super-block of backup {backup.backup_id}'s block maps "
            f"(from offset {first_uncovered}): nothing reads them")))
    return _Read(findings, 1, len(blob), len(listed))


def _super_block_problem(archive: Archive, key: str, blob: bytes, pages: int, digest: bytes) -> str | None:
    """What is wrong with one super-block, as restore would find it (both read it with
    catalog/blockmap.py's `super_block_pages`)."""
    try:
        super_block_pages(archive, key, blob, pages, digest)
    except MisplacedSuperBlock as exc:
        return f"is {exc.why}"
    except objects.CorruptObject as exc:
        return f"is corrupt: {exc.why}"
    except PluginError as exc:
        return f"is unreadable: {exc}"
    return None


def _read_blocks(archive: Archive, backup: BackupManifest, known: set[str], pool: ThreadPoolExecutor,
                 advance: Callable[[int], None]) -> _Read:
    """An incremental's block maps, then its block parts, each read once, `pool`'s
    workers at a time (each holding one object). A block part already missing or of the
    wrong size is not read."""
    index, maps = _index_super_blocks(archive, backup, known, pool, advance)

    def check(number: int) -> _Read:
        part = backup.block_parts[number]
        found = _check_block_part(archive, backup, part, index.by_part[number], index.complete)
        advance(part.stored_size)
        return found

    parts = list(pool.map(check, [number for number, part in enumerate(backup.block_parts) if part.key not in known]))
    notes = [] if index.complete else [f"the block parts of backup {backup.backup_id} were not checked for bytes no "
                                       "super-block covers: not every file's block map could be read"]
    return _Read(maps.findings + [finding for each in parts for finding in each.findings],
                 maps.objects + sum(each.objects for each in parts),
                 maps.stored_bytes + sum(each.stored_bytes for each in parts),
                 sum(each.super_blocks for each in parts), notes)


# --- restorability --------------------------------------------------------------------


def _plan_refusal(archive: Archive, wal: ArchivedWal, backup: BackupSummary, ancestors: list[BackupSummary],
                  damaged: set[str]) -> str | None:
    """Why a restore from `backup` (alone, with the `ancestors` of its chain) to its stop
    point on its timeline would fail: the planner refuses (its first..last segments, the
    history files of its path), or a WAL file the plan needs is `damaged` (named by
    --deep); None if it would work."""
    target = Target(kind="lsn", lsn=backup.stop_lsn, text=f"the stop point of backup {backup.backup_id}")
    try:
        plan = make_plan(archive, target, backup.timeline, wal=wal, finished=[*ancestors, backup])
    except ArchiveUnavailable:
        raise
    except PitrkitError as exc:
        return str(exc)
    if broken := [name for name in plan.history_files + plan.segments if name in damaged]:
        return f"WAL it needs is damaged: {_some(broken)}"
    return None


def _chain_refusal(archive: Archive, backup: BackupManifest, manifests: dict[str, BackupManifest],
                   workers: int) -> str | None:
    """Why restore would refuse the chain of the incremental `backup` (whole, every link
    usable): restore's own chain planning, which reads the block maps it needs and checks
    each run points at blocks its source holds, fetching no data; None if it plans."""
    try:
        plan_chain(archive, [*(manifests[ancestor] for ancestor in backup.chain), backup], workers)
    except ArchiveUnavailable:
        raise
    except PitrkitError as exc:
        return str(exc)
    return None


def _verdicts(archive: Archive, wal: ArchivedWal | None, folders: list[_BackupFolder], findings: list[Finding],
              plan_workers: int) -> tuple[list[BackupVerdict], list[Finding]]:
    """Whether each backup can be restored, and a finding for each that cannot (but for
    an unusable manifest, whose own finding says so): its chain must be whole, its data
    and its ancestors' intact, with `plan_workers` (--deep) restore's chain planning must
    accept an incremental's block maps, and the planner must plan a restore to its stop
    point."""
    owner = {key: folder.backup_id for folder in folders if folder.manifest
             for _, key, _ in _objects(folder.manifest)}
    manifests = {folder.backup_id: folder.manifest for folder in folders if folder.manifest is not None}
    broken = check_chains(list(manifests.values())).broken_by_id()
    damaged: dict[str, list[str]] = {}
    damaged_wal = set()
    for finding in findings:
        if finding.severity != "error":
            continue
        if finding.key in owner:
            damaged.setdefault(owner[finding.key], []).append(finding.key)
        elif finding.key.startswith(WAL_PREFIX):
            damaged_wal.add(finding.key.rpartition("/")[2])
    restorable: dict[str, bool] = {}
    refusals: dict[str, Finding] = {}
    # Ancestors first (shorter chains), so that a child knows whether they restore.
    for folder in sorted(folders, key=lambda each: len(each.manifest.chain) if each.manifest else 0):
        if not folder.has_manifest:
            continue
        if folder.manifest is None:
            restorable[folder.backup_id] = False
            continue
        manifest = folder.manifest
        why: str | None  # None: restorable
        if manifest.backup_id in broken:
            why = f"its chain is broken: {broken[manifest.backup_id].problem}"
        elif keys := damaged.get(folder.backup_id):
            listed = _objects(manifest)
            noun = "parts" if len(listed) == len(manifest.parts) else "objects"
            why = f"{len(keys)} of its {len(listed)} {noun} are missing or damaged ({keys[0]} ...)"
        elif unusable := [ancestor for ancestor in manifest.chain if not restorable[ancestor]]:
            why = f"its ancestor {unusable[-1]} is not restorable"
        elif plan_workers and manifest.chain and \
                (refusal := _chain_refusal(archive, manifest, manifests, plan_workers)) is not None:
            why = f"its chain does not resolve: {refusal}"
        elif wal is None:
            why = "the archive has no archive.json, and so no WAL"
        else:
            why = _plan_refusal(archive, wal, manifest, [manifests[ancestor] for ancestor in manifest.chain],
                                damaged_wal)
        restorable[folder.backup_id] = why is None
        if why is not None:
            refusals[folder.backup_id] = Finding(severity="error", key=manifest_key(folder.backup_id),
                                                 problem=f"backup {folder.backup_id} is not restorable: {why}")
    verdicts = [BackupVerdict(backup_id=folder.backup_id, restorable=restorable[folder.backup_id])
                for folder in folders if folder.backup_id in restorable]
    return verdicts, [refusals[folder.backup_id] for folder in folders if folder.backup_id in refusals]


# --- the whole archive ------------------------------------------------------------------


def _identity(archive: Archive) -> tuple[ArchiveIdentity | None, list[Finding]]:
    try:
        return archive.identity(), []
    except ArchiveMissing:
        return None, []
    except ArchiveUnavailable:
        raise  # a storage fault, not a finding: verify cannot go on
    except PitrkitError as exc:  # stored, but not a valid identity document
        return None, [Finding(severity="error", key=IDENTITY_KEY, problem=f"unusable: {exc}")]


def _check_backup_folders(archive: Archive, backup_ids: list[str], identity: ArchiveIdentity | None,
                          pool: ThreadPoolExecutor, progress: Progress) -> list[_BackupFolder]:
    def check(backup_id: str) -> _BackupFolder:
        folder = _check_backup_folder(archive, backup_id, identity)
        progress.advance(folder.stored_bytes)
        return folder

    return list(pool.map(check, backup_ids))


def _list_wal(archive: Archive, pool: ThreadPoolExecutor, progress: Progress) -> ArchivedWal:
    """The archive's WAL with every folder listed, once: everything after reads these
    listings, not the indexes (which are what is being checked)."""
    wal = ArchivedWal(archive)

    def list_folder(timeline: int, log_number: int) -> None:
        progress.advance(sum(entry.stored_size for entry in wal.relist(timeline, log_number).entries))

    list(pool.map(lambda each: list_folder(*each), [(t, n) for t, numbers in wal.logs.items() for n in numbers]))
    return wal


def _holds_wal(archive: Archive) -> bool:
    top = archive.list_folder(WAL_PREFIX)
    return bool(top.objects or top.folders)


def _read_everything(archive: Archive, contents: list[_Content], incrementals: list[BackupManifest],
                     known: set[str], workers: int) -> _Read:
    """--deep's reading: `contents` (parts, WAL), then each incremental's block maps and
    block parts, `workers` objects in memory at once, each up to a part, a WAL segment or
    a block part; every object once. `known`: objects already missing or of the wrong
    size, which need no reading to be wrong."""
    archive.cipher()  # a broken [encryption] fails once, here, not once per object
    contents = [content for content in contents if content.key not in known]
    total = sum(content.stored_size for content in contents) + sum(
        part.stored_size for backup in incrementals for part in backup.block_maps if part.key not in known) + sum(
        part.stored_size for backup in incrementals for part in backup.block_parts if part.key not in known)
    with ThreadPoolExecutor(workers, thread_name_prefix="verify-deep") as pool, \
            Progress("verify: reading", total) as progress:
        def read(content: _Content) -> Finding | None:
            found = _read_content(archive, content)
            progress.advance(content.stored_size)
            return found

        read_all = _Read([found for found in pool.map(read, contents) if found is not None], len(contents),
                         sum(content.stored_size for content in contents))
        for backup in incrementals:
            blocks = _read_blocks(archive, backup, known, pool, progress.advance)
            read_all = _Read(read_all.findings + blocks.findings, read_all.objects + blocks.objects,
                             read_all.stored_bytes + blocks.stored_bytes, read_all.super_blocks + blocks.super_blocks,
                             read_all.notes + blocks.notes)
        return read_all


def verify(archive: Archive, deep: bool, workers: int) -> VerifyReport:
    """Every era of the archive (storage/archive.py `Archive.era`), each checked on its
    own against its own cluster; one report, each finding's key from the archive's root."""
    try:
        eras = archive.eras()
    except PitrkitError:
        eras = [archive]  # no or no valid archive.json: era 1's run reports it
    if len(eras) == 1:
        return _verify_era(archive, deep, workers)
    reports = [_verify_era(era, deep, workers) for era in eras]

    def each(report: VerifyReport, era: Archive) -> VerifyReport:
        if era.era_number == 1:
            return report
        return msgspec.structs.replace(
            report, findings=[msgspec.structs.replace(finding, key=era.prefix + finding.key)
                              for finding in report.findings],
            backups=[msgspec.structs.replace(verdict, era=era.era_number) for verdict in report.backups],
            timelines=[msgspec.structs.replace(verdict, era=era.era_number) for verdict in report.timelines],
            unfinished=[f"{backup_id} (era {era.era_number})" for backup_id in report.unfinished],
            being_removed=[f"{backup_id} (era {era.era_number})" for backup_id in report.being_removed],
            notes=[f"era {era.era_number}: {note}" for note in report.notes])

    reports = [each(report, era) for report, era in zip(reports, eras, strict=True)]
    findings = sorted((finding for report in reports for finding in report.findings),
                      key=lambda f: (f.severity != "error", f.key))
    return VerifyReport(
        archive=archive.storage.url, deep=deep, errors=sum(report.errors for report in reports),
        warnings=sum(report.warnings for report in reports), findings=findings,
        backups=[verdict for report in reports for verdict in report.backups],
        unfinished=[name for report in reports for name in report.unfinished],
        being_removed=[name for report in reports for name in report.being_removed],
        timelines=[verdict for report in reports for verdict in report.timelines],
        wal_files=sum(report.wal_files for report in reports),
        objects_read=sum(report.objects_read for report in reports),
        bytes_read=sum(report.bytes_read for report in reports),
        super_blocks=sum(report.super_blocks for report in reports),
        notes=[note for report in reports for note in report.notes])


def _verify_era(archive: Archive, deep: bool, workers: int) -> VerifyReport:
    identity, findings = _identity(archive)
    if identity is not None and identity.eras:
        identity = identity.as_era(archive.era_record)  # its backups and WAL are its own cluster's
    being_removed = set(retention_state(archive).deleting)
    listed = backup_folders(archive)
    with ThreadPoolExecutor(_LISTING_THREADS, thread_name_prefix="verify") as pool, \
            Progress("verify: listing") as progress:
        folders = _check_backup_folders(archive, [b for b in listed if b not in being_removed], identity, pool,
                                        progress)
        for folder in folders:
            findings += folder.findings
        findings += _check_backup_catalog(archive, folders, being_removed)
        findings += _check_drill_reports(archive, pool)
        finished = sorted((folder.manifest for folder in folders if folder.manifest is not None),
                          key=lambda b: (b.start_time, b.backup_id))
        wal = None
        timelines: list[TimelineVerdict] = []
        if identity is not None:
            wal = _list_wal(archive, pool, progress)
            findings += _check_indexes(archive, wal, pool)
            timelines, gaps = _check_continuity(wal, finished)
            findings += gaps
        elif folders or _holds_wal(archive):
            findings.append(Finding(severity="error", key=IDENTITY_KEY,
                                    problem="missing: the archive holds backups or WAL, but not the document naming "
                                            "its cluster; nothing in it can be restored"))
        else:
            findings.append(Finding(severity="error", key=IDENTITY_KEY,
                                    problem="missing: there is no archive here (its storage is not mounted, or "
                                            "`pitrkit init` never created it)"))
    if not finished and (folders or timelines):
        findings.append(Finding(severity="warning", key=BACKUPS_PREFIX,
                                problem="no finished backup: nothing in the archive is restorable yet"))

    read = _Read([], 0, 0)
    if deep:
        contents = [_part_content(part, b.backup_id) for b in finished for part in b.parts]
        if wal is not None and identity is not None:
            contents += _wal_contents(wal, identity)
        read = _read_everything(archive, contents, [b for b in finished if b.block_maps or b.block_parts],
                                {finding.key for finding in findings}, workers)
        findings += read.findings

    verdicts, refusals = _verdicts(archive, wal, folders, findings, workers if deep else 0)
    findings += refusals
    findings.sort(key=lambda f: (f.severity != "error", f.key))
    return VerifyReport(
        archive=archive.storage.url,
        deep=deep,
        errors=sum(f.severity == "error" for f in findings),
        warnings=sum(f.severity == "warning" for f in findings),
        findings=findings,
        backups=verdicts,
        unfinished=[folder.backup_id for folder in folders if not folder.has_manifest],
        being_removed=sorted(being_removed.intersection(listed)),
        timelines=timelines,
        wal_files=0 if wal is None else len(wal.history_files) + sum(
            len(wal.folder(t, n).entries) for t, numbers in wal.logs.items() for n in numbers),
        objects_read=read.objects,
        bytes_read=read.stored_bytes,
        super_blocks=read.super_blocks,
        notes=read.notes,
    )


# --- the command ----------------------------------------------------------------------


def command_report(args: Namespace, config: Config, config_path: Path) -> VerifyReport | PerRepository[VerifyReport]:
    """`pitrkit verify [--deep] [--repo NAME]`: the report cli.py prints (views/ renders it);
    each repository with its own keys, one repository's report as before several existed
    (ops/per_repository). With several, each section also says what that repository misses
    of the reference's WAL and backups (the first required repository verified)."""
    workers = config.backup.workers or os.cpu_count() or 1
    repositories = chosen(open_all(config), args.repo)
    result = run_each("verify", repositories, config,
                      lambda repository, seen: verify(repository.archive, args.deep, workers))
    if isinstance(result, VerifyReport):
        return result
    return msgspec.structs.replace(result, repositories=_with_missing(result.repositories, repositories, config))


def _with_missing(sections: list[Section[VerifyReport]], repositories: list[Repository],
                  config: Config) -> list[Section[VerifyReport]]:
    """What each verified repository misses of the reference (ops/status.missing_from):
    listed, not a finding, since an optional repository catching up is expected to."""
    verified = {section.repository for section in sections if section.report is not None}
    reference = next((each for each in repositories if each.required and each.name in verified), None)
    if reference is None:
        return sections
    try:
        base = Held.read(reference.archive)
    except PitrkitError:
        return sections  # changed under us since its verify: its section says what verify saw
    compared = []
    for section, repository in zip(sections, repositories, strict=True):
        if section.report is not None and repository is not reference:
            try:
                held = Held.read(repository.archive)
            except PitrkitError:
                pass
            else:
                horizon = config.for_repository(repository.settings).retention is not None
                section = msgspec.structs.replace(section, missing=missing_from(base, held, reference.name, horizon))
        compared.append(section)
    return compared

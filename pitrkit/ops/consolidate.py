"""`pitrkit backup-consolidate BACKUP_ID`: a synthetic full backup of an incremental,
made from the archive alone, so that retention can then expire the chain under it.

The new backup is an ordinary format_version 2 full backup (no parent, its own stream
and a block map of every relation file), at the incremental's point: its start and stop
LSN, timeline, times, `backup_label`, tablespaces and configuration are the
incremental's, and `consolidated_from` names it. Its id is the incremental's with
`-full` appended (`-full2`, ... when taken): ids order the backups that start at one
instant, so it lists right after the incremental, and every backup taken later (whose
id is a later second) sorts after it, as a chain's ids must; a new id from this host's
clock could sort before a child the server's clock names.

What its files are is what a restore of the incremental writes (restore/chain.py's
plan, every super-block verified as it is read). Stored parts of the chain that hold
only files the incremental takes whole and unchanged from that backup, starting and
ending at file boundaries, are copied object for object (`Archive.copy`: server-side
where the storage offers it); a copy is taken only when the object's header names the
compressor and key this backup writes with, and the copy's header is read back. Every
other byte is streamed through this host, a part at a time, into new parts written by
backup-push's part store. The checksums of the streamed files are computed from the
bytes written, and must be the incremental's records (its maps are cumulative: they
hold every block's checksum), or nothing is registered.

The order of safety is backup-push's: a lease holds the chain while it is read, parts
and maps are stored, then the manifest (the commit marker, create-only), then the
catalog under its lock. Interrupted, it leaves a folder without a manifest, which no
reader uses and retention removes as unfinished.
"""

from __future__ import annotations

import bisect
import logging
import os
import secrets
import sys
from argparse import Namespace
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from pitrkit import __version__
from pitrkit.backup.incremental import store_block_maps
from pitrkit.backup.push import PART_SIZE, PartStore
from pitrkit.catalog import blockmap, checksums, lease, maintenance
from pitrkit.catalog.backups import claim, manifest_present, survey_backups
from pitrkit.catalog.blockmap import FileMap, Run
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    CHECKSUMMED_FORMAT_VERSION,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BlockFile,
)
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.hookspecs import Cipher, Compressor, ObjectExists, ObjectNotFound, ServerSideCopy
from pitrkit.progress import Progress, human_bytes
from pitrkit.restore import chain, chain_writes, unpack
from pitrkit.restore.chain import BlockRead, ChainPlan, StreamRead
from pitrkit.restore.engine import fetch_chain, fetch_manifest
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import Archive, backup_prefix, manifest_key
from pitrkit.storage.repositories import chosen, open_all

log = logging.getLogger(__name__)

# Decoded reads kept for the parts still to fill: past this, a read is dropped and read
# again when needed (the stream's order follows the chain's, so few span far).
_CACHE_BYTES = 4 * PART_SIZE
# Enough of a stored object to hold its frame and header (a header is ~200 bytes).
_HEADER_READ = 4096
_ID_SUFFIX = "-full"
_MOST_IDS = 9


class Consolidated(msgspec.Struct, kw_only=True, frozen=True):
    """What `backup-consolidate` made (printed with --json)."""

    backup_id: str
    consolidated_from: str
    chain: list[str]  # the incremental's ancestors, that retention may now expire
    parts_copied: int
    bytes_copied: int  # stored bytes of the copied objects
    server_side_copy: bool  # whether the storage copied them without this host
    bytes_streamed: int  # plaintext bytes of the files assembled here
    summary: BackupSummary


# --- which stored parts are reused --------------------------------------------------------


def reusable_runs(files: Sequence[BackupFile], parts: Sequence[BackupPart], whole: set[str],
                  copyable: Callable[[int], bool] = lambda _: True) -> list[range]:
    """Runs of consecutive parts (indices) of a backup's stream that a new backup can
    take object for object: each part holds only files in `whole` (paths the new backup
    has with exactly these bytes) and is `copyable`, and the run starts at a file's first
    byte and ends at a file's last, so that no file is cut by it."""
    slices = unpack.slices_by_part(list(files), list(parts))
    runs = []
    number = 0
    while number < len(parts):
        stretch = number
        while stretch < len(parts) and slices[stretch] and copyable(stretch) \
                and all(files[piece.file].path in whole for piece in slices[stretch]):
            stretch += 1
        # In the stretch number..stretch-1: from the first part that begins a file to
        # the last that ends one.
        starts = [n for n in range(number, stretch) if slices[n][0].file_offset == 0]
        if starts:
            ends = [n for n in range(starts[0], stretch)
                    if (last := slices[n][-1]).file_offset + last.length == files[last.file].size]
            if ends:
                runs.append(range(starts[0], ends[-1] + 1))
        number = stretch + 1
    return runs


def unchanged_files(plan: ChainPlan, source: int) -> set[str]:
    """The paths of backup `source`'s stream files that the plan takes whole from that
    stream, every byte at its own offset: the target's file is that file."""
    manifest = plan.manifests[source]
    by_key = {part.key: number for number, part in enumerate(manifest.parts)}
    # Where each of the source's files lies in its parts: per part, its slices.
    lying = unpack.slices_by_part(manifest.files, manifest.parts)
    covered: dict[int, int] = {}  # target file -> bytes found at their own offset
    spoilt: set[int] = set()
    for read in plan.stream_reads:
        if read.source != source:
            continue
        held = lying[by_key[read.part.key]]
        offsets = [each.part_offset for each in held]
        for piece in read.slices:
            at = bisect.bisect_right(offsets, piece.part_offset) - 1
            own = held[at] if at >= 0 and piece.part_offset + piece.length <= held[at].part_offset + held[at].length \
                else None
            target = plan.files[piece.file]
            if own is None or manifest.files[own.file].path != target.path \
                    or own.file_offset + piece.part_offset - own.part_offset != piece.file_offset:
                spoilt.add(piece.file)
            else:
                covered[piece.file] = covered.get(piece.file, 0) + piece.length
    for block_read in plan.block_reads:
        for _, block_slices in block_read.blocks:
            spoilt.update(piece.file for piece in block_slices)
    sizes = {file.path: (file.size, file.checksum) for file in manifest.files}
    return {plan.files[number].path for number, count in covered.items()
            if number not in spoilt and count == plan.files[number].size
            and sizes.get(plan.files[number].path) == (plan.files[number].size, plan.files[number].checksum)}


def _copyable(archive: Archive, part: BackupPart, compression: str, cipher: Cipher | None) -> bool:
    """Whether the stored part can be copied into the new backup as it is: the object
    the manifest records, compressed and encrypted as the new backup writes (an object
    under a retired key would tie the new backup to it)."""
    try:
        header, _ = objects.read_header(part.key, archive.get_range(part.key, 0, _HEADER_READ))
    except (objects.CorruptObject, ObjectNotFound):
        return False
    return (header.size == part.size and header.digest == part.digest and header.compression == compression
            and header.key_id == (None if cipher is None else cipher.key_id))


# --- the stream of the files not copied ---------------------------------------------------


class _Piece(NamedTuple):
    start: int  # in the new stream
    length: int
    read: int  # index in the reads
    block: int  # the super-block's index in a block read (-1: a stream part)
    offset: int  # in the part's or super-block's plaintext


class _Streamer:
    """Fills the new parts with the files' bytes, in stream order, from the chain's reads:
    each read fetched (and verified) when a part needs it, kept while later parts do."""

    def __init__(self, archive: Archive, reads: list[StreamRead | BlockRead], pieces: list[_Piece], total: int,
                 workers: int) -> None:
        self.archive = archive
        self.reads = reads
        self.pieces = sorted(pieces)
        self.workers = workers
        # The pieces must tile the stream: each byte written once (the plan writes each
        # block once; a gap or an overlap here would be a plan the restore refuses too).
        position = 0
        for piece in self.pieces:
            if piece.start != position:
                raise RefusedError(f"the chain's plan does not cover the consolidated stream at byte {position}")
            position += piece.length
        if position != total:
            raise RefusedError(f"the chain's plan covers {position} bytes of the {total} to consolidate")
        self.last_use: dict[int, int] = {}
        for piece in self.pieces:
            self.last_use[piece.read] = max(self.last_use.get(piece.read, 0), piece.start + piece.length)
        self.cache: dict[int, list[memoryview]] = {}
        self.next = 0

    def fill(self, view: memoryview, start: int) -> None:
        """The stream's bytes from `start` into `view` (the parts are filled in order).
        Reads are fetched `workers` at a time, and only those later parts need again
        are kept, within `_CACHE_BYTES`: memory holds a batch and the cache."""
        end = start + len(view)
        by_read: dict[int, list[_Piece]] = defaultdict(list)
        index = self.next
        while index < len(self.pieces) and self.pieces[index].start < end:
            by_read[self.pieces[index].read].append(self.pieces[index])
            index += 1
        for number in [number for number in by_read if number in self.cache]:
            self._write(view, start, self.cache[number], by_read.pop(number))
        missing = sorted(by_read)
        batch = max(1, self.workers)
        with ThreadPoolExecutor(batch, thread_name_prefix="consolidate-read") as pool:
            for first in range(0, len(missing), batch):
                numbers = missing[first:first + batch]
                for number, loaded in zip(numbers, pool.map(self._load, numbers), strict=True):
                    self._write(view, start, loaded, by_read[number])
                    if self.last_use[number] > end and self._cached() + sum(map(len, loaded)) <= _CACHE_BYTES:
                        self.cache[number] = loaded
        # A piece running on past this part stays next: the following part starts with its rest.
        while self.next < len(self.pieces) and self.pieces[self.next].start + self.pieces[self.next].length <= end:
            self.next += 1
        for number in [number for number in self.cache if self.last_use[number] <= end]:
            del self.cache[number]

    def _cached(self) -> int:
        return sum(len(block) for data in self.cache.values() for block in data)

    def _write(self, view: memoryview, start: int, loaded: list[memoryview], pieces: list[_Piece]) -> None:
        end = start + len(view)
        for piece in pieces:
            data = loaded[max(piece.block, 0)]
            low, high = max(piece.start, start), min(piece.start + piece.length, end)
            within = piece.offset + low - piece.start
            if within + high - low > len(data):
                read = self.reads[piece.read]
                key = read.part.key if isinstance(read, StreamRead) else read.key
                raise RefusedError(f"{key} holds fewer bytes than the chain's plan takes from it")
            view[low - start:high - start] = data[within:within + high - low]

    def _load(self, number: int) -> list[memoryview]:
        read = self.reads[number]
        if isinstance(read, StreamRead):
            return [memoryview(unpack.read_part(self.archive, read.part))]
        return [pages for pages, _ in chain_writes.super_blocks(self.archive, read)]


class _Hasher:
    """The checksum of one streamed file as a backup-push would record it: of its block
    checksums when it has a map, else of its bytes."""

    def __init__(self, mapped: bool) -> None:
        self.pages = checksums.PageHasher() if mapped else None
        self.whole = None if mapped else checksums.file_hasher()

    def update(self, data: memoryview) -> None:
        if self.pages is not None:
            self.pages.update(data)
        else:
            assert self.whole is not None
            self.whole.update(data)

    def result(self) -> tuple[bytes, bytes | None]:
        """(the file's checksum, its packed block checksums or None)."""
        if self.pages is not None:
            packed = checksums.packed(self.pages.checksums)
            return checksums.of_blocks(packed), packed if self.pages.whole_pages else None
        assert self.whole is not None
        return self.whole.digest(), None


# --- the command --------------------------------------------------------------------------


def _new_id(archive: Archive, backup_id: str) -> str:
    """The first free id of the consolidated backup, claimed (catalog/backups.py,
    `claim`) before anything is stored: two runs consolidating one incremental at once
    take two ids."""
    token = secrets.token_hex(8)
    now = datetime.now(UTC)
    for number in range(1, _MOST_IDS + 1):
        candidate = f"{backup_id}{_ID_SUFFIX}{number if number > 1 else ''}"
        taken = archive.list_folder(backup_prefix(candidate))
        if not taken.objects and not taken.folders and claim(archive, candidate, token, now):
            return candidate
    raise RefusedError(f"backup {backup_id} was consolidated {_MOST_IDS} times already (or as many attempts were "
                       f"interrupted): remove what backup-list shows of them first")


def _target(archive: Archive, backup_id: str) -> BackupSummary:
    finished = survey_backups(archive).finished
    found = next((backup for backup in finished if backup.backup_id == backup_id), None)
    if found is None:
        raise RefusedError(f"there is no backup {backup_id} in the archive {archive.storage.url}")
    if found.parent is None:
        raise RefusedError(f"backup {backup_id} is a full backup: there is nothing to consolidate")
    if found.format_version < CHECKSUMMED_FORMAT_VERSION:
        raise RefusedError(f"backup {backup_id} has format_version {found.format_version}, without checksums")
    if broken := check_chains(finished).broken_by_id().get(backup_id):
        raise RefusedError(f"backup {backup_id} cannot be consolidated: its chain is broken: {broken.problem}")
    return found


def _manifests(archive: Archive, summary: BackupSummary) -> list[BackupManifest]:
    manifest = fetch_manifest(archive, summary)
    return [*fetch_chain(archive, manifest), manifest]


def consolidate(archive: Archive, config: Config, backup_id: str) -> Consolidated:
    """Make and register the synthetic full backup of the incremental `backup_id`."""
    summary = _target(archive, backup_id)
    compression = config.compression
    compressor = archive.plugins.compressor(compression.algorithm, compression.level, threads=1)
    cipher = archive.write_cipher()
    workers = config.backup.workers or len(os.sched_getaffinity(0))
    # Retention keeps the chain while it is read; once the new backup is registered,
    # the chain is free to go.
    with lease.holding(archive, summary, "backup-consolidate"):
        plan = chain.plan_chain(archive, _manifests(archive, summary), workers)
        new_id = _new_id(archive, backup_id)
        log.info("consolidating backup %s into %s: %s", backup_id, new_id, plan.describe())
        return _write(archive, plan, new_id, compressor, cipher, workers)


def _write(archive: Archive, plan: ChainPlan, new_id: str, compressor: Compressor, cipher: Cipher | None,
           workers: int) -> Consolidated:
    target = plan.target
    prefix = backup_prefix(new_id) + "data/"
    files: list[BackupFile] = []
    parts: list[BackupPart] = []
    copies: list[tuple[BackupPart, BackupPart]] = []  # (source, new)
    copied: set[str] = set()
    # The runs of stored parts to copy, per backup of the chain (its own stream too).
    for source, manifest in enumerate(plan.manifests):
        whole = unchanged_files(plan, source)
        if not whole:
            continue
        # Each candidate part's header read (a small ranged read), then the runs again
        # without the parts that cannot be copied as they are.
        candidates = [number for run in reusable_runs(manifest.files, manifest.parts, whole) for number in run]
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="consolidate-headers") as pool:
            fit = pool.map(_copyable, [archive] * len(candidates), [manifest.parts[n] for n in candidates],
                           [compressor.name] * len(candidates), [cipher] * len(candidates))
            copyable = {number for number, ok in zip(candidates, fit, strict=True) if ok}
        lying = unpack.slices_by_part(manifest.files, manifest.parts)
        for run in reusable_runs(manifest.files, manifest.parts, whole, copyable.__contains__):
            first = len(parts)
            for number in run:
                part = manifest.parts[number]
                new = msgspec.structs.replace(part, key=f"{prefix}{len(parts):08d}")
                copies.append((part, new))
                parts.append(new)
            seen: set[int] = set()
            for number in run:
                for piece in lying[number]:
                    if piece.file in seen:
                        continue
                    seen.add(piece.file)
                    file = manifest.files[piece.file]
                    files.append(msgspec.structs.replace(file, part=first + number - run.start,
                                                         offset=piece.part_offset))
                    copied.add(file.path)
    # The target's own records (mode, mtime) of the copied files.
    records = {file.path: file for file in plan.files}
    files = [_record(records[file.path], file.part, file.offset) for file in files]
    _copy(archive, copies, workers)

    # Everything else, streamed: the target's files in its order, each at its offset.
    streamed = [number for number, file in enumerate(plan.files) if file.path not in copied]
    where: dict[int, int] = {}
    position = 0
    for number in streamed:
        where[number] = position
        position += plan.files[number].size
    total = position
    reads: list[StreamRead | BlockRead] = [*plan.stream_reads, *plan.block_reads]
    pieces = []
    for index, read in enumerate(reads):
        blocks = [(-1, read.slices)] if isinstance(read, StreamRead) else \
            [(number, slices) for number, (_, slices) in enumerate(read.blocks)]
        for block, slices in blocks:
            pieces += [_Piece(where[piece.file] + piece.file_offset, piece.length, index, block, piece.part_offset)
                       for piece in slices if piece.file in where]
    streamer = _Streamer(archive, reads, pieces, total, workers)
    store = PartStore(archive, new_id, compressor, cipher, workers)
    sums: dict[str, tuple[bytes, bytes | None]] = {}
    first_number = len(parts)
    try:
        cursor = 0  # the next streamed file to hash
        hasher = _Hasher(plan.files[streamed[0]].path in plan.block_checksums) if streamed else None
        with Progress(f"consolidating into {new_id}", total) as progress:
            for number, start in enumerate(range(0, total, PART_SIZE)):
                buffer = store.buffer()
                length = min(PART_SIZE, total - start)
                view = memoryview(buffer)[:length]
                streamer.fill(view, start)
                cursor, hasher = _hash(plan, streamed, where, cursor, hasher, view, start, sums)
                store.submit(first_number + number, buffer, length)
                progress.advance(length)
        _hash(plan, streamed, where, cursor, hasher, memoryview(b""), total, sums)
        stream_parts = store.finish()
    except BaseException:
        store.abandon()
        raise
    parts += stream_parts
    for number in streamed:
        written = plan.files[number]
        at_part, at_offset = divmod(where[number], PART_SIZE)
        files.append(_record(written, first_number + at_part, at_offset))
        checksum, packed = sums[written.path]
        expected = plan.block_checksums.get(written.path)
        if checksum != written.checksum or (expected is not None and packed != expected):
            raise RefusedError(f"the consolidated {written.path} is not what backup {target.backup_id} records "
                               f"(checksum {checksum.hex()}, recorded {written.checksum.hex()}): "
                               f"nothing was registered; {backup_prefix(new_id)} stays without a manifest until "
                               "retention removes it")
    # Every relation file's map: one run of its own blocks, the target's checksums.
    maps = [FileMap(file.path, file.size // BLOCK_SIZE, 1,
                    blockmap.pack_runs([Run(0, file.size // BLOCK_SIZE, 0, 0)] if file.size else []), b"",
                    plan.block_checksums[file.path])
            for file in files if file.path in plan.block_checksums]
    block_maps, _ = store_block_maps(archive, new_id, maps, compressor, cipher)
    summary = msgspec.structs.replace(
        target.summary(), backup_id=new_id, size=sum(file.size for file in files),
        stored_size=sum(part.stored_size for part in [*parts, *block_maps]), file_count=len(files),
        compression=compressor.name, pitrkit_version=__version__, parent=None, chain=[], changed_blocks=None,
        consolidated_from=target.backup_id)
    manifest = BackupManifest(**msgspec.structs.asdict(summary), backup_label=target.backup_label,
                              tablespace_map=target.tablespace_map, parts=parts, directories=target.directories,
                              files=files, block_maps=block_maps)
    unpack.check_manifest(manifest)
    unpack.slices_by_part(manifest.files, manifest.parts)  # they tile the parts, as every reader checks
    try:
        archive.put_document(manifest_key(new_id), manifest, pretty=False)
    except ObjectExists:
        raise RefusedError(f"{manifest_key(new_id)} already exists: is another backup-consolidate making it?") from None
    log.info("backup %s committed: %s", new_id, manifest_key(new_id))
    try:
        maintenance.record_backup(archive, summary, "backup-consolidate")
    except PitrkitError as exc:
        log.warning("backup %s is stored, but updating the catalog failed (%s); readers find the backup from its "
                    "manifest, and 'pitrkit catalog rebuild' rewrites the catalog", new_id, exc)
    return Consolidated(backup_id=new_id, consolidated_from=target.backup_id, chain=target.chain,
                        parts_copied=len(copies), bytes_copied=sum(new.stored_size for _, new in copies),
                        server_side_copy=isinstance(archive.storage, ServerSideCopy), bytes_streamed=total,
                        summary=summary)


def _record(file: BackupFile | BlockFile, part: int, offset: int) -> BackupFile:
    return BackupFile(file.path, file.size, file.mode, file.mtime, part, offset, file.checksum)


def _hash(plan: ChainPlan, streamed: list[int], where: dict[int, int], cursor: int, hasher: _Hasher | None,
          view: memoryview, start: int, sums: dict[str, tuple[bytes, bytes | None]]) -> tuple[int, _Hasher | None]:
    """Feed the part's bytes (`view`, from stream offset `start`) to the files' hashers
    in order; a file ending in it gets its checksum in `sums`. Returns where it stopped."""
    end = start + len(view)
    while cursor < len(streamed) and hasher is not None:
        number = streamed[cursor]
        low, high = where[number], where[number] + plan.files[number].size
        if high > end:
            hasher.update(view[max(low, start) - start:])
            return cursor, hasher
        hasher.update(view[max(low, start) - start:high - start])
        sums[plan.files[number].path] = hasher.result()
        cursor += 1
        hasher = _Hasher(plan.files[streamed[cursor]].path in plan.block_checksums) if cursor < len(streamed) else None
    return cursor, hasher


def _copy(archive: Archive, copies: list[tuple[BackupPart, BackupPart]], workers: int) -> None:
    """Copy the parts, then read each copy's header back: it must be the source's."""
    def copy(pair: tuple[BackupPart, BackupPart]) -> None:
        source, new = pair
        try:
            archive.copy(source.key, new.key)
        except ObjectNotFound:
            raise RefusedError(f"backup part {source.key} is missing from the archive") from None
        except ObjectExists:
            raise RefusedError(f"{new.key} already exists: is another backup-consolidate making it?") from None
        header, _ = objects.read_header(new.key, archive.get_range(new.key, 0, _HEADER_READ))
        if header.size != source.size or header.digest != source.digest:
            raise RefusedError(f"the copy {new.key} of {source.key} is not that object")

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="consolidate-copy") as pool:
        for _ in pool.map(copy, copies):
            pass


def command(args: Namespace, config: Config, config_path: Path) -> str:
    # In each repository holding the backup (or --repo's): each makes its own full
    # backup from what it holds, so that each one's retention may expire the chain.
    repositories = chosen(open_all(config), args.repo)
    holding = [each for each in repositories
               if len(repositories) == 1 or manifest_present(each.archive, args.backup_id)]
    if not holding:
        raise RefusedError(f"backup {args.backup_id}: no configured repository holds it")
    said = [_consolidated(args, config.for_repository(each.settings), each.archive,
                          "" if len(repositories) == 1 else f"repository {each.name!r}: ") for each in holding]
    return "; ".join(said)


def _consolidated(args: Namespace, config: Config, archive: Archive, where: str) -> str:
    made = consolidate(archive, config, args.backup_id)
    copied = "server-side" if made.server_side_copy else "through this host (the storage has no server-side copy)"
    said = (f"{where}backup {made.backup_id}: a full backup of {made.consolidated_from}'s point, made from the "
            "archive; "
            f"{made.parts_copied} parts ({human_bytes(made.bytes_copied)}) copied {copied}, "
            f"{human_bytes(made.bytes_streamed)} streamed through this host; {human_bytes(made.summary.stored_size)} "
            f"stored; its chain ({', '.join(made.chain)}) may now be expired by retention")
    if args.json:
        sys.stdout.write(codec.encode(made).decode())
    else:
        print(made.backup_id)
        print(f"pitrkit: {said}", file=sys.stderr)
    return said

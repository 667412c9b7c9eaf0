"""`backup-push --incremental`: the parent, what of each file is stored, and the store
of changed blocks.

The parent is the newest backup on this server's timeline path (or the one `--from`
names) whose chain is whole. Against it every file of the walk is either copied whole
into the backup's stream, as a full backup copies it, or block-mapped: only the blocks
changed since the parent's start are stored, as super-blocks, and the file's block map
says for every other block which backup of the chain holds it (catalog/blockmap.py).

Whole, following PostgreSQL's own rules for its incremental backups: every file that is
not a relation file, FSM forks (never WAL-summarized: their changes are not logged
block by block), files the parent does not have, files of a database created since the
parent, lengths that are not whole blocks, and files with most of their blocks changed
(at that point a block map saves nothing and costs a map). And one rule of pitrkit's: a
file whose map would make a restore decode more than 1.25 times its size, where the
pages it keeps from older backups lie scattered in their super-blocks or stream parts
(backup/restore_cost.py): copied whole, it is restored from this backup alone. Without
summaries the changes are known only once read, so the rule looks at the parent's map.

Which blocks changed comes from PostgreSQL 17+'s WAL summaries between the two start
LSNs when they cover the whole range (only those blocks are read); otherwise every
block-mapped file is read and the pages whose LSN is at or after the parent's start are
kept (backup/page_scan.py). Either way, a block at or past the parent's length, or past
a relation's limit block (created or truncated in the range), is always stored: it can
never come from the parent.

Why a page that is not stored may come from the parent: it was not modified since the
parent's start, so the parent's copy of it, taken after that start, is the page as it
stands at this backup's start; replay from this backup's start redoes anything later.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from queue import SimpleQueue
from typing import NamedTuple, Protocol, TypeVar

from pitrkit.backup.changes import RelationFork, Summarized, relation_of
from pitrkit.backup.page_scan import changed_pages
from pitrkit.backup.restore_cost import DECODE_BOUND, decoded_pages
from pitrkit.catalog import blockmap, checksums
from pitrkit.catalog.archived_wal import ArchivedWal, on_path
from pitrkit.catalog.backups import survey_backups
from pitrkit.catalog.blockmap import FileMap, SuperBlock, recorded_digest
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    BLOCKS_PER_SEGMENT,
    CHECKSUMMED_FORMAT_VERSION,
    MAX_CHAIN,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BlockFile,
    BlockPart,
)
from pitrkit.errors import ParentRefused, PitrkitError, RefusedError
from pitrkit.hookspecs import Cipher, Compressor, ObjectExists, ObjectNotFound
from pitrkit.postgres.wal import Lsn
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive, backup_prefix, manifest_key

log = logging.getLogger(__name__)

_FSM_FORK = 1
_VM_FORK = 2
# A file with at least this share of its blocks changed is copied whole (PostgreSQL's
# pg_basebackup uses the same 90 %).
_WHOLE_SHARE = 0.9
# Super-block objects are cut at about this many stored bytes (as backup parts are).
_BLOCK_PART_SIZE = 32 << 20
# Plaintext bytes of block maps per map object: a restore reads and decodes one whole.
_MAP_OBJECT_SIZE = 16 << 20


# --- the parent ------------------------------------------------------------------------


def choose_parent(archive: Archive, system_identifier: int, major: int, timeline: int,
                  requested: str | None) -> BackupSummary:
    """The backup an incremental is taken against: `requested`, or the newest on this
    timeline's path. Refused: another cluster or major (the first backup after an
    upgrade is full), off the path, a chain already at its longest or not whole."""
    finished = survey_backups(archive).finished
    present = {backup.backup_id for backup in finished}
    path = ArchivedWal(archive).path(timeline)

    def why_not(backup: BackupSummary) -> str | None:
        if backup.system_identifier != system_identifier:
            return f"it is of the cluster with system identifier {backup.system_identifier}, not {system_identifier}"
        if backup.pg_major != major:
            return (f"it is of PostgreSQL {backup.pg_major} and the server runs {major} (the first backup after "
                    "an upgrade is a full one)")
        if not on_path(path, backup):
            return f"it is not on timeline {timeline}'s path (its own timeline is {backup.timeline})"
        if missing := [ancestor for ancestor in backup.chain if ancestor not in present]:
            return f"its chain is broken: {missing[0]} is not in the archive"
        if len(backup.chain) >= MAX_CHAIN:
            return f"its chain already has {len(backup.chain) + 1} backups, the most one may have"
        return None

    if requested is not None:
        chosen = next((backup for backup in finished if backup.backup_id == requested), None)
        if chosen is None:
            raise ParentRefused(f"--from {requested}: there is no such backup in the archive {archive.storage.url}")
        if why := why_not(chosen):
            raise ParentRefused(f"--from {requested}: cannot take an incremental backup on it: {why}")
        return chosen
    reasons = []
    # Newest first; at one start, the shortest chain first (the full backup-consolidate
    # made of an incremental, which its next incremental builds on).
    for backup in sorted(finished, key=lambda each: (each.start_time, -len(each.chain)), reverse=True):
        if (why := why_not(backup)) is None:
            return backup
        reasons.append(f"{backup.backup_id}: {why}")
    said = f" ({'; '.join(reasons[:3])})" if reasons else ""
    raise ParentRefused(f"no backup in the archive can be the parent of an incremental backup{said}: "
                       "take a full backup first (backup-push without --incremental)")


def check_start(parent: BackupSummary, start: Lsn) -> None:
    """Refused (ParentRefused) when this backup starts before its parent ends, as
    PostgreSQL refuses its own incremental backups: a block the parent copied after its
    start is consistent only once WAL is replayed through the parent's stop, which a
    backup that starts earlier may end before. A backup of a primary starts with a
    checkpoint after every earlier backup's end; one of a standby starts at the last
    checkpoint of the primary the standby replayed, which may be older (backup/standby.py)."""
    if start < parent.stop_lsn:
        raise ParentRefused(f"this backup starts at {start}, before its parent {parent.backup_id} ends "
                            f"({parent.stop_lsn}): a standby's backup starts at the primary's last checkpoint it "
                            "replayed; take a full backup, or an incremental after the primary's next checkpoint")


class Base(NamedTuple):
    """The parent's copy of a file: its length in blocks, where each block is (its map's
    runs: source and position in the child's numbering) and each block's checksum (8
    bytes per block, as a map packs them)."""

    blocks: int
    runs: bytes  # packed, as in the parent's map
    checksums: bytes


class Parent(NamedTuple):
    """The parent's manifest and what a child needs of it, by path."""

    manifest: BackupManifest
    stream: dict[str, BackupFile]  # files in its stream, whole
    maps: dict[str, FileMap]  # its relation files, block-mapped or in its stream

    @property
    def source(self) -> int:
        """The parent's index in the child's sources (its chain, then itself)."""
        return len(self.manifest.chain)

    def blocks_of(self, path: str) -> Base | None:
        """The parent's copy of the file per block; None if the parent cannot serve as
        the file's base (it has no map of it: not a relation file it has whole blocks of).
        A map of a file in the parent's stream says: all blocks the parent's, position =
        block number."""
        if (mapped := self.maps.get(path)) is None:
            return None
        return Base(mapped.blocks, mapped.runs, mapped.checksums)


def load_parent(archive: Archive, summary: BackupSummary) -> Parent:
    """The parent's manifest and block maps, read and checked; refused (ParentRefused:
    nothing stored yet, so the daemon takes a full backup instead) when they are gone,
    unreadable or do not hold together, or when the parent has no block checksums to carry on."""
    if summary.format_version < CHECKSUMMED_FORMAT_VERSION:
        raise ParentRefused(f"backup {summary.backup_id} was taken by an older pitrkit without block checksums: "
                            "take a full backup first")
    try:
        return _load_parent(archive, summary)
    except ParentRefused:
        raise
    except RefusedError as exc:
        raise ParentRefused(f"the parent backup {summary.backup_id} cannot be used: {exc}") from None


def _load_parent(archive: Archive, summary: BackupSummary) -> Parent:
    try:
        manifest = archive.get_document(manifest_key(summary.backup_id), BackupManifest)
    except ObjectNotFound:
        raise ParentRefused(f"the parent backup {summary.backup_id} has no manifest any more "
                            "(removed meanwhile?)") from None
    except ValueError as exc:
        # Authentic but not a manifest: the catalog's entry still vouches for the backup,
        # so without this refusal the daemon would ask for this parent at every slot.
        raise RefusedError(str(exc)) from None
    if manifest.chain != summary.chain:
        raise RefusedError(f"backup {summary.backup_id}'s manifest and catalog entry name different chains")
    maps: dict[str, FileMap] = {}
    for part in manifest.block_maps:
        for file_map in blockmap.read_block_map(archive, part):
            if file_map.path in maps:
                raise RefusedError(f"backup {summary.backup_id}'s block maps map {file_map.path} twice")
            maps[file_map.path] = file_map
    if missing := [file.path for file in manifest.block_files if file.path not in maps]:
        raise RefusedError(f"backup {summary.backup_id}'s block maps lack {missing[0]}")
    stream = {file.path: file for file in manifest.files}
    sizes = stream | {file.path: file for file in manifest.block_files}
    for path, file_map in maps.items():
        if path not in sizes or sizes[path].size != file_map.blocks * BLOCK_SIZE \
                or file_map.sources != len(manifest.chain) + 1:
            raise RefusedError(f"backup {summary.backup_id}'s block map of {path} does not match its manifest")
    return Parent(manifest, stream, maps)


def summary_path(archive: Archive, parent: BackupSummary, timeline: int, start: Lsn) -> list[tuple[int, Lsn, Lsn]]:
    """The WAL between the parent's start and this backup's, as (timeline, begin, end)
    steps: what the summaries must cover."""
    if parent.timeline == timeline:
        return [(timeline, parent.start_lsn, start)]
    steps = []
    for step in ArchivedWal(archive).path(timeline):
        begin = max(step.begin, parent.start_lsn)
        end = start if step.end is None else min(step.end, start)
        if begin < end:
            steps.append((step.timeline, Lsn(begin), Lsn(end)))
    return steps


# --- what of each file ----------------------------------------------------------------------


class Changes(NamedTuple):
    """How changed blocks are known: from summaries, or (None) by reading the pages."""

    summarized: Summarized | None
    since: Lsn  # the parent's start: a page with an LSN at or past it changed
    checksums: bool  # data_checksums: verify the pages a scan would not store


class BlockPlan(NamedTuple):
    path: str
    base: Base
    changed: list[int] | None  # block numbers from the summaries, ascending, each once (None: scan the file)
    limit: int | None  # blocks from here on are stored whatever the summaries say
    segment: int


def databases_made_since(pgdata: str, paths: list[str], parent: Parent) -> set[int]:
    """The databases whose directory is not the one the parent saw: a PG_VERSION the
    parent lacks or recorded with another size or mtime (CREATE DATABASE writes one).

    The summaries name the databases created in their range; this covers the page-LSN
    scan too, where nothing else would: STRATEGY FILE_COPY copies the template's files,
    page LSNs and all, without logging a page, and once the OID counter has wrapped a
    re-created database can have a dropped one's OID and relation file names."""
    made = set()
    for path in paths:
        head, name = os.path.split(path)
        database = os.path.basename(head)
        if name != "PG_VERSION" or not database.isdigit():
            continue
        seen = parent.stream.get(path)
        try:
            status = os.stat(os.path.join(pgdata, path))
        except FileNotFoundError:
            continue  # dropped meanwhile: its files are gone too, or replay drops them
        if seen is None or (seen.size, seen.mtime) != (status.st_size, int(status.st_mtime)):
            made.add(int(database))
    return made


class _Listed(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def size(self) -> int: ...


Listed = TypeVar("Listed", bound=_Listed)


def plan_files(pgdata: str, files: list[Listed], parent: Parent, changes: Changes
               ) -> tuple[list[Listed], list[BlockPlan]]:
    """The files of the walk (backup/push.py's) to copy whole, and the block plans of the rest."""
    made_since = databases_made_since(pgdata, [file.path for file in files], parent)
    whole, plans = [], []
    for file in files:
        if (plan := plan_file(file.path, file.size, parent, changes, made_since)) is None:
            whole.append(file)
        else:
            plans.append(plan)
    return whole, plans


def plan_file(path: str, size: int, parent: Parent, changes: Changes, made_since: set[int]) -> BlockPlan | None:
    """The block plan of a file, or None to copy it whole. `made_since`: the databases
    databases_made_since found."""
    relation = relation_of(path)
    if relation is None:
        return None
    fork, segment = relation
    if fork.fork == _FSM_FORK or size % BLOCK_SIZE or fork.database in made_since:
        return None
    if fork.fork == _VM_FORK and changes.summarized is None:
        # A visibility map page's LSN does not move when a heap change clears its bits
        # (visibilitymap_clear logs nothing of its own), so a page scan would keep the
        # parent's stale page: index-only scans would then see dead rows. The summarizer
        # does mark those pages; without it the fork (a page per 1 GiB of heap) goes whole.
        return None
    base = parent.blocks_of(path)
    if base is None:
        return None
    if changes.summarized is None:
        # The changes are known only once the pages are read: the bound is kept on what
        # the parent's map already costs, one backup late.
        if decoded_pages(base.runs, min(base.blocks, size // BLOCK_SIZE), [], 0) > DECODE_BOUND * base.blocks:
            return None
        return BlockPlan(path, base, None, None, segment)
    summarized = changes.summarized
    if (fork.tablespace, fork.database) in summarized.new_databases:
        return None
    first = segment * BLOCKS_PER_SEGMENT
    blocks = size // BLOCK_SIZE
    forked = summarized.forks.get(RelationFork(*fork))
    changed: list[int] = []
    limit: int | None = None
    if forked is not None:
        changed = [block - first for block in forked.between(first, first + blocks)]
        if forked.limit is not None:
            if forked.limit <= first:
                return None  # truncated to before this file: nothing of the parent's is good
            limit = forked.limit - first
    # The changed blocks (ascending, each once) and every block from where the parent's
    # copy ends or the limit is: what copy_block_file would store.
    fresh = min(limit if limit is not None else blocks, base.blocks)
    stored = bisect.bisect_left(changed, fresh) + max(0, blocks - fresh)
    if blocks and stored >= _WHOLE_SHARE * blocks:
        return None
    if decoded_pages(base.runs, min(fresh, blocks), changed, stored) > DECODE_BOUND * blocks:
        return None
    return BlockPlan(path, base, changed, limit, segment)


# --- the super-block store --------------------------------------------------------------------


class SuperBlockStore:
    """Compresses (and encrypts) super-blocks on `workers` threads and lays them back to
    back in objects `backups/<id>/blocks/<n>` of about 32 MiB. At most a few super-blocks
    per worker wait in memory."""

    def __init__(self, archive: Archive, backup_id: str, compressor: Compressor, cipher: Cipher | None,
                 workers: int) -> None:
        self._archive = archive
        self._prefix = backup_prefix(backup_id) + "blocks/"
        self._compressor = compressor
        self._cipher = cipher
        # XXH3-128 where nothing is authenticated, as for stream parts (docs/archive-format.md,
        # "The digest of a super-block"): SHA-256 cost an incremental more CPU than zstd.
        self._digest = objects.SHA256 if cipher is not None else objects.XXH3_128
        self._room = threading.Semaphore(4 * workers)
        self._lock = threading.Lock()
        self._current = bytearray()
        self._number = 0
        self._parts: list[BlockPart] = []
        self._failure: BaseException | None = None
        self._pool = _Pool(workers)

    def submit(self, data: memoryview, first: int, pages: int, done: Callable[[SuperBlock], None]) -> None:
        """Store the pages; `done` gets where they went (called on a worker thread).
        `data` is a view of the batch they were read into, never written again."""
        self._room.acquire()
        if self._failure is not None:
            raise self._failure
        self._pool.run(lambda: self._store(data, first, pages, done))

    def _store(self, data: memoryview, first: int, pages: int, done: Callable[[SuperBlock], None]) -> None:
        try:
            if self._failure is not None:
                return
            # The view, not a bytes copy: zstd and the digests read any buffer (as PartStore's).
            blob, header = objects.encode(data, self._compressor, self._cipher,  # type: ignore[arg-type]
                                          digest=self._digest)
            full = None
            with self._lock:
                block = SuperBlock(self._number, len(self._current), len(blob), first, pages, recorded_digest(header))
                self._current += blob
                if len(self._current) >= _BLOCK_PART_SIZE:
                    full, number = bytes(self._current), self._number
                    self._current = bytearray()
                    self._number += 1
            done(block)
            if full is not None:
                self._put(number, full)
        except BaseException as exc:  # raised on the reader's thread by submit or finish
            self._failure = self._failure or exc
        finally:
            self._room.release()

    def _put(self, number: int, blob: bytes) -> None:
        key = f"{self._prefix}{number:08d}"
        try:
            self._archive.put(key, blob)
        except ObjectExists:
            raise RefusedError(f"{key} already exists: is another backup-push storing the same backup?") from None
        with self._lock:
            self._parts.append(BlockPart(key=key, stored_size=len(blob)))

    def finish(self) -> list[BlockPart]:
        self._pool.join()
        if self._failure is not None:
            raise self._failure
        if self._current:
            self._put(self._number, bytes(self._current))
        return sorted(self._parts, key=lambda part: part.key)

    def abandon(self) -> None:
        self._failure = self._failure or PitrkitError("abandoned")
        self._pool.join()


class _Pool:
    """Daemon worker threads: an interrupted backup-push exits without waiting for them."""

    def __init__(self, workers: int) -> None:
        self._queue: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"backup-blocks-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def run(self, task: Callable[[], None]) -> None:
        self._queue.put(task)

    def _serve(self) -> None:
        while (task := self._queue.get()) is not None:
            task()

    def join(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


# --- copying a block-mapped file --------------------------------------------------------------


class CopiedFile(NamedTuple):
    record: BlockFile  # block_map is filled in when the maps are stored
    runs: bytes  # the file's packed runs; its FileMap is made once the super-blocks are known
    sources: int  # the chain's length plus one
    checksums: bytes  # every block's, packed: its stored pages', the parent's for the others
    super_blocks: list[SuperBlock]  # appended to by the store's threads


def copy_block_files(pgdata: str, plans: list[BlockPlan], changes: Changes, store: SuperBlockStore, own: int,
                     advance: Callable[[int], None]) -> list[CopiedFile]:
    """Store the changed blocks of every planned file (`own`: this backup's source
    index); the files that vanished meanwhile are left out."""
    copied = []
    for plan in plans:
        if (done := copy_block_file(pgdata, plan, changes, store, own, advance)) is not None:
            copied.append(done)
    return copied


def copy_block_file(pgdata: str, plan: BlockPlan, changes: Changes, store: SuperBlockStore,
                    own: int, advance: Callable[[int], None]) -> CopiedFile | None:
    """Store the file's changed blocks; its record and block map. None if it vanished
    (a dropped relation: replay drops it too).

    The pages are read, checksummed and handed to the store a batch at a time, in block
    order, so that the workers compress while the file is still being read and memory
    holds a batch per file (and the store's room), not every changed page of a 1 GiB
    segment.

    The length recorded is what the copy saw (fstat before, and again after the reads
    for a file truncated under it; never less than its last stored page): never inferred
    from zeros. Blocks a concurrent extension adds after the first fstat are not copied;
    replay writes them, as it redoes a truncation after the pages were read."""
    absolute = os.path.join(pgdata, plan.path)
    try:
        fd = os.open(absolute, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PitrkitError(f"cannot read {absolute}: {exc.strerror}") from None
    stored: list[int] = []
    super_blocks: list[SuperBlock] = []
    lock = threading.Lock()

    def done(block: SuperBlock) -> None:
        with lock:
            super_blocks.append(block)

    try:
        status = os.fstat(fd)
        blocks = status.st_size // BLOCK_SIZE
        sums = checksums.unpacked(plan.base.checksums[:blocks * blockmap.CHECKSUM_SIZE])
        sums.extend([0] * (blocks - len(sums)))
        for batch, data in _batches(fd, plan, blocks, changes, advance):
            # The pages' checksums, and their super-blocks (positions go on from the last
            # batch's: a batch is whole super-blocks but for the file's last).
            for block, checksum in zip(batch, checksums.page_checksums(data), strict=True):
                sums[block] = checksum
            position = len(stored)
            for first in range(0, len(batch), blockmap.SUPER_BLOCK_PAGES):
                pages = min(blockmap.SUPER_BLOCK_PAGES, len(batch) - first)
                store.submit(data[first * BLOCK_SIZE:(first + pages) * BLOCK_SIZE], position + first, pages, done)
            stored.extend(batch)
        blocks = _length(blocks, os.fstat(fd).st_size // BLOCK_SIZE, stored, _fresh(plan, blocks))
    finally:
        os.close(fd)
    del sums[blocks:]
    packed = checksums.packed(sums)
    return CopiedFile(BlockFile(plan.path, blocks * BLOCK_SIZE, _mode(status.st_mode), int(status.st_mtime), 0,
                                len(stored), checksums.of_blocks(packed)),
                      _runs(plan.base, blocks, stored, own), own + 1, packed, super_blocks)


def _fresh(plan: BlockPlan, blocks: int) -> int:
    """The first block that cannot come from the parent (the parent's length, or the
    summaries' limit block): every block from there to `blocks` is stored."""
    return min(plan.base.blocks, blocks if plan.limit is None else plan.limit)


def _length(listed: int, now: int, stored: list[int], fresh: int) -> int:
    """The length in blocks recorded for a file `listed` blocks long when the copy began
    and `now` blocks long after it, of which the blocks `stored` were read. Every block
    below it is stored or (below `fresh`) the parent's. A truncation under the copy
    shortens it, but not below a page already stored (replay redoes the truncation); a
    truncation the reads ran into ends it where the stored blocks past `fresh` stop,
    even if the file grew again (replay writes the new pages)."""
    length = max(min(listed, now), stored[-1] + 1 if stored else 0)
    return min(length, fresh + len(stored) - bisect.bisect_left(stored, fresh))


# Pages per batch (4 MiB): whole super-blocks.
_BATCH_PAGES = 16 * blockmap.SUPER_BLOCK_PAGES


def _batches(fd: int, plan: BlockPlan, blocks: int, changes: Changes, advance: Callable[[int], None]
             ) -> Iterator[tuple[list[int], memoryview]]:
    """The pages to store of the file's first `blocks` blocks, ascending, in batches of
    _BATCH_PAGES (the last one shorter): their block numbers and their bytes."""
    fresh = _fresh(plan, blocks)
    if plan.changed is None:
        # Read every page the parent has and keep the changed ones; then every block past it.
        scanned = fresh
        found: list[int] = []
        pages: list[bytes] = []
        for block, page in changed_pages(fd, scanned, plan.segment * BLOCKS_PER_SEGMENT, changes.since,
                                         changes.checksums):
            found.append(block)
            pages.append(page)
            if len(found) == _BATCH_PAGES:
                yield found, memoryview(b"".join(pages))
                found, pages = [], []
        advance(scanned * BLOCK_SIZE)
        if found:
            yield found, memoryview(b"".join(pages))
        wanted = list(range(scanned, blocks))
    else:
        # The summaries' blocks are ascending, each once (backup/changes.py).
        wanted = plan.changed[:bisect.bisect_left(plan.changed, fresh)] + list(range(fresh, blocks))
    for start in range(0, len(wanted), _BATCH_PAGES):
        batch, data = read_blocks(fd, wanted[start:start + _BATCH_PAGES])
        advance(len(data))
        if batch:
            yield batch, data
        if len(batch) < min(_BATCH_PAGES, len(wanted) - start):
            return  # truncated under the copy


# Unchanged blocks between changed ones are read over, into a scratch buffer, when the
# gap is at most this many blocks: copying 8 KiB from the page cache costs less than a
# system call more.
_GAP_PAGES = 4
# The most buffers one preadv takes (Linux's IOV_MAX).
_IOV_MAX = 1024


def read_blocks(fd: int, wanted: list[int]) -> tuple[list[int], memoryview]:
    """The pages `wanted` (ascending block numbers) into one buffer, in that order: the
    blocks read and their bytes. Neighbours, and blocks a short gap apart, are read by one
    preadv each. Fewer blocks than wanted (a prefix) when the file was truncated under
    the copy."""
    data = memoryview(bytearray(len(wanted) * BLOCK_SIZE))
    scratch = memoryview(bytearray(_GAP_PAGES * BLOCK_SIZE))
    index = 0
    while index < len(wanted):
        start = block = wanted[index]
        vectors: list[memoryview] = []
        end = index
        while end < len(wanted) and len(vectors) < _IOV_MAX - 1 and (gap := wanted[end] - block) <= _GAP_PAGES:
            if gap:
                vectors.append(scratch[:gap * BLOCK_SIZE])
            run = end + 1
            while run < len(wanted) and wanted[run] == wanted[run - 1] + 1:
                run += 1
            vectors.append(data[end * BLOCK_SIZE:run * BLOCK_SIZE])
            block = wanted[run - 1] + 1
            end = run
        try:
            count = os.preadv(fd, vectors, start * BLOCK_SIZE)
        except OSError as exc:
            raise PitrkitError(f"cannot read a relation file: {exc.strerror}") from None
        if count < (block - start) * BLOCK_SIZE:
            # Truncated under the copy: the pages wholly read, up to where the file ends.
            kept = bisect.bisect_left(wanted, start + count // BLOCK_SIZE, index, end)
            return wanted[:kept], data[:kept * BLOCK_SIZE]
        index = end
    return wanted, data


def _runs(base: Base, blocks: int, stored: list[int], own: int) -> bytes:
    """The file's runs: its `stored` blocks (ascending; each one's position in this
    backup is its index there) from this backup (`own`), every other block as the
    parent's runs have it. Every block past the parent's length, or past `blocks` the
    parent has, is among `stored`. Made span by span, from the parent's runs and the
    stored blocks' neighbours, never block by block (one loop, nothing called per span:
    this runs over every run of every block-mapped file)."""
    runs: list[list[int]] = []  # first, length, source, position
    parents = blockmap.unpack_runs(base.runs)  # ascending, covering the parent's blocks
    run_first = run_end = run_source = run_position = 0
    cursor = index = 0
    while True:
        if index < len(stored):
            first, end = stored[index], index + 1
            while end < len(stored) and stored[end] == stored[end - 1] + 1:
                end += 1
        else:
            first, end = blocks, index
        while cursor < first:  # the parent's blocks up to the next stored ones
            while run_end <= cursor:  # never past the parent's last run: see above
                run_first, length, run_source, run_position = next(parents)
                run_end = run_first + length
            stop = min(first, run_end)
            position = run_position + cursor - run_first
            if runs and runs[-1][2] == run_source and runs[-1][3] + runs[-1][1] == position:
                runs[-1][1] += stop - cursor
            else:
                runs.append([cursor, stop - cursor, run_source, position])
            cursor = stop
        if index == len(stored):
            return blockmap.pack_runs(runs)
        length = end - index
        if runs and runs[-1][2] == own and runs[-1][3] + runs[-1][1] == index:
            runs[-1][1] += length
        else:
            runs.append([first, length, own, index])
        cursor, index = first + length, end


def _mode(st_mode: int) -> int:
    return st_mode & 0o7777


def finish_maps(copied: list[CopiedFile]) -> list[FileMap]:
    """Each file's map with its super-blocks, ordered by position."""
    maps = []
    for file in copied:
        file.super_blocks.sort(key=lambda block: block.first)
        maps.append(FileMap(file.record.path, file.record.size // BLOCK_SIZE, file.sources, file.runs,
                            blockmap.pack_super_blocks(file.super_blocks), file.checksums))
    return maps


def store_block_maps(archive: Archive, backup_id: str, maps: list[FileMap], compressor: Compressor,
                     cipher: Cipher | None) -> tuple[list[BackupPart], dict[str, int]]:
    """The maps in objects of at most ~16 MiB; returns them and each path's object."""
    parts: list[BackupPart] = []
    where: dict[str, int] = {}
    batch: list[FileMap] = []
    batch_size = 0

    def flush() -> None:
        nonlocal batch, batch_size
        data = blockmap.encode_block_map(blockmap.BlockMapDocument(files=batch))
        key = f"{backup_prefix(backup_id)}blockmap/{len(parts):08d}"
        blob, header = objects.encode(data, compressor, cipher)
        try:
            archive.put(key, blob)
        except ObjectExists:
            raise RefusedError(f"{key} already exists: is another backup-push storing the same backup?") from None
        parts.append(BackupPart.of(key, header, len(blob)))
        batch, batch_size = [], 0

    for file_map in maps:
        where[file_map.path] = len(parts)
        batch.append(file_map)
        batch_size += len(file_map.runs) + len(file_map.super_blocks) + len(file_map.checksums) + len(file_map.path)
        if batch_size >= _MAP_OBJECT_SIZE:
            flush()
    if batch:
        flush()
    return parts, where


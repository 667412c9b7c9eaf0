"""`pitrkit backup-push`: a base backup of the cluster in `[postgres]`, streamed into
`backups/<id>/` of the archive.

It uses PostgreSQL's non-exclusive backup API with pitrkit's own copier (docs/backups.md
says why, not pg_basebackup): one session starts the backup, the data directory and
tablespaces are read file by file, and the files' contents, concatenated in manifest
order, are cut into parts of at most `PART_SIZE` bytes that a pool of threads compresses
and stores in parallel. Nothing is staged on local disk.

The backup exists only once `manifest.json` is stored, and that happens last: after
pg_backup_stop, and after every WAL segment from the backup's start to its stop has
reached the archive. Any failure before that leaves parts without a manifest, which the
planner never uses and retention removes later; an interrupt (Ctrl-C, or SIGTERM: the
daemon's stop) removes them itself, see take_backup.

On a standby the same steps run on the standby's own files and backup API, with its
primary (`[backup] primary_conninfo`) asked before the start and after the stop, when its
WAL switch completes the backup's last segment: backup/standby.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import signal
import stat
import struct
import sys
import threading
import time
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from queue import SimpleQueue
from types import FrameType
from typing import BinaryIO, NamedTuple

import msgspec

from pitrkit import __version__
from pitrkit.backup import config_capture, incremental, replicate, standby
from pitrkit.backup.changes import NotSummarized, relation_of, summarized_changes
from pitrkit.catalog import blockmap, checksums, documents, lease, maintenance
from pitrkit.catalog.backups import claim, manifest_present
from pitrkit.catalog.blockmap import FileMap, Run
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    BLOCKS_PER_SEGMENT,
    CAPTURED_DIR,
    CHECKSUMMED_FORMAT_VERSION,
    BackupDirectory,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupSummary,
    BackupTablespace,
    ChangeSource,
)
from pitrkit.config import Config
from pitrkit.errors import ConfigError, ParentRefused, PitrkitError, RefusedError
from pitrkit.hookspecs import Cipher, Compressor, ObjectExists, ObjectNotFound
from pitrkit.postgres.server import ServerFacts, ServerSession
from pitrkit.postgres.summaries import data_checksums
from pitrkit.postgres.wal import Lsn, SegmentName, WalFileName
from pitrkit.progress import Progress, human_bytes
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import Archive, backup_prefix, claim_key, manifest_key, wal_key
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.repositories import open_all
from pitrkit.wal.push import push_data

log = logging.getLogger(__name__)

# Plaintext bytes per stored part. Each part is compressed by one thread in one call and
# held in memory meanwhile, so backup-push holds (workers + 1) parts: 96 MiB with two
# workers. 32 MiB keeps that modest on a many-core host, keeps the last part's lone
# compression (the tail where other cores idle) short, and still means few objects: 32
# per GiB, i.e. one storage request per ~0.1-0.2 s of a core's zstd work.
PART_SIZE = 32 << 20
# Parts are shorter where a whole one would leave a core idle (see part_length): the
# first ones, and those near the end. Never shorter than PART_SIZE >> _SHORTEST_SHIFT (4
# MiB), which bounds how many more objects this makes: a handful per backup.
_SHORTEST_SHIFT = 3

# How often the archive is asked whether the backup's WAL has arrived: every 20 ms for
# the first second, because pg_backup_stop has just switched segments and the archiver
# is usually done within a tenth of one (a pause doubling from the start overshot its
# arrival by up to the last pause: 0.14 s waited for a segment there after ~0.07 s),
# then less and less often while a backlog drains.
_WAL_POLL_FIRST = 0.02
_WAL_POLL_STEADY_FOR = 1.0
_WAL_POLL_MAX = 1.0
# How long an incremental backup waits for the WAL summarizer to reach its start before
# it reads every relation file instead (the server's own wait gives up after 60 s).
_SUMMARIZER_WAIT = 60.0

# --- what is copied ---------------------------------------------------------------------
# PostgreSQL's own exclusions, from src/backend/backup/basebackup.c.

# Directories kept (the server expects them) but whose contents a restored server
# rebuilds or must not see (excludeDirContents; in the data directory itself).
_EXCLUDED_DIRECTORY_CONTENTS = frozenset(
    {"pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"}
)
# WAL comes from the archive, not the backup: pg_wal is kept with its subdirectories
# (archive_status, and summaries from PostgreSQL 17) but none of its files.
_WAL_DIRECTORY = "pg_wal"
# Files left by the running server or by a backup in progress (excludeFiles).
_EXCLUDED_FILES = frozenset(
    {"postmaster.pid", "postmaster.opts", "backup_label", "tablespace_map", "backup_manifest",
     "postgresql.auto.conf.tmp", "current_logfiles.tmp"}
)
# In the data directory itself: a standby's (or a server in recovery's) signal files. A
# restore writes its own (restore/recovery_conf.py); copied, standby.signal would make
# every restore of a standby's backup a standby.
_SIGNAL_FILES = frozenset({"standby.signal", "recovery.signal"})
_RELCACHE_INIT_PREFIX = "pg_internal.init"  # rebuilt at start-up; "pg_internal.init.<pid>" while written
_TEMPORARY_PREFIX = "pgsql_tmp"  # sort and hash spill files and their directories
# In a database directory: temporary relations (looks_like_temp_rel_name) and relation
# files, whose forks of unlogged relations are reset from the init fork at start-up.
_TEMPORARY_RELATION = re.compile(r"t\d+_\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?")
_RELATION_FILE = re.compile(r"(?P<node>\d+)(?:_(?P<fork>fsm|vm|init))?(?:\.\d+)?")
_DATABASE_DIRECTORY = re.compile(r"base/\d+|pg_tblspc/\d+/PG_[^/]+/\d+")
_CONTROL_FILE = "global/pg_control"
_TABLESPACE_LINKS = "pg_tblspc"


class SourceFile(NamedTuple):
    path: str  # relative to the data directory, as recorded in the manifest
    size: int  # when listed; the copy records what it actually reads
    # A configuration file read already (see backup/config_capture.py): from outside the
    # data directory, or one of its own scrubbed of a password; its bytes, mode and mtime,
    # copied as they were read and checksummed.
    content: bytes | None = None
    mode: int = 0
    mtime: int = 0


class DataDirectory(NamedTuple):
    """What the walk found: the backup's directories, files (in copy order) and tablespaces."""

    directories: list[BackupDirectory]
    files: list[SourceFile]
    tablespaces: list[BackupTablespace]


def _entries(directory: str) -> list[os.DirEntry[str]]:
    """The directory's entries by name; none if it vanished (a database dropped meanwhile)."""
    try:
        with os.scandir(directory) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PitrkitError(f"cannot list {directory}: {exc.strerror}") from None


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat()  # follows symlinks: a linked file or directory is copied as one
    except FileNotFoundError:
        return None


def _unlogged_relations(entries: list[os.DirEntry[str]]) -> set[str]:
    """Relation file nodes with an init fork: their other forks are not copied."""
    nodes = set()
    for entry in entries:
        match = _RELATION_FILE.fullmatch(entry.name)
        if match and match["fork"] == "init":
            nodes.add(match["node"])
    return nodes


def walk_data_directory(pgdata: str, major: int, tablespace_names: dict[int, str]) -> DataDirectory:
    """List what a backup of `pgdata` copies, applying PostgreSQL's exclusions. Must run
    after the backup started: a file created before the backup's checkpoint is not
    recreated by replaying the backup's WAL."""
    listing = DataDirectory([BackupDirectory("", stat.S_IMODE(os.stat(pgdata).st_mode))], [], [])

    def visit(relative: str, directory: str) -> None:
        entries = _entries(directory)
        in_database = _DATABASE_DIRECTORY.fullmatch(relative) is not None
        unlogged = _unlogged_relations(entries) if in_database else set()
        for entry in entries:
            name = entry.name
            path = f"{relative}/{name}" if relative else name
            if name in _EXCLUDED_FILES or name.startswith((_RELCACHE_INIT_PREFIX, _TEMPORARY_PREFIX)):
                continue
            if relative == "" and (name == CAPTURED_DIR or name in _SIGNAL_FILES):
                continue  # the stream's own name for configuration from outside (a leftover), signals
            if relative == _TABLESPACE_LINKS and entry.is_symlink():
                add_tablespace(entry)
                continue
            status = _stat(entry)
            if status is None:
                continue
            if stat.S_ISDIR(status.st_mode):
                listing.directories.append(BackupDirectory(path, stat.S_IMODE(status.st_mode)))
                if path == _WAL_DIRECTORY:
                    listing.directories.extend(
                        BackupDirectory(f"{path}/{sub.name}", stat.S_IMODE(sub_status.st_mode))
                        for sub in _entries(entry.path)
                        if (sub_status := _stat(sub)) and stat.S_ISDIR(sub_status.st_mode)
                    )
                elif not (relative == "" and name in _EXCLUDED_DIRECTORY_CONTENTS):
                    visit(path, entry.path)
            elif stat.S_ISREG(status.st_mode):
                if in_database:
                    relation = _RELATION_FILE.fullmatch(name)
                    if _TEMPORARY_RELATION.fullmatch(name) or (
                        relation and relation["node"] in unlogged and relation["fork"] != "init"
                    ):
                        continue
                listing.files.append(SourceFile(path, status.st_size))
            # Sockets, FIFOs and devices have no place in a data directory: not copied.

    def add_tablespace(link: os.DirEntry[str]) -> None:
        if not link.name.isdigit():
            log.warning("skipping %s: not a tablespace link (the name is not an OID)", link.path)
            return
        oid = int(link.name)
        # A tablespace created after the names were read is still backed up; it is
        # known by its location only.
        listing.tablespaces.append(BackupTablespace(oid=oid, name=tablespace_names.get(oid, ""),
                                                    location=os.readlink(link.path)))
        # Only this major's subdirectory: a tablespace also holds the other major's
        # directory while pg_upgrade runs (basebackup.c sends TABLESPACE_VERSION_DIRECTORY).
        for version in _entries(link.path):
            if version.name.startswith(f"PG_{major}_") and (status := _stat(version)) and stat.S_ISDIR(status.st_mode):
                path = f"{_TABLESPACE_LINKS}/{oid}/{version.name}"
                listing.directories.append(BackupDirectory(path, stat.S_IMODE(status.st_mode)))
                visit(path, version.path)

    visit("", pgdata)
    # Copied last, as basebackup.c does: the control file is then no older than any
    # file copied before it.
    control = [file for file in listing.files if file.path == _CONTROL_FILE]
    listing.files[:] = [file for file in listing.files if file.path != _CONTROL_FILE] + control
    return listing


# --- the stream of parts ----------------------------------------------------------------


class PartStore:
    """Compresses and stores parts, `workers` at a time, each part whole in one thread
    (single-threaded zstd: the parallelism is across parts).

    Storing is not compressing: a part's buffer is free again as soon as it is
    compressed, and its object is stored while the next part compresses. There are twice
    as many threads as `workers`, at most `workers` of them compressing at once, so
    that no core idles while a part is written and fsynced (file://) or uploaded.

    Memory is bounded by the buffers: there are at most `workers + 1` of PART_SIZE bytes,
    so the reader fills one while every worker compresses another, and waits for a buffer
    when the workers fall behind. Buffers are reused, never reallocated, and made only
    when the reader needs one and none is free: zeroing 32 MiB (and faulting its pages
    in) then happens while the workers compress, not before the first read, and a small
    backup makes one.
    """

    def __init__(self, archive: Archive, backup_id: str, compressor: Compressor, cipher: Cipher | None,
                 workers: int) -> None:
        self._archive = archive
        self._prefix = backup_prefix(backup_id) + "data/"
        self._compressor = compressor
        self._cipher = cipher
        self._free: SimpleQueue[bytearray] = SimpleQueue()
        self._unmade = workers + 1
        self._queued: SimpleQueue[tuple[int, bytearray, int] | None] = SimpleQueue()
        self._parts: dict[int, BackupPart] = {}
        self._stored = threading.Condition()  # notified as each part is stored, or fails
        self._failure: BaseException | None = None
        self._abandoned = False
        self._compressing = threading.Semaphore(workers)
        self._compressing_at_once = workers
        # Daemon threads: an exit never waits for them (abandon waits for a store under way).
        self._threads = [threading.Thread(target=self._serve, name=f"backup-part-{n}", daemon=True)
                         for n in range(2 * workers)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return self._compressing_at_once

    def buffer(self) -> bytearray:
        """A free buffer; raises the first worker's failure, if any."""
        if self._unmade and self._free.empty():
            self._unmade -= 1
            return bytearray(PART_SIZE)
        buffer = self._free.get()
        if self._failure is not None:
            raise self._failure
        return buffer

    def submit(self, number: int, buffer: bytearray, length: int) -> None:
        self._queued.put((number, buffer, length))

    @property
    def can_read_back(self) -> bool:
        return self._cipher is None or self._cipher.can_decrypt

    def read_back(self, number: int) -> bytes:
        """The plaintext of submitted part `number`, once stored, read back from the archive
        and verified. Raises the first worker's failure, if any."""
        with self._stored:
            self._stored.wait_for(lambda: number in self._parts or self._failure is not None)
        if self._failure is not None:
            raise self._failure
        key = self._parts[number].key
        try:
            return objects.decode(key, self._archive.get(key), self._archive.plugins.compressor, self._cipher)
        except objects.CorruptObject as exc:
            raise PitrkitError(f"backup part {key} did not read back as it was stored: {exc}") from None

    def finish(self) -> list[BackupPart]:
        """Wait for every submitted part to be stored; the parts in order."""
        for _ in self._threads:
            self._queued.put(None)
        for thread in self._threads:
            thread.join()
        if self._failure is not None:
            raise self._failure
        return [self._parts[number] for number in sorted(self._parts)]

    def abandon(self) -> None:
        """Store nothing more; queued parts are dropped. Returns once no worker stores
        anything any more (a store under way ends first), so that what an interrupted
        backup then removes stays removed."""
        self._abandoned = True
        for _ in self._threads:
            self._queued.put(None)
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while (item := self._queued.get()) is not None:
            number, buffer, length = item
            encoded = None
            try:
                if self._failure is None and not self._abandoned:
                    with self._compressing:
                        encoded = self._encode(memoryview(buffer)[:length])
            except BaseException as exc:  # handed to the reader thread, which raises it
                self._failure = self._failure or exc
            finally:
                self._free.put(buffer)  # the object is a copy: the reader may refill it now
            try:
                if encoded is not None:
                    self._parts[number] = self._store(number, *encoded)
            except BaseException as exc:
                self._failure = self._failure or exc
            with self._stored:
                self._stored.notify_all()

    def _encode(self, data: memoryview) -> tuple[bytes, objects.ObjectHeader]:
        # The view, not a bytes copy: zstd and the digests read any buffer. XXH3-128 where
        # nothing needs SHA-256: encrypted, a part's SHA-256 binds the authenticated
        # object to the authenticated manifest cryptographically (docs/archive-format.md).
        digest = objects.SHA256 if self._cipher is not None else objects.XXH3_128
        return objects.encode(data, self._compressor, self._cipher, digest=digest)  # type: ignore[arg-type]

    def _store(self, number: int, blob: bytes, header: objects.ObjectHeader) -> BackupPart:
        key = f"{self._prefix}{number:08d}"
        try:
            self._archive.put(key, blob)
        except ObjectExists:
            raise RefusedError(f"{key} already exists: is another backup-push storing the same backup?") from None
        return BackupPart.of(key, header, len(blob))


def part_length(number: int, remaining: int, workers: int) -> int:
    """How many bytes part `number` holds when `remaining` bytes of the listing are still
    to be read: PART_SIZE in the middle of a backup, less at its two ends, where a whole
    part would leave cores idle. At the start nothing compresses until the first part is
    read, so the first parts grow from PART_SIZE / 8, doubling. At the end the last part
    compresses alone while the other workers have nothing left, so parts shrink to a
    `workers`-th of what is left: the workers run out of work together, a short part
    apart. Past the listing's end (files grew while copied) parts are whole again."""
    if remaining <= 0:
        return PART_SIZE
    shortest = PART_SIZE >> _SHORTEST_SHIFT
    ramp = PART_SIZE >> max(0, _SHORTEST_SHIFT - number)
    share = -(-remaining // max(1, workers))
    length = max(shortest, min(ramp, share, PART_SIZE))
    if remaining - length < shortest:
        return min(remaining, PART_SIZE)  # not a last part shorter than the shortest
    return length


def copy_files(pgdata: str, sources: list[SourceFile], store: PartStore, progress: Progress,
               own: int = 0) -> tuple[list[BackupFile], list[FileMap]]:
    """Read the files into part buffers, back to back, and hand each full buffer to the
    store. Returns the file records (where each file's first byte landed, how many bytes
    were read, its checksum) and the block maps of the relation files among them (`own`:
    this backup's source index, the length of its chain).

    The server keeps writing meanwhile. A file is read to its current end, whatever its
    listed size; torn or changed pages are fine, because replaying the WAL from the
    backup's start rewrites them (the reason the backup API exists). A file that
    vanished (a dropped table) is skipped: replay drops it too.

    Checksums are of the bytes as they land in the buffers, i.e. as restore will write
    them: a relation file's pages (one may straddle two buffers), any other file's bytes
    (catalog/checksums.py).
    """
    files: list[BackupFile] = []
    maps: list[FileMap] = []
    remaining = sum(source.size for source in sources)  # as listed; files change meanwhile
    number, buffer, filled = 0, store.buffer(), 0
    limit = part_length(number, remaining, store.workers)
    view = memoryview(buffer)
    for source in sources:
        absolute = os.path.join(pgdata, source.path)
        reader: BinaryIO
        if source.content is not None:
            reader, mode, mtime = io.BytesIO(source.content), source.mode, source.mtime
        else:
            try:
                reader = open(absolute, "rb", buffering=0)
            except FileNotFoundError:
                log.debug("%s vanished before it was copied", source.path)
                continue
            except OSError as exc:
                raise PitrkitError(f"cannot read {absolute}: {exc.strerror} (run backup-push as the OS user "
                                   "that owns the data directory, or as root)") from None
            status = os.fstat(reader.fileno())
            os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            mode, mtime = stat.S_IMODE(status.st_mode), int(status.st_mtime)
        pages = checksums.PageHasher() if source.content is None and relation_of(source.path) is not None else None
        # A relation file's checksum is of its block checksums (nearly always: see below),
        # so its bytes are hashed once, by page, not a second time whole, unless the parts
        # could not be read back if it had to be (encrypted for a recipient only).
        whole = checksums.file_hasher() if pages is None or not store.can_read_back else None
        with reader:
            part, offset, size = number, filled, 0
            while True:
                if filled == limit:
                    store.submit(number, buffer, filled)
                    number, buffer, filled = number + 1, store.buffer(), 0
                    limit = part_length(number, remaining, store.workers)
                    view = memoryview(buffer)
                # One read straight into the part buffer, as large as the room left.
                try:
                    count = reader.readinto(view[filled:limit])
                except OSError as exc:
                    raise PitrkitError(f"cannot read {absolute}: {exc.strerror}") from None
                if not count:
                    break
                read = view[filled:filled + count]
                if pages is not None:
                    pages.update(read)
                if whole is not None:
                    whole.update(read)
                filled += count
                size += count
                remaining -= count
                progress.advance(count)
        if pages is not None and pages.whole_pages and size <= BLOCKS_PER_SEGMENT * BLOCK_SIZE:
            packed = checksums.packed(pages.checksums)
            blocks = size // BLOCK_SIZE
            runs = blockmap.pack_runs([Run(0, blocks, own, 0)] if blocks else [])
            maps.append(FileMap(source.path, blocks, own + 1, runs, b"", packed))
            checksum = checksums.of_blocks(packed)
        elif whole is not None:
            checksum = whole.digest()
        else:
            # A relation file whose copy is not whole pages (it was being extended while it
            # was read) has the checksum of its bytes: read back from the parts stored so
            # far and the buffer being filled. Rare, so its bytes were not hashed going by.
            log.debug("%s: %d bytes, not whole pages; its checksum is of its bytes, read back", source.path, size)
            checksum = _read_back_checksum(store, part, offset, size, number, view[:filled])
        files.append(BackupFile(source.path, size, mode, mtime, part, offset, checksum))
    if filled:
        store.submit(number, buffer, filled)
    return files, maps


def _read_back_checksum(store: PartStore, part: int, offset: int, size: int, number: int, filling: memoryview) -> bytes:
    """The checksum of the `size` bytes of the stream from `offset` in part `part` on, up to
    the end of `filling`, the buffer of part `number`."""
    hasher, fed = checksums.file_hasher(), 0
    for stored in range(part, number):
        piece = memoryview(store.read_back(stored))[offset:]
        hasher.update(piece)
        fed, offset = fed + len(piece), 0
    hasher.update(filling[offset:])
    assert fed + len(filling) - offset == size, "the parts read back are not the file's bytes"
    return hasher.digest()


# --- preconditions ----------------------------------------------------------------------

_CONTROL_SYSTEM_IDENTIFIER = struct.Struct("=Q")  # ControlFileData starts with it


def _configured_pgdata(config: Config) -> str:
    if not config.postgres.pgdata:
        raise ConfigError("[postgres] pgdata is not set: backup-push reads the data directory's files, "
                          "so it needs the server's data_directory there")
    return os.path.realpath(config.postgres.pgdata)


def _check_server(facts: ServerFacts, pgdata: str, streaming: bool, primary: ServerFacts | None) -> None:
    """`streaming`: `pitrkit wal-receive` is streaming from the [receive] slot, which
    archives the backup's WAL without archive_command (docs/streaming.md). `primary`: the
    facts of the primary of a standby (backup/standby.py)."""
    if primary is not None:
        # The standby's WAL is archived by the primary, or by the standby itself with
        # archive_mode = always (with "on", a standby archives nothing).
        if not streaming and not (_archives(primary, ("on", "always")) or _archives(facts, ("always",))):
            raise RefusedError("neither the primary archives WAL (archive_mode and archive_command) nor this standby "
                               "(archive_mode = always and archive_command), and pitrkit wal-receive is not "
                               "streaming from the [receive] slot on either: the backup could never be made "
                               "consistent from the archive; set archive_command to pitrkit wal-push on the primary")
    elif not streaming and facts.archive_mode == "off":
        raise RefusedError("archive_mode is off on the server and pitrkit wal-receive is not streaming from "
                           "the [receive] slot: the backup could never be made consistent from the archive; "
                           "set archive_mode = on and archive_command to pitrkit wal-push, or run wal-receive")
    elif not streaming and not facts.archive_command and not facts.archive_library:
        raise RefusedError("archive_command is empty on the server: the backup could never be made consistent "
                           "from the archive; set archive_command to pitrkit wal-push")
    if os.path.realpath(facts.data_directory) != pgdata:
        raise RefusedError(f"[postgres] pgdata is {pgdata}, but the server [postgres] conninfo reaches has its "
                           f"data directory at {facts.data_directory}")
    # The same path on another host (conninfo pointing elsewhere) must not pass: the
    # control file says whose data directory this is.
    control = os.path.join(pgdata, _CONTROL_FILE)
    try:
        with open(control, "rb") as file:
            (on_disk,) = _CONTROL_SYSTEM_IDENTIFIER.unpack(file.read(_CONTROL_SYSTEM_IDENTIFIER.size))
    except OSError as exc:
        raise PitrkitError(f"cannot read {control}: {exc.strerror}") from None
    if on_disk != facts.system_identifier:
        raise RefusedError(f"{pgdata} belongs to the cluster with system identifier {on_disk}, but the server "
                           f"[postgres] conninfo reaches is {facts.system_identifier}")


def _archives(facts: ServerFacts, modes: tuple[str, ...]) -> bool:
    return facts.archive_mode in modes and bool(facts.archive_command or facts.archive_library)


def _check_identity(identity: ArchiveIdentity, facts: ServerFacts, url: str) -> None:
    current = identity.current_era
    if current.system_identifier != facts.system_identifier:
        earlier = identity.era_of(facts.system_identifier)
        if earlier is not None:
            raise RefusedError(f"this server (system identifier {facts.system_identifier}) is era {earlier.era} of "
                               f"the archive {url}, which a pg_upgrade has ended: its newest era is the cluster "
                               f"with system identifier {current.system_identifier} (PostgreSQL "
                               f"{current.pg_version}); back up that one")
        raise RefusedError(f"the archive {url} belongs to the cluster with system identifier "
                           f"{current.system_identifier}, not to this server ({facts.system_identifier}); after a "
                           "pg_upgrade, run `pitrkit upgrade` first")
    if identity.wal_segment_size != facts.wal_segment_size:
        raise RefusedError(f"the archive {url} holds {identity.wal_segment_size}-byte WAL segments, "
                           f"this server writes {facts.wal_segment_size}-byte ones")


def _claim_backup_id(archive: Archive, server: ServerSession) -> tuple[str, datetime]:
    """The UTC second the backup starts, by the server's clock, as `YYYYMMDDTHHMMSSZ`,
    claimed for this run: its `claim.json` is stored create-only before anything else
    goes into the folder, so of two runs that start in the same second (on one host or
    two) exactly one has the id, and the other takes the next second before it stores
    anything. A folder that holds anything (an interrupted backup's left-overs) is not
    claimed either. A claim that meets its own earlier attempt (a retried write whose
    first answer was lost) knows it by its token."""
    token = secrets.token_hex(8)
    for _ in range(3):
        now = server.clock()
        backup_id = now.strftime("%Y%m%dT%H%M%SZ")
        taken = archive.list_folder(backup_prefix(backup_id))
        if not taken.objects and not taken.folders and claim(archive, backup_id, token, now):
            return backup_id, now
        time.sleep(1 - now.microsecond / 1e6)
    raise RefusedError(f"backup id {backup_id} is already taken in the archive ({backup_prefix(backup_id)} "
                       "exists): is another backup-push running?")


# --- the WAL the backup needs -----------------------------------------------------------


def wait_for_wal(archive: Archive, server: ServerSession, needed: list[SegmentName], timeout: float,
                 backup_id: str) -> None:
    """Return once every segment in `needed` is in the archive; raise after `timeout`."""
    started = time.monotonic()
    deadline = started + timeout
    waiting_for = None
    pause = _WAL_POLL_FIRST
    for position, segment in enumerate(needed, 1):
        key = wal_key(WalFileName.parse(segment.name))
        while True:
            try:
                archive.stat(key)
                break
            except ObjectNotFound:
                pass
            if time.monotonic() >= deadline:
                raise PitrkitError(
                    f"backup {backup_id} is not usable: WAL segment {segment.name} did not reach the archive "
                    f"within {timeout:g} s ({server.archiver_failure()}); check pg_stat_archiver and the "
                    "server log for why archive_command fails")
            if waiting_for != segment:
                waiting_for = segment
                log.info("waiting for WAL segment %s to be archived", segment.name)
                if sys.stderr.isatty():
                    print(f"waiting for WAL segment {segment.name} to be archived "
                          f"({position} of {len(needed)})", file=sys.stderr)
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            if time.monotonic() - started >= _WAL_POLL_STEADY_FOR:
                pause = min(pause * 2, _WAL_POLL_MAX)


def push_finished_wal(archive: Archive, pgdata: str, needed: list[SegmentName]) -> list[str]:
    """Archive those of `needed` that the server has finished but not yet archived,
    from pg_wal, beside the archiver; returns their names.

    pg_backup_stop has just switched segments, and the archiver needs a moment to start
    archive_command on the last one (a process start, then the push itself) while this
    process, with everything loaded, is idle. Storing it here is what wal-push would
    do: the same checks and the same create-only object, so whichever of the two comes
    second finds an identical object and succeeds, and wait_for_wal still decides. Any
    failure here leaves the segment to the archiver.

    Only beside an archiver that delivers into this archive: the segment before the
    backup's first one (which pg_backup_start switched away from) must be stored. An
    archive_command that archives elsewhere, or has never worked, still fails the backup
    after `[backup] wal_timeout`. One that broke after that segment is not noticed here:
    the backup is sound (its WAL is stored), and `status` reports the archiver's failures."""
    pushed: list[str] = []
    if not needed or needed[0].segno == 0 or not _stored(archive, needed[0]._replace(segno=needed[0].segno - 1)):
        return pushed
    wal_directory = os.path.join(pgdata, _WAL_DIRECTORY)
    for segment in needed:
        file = WalFileName.parse(segment.name)
        if _stored(archive, segment):
            continue
        data = _finished_segment(wal_directory, segment.name)
        if data is None:
            continue
        try:
            log.debug("%s (from pg_wal, beside the archiver)", push_data(archive, file, data))
        except PitrkitError as exc:
            log.debug("archiving %s from pg_wal failed, leaving it to the archiver: %s", segment.name, exc)
            continue
        pushed.append(segment.name)
    return pushed


def _stored(archive: Archive, segment: SegmentName) -> bool:
    """Whether the archive holds `segment`; False also when it cannot say."""
    try:
        archive.stat(wal_key(WalFileName.parse(segment.name)))
    except ObjectNotFound:
        return False
    except PitrkitError as exc:
        log.debug("cannot tell whether %s is archived: %s", segment.name, exc)
        return False
    return True


def _finished_segment(wal_directory: str, name: str) -> bytes | None:
    """The segment `name` in pg_wal, if the server has finished it and it is waiting for
    the archiver (its `.ready` mark: written once the segment is complete and flushed,
    and no segment is recycled before it is archived); None otherwise. Once archived, a
    segment may be recycled (renamed to a future name, then overwritten) at any time, so
    the file read must still be the one under `name` after the read."""
    path = os.path.join(wal_directory, name)
    if not os.path.exists(os.path.join(wal_directory, "archive_status", f"{name}.ready")):
        return None
    try:
        with open(path, "rb") as file:
            data = file.read()
            read = os.fstat(file.fileno())
        now = os.stat(path)
    except OSError:
        return None
    return data if (read.st_dev, read.st_ino) == (now.st_dev, now.st_ino) else None


def _segments(first: SegmentName, last: SegmentName) -> list[SegmentName]:
    segments = [first]
    while segments[-1] != last:
        segments.append(segments[-1].next())
    return segments


# --- the backup -------------------------------------------------------------------------


def _changes_since(archive: Archive, server: ServerSession, facts: ServerFacts, parent: BackupSummary,
                   timeline: int, start: Lsn) -> tuple[incremental.Changes, ChangeSource]:
    """How this backup learns which blocks changed since `parent` started: the WAL
    summaries when they cover the whole way, else reading the pages (and why)."""
    path = incremental.summary_path(archive, parent, timeline, start)
    found = summarized_changes(server.connection, facts.major, path, _SUMMARIZER_WAIT)
    checksums = data_checksums(server.connection)
    if isinstance(found, NotSummarized):
        log.warning("reading every relation file for changed pages: %s", found.reason)
        return (incremental.Changes(None, parent.start_lsn, checksums),
                ChangeSource(method="page-lsn", note=found.reason))
    return (incremental.Changes(found, parent.start_lsn, checksums),
            ChangeSource(method="wal-summaries", note=f"{found.summary_files} WAL summary files from "
                                                      f"{parent.start_lsn} to {start}"))


class Phases:
    """How long each step of a backup took, for the debug log (`backup-push -v`): the
    fixed steps around the copy are what a small backup's time is made of, and
    benchmarks/backup_restore.py reads them from this line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def done(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - self._last
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{step}={seconds:.3f}" for step, seconds in self.seconds.items())


class _Interrupted(KeyboardInterrupt):
    """SIGTERM (the daemon's stop, a service manager's): unwinds like Ctrl-C, through the
    server session's end, the catalog lock's and a lease's release and take_backup's
    removal of the unfinished folder, and ends the command as an interrupt does (exit 130)."""


def _raise_interrupted(_signal: int, _frame: FrameType | None) -> None:
    raise _Interrupted()


class _Folder:
    """The backup folder a run stores into: its id once chosen."""

    backup_id: str | None = None
    archive: Archive | None = None  # the era it is stored in, once chosen


def take_backup(archive: Archive, config: Config, label: str | None, *, incremental_on: str | None = None,
                incremental_wanted: bool = False) -> BackupManifest:
    """Back up the cluster and store its manifest; returns the manifest. With
    `incremental_wanted`, only the blocks changed since the parent (`incremental_on`,
    or the newest backup on this timeline's path) are stored. Interrupted before its
    manifest is stored, or refused its parent (ParentRefused: the parent's maps are read
    once the id is claimed and the backup started), it removes what it stored: a refused
    incremental has stored nothing, as its exit code tells the daemon."""
    folder = _Folder()
    try:
        with contextlib.ExitStack() as held:
            return _take_backup(archive, config, label, incremental_on, incremental_wanted, held, folder)
    except KeyboardInterrupt:
        if folder.backup_id is not None:
            _remove_unfinished(folder.archive or archive, folder.backup_id, "was interrupted")
        raise
    except ParentRefused:
        if folder.backup_id is not None:
            _remove_unfinished(folder.archive or archive, folder.backup_id, "refused its parent")
        raise


def _remove_unfinished(archive: Archive, backup_id: str, why: str) -> None:
    """The folder of a backup interrupted (or refused) before its manifest, removed. Left, it is an
    unfinished folder written to a moment ago: a daemon started next takes it for another
    host's backup at work and skips its backups for [backup] wal_timeout and more
    (daemon/service.py). Its parts' stores have all ended (PartStore.abandon,
    SuperBlockStore.abandon, the block maps' executor). Everything in the folder is this
    run's: it claimed the id before storing anything (_claim_backup_id), and a run that
    finds the claim taken stores nothing there. The claim goes last, so that a removal
    that fails half-way still keeps other runs out. Not once the manifest is stored: the
    interrupt may have come just after the commit.
    What cannot be removed now is left to retention, as a failed backup's folder is."""
    try:
        if manifest_present(archive, backup_id):
            return
        claim = claim_key(backup_id)
        for stored in archive.list(backup_prefix(backup_id)):
            if stored.key != claim:
                archive.delete(stored.key)
        archive.delete(claim)
    except PitrkitError as exc:
        log.warning("backup %s %s; removing its unfinished folder failed, retention removes it later: %s",
                    backup_id, why, exc)
        return
    log.info("backup %s %s: removed its unfinished folder", backup_id, why)


def _take_backup(archive: Archive, config: Config, label: str | None, incremental_on: str | None,
                 incremental_wanted: bool, held: contextlib.ExitStack, folder: _Folder) -> BackupManifest:
    pgdata = _configured_pgdata(config)
    standby.check_setting(config.backup)
    phases = Phases()
    with ServerSession(config.postgres.conninfo) as server:
        phases.done("connect")
        # `pitrkit init` creates the archive: without its archive.json there is none here.
        identity = archive.identity()
        # A backup is of the cluster that runs now: the newest era's (`pitrkit upgrade`
        # records a pg_upgrade's cluster); its objects go into that era's namespace.
        archive = folder.archive = archive.era(identity.current_era.era)
        facts = server.facts()
        streaming = server.slot_active(config.receive.slot)
        primary_facts = None  # a standby's primary's (backup/standby.py)
        if facts.in_recovery:
            with standby.primary_of(facts, config.backup) as primary:
                standby.check_standby(server, primary, config.backup)
                primary_facts = primary.facts
                streaming = streaming or primary.session.slot_active(config.receive.slot)
        _check_server(facts, pgdata, streaming, primary_facts)
        _check_identity(identity, facts, archive.storage.url)
        # A compression setting the plugin rejects is refused before the backup starts.
        compression = config.compression
        compressor = archive.plugins.compressor(compression.algorithm, compression.level, threads=1)
        # Likewise a key that may not write to this archive (see Archive.write_cipher).
        cipher = archive.write_cipher()
        parent_summary = None
        if incremental_wanted:
            timeline = server.timeline()
            parent_summary = incremental.choose_parent(archive, facts.system_identifier, facts.major, timeline,
                                                       incremental_on)
            # The parent's chain must outlive this backup's registration: a retention
            # run meanwhile would leave an incremental of nothing.
            held.enter_context(lease.holding(archive, parent_summary, "backup-push --incremental"))
        backup_id, start_time = _claim_backup_id(archive, server)
        folder.backup_id = backup_id
        label = label or f"pitrkit {backup_id}"
        tablespace_names = server.tablespace_names()
        phases.done("prepare")
        # The parent's manifest and block maps are read and checked while the server
        # checkpoints for the start. If they cannot be used, the backup just started is
        # abandoned with the session, as after any failure from here on.
        with ThreadPoolExecutor(1, thread_name_prefix="parent-maps") as beside:
            loading = None if parent_summary is None else beside.submit(incremental.load_parent, archive,
                                                                         parent_summary)
            started = server.start_backup(label)
            phases.done("start")
            if parent_summary is not None:
                incremental.check_start(parent_summary, started)
            if loading is not None:
                parent = loading.result()
                phases.done("parent")
        log.info("backup %s started at %s (label %r)", backup_id, started, label)

        # From here on, a failure closes the session, which makes the server abort the
        # backup; parts already stored stay, without a manifest, until retention.
        # Which blocks changed is asked of the server (waiting for its WAL summarizer to
        # reach the start, then reading the summaries) while the data directory is walked.
        with ThreadPoolExecutor(1, thread_name_prefix="changes") as beside:
            finding = None if parent_summary is None else beside.submit(
                _changes_since, archive, server, facts, parent_summary, timeline, started)
            listing = walk_data_directory(pgdata, facts.major, tablespace_names)
            configuration, captured, settings_inside = _capture_configuration(server, facts)
            _scrub_listed(pgdata, listing.files, settings_inside)
            if captured:
                listing.directories.append(BackupDirectory(CAPTURED_DIR, 0o700))
                listing.files[-1:-1] = captured  # before pg_control, which is copied last
            phases.done("list")
            changes = None
            if finding is not None and parent_summary is not None:
                changes, source = finding.result()
                log.info("backup %s is incremental on %s; changed blocks: %s (%s)", backup_id,
                         parent_summary.backup_id, source.method, source.note)
                phases.done("changes")
        whole, plans = listing.files, list[incremental.BlockPlan]()
        if changes is not None:
            whole, plans = incremental.plan_files(pgdata, listing.files, parent, changes)
            phases.done("plan")
        # What will be read: whole files, and of block-mapped ones every page the scan
        # reads, or the blocks the summaries name (new blocks past the parent's come on top).
        total = sum(file.size for file in whole) + BLOCK_SIZE * sum(
            plan.base.blocks if plan.changed is None else len(plan.changed) for plan in plans)
        log.info("copying %d files (%s) and %d block-mapped files from %s and %d tablespaces", len(whole),
                 human_bytes(total), len(plans), pgdata, len(listing.tablespaces))
        workers = config.backup.workers or len(os.sched_getaffinity(0))
        store = PartStore(archive, backup_id, compressor, cipher, workers)
        blocks = incremental.SuperBlockStore(archive, backup_id, compressor, cipher, workers) if plans else None
        own = 0 if parent_summary is None else len(parent_summary.chain) + 1  # this backup's source index
        try:
            with Progress(f"backup {backup_id}", total) as progress:
                copied = []
                if blocks is not None and changes is not None:
                    copied = incremental.copy_block_files(pgdata, plans, changes, blocks, own, progress.advance)
                files, stream_maps = copy_files(pgdata, whole, store, progress, own)
            phases.done("copy")  # every byte read: what is left is the last parts' compression
            parts = store.finish()
            block_parts = blocks.finish() if blocks is not None else []
            phases.done("drain")
        except BaseException:
            store.abandon()
            if blocks is not None:
                blocks.abandon()
            raise
        # Every relation file's map: the block-mapped ones', then those copied whole;
        # made and stored beside the stop and the wait for WAL, which do not depend on them.
        with ThreadPoolExecutor(1, thread_name_prefix="block-maps") as beside:
            storing = beside.submit(lambda: incremental.store_block_maps(
                archive, backup_id, incremental.finish_maps(copied) + stream_maps, compressor, cipher))
            stop = server.stop_backup()
            phases.done("stop")
            first = SegmentName.parse(stop.label.start_segment, facts.wal_segment_size)
            with contextlib.ExitStack() as at_end:
                archiver = server  # whose pg_stat_archiver a timeout quotes
                if primary_facts is None:
                    # The segment holding the last byte of the backup-end record; pg_backup_stop
                    # switched to a new segment after it, so it will be archived.
                    last = SegmentName.containing(stop.label.timeline, Lsn(stop.stop_lsn - 1),
                                                  facts.wal_segment_size)
                else:
                    # The segment holding the standby's minimum recovery point, completed
                    # by the primary's WAL switch.
                    primary = at_end.enter_context(standby.primary_of(facts, config.backup))
                    last = standby.finish_stop(server, primary, stop)
                    archiver = primary.session
                log.info("backup %s stopped at %s; needs WAL %s to %s", backup_id, stop.stop_lsn, first, last)
                needed = _segments(first, last)
                push_finished_wal(archive, pgdata, needed)
                wait_for_wal(archive, archiver, needed, config.backup.wal_timeout, backup_id)
            phases.done("wal")
            maps, where = storing.result()
            phases.done("maps")  # what was left of storing them once the WAL was there
        block_files = [msgspec.structs.replace(copied_file.record, block_map=where[copied_file.record.path])
                       for copied_file in copied]

    summary = BackupSummary(
        format_version=CHECKSUMMED_FORMAT_VERSION,
        backup_id=backup_id,
        label=label,
        system_identifier=facts.system_identifier,
        pg_version=facts.version_num,
        timeline=stop.label.timeline,
        start_lsn=stop.label.start_lsn,
        start_time=start_time,
        stop_lsn=stop.stop_lsn,
        stop_time=stop.time,
        first_segment=first.name,
        last_segment=last.name,
        tablespaces=listing.tablespaces,
        size=sum(file.size for file in files) + sum(file.size for file in block_files),
        stored_size=sum(part.stored_size for part in parts) + sum(part.stored_size for part in block_parts)
        + sum(part.stored_size for part in maps),
        file_count=len(files) + len(block_files),
        compression=compressor.name,
        pitrkit_version=__version__,
        configuration=configuration,
        parent=None if parent_summary is None else parent_summary.backup_id,
        chain=[] if parent_summary is None else [*parent_summary.chain, parent_summary.backup_id],
        changed_blocks=None if changes is None else source,
    )
    manifest = BackupManifest(
        **msgspec.structs.asdict(summary),
        backup_label=stop.label_file,
        tablespace_map=stop.tablespace_map or None,
        parts=parts,
        directories=listing.directories,
        files=files,
        block_files=block_files,
        block_maps=maps,
        block_parts=block_parts,
    )
    # The commit marker, stored last and create-only.
    try:
        archive.put_document(manifest_key(backup_id), manifest, pretty=False)
    except ObjectExists:
        raise RefusedError(f"{manifest_key(backup_id)} already exists: is another backup-push storing "
                           "the same backup?") from None
    phases.done("manifest")
    log.info("backup %s committed: %s", backup_id, manifest_key(backup_id))
    try:
        maintenance.record_backup(archive, summary)
    except PitrkitError as exc:
        # The backup exists: its manifest is stored. The catalog is a cache that every
        # reader reconciles with the manifests, so a failed update (or one skipped because
        # another writer holds the catalog lock) costs only speed.
        log.warning("backup %s is stored, but updating the catalog failed (%s); readers find the backup "
                    "from its manifest, and 'pitrkit catalog rebuild' rewrites the catalog", backup_id, exc)
    phases.done("catalog")
    log.info("backup %s phases (s): %s", backup_id, phases)
    return manifest


def _capture_configuration(server: ServerSession, facts: ServerFacts
                           ) -> tuple[documents.ServerConfiguration, list[SourceFile], list[str]]:
    """Where the server's configuration lives, the files it reads from outside its data
    directory, read now, as files of the stream (see backup/config_capture.py), and the
    settings files inside it."""
    configuration, captured, settings_inside = config_capture.capture(facts.data_directory, *server.config_paths(),
                                                                      server.files_read())
    for each in captured:
        log.info("copying %s (%s) from outside the data directory as %s/%s", each.record.path, each.record.role,
                 CAPTURED_DIR, each.record.name)
    return configuration, [SourceFile(f"{CAPTURED_DIR}/{each.record.name}", each.record.size,
                                      each.content, each.record.mode) for each in captured], settings_inside


def _scrub_listed(pgdata: str, files: list[SourceFile], settings_inside: list[str]) -> None:
    """The settings files of the data directory among `files` that hold a password (a
    standby's primary_conninfo) replaced by their scrubbed content, read now (they are
    not WAL-logged: any version read during the backup is as good as another)."""
    wanted = set(settings_inside)
    for number, source in enumerate(files):
        if source.path not in wanted:
            continue
        absolute = os.path.join(pgdata, source.path)
        try:
            with open(absolute, "rb") as file:
                status = os.fstat(file.fileno())
                content = file.read()
        except FileNotFoundError:
            continue  # copy_files skips it too
        except OSError as exc:
            raise PitrkitError(f"cannot read {absolute}: {exc.strerror}") from None
        clean = config_capture.scrubbed(content)
        if clean != content:
            log.info("copying %s without the password of its primary_conninfo", source.path)
            files[number] = SourceFile(source.path, len(clean), clean, stat.S_IMODE(status.st_mode),
                                       int(status.st_mtime))


def command(args: Namespace, config: Config, config_path: Path) -> str:
    # Taken into the first required repository, then copied into each other one before
    # success is said (backup/replicate.py): a required one that fails fails the command.
    repositories = open_all(config)
    first = next(each for each in repositories if each.required)
    others = [each for each in repositories if each is not first]
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        manifest = take_backup(first.archive, config.for_repository(first.settings), args.label,
                               incremental_on=args.parent,
                               incremental_wanted=args.incremental or args.parent is not None)
        summary = manifest.summary()
        if others:
            era = first.archive.era_of(summary.system_identifier)
            replicate.copy_to_others(first._replace(archive=era), others, summary)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        sys.stdout.write(codec.encode(summary).decode())
    else:
        print(summary.backup_id)
    if summary.parent is None:
        return (f"backup {summary.backup_id}: {summary.file_count} files, {human_bytes(summary.size)} stored as "
                f"{human_bytes(summary.stored_size)} in {len(manifest.parts)} parts; needs WAL "
                f"{summary.first_segment} to {summary.last_segment}")
    assert summary.changed_blocks is not None
    stored_blocks = sum(file.stored_blocks for file in manifest.block_files)
    said = (f"backup {summary.backup_id}: incremental on {summary.parent} (chain of {len(summary.chain) + 1}); "
            f"changed blocks from {summary.changed_blocks.method} ({summary.changed_blocks.note}); "
            f"{len(manifest.files)} files copied whole, {stored_blocks} changed blocks of "
            f"{len(manifest.block_files)} block-mapped files; {human_bytes(summary.size)} stored as "
            f"{human_bytes(summary.stored_size)}; needs WAL {summary.first_segment} to {summary.last_segment}")
    # How the changed blocks were found is worth a line even without -v: a fallback to
    # reading every page costs a full backup's reading time (stdout stays the id alone).
    if not args.json:
        print(f"pitrkit: {said}", file=sys.stderr)
    return said

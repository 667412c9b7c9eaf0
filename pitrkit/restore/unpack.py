"""Writing a base backup back into a data directory: directories and tablespace links
first, then the backup stream (the files' contents, concatenated in manifest order and
cut into parts) reassembled into files, then `backup_label` and `tablespace_map`, all
with the modes the manifest records, and made durable.

Parts are fetched and written in parallel, out of order: a part's bytes go straight to
their place in each file with pwrite(2), so nothing is staged and at most `workers` parts
are in memory. A file is created by whichever part reaches it first, and fsync'd once
its last byte is written (on threads of their own, while the writing goes on): a file
may span many parts, and a part may hold thousands of small files (`FileWriter`, which
restore/chain_writes.py shares).

The restored directory must survive a machine crash like a real data directory: every
file and every directory entry is fsync'd before `unpack` returns. Before `backup_label`
is written, every file is read back and checked against the backup's checksums
(restore/checked.py, format_version 2).

A manifest is data from storage, and anyone who can write to the storage can write one,
so what it makes restore write is contained. Its paths are plain relative paths (checked
as it is decoded, see catalog/documents.py), and each file or directory sits in a directory the
manifest lists or below a tablespace link (`check_manifest`), so nothing is written
through a link but the pg_tblspc links restore makes itself. Those point only where the
operator said (`--tablespace-map`) or at a tablespace's recorded location when that is
an existing, empty directory of the restoring user (`check_tablespace_directory`):
restore creates nothing outside the target directory on its own. Modes are masked to
what PostgreSQL itself creates (directories 0700 and files 0600, or 0750 and 0640 in a
cluster with group access): no setuid, setgid, sticky or world bit survives.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from pitrkit import durable
from pitrkit.catalog.documents import (
    CAPTURED_DIR,
    CHECKSUMMED_FORMAT_VERSION,
    INCREMENTAL_FORMAT_VERSION,
    BackupFile,
    BackupManifest,
    BackupPart,
    BackupTablespace,
    BlockFile,
)
from pitrkit.errors import PitrkitError, RefusedError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.restore import checked
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive

TABLESPACE_DIR = "pg_tblspc"
# Written by us from the manifest, whatever the file list says: they are what makes the
# server start from the backup's checkpoint and re-create the tablespace links.
BACKUP_LABEL = "backup_label"
TABLESPACE_MAP = "tablespace_map"
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600
_GROUP_DIR = 0o750
_GROUP_FILE = 0o640


class CorruptManifest(RefusedError):
    """The manifest decodes but does not describe a stream that can be written back."""


# --- tablespaces -------------------------------------------------------------------------


class TablespaceMapping(NamedTuple):
    """`--tablespace-map OLD=NEW`: OLD is a tablespace's original location or its name."""

    old: str
    new: Path


class TablespaceTarget(NamedTuple):
    tablespace: BackupTablespace
    location: Path  # where it is restored: the mapped NEW, or its original location
    mapped: bool = True  # by --tablespace-map; else its recorded location


def parse_tablespace_mappings(texts: Iterable[str]) -> list[TablespaceMapping]:
    mappings = []
    for text in texts:
        old, equals, new = text.partition("=")
        if not equals or not old or not new:
            raise UsageError(f"--tablespace-map {text!r}: expected OLD=NEW (a location or name, then a new directory)")
        if not os.path.isabs(new):
            # PostgreSQL stores tablespace locations as absolute paths.
            raise UsageError(f"--tablespace-map {text!r}: NEW must be an absolute path")
        mappings.append(TablespaceMapping(old, Path(os.path.normpath(new))))
    return mappings


def resolve_tablespaces(tablespaces: list[BackupTablespace], mappings: list[TablespaceMapping],
                        backup_id: str) -> list[TablespaceTarget]:
    """Where each tablespace of the backup goes. Refuses a mapping that names no
    tablespace (a typo would otherwise restore into the original location, which may
    be the live server's) and two tablespaces sharing a directory."""
    chosen: dict[int, Path] = {}
    for mapping in mappings:
        matches = [ts for ts in tablespaces if mapping.old in (ts.location, ts.name)
                   or os.path.normpath(mapping.old) == os.path.normpath(ts.location)]
        if not matches:
            known = ", ".join(f"{ts.name} ({ts.location})" for ts in tablespaces) or "none"
            raise RefusedError(f"--tablespace-map {mapping.old}={mapping.new}: backup {backup_id} has no "
                               f"tablespace at or named {mapping.old!r} (its tablespaces: {known})")
        for tablespace in matches:
            if tablespace.oid in chosen and chosen[tablespace.oid] != mapping.new:
                raise UsageError(f"--tablespace-map: tablespace {tablespace.name} is mapped twice")
            chosen[tablespace.oid] = mapping.new
    targets = [TablespaceTarget(ts, chosen.get(ts.oid, Path(ts.location)), ts.oid in chosen) for ts in tablespaces]
    seen: dict[Path, str] = {}
    for target in targets:
        if target.location in seen:
            raise UsageError(f"tablespaces {seen[target.location]} and {target.tablespace.name} would both "
                             f"be restored into {target.location}: map one of them elsewhere")
        seen[target.location] = target.tablespace.name
    return targets


def rewrite_tablespace_map(text: str, locations: dict[int, Path]) -> str:
    """The backup's `tablespace_map` with each link pointing at its restored location.
    At startup PostgreSQL removes and re-creates every pg_tblspc link from this file, so
    a stale location here would undo --tablespace-map. Paths are escaped the way
    pg_backup_start writes them (a backslash before \\, CR and LF)."""
    lines = []
    for line in text.splitlines():
        if not line:
            continue
        oid_text, _, _old = line.partition(" ")
        if not oid_text.isdigit() or int(oid_text) not in locations:
            raise CorruptManifest(f"tablespace_map line {line!r} names no tablespace of the backup")
        escaped = "".join("\\" + char if char in "\\\r\n" else char for char in str(locations[int(oid_text)]))
        lines.append(f"{oid_text} {escaped}\n")
    return "".join(lines)


def check_absent_or_empty(path: Path, what: str) -> None:
    """Refuse to write into anything that already has content: restoring over a live or
    another cluster's files is the one mistake a restore must never make."""
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise RefusedError(f"{what} {path}: its parent directory {path.parent} does not exist") from None
        return
    except NotADirectoryError:
        raise RefusedError(f"{what} {path} exists and is not a directory") from None
    except PermissionError:
        raise RefusedError(f"{what} {path}: permission denied") from None
    if entries:
        raise RefusedError(f"{what} {path} is not empty ({len(entries)} entries, e.g. {sorted(entries)[0]}): "
                           "restore into an absent or empty directory")


def check_tablespace_directory(target: TablespaceTarget, data_directory: Path, delta: bool = False) -> None:
    """A mapped directory is the operator's: absent (restore creates it) or empty. A
    recorded location comes from the manifest, which anyone able to write to the storage
    could have written: restore uses it only as an existing, empty directory (not a link)
    of the restoring user, so that nothing is created or taken over outside the target
    directory that the operator did not prepare. Neither may hold the data directory or
    lie inside it (the empty parent of a target directory still to be created is no
    place for a tablespace). With `delta` (restore --delta, restore/delta.py) either may
    hold files already: only the backup's own version directory in it is changed."""
    location, data = Path(os.path.realpath(target.location)), Path(os.path.realpath(data_directory))
    if location.is_relative_to(data) or data.is_relative_to(location):
        where = "is" if location == data else "is inside" if location.is_relative_to(data) else "holds"
        raise RefusedError(f"tablespace {target.tablespace.name or target.tablespace.oid!r} would be restored into "
                           f"{str(target.location)!r}, which {where} the target directory {data_directory}: map it "
                           "elsewhere with --tablespace-map")
    if target.mapped:
        if delta:
            if target.location.exists() and not target.location.is_dir():
                raise RefusedError(f"tablespace {target.tablespace.name}'s directory {target.location} exists and "
                                   "is not a directory")
            return
        check_absent_or_empty(target.location, f"tablespace {target.tablespace.name}'s directory")
        return
    tablespace = target.tablespace
    location = target.location
    try:
        status = os.lstat(location)
    except FileNotFoundError:
        why = "does not exist"
    except OSError as exc:
        why = f"cannot be checked ({exc.strerror})"
    else:
        if stat.S_ISLNK(status.st_mode):
            why = "is a symbolic link"
        elif not stat.S_ISDIR(status.st_mode):
            why = "is not a directory"
        elif status.st_uid != os.geteuid():
            why = "belongs to another user"
        else:
            try:
                why = "is not empty" if os.listdir(location) and not delta else ""
            except OSError as exc:
                why = f"cannot be listed ({exc.strerror})"
    if why:
        raise RefusedError(
            f"tablespace {tablespace.name or tablespace.oid!r} was at {str(location)!r}, which {why}: restore "
            f"writes a tablespace only into a directory --tablespace-map gives (--tablespace-map "
            f"{tablespace.name or location}=NEW_DIRECTORY) or into its recorded location when that is an "
            "existing, empty directory of the restoring user")


# --- the manifest ------------------------------------------------------------------------------


def check_manifest(manifest: BackupManifest) -> None:
    """What the decoding checks cannot see, one field at a time (catalog/documents.py): a
    format this pitrkit reads, the parts, block maps and block parts are this backup's
    objects, the tablespaces are distinct and the tablespace_map names
    only them, every file and directory sits in a listed directory or below a tablespace
    link (so no write goes through anything but the links restore makes), the counts add
    up, the recorded configuration files are in the stream. Raises CorruptManifest
    before anything is written."""
    where = f"backup {manifest.backup_id}'s manifest"
    if manifest.format_version > INCREMENTAL_FORMAT_VERSION:
        raise CorruptManifest(f"{where} has format_version {manifest.format_version}; this pitrkit reads up to "
                              f"{INCREMENTAL_FORMAT_VERSION}: restore with a newer pitrkit")
    # A full backup has block maps too (of its relation files, for the checksums and
    # for its children), but no block-mapped file.
    if manifest.parent is None and (manifest.block_files or manifest.block_parts):
        raise CorruptManifest(f"{where} lists block-mapped files but names no parent backup to take blocks from")
    if manifest.parent is not None and manifest.format_version < INCREMENTAL_FORMAT_VERSION:
        raise CorruptManifest(f"{where} names a parent backup in format_version {manifest.format_version}, "
                              "which has no incremental backups")
    for what, folder, keys in (("part", "data", [part.key for part in manifest.parts]),
                               ("block map", "blockmap", [part.key for part in manifest.block_maps]),
                               ("block part", "blocks", [part.key for part in manifest.block_parts])):
        prefix = f"backups/{manifest.backup_id}/{folder}/"
        for key in keys:
            if not key.startswith(prefix) or "\0" in key or any(name in ("", ".", "..") for name in key.split("/")):
                raise CorruptManifest(f"{where} lists {what} {key!r}, which is not an object of that backup")
    for block_file in manifest.block_files:
        if block_file.block_map >= len(manifest.block_maps):
            raise CorruptManifest(f"{where} puts the block map of {block_file.path} in object {block_file.block_map}, "
                                  f"of {len(manifest.block_maps)}")
    oids = [tablespace.oid for tablespace in manifest.tablespaces]
    if len(set(oids)) != len(oids):
        raise CorruptManifest(f"{where} lists a tablespace twice")
    links = {f"{TABLESPACE_DIR}/{oid}" for oid in oids}
    containers = {directory.path for directory in manifest.directories} | links
    written: list[BackupFile | BlockFile] = [*manifest.files, *manifest.block_files]  # what a restore writes
    if manifest.format_version >= CHECKSUMMED_FORMAT_VERSION:
        if unsummed := next((file.path for file in written if not file.checksum), None):
            raise CorruptManifest(f"{where} has format_version {manifest.format_version} but no checksum of "
                                  f"{unsummed}")
    for path in [directory.path for directory in manifest.directories if directory.path] + \
            [file.path for file in written]:
        parent = path.rpartition("/")[0]
        if parent not in containers:
            raise CorruptManifest(f"{where} lists {path!r}, whose directory {parent!r} it does not list")
    for file in written:
        if file.path in containers:
            raise CorruptManifest(f"{where} lists {file.path!r} both as a file and as a directory or tablespace link")
    # Each configuration file from outside the data directory travels in the stream as
    # .pitrkit-config/<name>; restore reads it there, once the rest is written.
    sizes = {file.path: file.size for file in manifest.files}
    for record in manifest.configuration.files if manifest.configuration is not None else []:
        stored = f"{CAPTURED_DIR}/{record.name}"
        if sizes.get(stored) != record.size:
            raise CorruptManifest(f"{where} records the configuration file {record.path} as {stored} of "
                                  f"{record.size} bytes, which it does not list")
    if manifest.file_count != len(written) or manifest.size != sum(file.size for file in written):
        raise CorruptManifest(f"{where} says {manifest.file_count} files and {manifest.size} bytes, but lists "
                              f"{len(written)} files of {sum(file.size for file in written)} bytes")
    if manifest.tablespace_map:
        rewrite_tablespace_map(manifest.tablespace_map,
                               {tablespace.oid: Path(tablespace.location) for tablespace in manifest.tablespaces})


class Modes(NamedTuple):
    """What PostgreSQL creates in a cluster: 0700/0600, or 0750/0640 with group access
    (a data directory of 0750). The manifest's modes are masked with these."""

    directory: int
    file: int

    @classmethod
    def of(cls, manifest: BackupManifest) -> Modes:
        root = next((directory.mode for directory in manifest.directories if not directory.path), _PRIVATE_DIR)
        # PostgreSQL starts only on a data directory of mode 0700, or 0750 for group access.
        return cls(_GROUP_DIR, _GROUP_FILE) if root & 0o077 == 0o050 else cls(_PRIVATE_DIR, _PRIVATE_FILE)

    def for_directory(self, mode: int) -> int:
        return mode & self.directory | _PRIVATE_DIR  # restore writes into it

    def for_file(self, mode: int) -> int:
        return mode & self.file


# --- the stream ----------------------------------------------------------------------------


class Slice(NamedTuple):
    """`length` bytes of file number `file`, at `file_offset` in it and `part_offset` in
    the part that holds them."""

    file: int
    file_offset: int
    part_offset: int
    length: int


def slices_by_part(files: list[BackupFile], parts: list[BackupPart]) -> list[list[Slice]]:
    """For each part, the file slices it holds. The files must tile the stream exactly:
    each non-empty file starts where the previous one ended, and the last one ends at
    the end of the last part; anything else is a corrupt manifest."""
    by_part: list[list[Slice]] = [[] for _ in parts]
    part, offset = 0, 0

    def skip_full_parts() -> None:
        nonlocal part, offset
        while part < len(parts) and offset == parts[part].size:
            part, offset = part + 1, 0

    skip_full_parts()
    for index, file in enumerate(files):
        if file.size == 0:
            continue
        if (file.part, file.offset) != (part, offset):
            raise CorruptManifest(f"manifest: {file.path} starts at part {file.part} offset {file.offset}, "
                                  f"but the previous file ends at part {part} offset {offset}")
        written = 0
        while written < file.size:
            if part >= len(parts):
                raise CorruptManifest(f"manifest: {file.path} runs past the last part")
            length = min(file.size - written, parts[part].size - offset)
            by_part[part].append(Slice(index, written, offset, length))
            written += length
            offset += length
            skip_full_parts()
    if part != len(parts):
        raise CorruptManifest(f"manifest: part {part} holds bytes that belong to no file")
    return by_part


# Files a FileWriter keeps open while no piece of theirs is being written: enough that a
# file's pieces in neighbouring objects (a part's small files, a chain restore's ranged
# reads of super-blocks) reuse its descriptor, few enough for any descriptor limit.
OPEN_FILES = 64
# Buffers per pwritev(2): Linux's IOV_MAX.
_IOV_MAX = 1024
# Bytes per write call: Linux (6.18, ext4) copied 768 MiB into the page cache in 32 MiB
# pwrite(2) calls, a part's slice, with 1.1-1.7 s of system time, in 1 MiB calls with
# 0.2 s (measured: 24 new files, fsync'd after). It was most of a full restore's CPU.
_CALL_BYTES = 1 << 20
# Complete files are made durable beside the writing, this many at once (fsync(2) mostly
# waits for the disk, and those in flight together share its flushes), at most
# `_FINISHING` waiting (each holds its descriptor until then).
_FSYNCS = 4
_FINISHING = 64


class _Pending:
    __slots__ = ("created", "pieces", "fd", "users")

    def __init__(self, pieces: int) -> None:
        self.created = False
        self.pieces = pieces  # not yet written
        self.fd = -1  # open while >= 0
        self.users = 0  # threads writing through fd now


def _write_all(fd: int, views: list[memoryview], offset: int) -> None:
    """`views`, back to back, at `offset`: calls of at most `_CALL_BYTES` (a larger view
    in pieces), one pwrite(2) for one view, pwritev(2) for more, again for what a short
    write left."""
    if any(len(view) > _CALL_BYTES for view in views):
        views = [view[start : start + _CALL_BYTES] for view in views for start in range(0, len(view), _CALL_BYTES)]
    first = 0
    while first < len(views):
        end, size = first + 1, len(views[first])
        while end < len(views) and end - first < _IOV_MAX and size + len(views[end]) <= _CALL_BYTES:
            size += len(views[end])
            end += 1
        written = os.pwrite(fd, views[first], offset) if end == first + 1 else os.pwritev(fd, views[first:end], offset)
        offset += written
        while first < end and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _runs(pieces: list[tuple[int, memoryview]]) -> Iterator[tuple[int, list[memoryview]]]:
    """A file's pieces (offset, bytes) sorted by offset, as runs that follow each other
    in the file: (offset, their bytes)."""
    start, end = -1, -1
    views: list[memoryview] = []
    for offset, data in pieces:
        if offset != end:
            if views:
                yield start, views
            start, views, end = offset, [], offset
        views.append(data)
        end += len(data)
    if views:
        yield start, views


def finish_file(fd: int, file: BackupFile | BlockFile, modes: Modes) -> None:
    """Mode, mtime, fsync, close: the file is complete and durable."""
    try:
        os.fchmod(fd, modes.for_file(file.mode))
        os.utime(fd, (file.mtime, file.mtime))
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter:
    """Writes the pieces of files into one data directory, from many threads, in any
    order: `pieces[n]` is how many writes file n gets. A file is created by whichever
    piece reaches it first (a block-mapped file at its recorded length, which its blocks
    then fill) and finished by whichever writes its last.

    A complete file is made durable (mode, mtime, fsync) on a thread of its own while
    the writing goes on; `close` returns once all of them are, and must be called.

    A file stays open between its pieces, up to `open_files` files that no thread is
    writing (beyond that the least recently written is closed, and opened again should
    another piece come): a file whose pieces come far apart (blocks of a chain restore,
    from an old backup's stream early and a recent one's super-blocks late) holds no
    descriptor in between, so how many files are half-written is not bounded by the
    descriptor limit, while neighbouring pieces cost no open(2) and close(2) each. The
    pieces one call brings for one file are written in file order, those that follow
    each other with one pwritev(2). The fsync after the last piece makes all of the
    file's data durable, whichever descriptor wrote it.

    `existing`: every file with pieces is already there at its recorded length
    (restore/delta.py made it so) and they are written into it: nothing is created or
    truncated, and a file with no pieces is left alone."""

    def __init__(self, root: Path, files: Sequence[BackupFile | BlockFile], pieces: list[int],
                 modes: Modes, existing: bool = False, open_files: int = OPEN_FILES) -> None:
        self.root = root
        self.modes = modes
        self.files = files
        self.existing = existing
        self._pending = {index: _Pending(count) for index, count in enumerate(pieces) if count}
        self._lock = threading.Lock()
        self._open_files = open_files
        self._idle: OrderedDict[int, None] = OrderedDict()  # open files no thread writes, least recent first
        self._finishing = ThreadPoolExecutor(_FSYNCS, thread_name_prefix="restore-fsync")
        self._finish_slots = threading.Semaphore(_FINISHING)
        self._unfinished: list[PitrkitError] = []

    def create_empty_files(self) -> None:
        if self.existing:
            return
        for index, file in enumerate(self.files):
            if index not in self._pending:
                self._finish(index, self._create(file))

    def _finish(self, index: int, fd: int) -> None:
        """Hand the complete file `index` (open as `fd`) to be made durable and closed."""
        self._finish_slots.acquire()

        def finish() -> None:
            try:
                finish_file(fd, self.files[index], self.modes)
            except OSError as exc:
                with self._lock:
                    self._unfinished.append(PitrkitError(f"cannot finish {self.root / self.files[index].path}: "
                                                         f"{exc.strerror}"))
            finally:
                self._finish_slots.release()

        try:
            self._finishing.submit(finish)
        except BaseException:
            self._finish_slots.release()
            os.close(fd)
            raise

    def _create(self, file: BackupFile | BlockFile) -> int:
        path = self.root / file.path
        if self.existing:
            try:
                return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise PitrkitError(f"cannot open {path}: {exc.strerror}") from None
        try:
            # O_EXCL: the directory started empty, so an existing file is a manifest
            # naming a path twice.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE_FILE)
        except FileExistsError:
            raise CorruptManifest(f"manifest lists {file.path} twice") from None
        except OSError as exc:
            raise PitrkitError(f"cannot create {path}: {exc.strerror}") from None
        if isinstance(file, BlockFile):
            try:
                os.ftruncate(fd, file.size)
            except OSError as exc:
                os.close(fd)
                raise PitrkitError(f"cannot size {path}: {exc.strerror}") from None
        return fd

    def _acquire(self, index: int) -> int:
        """File `index`'s descriptor, for this thread to write through until `_release`."""
        with self._lock:
            # Opened under the lock: another piece of the file waits for it to be created.
            entry = self._pending[index]
            if entry.fd < 0:
                if entry.created:
                    path = self.root / self.files[index].path
                    try:
                        entry.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        raise PitrkitError(f"cannot write {path}: {exc.strerror}") from None
                else:
                    entry.fd = self._create(self.files[index])
                    entry.created = True
            else:
                self._idle.pop(index, None)
            entry.users += 1
            return entry.fd

    def _release(self, index: int, written: int) -> None:
        """This thread is done with file `index`, having written `written` pieces: the
        last piece finishes the file; otherwise it stays open for the next, as long as
        it is among the `open_files` most recently written."""
        closing = []
        with self._lock:
            entry = self._pending[index]
            entry.users -= 1
            entry.pieces -= written
            last = entry.pieces == 0  # and so no other thread holds it: it has no piece left
            if last:
                fd, entry.fd = entry.fd, -1
            elif not entry.users:
                self._idle[index] = None
                while len(self._idle) > self._open_files:
                    evicted = self._pending[self._idle.popitem(last=False)[0]]
                    closing.append(evicted.fd)
                    evicted.fd = -1
        for each in closing:
            os.close(each)
        if last:
            self._finish(index, fd)

    def write(self, index: int, data: memoryview, offset: int) -> None:
        """One piece of file `index`: `data` at `offset`."""
        self.write_pieces([(index, offset, data)])

    def write_slices(self, slices: list[Slice], data: bytes | memoryview) -> None:
        """The slices of one fetched object (a part, a super-block) into their files."""
        view = memoryview(data)
        self.write_pieces([(piece.file, piece.file_offset, view[piece.part_offset : piece.part_offset + piece.length])
                           for piece in slices])

    def write_pieces(self, pieces: list[tuple[int, int, memoryview]]) -> None:
        """Pieces (file, offset, bytes), of one fetched object or several: each file's
        written through one descriptor, in file order."""
        by_file: dict[int, list[tuple[int, memoryview]]] = {}
        for index, offset, data in pieces:
            by_file.setdefault(index, []).append((offset, data))
        for index, file_pieces in by_file.items():
            file_pieces.sort(key=_offset)
            fd = self._acquire(index)
            try:
                for offset, views in _runs(file_pieces):
                    _write_all(fd, views, offset)
            except OSError as exc:
                self._release(index, 0)  # left open: `close` closes it
                raise PitrkitError(f"cannot write {self.root / self.files[index].path}: {exc.strerror}") from None
            self._release(index, len(file_pieces))

    def close(self) -> None:
        """Return once every complete file is durable (PitrkitError if one could not be
        made so), after closing what a failed restore left open."""
        self._finishing.shutdown(wait=True)
        with self._lock:
            for entry in self._pending.values():
                if entry.fd >= 0:
                    os.close(entry.fd)
                    entry.fd = -1
            self._idle.clear()
        if self._unfinished:
            raise self._unfinished[0]


def _offset(piece: tuple[int, memoryview]) -> int:
    return piece[0]


def count_pieces(files: int, slices: Iterable[list[Slice]]) -> list[int]:
    """How many writes each of `files` files gets from these objects' slices."""
    pieces = [0] * files
    for object_slices in slices:
        for piece in object_slices:
            pieces[piece.file] += 1
    return pieces


def read_part(archive: Archive, part: BackupPart) -> bytes:
    """The verified plaintext of one part: `objects.decode` checks it against the
    object's own header; the manifest's size and checksum must match too, so a part
    swapped for another backup's is caught."""
    blob = _fetch_part(archive, part)
    try:
        data = objects.decode(part.key, blob, archive.plugins.compressor, archive.cipher())
        header, _ = objects.read_header(part.key, blob)
    except objects.CorruptObject as exc:
        raise RefusedError(str(exc)) from None
    _check_part(part, header, data)
    return data


_scratch = threading.local()


def read_part_here(archive: Archive, part: BackupPart) -> memoryview:
    """As `read_part`, decoded into this thread's buffer for parts: a view valid until
    the thread reads its next part so (each writing task reads one, writes its slices,
    and returns). A restore decodes gigabytes of 32 MiB parts: into memory used again
    it costs a third of the CPU of new memory for each (plugins/compression.py)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < part.size:  # the manifest's size, checked at most MAX_PART_SIZE
        buffer = _scratch.buffer = bytearray(part.size)
    blob = _fetch_part(archive, part)
    try:
        header, data = objects.decode_into(part.key, blob, archive.plugins.compressor, archive.cipher(), buffer)
    except objects.CorruptObject as exc:
        raise RefusedError(str(exc)) from None
    _check_part(part, header, data)
    return data


def _fetch_part(archive: Archive, part: BackupPart) -> bytes:
    try:
        return archive.get(part.key)
    except ObjectNotFound:
        raise RefusedError(f"backup part {part.key} is missing from the archive") from None


def _check_part(part: BackupPart, header: objects.ObjectHeader, data: bytes | memoryview) -> None:
    if len(data) != part.size or header.digest != part.digest:
        raise RefusedError(f"backup part {part.key} is not the one the manifest lists "
                           f"({len(data)} bytes, {header.digest[:25]}...)")


# --- the whole directory ---------------------------------------------------------------------


def _mkdir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=_PRIVATE_DIR, exist_ok=True)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise PitrkitError(f"cannot create directory {path}: {exc.strerror}") from None




def make_directories(root: Path, manifest: BackupManifest, tablespaces: list[TablespaceTarget],
                     masks: Modes) -> list[Path]:
    """Create the directory tree, parents first, and the tablespace links; returns every
    directory whose entries change (to fsync at the end)."""
    modes = {directory.path: masks.for_directory(directory.mode) for directory in manifest.directories}
    links = {f"{TABLESPACE_DIR}/{target.tablespace.oid}": target for target in tablespaces}
    _mkdir(root, masks.directory)
    touched = [root.parent, root]
    if tablespaces or TABLESPACE_DIR in modes:
        _mkdir(root / TABLESPACE_DIR, modes.get(TABLESPACE_DIR, masks.directory))
        touched.append(root / TABLESPACE_DIR)
    # The links before anything below them: tablespace files are written through them.
    for link, target in links.items():
        _mkdir(target.location, modes.get(link, masks.directory))
        try:
            os.symlink(target.location, root / link)
        except OSError as exc:
            raise PitrkitError(f"cannot link {root / link} to {target.location}: {exc.strerror}") from None
        touched += [target.location.parent, target.location]
    for path in sorted(modes, key=lambda p: p.count("/")):
        if path and path not in links and path != TABLESPACE_DIR:
            _mkdir(root / path, modes[path])
            touched.append(root / path)
    return touched


def unpack(archive: Archive, manifest: BackupManifest, root: Path, tablespaces: list[TablespaceTarget],
           workers: int, advance: Callable[[int], None]) -> None:
    """Write the backup into `root` (absent or empty; its parent exists) and the
    tablespace locations, check every file against the backup's checksums
    (restore/checked.py); return once all of it is durable. `advance(n)` is called with
    the plaintext bytes of each part written."""
    check_manifest(manifest)
    if manifest.block_files:
        raise CorruptManifest(f"backup {manifest.backup_id} is incremental: it is restored with its chain "
                              "(restore/chain.py)")
    slices = slices_by_part(manifest.files, manifest.parts)
    block_checksums = checked.stream_map_checksums(archive, manifest)
    modes = Modes.of(manifest)
    touched = make_directories(root, manifest, tablespaces, modes)
    writer = FileWriter(root, manifest.files, count_pieces(len(manifest.files), slices), modes)

    def restore(number: int, part: BackupPart) -> Callable[[], None]:
        def task() -> None:
            writer.write_slices(slices[number], read_part_here(archive, part))
            advance(part.size)
        return task

    write_files(writer, (restore(number, manifest.parts[number]) for number in in_turns(slices)), workers)
    checked.check_directory(root, manifest, manifest.files, block_checksums, workers)
    finish_directory(root, manifest, tablespaces, touched)


def in_turns(slices: list[list[Slice]]) -> list[int]:
    """The parts' numbers in the order to write them: the parts of a file (the one each
    part gives most bytes to) in turn with other files', the first of each, then the
    second... Workers writing into one file take turns at its inode's lock, and Linux
    spins on it: 4-10 % of a full restore's CPU when both workers wrote parts of the same
    1 GiB segment."""
    by_file: dict[int, list[int]] = {}
    for number, pieces in enumerate(slices):
        main = max(pieces, key=_length).file if pieces else -1
        by_file.setdefault(main, []).append(number)
    return [number for turn in itertools.zip_longest(*by_file.values()) for number in turn if number is not None]


def _length(piece: Slice) -> int:
    return piece.length


def write_files(writer: FileWriter, tasks: Iterable[Callable[[], None]], workers: int) -> None:
    """Run the tasks (each fetches an object and writes its slices) on `workers` threads,
    after creating the files no task writes. A task starts only when a worker is free to
    run it, so memory holds at most `workers` fetched objects and none waiting; after a
    failure nothing new starts. Returns once every file is durable."""
    free = threading.Semaphore(workers)
    failed = threading.Event()

    def run(task: Callable[[], None]) -> None:
        try:
            task()
        except BaseException:
            failed.set()
            raise
        finally:
            free.release()

    futures: list[Future[None]] = []
    try:
        writer.create_empty_files()
        with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
            for task in tasks:
                free.acquire()
                if failed.is_set():
                    break
                futures.append(pool.submit(run, task))
        for future in futures:
            future.result()
    except BaseException:
        with contextlib.suppress(PitrkitError):  # the failure already raised says more
            writer.close()
        raise
    writer.close()


def finish_directory(root: Path, manifest: BackupManifest, tablespaces: list[TablespaceTarget],
                     touched: list[Path]) -> None:
    """`backup_label` and `tablespace_map` from the manifest, then every directory whose
    entries changed made durable."""
    try:
        durable.write_file(root / BACKUP_LABEL, manifest.backup_label, _PRIVATE_FILE)
        if manifest.tablespace_map:
            locations = {target.tablespace.oid: target.location for target in tablespaces}
            durable.write_file(root / TABLESPACE_MAP, rewrite_tablespace_map(manifest.tablespace_map, locations),
                               _PRIVATE_FILE)
        for directory in dict.fromkeys(touched):
            durable.fsync_directory(directory)
    except OSError as exc:
        raise PitrkitError(f"cannot finish {root}: {exc.filename}: {exc.strerror}") from None

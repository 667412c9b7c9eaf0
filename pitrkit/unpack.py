"""Writing a base backup back into a data directory: directories and tablespace links
first, then the backup stream (the files' contents, concatenated in manifest order and
cut into parts) reassembled into files, then `backup_label` and `tablespace_map`, all
with the modes the manifest records, and made durable.

Parts are fetched and written in parallel, out of order: a part's bytes go straight to
their place in each file with pwrite(2), so nothing is staged and at most `workers` parts
are in memory. A file is opened once, by whichever part reaches it first, and fsync'd and
closed by whichever writes its last byte: a file may span many parts, and a part may hold
thousands of small files.

The restored directory must survive a machine crash like a real data directory: every
file and every directory entry is fsync'd before `unpack` returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from pitrkit import objects
from pitrkit.archive import Archive
from pitrkit.catalog import BackupFile, BackupManifest, BackupPart, BackupTablespace
from pitrkit.errors import PitrkitError, RefusedError, UsageError
from pitrkit.hookspecs import ObjectNotFound

TABLESPACE_DIR = "pg_tblspc"
# Written by us from the manifest, whatever the file list says: they are what makes the
# server start from the backup's checkpoint and re-create the tablespace links.
BACKUP_LABEL = "backup_label"
TABLESPACE_MAP = "tablespace_map"
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


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
    targets = [TablespaceTarget(ts, chosen.get(ts.oid, Path(ts.location))) for ts in tablespaces]
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


# --- the stream ----------------------------------------------------------------------------


class Slice(NamedTuple):
    """`length` bytes of file number `file`, at `file_offset` in it and `part_offset` in
    the part that holds them."""

    file: int
    file_offset: int
    part_offset: int
    length: int


def _check_path(path: str) -> None:
    # A manifest is data from storage: it must not write outside the data directory
    # (tablespace files go through the pg_tblspc links we create, by design).
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise CorruptManifest(f"manifest path {path!r} is not a plain relative path")


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
        _check_path(file.path)
        if file.size < 0:
            raise CorruptManifest(f"manifest: {file.path} has a negative size")
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


class _OpenFile:
    __slots__ = ("fd", "pending")

    def __init__(self, pending: int) -> None:
        self.fd = -1
        self.pending = pending  # slices not yet written


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _finish_file(fd: int, file: BackupFile) -> None:
    """Mode, mtime, fsync, close: the file is complete and durable."""
    try:
        os.fchmod(fd, file.mode & 0o7777)
        os.utime(fd, (file.mtime, file.mtime))
        os.fsync(fd)
    finally:
        os.close(fd)


class StreamWriter:
    """Writes parts into the files of one data directory, from many threads."""

    def __init__(self, root: Path, files: list[BackupFile], slices: list[list[Slice]]) -> None:
        self.root = root
        self.files = files
        self.slices = slices
        pending = [0] * len(files)
        for part_slices in slices:
            for piece in part_slices:
                pending[piece.file] += 1
        self._open = {index: _OpenFile(count) for index, count in enumerate(pending) if count}
        self._lock = threading.Lock()

    def create_empty_files(self) -> None:
        for file in self.files:
            if file.size == 0:
                _finish_file(self._create(file), file)

    def _create(self, file: BackupFile) -> int:
        path = self.root / file.path
        try:
            # O_EXCL: the directory started empty, so an existing file is a manifest
            # naming a path twice.
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE_FILE)
        except FileExistsError:
            raise CorruptManifest(f"manifest lists {file.path} twice") from None
        except OSError as exc:
            raise PitrkitError(f"cannot create {path}: {exc.strerror}") from None

    def write_part(self, number: int, data: bytes) -> None:
        view = memoryview(data)
        for piece in self.slices[number]:
            file = self.files[piece.file]
            entry = self._open[piece.file]
            with self._lock:
                if entry.fd < 0:
                    entry.fd = self._create(file)
                fd = entry.fd
            try:
                _write_all(fd, view[piece.part_offset : piece.part_offset + piece.length], piece.file_offset)
            except OSError as exc:
                raise PitrkitError(f"cannot write {self.root / file.path}: {exc.strerror}") from None
            with self._lock:
                entry.pending -= 1
                last = entry.pending == 0
                if last:
                    entry.fd = -1
            if last:
                try:
                    _finish_file(fd, file)
                except OSError as exc:
                    raise PitrkitError(f"cannot finish {self.root / file.path}: {exc.strerror}") from None

    def close_unfinished(self) -> None:
        """After a failure: close whatever is still open (the directory is incomplete)."""
        with self._lock:
            for entry in self._open.values():
                if entry.fd >= 0:
                    os.close(entry.fd)
                    entry.fd = -1


def read_part(archive: Archive, part: BackupPart) -> bytes:
    """The verified plaintext of one part: `objects.decode` checks it against the
    object's own header; the manifest's size and checksum must match too, so a part
    swapped for another backup's is caught."""
    try:
        blob = archive.get(part.key)
    except ObjectNotFound:
        raise RefusedError(f"backup part {part.key} is missing from the archive") from None
    try:
        data = objects.decode(part.key, blob, archive.plugins.compressor, archive.cipher())
        header, _ = objects.read_header(part.key, blob)
    except objects.CorruptObject as exc:
        raise RefusedError(str(exc)) from None
    if len(data) != part.size or header.sha256.hex() != part.sha256:
        raise RefusedError(f"backup part {part.key} is not the one the manifest lists "
                           f"({len(data)} bytes, sha256 {header.sha256.hex()[:16]}...)")
    return data


# --- the whole directory ---------------------------------------------------------------------


def _mkdir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=_PRIVATE_DIR, exist_ok=True)
        os.chmod(path, mode & 0o7777)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise PitrkitError(f"cannot create directory {path}: {exc.strerror}") from None


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_small_file(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _PRIVATE_FILE)
    try:
        _write_all(fd, memoryview(content.encode()), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(root: Path, manifest: BackupManifest, tablespaces: list[TablespaceTarget]) -> list[Path]:
    """Create the directory tree, parents first, and the tablespace links; returns every
    directory whose entries change (to fsync at the end)."""
    modes = {directory.path: directory.mode for directory in manifest.directories}
    for path in modes:
        if path:
            _check_path(path)
    links = {f"{TABLESPACE_DIR}/{target.tablespace.oid}": target for target in tablespaces}
    # PostgreSQL starts only on a data directory of mode 0700, or 0750 for group access.
    _mkdir(root, 0o750 if modes.get("", _PRIVATE_DIR) & 0o077 == 0o050 else _PRIVATE_DIR)
    touched = [root.parent, root]
    if tablespaces or TABLESPACE_DIR in modes:
        _mkdir(root / TABLESPACE_DIR, modes.get(TABLESPACE_DIR, _PRIVATE_DIR))
        touched.append(root / TABLESPACE_DIR)
    # The links before anything below them: tablespace files are written through them.
    for link, target in links.items():
        _mkdir(target.location, modes.get(link, _PRIVATE_DIR))
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
    tablespace locations; return once all of it is durable. `advance(n)` is called with
    the plaintext bytes of each part written."""
    slices = slices_by_part(manifest.files, manifest.parts)
    touched = make_directories(root, manifest, tablespaces)
    writer = StreamWriter(root, manifest.files, slices)
    try:
        writer.create_empty_files()
        _write_parts(archive, manifest.parts, writer, workers, advance)
    finally:
        writer.close_unfinished()
    try:
        _write_small_file(root / BACKUP_LABEL, manifest.backup_label)
        if manifest.tablespace_map:
            locations = {target.tablespace.oid: target.location for target in tablespaces}
            _write_small_file(root / TABLESPACE_MAP, rewrite_tablespace_map(manifest.tablespace_map, locations))
        for directory in dict.fromkeys(touched):
            _fsync_directory(directory)
    except OSError as exc:
        raise PitrkitError(f"cannot finish {root}: {exc.filename}: {exc.strerror}") from None


def _write_parts(archive: Archive, parts: list[BackupPart], writer: StreamWriter, workers: int,
                 advance: Callable[[int], None]) -> None:
    # A part is fetched only when a worker is free to write it, so memory holds at most
    # `workers` parts being written and none waiting; after a failure nothing new starts.
    free = threading.Semaphore(workers)
    failed = threading.Event()

    def restore(number: int, part: BackupPart) -> None:
        try:
            writer.write_part(number, read_part(archive, part))
            advance(part.size)
        except BaseException:
            failed.set()
            raise
        finally:
            free.release()

    futures: list[Future[None]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="restore") as pool:
        for number, part in enumerate(parts):
            free.acquire()
            if failed.is_set():
                break
            futures.append(pool.submit(restore, number, part))
    for future in futures:
        future.result()

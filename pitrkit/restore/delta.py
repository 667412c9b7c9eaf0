"""`restore --delta`: a backup written into an existing data directory (a stopped
cluster, an old standby, a restore run again) by fetching only what differs from it.

The one exception to "the target must be empty", so its safety comes first, all before
the lease and anything written (`check_target`, `check_backup`): a non-empty target must
be a data directory (PG_VERSION) of the restoring user with no postmaster.pid (a running
server, or one that stopped uncleanly), and the backup must record checksums (format_version
2): a format_version 1 backup is refused, since nothing could tell an unchanged local file
from a changed one.

Then, in this order (`restore`):

1. The local pg_control goes first (its bytes kept in memory when they are the backup's),
   with any backup_label, tablespace_map, recovery.signal and standby.signal: from here
   until the end the directory is one PostgreSQL refuses to start, so an interrupted delta
   is never mistaken for a cluster; running `restore --delta` again finishes it.
2. Everything the backup does not have is removed (files, directories, links; PostgreSQL's
   exclusions too: WAL in pg_wal, replication slots, postmaster.opts, as pgBackRest's
   delta does), under the data directory and under each tablespace's version directory
   (PG_<major>_<catalog>; other entries of a tablespace location are left alone). A link
   is removed, never followed: pg_tblspc's links are made again as a restore makes them,
   and a directory of the backup that is a link here (pg_wal on another disk) becomes a
   directory. Then the directories are made with the backup's modes.
3. Each file of the backup is compared, in parallel: absent, or not a regular file of this
   user, it is fetched whole; a relation file with a block map is hashed block by block
   against the map's checksums (restore/checked.differing_blocks) and the differing blocks
   are fetched; any other file is fetched whole when its size or XXH3-128 differs. Every
   file is cut or extended to its recorded length; a kept file gets its recorded mode and
   mtime.
4. The restore's plan (a full backup's parts, or an incremental's `chain.ChainPlan`) is cut
   down to the wanted byte ranges: a part, super-block or ranged read holding none is not
   fetched. The rest is written into the files in place (`unpack.FileWriter(existing=True)`).
5. Every file is read back against the backup's checksums (restore/checked.py), as after
   any restore: a wrong comparison cannot pass. Then backup_label and tablespace_map, and
   last pg_control, written aside, checked and renamed into place.
"""

from __future__ import annotations

import bisect
import os
import shutil
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import msgspec

from pitrkit import durable
from pitrkit.catalog import checksums
from pitrkit.catalog.documents import (
    BLOCK_SIZE,
    CHECKSUMMED_FORMAT_VERSION,
    BackupFile,
    BackupManifest,
    BackupPart,
    BlockFile,
)
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.progress import human_bytes
from pitrkit.restore import chain, chain_writes, checked, unpack
from pitrkit.restore.unpack import CorruptManifest, FileWriter, Slice, TablespaceTarget
from pitrkit.storage.archive import Archive

CONTROL_FILE = "global/pg_control"
# pg_control's new copy is written here, checked, then renamed over the real name last.
_CONTROL_ASIDE = "global/pg_control.pitrkit-delta"
# Removed with pg_control before anything else: left over, they would make a half-restored
# directory look like one ready to recover (a restore writes its own at the end).
_STARTERS = ("backup_label", "tablespace_map", "recovery.signal", "standby.signal")
_VERSION_FILE = "PG_VERSION"
_PID_FILE = "postmaster.pid"

Ranges = list[tuple[int, int]]  # byte ranges [start, end) of a file, in order, disjoint


class DeltaReport(NamedTuple):
    kept: int  # files already as backed up
    whole: int  # files fetched whole (absent or differing)
    patched: int  # relation files of which only differing blocks were fetched
    blocks: int  # those blocks
    removed: int  # files, links and directories the backup does not have
    fetched: int  # stored bytes of data read from the archive (parts, super-blocks)
    restore_reads: int  # what a restore into an empty directory reads of the same

    def describe(self) -> str:
        share = f" ({self.fetched / self.restore_reads:.1%})" if self.restore_reads else ""
        return (f"delta: {self.kept} files kept, {self.whole} fetched whole, {self.patched} patched ({self.blocks} "
                f"blocks), {self.removed} removed; fetched {human_bytes(self.fetched)} of stored data{share} of "
                f"the {human_bytes(self.restore_reads)} a restore into an empty directory reads (block maps "
                f"besides): {self.fetched} of {self.restore_reads} bytes")


# --- before anything is written -------------------------------------------------------------------


def check_target(target_dir: Path) -> bool:
    """Whether `target_dir` holds a cluster to restore over (False: absent or empty, a
    normal restore); refuses one that is not a stopped cluster of this user."""
    try:
        entries = os.listdir(target_dir)
    except FileNotFoundError:
        unpack.check_absent_or_empty(target_dir, "--target-dir")  # names a missing parent
        return False
    except NotADirectoryError:
        raise RefusedError(f"--target-dir {target_dir} exists and is not a directory") from None
    except PermissionError:
        raise RefusedError(f"--target-dir {target_dir}: permission denied") from None
    if not entries:
        return False
    if os.path.lexists(target_dir / _PID_FILE):
        raise RefusedError(f"--target-dir {target_dir} has a {_PID_FILE}: a server is running there, or stopped "
                           "without cleaning up; stop it (pg_ctl stop), or, after making sure no postmaster runs on "
                           f"it, remove the stale {_PID_FILE}; then restore --delta again")
    if not os.path.isfile(target_dir / _VERSION_FILE) or os.path.islink(target_dir / _VERSION_FILE):
        raise RefusedError(f"--target-dir {target_dir} is not empty and is not a PostgreSQL data directory (no "
                           f"{_VERSION_FILE}): restore --delta removes what the backup lacks, so it writes only over "
                           "a cluster; restore into an absent or empty directory instead")
    if os.stat(target_dir).st_uid != os.geteuid():
        raise RefusedError(f"--target-dir {target_dir} belongs to another user: restore --delta runs as the OS user "
                           "that owns the cluster")
    return True


def occupied(location: Path) -> bool:
    """Whether a tablespace location has entries (then a --delta restore compares even
    into an empty data directory)."""
    try:
        return bool(os.listdir(location))
    except OSError:
        return False


def check_backup(manifest: BackupManifest) -> None:
    if manifest.format_version < CHECKSUMMED_FORMAT_VERSION:
        raise RefusedError(f"backup {manifest.backup_id} is format_version {manifest.format_version}, which records "
                           "no checksums to compare local files with: restore --delta needs a format_version 2 "
                           "backup; restore this one into an empty directory instead")


# --- the restore ------------------------------------------------------------------------------------


def restore(archive: Archive, manifest: BackupManifest, links: chain.ChainPlan | None, root: Path,
            tablespaces: list[TablespaceTarget], workers: int, advance: Callable[[int], None]) -> DeltaReport:
    """Make the cluster at `root` (checked by `check_target`) and the tablespace
    locations the backup, fetching what differs (`links`: an incremental's planned
    chain); return once all of it is checked and durable."""
    check_backup(manifest)
    files, block_checksums = _files_of(archive, manifest, links)
    control = next((index for index, file in enumerate(files) if file.path == CONTROL_FILE), None)
    modes = unpack.Modes.of(manifest)

    held = make_unstartable(root, files[control] if control is not None else None)
    removed = remove_extras(root, manifest, {file.path for file in files}, tablespaces)
    touched = unpack.make_directories(root, manifest, tablespaces, modes)
    if control is not None:
        files[control] = msgspec.structs.replace(files[control], path=_CONTROL_ASIDE)
    kept_control = {control} if control is not None and held is not None else set()
    wanted = compare(root, files, block_checksums, modes, workers, kept_control)
    if control is not None and held is not None:
        _write_held(root, files[control], held, modes)
    if links is None:
        fetched, restore_reads = _fetch_parts(archive, manifest, root, files, wanted, modes, workers, advance)
    else:
        narrowed = narrow_chain(links, files, wanted)
        chain_writes.write(narrowed, root, modes, workers, advance, existing=True)
        fetched, restore_reads = _chain_reads(narrowed), _chain_reads(links)

    checked.check_directory(root, manifest, [file for index, file in enumerate(files) if index != control],
                            block_checksums, workers)
    if control is not None:
        checked.check_file(root, manifest.backup_id, files[control], None)
    unpack.finish_directory(root, manifest, tablespaces, touched)
    if control is not None:
        try:
            os.rename(root / _CONTROL_ASIDE, root / CONTROL_FILE)
            durable.fsync_directory((root / CONTROL_FILE).parent)
        except OSError as exc:
            raise PitrkitError(f"cannot put {root / CONTROL_FILE} in place: {exc.strerror}") from None
    patched = [ranges for index, ranges in enumerate(wanted)
               if ranges and files[index].path in block_checksums and ranges != [(0, files[index].size)]]
    whole = sum(1 for ranges in wanted if ranges) - len(patched)
    return DeltaReport(kept=len(files) - whole - len(patched), whole=whole, patched=len(patched),
                       blocks=sum((end - start) // BLOCK_SIZE for ranges in patched for start, end in ranges),
                       removed=removed, fetched=fetched, restore_reads=restore_reads)


def _files_of(archive: Archive, manifest: BackupManifest, links: chain.ChainPlan | None
              ) -> tuple[list[BackupFile | BlockFile], dict[str, bytes]]:
    """What the backup restores, and the block checksums of its relation files by path."""
    if links is not None:
        files = list(links.files)  # the chain checked each path is listed once
        return files, links.block_checksums
    unpack.check_manifest(manifest)
    if manifest.block_files:
        raise CorruptManifest(f"backup {manifest.backup_id} is incremental: it is restored with its chain")
    if len({file.path for file in manifest.files}) != len(manifest.files):
        raise CorruptManifest(f"backup {manifest.backup_id}'s manifest lists a file twice")
    return list(manifest.files), checked.stream_map_checksums(archive, manifest)


def _fetch_parts(archive: Archive, manifest: BackupManifest, root: Path, files: list[BackupFile | BlockFile],
                 wanted: Sequence[Ranges], modes: unpack.Modes, workers: int, advance: Callable[[int], None]
                 ) -> tuple[int, int]:
    """A full backup's parts holding wanted ranges, fetched and written in place; their
    stored bytes, and all parts'."""
    slices = unpack.slices_by_part(manifest.files, manifest.parts)
    reads = [(part, kept) for part, each in zip(manifest.parts, slices, strict=True)
             if (kept := wanted_slices(each, wanted))]
    writer = FileWriter(root, files, unpack.count_pieces(len(files), [kept for _, kept in reads]), modes,
                        existing=True)

    def task(part: BackupPart, kept: list[Slice]) -> Callable[[], None]:
        def run() -> None:
            writer.write_slices(kept, unpack.read_part_here(archive, part))
            advance(sum(piece.length for piece in kept))
        return run

    unpack.write_files(writer, [task(part, kept) for part, kept in reads], workers)
    return sum(part.stored_size for part, _ in reads), sum(part.stored_size for part in manifest.parts)


def make_unstartable(root: Path, control: BackupFile | BlockFile | None) -> bytes | None:
    """Remove pg_control and the files that would start recovery, durably: the first
    write. Returns pg_control's bytes when they are the backup's (written back at the end
    rather than fetched)."""
    held = None
    path = root / CONTROL_FILE
    try:
        if control is not None and control.checksum and os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as reader:
                data = reader.read(control.size + 1)
            if len(data) == control.size and checksums.of_bytes(data) == control.checksum:
                held = data
        for name in (CONTROL_FILE, _CONTROL_ASIDE, *_STARTERS):
            try:
                os.unlink(root / name)
            except (FileNotFoundError, NotADirectoryError):
                pass  # (NotADirectory: `global` is no directory; remove_extras replaces it)
            except IsADirectoryError:
                shutil.rmtree(root / name)
        # An empty data directory (only a tablespace location held files) may not exist yet.
        for directory in (path.parent, root):
            if directory.is_dir():
                durable.fsync_directory(directory)
    except OSError as exc:
        raise PitrkitError(f"cannot remove {root / CONTROL_FILE} before the delta: {exc.strerror}") from None
    return held


def remove_extras(root: Path, manifest: BackupManifest, files: set[str], tablespaces: list[TablespaceTarget]) -> int:
    """Remove what the backup lacks under `root` and under each tablespace's version
    directories: entries it does not list, and listed ones of another kind (a link or
    directory where it has a file, a link or file where it has a directory). Every
    pg_tblspc link is removed too (make_directories makes the backup's). Returns how many
    entries were removed (a directory counts once)."""
    directories = {directory.path for directory in manifest.directories}
    links = {f"{unpack.TABLESPACE_DIR}/{target.tablespace.oid}": target.location for target in tablespaces}
    removed = 0

    def visit(relative: str, directory: Path) -> None:
        nonlocal removed
        for entry in _scan(directory):
            path = f"{relative}/{entry.name}" if relative else entry.name
            if path in links:
                _remove(entry)  # what it points at is cleaned through the location itself
            elif path in directories and entry.is_dir(follow_symlinks=False):
                visit(path, Path(entry.path))
            elif not (path in files and entry.is_file(follow_symlinks=False)):
                _remove(entry)
                removed += 1

    visit("", root)
    for link, location in links.items():
        for entry in _scan(location):
            path = f"{link}/{entry.name}"
            if path in directories:
                if entry.is_dir(follow_symlinks=False):
                    visit(path, Path(entry.path))
                else:
                    _remove(entry)
                    removed += 1
    return removed


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            return list(scan)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PitrkitError(f"cannot list {directory}: {exc.strerror}") from None


def _remove(entry: os.DirEntry[str]) -> None:
    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)  # never follows a link inside
        else:
            os.unlink(entry.path)
    except OSError as exc:
        raise PitrkitError(f"cannot remove {entry.path}: {exc.strerror}") from None


def compare(root: Path, files: Sequence[BackupFile | BlockFile], block_checksums: dict[str, bytes],
            modes: unpack.Modes, workers: int, skip: set[int]) -> list[Ranges]:
    """For each file, the byte ranges to fetch (none: it is as backed up, and has its
    recorded mode and mtime now). Every file is left at its recorded length, one to fetch
    writable by its owner. Files numbered in `skip` are made so too, and nothing is
    fetched for them."""
    def one(index: int) -> Ranges:
        file = files[index]
        path = root / file.path
        try:
            ranges = _differing(path, file, block_checksums.get(file.path))
            if index in skip:
                return []
            if not ranges:
                unpack.finish_file(os.open(path, os.O_RDONLY | os.O_CLOEXEC), file, modes)
            return ranges
        except OSError as exc:
            raise PitrkitError(f"cannot compare {path}: {exc.strerror}") from None

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="delta") as pool:
        return list(pool.map(one, range(len(files))))


def _differing(path: Path, file: BackupFile | BlockFile, block_checksums: bytes | None) -> Ranges:
    whole = [(0, file.size)] if file.size else []
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        status = None
    if status is not None and (not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid()):
        os.unlink(path)  # remove_extras left no directory here; a file of another user is replaced
        status = None
    if status is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, file.size)
        finally:
            os.close(fd)
        return whole
    if not status.st_mode & stat.S_IWUSR:
        os.chmod(path, stat.S_IMODE(status.st_mode) | stat.S_IWUSR)
    if status.st_size > file.size:
        os.truncate(path, file.size)  # what lies past the recorded end is never worth hashing
    if block_checksums is not None:
        if not checksums.covers(file.size, file.checksum, block_checksums):
            raise checked.NotAsBackedUp(f"the block map of {file.path} does not match its manifest (its block "
                                        "checksums are not the ones the manifest's checksum covers)")
        blocks = [block for block, _, expected in checked.differing_blocks(path, block_checksums)
                  if expected is not None]
        ranges = block_ranges(blocks)
    elif status.st_size != file.size:
        ranges = whole
    else:
        hasher = checksums.file_hasher()
        with open(path, "rb") as reader:
            while chunk := reader.read(1 << 20):
                hasher.update(chunk)
        ranges = [] if hasher.digest() == file.checksum else whole
    if status.st_size < file.size:
        os.truncate(path, file.size)
    return ranges


def block_ranges(blocks: list[int]) -> Ranges:
    """Ascending block numbers as byte ranges, neighbours joined."""
    ranges: Ranges = []
    for block in blocks:
        start = block * BLOCK_SIZE
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + BLOCK_SIZE)
        else:
            ranges.append((start, start + BLOCK_SIZE))
    return ranges


def _write_held(root: Path, file: BackupFile | BlockFile, data: bytes, modes: unpack.Modes) -> None:
    path = root / file.path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, modes.for_file(file.mode))
            os.utime(fd, (file.mtime, file.mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PitrkitError(f"cannot write {path}: {exc.strerror}") from None


# --- fetching only what differs -----------------------------------------------------------------------


def wanted_slices(slices: list[Slice], wanted: Sequence[Ranges]) -> list[Slice]:
    """The parts of `slices` that fall in their file's wanted ranges."""
    result = []
    for piece in slices:
        ranges = wanted[piece.file]
        end = piece.file_offset + piece.length
        first = bisect.bisect_right(ranges, (piece.file_offset, end)) - 1
        for start, stop in ranges[max(first, 0):]:
            if start >= end:
                break
            low, high = max(start, piece.file_offset), min(stop, end)
            if low < high:
                result.append(Slice(piece.file, low, piece.part_offset + low - piece.file_offset, high - low))
    return result


def narrow_chain(plan: chain.ChainPlan, files: list[BackupFile | BlockFile], wanted: Sequence[Ranges]
                 ) -> chain.ChainPlan:
    """`plan` reading only the wanted ranges: stream parts and super-blocks holding none
    are dropped, and a ranged read is cut where a dropped super-block lay (so no byte of
    it is read)."""
    stream_reads = [read._replace(slices=kept) for read in plan.stream_reads
                    if (kept := wanted_slices(read.slices, wanted))]
    block_reads = chain.narrowed_reads(plan.block_reads, lambda _, __, slices: wanted_slices(slices, wanted))
    return plan._replace(files=files, stream_reads=stream_reads, block_reads=block_reads)


def _chain_reads(plan: chain.ChainPlan) -> int:
    return sum(read.part.stored_size for read in plan.stream_reads) + sum(read.length for read in plan.block_reads)

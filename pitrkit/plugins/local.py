"""Built-in storage on a local or mounted file system: `file:///path/to/archive`.

Durability is the whole job. A put writes a temporary file beside the target, fsyncs it,
then publishes it with link(2), which fails if the name exists: create-only and atomic in
one system call, so a crash leaves either no object or a complete one, and two writers
racing for one name cannot both win. Overwrites (for small mutable documents) use
rename(2). Every directory entry created or changed is made durable by fsyncing the
directory. A create-only put that finds the name taken fsyncs what is there (the file
and its directories) before saying so: the winner of a race, or our own earlier attempt
whose directory fsync failed, may not have made it durable yet. Temporary files start
with "." and are never listed.

A listing is what the directory holds when it is read: an entry deleted between
readdir(3) and stat(2) is simply left out (a concurrent delete), but one that cannot be
stat'd otherwise, a symbolic link to nothing included, is a fault, never a reason to
call the folder empty (wal-fetch would answer "not archived" for a stored segment).

The `timeout` is not enforced here: a local system call cannot be abandoned safely. A
hung NFS mount is the kernel's to time out (mount it `soft,timeo=`).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError, StorageMissing, hookimpl

_FILE_MODE = 0o640
_DIR_MODE = 0o750


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self._owner: tuple[int, int] | None = None

    def _new_entries_owner(self) -> tuple[int, int] | None:
        """Who should own what root creates: the archive directory's owner. backup-push
        may run as root, while wal-push, restore and the catalog updates run as postgres,
        which could not read, replace or add to root's files and folders."""
        if os.geteuid() != 0:
            return None
        if self._owner is None:
            status = os.stat(self.root)
            self._owner = (status.st_uid, status.st_gid)
        return None if self._owner == (0, 0) else self._owner

    # -- keys --------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _fault(self, exc: OSError, key: str) -> StorageError:
        return StorageError(f"{self.url}: {key}: {exc.strerror or exc}")

    def _missing(self, key: str) -> Exception:
        """A missing file is "not found" only if the archive itself is there: an
        unmounted or mistyped archive directory must not look like an empty archive."""
        if self.root.is_dir():
            return ObjectNotFound(key)
        return self._no_root()

    def _no_root(self) -> StorageMissing:
        return StorageMissing(f"archive directory {self.root} does not exist: create it, owned by the OS user "
                              "PostgreSQL runs as, mode 0700 (or correct [repository] url; or mount its file system)")

    # -- operations --------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        path = self._path(key)
        self._check_root()
        try:
            self._make_parents(path.parent)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            try:
                try:
                    if owner := self._new_entries_owner():
                        os.fchown(descriptor, *owner)
                    with memoryview(data) as view:
                        written = 0
                        while written < len(view):
                            written += os.write(descriptor, view[written:])
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                if overwrite:
                    os.replace(temporary, path)
                else:
                    os.link(temporary, path)
            finally:
                _unlink_quietly(temporary)  # after link(2) or a failure; gone after rename(2)
            _fsync_directory(path.parent)
        except FileExistsError:
            self._make_durable(path, key)
            raise ObjectExists(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def _make_durable(self, path: Path, key: str) -> None:
        """Fsync an existing object, its directory and theirs up to the root, so that
        ObjectExists means "stored and durable" (the contract in hookspecs.py): the
        writer that linked it may still be before its own directory fsync, or it was our
        attempt that failed there, and the caller may report success on our answer."""
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            directory = path.parent
            while True:
                _fsync_directory(directory)
                if directory == self.root:
                    break
                directory = directory.parent
        except FileNotFoundError:
            # Deleted since link(2) said it exists: nothing is stored, and a put that
            # reports "exists" must not report it for nothing.
            raise StorageError(f"{self.url}: {key}: deleted while being stored") from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def stat(self, key: str) -> ObjectInfo:
        try:
            status = os.stat(self._path(key))
            return ObjectInfo(key, status.st_size, status.st_mtime)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._check_root()
        # Walk only below the prefix's directory part. Depth-first order is not key
        # order ("a/b" sorts after "a-c"), so collect, then sort.
        directory = prefix.rpartition("/")[0]
        start = self._path(directory) if directory else self.root

        def unreadable(exc: OSError) -> None:
            # The start folder missing means no objects (if the archive is there, checked
            # below); a sub-folder deleted while we walk took its objects with it.
            if exc.filename == os.fspath(start):
                if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                    raise exc
            elif not isinstance(exc, FileNotFoundError):
                raise exc

        found: list[ObjectInfo] = []
        try:
            for folder, subfolders, files in os.walk(start, onerror=unreadable):
                subfolders[:] = [name for name in subfolders if not name.startswith(".")]
                relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
                for name in files:
                    if name.startswith("."):
                        continue
                    key = name if relative == "." else f"{relative}/{name}"
                    if key.startswith(prefix) and (status := self._entry(os.path.join(folder, name), key)):
                        found.append(ObjectInfo(key, status.st_size, status.st_mtime))
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        if not found:
            self._check_root()  # an unmounted archive lists as nothing: a fault
        found.sort(key=lambda info: info.key.encode())
        return iter(found)

    def list_folder(self, prefix: str) -> Folder:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"a folder prefix ends with '/': {prefix!r}")
        self._check_root()
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        try:
            entries = os.scandir(self._path(prefix[:-1]) if prefix else self.root)
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return Folder([], [])  # only the folder is missing: it holds no objects
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        try:
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(f"{prefix}{entry.name}/")
                    elif status := self._entry(entry.path, prefix + entry.name):
                        objects.append(ObjectInfo(prefix + entry.name, status.st_size, status.st_mtime))
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        objects.sort(key=lambda info: info.key.encode())
        folders.sort(key=str.encode)
        return Folder(objects, folders)

    def _entry(self, path: str, key: str) -> os.stat_result | None:
        """The status of a listed entry; None if it was deleted since the directory was
        read. Any other failure, a symbolic link to nothing included, is a fault."""
        try:
            return os.stat(path)
        except FileNotFoundError:
            try:
                os.lstat(path)
            except FileNotFoundError:
                return None
            raise StorageError(f"{self.url}: {key}: a symbolic link to nothing") from None

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise self._no_root()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fault(exc, key) from None
        _fsync_directory(path.parent)
        self._remove_empty_parents(path.parent)

    # -- helpers -----------------------------------------------------------------------

    def _make_parents(self, directory: Path) -> None:
        """Create missing directories up to the root, fsyncing each parent so that the
        new entry survives a crash (a durable file in a lost directory is lost)."""
        missing = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            try:
                folder.mkdir(_DIR_MODE)
            except FileExistsError:
                continue  # a concurrent writer made it; its fsync covers it
            if owner := self._new_entries_owner():
                os.chown(folder, *owner)
            _fsync_directory(folder.parent)


    def _remove_empty_parents(self, directory: Path) -> None:
        """Remove the directories a delete left empty, up to the root: in an object
        store a folder exists only while it holds objects, and readers (backup-list,
        the WAL listings) must not find a removed backup or WAL folder as an empty one.
        rmdir(2) refuses a directory that is not empty, so a concurrent put's new file
        keeps its folder (a put whose folder vanished between mkdir and open fails,
        and Archive retries it)."""
        while directory != self.root:
            try:
                directory.rmdir()
            except OSError:
                return
            _fsync_directory(directory.parent)
            directory = directory.parent


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    except OSError as exc:
        # Some file systems cannot fsync a directory; the data is still fsync'd.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


def parse_file_url(url: str) -> Path | None:
    """The archive directory for `file:///abs/path` or a bare absolute path; None for
    other schemes."""
    if url.startswith("/"):
        return Path(url)
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"a file URL needs an absolute path: file:///path (got {url!r})")
    return Path(unquote(parts.path))


@hookimpl
def pitrkit_storage(url: str, timeout: float):
    root = parse_file_url(url)
    return None if root is None else LocalStorage(root)

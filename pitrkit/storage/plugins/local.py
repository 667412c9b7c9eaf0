"""Built-in storage on a local or mounted file system: `file:///path/to/archive`.

Durability is the whole job. A put writes a temporary file beside the target, fsyncs it,
then publishes it with link(2), which fails if the name exists: create-only and atomic in
one system call, so a crash leaves either no object or a complete one, and two writers
racing for one name cannot both win. Overwrites (for small mutable documents) use
rename(2). Every directory entry created or changed is made durable by fsyncing the
directory, and a put fsyncs every folder on its way to the object, those it finds
already there included (their maker may have crashed before fsyncing them into their
parents): an acknowledged object survives power loss. A create-only put that finds the
name taken fsyncs what is there (the file and its directories) before saying so: the
winner of a race, or our own earlier attempt whose directory fsync failed, may not have
made it durable yet. Temporary files start with "." and are never listed. A copy (the
optional `copy`) is published the same way, its bytes copied from file to file inside
the kernel; a ranged read (`get_range`) preads only the range.

A listing is what the directory holds when it is read: an entry deleted between
readdir(3) and stat(2) is simply left out (a concurrent delete), but one that cannot be
stat'd otherwise, a symbolic link to nothing included, is a fault, never a reason to
call the folder empty (wal-fetch would answer "not archived" for a stored segment).

Containment: a symbolic link inside the archive is never followed. Anyone who can write
to the archive could otherwise make a read return a file from anywhere on this host, or
a put write through a link to anywhere the user may write. Every operation opens the
archive directory (which may itself be a link: it is the operator's choice) and then each
folder of the key from its parent's descriptor with O_NOFOLLOW|O_DIRECTORY (O_NOFOLLOW
alone guards only the last component of a path), and the object itself with O_NOFOLLOW.
A link met on the way is a storage fault naming it, never "not found": a wal-fetch must
not answer "not archived" for a segment that is there behind a link.

The `timeout` is not enforced here: a local system call cannot be abandoned safely. A
hung NFS mount is the kernel's to time out (mount it `soft,timeo=`).
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError, StorageMissing, hookimpl

_FILE_MODE = 0o640
_DIR_MODE = 0o750
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the archive must not hang the read that opens it (it is
# then refused as not a regular file); it changes nothing for a regular file.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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

    def _names(self, key: str) -> list[str]:
        """The key's components: the folders below the root, then the object's name."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") or part.startswith(".") or "\0" in part
                                                 for part in parts):
            raise ValueError(f"invalid object key {key!r}")
        return parts

    def _fault(self, exc: OSError, key: str) -> StorageError:
        return StorageError(f"{self.url}: {key}: {exc.strerror or exc}")

    def _link_refused(self, names: list[str]) -> StorageError:
        return StorageError(f"{self.url}: {'/'.join(names)} is a symbolic link: pitrkit never follows links "
                            "inside the archive")

    # -- descriptors -------------------------------------------------------------------

    def _open_root(self) -> int:
        """The archive directory, through a link if it is one. Missing, it is a fault:
        an unmounted or mistyped archive directory must not look like an empty archive."""
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise StorageMissing(f"archive directory {self.root} does not exist: create it, owned by the OS user "
                                 "PostgreSQL runs as, mode 0700 (or correct [repository] url; or mount its file "
                                 "system)") from None
        except OSError as exc:
            raise StorageError(f"archive directory {self.root}: {exc.strerror or exc}") from None

    def _open_folder(self, names: list[str], *, create: bool = False, sync: bool = False) -> int:
        """A descriptor of the folder `names` below the root, opened one component at a
        time from its parent's descriptor, never through a link (see the module
        docstring). With `create`, missing folders are made. With `sync` (a put, and
        `_make_durable`), each parent is fsync'd once its child is open, whether this
        call made the child or found it: a folder found may be one whose maker crashed
        (or is still running) between mkdir(2) and that fsync, and an object acknowledged
        in a folder whose entry is lost is lost. Only the components the put walks: one
        directory fsync each, the cost of the guarantee. Raises FileNotFoundError or
        NotADirectoryError when the folder is not there."""
        folder = self._open_root()
        try:
            for depth, name in enumerate(names):
                try:
                    child = os.open(name, _FOLDER_FLAGS, dir_fd=folder)
                except FileNotFoundError:
                    if not create:
                        raise
                    self._make_folder(folder, name)
                    child = os.open(name, _FOLDER_FLAGS, dir_fd=folder)
                except (NotADirectoryError, OSError) as exc:
                    # A link opened with O_NOFOLLOW|O_DIRECTORY fails as "not a directory"
                    # (ELOOP on some systems): only its lstat tells it from a file.
                    if isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP:
                        self._refuse_link(folder, name, names[: depth + 1])
                    raise
                parent, folder = folder, child
                try:
                    if sync:
                        _fsync(parent)
                finally:
                    os.close(parent)
        except BaseException:
            os.close(folder)
            raise
        return folder

    def _refuse_link(self, folder: int, name: str, names: list[str]) -> None:
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(status.st_mode):
            raise self._link_refused(names)

    def _make_folder(self, parent: int, name: str) -> None:
        """mkdir, owned as `_new_entries_owner` says (`_open_folder` then fsyncs the
        parent, for a folder made here or found)."""
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass  # a concurrent writer made it, and may not have fsync'd it yet: we do
        else:
            if owner := self._new_entries_owner():
                os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)

    def _open_object(self, folder: int, name: str, names: list[str]) -> int:
        try:
            descriptor = os.open(name, _READ_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._link_refused(names) from None
            raise
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise StorageError(f"{self.url}: {'/'.join(names)} is not a regular file")
        return descriptor

    # -- operations --------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self._publish(key, lambda descriptor: _write_all(descriptor, data), overwrite)

    def copy(self, source: str, target: str) -> None:
        """hookspecs.ServerSideCopy: the bytes go from file to file inside the kernel, into
        a new file published exactly as a put's (fsync'd, then link(2): create-only and
        durable). Not a link(2) of the source itself, which would be as atomic: the copy
        would be the source's inode, its owner and mode included, where a put makes files
        owned as `_new_entries_owner` says (backup-push may run as root)."""
        try:
            original = self._open_stored(self._names(source))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(source) from None
        except OSError as exc:
            raise self._fault(exc, source) from None
        try:
            self._publish(target, lambda descriptor: _copy_all(original, descriptor), overwrite=False)
        finally:
            os.close(original)

    def _publish(self, key: str, write: Callable[[int], None], overwrite: bool) -> None:
        """Store under `key` what `write` writes into a new file's descriptor: durably,
        create-only unless `overwrite` (see the module docstring)."""
        *folders, name = self._names(key)
        try:
            folder = self._open_folder(folders, create=True, sync=True)
            try:
                temporary = f".{name}.{secrets.token_hex(6)}.tmp"
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     _FILE_MODE, dir_fd=folder)
                try:
                    try:
                        if owner := self._new_entries_owner():
                            os.fchown(descriptor, *owner)
                        write(descriptor)
                        os.fsync(descriptor)
                    finally:
                        os.close(descriptor)
                    # rename(2) and link(2) replace or refuse the name itself, a link included:
                    # neither writes through one.
                    if overwrite:
                        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
                    else:
                        os.link(temporary, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                finally:
                    _unlink_quietly(temporary, folder)  # after link(2) or a failure; gone after rename(2)
                _fsync(folder)
            finally:
                os.close(folder)
        except FileExistsError:
            self._make_durable(folders, name, key)
            raise ObjectExists(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def _make_durable(self, folders: builtins.list[str], name: str, key: str) -> None:
        """Fsync an existing object, its folder and theirs up to the root, so that
        ObjectExists means "stored and durable" (the contract in hookspecs.py): the
        writer that linked it may still be before its own directory fsync, or it was our
        attempt that failed there, and the caller may report success on our answer."""
        try:
            folder = self._open_folder(folders, sync=True)
            try:
                _fsync(folder)
                descriptor = self._open_object(folder, name, [*folders, name])
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            finally:
                os.close(folder)
        except FileNotFoundError:
            # Deleted since link(2) said it exists: nothing is stored, and a put that
            # reports "exists" must not report it for nothing.
            raise StorageError(f"{self.url}: {key}: deleted while being stored") from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def get(self, key: str) -> bytes:
        with self._reading(key) as file:
            return file.read()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """hookspecs.RangedReads: pread(2) of only the bytes asked for, on a descriptor
        reached as for `get` (never through a link)."""
        try:
            descriptor = self._open_stored(self._names(key))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None
        try:
            return _read_range(descriptor, offset, length)
        except OSError as exc:
            raise self._fault(exc, key) from None
        finally:
            os.close(descriptor)

    @contextmanager
    def _reading(self, key: str) -> Iterator[BinaryIO]:
        """The object open for reading: absent, `ObjectNotFound`; any other failure, also
        while it is read, a `StorageError`."""
        try:
            with open(self._open_stored(self._names(key)), "rb") as file:
                yield file
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None

    def _open_stored(self, names: builtins.list[str]) -> int:
        """A read-only descriptor of the object `names`, reached as the module docstring
        says; FileNotFoundError or NotADirectoryError when it is not there."""
        folder = self._open_folder(names[:-1])
        try:
            return self._open_object(folder, names[-1], names)
        finally:
            os.close(folder)

    def stat(self, key: str) -> ObjectInfo:
        names = self._names(key)
        try:
            folder = self._open_folder(names[:-1])
            try:
                status = os.stat(names[-1], dir_fd=folder, follow_symlinks=False)
            finally:
                os.close(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._fault(exc, key) from None
        if stat.S_ISLNK(status.st_mode):
            raise self._link_refused(names)
        return ObjectInfo(key, status.st_size, status.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only below the prefix's directory part. Depth-first order is not key
        # order ("a/b" sorts after "a-c"), so collect, then sort.
        directory = prefix.rpartition("/")[0]
        names = self._names(directory) if directory else []
        found: list[ObjectInfo] = []
        try:
            folder = self._open_folder(names)
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        try:
            self._walk(folder, f"{directory}/" if directory else "", prefix, found)
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        finally:
            os.close(folder)
        found.sort(key=lambda info: info.key.encode())
        return iter(found)

    def _walk(self, folder: int, relative: str, prefix: str, found: builtins.list[ObjectInfo]) -> None:
        """Add the objects under the open `folder` (key prefix `relative`) whose keys
        start with `prefix`; descend into subfolders through descriptors only."""
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = relative + entry.name
                if entry.is_symlink():
                    raise self._link_refused(key.split("/"))
                if entry.is_dir(follow_symlinks=False):
                    below = key + "/"
                    if not (below.startswith(prefix) or prefix.startswith(below)):
                        continue
                    try:
                        child = os.open(entry.name, _FOLDER_FLAGS, dir_fd=folder)
                    except FileNotFoundError:
                        continue  # removed since the listing: it holds nothing now
                    try:
                        self._walk(child, below, prefix, found)
                    finally:
                        os.close(child)
                elif key.startswith(prefix):
                    try:
                        status = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted since the listing
                    found.append(ObjectInfo(key, status.st_size, status.st_mtime))

    def list_folder(self, prefix: str) -> Folder:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"a folder prefix ends with '/': {prefix!r}")
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        try:
            folder = self._open_folder(self._names(prefix[:-1]) if prefix else [])
        except (FileNotFoundError, NotADirectoryError):
            return Folder([], [])
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_symlink():
                        raise self._link_refused(f"{prefix}{entry.name}".split("/"))
                    if entry.is_dir(follow_symlinks=False):
                        if _holds_anything(folder, entry.name):
                            folders.append(f"{prefix}{entry.name}/")
                        continue
                    try:
                        status = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted since the listing
                    objects.append(ObjectInfo(prefix + entry.name, status.st_size, status.st_mtime))
        except OSError as exc:
            raise self._fault(exc, prefix) from None
        finally:
            os.close(folder)
        objects.sort(key=lambda info: info.key.encode())
        folders.sort(key=str.encode)
        return Folder(objects, folders)

    def delete(self, key: str) -> None:
        *folders, name = self._names(key)
        try:
            folder = self._open_folder(folders)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._fault(exc, key) from None
        try:
            os.unlink(name, dir_fd=folder)  # removes a link itself, never what it points to
            _fsync(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fault(exc, key) from None
        finally:
            os.close(folder)
        self._remove_empty_parents(folders)

    # -- helpers -----------------------------------------------------------------------

    def _remove_empty_parents(self, folders: builtins.list[str]) -> None:
        """Remove the folders a delete left empty, up to the root: in an object store a
        folder exists only while it holds objects, and readers (backup-list, the WAL
        listings) must not find a removed backup or WAL folder as an empty one. rmdir(2)
        refuses a directory that is not empty, so a concurrent put's new file keeps its
        folder (a put whose folder vanished between mkdir and open fails, and Archive
        retries it)."""
        while folders:
            try:
                parent = self._open_folder(folders[:-1])
            except (OSError, StorageError):
                return
            try:
                os.rmdir(folders[-1], dir_fd=parent)
                _fsync(parent)
            except OSError:
                return
            finally:
                os.close(parent)
            folders = folders[:-1]


def _holds_anything(parent: int, name: str) -> bool:
    """Whether the directory `name` in `parent` holds an object, at any depth. In an
    object store a folder exists only while it holds objects; a directory with none is
    what a delete killed between its unlink and its rmdir leaves (or a put between its
    mkdir and its file), and listing it would show a removed backup as an empty one.
    Anything that is not a directory counts, so that a link is still refused where the
    folder is listed."""
    try:
        folder = os.open(name, _FOLDER_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return False  # removed since the listing
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if not entry.is_dir(follow_symlinks=False) or _holds_anything(folder, entry.name):
                    return True
        return False
    finally:
        os.close(folder)


def _write_all(descriptor: int, data: bytes) -> None:
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            written += os.write(descriptor, view[written:])


# copy_file_range(2) cannot copy here: a kernel before 4.5, or (since 5.19) folders on two
# file systems; the bytes then go through a buffer.
_NO_KERNEL_COPY = (errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL)
_COPY_CHUNK = 1 << 20


def _copy_all(source: int, target: int) -> None:
    """All of the file `source` into the new file `target`: inside the kernel
    (copy_file_range(2), which shares the blocks where the file system can), else
    through a buffer."""
    copied = 0
    try:
        while count := os.copy_file_range(source, target, _COPY_CHUNK << 6, copied):
            copied += count
    except OSError as exc:
        if copied or exc.errno not in _NO_KERNEL_COPY:
            raise
        while chunk := os.pread(source, _COPY_CHUNK, copied):
            _write_all(target, chunk)
            copied += len(chunk)


def _read_range(descriptor: int, offset: int, length: int) -> bytes:
    """Bytes `offset` to `offset + length` of the open file, fewer where it ends first.
    The length is cut to the file's size first: a huge range over a small object must not
    allocate the range (pread(2) makes a buffer of the size asked)."""
    end = min(offset + length, os.fstat(descriptor).st_size)
    chunks: list[bytes] = []
    while offset < end:
        chunk = os.pread(descriptor, end - offset, offset)  # Linux reads at most 2 GiB a call: loop
        if not chunk:
            break  # shorter than its size said (a file system answering oddly): what is there
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _unlink_quietly(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


def _fsync(descriptor: int) -> None:
    """fsync an open directory."""
    try:
        os.fsync(descriptor)
    except OSError as exc:
        # Some file systems cannot fsync a directory; the data is still fsync'd.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


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

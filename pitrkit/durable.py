"""Local files made to survive a machine crash as PostgreSQL's own must: contents written
whole and fsync'd, a replacement written aside and renamed over the old file (a crash
leaves one or the other, never half), and directory entries fsync'd by the caller once
its files are written. The one way pitrkit writes such files: a restore's
`backup_label`, recovery settings and configuration (restore/), an optional
repository's WAL spool (wal/spool.py), new key files (storage/keys.py). The local
storage plugin has its own way, which also makes every folder on an object's path
durable (storage/plugins/local.py).

Only `os`: wal-push spools through it."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, content: str | bytes, mode: int, *, create_only: bool = False) -> None:
    """Create `path` (or truncate it; with `create_only` it must not exist, nor be a
    link: FileExistsError), write `content`, give it `mode` whatever the umask, fsync it.
    OSError as the system says it."""
    data = content.encode() if isinstance(content, str) else content
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL | os.O_NOFOLLOW if create_only else os.O_TRUNC)
    descriptor = os.open(path, flags, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have taken bits away; never added any
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(descriptor, view[written:])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_file(path: Path, content: str | bytes, mode: int | None = None, *, aside: Path | None = None) -> None:
    """Replace `path` atomically: written `aside` (by default beside it, as
    NAME.pitrkit.tmp), fsync'd, renamed over it; the aside file removed if that fails.
    `mode`: the old file's if None (0600 for a new one)."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
    aside = aside or path.with_name(path.name + ".pitrkit.tmp")
    try:
        write_file(aside, content, mode)
        os.replace(aside, path)
    except OSError:
        aside.unlink(missing_ok=True)
        raise


def fsync_directory(path: Path) -> None:
    """Make the entries of directory `path` durable (files created, renamed, removed)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

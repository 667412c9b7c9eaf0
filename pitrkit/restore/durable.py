"""Small files a restore writes into a data directory (`backup_label`, the recovery
settings, the restored configuration), made to survive a crash as PostgreSQL's own
files must: whole contents written and fsync'd, a replacement written aside and renamed
over the old file, and the directory entry fsync'd."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, content: str, mode: int) -> None:
    """Create or truncate `path`, write `content`, set `mode` (whatever the umask) and
    fsync it. The caller fsyncs the directory once it has written its files."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with memoryview(content.encode()) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, content: str, mode: int | None = None) -> None:
    """Replace `path` atomically: written aside, fsync'd, renamed over it, so a crash
    leaves the old file or the new one, never half of it. `mode`: the old file's if
    None (0600 for a new one)."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
    temporary = path.with_name(path.name + ".pitrkit.tmp")
    write_file(temporary, content, mode)
    os.replace(temporary, path)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

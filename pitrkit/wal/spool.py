"""An optional repository's durable local spool: WAL it could not take, waiting for it.

When wal-push (or wal-receive) cannot store a file in a repository marked `required =
false`, the file is written here, in `<spool>/<repository name>/`, fsync'd with its
directory, and the push still succeeds: the required repositories hold it. While
anything waits here, later files join the queue instead of trying the repository
again, so a repository that is down costs PostgreSQL's archiver one failed attempt,
not one per segment; catch-up (wal/catch_up.py) drains the queue in WAL order.

The spool never grows past `spool_max` bytes. A file that would take it past the cap is
not spooled: a marker (`.behind`, holding the first WAL file name the repository lacks)
records that the repository fell behind, and catch-up then copies what it lacks from a
required repository instead. The marker is claimed (renamed) by the catch-up that
works on it and removed only after that catch-up succeeded, so a file missed while it
runs leaves a new marker behind. The spool holds plaintext WAL, as pg_wal does; its
files are readable by their owner only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

from pitrkit import durable
from pitrkit.config import RepositoryConfig
from pitrkit.errors import PitrkitError

BEHIND = ".behind"
# A catch-up's claim on the marker: `.behind.claimed.<token>`.
_CLAIMED = BEHIND + ".claimed."
_TEMPORARY = ".tmp."


class SpoolState(NamedTuple):
    """What an optional repository's spool holds, for status."""

    # WAL files waiting to be pushed to the repository.
    waiting: int
    # Their size in bytes.
    bytes: int
    # The spool reached its cap: WAL the repository lacks is copied from a required one.
    behind: bool
    # The first WAL file name waiting (or, when behind, the first one the repository lacks).
    oldest: str | None


def directory(settings: RepositoryConfig) -> Path | None:
    """`<spool>/<name>/`, or None for a repository without a spool."""
    return None if settings.spool is None else Path(settings.spool) / settings.name


def waiting(settings: RepositoryConfig) -> list[Path]:
    """The spooled files, in WAL order (their names sort so)."""
    folder = directory(settings)
    if folder is None:
        return []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PitrkitError(f"cannot read the spool {folder}: {exc.strerror}") from None
    return [folder / name for name in sorted(names) if not name.startswith(".")]


def behind_since(settings: RepositoryConfig) -> str | None:
    """The first WAL file name the repository lacks, when its spool overflowed (the
    earliest of the marker and any claimed marker), else None."""
    folder = directory(settings)
    if folder is None:
        return None
    names = []
    try:
        markers = [name for name in os.listdir(folder) if name == BEHIND or name.startswith(_CLAIMED)]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PitrkitError(f"cannot read the spool {folder}: {exc.strerror}") from None
    for marker in markers:
        try:
            names.append((folder / marker).read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError):
            names.append("")  # unreadable: behind since we do not know when, copy all
    return min(names) if names else None


def state(settings: RepositoryConfig) -> SpoolState:
    """The spool of `settings` as it is now (nothing waiting for a repository without one)."""
    files = waiting(settings)
    size = 0
    for path in files:
        try:
            size += path.stat().st_size
        except FileNotFoundError:
            continue  # pushed and removed since the listing
    since = behind_since(settings)
    oldest = files[0].name if files else None
    if since and (oldest is None or since < oldest):
        oldest = since
    return SpoolState(len(files), size, since is not None, oldest)


def keep(settings: RepositoryConfig, name: str, data: bytes) -> bool:
    """Spool the WAL file `name` for the repository, durably; False when it did not fit
    under `spool_max` (then the repository is marked behind instead). A `.partial`
    replaces the one spooled before it (it extends it)."""
    folder = directory(settings)
    assert folder is not None  # checked when the file was loaded: an optional repository has a spool
    _make(folder)
    used = sum(_size(path) for path in waiting(settings) if path.name != name)
    if used + len(data) > settings.spool_max_bytes:
        mark_behind(settings, name)
        return False
    _write_durably(folder, name, data)
    return True


def mark_behind(settings: RepositoryConfig, name: str) -> None:
    """Record that the repository lacks `name` and it is not in the spool (keeping the
    earliest such name)."""
    folder = directory(settings)
    assert folder is not None
    _make(folder)
    try:
        recorded = (folder / BEHIND).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        recorded = None
    if recorded is not None and recorded <= name:
        return
    _write_durably(folder, BEHIND, name.encode("ascii"))


def claim_behind(settings: RepositoryConfig) -> list[Path]:
    """Take the marker for a catch-up (rename it aside); returns every claimed marker,
    earlier catch-ups' unfinished ones included. Removed by `release` once the
    repository has everything they stand for."""
    folder = directory(settings)
    if folder is None:
        return []
    try:
        os.rename(folder / BEHIND, folder / f"{_CLAIMED}{time.time_ns()}.{os.getpid()}")
        durable.fsync_directory(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PitrkitError(f"cannot claim {folder / BEHIND}: {exc.strerror}") from None
    try:
        return [folder / name for name in sorted(os.listdir(folder)) if name.startswith(_CLAIMED)]
    except FileNotFoundError:
        return []


def release(claimed: list[Path]) -> None:
    for path in claimed:
        path.unlink(missing_ok=True)
    if claimed:
        durable.fsync_directory(claimed[0].parent)


def remove(path: Path) -> None:
    """Remove a spooled file the repository now holds durably."""
    path.unlink(missing_ok=True)
    durable.fsync_directory(path.parent)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _make(folder: Path) -> None:
    # The configured spool directory and the repository's folder in it are made here;
    # never the spool's parent, the operator's (it may be a mount point).
    try:
        folder.parent.mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise PitrkitError(f"cannot create the spool {folder}: {exc.strerror}") from None


def _write_durably(folder: Path, name: str, data: bytes) -> None:
    try:
        durable.replace_file(folder / name, data, 0o600,
                             aside=folder / f"{_TEMPORARY}{name}.{os.getpid()}.{time.monotonic_ns()}")
        durable.fsync_directory(folder)
    except OSError as exc:
        raise PitrkitError(f"cannot spool {name} in {folder}: {exc.strerror}") from None

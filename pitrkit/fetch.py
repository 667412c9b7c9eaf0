"""`pitrkit wal-fetch NAME DEST`: PostgreSQL's restore_command.

The exit code is the contract with the startup process. 0: DEST holds the verified file.
1: the archive answered that it does not have NAME, which PostgreSQL takes as "end of
archived WAL". Anything else must not look like that, or a fault (storage down, a
corrupt object, a broken configuration) would end recovery early and promote the server
at the wrong point; so every other failure exits 126, which makes PostgreSQL abort
recovery instead (it treats exit codes above 125 as fatal).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pitrkit import objects
from pitrkit.archive import Archive, wal_key
from pitrkit.errors import NotInArchive, PitrkitError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.wal import WalFileName

log = logging.getLogger(__name__)

# Segments fetched ahead (by the agent, see lookahead.py) wait under this prefix in the
# directory of the request's destination: on the same file system, so that serving one
# is a rename. PostgreSQL ignores files in pg_wal whose names are not WAL file names.
SPOOL_PREFIX = ".pitrkit-ahead."


def fetch(archive: Archive, name: str, destination: Path) -> str:
    """Restore the archived WAL file `name` to `destination`; returns a summary."""
    return restore(read(archive, name), name, destination)


def read(archive: Archive, name: str) -> bytes:
    """The verified content of the archived WAL file `name`."""
    file = WalFileName.parse(name)
    return _read_verified(archive, wal_key(file), archive.config.repository.retries)


def restore(data: bytes, name: str, destination: Path) -> str:
    _write_atomically(destination, data)
    return f"restored {name}: {len(data)} bytes"


def spool(archive: Archive, name: str, directory: Path) -> Path:
    """Fetch `name` before it is asked for into a spool file in `directory`."""
    path = directory / f"{SPOOL_PREFIX}{name}"
    _write_atomically(path, read(archive, name))
    return path


def restore_spooled(spooled: Path, name: str, destination: Path) -> str | None:
    """Move a spooled file to `destination`; None if the spool file is gone."""
    try:
        os.replace(spooled, destination)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PitrkitError(f"cannot move {spooled} to {destination}: {exc.strerror}") from None
    return f"restored {name}: fetched ahead"


def remove_spooled(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot remove spool file %s: %s", path, exc)


def remove_stale_spool(directory: Path) -> None:
    """Remove spool files an earlier agent left behind (it was killed, say)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(SPOOL_PREFIX):
            remove_spooled(directory / name)


def _read_verified(archive: Archive, key: str, retries: int) -> bytes:
    """The object's plaintext. A corrupt read may be a transfer fault, so the object is
    read again a bounded number of times before it is declared corrupt."""
    attempt = 0
    while True:
        try:
            blob = archive.get(key)
        except ObjectNotFound:
            raise NotInArchive(f"{key.rpartition('/')[2]} is not in the archive {archive.storage.url}") from None
        try:
            return objects.decode(key, blob, archive.plugins.compressor)
        except objects.CorruptObject as exc:
            if attempt == retries:
                raise PitrkitError(str(exc)) from None
            attempt += 1
            log.warning("%s; reading it again", exc)


def _write_atomically(destination: Path, data: bytes) -> None:
    """Write beside the destination, then rename: PostgreSQL must never see a partial
    file under the name it asked for. No fsync: a restored file that a crash loses is
    simply fetched again when recovery restarts."""
    # Unique per process and thread: two fetches of one file (a retry racing a slow
    # first attempt) must not write into the same temporary file.
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.{threading.get_ident()}.pitrkit.tmp")
    try:
        with open(temporary, "wb") as target:
            target.write(data)
        os.replace(temporary, destination)
    except OSError as exc:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise PitrkitError(f"cannot write {destination}: {exc.strerror}") from None

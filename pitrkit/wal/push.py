"""`pitrkit wal-push PATH`: PostgreSQL's archive_command.

Exit 0 means the file is durable in the archive. Before storing, the file is checked:
the archive must exist (its `archive.json`, which `pitrkit init` creates, is read again
for every push); a segment must be valid WAL whose page address matches its name and
whose system identifier matches the archive's; a history or backup file must parse. An identical
object under the same name is success (PostgreSQL re-runs archive_command after a crash
between storing and marking `.done`); different content under that name is refused and
the stored object is never replaced.

One exception: `<segment>.partial`, the open segment `wal-receive` re-ships every few
seconds, and the old timeline's last segment a promoted server's archiver pushes. A new
partial replaces the stored one when it extends it (the stored WAL is a prefix of the new
content); one that the stored partial already extends is success with nothing written.
Otherwise the copies are compared as WAL (postgres/partial_copies.py): the one holding
all the other's valid WAL and more is kept (the promoted server's copy ends in bytes
that are not WAL); two copies holding different valid WAL are refused like a conflicting
segment, so two writers can never clobber each other's WAL.

With several repositories (`push_to_every`), the file goes to each of them at once
(storage/repositories.py) and exit 0 means every required one holds it durably. An
optional repository that fails, or that already has WAL waiting for it, gets the file
in its durable local spool (wal/spool.py) instead, and the push succeeds without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from pitrkit.errors import PitrkitError, RefusedError, UsageError
from pitrkit.hookspecs import Cipher, Compressor, ObjectExists
from pitrkit.postgres.wal import (
    LONG_PAGE_HEADER_SIZE,
    InvalidSegment,
    WalFileKind,
    WalFileName,
    parse_history,
    read_page_header,
    validate_segment,
)
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive, wal_key
from pitrkit.storage.identity import ArchiveIdentity, Era
from pitrkit.storage.repositories import Repository, to_every
from pitrkit.wal import spool

log = logging.getLogger(__name__)


def push(archive: Archive, path: Path) -> str:
    """Archive the WAL file at `path`; returns a one-line summary."""
    file = WalFileName.parse(path.name)
    return push_data(archive, file, _read(path), origin=origin_cluster(file, path))


def origin_cluster(file: WalFileName, path: Path) -> int | None:
    """For a file without a page header (a history or backup history file), the system
    identifier of the cluster whose pg_wal holds it, from the `global/pg_control` beside
    (PostgreSQL runs archive_command in its data directory, %p `pg_wal/<name>`): which
    era it goes to. None for a segment (its page header says) or a file elsewhere."""
    if file.has_page_header:
        return None
    control = Path(os.path.dirname(os.path.dirname(os.path.abspath(path)))) / "global" / "pg_control"
    try:
        with open(control, "rb") as source:
            head = source.read(8)  # ControlFileData starts with the system identifier
    except OSError:
        return None
    return int.from_bytes(head, sys.byteorder) if len(head) == 8 else None


class Pushed(NamedTuple):
    """What `pushed_to_every` did."""

    summary: str
    # The repositories that hold the file now (the others have it spooled, or lack it).
    holding: list[Repository]


def push_to_every(repositories: Sequence[Repository], path: Path) -> str:
    """Archive the WAL file at `path` in every repository (module docstring); returns a
    one-line summary."""
    return pushed_to_every(repositories, path).summary


def pushed_to_every(repositories: Sequence[Repository], path: Path) -> Pushed:
    """`push_to_every`, saying which repositories hold the file."""
    if len(repositories) == 1:
        return Pushed(push(repositories[0].archive, path), [repositories[0]])
    file = WalFileName.parse(path.name)
    return push_data_to_every(repositories, file, _read(path), origin_cluster(file, path))


def push_data_to_every(repositories: Sequence[Repository], file: WalFileName, data: bytes,
                       origin: int | None = None) -> Pushed:
    """`push_data` to every repository at once: raises when a required one fails; an
    optional one that fails, does not answer within its `timeout`, or whose spool
    already holds WAL for it (the queue keeps its order, and a repository known to be
    down is not waited on again), gets the file spooled."""
    started = time.monotonic()
    queued = [each for each in repositories if not each.required and _queued(each)]
    encoded = Encoded(data)

    def write(archive: Archive) -> str:
        return push_data(archive, file, data, encoded, origin)

    attempts = [_Attempt(each, write) for each in repositories if not each.required and each not in queued]
    written = to_every([each for each in repositories if each.required], write)
    lines = [f"{name}: {summary}" for name, summary in written.results.items()]
    holding = [each for each in repositories if each.name in written.results]
    for attempt in attempts:
        summary = attempt.outcome(started + attempt.repository.settings.timeout)
        if summary is None:
            queued.append(attempt.repository)
        else:
            lines.append(f"{attempt.repository.name}: {summary}")
            holding.append(attempt.repository)
    for repository in queued:
        lines.append(f"{repository.name}: {_spooled(repository, file, data)}")
    return Pushed("; ".join(lines), holding)


class _Attempt:
    """An optional repository's push, in a thread of its own, waited for at most the
    repository's `timeout` seconds from the push's start (one storage call's bound, not
    its retries'): PostgreSQL's archiver is not held back longer for it. A late attempt
    is left to end by itself; the file is spooled meanwhile, and should the attempt land
    after all, catch-up finds the spooled copy identical."""

    def __init__(self, repository: Repository, write: Callable[[Archive], str]) -> None:
        self.repository = repository
        self._done = threading.Event()
        self._summary: str | None = None
        self._failure = ""
        threading.Thread(target=self._run, args=(write,), name=f"pitrkit-{repository.name}", daemon=True).start()

    def _run(self, write: Callable[[Archive], str]) -> None:
        try:
            self._summary = write(self.repository.archive)
        except Exception as exc:  # any failure of an optional repository is its own, logged below
            self._failure = str(exc) if isinstance(exc, PitrkitError) else f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()

    def outcome(self, deadline: float) -> str | None:
        """Its summary, or None when it failed or is late (logged)."""
        name = self.repository.name
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            log.warning("repository %r: no answer within its timeout (%gs); it is optional, carrying on without it",
                        name, self.repository.settings.timeout)
            return None
        if self._summary is None:
            log.warning("repository %r: %s; it is optional, carrying on without it", name, self._failure)
        return self._summary


def _queued(repository: Repository) -> bool:
    try:
        return bool(spool.waiting(repository.settings)) or spool.behind_since(repository.settings) is not None
    except PitrkitError as exc:
        log.warning("repository %r: %s", repository.name, exc)
        return True


def _spooled(repository: Repository, file: WalFileName, data: bytes) -> str:
    """Keep the file for an optional repository that did not take it. Never raises: the
    required repositories hold the file, and PostgreSQL must not wait for this one."""
    try:
        if spool.behind_since(repository.settings) is not None:
            spool.mark_behind(repository.settings, file.name)
            return f"behind, {file.name} to be copied from a required repository"
        if spool.keep(repository.settings, file.name, data):
            return f"spooled {file.name} for it"
        log.warning("repository %r: its spool is full (spool_max); %s is not spooled, and the repository is marked "
                    "behind: catch-up will copy what it lacks from a required repository", repository.name, file.name)
        return f"spool full, {file.name} to be copied from a required repository"
    except PitrkitError as exc:
        try:
            spool.mark_behind(repository.settings, file.name)
        except PitrkitError:
            pass  # the same fault, most likely: the error below says what it lacks
        log.error("repository %r: %s; it lacks %s until catch-up or `pitrkit repo sync` copies it", repository.name,
                  exc, file.name)
        return f"not spooled: {exc}"


class Encoded:
    """A WAL file framed for storage once for every repository that stores it alike (in
    plaintext: compression is the same for all), instead of compressed once per
    repository; an encrypted repository's object is its own."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._lock = threading.Lock()
        self._plaintext: tuple[bytes, objects.ObjectHeader] | None = None

    def framed(self, compressor: Compressor, cipher: Cipher | None) -> tuple[bytes, objects.ObjectHeader]:
        if cipher is not None:
            return objects.encode(self._data, compressor, cipher)
        with self._lock:
            if self._plaintext is None:
                self._plaintext = objects.encode(self._data, compressor, None)
            return self._plaintext


def push_data(archive: Archive, file: WalFileName, data: bytes, encoded: Encoded | None = None,
              origin: int | None = None) -> str:
    """Archive `data`, read already, as the WAL file `file`; as `push`. `encoded`: the
    framing shared with the other repositories `data` goes to; `origin`: see
    `origin_cluster`."""
    compression = archive.config.compression
    compressor = archive.plugins.compressor(compression.algorithm, compression.level, compression.threads)
    archive = archive.era(_validate(archive, file, data, origin))
    cipher = archive.write_cipher()

    blob, header = (encoded or Encoded(data)).framed(compressor, cipher)
    key = wal_key(file)
    try:
        archive.put(key, blob)
    except ObjectExists:
        if cipher is not None and not cipher.can_decrypt:
            return _compare_sealed(archive, key, file, header)
        # Compare with what the stored object really holds, not just its header: a
        # damaged object must not pass for the segment PostgreSQL is about to recycle.
        try:
            stored = objects.decode(key, archive.get(key), archive.plugins.compressor, cipher)
        except objects.CorruptObject as exc:
            raise _unreadable(file, exc) from None
        if stored == data:
            return f"{file.name} was already archived with identical content"
        if file.kind == WalFileKind.PARTIAL:
            return _extend_partial(archive, key, file, stored, data, blob)
        raise RefusedError(
            f"{file.name} is already archived with different content "
            f"(stored sha256 {hashlib.sha256(stored).hexdigest()[:16]}…, "
            f"this file {header.sha256.hex()[:16]}…); refusing to overwrite it"
        ) from None
    return f"archived {file.name}: {header.size} bytes, stored {len(blob)} ({header.compression})"


def _compare_sealed(archive: Archive, key: str, file: WalFileName, header: objects.ObjectHeader) -> str:
    """The duplicate check of a host that holds only the recipient's public key: it
    cannot read the stored object, so it compares the plaintext size and SHA-256 its
    header records. The body's integrity is then checked by whoever restores."""
    try:
        stored, _ = objects.read_header(key, archive.get(key))
    except objects.CorruptObject as exc:
        raise _unreadable(file, exc) from None
    if stored.size == header.size and stored.sha256 == header.sha256:
        return f"{file.name} was already archived with identical content (same size and checksum)"
    if file.kind == WalFileKind.PARTIAL:
        raise RefusedError(f"{file.name} is already archived with other content, and this host holds only the "
                           "encryption public key, so it cannot check that the new partial extends it; "
                           "refusing to overwrite it")
    raise RefusedError(f"{file.name} is already archived with different content (stored sha256 "
                       f"{stored.sha256.hex()[:16]}…, this file {header.sha256.hex()[:16]}…); refusing to overwrite it")


def _unreadable(file: WalFileName, exc: objects.CorruptObject) -> RefusedError:
    return RefusedError(f"{file.name} is already in the archive but unreadable ({exc}); "
                        "refusing to overwrite it: move the damaged object aside")


def _extend_partial(archive: Archive, key: str, file: WalFileName, stored: bytes, data: bytes, blob: bytes) -> str:
    # pg_receivewal pads a partial segment with zeros to the full size, so "the stored
    # WAL" ends at its last non-zero byte; the padding says nothing and may be overwritten.
    stored_end, new_end = _wal_end(stored), _wal_end(data)
    if data[:stored_end] == stored[:stored_end]:
        # Not compare-and-swap: two writers extending the same partial at the same moment
        # leave one of their copies, and each extends what was stored, so no WAL is lost.
        archive.put(key, blob, overwrite=True)
        return f"extended {file.name}: {new_end - stored_end} more bytes of WAL, {new_end} in all"
    if stored[:new_end] == data[:new_end]:
        # An older view of the same segment (a restarted receiver re-streaming it).
        return f"{file.name} is already archived with all of this file's WAL and more"
    # Not zeros past the end of one of them: at a promotion, the server's own copy of the
    # old timeline's last segment ends in whatever its file held (partial_copies.py).
    # Imported only when two partials differ: the wal-push hot path stays lean.
    from pitrkit.postgres import partial_copies

    verdict = partial_copies.compare(stored, data)
    if verdict == partial_copies.Verdict.NEW:
        archive.put(key, blob, overwrite=True)
        return f"replaced {file.name}: this file holds all the valid WAL of the stored copy, and more"
    if verdict == partial_copies.Verdict.STORED:
        return f"{file.name} is already archived with all of this file's valid WAL (the rest of it is not WAL)"
    raise RefusedError(
        f"{file.name} is already archived with WAL that diverges from this file's within the first "
        f"{min(stored_end, new_end)} bytes; refusing to overwrite it (two clusters or timelines writing "
        "to one archive?)"
    )


def _wal_end(data: bytes) -> int:
    """The offset just past the last non-zero byte."""
    return len(data.rstrip(b"\0"))


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as exc:
        raise PitrkitError(f"cannot read {path}: {exc.strerror}") from None


def _validate(archive: Archive, file: WalFileName, data: bytes, origin: int | None = None) -> int:
    """Check the file (module docstring); returns the era it goes to: a segment's is the
    era of the cluster its page header names (a late archiver of the cluster before a
    `pitrkit upgrade` still reaches its own era), any other file's the era of the
    cluster it came from (`origin`), else the current era."""
    # Read afresh, never a copy a long-lived agent holds: a file system swapped or
    # unmounted since must refuse this push (ArchiveMissing), not receive it.
    identity = archive.identity(fresh=True)
    era = _era_of_origin(identity, file, origin)
    if file.has_page_header:
        try:
            page = validate_segment(file, data)
        except InvalidSegment as exc:
            raise RefusedError(f"refusing {file.name}: {exc}") from None
        found = identity.era_of(page.system_identifier)
        if found is None:
            raise RefusedError(
                f"refusing {file.name}: it belongs to the cluster with system identifier "
                f"{page.system_identifier}, but the archive {archive.storage.url} belongs to "
                f"{_held(identity)}"
            )
        era = found
        if page.segment_size != identity.wal_segment_size:
            raise RefusedError(
                f"refusing {file.name}: its segment size is {page.segment_size} bytes, "
                f"the archive's is {identity.wal_segment_size}"
            )
    elif file.kind == WalFileKind.HISTORY:
        try:
            parse_history(data.decode("ascii"), file.name)
        except (UnicodeDecodeError, UsageError) as exc:
            raise RefusedError(f"refusing {file.name}: not a timeline history file ({exc})") from None
    elif not data.startswith(b"START WAL LOCATION: "):
        raise RefusedError(f"refusing {file.name}: not a backup history file")
    return era.era


def _era_of_origin(identity: ArchiveIdentity, file: WalFileName, origin: int | None) -> Era:
    if origin is None:
        return identity.current_era
    era = identity.era_of(origin)
    if era is None:
        raise RefusedError(f"refusing {file.name}: it comes from the data directory of the cluster with system "
                           f"identifier {origin}, but the archive belongs to {_held(identity)}")
    return era


def stored_era(archive: Archive, path: Path) -> Archive:
    """The era a push of the file at `path` stores it in (as `_validate` chooses), from
    its first page header alone; the archive's own view for a file no era takes (its
    push is refused, so it is not stored there either). archive.json as last read (the
    agent reads it afresh just before: no second read on its path)."""
    identity = archive.identity()
    file = WalFileName.parse(path.name)
    if not file.has_page_header:
        try:
            return archive.era(_era_of_origin(identity, file, origin_cluster(file, path)).era)
        except RefusedError:
            return archive
    try:
        with open(path, "rb") as source:
            page = read_page_header(source.read(LONG_PAGE_HEADER_SIZE))
    except (OSError, InvalidSegment):
        return archive
    era = identity.era_of(page.system_identifier)
    return archive if era is None else archive.era(era.era)


def _held(identity: ArchiveIdentity) -> str:
    return identity.clusters + " (after a pg_upgrade, `pitrkit upgrade` records the new cluster)"

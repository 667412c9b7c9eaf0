"""The catalog lock, `locks/catalog.json`: one writer of catalog documents at a time.

`catalog/retention.json`, `catalog/backups.json` and the WAL indexes `catalog/wal/*.json`
are rewritten whole (the storage has no compare-and-swap), so two writers at once can
lose each other's changes: two `retention apply` runs each storing its own `deleting`
list lose the other's intent, and a `catalog rebuild` indexing a folder while retention
empties it leaves an index naming removed segments. Whoever rewrites them holds this lock:

* `retention apply` (not `--dry-run`, which writes nothing) and `catalog rebuild`: they
  refuse, with one line naming the holder, when it is held.
* backup-push, for its catalog update after the manifest is stored: the backup exists
  from its manifest alone, and readers find it from there, so when the lock is held the
  update is skipped with a warning rather than the backup failed.

Taking it is a create-only put of a document naming the holder. It holds for `HELD_FOR`
past the object's store time, the storage's own clock, and is renewed (rewritten, which
moves the store time on) every `RENEW_EVERY` while held: a holder that dies stops
renewing, and the next writer removes the lapsed lock and takes it. Whether a lock has
lapsed is judged on the storage's clock alone: the store time of a probe object written
just then against the lock's. (A backend that reports no store times is judged by the
holder's `expires_at` and this host's clock, with `CLOCK_SKEW_MARGIN` of slack.)

The store time of the lock just taken is also the storage's "now" that retention judges
leases by (catalog/lease.py), so no two hosts' clocks are ever compared.

Removing a lapsed lock and taking it are two calls, so two writers could both remove and
both take: each removes only the lock it judged (it reads the token again first), and a
holder checks its token at every renewal and before each irreversible step, refusing to
go on once its lock is not its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import UTC, datetime, timedelta
from types import TracebackType

import msgspec

from pitrkit.catalog.documents import CatalogLock, shown
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.hookspecs import ObjectExists, ObjectNotFound
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive

log = logging.getLogger(__name__)

CATALOG_LOCK_KEY = "locks/catalog.json"
HELD_FOR = timedelta(minutes=10)
RENEW_EVERY = HELD_FOR / 5
# How far two hosts' clocks may disagree where the storage says nothing of store times.
CLOCK_SKEW_MARGIN = timedelta(minutes=5)


class LockHeld(RefusedError):
    """Another writer holds the catalog lock."""


class Held:
    """The catalog lock, held: renewed from a thread until `release` (also on leaving the
    context). `stored_at`: the lock's store time when taken (POSIX seconds, the storage's
    clock), None when the storage does not say."""

    def __init__(self, archive: Archive, document: CatalogLock, stored_at: float | None) -> None:
        self.archive = archive
        self.document = document
        self.stored_at = stored_at
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="catalog lock renewal", daemon=True)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()

    def check(self) -> None:
        """Refuse to go on once the lock is no longer this holder's (it lapsed while this
        process was stalled, and another writer took it)."""
        if self._lost is None and not self._ours():
            self._lost = "the lock in the archive is no longer this run's"
        if self._lost is not None:
            raise LockHeld(f"lost the catalog lock ({CATALOG_LOCK_KEY}): {self._lost}; stopping before "
                           "changing anything more (a rerun finishes the work)")

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._lost is None and self._ours():
            self.archive.delete(CATALOG_LOCK_KEY)

    def _ours(self) -> bool:
        stored, _ = _read(self.archive)
        return stored is not None and stored.token == self.document.token

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY.total_seconds()):
            try:
                if not self._ours():
                    self._lost = "another writer took it after it lapsed"
                    return
                now = _now()
                renewed = msgspec.structs.replace(self.document, expires_at=now + HELD_FOR)
                self.archive.put(CATALOG_LOCK_KEY, codec.encode(renewed), overwrite=True)
                self.document = renewed
            except PitrkitError as exc:  # it holds until its expiry; the next round tries again
                log.warning("could not renew the catalog lock (it holds until %s): %s",
                            self.document.expires_at.isoformat(timespec="seconds"), exc)


def take(archive: Archive, command: str) -> Held:
    """The catalog lock for `command` ("retention apply", ...); `LockHeld` naming the
    holder when another writer has it and it has not lapsed."""
    for _ in range(2):  # a lapsed lock found in the way is removed once, then taken
        now = _now()
        document = CatalogLock(token=secrets.token_hex(8), host=socket.gethostname(), pid=os.getpid(),
                               command=command, taken_at=now.replace(microsecond=0), expires_at=now + HELD_FOR,
                               held_for=HELD_FOR.total_seconds())
        try:
            archive.put(CATALOG_LOCK_KEY, codec.encode(document))
        except ObjectExists:
            _remove_if_lapsed(archive)
            continue
        try:
            stored_at = archive.stat(CATALOG_LOCK_KEY).modified
        except ObjectNotFound:
            stored_at = None
        held = Held(archive, document, stored_at)
        held.check()  # not removed as lapsed by another writer between our put and now
        held._thread.start()
        return held
    holder, _ = _read(archive)
    raise LockHeld(f"the catalog is locked by {_describe(holder)}; try again once it is done")


def _remove_if_lapsed(archive: Archive) -> None:
    """Remove the lock in the way if it lapsed; `LockHeld` naming its holder if not."""
    holder, stored_at = _read(archive)
    if holder is None:
        return  # released meanwhile
    if not _lapsed(archive, holder, stored_at):
        raise LockHeld(f"the catalog is locked by {_describe(holder)}; try again once it is done")
    if _read(archive)[0] == holder:  # still the one judged: not a successor's fresh lock
        log.warning("removing the lapsed catalog lock of %s", _describe(holder))
        archive.delete(CATALOG_LOCK_KEY)


def _lapsed(archive: Archive, holder: CatalogLock, stored_at: float | None) -> bool:
    """On the storage's clock: the store time of a probe written now against the lock's."""
    if stored_at is not None:
        probe = f"locks/clock-{secrets.token_hex(8)}"
        archive.put(probe, b"")
        try:
            now = archive.stat(probe).modified
        finally:
            archive.delete(probe)
        if now is not None:
            return now > stored_at + holder.held_for
    # The margin comes off now, never onto the stored time: a forged expiry in year 9999
    # must not overflow.
    return holder.expires_at < _now() - CLOCK_SKEW_MARGIN


def _read(archive: Archive) -> tuple[CatalogLock | None, float | None]:
    """The lock as stored now and its store time; (None, None) when there is none. One
    that does not decode is somebody's lock all the same: refused, naming the key."""
    try:
        stored_at = archive.stat(CATALOG_LOCK_KEY).modified
        data = archive.get(CATALOG_LOCK_KEY)
    except ObjectNotFound:
        return None, None
    try:
        return codec.decode(data, CatalogLock, CATALOG_LOCK_KEY), stored_at
    except ValueError as exc:
        raise LockHeld(f"{exc}; if no retention, catalog rebuild or backup-push is running, remove "
                       f"{CATALOG_LOCK_KEY}") from None


def _describe(holder: CatalogLock | None) -> str:
    if holder is None:
        return "another writer"
    return (f"{shown(holder.command)} on {shown(holder.host)} pid {holder.pid} since {holder.taken_at.isoformat()} "
            f"({CATALOG_LOCK_KEY}; it lapses {holder.held_for / 60:g} minutes after its holder stops renewing it)")


def _now() -> datetime:
    return datetime.now(UTC)

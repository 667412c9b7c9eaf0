"""Restore leases, `leases/<id>.json`: a restore's claim on the backup it copies and the
WAL after it, so that retention leaves them in place while they are in use.

Leases and retention's intent (`catalog/retention.json`) follow one protocol: each side
stores its own document first and reads the other's after. A restore stores its lease,
then reads which backups retention is removing; retention stores which backups it is
removing, then lists the leases. Whichever stores second sees the other's document, so a
backup is never both in use by a restore and being removed.

A lease expires unless renewed: a holder that dies stops renewing, and retention ignores
(and removes) the lease once it has lapsed. `Renewal` renews from a background thread
while the holder works.

Whether a lease has lapsed is judged on one clock, the storage's: a lease holds for
`held_for` seconds past its object's store time (each renewal rewrites it, moving the
store time on), against the store time of the catalog lock retention has just taken
(catalog/lock.py). The restore host's clock and retention's never meet, so a restore host whose
clock is behind cannot have its lease judged lapsed while it works. A backend that
reports no store times, a lease written before `held_for` existed, and a `--dry-run`
(which takes no lock, so has no reading of the storage's clock) fall back to the
lease's `expires_at`, written on the restore host's clock, against retention's clock
with `CLOCK_SKEW_MARGIN` of slack: clocks that disagree by more than that are the one
case left in which a working restore's lease can look lapsed.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import NamedTuple

import msgspec

from pitrkit.catalog.backups import manifest_present, retention_state
from pitrkit.catalog.documents import BackupSummary, Lease
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.storage import codec
from pitrkit.storage.archive import LEASES_PREFIX, Archive, lease_key

log = logging.getLogger(__name__)

# How long a working holder's lease lasts past its last renewal: long enough to ride out
# a storage outage of a few minutes, short enough that a crashed restore's claim lapses
# well before the next scheduled retention run.
HELD_FOR = timedelta(minutes=10)
# Renewed this often, so that several renewals in a row can fail before the lease lapses.
RENEW_EVERY = HELD_FOR / 5
# How far the restore host's clock may be behind retention's where the storage's clock
# cannot be read (see the module's docstring).
CLOCK_SKEW_MARGIN = timedelta(minutes=5)


def _now() -> datetime:
    return datetime.now(UTC)


def take(archive: Archive, backup_id: str, timeline: int, first_segment: str, doing: str = "restore") -> Lease:
    """Store a new lease on `backup_id` and the WAL from `first_segment` along the path
    to `timeline`, held for `HELD_FOR`; `doing` names the holder's command for people."""
    now = _now()
    lease = Lease(
        lease_id=f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}",
        holder=f"{doing} on {socket.gethostname()} pid {os.getpid()}",
        backup_id=backup_id,
        timeline=timeline,
        first_segment=first_segment,
        taken_at=now.replace(microsecond=0),
        expires_at=now + HELD_FOR,
        held_for=HELD_FOR.total_seconds(),
    )
    archive.put(lease_key(lease.lease_id), codec.encode(lease))
    return lease


def hold_until(archive: Archive, lease: Lease, expires_at: datetime) -> Lease:
    """Rewrite the lease with a new expiry (an overwrite: retention may have removed a
    lapsed one, and renewing it brings it back). What counts is how long from now that
    is, from the new store time on."""
    renewed = msgspec.structs.replace(lease, expires_at=expires_at,
                                      held_for=(expires_at - _now()).total_seconds())
    archive.put(lease_key(lease.lease_id), codec.encode(renewed), overwrite=True)
    return renewed


def release(archive: Archive, lease: Lease) -> None:
    archive.delete(lease_key(lease.lease_id))


@contextmanager
def holding(archive: Archive, backup: BackupSummary, doing: str) -> Iterator[None]:
    """Hold `backup` and its chain (retention keeps a leased backup's ancestors) while a
    command that reads them works: a lease taken, then retention's intent read (this
    module's protocol), refused when it is removing any of them or already did; renewed
    until the block ends, then released."""
    held = take(archive, backup.backup_id, backup.timeline, backup.first_segment, doing)
    with Renewal(archive, held) as renewal:
        try:
            going = set(retention_state(archive).deleting).intersection([*backup.chain, backup.backup_id])
            if going or not manifest_present(archive, backup.backup_id):
                raise RefusedError(f"backup {backup.backup_id} or a link of its chain is being removed by retention")
            yield
        finally:
            renewal.release()


class Leases(NamedTuple):
    active: list[Lease]  # unexpired: what they name must stay
    expired: list[Lease]  # lapsed: their holders stopped renewing; they protect nothing


def survey(archive: Archive, now: datetime, storage_now: float | None = None) -> Leases:
    """Every lease in the archive, by whether it still holds at `storage_now` (the
    storage's clock, POSIX seconds: a store time just read), else at `now` (this host's)."""
    active: list[Lease] = []
    expired: list[Lease] = []
    for info in archive.list_folder(LEASES_PREFIX).objects:
        lease = _read(archive, info.key)
        if lease is not None:
            (active if holds(lease, info.modified, now, storage_now) else expired).append(lease)
    return Leases(active, expired)


def holds(lease: Lease, stored_at: float | None, now: datetime, storage_now: float | None) -> bool:
    """Whether `lease`, stored (last renewed) at `stored_at` on the storage's clock, still
    holds: on the storage's clock when both readings are known, else on the holders'."""
    if lease.held_for is not None and stored_at is not None and storage_now is not None:
        return stored_at + lease.held_for > storage_now
    # The margin comes off `now`, never onto the stored time: a forged expiry in year
    # 9999 must not overflow.
    return lease.expires_at > now - CLOCK_SKEW_MARGIN


def stored_at(archive: Archive, lease_id: str) -> float | None:
    """The lease's store time, None once released (or when the storage does not say)."""
    try:
        return archive.stat(lease_key(lease_id)).modified
    except ObjectNotFound:
        return None


def read(archive: Archive, lease_id: str) -> Lease | None:
    """The lease as stored now; None once released."""
    return _read(archive, lease_key(lease_id))


def _read(archive: Archive, key: str) -> Lease | None:
    """An unreadable lease is refused rather than ignored: what it protects cannot be known."""
    try:
        data = archive.get(key)
    except ObjectNotFound:
        return None
    try:
        return codec.decode(data, Lease, key)
    except ValueError as exc:
        raise PitrkitError(f"{exc}; if no restore is running, remove {key}") from None


class Renewal:
    """Renews a lease every `RENEW_EVERY` from a thread, from entering the context until
    `release`, `hold_until` or leaving it. Leaving without either keeps the lease until it
    lapses on its own (`HELD_FOR` after the last renewal): a holder that failed midway may
    still leave something behind that needs the WAL, and the lease needs no cleanup.

    `lease` None: a holder that could not store one (a read-only archive); nothing to
    renew, and releasing or holding does nothing."""

    def __init__(self, archive: Archive, lease: Lease | None) -> None:
        self.archive = archive
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease renewal", daemon=True)

    def __enter__(self) -> Renewal:
        if self.lease is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop_renewing()

    def release(self) -> None:
        self._stop_renewing()
        if self.lease is not None:
            release(self.archive, self.lease)

    def hold_until(self, expires_at: datetime) -> None:
        self._stop_renewing()
        if self.lease is not None:
            self.lease = hold_until(self.archive, self.lease, expires_at)

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY.total_seconds()):
            current = self.lease
            assert current is not None  # the thread only runs for a stored lease
            try:
                self.lease = hold_until(self.archive, current, _now() + HELD_FOR)
            except PitrkitError as exc:
                # The lease still holds until its expiry; the next round tries again.
                log.warning("could not renew lease %s (it holds until %s): %s",
                            current.lease_id, current.expires_at.isoformat(timespec="seconds"), exc)

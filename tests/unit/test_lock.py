"""The catalog lock (pitrkit/catalog/lock.py) on real local storage, whose store times are the
files' mtimes: who takes it, the refusal naming the holder, a lapsed lock judged on the
storage's clock, a holder whose lock was taken from it, and the writers that hold it
(`catalog rebuild`, a backup's catalog update)."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from pitrkit.catalog import lock, maintenance
from pitrkit.catalog.backups import backups
from pitrkit.catalog.documents import CatalogLock
from pitrkit.catalog.lock import CATALOG_LOCK_KEY, LockHeld
from pitrkit.cli import main
from pitrkit.demo.localpg import wait_for
from pitrkit.storage import codec
from pitrkit.storage.archive import BACKUP_CATALOG_KEY
from tests.unit.synthetic_archive import SyntheticArchive
from tests.unit.test_retention import NoStoreTimes


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 10)
    return store


def age(store: SyntheticArchive, by: timedelta) -> None:
    stamp = os.stat(store.root / CATALOG_LOCK_KEY).st_mtime - by.total_seconds()
    os.utime(store.root / CATALOG_LOCK_KEY, (stamp, stamp))


def stored_lock(store: SyntheticArchive) -> CatalogLock:
    return codec.decode((store.root / CATALOG_LOCK_KEY).read_bytes(), CatalogLock, CATALOG_LOCK_KEY)


def test_taken_held_refused_and_released(store):
    with lock.take(store.archive, "retention apply") as held:
        assert held.stored_at == os.stat(store.root / CATALOG_LOCK_KEY).st_mtime
        document = stored_lock(store)
        assert (document.command, document.host, document.pid) == ("retention apply", socket.gethostname(),
                                                                   os.getpid())
        with pytest.raises(LockHeld, match=rf"^the catalog is locked by retention apply on "
                                           rf"{socket.gethostname()} pid {os.getpid()} since "):
            lock.take(store.archive, "catalog rebuild")
        held.check()  # still its own
    assert not (store.root / CATALOG_LOCK_KEY).exists()
    lock.take(store.archive, "catalog rebuild").release()


def test_a_lapsed_lock_is_judged_on_the_storage_clock_and_removed(store, monkeypatch):
    # The dead holder's clock ran a day ahead: its own expiry says it holds for a day,
    # but it has not been renewed for longer than it holds on the storage's clock.
    monkeypatch.setattr(lock, "_now", lambda: datetime.now(UTC) + timedelta(days=1))
    dead = lock.take(store.archive, "retention apply")
    dead._stop.set()  # it dies: no more renewals, no release
    monkeypatch.undo()
    age(store, lock.HELD_FOR - timedelta(seconds=30))
    with pytest.raises(LockHeld):
        lock.take(store.archive, "retention apply")  # not yet
    age(store, timedelta(seconds=31))
    with lock.take(store.archive, "catalog rebuild"):
        assert stored_lock(store).command == "catalog rebuild"
    assert not list(store.root.glob("locks/*"))  # nor any clock probe left behind
    # The dead holder, had it only been stalled, finds out before its next step.
    with pytest.raises(LockHeld, match=r"^lost the catalog lock \(locks/catalog.json\)"):
        dead.check()


def test_a_held_lock_is_renewed(store, monkeypatch):
    monkeypatch.setattr(lock, "RENEW_EVERY", timedelta(seconds=0.01))
    with lock.take(store.archive, "retention apply") as held:
        age(store, timedelta(minutes=9))
        first = held.document
        wait_for(lambda: stored_lock(store) != first, 30, interval=0.01, what="the lock to be renewed")
        assert stored_lock(store).expires_at > first.expires_at
        assert os.stat(store.root / CATALOG_LOCK_KEY).st_mtime > datetime.now(UTC).timestamp() - 60


def test_an_unreadable_lock_is_refused_naming_it(store):
    (store.root / "locks").mkdir()
    (store.root / CATALOG_LOCK_KEY).write_text("{")
    with pytest.raises(LockHeld, match=r"locks/catalog.json is not a valid CatalogLock.*remove locks/catalog.json"):
        lock.take(store.archive, "retention apply")


def test_catalog_rebuild_refuses_while_the_lock_is_held(store, tmp_path, capsys):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    with lock.take(store.archive, "retention apply"):
        assert main(["--config", str(config), "catalog", "rebuild"]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("pitrkit: the catalog is locked by retention apply on "), err
        assert not (store.root / BACKUP_CATALOG_KEY).exists()
    assert main(["--config", str(config), "catalog", "rebuild"]) == 0


def test_a_backup_catalog_update_is_refused_while_the_lock_is_held(store):
    summary = store.backup("A", 1, 2, 3)
    with lock.take(store.archive, "retention apply"), pytest.raises(LockHeld):
        maintenance.record_backup(store.archive, summary)
    assert not (store.root / BACKUP_CATALOG_KEY).exists()
    assert [backup.backup_id for backup in backups(store.archive)] == ["A"]  # from its manifest
    maintenance.record_backup(store.archive, summary)
    assert (store.root / BACKUP_CATALOG_KEY).exists()


def forge_lock(store: SyntheticArchive, **fields: object) -> None:
    """A lock written by someone else."""
    document = {"token": "0a1b2c3d4e5f6a7b", "host": "db1", "pid": 7, "command": "retention apply",
                "taken_at": "2026-11-30T12:00:00Z", "expires_at": "2026-11-30T12:10:00Z", "held_for": 600.0, **fields}
    (store.root / "locks").mkdir(exist_ok=True)
    (store.root / CATALOG_LOCK_KEY).write_bytes(msgspec.json.encode(document))


@pytest.mark.parametrize(("expires_at", "lapsed"), [
    ("9999-12-31T23:59:59.999999Z", False), ("9999-12-31T23:59:59-23:59", False), ("0001-01-01T00:00:00+23:59", True),
])
def test_a_lock_expiring_at_the_ends_of_time_is_judged_without_overflow(store, expires_at, lapsed):
    # Judged by its expiry only where the storage reports no store times.
    store.archive.storage = NoStoreTimes(store.archive.storage)
    forge_lock(store, expires_at=expires_at)
    if lapsed:
        lock.take(store.archive, "catalog rebuild").release()
    else:
        with pytest.raises(LockHeld, match=r"^the catalog is locked by retention apply on db1 pid 7 since "):
            lock.take(store.archive, "catalog rebuild")


def test_a_forged_holder_is_shown_escaped_on_one_line(store, tmp_path, capsys):
    forge_lock(store, host="db1\npitrkit: the catalog is free", command="retention apply\x1b[2J",
               expires_at="2999-01-01T00:00:00Z")
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n')
    assert main(["--config", str(config), "catalog", "rebuild"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert err.startswith("pitrkit: the catalog is locked by 'retention apply\\x1b[2J' on "
                          "'db1\\npitrkit: the catalog is free' pid 7 since "), err

"""An interrupted backup-push (Ctrl-C, or SIGTERM: the daemon's stop) removes the
unfinished folder it was storing, never a backup whose manifest is stored, nor another
run's objects: each run claims its backup id before storing anything, so two runs that
start in the same second never share a folder (pitrkit/backup/push.py, take_backup). The
end to end case, a daemon stopped mid-backup and started again, is
tests/integration/test_daemon.py's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pitrkit.backup.push import _claim_backup_id, _remove_unfinished
from pitrkit.catalog.backups import survey_backups
from pitrkit.config import load
from pitrkit.errors import RefusedError
from pitrkit.storage.archive import Archive, backup_prefix, claim_key, manifest_key
from tests.unit.segments import init_archive

BACKUP_ID = "20261207T020000Z"  # the second ServerClock(0) reads


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    (tmp_path / "archive").mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n')
    archived = Archive(load(config))
    init_archive(archived)
    return archived


def store_parts(archive: Archive) -> None:
    for number in range(3):
        archive.put(f"{backup_prefix(BACKUP_ID)}data/{number:08d}", b"part")
    archive.put(f"{backup_prefix(BACKUP_ID)}blockmap/0", b"map")


def test_the_unfinished_folder_is_removed(archive: Archive) -> None:
    store_parts(archive)
    assert survey_backups(archive).unfinished == [BACKUP_ID]
    _remove_unfinished(archive, BACKUP_ID, "was interrupted")
    assert list(archive.list(backup_prefix(BACKUP_ID))) == []
    assert survey_backups(archive).unfinished == []


def test_a_stored_manifest_keeps_the_backup(archive: Archive) -> None:
    # The interrupt came just after the commit: the backup exists and stays whole.
    store_parts(archive)
    archive.put(manifest_key(BACKUP_ID), b"{}")
    before = sorted(info.key for info in archive.list(backup_prefix(BACKUP_ID)))
    _remove_unfinished(archive, BACKUP_ID, "was interrupted")
    assert sorted(info.key for info in archive.list(backup_prefix(BACKUP_ID))) == before


def test_nothing_stored_is_nothing_to_remove(archive: Archive) -> None:
    _remove_unfinished(archive, BACKUP_ID, "was interrupted")
    assert list(archive.list(backup_prefix(BACKUP_ID))) == []


class ServerClock:
    """The server's clock as _claim_backup_id reads it (ServerSession.clock): the given
    instants, one per call. Just before a second ends, so that waiting for the next one
    costs the test nothing."""

    def __init__(self, *seconds: int) -> None:
        self._instants = iter(datetime(2026, 12, 7, 2, 0, second, 999_999, tzinfo=UTC) for second in seconds)

    def clock(self) -> datetime:
        return next(self._instants)


def test_two_runs_in_one_second_never_share_a_folder_and_an_interrupt_removes_only_its_own(archive: Archive) -> None:
    # Both read the server's clock in the same second, before either stored a part: the
    # first claims the id, the second is turned to the next second before it stores
    # anything. Interrupted, the second removes its own folder and nothing of the first's.
    first, _ = _claim_backup_id(archive, ServerClock(0))  # type: ignore[arg-type]
    second, _ = _claim_backup_id(archive, ServerClock(0, 1))  # type: ignore[arg-type]
    assert (first, second) == ("20261207T020000Z", "20261207T020001Z")
    store_parts(archive)  # the first run's parts (BACKUP_ID is its id)
    archive.put(f"{backup_prefix(second)}data/00000000", b"the second run's part")
    _remove_unfinished(archive, second, "was interrupted")
    assert list(archive.list(backup_prefix(second))) == []
    assert sorted(info.key for info in archive.list(backup_prefix(first))) == [
        f"{backup_prefix(first)}blockmap/0", claim_key(first),
        *(f"{backup_prefix(first)}data/{number:08d}" for number in range(3))]


def test_an_id_claimed_three_seconds_running_is_refused(archive: Archive) -> None:
    for second in range(3):
        _claim_backup_id(archive, ServerClock(second))  # type: ignore[arg-type]
    with pytest.raises(RefusedError, match="backup id 20261207T020002Z is already taken"):
        _claim_backup_id(archive, ServerClock(0, 1, 2))  # type: ignore[arg-type]
    assert list(archive.list(backup_prefix("20261207T020003Z"))) == []


def test_a_claim_that_meets_its_own_earlier_attempt_is_ours(archive: Archive, monkeypatch) -> None:
    # The first attempt stored the claim and lost its answer; Archive's retry meets it.
    put_document = archive.put_document

    def landed_then_lost(key: str, document: object, **options: object) -> None:
        put_document(key, document, **options)  # type: ignore[arg-type]
        put_document(key, document, **options)  # type: ignore[arg-type]  # the retry: ObjectExists

    monkeypatch.setattr(archive, "put_document", landed_then_lost)
    assert _claim_backup_id(archive, ServerClock(0))[0] == "20261207T020000Z"  # type: ignore[arg-type]

"""An interrupted backup-push (Ctrl-C, or SIGTERM: the daemon's stop) removes the
unfinished folder it was storing, never a backup whose manifest is stored
(pitrkit/backup/push.py, take_backup). The end to end case, a daemon stopped mid-backup
and started again, is tests/integration/test_daemon.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit.backup.push import _remove_interrupted
from pitrkit.catalog.backups import survey_backups
from pitrkit.config import load
from pitrkit.storage.archive import Archive, backup_prefix, manifest_key
from tests.unit.segments import init_archive

BACKUP_ID = "20261207T020000Z"


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
    _remove_interrupted(archive, BACKUP_ID)
    assert list(archive.list(backup_prefix(BACKUP_ID))) == []
    assert survey_backups(archive).unfinished == []


def test_a_stored_manifest_keeps_the_backup(archive: Archive) -> None:
    # The interrupt came just after the commit: the backup exists and stays whole.
    store_parts(archive)
    archive.put(manifest_key(BACKUP_ID), b"{}")
    before = sorted(info.key for info in archive.list(backup_prefix(BACKUP_ID)))
    _remove_interrupted(archive, BACKUP_ID)
    assert sorted(info.key for info in archive.list(backup_prefix(BACKUP_ID))) == before


def test_nothing_stored_is_nothing_to_remove(archive: Archive) -> None:
    _remove_interrupted(archive, BACKUP_ID)
    assert list(archive.list(backup_prefix(BACKUP_ID))) == []

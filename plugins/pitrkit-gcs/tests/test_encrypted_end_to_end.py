"""An encrypted gs:// archive end to end on PostgreSQL 15 and 18, against the emulator:
the same path as test_end_to_end.py with `[encryption] mode = "key"`, and a check that
every WAL and backup object in the bucket is encrypted and unreadable without the key."""

from __future__ import annotations

import pytest
from pitrkit_gcs.storage import GcsStorage

from pitrkit import objects

from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    digests,
    drop_doomed,
    note_point,
    restore_into,
    succeeded,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def encrypted_gcs_setup(gcs_setup):
    gcs_setup.encrypt_with_a_new_key()
    return gcs_setup


def test_an_encrypted_gcs_archive_restores_to_a_time(cluster, encrypted_gcs_setup):
    setup = encrypted_gcs_setup
    primary = archiving_primary(cluster, setup)
    write_round(primary, 1)
    backup = backup_push(setup)
    write_round(primary, 2)
    point = note_point(primary)
    write_round(primary, 3)
    drop_doomed(primary)
    archive_everything(primary)

    storage = GcsStorage(setup.url, timeout=10)
    stored = [info.key for info in storage.list("") if info.key.startswith(("wal/0", "backups/"))]
    framed = [key for key in stored if not key.endswith((".json", ".history"))]
    assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in framed)
    for key in framed:
        blob = storage.get(key)
        header, _ = objects.read_header(key, blob)
        assert header.encryption is not None and header.key_id is not None, key
        with pytest.raises(objects.CorruptObject):  # without the key, nothing reads it
            objects.decode(key, blob, lambda name: pytest.fail("an object was decompressed without its key"))

    restored, result = restore_into(cluster, setup, "--to", point.time)
    succeeded(result)
    restored.start(timeout=180)
    wait_until_promoted(restored)
    assert digests(restored) == point.digests

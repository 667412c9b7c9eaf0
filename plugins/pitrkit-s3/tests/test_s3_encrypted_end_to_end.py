"""An encrypted s3:// archive end to end on PostgreSQL 15 and 18, against moto's server:
the same path as test_s3_end_to_end.py with `[encryption] mode = "key"`, and a check that
every WAL and backup object in the bucket is encrypted and unreadable without the key."""

from __future__ import annotations

import pytest
from pitrkit_s3.storage import S3Storage

from pitrkit.storage import objects

from pitr_workload import (
    archive_everything,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    recovered,
    write_round,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def encrypted_s3_setup(s3_setup):
    s3_setup.encrypt_with_a_new_key()
    return s3_setup


def test_an_encrypted_s3_archive_restores_to_a_time(cluster, encrypted_s3_setup):
    setup = encrypted_s3_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    point = note_point(primary)
    write_round(primary, 3)
    drop_doomed(primary)
    archive_everything(primary)

    storage = S3Storage(setup.url, timeout=10)
    stored = [info.key for info in storage.list("") if info.key.startswith(("wal/0", "backups/"))]
    framed = [key for key in stored if not key.endswith((".json", ".history"))]
    assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in framed)
    for key in framed:
        blob = storage.get(key)
        header, _ = objects.read_header(key, blob)
        assert header.encryption is not None and header.key_id is not None, key
        with pytest.raises(objects.CorruptObject):  # without the key, nothing reads it
            objects.decode(key, blob, lambda name: pytest.fail("an object was decompressed without its key"))

    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

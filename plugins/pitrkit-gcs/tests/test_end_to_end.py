"""A gs:// archive end to end on PostgreSQL 15 and 18, against the emulator: archive_command
runs `pitrkit wal-push` into the bucket, backup-push stores a base backup there, and a
restore to a time gives exactly the data noted at that time."""

from __future__ import annotations

import pytest
from pitrkit_gcs.storage import GcsStorage

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


def test_archive_backup_and_restore_to_a_time_through_gcs(cluster, gcs_setup):
    setup = gcs_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    drop_doomed(primary)
    archive_everything(primary)
    assert "doomed" in point.digests

    # Everything went to the bucket, under the URL's prefix.
    stored = [info.key for info in GcsStorage(setup.url, timeout=10).list("")]
    assert f"backups/{backup['backup_id']}/manifest.json" in stored
    assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in stored)
    assert sum(key.startswith("wal/00000001") for key in stored) >= 2

    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

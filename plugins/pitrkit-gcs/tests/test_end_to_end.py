"""A gs:// archive end to end on PostgreSQL 15 and 18, against the emulator: archive_command
runs `pitrkit wal-push` into the bucket, backup-push stores a base backup there, and a
restore to a time gives exactly the data noted at that time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pitrkit_gcs.storage import GcsStorage

import pgharness
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
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration


@dataclass
class GcsSetup(PitrkitSetup):
    bucket: str = ""
    emulator: str = ""  # STORAGE_EMULATOR_HOST for every pitrkit the test and PostgreSQL run

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/pitrkit/main"

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "STORAGE_EMULATOR_HOST": self.emulator}


@pytest.fixture
def gcs_setup(gcs_runnable_install, server_tmp: Path, bucket: str, emulator):
    setup = GcsSetup(pitrkit=gcs_runnable_install.pitrkit, archive=server_tmp / "unused",
                     config=server_tmp / "pitrkit.toml",
                     runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                     bucket=bucket, emulator=emulator.endpoint)
    setup.write_config()
    yield setup
    setup.stop_agents()


def test_archive_backup_and_restore_to_a_time_through_gcs(cluster, gcs_setup):
    setup = gcs_setup
    primary = archiving_primary(cluster, setup)
    write_round(primary, 1)
    backup = backup_push(setup)
    write_round(primary, 2)
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

    restored, result = restore_into(cluster, setup, "--to", point.time)
    succeeded(result)
    restored.start(timeout=180)
    wait_until_promoted(restored)
    assert digests(restored) == point.digests

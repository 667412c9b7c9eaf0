"""An encrypted gs:// archive end to end on PostgreSQL 15 and 18, against the emulator:
the same path as test_end_to_end.py with `[encryption] mode = "key"`, and a check that
every WAL and backup object in the bucket is encrypted and unreadable without the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pitrkit_gcs.storage import GcsStorage
from test_end_to_end import GcsSetup

from pitrkit import objects

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

pytestmark = pytest.mark.integration


class EncryptedGcsSetup(GcsSetup):
    key_file: Path

    def write_config(self, *args: Any, **kwargs: Any) -> None:
        super().write_config(*args, **kwargs)
        with open(self.config, "a") as config:
            config.write(f'[encryption]\nmode = "key"\nkey_file = "{self.key_file}"\n')


@pytest.fixture
def encrypted_gcs_setup(gcs_runnable_install, server_tmp: Path, bucket: str, emulator):
    setup = EncryptedGcsSetup(pitrkit=gcs_runnable_install.pitrkit, archive=server_tmp / "unused",
                              config=server_tmp / "pitrkit.toml",
                              runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                              bucket=bucket, emulator=emulator.endpoint)
    setup.key_file = server_tmp / "archive.key"
    made = pgharness.run_as_server_user([setup.pitrkit, "keygen", "--key-file", setup.key_file], check=False)
    assert made.returncode == 0, made.stderr
    setup.write_config()
    yield setup
    setup.stop_agents()


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

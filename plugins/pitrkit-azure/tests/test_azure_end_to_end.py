"""An az:// archive end to end on PostgreSQL 15 and 18, against Azurite: archive_command
runs `pitrkit wal-push` into the container (as the server user, through the installed
venv, the connection string read from a file only that user reads), backup-push stores
a base backup there, and a restore to a time gives exactly the data noted at that time.
Lean for CI: one archive per major, plain on 15 and encrypted on 18 (`[encryption] mode =
"key"`, every WAL and backup object then checked to be unreadable without the key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from azurite import ACCOUNT
from pitrkit_azure.storage import AzureStorage

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

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "unit"))
from segments import long_header  # noqa: E402  (the project's synthetic WAL headers)

pytestmark = pytest.mark.integration


def test_an_empty_prefix_is_not_an_archive(container, tmp_path):
    """A mistyped prefix answers "not found" for every key: wal-push must refuse it rather
    than start an archive there, and wal-fetch must not answer "not archived"."""
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "az://{ACCOUNT}/{container}/typo"\nretries = 0\n'
                      "[agent]\nenabled = false\n")
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(long_header(pageaddr=16 << 20).ljust(16 << 20, b"\0"))

    def pitrkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=120, env=os.environ)

    pushed = pitrkit("wal-push", str(segment))
    assert pushed.returncode == 1 and "pitrkit init" in pushed.stderr, pushed.stderr
    fetched = pitrkit("wal-fetch", segment.name, str(tmp_path / "RECOVERYXLOG"))
    assert fetched.returncode == 126 and "archive.json" in fetched.stderr, fetched.stderr
    assert list(AzureStorage(f"az://{ACCOUNT}/{container}/typo", timeout=10).list("")) == []


def test_a_missing_container_is_a_fault_for_wal_fetch(emulator, tmp_path):
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "az://{ACCOUNT}/no-such-container/main"\nretries = 3\n'
                      "[agent]\nenabled = false\n")
    fetched = subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), "wal-fetch",
                              "000000010000000000000001", str(tmp_path / "RECOVERYXLOG")],
                             capture_output=True, text=True, timeout=120, env=os.environ)
    assert fetched.returncode == 126, fetched.stderr
    assert "container no-such-container does not exist" in fetched.stderr and "Traceback" not in fetched.stderr


def test_archive_backup_and_restore_to_a_time_through_azure(cluster, pg_major, azure_setup):
    setup = azure_setup
    encrypted = pg_major >= 18
    if encrypted:
        setup.encrypt_with_a_new_key()
    primary, backup = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    drop_doomed(primary)
    archive_everything(primary)
    assert "doomed" in point.digests

    # Everything went to the container, under the URL's prefix.
    stored = [info.key for info in AzureStorage(setup.url, timeout=10).list("")]
    assert f"backups/{backup['backup_id']}/manifest.json" in stored
    assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in stored)
    assert sum(key.startswith("wal/00000001") for key in stored) >= 2
    if encrypted:
        storage = AzureStorage(setup.url, timeout=10)
        framed = [key for key in stored if key.startswith(("wal/0", "backups/")) and not key.endswith((".json",
                                                                                                       ".history"))]
        assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in framed)
        for key in framed:
            blob = storage.get(key)
            header, _ = objects.read_header(key, blob)
            assert header.encryption is not None and header.key_id is not None, key
            with pytest.raises(objects.CorruptObject):  # without the key, nothing reads it
                objects.decode(key, blob, lambda name: pytest.fail("an object was decompressed without its key"))

    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

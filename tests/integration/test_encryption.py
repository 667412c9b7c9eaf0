"""An encrypted archive end to end, on PostgreSQL 15 and 18: archive_command, backup-push
and a restore to a time through the installed `pitrkit` as the server user, with
`[encryption] mode = "key"` and a key file from `pitrkit keygen`.

The yardsticks: the restored data equals the data noted at the target (digests); every
stored object is encrypted with the archive's key and holds neither the key nor readable
table content; and with another key, wal-fetch refuses with exit 126, naming the object.
"""

from __future__ import annotations

import base64

import pytest

from pitrkit import catalog, objects

import pgharness
from pitr_workload import (
    archive_everything,
    digests,
    note_point,
    primary_with_a_backup,
    recovered,
    succeeded,
    write_round,
)

pytestmark = pytest.mark.integration


def test_an_encrypted_archive_restores_to_a_time(cluster, encrypted_setup):
    setup = encrypted_setup
    primary, _ = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    archive_everything(primary)

    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

    # Every object is encrypted with the one key archive.json names, and none holds the
    # key or the workload's plaintext (the accounts' notes are in every backup and WAL).
    identity = catalog.decode((setup.archive / "archive.json").read_bytes(), catalog.ArchiveIdentity, "archive.json")
    assert identity.encryption is not None and identity.encryption.mode == "key"
    encoded = setup.key_file.read_text().split()[1]
    secrets = (base64.b64decode(encoded), encoded.encode())
    stored = [path for path in (setup.archive / "wal").rglob("*") if path.is_file()] + \
        list(setup.archive.glob("backups/*/data/*"))
    assert len(stored) > 3
    for path in stored:
        blob = path.read_bytes()
        header, _ = objects.read_header(str(path), blob)
        assert header.key_id == identity.encryption.current_key_id, path
        assert b"opened" not in blob, path
    for path in setup.archive.rglob("*"):
        assert not path.is_file() or not any(secret in path.read_bytes() for secret in secrets), path

    # Another key: wal-fetch refuses with a fault (recovery must stop, not end), naming the object.
    setup.key_file = setup.key_file.with_name("other.key")
    succeeded(pgharness.run_as_server_user([setup.pitrkit, "keygen", "--key-file", setup.key_file], check=False))
    setup.write_config(postgres=primary)
    segment = sorted((setup.archive / "wal").glob("*/0*"))[0]
    result = setup.run("wal-fetch", segment.name, str(setup.runtime_dir / segment.name))
    assert result.returncode == 126, result.stderr
    assert f"wal/{segment.parent.name}/{segment.name}" in result.stderr and "does not list" in result.stderr
    assert encoded not in result.stderr

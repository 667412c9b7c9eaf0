"""An encrypted archive end to end, on PostgreSQL 15 and 18: archive_command, backup-push
and a restore to a time through the installed `pitrkit` as the server user, with
`[encryption] mode = "key"` and a key file from `pitrkit keygen`, or mode "recipient"
with a database host that holds the public and signing keys and a restore host that
holds the private and verify keys.

The yardsticks: the restored data equals the data noted at the target (digests); every
stored object is encrypted with the archive's key and holds neither the key nor readable
table content; with another key, wal-fetch refuses with exit 126, naming archive.json;
and a manifest, catalog/backups.json or archive.json altered in one value is refused by
every command that reads it, with one line naming it, while the authentic archive
restores, and restore-plan and restore list what the backup's configuration would run.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pitrkit.storage import codec, envelope, objects
from pitrkit.storage.identity import ArchiveIdentity

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    backup_push,
    digests,
    note_point,
    primary_with_a_backup,
    recovered,
    refusal,
    restore_into,
    succeeded,
    wait_until_promoted,
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
    stored_identity = (setup.archive / "archive.json").read_bytes()
    identity = codec.decode(envelope.unseal("archive.json", stored_identity, None), ArchiveIdentity,
                              "archive.json")
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

    # Another key: wal-fetch refuses with a fault (recovery must stop, not end), naming
    # archive.json, which that key does not authenticate.
    setup.key_file = setup.key_file.with_name("other.key")
    succeeded(pgharness.run_as_server_user([setup.pitrkit, "keygen", "--key-file", setup.key_file], check=False))
    setup.write_config(postgres=primary)
    segment = sorted((setup.archive / "wal").glob("*/0*"))[0]
    result = setup.run("wal-fetch", segment.name, str(setup.runtime_dir / segment.name))
    assert result.returncode == 126, result.stderr
    assert "archive.json does not authenticate" in result.stderr and "does not list" in result.stderr
    assert encoded not in result.stderr


def _altered(path: Path, pattern: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """Change the one value `pattern` captures in the stored document, keeping its tag;
    returns the original bytes."""
    original = path.read_bytes()
    matches = list(re.finditer(pattern, original))
    assert len(matches) == 1, (path, pattern)
    start, end = matches[0].span(1)
    path.write_bytes(original[:start] + change(original[start:end]) + original[end:])
    return original


def _plus_one(value: bytes) -> bytes:
    return str(int(value) + 1).encode()


@pytest.mark.parametrize("mode", ["key", "recipient"])
def test_altered_documents_are_refused_naming_them_and_the_authentic_archive_restores(cluster, pitrkit_setup, mode):
    setup = pitrkit_setup
    if mode == "key":
        setup.encrypt_with_a_new_key()
    else:
        setup.encrypt_for_a_recipient()
    primary = archiving_primary(cluster, setup)
    # In postgresql.auto.conf, so in the backup: restore-plan and restore must list it.
    primary.sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    write_round(primary, 1)
    backup_id = backup_push(setup)["backup_id"]
    write_round(primary, 2)
    point = note_point(primary)
    write_round(primary, 3)
    archive_everything(primary)
    setup.stop_agents()
    if mode == "recipient":
        setup.as_restore_host(postgres=primary)  # the private and verify keys only

    manifest = setup.archive / "backups" / backup_id / "manifest.json"
    backups = setup.archive / "catalog" / "backups.json"
    identity = setup.archive / "archive.json"
    segment = sorted((setup.archive / "wal").glob("*/0*"))[0].name
    tamperings = [
        # A part's size: restore would cut the stream into files in the wrong places.
        (manifest, rb'"key":"backups/[^"]+/data/00000000","size":(\d+)', ["restore-plan", "restore"]),
        (backups, rb'"system_identifier": (\d+)', ["backup-list", "restore-plan", "restore"]),
        (identity, rb'"system_identifier": (\d+)', ["backup-list", "restore-plan", "restore", "wal-fetch"]),
    ]
    for path, pattern, commands in tamperings:
        original = _altered(path, pattern, _plus_one)
        key = str(path.relative_to(setup.archive))
        for command in commands:
            if command == "restore":
                restored, result = restore_into(cluster, setup, "--to", point.time)
                assert not restored.pgdata.exists(), "nothing is written from an altered document"
            elif command == "wal-fetch":
                result = setup.run("wal-fetch", segment, str(setup.runtime_dir / segment))
                assert result.returncode == 126, result.stderr  # recovery stops, it does not end early
            else:
                result = setup.run(command, *(["--to", point.time] if command == "restore-plan" else []))
            assert refusal(result).startswith(f"pitrkit: {key} does not authenticate: "), (command, result.stderr)
        path.write_bytes(original)

    plan = succeeded(setup.run("restore-plan", "--to", point.time))
    assert "warning:      the backup's configuration runs code" in plan
    assert "postgresql.auto.conf: shared_preload_libraries = 'pg_stat_statements'" in plan
    assert "archive_command = " in plan
    restored, result = restore_into(cluster, setup, "--to", point.time)
    succeeded(result)
    assert "pitrkit: WARNING: the restored configuration runs code as the server's OS user" in result.stderr
    assert "postgresql.auto.conf: shared_preload_libraries = 'pg_stat_statements'" in result.stderr
    restored.start(timeout=180)
    wait_until_promoted(restored)
    assert digests(restored) == point.digests

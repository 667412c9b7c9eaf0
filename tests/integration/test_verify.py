"""`pitrkit verify` on real archives, on PostgreSQL 15 and 18: a backup and the WAL after
it, archived by archive_command and backup-push through the installed `pitrkit` as the
server user, is clean; then each kind of damage, made one at a time on the stored files
and undone before the next, is found and named, with exit 1 and one `pitrkit:` line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pitr_workload import archive_everything, primary_with_a_backup, refusal, succeeded, write_round
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration


def verify(setup: PitrkitSetup, *args: str) -> dict:
    """`verify --json ARGS`, which must be clean: the report."""
    report: dict = json.loads(succeeded(setup.run("verify", "--json", *args, timeout=600)))
    assert report["findings"] == [] and report["errors"] == report["warnings"] == 0, report
    return report


def problems(setup: PitrkitSetup, *args: str) -> tuple[str, str]:
    """`verify ARGS`, which must find something: its report and its one error line."""
    result = setup.run("verify", *args, timeout=600)
    error = refusal(result)
    assert result.returncode == 1, result.stderr
    return result.stdout, error


class Damage:
    """Changes one stored file and puts it back afterwards, so that each check starts
    from the clean archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.original = path.read_bytes()

    def __enter__(self) -> bytes:
        return self.original

    def __exit__(self, *exc: object) -> None:
        self.path.write_bytes(self.original)


def archived_with_a_backup(cluster, setup: PitrkitSetup) -> dict:
    """A backup between WAL segments: its summary."""
    primary, backup = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    write_round(primary, 3)
    archive_everything(primary)  # WAL after the backup's: a lost backup segment is a gap
    return backup


def manifest(setup: PitrkitSetup, backup_id: str) -> dict:
    document: dict = json.loads((setup.archive / "backups" / backup_id / "manifest.json").read_bytes())
    return document


def test_a_real_archive_is_clean_and_each_damage_is_named(cluster, pitrkit_setup):
    setup = pitrkit_setup
    backup = archived_with_a_backup(cluster, setup)
    backup_id = backup["backup_id"]
    report = verify(setup)
    assert report["backups"] == [{"backup_id": backup_id, "restorable": True, "era": 1}]
    [timeline] = report["timelines"]
    assert timeline["checked_from"] == backup["first_segment"] and timeline["gaps"] == []
    deep = verify(setup, "--deep")
    parts = manifest(setup, backup_id)["parts"]
    maps = manifest(setup, backup_id)["block_maps"]  # a full backup's too: its relation files' checksums
    segments = [path for path in (setup.archive / "wal").rglob("*") if path.is_file()]
    assert maps and deep["objects_read"] == len(parts) + len(maps) + len(segments) and deep["bytes_read"] > 0
    not_restorable = f"backups/{backup_id}/manifest.json: backup {backup_id} is not restorable"

    # A deleted segment: the backup's last, with WAL after it.
    lost = setup.stored(backup["last_segment"])
    with Damage(lost):
        lost.unlink()
        out, error = problems(setup)
        assert f"ERROR   wal/{lost.parent.name}/{lost.name}: missing: the WAL of timeline 1 has a gap " \
               f"({lost.name}); it resumes at " in out
        assert not_restorable in out and "verify:    2 errors" in out
        assert error.startswith("pitrkit: verified ") and "2 errors" in error

    # A truncated backup part: its size gives it away; --deep says the same, unread.
    part = setup.archive / parts[0]["key"]
    with Damage(part) as original:
        part.write_bytes(original[: len(original) // 2])
        for args in ((), ("--deep",)):
            out, _ = problems(setup, *args)
            assert f"ERROR   {parts[0]['key']}: stored size {len(original) // 2} bytes, the manifest of backup " \
                   f"{backup_id} says {len(original)}: truncated or replaced" in out
            assert not_restorable + ": 1 of its" in out

    # A truncated segment: only --deep reads it (its folder has no index to compare with).
    first = setup.stored(backup["first_segment"])
    with Damage(first) as original:
        first.write_bytes(original[:-100])
        out, _ = problems(setup, "--deep")
        assert f"ERROR   wal/{first.parent.name}/{first.name}: corrupt: " in out
        assert f"{not_restorable}: WAL it needs is damaged: {first.name}" in out

    # A backup part with bytes flipped in the middle: the same size, so only --deep.
    largest = max(parts, key=lambda p: p["stored_size"])
    path = setup.archive / largest["key"]
    with Damage(path) as original:
        flipped = bytearray(original)
        middle = len(flipped) // 2
        flipped[middle : middle + 8] = bytes(b ^ 0xFF for b in flipped[middle : middle + 8])
        path.write_bytes(bytes(flipped))
        verify(setup)
        out, error = problems(setup, "--deep")
        assert f"ERROR   {largest['key']}: corrupt: " in out
        objects = len(parts) + len(maps)
        assert f"{not_restorable}: 1 of its {objects} objects are missing or damaged ({largest['key']} ...)" in out
        assert f"first: {largest['key']}: corrupt: " in error  # errors first, by key

    verify(setup)  # every damage undone


def test_deep_decrypts_every_object_of_an_encrypted_archive(cluster, encrypted_setup):
    setup = encrypted_setup
    backup = archived_with_a_backup(cluster, setup)
    verify(setup, "--deep")

    first = setup.stored(backup["first_segment"])
    with Damage(first) as original:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        first.write_bytes(bytes(flipped))
        out, _ = problems(setup, "--deep")
        assert f"ERROR   wal/{first.parent.name}/{first.name}: corrupt: decryption failed" in out

"""`pitrkit retention apply` on real archives, on PostgreSQL 15 and 18 (issue 6): several
backups and a timeline branch archived into one archive, retention applied with
policies that move the boundary (the clock cannot be moved), and afterwards every target
the policy still promises restores exactly (restore + digest compare) and `verify` is
clean; restores' leases keep their backups; a run killed midway leaves nothing the
planner would pick half-removed, and the next run finishes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

import pgharness
from pitr_workload import (
    RecoveryPoint,
    archive_everything,
    backup_push,
    branch_at,
    digests,
    note_point,
    primary_with_a_backup,
    recovered,
    refusal,
    restore_plan,
    restore_started,
    succeeded,
    wait_until_promoted,
    write_round,
)
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration


def with_retention(setup: PitrkitSetup, primary: pgharness.Cluster, **rules: object) -> None:
    """The configuration with a [retention] section of `rules` (TOML ints and strings)."""
    setup.write_config(postgres=primary)
    with open(setup.config, "a") as file:
        file.write("[retention]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in rules.items()))


def apply(setup: PitrkitSetup, *args: str) -> dict:
    """`retention apply ARGS --json`, which must succeed: its report."""
    report: dict = json.loads(succeeded(setup.run("retention", "apply", *args, "--json", timeout=600)))
    return report


def removed(report: dict) -> list[str]:
    return [backup["backup_id"] for backup in report["removed_backups"]]


def kept(report: dict) -> dict[str, list[str]]:
    return {backup["backup_id"]: backup["reasons"] for backup in report["kept"]}


def verify_clean(setup: PitrkitSetup) -> dict:
    report: dict = json.loads(succeeded(setup.run("verify", "--json", timeout=600)))
    assert report["findings"] == [] and report["errors"] == report["warnings"] == 0, report
    return report


def restores_exactly(cluster, setup: PitrkitSetup, point: RecoveryPoint, *args: str) -> None:
    """A restore to `point` (paused there: no new timeline is archived) has its data."""
    restored = recovered(cluster, setup, "--to", point.time, *args, pause=True)
    assert digests(restored) == point.digests
    restored.stop()


def wal_files(setup: PitrkitSetup, timeline_id: int) -> list[str]:
    return sorted(path.name for path in (setup.archive / "wal").glob(f"{timeline_id:08X}*/*"))


def expire_leases(setup: PitrkitSetup) -> list[str]:
    """What the clock does `restore_lease` after a restore: every lease was stored longer
    ago than it holds for, on the storage's clock (here: the file's mtime)."""
    expired = []
    for path in sorted((setup.archive / "leases").glob("*.json")):
        lease = json.loads(path.read_bytes())
        stored_at = time.time() - lease["held_for"] - 1
        os.utime(path, (stored_at, stored_at))
        expired.append(lease["lease_id"])
    return expired


def test_retention_keeps_every_promised_target_exact_across_a_branch(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, first = primary_with_a_backup(cluster, setup)
    early = note_point(primary)  # only the first backup reaches it
    archive_everything(primary)
    second = backup_push(setup)
    write_round(primary, 3)
    branch = note_point(primary)
    write_round(primary, 4)
    archive_everything(primary)

    # Timeline 2: a restore to `branch` through the second backup, promoted; it archives
    # into the same archive, then stops for good.
    branched, on_two, _ = branch_at(cluster, setup, branch)
    branched.stop()

    # Timeline 1 goes on: a third backup, after the branch point.
    write_round(primary, 5)
    third = backup_push(setup)
    write_round(primary, 6)
    on_one = note_point(primary)
    write_round(primary, 7)
    archive_everything(primary)
    timeline_two = wal_files(setup, 2)
    assert timeline_two and first["first_segment"] in wal_files(setup, 1)

    # Keep the two newest: the first backup goes, with timeline 1's WAL before the second.
    with_retention(setup, primary, keep_last=2)
    dry = apply(setup, "--dry-run")
    assert removed(dry) == [first["backup_id"]] and dry["stored_bytes"] > 0
    assert (setup.archive / "backups" / first["backup_id"] / "manifest.json").exists()
    report = apply(setup)
    assert removed(report) == [first["backup_id"]]
    assert set(kept(report)) == {second["backup_id"], third["backup_id"]}
    assert report["removed_wal"] and all(wal["timeline"] == 1 for wal in report["removed_wal"])
    assert not (setup.archive / "backups" / first["backup_id"]).exists()
    assert first["first_segment"] not in wal_files(setup, 1)
    assert second["first_segment"] in wal_files(setup, 1)
    assert wal_files(setup, 2) == timeline_two  # the second backup is on timeline 2's path
    assert "backup" in refusal(setup.run("restore-plan", "--to", early.time))
    verify_clean(setup)
    # What is still promised restores exactly: along the branch through the second
    # backup, and on timeline 1 through the third. Each restore leaves a lease (12h).
    restores_exactly(cluster, setup, on_two, "--timeline", "2")
    restores_exactly(cluster, setup, on_one)

    # Keep only the newest: the restores' leases (12h, restore_lease's default) still hold
    # the second backup, and with it the WAL its replay reads, timeline 2's included.
    with_retention(setup, primary, keep_last=1)
    report = apply(setup)
    assert removed(report) == [] and report["removed_wal"] == []
    assert any(reason.startswith("leased by restore on ") for reason in kept(report)[second["backup_id"]])
    assert wal_files(setup, 2) == timeline_two
    restores_exactly(cluster, setup, on_two, "--timeline", "2")

    # Once the leases have lapsed they hold nothing and are removed: the second backup
    # goes, and timeline 2, on whose path no kept backup lies and whose WAL is all older
    # than the third backup, loses its WAL (its history file stays).
    leases = expire_leases(setup)
    report = apply(setup)
    assert removed(report) == [second["backup_id"]] and set(kept(report)) == {third["backup_id"]}
    assert sorted(report["expired_leases"]) == leases
    assert not (setup.archive / "leases").exists()
    assert any(wal["timeline"] == 2 and wal["why"].startswith("abandoned timeline 2") for wal in report["removed_wal"])
    assert wal_files(setup, 2) == [] and (setup.archive / "wal" / "00000002.history").exists()
    assert second["first_segment"] not in wal_files(setup, 1) and third["first_segment"] in wal_files(setup, 1)
    assert "backup" in refusal(setup.run("restore-plan", "--to", on_two.time, "--timeline", "2"))
    verify_clean(setup)
    restores_exactly(cluster, setup, on_one)


def kill_once_gone(setup: PitrkitSetup, path: Path, stop: threading.Event) -> None:
    """SIGKILL the retention run as soon as `path` is gone from the archive."""
    while not stop.wait(0.002):
        if not path.exists():
            for pid in setup.pids("retention"):
                os.kill(pid, signal.SIGKILL)
            return


def test_a_run_killed_midway_leaves_a_consistent_archive_and_the_next_run_finishes(cluster, pitrkit_setup):
    setup = pitrkit_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    first = backup["backup_id"]
    between = note_point(primary)
    archive_everything(primary)
    second = backup_push(setup)["backup_id"]
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    archive_everything(primary)
    with_retention(setup, primary, keep_last=1)

    # The first backup's objects (parts, block maps) cannot be removed (a storage fault:
    # read-only folders), and the run is killed with SIGKILL once its manifest is gone.
    # Should the fault stop the run before the kill lands, it exits non-zero at the same
    # point: either way the manifest is gone and the objects are not.
    folder = setup.archive / "backups" / first
    subfolders = [folder / "data", folder / "blockmap"]
    for each in subfolders:
        each.chmod(0o555)
    stop = threading.Event()
    killer = threading.Thread(target=kill_once_gone, args=(setup, folder / "manifest.json", stop))
    killer.start()
    try:
        result = setup.run("retention", "apply", timeout=600)
    finally:
        stop.set()
        killer.join()
    assert result.returncode in (-signal.SIGKILL, 1), (result.returncode, result.stderr)
    assert not (folder / "manifest.json").exists() and any((folder / "data").iterdir())
    state = json.loads((setup.archive / "catalog" / "retention.json").read_bytes())
    assert state["deleting"] == [first]

    # The half-removed backup exists for no reader; everything else is whole.
    listing = json.loads(succeeded(setup.run("backup-list", "--json")))
    assert [backup["backup_id"] for backup in listing["backups"]] == [second]
    assert (listing["deleting"], listing["unfinished"]) == ([first], [])
    assert "backup" in refusal(setup.run("restore-plan", "--to", between.time))
    assert restore_plan(setup, "--to", point.time)["backup"]["backup_id"] == second
    assert verify_clean(setup)["being_removed"] == [first]
    restores_exactly(cluster, setup, point)

    # The fault gone, the next run finishes the interrupted removal first, once the
    # killed run's catalog lock has lapsed (10 minutes after it was stored, on the
    # storage's clock: here the file's mtime).
    for each in subfolders:
        each.chmod(0o750)
    lock = setup.archive / "locks" / "catalog.json"
    if lock.exists():
        assert "the catalog is locked by retention apply on " in refusal(setup.run("retention", "apply"))
        stored_at = time.time() - json.loads(lock.read_bytes())["held_for"] - 1
        os.utime(lock, (stored_at, stored_at))
    report = apply(setup)
    assert [(backup["backup_id"], backup["kind"]) for backup in report["removed_backups"]] == [(first, "interrupted")]
    assert not folder.exists()
    state = json.loads((setup.archive / "catalog" / "retention.json").read_bytes())
    assert state["deleting"] == [] and state["last_run"]["backups_removed"] == [first]
    verify_clean(setup)

    # A restore with --start that pauses at the target keeps its lease for the operator,
    # who may move the target on and resume; one that promotes needs no more WAL and
    # holds its lease only while it runs.
    leases = sorted((setup.archive / "leases").glob("*.json"))
    restored, said = restore_started(cluster, setup, "--to", point.time, "--action", "pause")
    assert digests(restored) == point.digests
    [paused] = re.findall(r"took lease (\S+):", said)
    assert f"lease {paused} keeps backup {second} and its WAL from retention until" in said
    restored.stop()
    restored, said = restore_started(cluster, setup, "--to", point.time, "--archive-mode", "off")
    wait_until_promoted(restored)
    assert digests(restored) == point.digests
    [promoted] = re.findall(r"took lease (\S+):", said)
    assert not (setup.archive / "leases" / f"{promoted}.json").exists()
    assert sorted((setup.archive / "leases").glob("*.json")) == sorted(
        [*leases, setup.archive / "leases" / f"{paused}.json"])

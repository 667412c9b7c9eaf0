"""A major upgrade under pitrkit (issue 17): a PostgreSQL 15 cluster archives through
`pitrkit wal-push` and is backed up, `pg_upgrade` makes a PostgreSQL 18 cluster of it
(a new system identifier, timeline 1 and the segment numbering continued), `pitrkit
upgrade` records it as the archive's era 2, and the new cluster archives and is backed
up into it. Points of both eras restore exactly (table digests), each with its own
major's binaries; the listings and retention show both eras.

Both majors run in one test, since the upgrade goes from one to the other; it skips
when either is missing (CI has both, see tests/conftest.py)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgharness
from pitr_workload import (
    archive_everything,
    backup_push,
    create_tables,
    digests,
    note_point,
    succeeded,
    wait_until_promoted,
    write_round,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def clusters(pg_installs, harness_tmp) -> Iterator:
    """Factory: clusters(major, init=True, initdb_args=()) -> Cluster, not started; every
    one stopped and removed afterwards (its server log printed, shown for failures)."""
    installs = {install.major: install for install in pg_installs}
    missing = {15, 18} - installs.keys()
    if missing:
        pytest.skip(f"PostgreSQL {', '.join(map(str, sorted(missing)))} not found: the upgrade needs 15 and 18")
    made: list[pgharness.Cluster] = []

    def make(major: int, init: bool = True, initdb_args: tuple[str, ...] = ()) -> pgharness.Cluster:
        new = pgharness.Cluster(installs[major], Path(tempfile.mkdtemp(prefix="u", dir=harness_tmp)))
        made.append(new)
        if init:
            new.initdb(extra_args=initdb_args)
        return new

    yield make
    for each in made:
        print(f"===== {each} server log =====\n{each.log()}")
        each.cleanup()


def archiving(cluster: pgharness.Cluster, setup) -> None:
    cluster.conf(archive_mode="on", archive_command=setup.archive_command, checkpoint_timeout="30s")
    cluster.env.update(setup.env)


def pg_upgrade(old: pgharness.Cluster, new: pgharness.Cluster, workdir: Path) -> None:
    """pg_upgrade as the server user, in a directory it owns (its sockets and logs go there)."""
    result = pgharness.run_as_server_user(
        [new.install.bin("pg_upgrade"), "-b", old.install.bindir, "-B", new.install.bindir, "-d", old.pgdata,
         "-D", new.pgdata, "-p", str(old.port), "-P", str(new.port), "-U", pgharness.SUPERUSER, "-s", workdir],
        cwd=workdir, timeout=600, check=False)
    assert result.returncode == 0, f"pg_upgrade failed:\n{result.stdout}\n{result.stderr}"


def restored_at(clusters, setup, major: int, point, *extra: str) -> pgharness.Cluster:
    """`pitrkit restore --to POINT --start` into a fresh directory, promoted."""
    restored = clusters(major, init=False)
    restored.env.update(setup.env)
    report = succeeded(setup.run("restore", "--to", point.time, "--target-dir", str(restored.pgdata), "--start",
                                 "--port", str(restored.port), *extra, timeout=600))
    lines = (restored.pgdata / "postmaster.pid").read_text().splitlines()
    restored.socket_dir = Path(lines[4])
    wait_until_promoted(restored)
    assert f"PostgreSQL from {restored.install.bindir}" in report or str(restored.install.bindir) in report, report
    return restored


def test_an_upgraded_cluster_s_archive_restores_points_of_both_eras(clusters, pitrkit_setup, harness_tmp):
    setup = pitrkit_setup
    old = clusters(15)
    archiving(old, setup)
    setup.init(old)
    old.start()
    create_tables(old)
    write_round(old, 1)
    first_backup = backup_push(setup)
    write_round(old, 2)
    first_point = note_point(old)
    write_round(old, 3)
    archive_everything(old)
    old.stop()  # pg_upgrade needs a cleanly shut down cluster; the archiver empties its queue first
    sysid_15 = old.system_identifier

    # PostgreSQL 18's initdb turns data checksums on; the 15 cluster has none.
    new = clusters(18, initdb_args=("--no-data-checksums",))
    workdir = pgharness.make_server_dir(Path(tempfile.mkdtemp(prefix="w", dir=harness_tmp)))
    pg_upgrade(old, new, workdir)
    sysid_18 = new.system_identifier
    assert sysid_18 != sysid_15
    archiving(new, setup)

    # The DBA's next step: `pitrkit upgrade`, with [postgres] naming the new cluster
    # (stopped: its facts from pg_controldata), before it starts archiving.
    setup.write_config(postgres=new)
    upgraded = succeeded(setup.run("upgrade"))
    assert f"recorded era 2 in the archive {setup.url}" in upgraded and str(sysid_18) in upgraded, upgraded
    assert "PostgreSQL 18" in upgraded
    again = succeeded(setup.run("upgrade"))
    assert "nothing to do" in again, again

    new.start()
    write_round(new, 4)
    second_backup = backup_push(setup)
    write_round(new, 5)
    second_point = note_point(new)
    write_round(new, 6)
    archive_everything(new)
    assert (setup.archive / "eras" / "2" / "backups" / second_backup["backup_id"] / "manifest.json").is_file()
    assert (setup.archive / "backups" / first_backup["backup_id"] / "manifest.json").is_file()
    # pg_upgrade continued the numbering on timeline 1: era 2's first segment follows era 1's last.
    era_1 = sorted(path.name for path in (setup.archive / "wal").glob("*/0*") if len(path.name) == 24)
    era_2 = sorted(path.name for path in (setup.archive / "eras" / "2" / "wal").glob("*/0*") if len(path.name) == 24)
    assert era_1 and era_2 and era_1[-1] < era_2[0] and era_2[0].startswith("00000001")

    listed = json.loads(succeeded(setup.run("backup-list", "--json")))
    assert [(backup["backup_id"], backup["era"], backup["pg_version"] // 10000) for backup in listed["backups"]] == [
        (first_backup["backup_id"], 1, 15), (second_backup["backup_id"], 2, 18)]
    rows = json.loads(succeeded(setup.run("wal-list", "--json")))["files"]
    assert {row["era"] for row in rows} == {1, 2}

    # Each era's point, from its own backup and WAL, with its own major's binaries: era
    # 1's by --bindir ([postgres] bindir is 18's now), era 2's by [postgres] bindir.
    plan = json.loads(succeeded(setup.run("restore-plan", "--to", first_point.time, "--json")))
    assert (plan["era"], plan["backup"]["backup_id"]) == (1, first_backup["backup_id"])
    at_first = restored_at(clusters, setup, 15, first_point, "--bindir", str(old.install.bindir))
    assert digests(at_first) == first_point.digests
    assert at_first.system_identifier == sysid_15
    at_second = restored_at(clusters, setup, 18, second_point)
    assert digests(at_second) == second_point.digests
    assert at_second.system_identifier == sysid_18
    auto_conf = (at_second.pgdata / "postgresql.auto.conf").read_text()
    assert "wal-fetch %f %p" in auto_conf and "--era 2" in auto_conf, auto_conf

    # verify checks each era against its own cluster; status judges the newest era.
    checked = setup.run("verify", "--json")
    report = json.loads(checked.stdout)
    assert checked.returncode == 0 and report["errors"] == 0, checked.stdout
    assert sorted((each["backup_id"], each["era"], each["restorable"]) for each in report["backups"]) == [
        (first_backup["backup_id"], 1, True), (second_backup["backup_id"], 2, True)]
    status = json.loads(setup.run("status", "--json").stdout)
    assert status["backups"] == 1 and status["last_backup"]["backup_id"] == second_backup["backup_id"], status
    assert status["era"] == 2

    # Retention weighs both eras' backups: keeping one keeps era 2's and drops era 1's.
    with open(setup.config, "a") as config:
        config.write("[retention]\nkeep_last = 1\n")
    decided = json.loads(succeeded(setup.run("retention", "apply", "--dry-run", "--json")))
    assert [(each["backup_id"], each["era"]) for each in decided["kept"]] == [(second_backup["backup_id"], 2)]
    assert [(each["backup_id"], each["era"]) for each in decided["removed_backups"]] == [
        (first_backup["backup_id"], 1)]
    # ... and with it all of era 1's WAL (the old cluster is gone); era 2's from its backup on stays.
    assert any(each["era"] == 1 and "no kept backup" in each["why"] for each in decided["removed_wal"]), decided
    assert not any(each["era"] == 2 and each["last"] >= second_backup["first_segment"]
                   for each in decided["removed_wal"]), decided

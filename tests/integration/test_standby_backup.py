"""`pitrkit backup-push` on a streaming standby, against real PostgreSQL 15 (changed pages
found by reading them) and 18 (WAL summaries, summarized on the standby), run as the
server user through the installed `pitrkit` as a DBA runs it on the standby's host.

The primary archives through pitrkit and runs pgbench throughout; the standby, made with
pg_basebackup, streams from it as a role whose password is in its primary_conninfo. A
full backup and an incremental one are taken from the standby, and each is restored to a
point after it, whose table digests must be the primary's at that point. What is stored
holds neither standby.signal nor the password. A standby is refused, in one line, without
`[backup] primary_conninfo`, when its replay lags more than `[backup] standby_max_lag`,
when primary_conninfo reaches another timeline, and when it reaches a standby.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.integration.test_backup import read_manifest, reassemble

import pgharness
from pitr_workload import (
    archive_everything,
    archiving_primary,
    recovered,
    refusal,
    restore_plan,
    succeeded,
    timeline,
    write_round,
)
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-of-the-standby"
REPLICATOR = "replicator"


def connection(cluster: pgharness.Cluster, user: str = pgharness.SUPERUSER) -> str:
    return f"host={cluster.socket_dir} port={cluster.port} user={user} dbname=postgres"


def streaming_standby(cluster_factory, primary: pgharness.Cluster) -> pgharness.Cluster:
    """A hot standby of `primary` from pg_basebackup, streaming as a role that must give
    its password (scram over the socket), the password in primary_conninfo in
    postgresql.auto.conf as `pg_basebackup -R` writes it."""
    primary.sql(f"CREATE ROLE {REPLICATOR} REPLICATION LOGIN PASSWORD '{SECRET}'")
    hba = primary.pgdata / "pg_hba.conf"
    with open(hba, "r+") as file:  # rewritten in place: the server user keeps it
        rules = file.read()
        file.seek(0)
        file.write(f"local replication {REPLICATOR} scram-sha-256\n{rules}")
    primary.sql("SELECT pg_reload_conf()")
    standby = cluster_factory(init=False)
    primary.pg_basebackup(standby.pgdata)
    with open(standby.pgdata / "postgresql.auto.conf", "a") as auto_conf:
        auto_conf.write(f"primary_conninfo = 'user={REPLICATOR} password={SECRET} host={primary.socket_dir} "
                        f"port={primary.port} application_name=standby1'\n")
    standby.signal("standby")
    standby.start()
    pgharness.wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                                           "AND application_name = 'standby1'")[0][0] == 1,
                       60, interval=0.2, what="the standby to stream from the primary")
    return standby


def replayed_to(standby: pgharness.Cluster, lsn: str) -> None:
    pgharness.wait_for(lambda: standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0], 60,
                       interval=0.1, what=f"the standby to replay up to {lsn}")


def configure(setup: PitrkitSetup, standby: pgharness.Cluster, backup: str | None) -> None:
    """[postgres] naming the standby (backup-push runs on its host), and a [backup] section."""
    setup.write_config(postgres=standby)
    if backup is not None:
        with open(setup.config, "a") as config:  # appending keeps the server user's ownership
            config.write(f"[backup]\n{backup}")


class Pgbench:
    """pgbench on the primary, rate-limited (a shared 2-core host), as the server user."""

    def __init__(self, primary: pgharness.Cluster) -> None:
        self.primary = primary
        user = pgharness.server_user()
        drop = ({"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
                if user.switch else {})
        self.process = subprocess.Popen(
            [primary.install.bin("pgbench"), "-h", str(primary.socket_dir), "-p", str(primary.port), "-U",
             pgharness.SUPERUSER, "-n", "-c", "2", "-R", "100", "-T", "600", "postgres"],
            env=pgharness.server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **drop)

    def committed(self) -> int:
        return self.primary.sql("SELECT count(*) FROM pgbench_history")[0][0]

    def stop(self) -> None:
        """Stop it, and wait until none of its sessions is left: nothing commits after."""
        assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)
        pgharness.wait_for(lambda: not self.primary.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")[0][0], 30,
            interval=0.1, what="pgbench's sessions to end")


def table_digests(cluster: pgharness.Cluster) -> dict[str, tuple[int, str]]:
    """Per table of schema public, its row count and an md5 of every row in text order
    (pgbench_history has no key)."""
    tables = [row[0] for row in cluster.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return {table: tuple(cluster.sql(
        f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {table} t")[0])
        for table in tables}


def noted(primary: pgharness.Cluster) -> tuple[str, dict[str, tuple[int, str]]]:
    """The primary's digests and its WAL position after them (reads commit nothing)."""
    digests = table_digests(primary)
    return primary.sql("SELECT pg_current_wal_lsn()::text")[0][0], digests


def backup_from_standby(setup: PitrkitSetup, *args: str) -> dict:
    result = setup.run("backup-push", "--json", *args, timeout=600)
    summary: dict = json.loads(succeeded(result))
    assert SECRET not in result.stdout + result.stderr
    return summary


def backup_under_pgbench(setup: PitrkitSetup, primary: pgharness.Cluster, *args: str
                         ) -> tuple[dict, tuple[str, dict[str, tuple[int, str]]]]:
    """A backup of the standby while pgbench commits on the primary (it commits during the
    backup), then pgbench stopped and the point noted: the backup's summary and the point."""
    load = Pgbench(primary)
    try:
        pgharness.wait_for(load.committed, 60, interval=0.1, what="pgbench to commit")
        before = load.committed()
        backup = backup_from_standby(setup, *args)
        assert load.committed() > before
    finally:
        load.stop()
    return backup, noted(primary)


def assert_stored_without_signal_or_secret(setup: PitrkitSetup, backup_id: str) -> None:
    manifest = read_manifest(setup, backup_id)
    assert "BACKUP FROM: standby" in manifest.backup_label
    paths = {file.path for file in manifest.files} | {file.path for file in manifest.block_files}
    assert "postgresql.auto.conf" in paths and "standby.signal" not in paths and "recovery.signal" not in paths
    stored = (setup.archive / "backups" / backup_id / "manifest.json").read_bytes()
    assert SECRET.encode() not in stored
    files = reassemble(setup, manifest)
    assert not [path for path, content in files.items() if SECRET.encode() in content]
    auto_conf = files["postgresql.auto.conf"].decode()
    assert f"user={REPLICATOR}" in auto_conf and "password removed by pitrkit backup-push" in auto_conf


def test_backups_of_a_standby_under_pgbench_restore_exactly(cluster, pitrkit_setup, pg_major):
    primary = archiving_primary(cluster, pitrkit_setup, **({"summarize_wal": "on"} if pg_major >= 17 else {}))
    # The test's checkpoints only: a timed one would move the start of the standby's backups.
    primary.sql("ALTER SYSTEM SET checkpoint_timeout = '1h'")
    primary.sql("SELECT pg_reload_conf()")
    primary.run("pgbench", "-i", "-q", "-s", "1", "-h", str(primary.socket_dir), "-p", str(primary.port), "-U",
                pgharness.SUPERUSER, "postgres", timeout=120)
    standby = streaming_standby(cluster, primary)
    archive_everything(primary)

    # Without the primary's connection a standby is refused, saying what to set.
    configure(pitrkit_setup, standby, None)
    message = refusal(pitrkit_setup.run("backup-push"))
    assert "is a standby" in message and "[backup] primary_conninfo" in message
    assert not list((pitrkit_setup.archive / "backups").glob("*"))

    configure(pitrkit_setup, standby, f'primary_conninfo = "{connection(primary)}"\nstandby_max_lag = "64MB"\n')
    full, after_full = backup_under_pgbench(pitrkit_setup, primary)
    # A standby's backup starts at the last checkpoint of the primary it replayed: with
    # none since the full ended, an incremental would start before its parent ends, and is
    # refused as PostgreSQL refuses it (exit 3: the daemon then takes a full backup).
    early = pitrkit_setup.run("backup-push", "--incremental")
    assert early.returncode == 3 and f"before its parent {full['backup_id']} ends" in refusal(early)
    assert sorted(path.name for path in (pitrkit_setup.archive / "backups").iterdir()) == [full["backup_id"]]
    # After a checkpoint on the primary (checkpoint_timeout's, in production), replayed:
    primary.sql("CHECKPOINT")
    replayed_to(standby, primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
    incremental, after_incremental = backup_under_pgbench(pitrkit_setup, primary, "--incremental")
    assert incremental["start_lsn"] != full["start_lsn"]
    write_round(primary, 1)  # WAL past the last point, then all of it archived
    archive_everything(primary)

    for backup in (full, incremental):
        assert_stored_without_signal_or_secret(pitrkit_setup, backup["backup_id"])
        assert backup["system_identifier"] == primary.system_identifier and backup["timeline"] == 1
    assert incremental["parent"] == full["backup_id"]
    assert incremental["changed_blocks"]["method"] == ("wal-summaries" if pg_major >= 17 else "page-lsn")

    # Each restored to a point after it (the full to one before the incremental): the
    # primary's data at that point, exactly.
    for (lsn, digests), backup in ((after_full, full), (after_incremental, incremental)):
        assert restore_plan(pitrkit_setup, "--lsn", lsn)["backup"]["backup_id"] == backup["backup_id"]
        restored = recovered(cluster, pitrkit_setup, "--lsn", lsn)
        assert table_digests(restored) == digests
        auto_conf = (restored.pgdata / "postgresql.auto.conf").read_text()
        assert SECRET not in auto_conf and "application_name=standby1" in auto_conf
        assert not (restored.pgdata / "standby.signal").exists()
    promoted = restored  # the incremental's restore, promoted: a new timeline of the same cluster

    # primary_conninfo reaching a server on another timeline, or a standby: refused.
    configure(pitrkit_setup, standby, f'primary_conninfo = "{connection(promoted)}"\n')
    message = refusal(pitrkit_setup.run("backup-push"))
    moved_on = timeline(promoted)
    assert moved_on > 1 and f"the standby is on timeline 1 (its last restartpoint), the primary [backup] " \
        f"primary_conninfo reaches on timeline {moved_on}" in message
    configure(pitrkit_setup, standby, f'primary_conninfo = "{connection(standby)}"\n')
    assert "is in recovery too: it must reach the primary" in refusal(pitrkit_setup.run("backup-push"))

    # A standby whose replay is paused falls behind: refused once past the bound.
    configure(pitrkit_setup, standby, f'primary_conninfo = "{connection(primary)}"\nstandby_max_lag = "64kB"\n')
    standby.sql("SELECT pg_wal_replay_pause()")
    write_round(primary, 2)
    message = refusal(pitrkit_setup.run("backup-push"))
    assert "the standby's replay is" in message and "more than [backup] standby_max_lag (64kB)" in message
    assert len(list((pitrkit_setup.archive / "backups").glob("*/manifest.json"))) == 2

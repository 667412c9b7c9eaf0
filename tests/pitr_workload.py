"""The point-in-time-restore tests' workload and yardstick.

A workload: a few small tables, each with an integer primary key `id`, written in numbered
rounds so that every round leaves a different mark (new rows, changed rows, deleted rows).
The yardstick: per table, the row count and an md5 of all rows in key order. A restore is
right when every table's digest equals the one noted at the target, and the set of tables
is the same (a dropped table is missing, a table created later is absent).

Recovery points are noted the way a DBA notes them on a bad day: the server's own
clock_timestamp() text right after a commit, and pg_current_wal_lsn() after that commit.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pgharness
from pitrkit_setup import PitrkitSetup

TABLES = ("accounts", "events", "doomed")
ACCOUNTS = 2000


@dataclass(frozen=True)
class TableDigest:
    rows: int
    md5: str


# Table name -> digest, for the tables in schema public.
Digests = dict[str, TableDigest]


@dataclass(frozen=True)
class RecoveryPoint:
    """What a database looked like at one moment, and how to name that moment."""

    time: str  # clock_timestamp()::text, e.g. "2026-11-23 14:41:37.123456+00"
    lsn: str  # pg_current_wal_lsn()::text, e.g. "0/3000148"
    timeline: int
    digests: Digests


# --- the workload -------------------------------------------------------------------------


def archiving_primary(cluster_factory, setup: PitrkitSetup, **settings: object) -> pgharness.Cluster:
    """A started cluster archiving through `setup` exactly as PostgreSQL runs
    archive_command, with [postgres] pointing at it (for backup-push) and the tables
    created and loaded."""
    primary = cluster_factory(
        archive_mode="on", archive_command=setup.archive_command,
        # A bounded spread checkpoint: whatever checkpoint a backup waits for ends soon.
        checkpoint_timeout="30s", **settings,
    )
    primary.env.update(setup.env)
    setup.init(primary)  # before archiving starts, from pg_controldata
    primary.start()
    create_tables(primary)
    return primary


def create_tables(primary: pgharness.Cluster) -> None:
    """The workload's tables, loaded."""
    primary.sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);"
        "CREATE TABLE events (id bigint PRIMARY KEY, round int NOT NULL, payload text);"
        "CREATE TABLE doomed (id int PRIMARY KEY, payload text);"
        f"INSERT INTO accounts SELECT g, 1000, 'opened' FROM generate_series(1, {ACCOUNTS}) g;"
        "INSERT INTO doomed SELECT g, md5(g::text) FROM generate_series(1, 3000) g"
    )


def primary_with_a_backup(cluster_factory, setup: PitrkitSetup,
                          **settings: object) -> tuple[pgharness.Cluster, dict]:
    """An archiving primary (see archiving_primary) that wrote round 1, was backed up, and
    wrote round 2, so the WAL after the backup holds commits: the cluster and the backup's
    --json summary. Nothing after the backup is archived yet."""
    primary = archiving_primary(cluster_factory, setup, **settings)
    write_round(primary, 1)
    backup = backup_push(setup)
    write_round(primary, 2)
    return primary, backup


def write_round(cluster: pgharness.Cluster, round_: int) -> None:
    """One committed round of writes whose effect differs from every other round's:
    inserts of round-numbered events, a transfer between accounts, and deletes."""
    base = round_ * 1000
    cluster.sql(
        f"INSERT INTO events SELECT {base} + g, {round_}, repeat(md5(g::text), 4) "
        f"FROM generate_series(1, 500) g;"
        f"UPDATE accounts SET balance = balance + {round_}, note = 'round {round_}' "
        f"WHERE id % 7 = {round_ % 7};"
        f"DELETE FROM events WHERE id > {base} AND id % 11 = 0"
    )


def drop_doomed(cluster: pgharness.Cluster) -> None:
    """The accident the restore is for."""
    cluster.sql("DROP TABLE doomed")


# --- the yardstick ------------------------------------------------------------------------


def digests(cluster: pgharness.Cluster) -> Digests:
    tables = [row[0] for row in cluster.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
    found: Digests = {}
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        rows, md5 = cluster.sql(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) FROM {quoted} t"
        )[0]
        found[table] = TableDigest(rows, md5)
    return found


def timeline(cluster: pgharness.Cluster) -> int:
    """The timeline a primary writes on (its current WAL file's first 8 hex digits)."""
    return int(cluster.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][:8], 16)


def note_point(cluster: pgharness.Cluster) -> RecoveryPoint:
    """The recovery point just after the last commit: its digests first (reads write no
    commit record), then the server's clock and WAL position."""
    noted = digests(cluster)
    time, lsn = cluster.sql("SELECT clock_timestamp()::text, pg_current_wal_lsn()::text")[0]
    return RecoveryPoint(time=time, lsn=lsn, timeline=timeline(cluster), digests=noted)


def archive_everything(cluster: pgharness.Cluster) -> str:
    """Complete the current segment and wait until PostgreSQL has archived it; its name."""
    name = cluster.switch_wal()
    cluster.wait_for_archived(name)
    return name


# --- pitrkit as the DBA runs it -------------------------------------------------------------


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a pitrkit command that must have succeeded."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one `pitrkit: ...` error line of a command that must have been refused.
    Warnings (retries) may stand before it; nothing else may."""
    assert result.returncode != 0, f"expected a refusal, got success:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    *warnings, error = result.stderr.strip().splitlines() or [""]
    assert error.startswith("pitrkit: ") and "WARNING" not in error, result.stderr
    assert all(line.startswith("pitrkit: WARNING: ") for line in warnings), result.stderr
    return error


def backup_push(setup: PitrkitSetup) -> dict:
    """Take a base backup of the cluster in [postgres]; its --json summary (backup_id,
    first_segment, last_segment ...)."""
    summary: dict = json.loads(succeeded(setup.run("backup-push", "--json", timeout=600)))
    return summary


def restore_plan(setup: PitrkitSetup, *args: str) -> dict:
    """`restore-plan ARGS --json`, which must succeed: the plan as JSON."""
    plan: dict = json.loads(succeeded(setup.run("restore-plan", *args, "--json")))
    return plan


def restore_into(cluster_factory, setup: PitrkitSetup, *args: str, start: bool = False) -> tuple[
        pgharness.Cluster, subprocess.CompletedProcess[str]]:
    """`pitrkit restore ARGS --target-dir` a fresh cluster directory's data directory (not
    created beforehand: restore makes it). The cluster object is for starting, querying and
    cleaning up the result; it gets the archive's environment, as the server needs it for
    restore_command and archive_command. With `start`, `--start --port` the cluster's own
    port, so that the server restore leaves running is the one the cluster object names."""
    restored = cluster_factory(init=False)
    restored.env.update(setup.env)
    started = ("--start", "--port", str(restored.port)) if start else ()
    result = setup.run("restore", *args, "--target-dir", str(restored.pgdata), *started, timeout=600)
    return restored, result


def recovered(cluster_factory, setup: PitrkitSetup, *args: str, pause: bool = False) -> pgharness.Cluster:
    """`pitrkit restore ARGS` into a fresh cluster, which must succeed, then the server
    started on it by the test (as a DBA starts it) and waited for until recovery ends:
    with `pause` (`--action pause`) paused at the target, otherwise promoted (restore's
    default action)."""
    restored, result = restore_into(cluster_factory, setup, *args, *(("--action", "pause") if pause else ()))
    succeeded(result)
    restored.start(timeout=180)
    if pause:
        wait_until_paused(restored)
    else:
        wait_until_promoted(restored)
    return restored


def branch_at(cluster_factory, setup: PitrkitSetup,
              point: RecoveryPoint) -> tuple[pgharness.Cluster, RecoveryPoint, str]:
    """The archive's second timeline: a restore to `point` (on timeline 1), promoted, which
    must hold `point`'s data; it writes rounds 21 and 22 and archives them into the same
    archive (its archive_command came with the backup). The promoted cluster, the point
    between its two rounds, and the last segment it archived."""
    branched = recovered(cluster_factory, setup, "--to", point.time)
    assert timeline(branched) == 2
    assert digests(branched) == point.digests
    write_round(branched, 21)
    on_two = note_point(branched)
    write_round(branched, 22)
    return branched, on_two, archive_everything(branched)


def restore_started(cluster_factory, setup: PitrkitSetup, *args: str) -> tuple[pgharness.Cluster, str]:
    """`pitrkit restore ARGS --start --port P` into a fresh cluster, which must succeed: the
    cluster, attached to the server restore left running (on port P), and what restore
    reported on stdout."""
    restored, result = restore_into(cluster_factory, setup, *args, start=True)
    report = succeeded(result)
    requested = restored.port
    attach(restored)
    assert restored.port == requested, f"restore --start --port {requested} started the server on {restored.port}"
    return restored, report


def attach(restored: pgharness.Cluster) -> pgharness.Cluster:
    """Point `restored` at the server `pitrkit restore --start` left running in its data
    directory: postmaster.pid's 4th and 5th lines are the port and socket directory."""
    lines = (restored.pgdata / "postmaster.pid").read_text().splitlines()
    restored.port = int(lines[3])
    assert lines[4], "the restored server listens on no unix socket"
    restored.socket_dir = Path(lines[4])
    return restored


def wait_until_promoted(restored: pgharness.Cluster) -> None:
    pgharness.wait_for(lambda: restored.sql("SELECT NOT pg_is_in_recovery()")[0][0], 180,
                       interval=0.2, what=f"{restored} to finish recovery and promote")


def wait_until_paused(restored: pgharness.Cluster) -> None:
    pgharness.wait_for(
        lambda: restored.sql("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused", 180,
        interval=0.2, what=f"{restored} to pause at the recovery target")


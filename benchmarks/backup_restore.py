#!/usr/bin/env python3
"""backup_restore -- the reproducible benchmark of pitrkit's backup-push and restore,
side by side with pgBackRest and pg_basebackup, on one PostgreSQL 15 cluster in one run.

One command, as root, from the checkout (about 3 minutes on 2 cores at scale 50):

    /opt/pkdev/bin/python benchmarks/backup_restore.py --profile

(any Python that imports psycopg will do: this file uses pitrkit.demo.localpg from the
checkout it is in, which talks SQL through psycopg.) It

  1. installs this checkout's HEAD (--worktree: the work tree) NON-editable into a fresh
     venv that the `postgres` user runs, the way walpath.py does (same function);
  2. creates a PostgreSQL 15 cluster, fills it with `pgbench -i -s SCALE` (scale 50 is
     ~750 MB) and archives its WAL into a pitrkit file:// archive AND a pgBackRest repo:
     archive_command runs both archivers joined with `&&`, so that both tools have a
     complete WAL archive to restore from and pgBackRest's archive check passes. The
     archiver of the tool about to be measured goes first (switched with ALTER SYSTEM
     before every backup), so that neither tool waits for the other's archiver;
  3. backs the cluster up with `pitrkit backup-push` (local file:// archive, zstd -3, one
     worker per core), `pgbackrest backup --type=full` (compress-type=zst, process-max=2,
     start-fast=y) and `pg_basebackup -Ft -X none` (uncompressed tar to local disk: the
     I/O floor), in --rounds interleaved rounds (the first tool of each round rotates;
     the last round is pitrkit, pgBackRest, pg_basebackup), each after a CHECKPOINT so
     that no tool pays for the dirty buffers of another;
  4. runs `pgbench -t N` after the last backups, notes the target LSN and a digest of the
     pgbench tables there, writes some more past the target and waits until every
     segment is archived;
  5. restores to that LSN, again in interleaved rounds: `pitrkit restore --lsn L --start`
     versus `pgbackrest restore --type=lsn` followed by starting PostgreSQL (and the
     same with archive-async=y, pgBackRest fetching WAL ahead), each until the server
     has promoted (pg_is_in_recovery() is false); checks each restored cluster's digest
     against the one taken at the target, and reads the phases of its recovery from
     its log (one unmeasured restore per tool first: the run's first restore is slower);
  6. with --profile, runs one more pitrkit backup-push and restore under cProfile (every
     thread) and keeps the top functions;
  7. writes benchmarks/results/backup-restore-<UTC stamp>.json and .md.

The restored servers inherit the source's archive_command. It archives only when run in
the source's data directory (`pwd -P`), so restored, promoted servers never push a new
timeline into the archives the next round restores from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pstats
import re
import resource
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import walpath  # noqa: E402  (the same install, host and load helpers as the WAL-path benchmark)

from pitrkit.demo.localpg import (  # noqa: E402
    Cluster,
    CommandFailed,
    LocalPgError,
    make_server_dir,
    run_as_server_user,
    wait_for,
)
from pitrkit.postgres.wal import Lsn  # noqa: E402

import pgharness  # noqa: E402  (tests/pgharness.py: "free of pytest so benchmarks can import it")

PITRKIT, PGBACKREST, FLOOR = "pitrkit", "pgbackrest", "pg_basebackup"
PGBACKREST_ASYNC = "pgbackrest-async"
BACKUP_TOOLS = (PITRKIT, PGBACKREST, FLOOR)
RESTORE_TOOLS = (PITRKIT, PGBACKREST, PGBACKREST_ASYNC)
STANZA = "bench"
# Sums over the pgbench tables that every transaction changes: equal digests mean the
# restored cluster stopped exactly where the source was at the target.
DIGEST_SQL = ("SELECT (SELECT sum(bbalance) FROM pgbench_branches), "
              "(SELECT sum(tbalance) FROM pgbench_tellers), "
              "(SELECT count(*) FROM pgbench_history), (SELECT sum(delta) FROM pgbench_history)")
# A restore may replay a lot of WAL on a loaded machine; nothing should take this long.
COMMAND_TIMEOUT = 3600

# Profiles every thread, not just the main one (cProfile alone sees only the main
# thread, which in a backup mostly waits for its workers): threading.setprofile runs the
# hook first thing in each new thread, and enabling a Profile there replaces the hook.
PROFILE_WRAPPER = r"""
import cProfile, pstats, runpy, sys, threading
out, script = sys.argv[1], sys.argv[2]
profiles = []
def hook(*_):
    profile = cProfile.Profile()
    profiles.append(profile)
    profile.enable()
threading.setprofile(hook)
main = cProfile.Profile()
profiles.append(main)
sys.argv = sys.argv[2:]
main.enable()
try:
    runpy.run_path(script, run_name="__main__")
finally:
    main.disable()
    for profile in profiles:
        profile.create_stats()
    pstats.Stats(*profiles).dump_stats(out)
"""


def log(msg: str) -> None:
    print(f"[backup_restore {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under path (what a tool stored or must read)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            status = os.lstat(os.path.join(root, name))
            total += status.st_size if stat.S_ISREG(status.st_mode) else 0
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    """One measured command: wall seconds, the CPU of the processes it started (their
    threads and children included; not the server's), and the load before it."""

    wall_s: float
    cpu_s: float
    load_before: float
    stdout: str = ""
    stderr: str = ""


def timed(argv: list[str], env: dict[str, str] | None = None) -> Timed:
    """Run argv as the server user and time it; CommandFailed if it fails."""
    load = walpath.loadavg()[0]
    cpu0, t0 = children_cpu(), time.perf_counter()
    done = run_as_server_user(argv, env=env, timeout=COMMAND_TIMEOUT)
    return Timed(time.perf_counter() - t0, children_cpu() - cpu0, load, done.stdout, done.stderr)


@dataclass
class BackupRun:
    tool: str
    round: int
    wall_s: float
    cpu_s: float
    load_before: float
    stored_bytes: int
    start_lsn: str | None  # where this backup's WAL replay starts (None for the floor)
    name: str  # pitrkit backup id, pgBackRest label, or the floor's directory
    # pitrkit: seconds per step, from backup-push's debug line (see pitrkit_phases)
    phases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, tool: str, round_: int, t: Timed, stored: int, start_lsn: str | None,
           name: str) -> BackupRun:
        phases = pitrkit_phases(t.stderr, t.wall_s) if tool == PITRKIT else {}
        return cls(tool, round_, round(t.wall_s, 2), round(t.cpu_s, 2), t.load_before, stored,
                   start_lsn, name, phases)


# backup-push -v logs how long each of its steps took (pitrkit/backup/push.py, Phases).
PHASES = re.compile(r"backup \S+ phases \(s\): (.*)$", re.MULTILINE)


def pitrkit_phases(stderr: str, wall_s: float) -> dict[str, float]:
    """backup-push's steps (connect, prepare, start, list, copy, drain, stop, wal, maps,
    manifest, catalog) in seconds, and `outside`: the rest of the command's wall time
    (interpreter start, imports, reading the configuration, exit)."""
    found = PHASES.search(stderr)
    if found is None:
        return {}
    phases = {step: float(seconds) for step, _, seconds in (pair.partition("=") for pair in found[1].split())}
    phases["outside"] = round(wall_s - sum(phases.values()), 3)
    return phases


class FirstSeen:
    """When a file first exists, in seconds from the start: a thread polls every 20 ms.
    Used on postmaster.pid to split a restore into copying and recovery the same way for
    both tools, whichever process starts the server."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: float | None = None
        self._start, self._stop = time.perf_counter(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            if self.path.exists():
                self.seconds = time.perf_counter() - self._start
                return
            self._stop.wait(0.02)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seconds


# Milestones of recovery in a restored server's log (lc_messages C; log_line_prefix
# "%m [%p] " and log_timezone UTC from the source's postgresql.conf, which both tools
# restore).
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \S+ \[\d+\] ")
MILESTONES = {"start": "starting PostgreSQL", "redo": "redo starts at",
              "stop": "recovery stopping", "ready": "database system is ready to accept connections"}
RESTORED_SEGMENT = re.compile(r'restored log file "[0-9A-F]{24}" from archive')


@dataclass
class RecoveryLog:
    """What the restored server's own log says about its recovery, so that both tools'
    servers are timed by the same clock: start-up to the first WAL record replayed
    (`to_redo_s`: reading backup_label, fetching the first segments), replay to the target
    (`redo_s`), the end-of-recovery checkpoint and promotion (`promote_s`), and from the
    server being ready (promoted) until the benchmark saw the restore finished
    (`noticed_s`: for pitrkit, how long restore --start took to notice and return)."""

    to_redo_s: float
    redo_s: float
    promote_s: float
    noticed_s: float
    segments_restored: int
    # Between two `restored log file` lines: one restore_command call and the replay of
    # the segment before it. The shortest such gap is nearly a call alone (a segment
    # with little WAL: the backup's own), the median a typical segment.
    gap_min_ms: float = 0.0
    gap_median_ms: float = 0.0

    @classmethod
    def parse(cls, text: str, finished: dt.datetime) -> RecoveryLog | None:
        """`finished`: when the restore was seen done, naive UTC like the log's stamps."""
        seen: dict[str, dt.datetime] = {}
        segments = 0
        restored: list[dt.datetime] = []
        for line in text.splitlines():
            segments += RESTORED_SEGMENT.search(line) is not None
            if not (stamp := LOG_TIME.match(line)):
                continue
            if RESTORED_SEGMENT.search(line):
                restored.append(dt.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S.%f"))
            for name, marker in MILESTONES.items():
                if name not in seen and marker in line:
                    seen[name] = dt.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S.%f")
        if len(seen) < len(MILESTONES):
            return None

        def between(a: str, b: str) -> float:
            return round((seen[b] - seen[a]).total_seconds(), 3)
        gaps = [1000 * (b - a).total_seconds() for a, b in zip(restored, restored[1:], strict=False)] or [0.0]
        return cls(between("start", "redo"), between("redo", "stop"), between("stop", "ready"),
                   round((finished - seen["ready"]).total_seconds(), 3), segments,
                   round(min(gaps), 1), round(statistics.median(gaps), 1))


def server_log(cluster: Cluster) -> str:
    """The restored server's log: pg_ctl's -l file when we started it, else the one
    pitrkit restore --start writes (<data dir>/log/restore.log, see pitrkit/restore/pgstart.py)."""
    for path in (cluster.logfile, cluster.pgdata / "log" / "restore.log"):
        if path.exists():
            return path.read_text(errors="replace")
    return ""


@dataclass
class RestoreRun:
    tool: str
    round: int
    restore_s: float  # the restore command (pitrkit: restore --start, recovery included)
    server_started_s: float  # until postmaster.pid appeared: the copy and the set-up
    promoted_s: float  # from the start of the restore until pg_is_in_recovery() is false
    cpu_s: float
    load_before: float
    digest_ok: bool
    timeline: int
    backup: str  # which backup it restored from (backup_label's LABEL)
    replayed_bytes: int  # WAL from that backup's start to the target
    recovery: RecoveryLog | None
    server_log: list[str]  # the restored server's log, from start-up to promotion
    recovery_settings: list[str]  # what the tool wrote into postgresql.auto.conf
    output: str  # what the restore command printed
    digest: list[str] = field(default_factory=list)  # the restored cluster's, at the end


@dataclass
class Target:
    lsn: str
    digest: list[str]
    wal_bytes_after_last_backup: int
    pgbench: str


@dataclass
class Rig:
    """The source cluster and the two tools' configurations, all under one directory."""

    root: Path
    cluster: Cluster
    pitrkit: Path  # the console script in the bench venv
    python: Path  # the bench venv's interpreter
    pitrkit_config: Path
    pitrkit_archive: Path
    runtime_dir: Path  # XDG_RUNTIME_DIR: where pitrkit's agent puts its socket
    pgbr_config: Path
    pgbr_repo: Path
    config_texts: dict[str, str] = field(default_factory=dict)
    pgbackrest: str = "pgbackrest"  # the pgBackRest executable: a name on PATH or a path

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def pitrkit_cmd(self, *args: str) -> list[str]:
        return [str(self.pitrkit), "--config", str(self.pitrkit_config), *args]

    def pgbr_cmd(self, *args: str) -> list[str]:
        return [self.pgbackrest, f"--config={self.pgbr_config}", f"--stanza={STANZA}", *args]

    def archive_command(self, first: str) -> str:
        """Both archivers, `first` first, only in the source's data directory."""
        push = {PITRKIT: shlex.join(self.pitrkit_cmd("wal-push")) + " %p",
                PGBACKREST: shlex.join(self.pgbr_cmd("archive-push")) + " %p"}
        order = [first, *(tool for tool in push if tool != first)]
        both = " && ".join(push[tool] for tool in order)
        return (f"case \"$(pwd -P)\" in {shlex.quote(str(self.cluster.pgdata))}) {both} ;; "
                "*) true ;; esac")

    def set_archive_command(self, first: str) -> None:
        # ALTER SYSTEM takes no parameters: a literal (standard_conforming_strings is on).
        literal = "'" + self.archive_command(first).replace("'", "''") + "'"
        self.cluster.sql(f"ALTER SYSTEM SET archive_command = {literal}")
        self.cluster.sql("SELECT pg_reload_conf()")

    def pgbench(self, *args: str) -> str:
        c = self.cluster
        return c.run("pgbench", "-h", c.socket_dir, "-p", str(c.port), "-U", "postgres",
                     *args, "postgres", timeout=COMMAND_TIMEOUT).stdout

    def archive_everything(self) -> None:
        """Switch to a new segment and wait until the one completed is in both archives
        (one archive_command archives into both, and reports success only if both did)."""
        self.cluster.wait_for_archived(self.cluster.switch_wal(), timeout=600)


def build_rig(root: Path, venv: Path, scale: int, *, install: pgharness.PgInstall | None = None,
              pgbackrest: str = "pgbackrest", pgbackrest_options: tuple[str, ...] = (),
              settings: dict[str, object] | None = None) -> Rig:
    """The source cluster (PostgreSQL 15 unless `install` says otherwise, with `settings`
    added to its postgresql.conf) filled with pgbench at `scale` and archived by both
    tools; `pgbackrest`: its executable, `pgbackrest_options`: lines added to its [global]
    section (as `key=value`)."""
    install = install or next(i for i in pgharness.find_installations() if i.major == 15)
    for leftover in ("source", *(f"restore-{tool}" for tool in RESTORE_TOOLS)):
        Cluster(install, root / leftover).cleanup()  # stopped and removed if a run died
    cluster = Cluster(install, root / "source")
    rig = Rig(root=root, cluster=cluster, pitrkit=venv / "bin" / "pitrkit",
              python=venv / "bin" / "python3",
              pitrkit_config=root / "pitrkit.toml",
              pitrkit_archive=root / "pitrkit-archive",
              runtime_dir=root / "run", pgbr_config=root / "pgbackrest.conf",
              pgbr_repo=root / "pgbackrest-repo", pgbackrest=pgbackrest)
    for path in (rig.pitrkit_archive, rig.pgbr_repo, rig.runtime_dir, root / "pgbackrest-log",
                 root / "pgbackrest-lock", root / "floor"):
        shutil.rmtree(path, ignore_errors=True)
        make_server_dir(path, mode=0o700 if path != root / "floor" else 0o755)
    conninfo = f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=postgres"
    rig.config_texts[PITRKIT] = (
        f'[repository]\nurl = "file://{rig.pitrkit_archive}"\n\n'
        f'[postgres]\npgdata = "{cluster.pgdata}"\nbindir = "{install.bindir}"\n'
        f'conninfo = "{conninfo}"\n\n'
        '[compression]\nalgorithm = "zstd"\nlevel = 3\n')
    # pgBackRest as the issue asks (zst, process-max=2) plus start-fast=y: its default is
    # a spread checkpoint, which would time checkpoint_completion_target, not the copy.
    # archive-async stays at its default (n), like pitrkit's synchronous-looking wal-fetch.
    rig.config_texts[PGBACKREST] = "\n".join([
        "[global]", f"repo1-path={rig.pgbr_repo}", f"log-path={root / 'pgbackrest-log'}",
        f"lock-path={root / 'pgbackrest-lock'}", "compress-type=zst", "process-max=2",
        "start-fast=y", "repo1-retention-full=99", "log-level-console=warn", *pgbackrest_options, "",
        f"[{STANZA}]", f"pg1-path={cluster.pgdata}", f"pg1-port={cluster.port}",
        f"pg1-socket-path={cluster.socket_dir}", "pg1-user=postgres", ""])
    rig.pitrkit_config.write_text(rig.config_texts[PITRKIT])
    rig.pgbr_config.write_text(rig.config_texts[PGBACKREST])
    for path in (rig.pitrkit_config, rig.pgbr_config):
        path.chmod(0o644)

    log(f"initdb {cluster.pgdata} (PostgreSQL {install.version})")
    cluster.initdb()
    cluster.env = rig.env
    run_as_server_user(rig.pitrkit_cmd("init"), timeout=120)  # the archive, before archiving starts
    # initdb() turns fsync off for throwaway test clusters; a benchmark runs as in
    # production. log_line_prefix: timestamps in the logs of the restored servers too.
    cluster.conf(fsync=True, archive_mode=True, archive_command=rig.archive_command(PITRKIT),
                 max_wal_senders=4, log_line_prefix="%m [%p] ", log_timezone="UTC",
                 log_checkpoints=True, **(settings or {}))
    cluster.start()
    run_as_server_user(rig.pgbr_cmd("stanza-create"), timeout=120)
    log(f"pgbench -i -s {scale}")
    t0 = time.perf_counter()
    rig.pgbench("-i", "-s", str(scale), "-q")
    log(f"  loaded in {time.perf_counter() - t0:.0f} s; archiving the WAL it wrote")
    cluster.sql("CHECKPOINT")
    rig.archive_everything()
    run_as_server_user(rig.pgbr_cmd("check"), timeout=300)
    return rig


# --------------------------------------------------------------------------------------
# backups
# --------------------------------------------------------------------------------------


def backup_pitrkit(rig: Rig, round_: int) -> BackupRun:
    t = timed(rig.pitrkit_cmd("-v", "backup-push", "--json"), env=rig.env)
    summary = json.loads(t.stdout)
    backup_id = summary["backup_id"]
    stored = tree_bytes(rig.pitrkit_archive / "backups" / backup_id)
    return BackupRun.of(PITRKIT, round_, t, stored, summary["start_lsn"], backup_id)


def backup_pgbackrest(rig: Rig, round_: int) -> BackupRun:
    t = timed(rig.pgbr_cmd("backup", "--type=full"))
    info = run_as_server_user(rig.pgbr_cmd("info", "--output=json"), timeout=120).stdout
    latest = json.loads(info)[0]["backup"][-1]
    stored = tree_bytes(rig.pgbr_repo / "backup" / STANZA / latest["label"])
    return BackupRun.of(PGBACKREST, round_, t, stored, latest["lsn"]["start"], latest["label"])


def backup_floor(rig: Rig, round_: int) -> BackupRun:
    c = rig.cluster
    dest = rig.root / "floor" / f"round{round_}"
    t = timed([str(c.install.bin("pg_basebackup")), "-h", str(c.socket_dir), "-p", str(c.port),
               "-U", "postgres", "-D", str(dest), "-Ft", "-X", "none", "--checkpoint=fast"])
    stored = tree_bytes(dest)
    shutil.rmtree(dest)  # 750 MB a round; its size is all we keep
    return BackupRun.of(FLOOR, round_, t, stored, None, str(dest))


BACKUP = {PITRKIT: backup_pitrkit, PGBACKREST: backup_pgbackrest, FLOOR: backup_floor}


def run_backups(rig: Rig, rounds: int, tools: list[str]) -> list[BackupRun]:
    runs = []
    for r in range(rounds):
        # Counted so that the last round runs pitrkit, pgbackrest, pg_basebackup: the
        # restores start from each tool's last backup, and pgBackRest's being the newer one,
        # it replays a few (nearly empty) segments less than pitrkit: if anything, that
        # favours pgBackRest.
        order = walpath.rotated(tools, r - rounds + 1)
        log(f"=== backup round {r + 1}/{rounds}: {', '.join(order)}")
        for tool in order:
            rig.set_archive_command(PGBACKREST if tool == PGBACKREST else PITRKIT)
            rig.cluster.sql("CHECKPOINT")
            run = BACKUP[tool](rig, r)
            runs.append(run)
            log(f"  {tool}: {run.wall_s:.1f} s, {run.cpu_s:.1f} CPU s, stored "
                f"{run.stored_bytes / 2**20:.0f} MiB ({run.name})")
    rig.set_archive_command(PITRKIT)
    return runs


# --------------------------------------------------------------------------------------
# the target, and restores
# --------------------------------------------------------------------------------------


def make_target(rig: Rig, transactions: int, backups: list[BackupRun]) -> Target:
    c = rig.cluster
    log(f"pgbench -c 2 -j 2 -t {transactions} (the WAL to replay)")
    out = rig.pgbench("-c", "2", "-j", "2", "-t", str(transactions), "-n")
    tps = next((line for line in out.splitlines() if line.startswith("tps")), "")
    digest = [str(v) for v in c.sql(DIGEST_SQL)[0]]
    lsn = c.sql("SELECT pg_current_wal_lsn()")[0][0]
    log(f"target LSN {lsn}; digest {digest}; writing past it and archiving")
    rig.pgbench("-c", "2", "-j", "2", "-t", "500", "-n")
    rig.archive_everything()
    last_start = max(Lsn.parse(b.start_lsn) for b in backups if b.start_lsn)
    return Target(lsn, digest, Lsn.parse(lsn) - last_start, tps)


def fresh_cluster(rig: Rig, name: str) -> Cluster:
    """A Cluster for a restore: its directory emptied, and an empty 0700 data directory
    owned by the server user (pgBackRest wants it to exist; pitrkit accepts it empty)."""
    Cluster(rig.cluster.install, rig.root / name).cleanup()
    cluster = Cluster(rig.cluster.install, rig.root / name)
    make_server_dir(cluster.pgdata, mode=0o700)
    cluster.env = rig.env
    return cluster


def wait_promoted(cluster: Cluster) -> None:
    def promoted() -> bool:
        try:
            return cluster.sql("SELECT NOT pg_is_in_recovery()", timeout=10)[0][0]
        except LocalPgError:
            return False  # not accepting connections yet
    wait_for(promoted, timeout=COMMAND_TIMEOUT, interval=0.05, what=f"{cluster} to promote")


def restore_pitrkit(rig: Rig, cluster: Cluster, target: Target) -> tuple[Timed, float]:
    t0 = time.perf_counter()
    t = timed(rig.pitrkit_cmd("restore", "--lsn", target.lsn, "--target-dir", str(cluster.pgdata),
                              "--start", "--port", str(cluster.port)), env=rig.env)
    # pitrkit chose the socket directory: postmaster.pid says which (line 5).
    cluster.socket_dir = Path((cluster.pgdata / "postmaster.pid").read_text().splitlines()[4])
    wait_promoted(cluster)
    return t, time.perf_counter() - t0


def restore_pgbackrest(rig: Rig, cluster: Cluster, target: Target, *options: str) -> tuple[Timed, float]:
    t0 = time.perf_counter()
    t = timed(rig.pgbr_cmd(f"--pg1-path={cluster.pgdata}", *options, "restore", "--type=lsn",
                           f"--target={target.lsn}", "--target-action=promote"))
    cpu0 = children_cpu()
    cluster.start(wait=False)
    wait_promoted(cluster)
    t.cpu_s += children_cpu() - cpu0
    return t, time.perf_counter() - t0


def restore_pgbackrest_async(rig: Rig, cluster: Cluster, target: Target) -> tuple[Timed, float]:
    """pgBackRest with archive-get ahead of recovery in process-max=2 background workers.
    archive-async is not a restore option, so the restore_command is given whole."""
    spool = make_server_dir(cluster.directory / "spool", mode=0o700)
    archive_get = rig.pgbr_cmd(f"--pg1-path={cluster.pgdata}", "--archive-async",
                               f"--spool-path={spool}", "archive-get")
    return restore_pgbackrest(rig, cluster, target,
                              f'--recovery-option=restore_command={shlex.join(archive_get)} %f "%p"')


RESTORE = {PITRKIT: restore_pitrkit, PGBACKREST: restore_pgbackrest,
           PGBACKREST_ASYNC: restore_pgbackrest_async}


def run_restores(rig: Rig, rounds: int, target: Target, tools: list[str],
                 warmup: bool) -> list[RestoreRun]:
    """Interleaved rounds, after one unmeasured restore per tool (`warmup`): the first
    restore of a run was up to a second slower, whichever tool it was."""
    if warmup:
        log("=== restore warm-up (not measured): " + ", ".join(tools))
        for tool in tools:
            restore_once(rig, tool, target, -1)
    runs = []
    for r in range(rounds):
        order = walpath.rotated(tools, r)
        log(f"=== restore round {r + 1}/{rounds}: {', '.join(order)}")
        runs += [restore_once(rig, tool, target, r) for tool in order]
    return runs


def restore_once(rig: Rig, tool: str, target: Target, round_: int, *,
                 how: Callable[[Rig, Cluster, Target], tuple[Timed, float]] | None = None,
                 digest_sql: str = DIGEST_SQL) -> RestoreRun:
    """Restore with `tool` (with `how`, if given: a function like those of RESTORE) into a
    fresh directory until promoted, check the digest (`digest_sql` at the restored server
    against `target.digest`), read the server's log, and remove the restored cluster."""
    cluster = fresh_cluster(rig, f"restore-{tool}")
    # What the last backup or restore wrote goes to disk first, untimed: its writeback
    # would otherwise be paid by this restore's fsyncs (the first restore after the
    # backups took half again as long as the next ones).
    os.sync()
    started = FirstSeen(cluster.pgdata / "postmaster.pid")
    try:
        t, promoted = (how or RESTORE[tool])(rig, cluster, target)
        finished = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        label = backup_label(cluster.pgdata / "backup_label.old")
        digest = [str(v) for v in cluster.sql(digest_sql)[0]]
        run = RestoreRun(
            tool, round_, round(t.wall_s, 2), round(started.stop() or 0, 2), round(promoted, 2),
            round(t.cpu_s, 2), t.load_before,
            digest_ok=digest == target.digest,
            timeline=int(cluster.controldata()["Latest checkpoint's TimeLineID"]),
            backup=label["LABEL"],
            replayed_bytes=Lsn.parse(target.lsn) - Lsn.parse(label["START WAL LOCATION"].split()[0]),
            recovery=RecoveryLog.parse(log_text := server_log(cluster), finished),
            server_log=log_text.splitlines()[:300],
            recovery_settings=recovery_settings(cluster.pgdata / "postgresql.auto.conf"),
            output=(t.stdout + t.stderr).strip()[-3000:], digest=digest)
        log(f"  {tool}: restore command {run.restore_s:.1f} s, server started after "
            f"{run.server_started_s:.1f} s, promoted after {run.promoted_s:.1f} s, digest "
            f"{'ok' if run.digest_ok else 'WRONG'}, timeline {run.timeline}, "
            f"from {run.backup!r}, replayed {run.replayed_bytes / 2**20:.0f} MiB; {run.recovery}")
        return run
    finally:
        started.stop()
        cluster.cleanup()


def backup_label(path: Path) -> dict[str, str]:
    """The fields of a backup_label ("START WAL LOCATION", "LABEL", ...); a started server
    keeps it as backup_label.old."""
    pairs = (line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    return {key: value for key, value in pairs}


def recovery_settings(auto_conf: Path) -> list[str]:
    return [line for line in auto_conf.read_text().splitlines()
            if line.startswith(("restore_command", "recovery_target"))]


# --------------------------------------------------------------------------------------
# profile
# --------------------------------------------------------------------------------------


def profile_pitrkit(rig: Rig, target: Target, top: int = 25) -> dict[str, dict]:
    """One more backup-push and restore under cProfile (all threads): the top functions
    by cumulative and by own time, in seconds. The full profiles stay in <root>/profile."""
    restored = fresh_cluster(rig, "restore-pitrkit")
    try:
        return profile_commands(rig, {
            "backup-push": rig.pitrkit_cmd("backup-push"),
            "restore": rig.pitrkit_cmd("restore", "--lsn", target.lsn, "--target-dir", str(restored.pgdata),
                                       "--start", "--port", str(restored.port))}, top)
    finally:
        restored.cleanup()


def profile_commands(rig: Rig, cases: dict[str, list[str]], top: int = 25) -> dict[str, dict]:
    """Run each of `cases` (name: a command of the bench venv's pitrkit) under cProfile,
    every thread: wall and CPU seconds and the top functions by cumulative and by own
    time. The full profiles stay in <root>/profile/<name>.prof."""
    profiles: dict[str, dict] = {}
    work = make_server_dir(rig.root / "profile")
    wrapper = work / "profile_wrapper.py"
    wrapper.write_text(PROFILE_WRAPPER)
    wrapper.chmod(0o644)
    for name, argv in cases.items():
        stats_file = work / f"{name}.prof"
        log(f"profiling pitrkit {name}")
        t = timed([str(rig.python), str(wrapper), str(stats_file), *argv], env=rig.env)
        stats = pstats.Stats(str(stats_file))
        rows = [(function_name(fn, line, func), cc, round(tt, 3), round(ct, 3))
                for (fn, line, func), (cc, _nc, tt, ct, _callers) in stats.stats.items()]  # type: ignore[attr-defined]
        profiles[name] = {
            "wall_s": round(t.wall_s, 2), "cpu_s": round(t.cpu_s, 2), "file": str(stats_file),
            "by_cumulative": sorted(rows, key=lambda row: -row[3])[:top],
            "by_own_time": sorted(rows, key=lambda row: -row[2])[:top]}
    return profiles


def function_name(filename: str, line: int, function: str) -> str:
    """module.py:line(function), or just the name of a built-in ("~", line 0)."""
    return function if filename == "~" else f"{Path(filename).name}:{line}({function})"


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One tool's line of a table: medians over its rounds, and its ratio to pgBackRest
    (of the medians, and round by round)."""

    tool: str
    seconds: float  # median wall seconds (restores: until promoted)
    per_round_s: list[float]
    cpu_s: float
    loads: list[float]
    x_pgbackrest: float | None = None
    x_pgbackrest_per_round: list[float] = field(default_factory=list)
    # restores: against pgBackRest with archive-async=y (issue 15's reference)
    x_async: float | None = None
    x_async_per_round: list[float] = field(default_factory=list)
    mib_s: float | None = None  # backups: source bytes per second
    stored_mib: float | None = None  # backups
    restore_cmd_s: float | None = None  # restores: the restore command alone
    started_s: float | None = None  # restores: until the server was started (the copy)
    digests_ok: str | None = None  # restores: "3/3"
    replayed_mib: float | None = None  # restores: WAL from the backup's start to the target
    recovery: RecoveryLog | None = None  # restores: medians of each phase


def compare(rows: list[Row]) -> list[Row]:
    ref = next((row for row in rows if row.tool == PGBACKREST), None)
    if ref is not None:
        for row in rows:
            row.x_pgbackrest = round(row.seconds / ref.seconds, 2)
            row.x_pgbackrest_per_round = [round(a / b, 2) for a, b in
                                          zip(row.per_round_s, ref.per_round_s, strict=True)]
    if (fast := next((row for row in rows if row.tool == PGBACKREST_ASYNC), None)) is not None:
        for row in rows:
            row.x_async = round(row.seconds / fast.seconds, 2)
            row.x_async_per_round = [round(a / b, 2) for a, b in
                                     zip(row.per_round_s, fast.per_round_s, strict=True)]
    return rows


def summarize_backups(runs: list[BackupRun], source_bytes: int) -> list[Row]:
    rows = []
    for tool in BACKUP_TOOLS:
        if mine := [r for r in runs if r.tool == tool]:
            wall = statistics.median(r.wall_s for r in mine)
            rows.append(Row(
                tool, round(wall, 2), [r.wall_s for r in mine],
                round(statistics.median(r.cpu_s for r in mine), 2), [r.load_before for r in mine],
                mib_s=round(source_bytes / 2**20 / wall, 1),
                stored_mib=round(statistics.median(r.stored_bytes for r in mine) / 2**20, 1)))
    return compare(rows)


def summarize_restores(runs: list[RestoreRun]) -> list[Row]:
    rows = []
    for tool in RESTORE_TOOLS:
        if mine := [r for r in runs if r.tool == tool]:
            rows.append(Row(
                tool, round(statistics.median(r.promoted_s for r in mine), 2),
                [r.promoted_s for r in mine], round(statistics.median(r.cpu_s for r in mine), 2),
                [r.load_before for r in mine],
                restore_cmd_s=round(statistics.median(r.restore_s for r in mine), 2),
                started_s=round(statistics.median(r.server_started_s for r in mine), 2),
                digests_ok=f"{sum(r.digest_ok for r in mine)}/{len(mine)}",
                replayed_mib=round(statistics.median(r.replayed_bytes for r in mine) / 2**20, 1),
                recovery=median_recovery([r.recovery for r in mine if r.recovery])))
    return compare(rows)


def median_recovery(logs: list[RecoveryLog]) -> RecoveryLog | None:
    if not logs:
        return None
    return RecoveryLog(*(round(statistics.median(getattr(each, name) for each in logs), 2)
                         for name in ("to_redo_s", "redo_s", "promote_s", "noticed_s",
                                      "segments_restored", "gap_min_ms", "gap_median_ms")))


BACKUP_LABELS = {PITRKIT: "**pitrkit backup-push** (zstd -3, 1 worker per core)",
                 PGBACKREST: "pgbackrest backup --type=full (zst, process-max=2)",
                 FLOOR: "pg_basebackup -Ft -X none (uncompressed: the I/O floor)"}
RESTORE_LABELS = {PITRKIT: "**pitrkit restore --lsn L --start**",
                  PGBACKREST: "pgbackrest restore --type=lsn, then pg_ctl start",
                  PGBACKREST_ASYNC: "the same with archive-async=y (archive-get ahead, 2 processes)"}


def ratio(row: dict) -> str:
    x = row["x_pgbackrest"]
    return "-" if x is None else f"**{x:.2f}**" if row["tool"] == PITRKIT else f"{x:.2f}"


def load(row: dict) -> str:
    return f"{min(row['loads']):.1f}–{max(row['loads']):.1f}"


def render(out: dict) -> str:
    h, pk = out["host"], out["pitrkit"]
    src = out["source"]
    lines = [
        f"# pitrkit backup and restore benchmark {out['when']}", "",
        f"- host: {h['nproc']} × {h['cpu_model']}, {h['mem_gib']} GiB, Linux {h['kernel']}",
        f"- pitrkit {pk.get('head', '?')[:12]} ({pk.get('head_subject', '')}), installed from "
        f"{pk.get('installed_from', '?')}; {out['pgbackrest']}; PostgreSQL {src['pg_version']}",
        f"- source: pgbench scale {src['scale']}, data directory {src['bytes'] / 2**20:.0f} MiB "
        "without pg_wal (MiB/s below is of this), page cache warm, fsync on",
        f"- {out['rounds']} interleaved rounds (first tool rotates; restores after "
        f"{'one unmeasured restore per tool' if out['restore_warmup'] else 'no warm-up'}), "
        "medians; run took "
        f"{out['duration_s']:.0f} s: `{out['command']}`", "",
        "| backup | median s | MiB/s | stored MiB | client CPU s | × pgBackRest | (per round) | load |",
        "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in out["backup"]:
        lines.append(
            f"| {BACKUP_LABELS[row['tool']]} | {row['seconds']:.1f} | {row['mib_s']:.0f} | "
            f"{row['stored_mib']:.0f} | {row['cpu_s']:.1f} | {ratio(row)} | "
            f"{' '.join(map(str, row['x_pgbackrest_per_round']))} | {load(row)} |")
    lines += phase_table(out.get("backup_runs", []))
    t = out.get("target")
    if t:
        lines += ["", f"Restore target: LSN {t['lsn']}, "
                  f"{t['wal_bytes_after_last_backup'] / 2**20:.0f} MiB of WAL after the start "
                  f"of the last backups (pgbench -c 2 -t {out['transactions']}: {t['pgbench']}).", "",
                  "| restore + replay to the target | until promoted, median s | server started s "
                  "| restore command s | client CPU s | × pgBackRest | (per round) | × pgBackRest async "
                  "| (per round) | digest at target | load |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---|---|---|"]
        for row in out["restore"]:
            fast = row.get("x_async")
            lines.append(
                f"| {RESTORE_LABELS[row['tool']]} | {row['seconds']:.2f} | {row['started_s']:.2f} | "
                f"{row['restore_cmd_s']:.2f} | {row['cpu_s']:.1f} | {ratio(row)} | "
                f"{' '.join(map(str, row['x_pgbackrest_per_round']))} | "
                f"{'-' if fast is None else f'**{fast:.2f}**' if row['tool'] == PITRKIT else f'{fast:.2f}'} | "
                f"{' '.join(map(str, row.get('x_async_per_round', [])))} | {row['digests_ok']} | "
                f"{load(row)} |")
    phases = [row for row in out["restore"] if row["recovery"]]
    if phases:
        lines += ["", "Where the time goes after the server starts, from each restored server's own "
                  "log (medians, s): start-up to the first record replayed, replay to the target, "
                  "end-of-recovery checkpoint and promotion, and from the server's \"ready to accept "
                  "connections\" until the restore was seen finished (pitrkit: restore --start "
                  "returned).", "",
                  "| restored server | WAL replayed MiB | segments restored | to redo start | "
                  "redo | redo ms / segment | shortest / median gap ms | checkpoint + promote | ready → done |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for row in phases:
            r = row["recovery"]
            lines.append(f"| {row['tool']} | {row['replayed_mib']:.0f} | {r['segments_restored']:.0f} | "
                         f"{r['to_redo_s']:.2f} | {r['redo_s']:.2f} | "
                         f"{1000 * r['redo_s'] / max(1, r['segments_restored']):.0f} | "
                         f"{r.get('gap_min_ms', 0):.0f} / {r.get('gap_median_ms', 0):.0f} | "
                         f"{r['promote_s']:.2f} | {r['noticed_s']:.2f} |")
    for name, prof in (out.get("profile") or {}).items():
        lines += ["", f"cProfile of pitrkit {name} (all threads; {prof['wall_s']} s wall, "
                  f"{prof['cpu_s']} CPU s), top by own time (s):", ""]
        lines += [f"- {fn}: {tt} own, {ct} cumulative, {calls} calls"
                  for fn, calls, tt, ct in prof["by_own_time"][:12]]
    return "\n".join(lines) + "\n"


def phase_table(runs: list[dict]) -> list[str]:
    """pitrkit backup-push's steps, medians over its rounds: what is fixed (connect to
    catalog) beside the copy."""
    mine = [run["phases"] for run in runs if run["tool"] == PITRKIT and run.get("phases")]
    if not mine:
        return []
    steps = list(dict.fromkeys(step for phases in mine for step in phases))
    medians = {step: statistics.median(phases.get(step, 0.0) for phases in mine) for step in steps}
    fixed = sum(seconds for step, seconds in medians.items() if step != "copy")
    return ["", "pitrkit backup-push by step (its `-v` line; medians, s; `outside`: interpreter start, "
            f"imports, configuration and exit; everything but the copy: {fixed:.2f} s):", "",
            "| " + " | ".join(steps) + " |", "|" + "---:|" * len(steps),
            "| " + " | ".join(f"{medians[step]:.3f}" for step in steps) + " |"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--scale", type=int, default=50, help="pgbench scale (50: ~750 MB)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--transactions", type=int, default=20000,
                    help="pgbench transactions per client (2 clients) between backup and target")
    ap.add_argument("--root", default="/srv/pitrkit-bench-br",
                    help="venv, clusters, archives and repos live here")
    ap.add_argument("--no-restore", action="store_true", help="backups only")
    ap.add_argument("--no-warmup", action="store_true",
                    help="measure from the first restore (default: one unmeasured restore per tool first)")
    ap.add_argument("--only", default=",".join(BACKUP_TOOLS), metavar="TOOL,...",
                    help=f"the tools to run, of {', '.join(BACKUP_TOOLS)} (default: all)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one pitrkit backup-push and restore (cProfile, all threads)")
    ap.add_argument("--keep", action="store_true", help="leave the source cluster running")
    walpath.add_install_arguments(ap)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("backup_restore: run as root (it installs a venv; servers run as postgres)")
    os.umask(0o022)  # the venv and configurations must be readable by postgres
    started, when = time.monotonic(), walpath.stamp_now()
    walpath.stop_agents(Path(a.root), "left over from an earlier run")
    root, installed = walpath.prepare_root(a)
    tools = [tool for tool in BACKUP_TOOLS if tool in a.only.split(",")]
    rig = build_rig(root, root / "venv", a.scale)
    try:
        source_bytes = tree_bytes(rig.cluster.pgdata) - tree_bytes(rig.cluster.pgdata / "pg_wal")
        backups = run_backups(rig, a.rounds, tools)
        target: Target | None = None
        restores: list[RestoreRun] = []
        profile: dict[str, dict] | None = None
        if not a.no_restore:
            target = make_target(rig, a.transactions, backups)
            restores = run_restores(rig, a.rounds, target,
                                    [tool for tool in RESTORE_TOOLS if tool.split("-")[0] in tools],
                                    warmup=not a.no_warmup)
        if a.profile and target and PITRKIT in tools:
            profile = profile_pitrkit(rig, target)
    except (CommandFailed, LocalPgError) as exc:
        log(f"FAILED: {exc}")
        log(f"source server log:\n{rig.cluster.log_tail(12)}")
        raise SystemExit(1) from None
    finally:
        if not a.keep:
            rig.cluster.cleanup()
            walpath.stop_agents(root, "at the end")
    out = {
        "when": when, "duration_s": round(time.monotonic() - started, 1),
        "command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
        "host": walpath.host_facts(),
        "pitrkit": installed,
        "pgbackrest": subprocess.run(["pgbackrest", "version"], capture_output=True,
                                     text=True).stdout.strip(),
        "source": {"scale": a.scale, "bytes": source_bytes,
                   "pg_version": rig.cluster.install.version},
        "rounds": a.rounds, "restore_warmup": not a.no_warmup, "transactions": a.transactions,
        "configs": rig.config_texts,
        "backup": [asdict(row) for row in summarize_backups(backups, source_bytes)],
        "backup_runs": [asdict(r) for r in backups],
        "target": asdict(target) if target else None,
        "restore": [asdict(row) for row in summarize_restores(restores or [])],
        "restore_runs": [asdict(r) for r in restores],
        "profile": profile,
    }
    log(f"wrote {walpath.write_results(a.results_dir, f'backup-restore-{when}', out, render(out))}.json and .md")
    if restores and not all(r.digest_ok for r in restores):
        log("a restored cluster's digest differs from the source's at the target")
        sys.exit(1)


if __name__ == "__main__":
    main()

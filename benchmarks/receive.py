#!/usr/bin/env python3
"""receive -- the reproducible benchmark of `pitrkit wal-receive`: does the streaming
sidecar keep up with as much WAL as this machine can write, how far behind is the
archive, and what does it cost?

One command, as root, from the checkout (about 12 minutes on 2 cores with the defaults):

    /opt/pkdev/bin/python benchmarks/receive.py

(any Python that imports psycopg will do: this file uses pitrkit.demo.localpg from the
checkout it is in.) It

  1. installs this checkout's HEAD (--worktree: the work tree) NON-editable into a fresh
     venv that the `postgres` user runs, the way walpath.py does (same function);
  2. creates a PostgreSQL 15 cluster (fsync on, archive_mode off: the sidecar is the only
     archiver) and a WAL-heavy pgbench script: every transaction inserts --rows rows of
     ~100 bytes of md5 text (compressible about 2x, like real WAL) into an index-less
     table, from 2 clients, the most WAL 2 cores make (target: 50 MiB/s);
  3. runs the load for --seconds under each variant, in --rounds interleaved rounds (the
     first variant of each round rotates, so that load from other work on the machine
     falls on all alike):
       load only              no receiver: the WAL rate the machine makes by itself;
       pg_receivewal          PostgreSQL's receiver on a slot into a directory: the floor,
                              what receiving alone costs;
       wal-receive            `pitrkit wal-receive` (zstd -3 into a file:// archive on
                              the same disk, partial_interval 10 s);
       wal-receive sync       the same with [receive] synchronous = true and the sidecar
                              named in synchronous_standby_names: every commit waits for it;
     each variant starts from nothing (a new slot, an empty spool and archive wal/);
  4. samples twice a second: the server's WAL position and the receiver's written
     position (pg_stat_replication, by slot; both receivers report it every second,
     --status-interval=1, so it can be up to a second stale), and for the sidecar its
     health file (<spool>/pitrkit-receive.json: lag_bytes and lag_seconds behind the
     archive). Seconds behind for the received position are read off the sampled server
     positions: how long ago the server was where the receiver is now;
     the CPU of the sidecar and of pg_receivewal (/proc/<pid>/stat) and of the machine
     over the load window; after the load, how long until everything written is archived
     (catch-up: the open segment waits for the next partial shipment);
  5. writes benchmarks/results/receive-<UTC stamp>.json and .md: medians over the rounds.

Lag in bytes is sampled, so a spike shorter than half a second can be missed; max and
mean are over the samples in the load window.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import walpath  # noqa: E402  (the same install and host helpers as the WAL-path benchmark)

from pitrkit.demo.localpg import Cluster, CommandFailed, LocalPgError, make_server_dir, server_env, server_user  # noqa: E402
from pitrkit.postgres.wal import Lsn  # noqa: E402

import pgharness  # noqa: E402  (tests/pgharness.py: "free of pytest so benchmarks can import it")

LOAD_ONLY, FLOOR, SIDECAR, SIDECAR_SYNC = "load only", "pg_receivewal", "wal-receive", "wal-receive sync"
VARIANTS = (LOAD_ONLY, FLOOR, SIDECAR, SIDECAR_SYNC)
SLOT = "pitrkit"  # the sidecar's slot, and its application_name
FLOOR_SLOT = "bench_floor"
HEALTH_FILE = "pitrkit-receive.json"
SAMPLE_EVERY = 0.5
CATCH_UP_TIMEOUT = 300.0
MIB = 1 << 20
PGBENCH_SCRIPT = """\\set base random(1, 2000000000)
INSERT INTO wal_load SELECT :base + g, md5((:base + g)::text) || md5(g::text) || md5(:base::text)
  FROM generate_series(1, :rows) g;
"""


def log(msg: str) -> None:
    print(f"[receive {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


def process_cpu(pid: int) -> float | None:
    """utime + stime of one process (all its threads), seconds; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_percent(before: float | None, after: float | None, wall: float) -> float | None:
    """Percent of one core; None when the process was gone at either end."""
    return None if before is None or after is None else round(100 * (after - before) / wall, 1)


def children_named(parent: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and comm == name:
            found.append(int(entry))
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def spawn_as_server_user(argv: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    user = server_user()
    with open(logfile, "ab") as out:
        return subprocess.Popen(argv, env=server_env(env), cwd="/", stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, user=user.uid if user.switch else None,
                                group=user.gid if user.switch else None)


def stop(process: subprocess.Popen, how: int = signal.SIGTERM, timeout: float = 120) -> int | None:
    if process.poll() is None:
        process.send_signal(how)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"process {process.pid} ignored {signal.Signals(how).name} for {timeout:g} s; SIGKILL")
        process.kill()
        return process.wait()


# --------------------------------------------------------------------------------------
# the rig
# --------------------------------------------------------------------------------------


@dataclass
class Rig:
    root: Path
    cluster: Cluster
    pitrkit: Path
    config: Path
    archive: Path
    spool: Path
    floor_dir: Path
    runtime_dir: Path
    pgbench_script: Path
    rows: int
    config_text: str = ""

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def write_config(self, synchronous: bool) -> None:
        c = self.cluster
        conninfo = f"host={c.socket_dir} port={c.port} user=postgres dbname=postgres"
        self.config_text = (
            f'[repository]\nurl = "file://{self.archive}"\n\n'
            f'[postgres]\npgdata = "{c.pgdata}"\nbindir = "{c.install.bindir}"\nconninfo = "{conninfo}"\n\n'
            '[compression]\nalgorithm = "zstd"\nlevel = 3\n\n'
            f'[receive]\nslot = "{SLOT}"\nspool = "{self.spool}"\npartial_interval = 10\n'
            f"synchronous = {'true' if synchronous else 'false'}\n")
        self.config.write_text(self.config_text)
        self.config.chmod(0o644)

    def fresh(self) -> None:
        """Nothing left of an earlier variant: no slots, empty spool, receiver directory
        and archive WAL (archive.json stays, as in a real archive), an empty table."""
        for slot in (SLOT, FLOOR_SLOT):
            wait_for(lambda s=slot: not self.cluster.sql(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active", [s]), 60,
                f"slot {slot} to be released")
            self.cluster.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE slot_name = %s", [slot])
        for directory in (self.spool, self.floor_dir, self.archive / "wal", self.archive / "catalog"):
            shutil.rmtree(directory, ignore_errors=True)
        for directory in (self.spool, self.floor_dir):
            make_server_dir(directory, mode=0o700)
        self.cluster.sql("TRUNCATE wal_load")
        self.cluster.sql("CHECKPOINT")

    def pgbench(self, seconds: int) -> str:
        c = self.cluster
        return c.run("pgbench", "-h", c.socket_dir, "-p", str(c.port), "-U", "postgres", "-n", "-c", "2", "-j", "2",
                     "-T", str(seconds), "-D", f"rows={self.rows}", "-f", self.pgbench_script, "postgres",
                     timeout=seconds + 600).stdout


def wait_for(condition, timeout: float, what: str) -> None:
    pgharness.wait_for(condition, timeout, interval=0.1, what=what)


def build_rig(root: Path, venv: Path, rows: int) -> Rig:
    install = next(i for i in pgharness.find_installations() if i.major == 15)
    Cluster(install, root / "source").cleanup()  # stopped and removed if a run died
    cluster = Cluster(install, root / "source")
    rig = Rig(root=root, cluster=cluster, pitrkit=venv / "bin" / "pitrkit", config=root / "pitrkit.toml",
              archive=root / "archive", spool=root / "spool", floor_dir=root / "pg_receivewal",
              runtime_dir=root / "run", pgbench_script=root / "wal_load.sql", rows=rows)
    for directory in (rig.archive, rig.spool, rig.floor_dir, rig.runtime_dir):
        shutil.rmtree(directory, ignore_errors=True)
        make_server_dir(directory, mode=0o700)
    rig.pgbench_script.write_text(PGBENCH_SCRIPT)
    rig.pgbench_script.chmod(0o644)
    log(f"initdb {cluster.pgdata} (PostgreSQL {install.version})")
    cluster.initdb()
    # initdb() turns fsync off for throwaway test clusters; a benchmark runs as in
    # production. Large max_wal_size: no checkpoint in a load window (a slot keeps the
    # WAL the receiver still needs anyway).
    cluster.conf(fsync=True, archive_mode=False, max_wal_senders=4, max_replication_slots=4,
                 max_wal_size="16GB", checkpoint_timeout="30min", wal_buffers="64MB",
                 log_line_prefix="%m [%p] ", log_timezone="UTC")
    cluster.start()
    cluster.sql("CREATE TABLE wal_load (id bigint, payload text)")
    rig.write_config(synchronous=False)
    pgharness.run_as_server_user([str(rig.pitrkit), "--config", str(rig.config), "init"], timeout=120)  # as a DBA does
    return rig


# --------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the load started
    server_lsn: int
    written_lsn: int | None  # the receiver's, as pg_stat_replication shows it
    sync_state: str | None
    archive_lag_bytes: int | None  # the sidecar's health file
    archive_lag_s: float | None


@dataclass
class Run:
    variant: str
    round: int
    seconds: float
    wal_bytes: int
    wal_mib_s: float
    tps: float
    receive_lag_max_mib: float | None = None
    receive_lag_mean_mib: float | None = None
    receive_lag_max_s: float | None = None
    receive_lag_mean_s: float | None = None
    archive_lag_max_mib: float | None = None
    archive_lag_mean_mib: float | None = None
    archive_lag_max_s: float | None = None
    archive_lag_mean_s: float | None = None
    catch_up_s: float | None = None  # after the load, until the receiver (or archive) has it all
    sidecar_cpu_pct: float | None = None  # of one core, over the load window
    receivewal_cpu_pct: float | None = None
    machine_busy_pct: float = 0.0  # of all cores
    archived_mib: float | None = None  # what the archive holds after the run
    receiver_restarts: int | None = None
    load_before: float = 0.0
    samples: list[Sample] = field(default_factory=list)


class Sampler(threading.Thread):
    def __init__(self, rig: Rig, slot: str | None, health: Path | None) -> None:
        super().__init__(daemon=True)
        self.rig, self.slot, self.health = rig, slot, health
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.rig.cluster.connect() as connection:
                while not self.done.wait(SAMPLE_EVERY):
                    self.samples.append(self.sample(connection))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def sample(self, connection) -> Sample:
        row = connection.execute(
            "SELECT pg_current_wal_lsn()::text, r.write_lsn::text, r.sync_state "
            "FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = %s "
            "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid", [self.slot or ""]).fetchone()
        lag_bytes = lag_s = None
        if self.health is not None:
            try:
                health = json.loads(self.health.read_text())
                lag_bytes, lag_s = health.get("lag_bytes"), health.get("lag_seconds")
            except (OSError, ValueError):
                pass
        return Sample(round(time.monotonic() - self.started, 3), Lsn.parse(row[0]),
                      Lsn.parse(row[1]) if row[1] else None, row[2], lag_bytes, lag_s)


def receiver_for(rig: Rig, variant: str, logfile: Path) -> subprocess.Popen | None:
    c = rig.cluster
    if variant == LOAD_ONLY:
        return None
    if variant == FLOOR:
        c.sql("SELECT pg_create_physical_replication_slot(%s, true)", [FLOOR_SLOT])
        return spawn_as_server_user(
            [str(c.install.bin("pg_receivewal")), "-D", str(rig.floor_dir), "-h", str(c.socket_dir),
             "-p", str(c.port), "-U", "postgres", "--slot", FLOOR_SLOT, "--no-loop", "--no-password",
             "--status-interval=1"], logfile)
    synchronous = variant == SIDECAR_SYNC
    rig.write_config(synchronous)
    c.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{SLOT if synchronous else ''}'")
    c.sql("SELECT pg_reload_conf()")
    return spawn_as_server_user([str(rig.pitrkit), "--config", str(rig.config), "wal-receive"], logfile, rig.env)


def streaming(rig: Rig, slot: str) -> bool:
    rows = rig.cluster.sql("SELECT r.state FROM pg_replication_slots s JOIN pg_stat_replication r "
                           "ON r.pid = s.active_pid WHERE s.slot_name = %s", [slot])
    return bool(rows) and rows[0][0] == "streaming"


def one_run(rig: Rig, variant: str, round_: int, seconds: int) -> Run:
    rig.fresh()
    logfile = rig.root / f"{variant.replace(' ', '-')}-{round_}.log"
    slot = {LOAD_ONLY: None, FLOOR: FLOOR_SLOT}.get(variant, SLOT)
    health = rig.spool / HEALTH_FILE if variant in (SIDECAR, SIDECAR_SYNC) else None
    receiver = receiver_for(rig, variant, logfile)
    try:
        if slot is not None:
            wait_for(lambda: streaming(rig, slot), 120, f"{variant} to stream from slot {slot}")
        pid = receiver.pid if receiver is not None else None
        sidecar_pid, receivewal_pid = (None, pid) if variant == FLOOR else (pid, None)
        if sidecar_pid is not None:
            wait_for(lambda: children_named(sidecar_pid, "pg_receivewal"), 60, "the sidecar's pg_receivewal")
            receivewal_pid = children_named(sidecar_pid, "pg_receivewal")[0]
        load = walpath.loadavg()[0]
        start_lsn = Lsn.parse(rig.cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        cpu0 = {pid: process_cpu(pid) for pid in (sidecar_pid, receivewal_pid) if pid}
        busy0 = machine_busy()
        sampler = Sampler(rig, slot, health)
        sampler.start()
        t0 = time.monotonic()
        output = rig.pgbench(seconds)
        wall = time.monotonic() - t0
        end_lsn = Lsn.parse(rig.cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        busy1 = machine_busy()
        cpu1 = {pid: process_cpu(pid) for pid in cpu0}
        sampler.done.set()
        sampler.join()
        if sampler.error is not None:
            raise sampler.error
        tps = float(next(line.split("=")[1].split()[0] for line in output.splitlines() if line.startswith("tps")))
        run = Run(variant, round_, round(wall, 1), end_lsn - start_lsn, round((end_lsn - start_lsn) / MIB / wall, 1),
                  round(tps, 1), machine_busy_pct=round(100 * (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 1),
                  load_before=load, samples=sampler.samples)
        cores = {pid: cpu_percent(cpu0[pid], cpu1[pid], wall) for pid in cpu0}
        run.sidecar_cpu_pct = cores.get(sidecar_pid) if sidecar_pid else None
        run.receivewal_cpu_pct = cores.get(receivewal_pid) if receivewal_pid else None
        if slot is not None:
            summarize_lag(run)
            run.catch_up_s = catch_up(rig, slot, health, end_lsn, t0 + wall)
        if health is not None:
            state = json.loads(health.read_text())
            run.receiver_restarts = state.get("receiver_restarts")
    finally:
        if receiver is not None:
            # SIGINT for pg_receivewal (it fsyncs and exits 0); SIGTERM for the sidecar.
            code = stop(receiver, signal.SIGINT if variant == FLOOR else signal.SIGTERM)
            if code not in (0, None):
                log(f"{variant} exited {code}; its log: {logfile}")
        if variant == SIDECAR_SYNC:
            rig.cluster.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
            rig.cluster.sql("SELECT pg_reload_conf()")
    if variant in (SIDECAR, SIDECAR_SYNC):
        run.archived_mib = round(tree_bytes(rig.archive / "wal") / MIB, 1)
    return run


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def seconds_behind(samples: list[Sample], sample: Sample) -> float:
    """How long before `sample` the server was at the position the receiver had written
    then, interpolated between the samples around it."""
    assert sample.written_lsn is not None
    earlier = (0.0, samples[0].server_lsn)
    for each in samples:
        if each.server_lsn >= sample.written_lsn:
            (t0, lsn0), (t1, lsn1) = earlier, (each.at, each.server_lsn)
            reached = t1 if lsn1 == lsn0 else t0 + (t1 - t0) * (sample.written_lsn - lsn0) / (lsn1 - lsn0)
            return max(sample.at - reached, 0.0)
        earlier = (each.at, each.server_lsn)
    return 0.0


def summarize_lag(run: Run) -> None:
    received = [s.server_lsn - s.written_lsn for s in run.samples if s.written_lsn is not None]
    received_s = [seconds_behind(run.samples, s) for s in run.samples if s.written_lsn is not None]
    archived = [s.archive_lag_bytes for s in run.samples if s.archive_lag_bytes is not None]
    archived_s = [s.archive_lag_s for s in run.samples if s.archive_lag_s is not None]
    if received:
        run.receive_lag_max_mib = round(max(received) / MIB, 2)
        run.receive_lag_mean_mib = round(statistics.fmean(received) / MIB, 2)
        run.receive_lag_max_s = round(max(received_s), 2)
        run.receive_lag_mean_s = round(statistics.fmean(received_s), 2)
    if archived:
        run.archive_lag_max_mib = round(max(archived) / MIB, 2)
        run.archive_lag_mean_mib = round(statistics.fmean(archived) / MIB, 2)
    if archived_s:
        run.archive_lag_max_s = round(max(archived_s), 2)
        run.archive_lag_mean_s = round(statistics.fmean(archived_s), 2)


def catch_up(rig: Rig, slot: str, health: Path | None, end_lsn: int, load_end: float) -> float | None:
    """Seconds from the end of the load until the receiver has written (pg_receivewal)
    or the archive holds (the sidecar: last_archived_lsn) everything the load wrote."""

    def caught_up() -> bool:
        if health is None:
            rows = rig.cluster.sql("SELECT r.write_lsn::text FROM pg_replication_slots s JOIN pg_stat_replication r "
                                   "ON r.pid = s.active_pid WHERE s.slot_name = %s", [slot])
            return bool(rows) and rows[0][0] is not None and Lsn.parse(rows[0][0]) >= end_lsn
        try:
            archived = json.loads(health.read_text()).get("last_archived_lsn")
        except (OSError, ValueError):
            return False
        return archived is not None and Lsn.parse(archived) >= end_lsn

    try:
        wait_for(caught_up, CATCH_UP_TIMEOUT, "the receiver to catch up")
    except LocalPgError:
        return None
    return round(time.monotonic() - load_end, 1)


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------


def median(runs: list[Run], name: str) -> float | None:
    values = [getattr(run, name) for run in runs if getattr(run, name) is not None]
    return round(statistics.median(values), 2) if values else None


SUMMARY_FIELDS = ("wal_mib_s", "tps", "receive_lag_max_mib", "receive_lag_mean_mib", "receive_lag_max_s",
                  "receive_lag_mean_s", "archive_lag_max_mib", "archive_lag_mean_mib", "archive_lag_max_s",
                  "archive_lag_mean_s", "catch_up_s", "sidecar_cpu_pct", "receivewal_cpu_pct", "machine_busy_pct",
                  "archived_mib")


def summarize(runs: list[Run], variants: list[str]) -> list[dict]:
    rows = []
    for variant in variants:
        if mine := [run for run in runs if run.variant == variant]:
            medians = {name: median(mine, name) for name in SUMMARY_FIELDS}
            rows.append({"variant": variant, "rounds": len(mine), **medians,
                         "wal_mib_s_per_round": [run.wal_mib_s for run in mine],
                         "loads": [run.load_before for run in mine]})
    return rows


def cell(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:g}{suffix}"


def render(out: dict) -> str:
    h, pk = out["host"], out["pitrkit"]
    lines = [
        f"# wal-receive benchmark, {out['when']}",
        "",
        f"`{out['command']}` ({out['duration_s']:.0f} s). Host: {h['nproc']} cores, {h['cpu_model']}, "
        f"{h['mem_gib']} GiB, Linux {h['kernel']}. PostgreSQL {out['pg_version']}. pitrkit "
        f"{pk.get('head', '?')[:10]} ({pk.get('installed_from', '?')}).",
        "",
        f"Load: pgbench, 2 clients, {out['seconds']} s per run, each transaction inserting {out['rows']} rows of "
        f"~100 bytes (no index). {out['rounds']} interleaved rounds; medians.",
        "",
        "| variant | WAL MiB/s | tps | received lag max / mean | archive lag max / mean | catch-up | "
        "CPU sidecar | CPU pg_receivewal | machine busy |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in out["summary"]:
        received = (f"{cell(row['receive_lag_max_mib'], ' MiB')} / {cell(row['receive_lag_mean_mib'], ' MiB')}, "
                    f"{cell(row['receive_lag_max_s'], ' s')} / {cell(row['receive_lag_mean_s'], ' s')}")
        archived = (f"{cell(row['archive_lag_max_mib'], ' MiB')} / {cell(row['archive_lag_mean_mib'], ' MiB')}, "
                    f"{cell(row['archive_lag_max_s'], ' s')} / {cell(row['archive_lag_mean_s'], ' s')}")
        if row["variant"] in (LOAD_ONLY,):
            received = archived = "-"
        elif row["variant"] == FLOOR:
            archived = "-"
        lines.append(f"| {row['variant']} | {cell(row['wal_mib_s'])} | {cell(row['tps'])} | {received} | {archived} | "
                     f"{cell(row['catch_up_s'], ' s')} | {cell(row['sidecar_cpu_pct'], ' %')} | "
                     f"{cell(row['receivewal_cpu_pct'], ' %')} | {cell(row['machine_busy_pct'], ' %')} |")
    lines += [
        "",
        "Received lag: the server's WAL position minus the receiver's written position (pg_stat_replication, "
        "reported every second: up to a second stale), and how long ago the server was at that position. "
        "Archive lag: the sidecar's health file (lag_bytes, lag_seconds: server position minus "
        "what the archive holds, the open segment counted as of its last .partial shipment). CPU: percent of one "
        "core over the load window; machine busy: percent of all cores.",
        "",
        "WAL MiB/s per round: " + "; ".join(f"{row['variant']}: {row['wal_mib_s_per_round']}"
                                           for row in out["summary"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--seconds", type=int, default=60, help="load per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1000, help="rows inserted per transaction")
    ap.add_argument("--only", default=",".join(VARIANTS), metavar="VARIANT,...",
                    help=f"the variants to run, of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--root", default="/srv/pitrkit-bench-receive", help="venv, cluster, spool and archive live here")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    walpath.add_install_arguments(ap)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("receive: run as root (it installs a venv; servers run as postgres)")
    variants = [variant for variant in VARIANTS if variant in a.only.split(",")]
    if not variants:
        sys.exit(f"receive: --only names none of {', '.join(VARIANTS)}")
    os.umask(0o022)  # the venv and configuration must be readable by postgres
    started, when = time.monotonic(), walpath.stamp_now()
    root, installed = walpath.prepare_root(a)
    rig = build_rig(root, root / "venv", a.rows)
    runs: list[Run] = []
    try:
        for round_ in range(1, a.rounds + 1):
            for variant in walpath.rotated(variants, round_ - 1):
                log(f"round {round_}: {variant}, {a.seconds} s of load")
                run = one_run(rig, variant, round_, a.seconds)
                log(f"  {run.wal_mib_s} MiB/s of WAL, {run.tps} tps; archive lag max "
                    f"{cell(run.archive_lag_max_mib, ' MiB')} {cell(run.archive_lag_max_s, ' s')}; catch-up "
                    f"{cell(run.catch_up_s, ' s')}; CPU sidecar {cell(run.sidecar_cpu_pct, ' %')}, "
                    f"pg_receivewal {cell(run.receivewal_cpu_pct, ' %')}")
                runs.append(run)
    except (CommandFailed, LocalPgError) as exc:
        log(f"FAILED: {exc}")
        log(f"server log:\n{rig.cluster.log_tail(12)}")
        raise SystemExit(1) from None
    finally:
        if not a.keep:
            rig.cluster.cleanup()
    out = {
        "when": when, "duration_s": round(time.monotonic() - started, 1),
        "command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
        "host": walpath.host_facts(),
        "pitrkit": installed,
        "pg_version": rig.cluster.install.version,
        "seconds": a.seconds, "rows": a.rows, "rounds": a.rounds, "config": rig.config_text,
        "summary": summarize(runs, variants),
        "runs": [asdict(run) for run in runs],
    }
    log(f"wrote {walpath.write_results(a.results_dir, f'receive-{when}', out, render(out))}.json and .md")


if __name__ == "__main__":
    main()

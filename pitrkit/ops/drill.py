"""`pitrkit drill`: a restore drill. Restores a backup into a scratch directory on this
host, starts it with recovery_target_action promote on a free port (its socket in the
scratch directory, archiving off, no subscriptions, recovery.signal only: nothing of it
reaches the production archive or server), checks the promoted copy (every database
accepts connections, `pg_amcheck --heapallindexed --install-missing` over each, the
`[drill] checks` queries give their answers), stores a `DrillReport` in the archive
(`drills/<id>.json`) whatever the outcome, and removes the scratch cluster: on success,
on failure and on an interrupt (SIGINT, SIGTERM), never leaving a postmaster behind.

What is restored: the newest usable backup to the end of the unbroken WAL (a gap after
it fails the drill, as it would fail a restore), a chosen backup to the end of the WAL,
or a random LSN drawn uniformly from the restorable range of what the archive keeps
(from the oldest usable backup's consistency point on the newest timeline's path to the
start of its last archived segment, so that the WAL surely reaches it). The time to
restore (RTO) counts from the start of the drill (planning included) to the promoted
copy answering; the checks come after it.

The restore is restore/engine.py's, step by step: plan, manifest and chain checks, the
WAL present, a lease, the data directory, its configuration, the recovery settings,
and pgstart. A drill runs at low CPU and I/O priority ([drill] nice, ionice), inherited
by the server it starts and the wal-fetch it runs, and refuses to start without
[drill] min_free to spare beyond the backup's size on the scratch directory's disk.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

import msgspec

from pitrkit import __version__
from pitrkit.catalog import lease
from pitrkit.catalog.archived_wal import ArchivedWal, on_path
from pitrkit.catalog.backups import backups
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import BackupSummary, DrillCheck, DrillReport
from pitrkit.config import Config, DrillConfig, DrillQuery
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.progress import human_bytes, human_seconds
from pitrkit.restore import chain, engine, pgstart, recovery_conf, server_config, unpack
from pitrkit.restore.plan import RestorePlan, describe, make_plan, planned_in
from pitrkit.restore.targets import Target
from pitrkit.storage.archive import Archive, ArchiveUnavailable, drill_key
from pitrkit.storage.repositories import Repository, chosen, open_all

TargetKind = Literal["latest", "backup", "random"]
# A postmaster asked to stop at once (SIGQUIT, immediate shutdown) that is still there
# after this is killed: the scratch cluster is thrown away either way. Well within the
# daemon's wait for a drill it stops (daemon/service.py).
_STOP_WAIT = 20.0
# Ends a [drill] checks query that would never return: the drill must end.
_QUERY_TIMEOUT = "1h"
_DETAIL_MAX = 4000


class DrillFailed(PitrkitError):
    """The drill ran and failed: its reason is the command's line, exit 1."""

    exit_code = 1


class _Interrupted(KeyboardInterrupt):
    """SIGTERM (the daemon stopping, a service manager): unwinds like Ctrl-C, through the
    cleanup, and ends the command as an interrupt does (exit 130)."""


class DrillChoice(msgspec.Struct, kw_only=True, frozen=True):
    """What to restore: the newest backup, the one `backup_id` names, or a random point."""

    kind: TargetKind = "latest"
    backup_id: str | None = None


def command(args: argparse.Namespace, config: Config, config_path: Path) -> str:
    choice = DrillChoice(kind="backup" if args.backup else "random" if args.random else "latest",
                         backup_id=args.backup)
    if os.geteuid() == 0:
        raise RefusedError("drill must not run as root: PostgreSQL will not start a root-owned cluster; run it as "
                           "the OS user PostgreSQL runs as, e.g. sudo -u postgres pitrkit drill")
    lower_priority(config.drill)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        repository = drilled_repository(chosen(open_all(config), args.repo), choice)
        report = run(repository.archive, config.for_repository(repository.settings), config_path, choice)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in describe_report(report):
        engine.say(line)
    if report.result != "passed":
        raise DrillFailed(f"drill {report.drill_id} failed: {report.reason}")
    return f"drill {report.drill_id} passed: RTO {human_seconds(report.rto_seconds or 0)}"


def drilled_repository(repositories: list[Repository], choice: DrillChoice) -> Repository:
    """The repository a drill restores from: the first that can plan it (as restore
    chooses, restore/plan.planned_in), else the first, where the drill then fails with
    the reason and stores its report."""
    if len(repositories) == 1:
        return repositories[0]
    # The random point is drawn once, by the drill itself: here the latest plan is enough.
    planned = DrillChoice(kind="backup", backup_id=choice.backup_id) if choice.kind == "backup" else DrillChoice()
    try:
        repository, _ = planned_in(repositories, lambda archive: plan_drill(archive, planned, _Facts(planned)))
    except PitrkitError as exc:
        engine.say(f"no repository can plan the drill ({exc}): drilling from {repositories[0].name}")
        return repositories[0]
    engine.say(f"drilling from repository {repository.name}")
    return repository


def _raise_interrupted(_signal: int, _frame: FrameType | None) -> None:
    raise _Interrupted()


def lower_priority(drill: DrillConfig) -> None:
    """[drill] nice and ionice for this process and what it starts (they inherit both)."""
    current = os.nice(0)
    if drill.nice > current:
        os.nice(drill.nice - current)
    if drill.ionice == "none":
        return
    ionice = shutil.which("ionice")
    argv = ["-c", "3"] if drill.ionice == "idle" else ["-c", "2", "-n", "7"]
    if ionice is None:
        engine.say("warning: no ionice command here: the drill runs at the default I/O priority")
        return
    done = subprocess.run([ionice, *argv, "-p", str(os.getpid())], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        engine.say(f"warning: ionice {' '.join(argv)} failed ({done.stderr.strip()}): the drill runs at the "
                   "default I/O priority")


def new_drill_id(now: datetime) -> str:
    """The UTC start to the millisecond, then random: names that sort as the drills ran."""
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


class _Facts:
    """What the drill has learnt so far: the report is made from it however it ends."""

    def __init__(self, choice: DrillChoice) -> None:
        self.started_at = datetime.now(UTC)
        self.started = time.monotonic()
        self.drill_id = new_drill_id(self.started_at)
        self.kind: TargetKind = choice.kind
        self.target_lsn: Lsn | None = None
        self.plan: RestorePlan | None = None
        self.restore_seconds: float | None = None
        self.replay_seconds: float | None = None
        self.rto_seconds: float | None = None
        self.reached_lsn: Lsn | None = None
        self.databases: list[str] = []
        self.checks: list[DrillCheck] = []

    def report(self, reason: str | None) -> DrillReport:
        plan = self.plan
        replayed = None
        if plan is not None and self.reached_lsn is not None:
            replayed = max(self.reached_lsn - plan.backup.start_lsn, 0)
        return DrillReport(
            drill_id=self.drill_id, host=socket.gethostname()[:255], pitrkit_version=__version__,
            started_at=self.started_at, finished_at=datetime.now(UTC),
            result="passed" if reason is None else "failed", reason=None if reason is None else reason[:_DETAIL_MAX],
            target_kind=self.kind, target_lsn=self.target_lsn,
            backup_id=plan.backup.backup_id if plan else None, timeline=plan.timeline if plan else None,
            wal_segments=len(plan.segments) if plan else 0, rto_seconds=_rounded(self.rto_seconds),
            restore_seconds=_rounded(self.restore_seconds), replay_seconds=_rounded(self.replay_seconds),
            wal_replayed_bytes=replayed, reached_lsn=self.reached_lsn, databases=self.databases, checks=self.checks,
        )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def run(archive: Archive, config: Config, config_path: Path, choice: DrillChoice) -> DrillReport:
    """One drill, its report stored in the archive (when the archive takes it). Failures
    of the restore or the checks are the report's `reason`. An interrupt (a daemon
    stopping) stores nothing: it proves nothing about the archive, and the last drill's
    report stays the newest."""
    facts = _Facts(choice)
    engine.say(f"drill {facts.drill_id}: restoring into a scratch cluster on {socket.gethostname()}")
    reason: str | None = None
    try:
        _drill(archive, config, config_path, choice, facts)
    except PitrkitError as exc:
        reason = str(exc)
    except OSError as exc:  # the scratch directory's disk: full, not writable
        reason = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    report = facts.report(reason)
    _store(archive, report)
    return report


def _store(archive: Archive, report: DrillReport) -> None:
    key = drill_key(report.drill_id)
    try:
        archive.put_document(key, report)
    except (ArchiveUnavailable, RefusedError) as exc:
        # A drill may run where the archive is read-only: the drill's result still counts.
        engine.say(f"warning: the drill's report was not stored as {key}: {exc}")
        return
    engine.say(f"stored the drill's report as {key}")


def _drill(archive: Archive, config: Config, config_path: Path, choice: DrillChoice, facts: _Facts) -> None:
    # The newest era's backups: the cluster that runs now (its report stays at the root).
    archive = archive.current()
    plan = plan_drill(archive, choice, facts)
    facts.plan = plan
    engine.say(describe(plan))
    manifest = engine.fetch_manifest(archive, plan.backup)
    workers = config.backup.workers or os.cpu_count() or 1
    links = None
    if manifest.parent is not None:
        links = chain.plan_chain(archive, [*engine.fetch_chain(archive, manifest), manifest], workers)
        engine.say(f"  {links.describe()}")
    check_room(config.drill, manifest.size)
    bindir = pgstart.find_bindir(config.postgres, plan.backup.pg_version)
    engine.check_wal_present(archive, plan)
    with _scratch(config.drill, facts.drill_id) as scratch:
        target_dir = scratch / "data"
        if manifest.tablespaces:
            (scratch / "tablespaces").mkdir(mode=0o700)
        mappings = [unpack.TablespaceMapping(each.location, scratch / "tablespaces" / str(each.oid))
                    for each in manifest.tablespaces]
        tablespaces = unpack.resolve_tablespaces(manifest.tablespaces, mappings, manifest.backup_id)
        port = pgstart.free_port()
        with lease.Renewal(archive, engine.take_lease(archive, plan)) as held:
            try:
                begun = time.monotonic()
                try:
                    engine.write_data_directory(archive, manifest, links, target_dir, tablespaces, workers, held)
                except engine.RestoreIncomplete as exc:
                    # Its advice (empty the directory) is not the drill's, which removes it:
                    # the failure itself is the reason.
                    cause = exc.__context__ if isinstance(exc.__context__, PitrkitError) else exc
                    raise DrillFailed(f"the backup did not restore: {cause}") from None
                sockets = pgstart.socket_dir(target_dir, port)
                server_config.write(target_dir, manifest.configuration,
                                    server_config.Choices(config.drill.config_files == "backup", port, sockets),
                                    engine.say)
                settings = engine.recovery_settings(plan, "promote", config_path, archiving=False)
                recovery_conf.write(target_dir, settings, f"written by pitrkit {__version__} drill {facts.drill_id}")
                facts.restore_seconds = time.monotonic() - begun
                server = pgstart.start(target_dir, bindir, port, sockets)
                try:
                    _recover_and_check(server, plan, config.drill, facts)
                finally:
                    stop(server)
                    if sockets != target_dir:
                        shutil.rmtree(sockets, ignore_errors=True)
            finally:
                held.release()  # the scratch copy goes: nothing replays from the archive after this


def _recover_and_check(server: pgstart.Server, plan: RestorePlan, drill: DrillConfig, facts: _Facts) -> None:
    replay_to = plan.target.lsn if plan.target.lsn is not None else plan.archive_end
    result = pgstart.wait_for_target(server, "promote", plan.backup.start_lsn, replay_to,
                                     lambda lsn: engine.timeline_at(plan, lsn))
    facts.rto_seconds = time.monotonic() - facts.started
    facts.replay_seconds = result.seconds
    facts.reached_lsn = result.lsn
    engine.say(f"recovery {result.state} at {result.lsn} after {human_seconds(result.seconds)}; time to restore "
               f"{human_seconds(facts.rto_seconds)}")
    facts.databases = _databases(server)
    facts.checks = [*(_connect(server, name) for name in facts.databases),
                    *(_amcheck(server, name) for name in facts.databases),
                    *(_query(server, query) for query in drill.checks)]
    failed = [check for check in facts.checks if not check.passed]
    if failed:
        first = failed[0]
        what = f"query {first.sql!r}" if first.kind == "sql" else first.kind
        raise DrillFailed(f"{len(failed)} of {len(facts.checks)} checks failed; first: {what} in database "
                          f"{first.database}: {first.detail}")


def plan_drill(archive: Archive, choice: DrillChoice, facts: _Facts) -> RestorePlan:
    """The restore plan of the drill's choice (see the module's docstring), in the
    archive's newest era."""
    archive = archive.current()
    if choice.kind == "backup":
        assert choice.backup_id is not None
        finished = backups(archive)
        chosen = next((each for each in finished if each.backup_id == choice.backup_id), None)
        if chosen is None:
            raise RefusedError(f"--backup {choice.backup_id}: no such finished backup in the archive")
        # The planner takes the newest usable backup: give it this one and its chain only.
        kept = [each for each in finished if each is chosen or each.backup_id in chosen.chain]
        return make_plan(archive, Target(kind="latest", text="latest"), finished=kept)
    wal = ArchivedWal(archive)
    latest = make_plan(archive, Target(kind="latest", text="latest"), wal=wal)
    if choice.kind == "latest":
        return latest
    point = random_point(latest, check_chains(backups(archive)).usable, wal.segment_size)
    if point is None:
        engine.say("the restorable range is too short to draw a point from: the drill restores to the end of the WAL")
        return latest
    facts.target_lsn = point
    engine.say(f"random point of the restorable range: LSN {point}")
    return make_plan(archive, Target(kind="lsn", lsn=point, text=str(point)), latest.timeline, wal=wal)


def random_point(latest: RestorePlan, usable: list[BackupSummary], segment_size: int,
                 seed: int | None = None) -> Lsn | None:
    """An LSN drawn uniformly from the oldest usable backup's consistency point on the
    latest plan's path to the start of its last segment (the WAL surely goes on past it);
    None when that range is empty."""
    on = [each for each in usable if on_path(latest.path, each)]
    if not on:
        return None
    low = min(each.stop_lsn for each in on)
    last = latest.segments[-1].removesuffix(".partial")
    high = SegmentName.parse(last, segment_size).start_lsn
    if high <= low:
        return None
    return Lsn(random.Random(seed).randrange(low, high))


def check_room(drill: DrillConfig, size: int) -> None:
    """[drill] scratch has room for `size` bytes and [drill] min_free: checked before
    anything else that the drill would need the host for."""
    parent = _scratch_parent(drill)
    try:
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise RefusedError(f"[drill] scratch {parent}: {exc.strerror}") from None
    needed = size + drill.min_free_bytes
    if free < needed:
        raise RefusedError(f"not enough free space in {parent} for a drill: {human_bytes(free)} free, the backup "
                           f"needs {human_bytes(size)} and [drill] min_free keeps {human_bytes(drill.min_free_bytes)}")


def _scratch_parent(drill: DrillConfig) -> Path:
    return Path(drill.scratch or tempfile.gettempdir())


@contextmanager
def _scratch(drill: DrillConfig, drill_id: str) -> Iterator[Path]:
    """A fresh private directory in [drill] scratch, removed at the end, whatever happens."""
    directory = Path(tempfile.mkdtemp(prefix=f"pitrkit-drill-{drill_id}-", dir=_scratch_parent(drill)))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            # An interrupt during the restore can leave its worker threads writing into it
            # (the interrupt ended the wait for them): the interpreter joins them before it
            # runs atexit handlers, so the last removal comes after their last write.
            atexit.register(shutil.rmtree, directory, True)
        engine.say(f"removed the scratch cluster {directory}")


def stop(server: pgstart.Server) -> None:
    """Stop the scratch postmaster at once (immediate shutdown: its data is thrown
    away), killing it if it does not go; it is our child, so waiting reaps it."""
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGQUIT)
    try:
        process.wait(_STOP_WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _connection(server: pgstart.Server, database: str, options: str = ""):
    import psycopg  # only when a drill checks its server: status lists drills without psycopg

    return psycopg.connect(host=str(server.socket_dir), port=server.port, dbname=database, autocommit=True,
                           connect_timeout=30, options=options or None)


def _databases(server: pgstart.Server) -> list[str]:
    import psycopg  # only when a drill checks its server, as above

    try:
        with _connection(server, "postgres") as connection:
            rows = connection.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname").fetchall()
    except psycopg.Error as exc:
        raise DrillFailed(f"cannot list the restored databases: {_first_line(exc)}") from None
    return [name for (name,) in rows]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[-1][:_DETAIL_MAX]


def _connect(server: pgstart.Server, database: str) -> DrillCheck:
    import psycopg  # only when a drill checks its server, as above

    try:
        with _connection(server, database) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return DrillCheck(kind="connect", database=database, passed=False, detail=_first_line(exc))
    return DrillCheck(kind="connect", database=database, passed=True, detail="ok")


def _amcheck(server: pgstart.Server, database: str) -> DrillCheck:
    argv = [str(server.bindir / "pg_amcheck"), "--heapallindexed", "--install-missing", "-h", str(server.socket_dir),
            "-p", str(server.port), "-d", database]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return DrillCheck(kind="amcheck", database=database, passed=False, detail=f"cannot run {argv[0]}: {exc}")
    if done.returncode == 0:
        return DrillCheck(kind="amcheck", database=database, passed=True, detail="ok")
    said = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    detail = f"pg_amcheck exited with {done.returncode}" + (f": {' | '.join(said[:3])}" if said else "")
    return DrillCheck(kind="amcheck", database=database, passed=False, detail=detail[:_DETAIL_MAX])


def _query(server: pgstart.Server, query: DrillQuery) -> DrillCheck:
    import psycopg  # only when a drill checks its server, as above

    sql, expect, database = query.sql, query.expect, query.database
    try:
        with _connection(server, database, f"-c statement_timeout={_QUERY_TIMEOUT}") as connection:
            result = connection.execute(sql).pgresult
            raw = result.get_value(0, 0) if result is not None and result.ntuples and result.nfields else None
    except psycopg.Error as exc:
        return DrillCheck(kind="sql", database=database, passed=False, detail=f"error: {_first_line(exc)}",
                          sql=sql[:_DETAIL_MAX], expect=expect[:_DETAIL_MAX])
    answer = "" if raw is None else bytes(raw).decode(errors="replace")
    return DrillCheck(kind="sql", database=database, passed=answer == expect, detail=answer[:_DETAIL_MAX],
                      sql=sql[:_DETAIL_MAX], expect=expect[:_DETAIL_MAX])


def describe_report(report: DrillReport) -> list[str]:
    lines = [f"drill {report.drill_id}: {report.result.upper()}" + (f": {report.reason}" if report.reason else "")]
    if report.backup_id is not None:
        target = f"LSN {report.target_lsn} (random)" if report.target_lsn is not None else "the end of the WAL"
        lines.append(f"  backup {report.backup_id} to {target}, timeline {report.timeline}, "
                     f"{report.wal_segments} WAL segments planned")
    if report.rto_seconds is not None:
        stages = (f"writing {human_seconds(report.restore_seconds or 0)}, "
                  f"replay {human_seconds(report.replay_seconds or 0)}")
        lines.append(f"  time to restore (RTO): {human_seconds(report.rto_seconds)} ({stages})"
                     f"; WAL replayed: {human_bytes(report.wal_replayed_bytes or 0)} to {report.reached_lsn}")
    for check in report.checks:
        what = f"{check.kind} {check.sql!r} (expect {check.expect!r})" if check.kind == "sql" else check.kind
        lines.append(f"  {'ok  ' if check.passed else 'FAIL'} {what} in {check.database}: {check.detail}")
    return lines

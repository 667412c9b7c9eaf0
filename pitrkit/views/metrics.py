"""The daemon's /metrics: the status report (ops/status.py) and the daemon's own facts
(ops/daemon_facts.py) as Prometheus text.

A pure renderer of typed values: the daemon collects, this only formats, so a scrape
never touches the archive.

Metrics follow the text exposition format 0.0.4: `pitrkit_` prefix, base units in the
names (`_seconds`, `_bytes`, `_timestamp_seconds`), counters ending in `_total`, and a
sample left out (not zero) when its value is unknown, so that an absent server does not
look like one that archived nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from pitrkit.ops.daemon_facts import DaemonFacts
from pitrkit.ops.status import (
    ArchivedFile,
    ArchiveSize,
    DrillHealth,
    LastBackup,
    Level,
    RepositoryStatus,
    StatusReport,
    TimelineRange,
)
from pitrkit.postgres.wal import Lsn

_LEVEL_VALUE: dict[Level, int] = {"OK": 0, "WARN": 1, "FAIL": 2}


class _Family:
    """One metric family: its HELP and TYPE lines and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help_text = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {_escape_help(self.help_text)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            rendered = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels.items())
            yield f"{self.name}{{{rendered}}} {_number(value)}" if rendered else f"{self.name} {_number(value)}"


class _Exposition:
    """The families of one scrape, in the order they were added."""

    def __init__(self) -> None:
        self.families: list[_Family] = []

    def family(self, name: str, kind: str, help_text: str) -> _Family:
        found = _Family(f"pitrkit_{name}", kind, help_text)
        self.families.append(found)
        return found

    def text(self) -> str:
        return "".join(line + "\n" for found in self.families for line in found.lines())


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _stamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def _lsn(value: Lsn | None) -> float | None:
    return None if value is None else float(int(value))


def metrics_text(report: StatusReport, daemon: DaemonFacts | None) -> str:
    exposition = _Exposition()
    family = exposition.family
    family("status", "gauge", "Overall status: 0 OK, 1 WARN, 2 FAIL.").add(_LEVEL_VALUE[report.overall])
    checks = family("check_status", "gauge", "Each check's status: 0 OK, 1 WARN, 2 FAIL.")
    for check in report.checks:
        checks.add(_LEVEL_VALUE[check.level], check=check.name)
    family("status_timestamp_seconds", "gauge", "When this status was collected.").add(_stamp(report.generated_at))

    every = _figures(report)
    backups = family("backups", "gauge", "Finished backups in the archive.")
    unfinished = family("unfinished_backups", "gauge", "Backup folders without a manifest (running or interrupted).")
    last_stop = family("last_backup_timestamp_seconds", "gauge", "When the newest backup became usable (its stop "
                       "time).")
    last_age = family("last_backup_age_seconds", "gauge", "Seconds since the newest backup's stop time.")
    last_duration = family("last_backup_duration_seconds", "gauge", "How long the newest backup took.")
    last_size = family("last_backup_size_bytes", "gauge", "Bytes of the files in the newest backup.")
    last_stored = family("last_backup_stored_bytes", "gauge", "Bytes the newest backup occupies in the archive.")
    last_chain = family("last_backup_chain_length", "gauge", "Backups a restore of the newest backup reads: 1 for a "
                        "full backup, its ancestors and itself for an incremental one.")
    last_ratio = family("last_backup_stored_ratio", "gauge", "The newest backup's stored bytes over its files' bytes.")
    for figures in every:
        labels = figures.labels
        backups.add(figures.backups, **labels)
        unfinished.add(len(figures.unfinished_backups), **labels)
        last = figures.last_backup
        if last is not None:
            last_stop.add(_stamp(last.stop_time), **labels)
            last_age.add(last.age_seconds, **labels)
            last_duration.add(last.duration_seconds, **labels)
            last_size.add(last.size_bytes, **labels)
            last_stored.add(last.stored_bytes, **labels)
            last_chain.add(last.chain_length, **labels)
            last_ratio.add(last.stored_share, **labels)

    _file_metrics(exposition, "last_wal_archived", "the newest full WAL segment in the archive",
                  [(figures.last_wal, figures.labels) for figures in every])
    receiver = report.receiver
    _file_metrics(exposition, "last_wal_received", "the newest .partial segment the streaming sidecar shipped",
                  [(receiver.newest_partial, {})])
    family("receiver_running", "gauge", "The sidecar's state file says it runs (1) or stopped (0).").add(
        _flag(receiver.running))
    family("receiver_received_lsn_bytes", "gauge", "WAL position the sidecar has received to.").add(
        _lsn(receiver.last_received_lsn))
    family("receiver_lag_bytes", "gauge", "Server WAL position minus the archived position (sidecar).").add(
        receiver.lag_bytes)
    family("receiver_lag_seconds", "gauge", "Seconds since all the server's WAL was archived (sidecar).").add(
        receiver.lag_seconds)

    archiver = report.archiver
    family("archiver_up", "gauge", "Whether pg_stat_archiver could be read from [postgres] conninfo.").add(
        float(archiver.reachable))
    family("archiver_archived_total", "counter", "pg_stat_archiver.archived_count.").add(archiver.archived_count)
    family("archiver_failed_total", "counter", "pg_stat_archiver.failed_count.").add(archiver.failed_count)
    family("archiver_last_archived_timestamp_seconds", "gauge", "pg_stat_archiver.last_archived_time.").add(
        _stamp(archiver.last_archived_time))
    family("archiver_last_failed_timestamp_seconds", "gauge", "pg_stat_archiver.last_failed_time.").add(
        _stamp(archiver.last_failed_time))
    family("server_timeline", "gauge", "The timeline the server in [postgres] conninfo is on.").add(archiver.timeline)
    head = family("head_timeline", "gauge", "The timeline status judges: the server's, else the archive's newest.")
    wal_files = family("wal_files", "gauge", "Files under wal/ (segments, partials, .backup and history files).")
    wal_segments = family("wal_segments", "gauge", "Full WAL segments in the archive.")
    wal_stored = family("wal_stored_bytes", "gauge", "Bytes the WAL occupies in the archive.")
    wal_original = family("wal_original_bytes", "gauge", "Full segments times the segment size.")
    backups_stored = family("backups_stored_bytes", "gauge", "Bytes the backups occupy in the archive.")
    backups_size = family("backups_size_bytes", "gauge", "Bytes of the files the backups hold.")
    oldest = family("restorable_oldest_timestamp_seconds", "gauge", "The oldest restorable instant per timeline.")
    newest_lsn = family("restorable_newest_lsn_bytes", "gauge", "The newest restorable WAL position per timeline.")
    newest_at = family("restorable_newest_timestamp_seconds", "gauge",
                       "When the newest restorable WAL per timeline was stored.")
    gaps = family("wal_gaps", "gauge", "Missing segments after a backup, per timeline.")
    branch = family("timeline_branch", "gauge", "1 for a timeline off the server's history (a restored copy's), "
                    "else 0.")
    shortfalls = family("retention_shortfalls", "gauge", "Retention promises the archive does not keep.")
    for figures in every:
        labels = figures.labels
        head.add(figures.head_timeline, **labels)
        size = figures.size
        wal_files.add(size.wal_files, **labels)
        wal_segments.add(size.wal_segments, **labels)
        wal_stored.add(size.wal_stored_bytes, **labels)
        wal_original.add(size.wal_original_bytes, **labels)
        backups_stored.add(size.backups_stored_bytes, **labels)
        backups_size.add(size.backups_size_bytes, **labels)
        for timeline in figures.timelines:
            each = {**labels, "timeline": str(timeline.timeline)}
            oldest.add(_stamp(timeline.oldest.time) if timeline.oldest else None, **each)
            newest_lsn.add(_lsn(timeline.newest.lsn) if timeline.newest else None, **each)
            newest_at.add(_stamp(timeline.newest.stored_at) if timeline.newest else None, **each)
            gaps.add(len(timeline.gaps), **each)
            branch.add(float(timeline.branch), **each)
        shortfalls.add(figures.retention_shortfalls, **labels)
    family("retention_deleting_backups", "gauge", "Backups retention is removing.").add(
        len(report.retention.deleting))

    if report.repositories:
        _repository_metrics(exposition, report.repositories)
    if report.drills is not None:
        _drill_metrics(exposition, report.drills)
    if daemon is not None:
        _daemon_metrics(exposition, daemon)
    return exposition.text()


def _drill_metrics(exposition: _Exposition, drills: DrillHealth) -> None:
    family = exposition.family
    last, success = drills.last, drills.last_success
    family("drill_last_timestamp_seconds", "gauge", "When the newest restore drill ended.").add(
        _stamp(last.finished_at) if last else None)
    family("drill_last_result", "gauge", "The newest restore drill passed (1) or failed (0).").add(
        None if last is None else float(last.result == "passed"))
    family("drill_last_success_timestamp_seconds", "gauge", "When the newest successful restore drill ended.").add(
        _stamp(success.finished_at) if success else None)
    family("drill_last_success_age_seconds", "gauge", "Seconds since the newest successful restore drill ended.") \
        .add(drills.last_success_age_seconds)
    family("drill_rto_seconds", "gauge", "Time to restore of the newest successful drill: from its start to the "
           "promoted copy answering.").add(success.rto_seconds if success else None)
    family("drill_wal_replayed_bytes", "gauge", "WAL the newest successful drill replayed.").add(
        success.wal_replayed_bytes if success else None)


def _file_metrics(exposition: _Exposition, name: str, what: str,
                  files: list[tuple[ArchivedFile | None, dict[str, str]]]) -> None:
    family = exposition.family
    stamp = family(f"{name}_timestamp_seconds", "gauge", f"When {what} was stored.")
    age = family(f"{name}_age_seconds", "gauge", f"Seconds since {what} was stored.")
    end = family(f"{name}_end_lsn_bytes", "gauge", f"The WAL position where {what} ends.")
    timeline = family(f"{name}_timeline", "gauge", f"The timeline of {what}.")
    for file, labels in files:
        if file is not None:
            stamp.add(_stamp(file.stored_at), **labels)
            age.add(file.age_seconds, **labels)
            end.add(_lsn(file.end_lsn), **labels)
            timeline.add(file.timeline, **labels)


class _Figures(NamedTuple):
    """One repository's figures, and the labels that say which: none with one repository
    (the report's own figures), `repository` with several."""

    labels: dict[str, str]
    backups: int
    unfinished_backups: list[str]
    last_backup: LastBackup | None
    last_wal: ArchivedFile | None
    head_timeline: int | None
    size: ArchiveSize
    timelines: list[TimelineRange]
    retention_shortfalls: int | None


def _figures(report: StatusReport) -> list[_Figures]:
    if not report.repositories:
        return [_Figures({}, report.backups, report.unfinished_backups, report.last_backup, report.last_wal,
                         report.head_timeline, report.size, report.timelines,
                         len(report.retention.shortfalls) if report.retention.configured else None)]
    return [_Figures({"repository": each.name}, each.backups, each.unfinished_backups, each.last_backup,
                     each.last_wal, each.head_timeline, each.size, each.timelines, each.retention_shortfalls)
            for each in report.repositories if each.size is not None]


def _repository_metrics(exposition: _Exposition, repositories: list[RepositoryStatus]) -> None:
    """With several repositories: each one's state, what it misses of the reference's, and
    what waits in an optional one's spool (where status could read it)."""
    family = exposition.family
    up = family("repository_up", "gauge", "Whether the repository could be read.")
    level = family("repository_status", "gauge", "Each repository's status: 0 OK, 1 WARN, 2 FAIL.")
    required = family("repository_required", "gauge", "1 for a required repository, 0 for an optional one.")
    missing_wal = family("repository_missing_wal_files", "gauge",
                         "WAL files the reference repository holds that this one lacks.")
    missing_backups = family("repository_missing_backups", "gauge",
                             "Backups the reference repository holds that this one lacks.")
    spooled = family("repository_spool_files", "gauge", "WAL files waiting in an optional repository's local spool.")
    spooled_bytes = family("repository_spool_bytes", "gauge",
                           "Bytes of WAL waiting in an optional repository's local spool.")
    overflowed = family("repository_spool_behind", "gauge",
                        "1 once an optional repository's spool reached spool_max: what it lacks is copied from a "
                        "required repository.")
    for each in repositories:
        if each.spool is not None and each.spool.files_waiting is not None:
            spooled.add(each.spool.files_waiting, repository=each.name)
            spooled_bytes.add(each.spool.bytes_waiting, repository=each.name)
            overflowed.add(float(bool(each.spool.behind)), repository=each.name)
        up.add(float(each.reachable), repository=each.name)
        level.add(_LEVEL_VALUE[each.level], repository=each.name)
        required.add(float(each.required), repository=each.name)
        if each.missing is not None:
            missing_wal.add(each.missing.wal_files, repository=each.name)
            missing_backups.add(len(each.missing.backups), repository=each.name)


def _daemon_metrics(exposition: _Exposition, daemon: DaemonFacts) -> None:
    family = exposition.family
    family("daemon_start_timestamp_seconds", "gauge", "When the daemon started.").add(_stamp(daemon.started_at))
    family("daemon_next_backup_timestamp_seconds", "gauge", "When the next scheduled backup starts.").add(
        _stamp(daemon.next_backup_at))
    family("daemon_next_backup_incremental", "gauge",
           "The next scheduled backup (or the running one) is expected to be incremental (1) or full (0).").add(
        None if daemon.next_backup_kind is None else float(daemon.next_backup_kind == "incremental"))
    family("daemon_backup_running", "gauge", "A scheduled backup is running now.").add(float(daemon.backup_running))
    family("daemon_backups_total", "counter", "Scheduled backups finished since the daemon started.").add(
        daemon.backups_taken)
    family("daemon_backup_failures_total", "counter", "Scheduled backups failed since the daemon started.").add(
        daemon.backup_failures)
    run = daemon.last_run
    if run is not None:
        family("daemon_last_backup_success", "gauge", "The last scheduled backup succeeded (1) or failed (0).") \
            .add(float(run.ok))
        family("daemon_last_backup_end_timestamp_seconds", "gauge", "When the last scheduled backup ended.").add(
            _stamp(run.finished_at))
        family("daemon_last_backup_duration_seconds", "gauge", "How long the last scheduled backup ran.").add(
            (run.finished_at - run.started_at).total_seconds())
    if daemon.sidecar is not None:
        family("daemon_sidecar_running", "gauge", "The streaming sidecar runs (1) or is being restarted (0).").add(
            float(daemon.sidecar == "running"))
        family("daemon_sidecar_restarts_total", "counter", "Times the daemon restarted the sidecar.").add(
            daemon.sidecar_restarts)
    family("daemon_retention_runs_total", "counter", "Retention runs since the daemon started.").add(
        daemon.retention_runs)
    if daemon.drill_schedule is not None:
        family("daemon_drill_running", "gauge", "A scheduled restore drill is running now.").add(
            float(daemon.drill_running))
        family("daemon_next_drill_timestamp_seconds", "gauge", "When the next scheduled restore drill starts.").add(
            _stamp(daemon.next_drill_at))
        family("daemon_drills_total", "counter", "Scheduled restore drills ended since the daemon started.").add(
            daemon.drills_run)
        family("daemon_drill_failures_total", "counter", "Scheduled restore drills failed since the daemon "
               "started.").add(daemon.drill_failures)
    family("daemon_retention_failures_total", "counter", "Failed retention runs since the daemon started.").add(
        daemon.retention_failures)

"""What `pitrkit daemon` serves: the status report (ops/status.py) and the daemon's own facts,
as a self-refreshing HTML page (/) and as Prometheus metrics (/metrics).

Both are pure renderers of typed values: the daemon collects, these only format, so a
page or a scrape never touches the archive. The page carries everything inline (no
scripts, no external assets: it is served from loopback to whoever is looking) and
escapes every value it shows, archive keys and error messages included.

Metrics follow the text exposition format 0.0.4: `pitrkit_` prefix, base units in the
names (`_seconds`, `_bytes`, `_timestamp_seconds`), counters ending in `_total`, and a
sample left out (not zero) when its value is unknown, so that an absent server does not
look like one that archived nothing.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import datetime

import msgspec

from pitrkit.ops.status import ArchivedFile, Level, StatusReport
from pitrkit.postgres.wal import Lsn
from pitrkit.progress import human_bytes, human_count, human_seconds, show_time

_LEVEL_VALUE: dict[Level, int] = {"OK": 0, "WARN": 1, "FAIL": 2}


class ScheduledRun(msgspec.Struct, kw_only=True, frozen=True):
    """One backup the daemon's schedule started."""

    started_at: datetime
    finished_at: datetime
    ok: bool
    backup_id: str | None  # None when it failed before a manifest was stored
    message: str


class DaemonFacts(msgspec.Struct, kw_only=True, frozen=True):
    """What only the running daemon knows, filled in by it for each render."""

    started_at: datetime
    schedule: str | None  # "every 6h", "cron 30 2 * * *"; None: no scheduled backups
    next_backup_at: datetime | None
    backup_running: bool
    last_run: ScheduledRun | None
    backups_taken: int
    backup_failures: int
    sidecar: str | None  # "running" | "restarting"; None: not configured
    sidecar_restarts: int
    retention_runs: int
    retention_failures: int


# --- Prometheus -------------------------------------------------------------------------


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

    family("backups", "gauge", "Finished backups in the archive.").add(report.backups)
    family("unfinished_backups", "gauge", "Backup folders without a manifest (running or interrupted).").add(
        len(report.unfinished_backups))
    last = report.last_backup
    if last is not None:
        family("last_backup_timestamp_seconds", "gauge", "When the newest backup became usable (its stop time).") \
            .add(_stamp(last.stop_time))
        family("last_backup_age_seconds", "gauge", "Seconds since the newest backup's stop time.").add(
            last.age_seconds)
        family("last_backup_duration_seconds", "gauge", "How long the newest backup took.").add(last.duration_seconds)
        family("last_backup_size_bytes", "gauge", "Bytes of the files in the newest backup.").add(last.size_bytes)
        family("last_backup_stored_bytes", "gauge", "Bytes the newest backup occupies in the archive.").add(
            last.stored_bytes)

    _file_metrics(exposition, "last_wal_archived", "the newest full WAL segment in the archive", report.last_wal)
    receiver = report.receiver
    _file_metrics(exposition, "last_wal_received", "the newest .partial segment the streaming sidecar shipped",
                  receiver.newest_partial)
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
    family("head_timeline", "gauge", "The timeline status judges: the server's, else the archive's newest.").add(
        report.head_timeline)

    size = report.size
    family("wal_files", "gauge", "Files under wal/ (segments, partials, .backup and history files).").add(
        size.wal_files)
    family("wal_segments", "gauge", "Full WAL segments in the archive.").add(size.wal_segments)
    family("wal_stored_bytes", "gauge", "Bytes the WAL occupies in the archive.").add(size.wal_stored_bytes)
    family("wal_original_bytes", "gauge", "Full segments times the segment size.").add(size.wal_original_bytes)
    family("backups_stored_bytes", "gauge", "Bytes the backups occupy in the archive.").add(
        size.backups_stored_bytes)
    family("backups_size_bytes", "gauge", "Bytes of the files the backups hold.").add(size.backups_size_bytes)

    oldest = family("restorable_oldest_timestamp_seconds", "gauge", "The oldest restorable instant per timeline.")
    newest_lsn = family("restorable_newest_lsn_bytes", "gauge", "The newest restorable WAL position per timeline.")
    newest_at = family("restorable_newest_timestamp_seconds", "gauge",
                       "When the newest restorable WAL per timeline was stored.")
    gaps = family("wal_gaps", "gauge", "Missing segments after a backup, per timeline.")
    branch = family("timeline_branch", "gauge", "1 for a timeline off the server's history (a restored copy's), "
                    "else 0.")
    for timeline in report.timelines:
        label = str(timeline.timeline)
        oldest.add(_stamp(timeline.oldest.time) if timeline.oldest else None, timeline=label)
        newest_lsn.add(_lsn(timeline.newest.lsn) if timeline.newest else None, timeline=label)
        newest_at.add(_stamp(timeline.newest.stored_at) if timeline.newest else None, timeline=label)
        gaps.add(len(timeline.gaps), timeline=label)
        branch.add(float(timeline.branch), timeline=label)
    family("retention_shortfalls", "gauge", "Retention promises the archive does not keep.").add(
        len(report.retention.shortfalls) if report.retention.configured else None)
    family("retention_deleting_backups", "gauge", "Backups retention is removing.").add(
        len(report.retention.deleting))

    if daemon is not None:
        _daemon_metrics(exposition, daemon)
    return exposition.text()


def _file_metrics(exposition: _Exposition, name: str, what: str, file: ArchivedFile | None) -> None:
    if file is None:
        return
    family = exposition.family
    family(f"{name}_timestamp_seconds", "gauge", f"When {what} was stored.").add(_stamp(file.stored_at))
    family(f"{name}_age_seconds", "gauge", f"Seconds since {what} was stored.").add(file.age_seconds)
    family(f"{name}_end_lsn_bytes", "gauge", f"The WAL position where {what} ends.").add(_lsn(file.end_lsn))
    family(f"{name}_timeline", "gauge", f"The timeline of {what}.").add(file.timeline)


def _daemon_metrics(exposition: _Exposition, daemon: DaemonFacts) -> None:
    family = exposition.family
    family("daemon_start_timestamp_seconds", "gauge", "When the daemon started.").add(_stamp(daemon.started_at))
    family("daemon_next_backup_timestamp_seconds", "gauge", "When the next scheduled backup starts.").add(
        _stamp(daemon.next_backup_at))
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
    family("daemon_retention_failures_total", "counter", "Failed retention runs since the daemon started.").add(
        daemon.retention_failures)


# --- the page -----------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em .2em 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #555; white-space: nowrap; }
.level { font-weight: 700; padding: 0 .4em; border-radius: 3px; color: #fff; }
.OK { background: #2e7d32; } .WARN { background: #ef6c00; } .FAIL { background: #c62828; }
.muted { color: #777; }
"""


def _cell(value: object) -> str:
    return html.escape(str(value), quote=True)


def _level(level: Level) -> str:
    return f'<span class="level {level}">{level}</span>'


def _rows(rows: list[tuple[str, str]], table_id: str) -> str:
    """A two-column table; values are escaped by the caller (they may hold markup)."""
    body = "".join(f"<tr><th>{_cell(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table id="{table_id}">{body}</table>'


def _ago(seconds: float | None) -> str:
    return "" if seconds is None else f" ({human_seconds(seconds)} ago)"


def _file_rows(file: ArchivedFile | None) -> list[tuple[str, str]]:
    if file is None:
        return [("file", '<span class="muted">none</span>')]
    return [("file", _cell(file.name)), ("timeline", _cell(file.timeline)), ("ends at", _cell(file.end_lsn)),
            ("stored", _cell(show_time(file.stored_at) + _ago(file.age_seconds)))]


def html_page(report: StatusReport, daemon: DaemonFacts | None, refresh_seconds: float) -> str:
    refresh = max(1, round(refresh_seconds))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        f"<title>pitrkit {report.overall}</title><style>{_STYLE}</style></head><body>",
        f'<h1 id="overall">{_level(report.overall)} pitrkit status</h1>',
        f'<p class="muted">{_cell(report.archive)} &middot; collected {_cell(show_time(report.generated_at))} '
        f"&middot; refreshes every {refresh}s</p>",
        '<table id="checks">'
        + "".join(f"<tr><td>{_level(check.level)}</td><th>{_cell(check.name)}</th><td>{_cell(check.message)}</td>"
                  "</tr>" for check in report.checks)
        + "</table>",
    ]
    last = report.last_backup
    parts.append("<h2>Last backup</h2>")
    parts.append(_rows([
        ("backup", _cell(last.backup_id)), ("label", _cell(last.label)), ("timeline", _cell(last.timeline)),
        ("stopped", _cell(show_time(last.stop_time) + _ago(last.age_seconds))), ("stop LSN", _cell(last.stop_lsn)),
        ("took", _cell(human_seconds(last.duration_seconds))), ("size", _cell(human_bytes(last.size_bytes))),
        ("stored", _cell(human_bytes(last.stored_bytes))),
        ("backups", _cell(report.backups)),
    ] if last else [("backup", '<span class="muted">none</span>')], "last-backup"))
    parts.append("<h2>Last WAL archived</h2>")
    parts.append(_rows(_file_rows(report.last_wal), "last-wal"))
    receiver = report.receiver
    parts.append("<h2>Last WAL received (streaming)</h2>")
    received = _file_rows(receiver.newest_partial)
    if receiver.observed_at is not None:
        received += [
            ("sidecar", _cell(f"{'running' if receiver.running else 'stopped'} as of "
                              f"{show_time(receiver.observed_at)}")),
            ("received to", _cell(receiver.last_received_lsn or "-")),
            ("lag", _cell("-" if receiver.lag_bytes is None else human_bytes(receiver.lag_bytes))),
        ]
    elif receiver.state_problem:
        received.append(("sidecar", f'<span class="muted">{_cell(receiver.state_problem)}</span>'))
    parts.append(_rows(received, "last-received"))
    archiver = report.archiver
    parts.append("<h2>Server archiver (pg_stat_archiver)</h2>")
    parts.append(_rows([
        ("archived", _cell(f"{archiver.archived_count}, last {archiver.last_archived_wal or '-'} "
                           f"{show_time(archiver.last_archived_time)}")),
        ("failed", _cell(f"{archiver.failed_count}, last {archiver.last_failed_wal or '-'} "
                         f"{show_time(archiver.last_failed_time)}")),
        ("timeline", _cell("-" if archiver.timeline is None else archiver.timeline)),
    ] if archiver.reachable else [("server", f'<span class="muted">not asked: {_cell(archiver.problem)}</span>')],
        "archiver"))
    size = report.size
    parts.append("<h2>Archive size</h2>")
    parts.append(_rows([
        ("WAL", _cell(f"{human_bytes(size.wal_stored_bytes)} stored of {human_bytes(size.wal_original_bytes)} "
                      f"({size.wal_segments} segments, {size.wal_files} files)")),
        ("backups", _cell(f"{human_bytes(size.backups_stored_bytes)} stored of "
                          f"{human_bytes(size.backups_size_bytes)} ({size.backups} "
                          f"backup{'' if size.backups == 1 else 's'})")),
    ], "size"))
    parts.append("<h2>Restorable</h2>")
    rows = []
    for timeline in report.timelines:
        if timeline.oldest is None or timeline.newest is None:
            span = '<span class="muted">no usable backup on its path</span>'
        else:
            span = _cell(f"from {show_time(timeline.oldest.time)} (backup {timeline.oldest.backup_id}) to LSN "
                         f"{timeline.newest.lsn} ({timeline.newest.segment}, stored "
                         f"{show_time(timeline.newest.stored_at)})")
        span += "".join(_cell(f"; gap: {gap.missing_segment} missing after backup {gap.after_backup}, WAL resumes "
                              f"at {gap.resumes_at or '(nothing)'}") for gap in timeline.gaps)
        if timeline.branch:
            span += " <strong>branch</strong>: not the server&#x27;s history"
        elif timeline.timeline == report.head_timeline and archiver.timeline is not None:
            span += " <strong>the server&#x27;s</strong>: judged"
        rows.append((f"timeline {timeline.timeline}", span))
    parts.append(_rows(rows or [("timelines", '<span class="muted">no WAL</span>')], "restorable"))
    retention = report.retention
    parts.append("<h2>Retention</h2>")
    parts.append(_rows([
        ("policy", _cell(retention.policy) if retention.configured else
         '<span class="muted">none configured</span>'),
        ("being removed", _cell(", ".join(retention.deleting) or "-")),
        ("last run", _cell("-" if retention.last_run is None else
                           f"{show_time(retention.last_run.finished_at)}: "
                           f"{human_count(len(retention.last_run.backups_removed), 'backup')}, "
                           f"{human_count(retention.last_run.wal_files_removed, 'WAL file')}, "
                           f"{human_bytes(retention.last_run.bytes_freed)} freed")),
    ], "retention"))
    if daemon is not None:
        parts.append("<h2>Daemon</h2>")
        run = daemon.last_run
        parts.append(_rows([
            ("started", _cell(show_time(daemon.started_at))),
            ("schedule", _cell(daemon.schedule or "no scheduled backups")),
            ("next backup", _cell("running now" if daemon.backup_running else show_time(daemon.next_backup_at))),
            ("last run", _cell("-" if run is None else
                               f"{'ok' if run.ok else 'FAILED'} {show_time(run.finished_at)}"
                               f"{' ' + run.backup_id if run.backup_id else ''}: {run.message}")),
            ("backups", _cell(f"{daemon.backups_taken} taken, {daemon.backup_failures} failed")),
            ("sidecar", _cell("not configured" if daemon.sidecar is None else
                              f"{daemon.sidecar}, {daemon.sidecar_restarts} restarts")),
            ("retention", _cell(f"{daemon.retention_runs} runs, {daemon.retention_failures} failed")),
        ], "daemon"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

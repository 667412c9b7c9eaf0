"""The daemon's page (/): the status report (ops/status.py) and the daemon's own facts
(ops/daemon_facts.py) as a self-refreshing HTML page: the checks, the pictures
(views/svg.py) that show at a glance what the tables below say in figures.

A pure renderer of typed values: the daemon collects, this only formats, so a page view
never touches the archive. The page carries everything inline (no scripts, no external
assets: it is served from loopback to whoever is looking) and escapes every value it
shows, archive keys and error messages included.
"""

from __future__ import annotations

import html

from pitrkit.ops.daemon_facts import DaemonFacts
from pitrkit.ops.status import ArchivedFile, DrillHealth, DrillResult, Level, StatusReport, StoredShare
from pitrkit.progress import human_bytes, human_count, human_seconds, show_time
from pitrkit.views.svg import backup_sizes_svg, drills_svg, timelines_svg, wal_per_hour_svg

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em .2em 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #555; white-space: nowrap; }
.level { font-weight: 700; padding: 0 .4em; border-radius: 3px; color: #fff; }
.OK { background: #2e7d32; } .WARN { background: #ef6c00; } .FAIL { background: #c62828; }
.muted { color: #777; }
svg { max-width: 100%; height: auto; display: block; margin: .4em 0 1em; }
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


def _share_words(share: StoredShare) -> str:
    kind = "full" if share.backup_type == "full" else f"incremental, chain of {share.chain_length}"
    ratio = "" if share.stored_share is None else f" ({share.stored_share * 100:.3g}% of its size)"
    return f"{kind}: {human_bytes(share.stored_bytes)} stored of {human_bytes(share.size_bytes)}{ratio}"


def _drill_cell(drill: DrillResult | None) -> str:
    if drill is None:
        return '<span class="muted">none</span>'
    rto = f", RTO {human_seconds(drill.rto_seconds)}" if drill.rto_seconds is not None else ""
    return _cell(f"{drill.drill_id} {drill.result} {show_time(drill.finished_at)} (backup {drill.backup_id or '-'}"
                 f"{rto})" + (f": {drill.reason}" if drill.reason else ""))


def _drill_rows(drills: DrillHealth, daemon: DaemonFacts | None) -> str:
    """The last drills in words, and when the next runs: the daemon's schedule when it
    serves this page, else what [drill] configures."""
    rows = [("last drill", _drill_cell(drills.last)), ("last passed", _drill_cell(drills.last_success)),
            ("max age", _cell(drills.max_age))]
    if daemon is not None and daemon.drill_schedule is not None:
        rows += [("schedule", _cell(daemon.drill_schedule)),
                 ("next drill", _cell("running now" if daemon.drill_running else show_time(daemon.next_drill_at))),
                 ("scheduled drills", _cell(f"{daemon.drills_run} ended, {daemon.drill_failures} failed "
                                            "since the daemon started"))]
    else:
        rows.append(("schedule", _cell(f"every {drills.every}") if drills.every else
                     '<span class="muted">by hand only ([drill] every is not set)</span>'))
    return _rows(rows, "drills")


def _repository_rows(report: StatusReport) -> list[str]:
    """With several repositories, each one's level, role and place; the rest of the page is
    the reference's."""
    if not report.repositories:
        return []
    rows = []
    for each in report.repositories:
        words = f"{'required' if each.required else 'optional'}, {each.url}"
        if each.reference:
            words += " (the reference: the figures below are its own)"
        if each.spool is not None:
            words += f"; spool {each.spool.directory}, at most {human_bytes(each.spool.max_bytes)}"
        rows.append((each.name, f"{_level(each.level)} {_cell(words)}"))
    return ["<h2>Repositories</h2>", _rows(rows, "repositories")]


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
        *_repository_rows(report),
        '<h2>Timelines: restorable range, backups, gaps</h2>',
        timelines_svg(report),
        "<h2>WAL archived per hour</h2>",
        wal_per_hour_svg(report),
        "<h2>Backup sizes</h2>",
        backup_sizes_svg(report),
    ]
    if report.drills is not None:
        parts += ["<h2>Restore drills</h2>", drills_svg(report), _drill_rows(report.drills, daemon)]
    last = report.last_backup
    parts.append("<h2>Last backup</h2>")
    parts.append(_rows([
        ("backup", _cell(last.backup_id)), ("label", _cell(last.label)), ("timeline", _cell(last.timeline)),
        ("stopped", _cell(show_time(last.stop_time) + _ago(last.age_seconds))), ("stop LSN", _cell(last.stop_lsn)),
        ("took", _cell(human_seconds(last.duration_seconds))), ("size", _cell(human_bytes(last.size_bytes))),
        ("stored", _cell(human_bytes(last.stored_bytes))),
        ("type", _cell("full" if last.parent is None else
                       f"incremental on {last.parent}, a chain of {last.chain_length} backups")),
        ("backups", _cell(report.backups)),
    ] if last else [("backup", '<span class="muted">none</span>')], "last-backup"))
    if report.stored_shares:
        parts.append("<h2>Stored share per backup</h2>")
        parts.append(_rows([(each.backup_id, _cell(_share_words(each))) for each in report.stored_shares],
                           "stored-shares"))
    parts.append("<h2>Last WAL archived</h2>")
    parts.append(_rows(_file_rows(report.last_wal), "last-wal"))
    receiver = report.receiver
    parts.append("<h2>Last WAL received (streaming)</h2>")
    received = _file_rows(receiver.newest_partial)
    if receiver.observed_at is not None:
        received += [
            ("sidecar", _cell(f"{'running' if receiver.running else 'stopped'} as of "
                              f"{show_time(receiver.observed_at)}")),
            ("following", _cell("-" if receiver.following is None
                                else f"{receiver.following}, timeline {receiver.timeline}")),
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
            ("next backup", _cell(("running now" if daemon.backup_running else show_time(daemon.next_backup_at))
                                  + (f" ({daemon.next_backup_kind})" if daemon.next_backup_kind else ""))),
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

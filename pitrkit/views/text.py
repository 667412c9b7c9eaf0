"""What the commands print: each report as text (`render`), and the one line that ends
its command (`summary`): the log's line, and the error line on stderr when the report
fails the command (its `exit_code`).

One section per report; `render` and `summary` pick the section by the report's type.
"""

from __future__ import annotations

from functools import singledispatch

import msgspec

from pitrkit.catalog.chains import chain_length
from pitrkit.catalog.contents import BackupListing, WalListing, WalRow
from pitrkit.catalog.documents import BackupSummary, shown
from pitrkit.ops.per_repository import PerRepository
from pitrkit.ops.retention import RetentionReport
from pitrkit.ops.status import (
    ArchivedFile,
    DrillResult,
    MissingFromReference,
    RepositoryStatus,
    StatusReport,
    StoredShare,
    TimelineRange,
)
from pitrkit.ops.verify import VerifyReport
from pitrkit.postgres.wal import Lsn
from pitrkit.progress import human_bytes, human_count, human_seconds, show_time


@singledispatch
def render(report: msgspec.Struct) -> str:
    """The report as its command prints it, ending in a newline."""
    raise TypeError(f"no text rendering of a {type(report).__name__}")


@singledispatch
def summary(report: msgspec.Struct) -> str:
    """One line on how the report's command ended."""
    raise TypeError(f"no summary of a {type(report).__name__}")


# --- status -----------------------------------------------------------------------------


@render.register
def status_text(report: StatusReport) -> str:
    """The overall level and every check, then the figures behind them."""
    # After a `pitrkit upgrade`: the era judged, the newest (the earlier ones only age).
    era = "" if report.era == 1 else f", era {report.era}"
    lines = [f"{report.overall}  {report.archive}{era} at {show_time(report.generated_at)}", ""]
    lines += [f"{check.level:<4}  {check.name:<10}  {check.message}" for check in report.checks]
    lines.append("")
    if report.last_backup:
        b = report.last_backup
        lines.append(f"last backup:    {b.backup_id} '{b.label}', stopped {show_time(b.stop_time)} "
                     f"({human_seconds(b.age_seconds)} ago) at {b.stop_lsn} on timeline {b.timeline}; "
                     f"{human_bytes(b.size_bytes)}, {human_bytes(b.stored_bytes)} stored, took "
                     f"{human_seconds(b.duration_seconds)}")
        if b.parent is not None:
            lines.append(f"chain:          incremental on {b.parent}, a chain of {b.chain_length} backups")
    lines.append(f"backups:        {report.backups}" + (f", unfinished: {', '.join(report.unfinished_backups)}"
                                                       if report.unfinished_backups else ""))
    if report.stored_shares:
        lines.append(f"stored share:   {_shares(report)}")
    if report.last_wal:
        lines.append(f"last WAL:       {_file_words(report.last_wal)}")
    if report.receiver.newest_partial:
        lines.append(f"last received:  {_file_words(report.receiver.newest_partial)}")
    if report.receiver.observed_at is not None:
        r = report.receiver
        lines.append(f"sidecar:        {'running' if r.running else 'stopped'} as of {show_time(r.observed_at)}, "
                     f"received to {r.last_received_lsn}, archived to {r.last_archived_lsn}, lag "
                     f"{'-' if r.lag_bytes is None else human_bytes(r.lag_bytes)}"
                     + (f", following {r.following} (timeline {r.timeline})" if r.following else ""))
    a = report.archiver
    if a.reachable:
        lines.append(f"archiver:       {a.archived_count} archived (last {a.last_archived_wal or '-'} "
                     f"{show_time(a.last_archived_time)}), {a.failed_count} failed (last {a.last_failed_wal or '-'} "
                     f"{show_time(a.last_failed_time)})")
    else:
        lines.append(f"archiver:       not asked: {a.problem}")
    if a.timeline is not None:
        lines.append(f"server:         on timeline {a.timeline}")
    s = report.size
    lines.append(f"WAL size:       {s.wal_files} files, {human_bytes(s.wal_stored_bytes)} stored of "
                 f"{human_bytes(s.wal_original_bytes)} ({s.wal_segments} segments)")
    lines.append(f"backups size:   {human_bytes(s.backups_stored_bytes)} stored of {human_bytes(s.backups_size_bytes)}")
    for t in report.timelines:
        span = "no usable backup on its path" if t.oldest is None or t.newest is None else (
            f"from {show_time(t.oldest.time)} (LSN {t.oldest.lsn}, backup {t.oldest.backup_id}) to LSN {t.newest.lsn} "
            f"({t.newest.segment}, stored {show_time(t.newest.stored_at)})")
        lines.append(f"timeline {t.timeline}:".ljust(16) + span + _role(t, report))
        lines += [f"  gap:          {g.missing_segment} missing after backup {g.after_backup}; "
                  + (f"WAL resumes at {g.resumes_at}" if g.resumes_at else "no WAL after it") for g in t.gaps]
    retention = report.retention
    if retention.configured:
        lines.append(f"retention:      {retention.policy}"
                     + (f"; removing {', '.join(retention.deleting)}" if retention.deleting else ""))
    if retention.last_run:
        run = retention.last_run
        lines.append(f"last retention: {show_time(run.finished_at)}, removed "
                     f"{human_count(len(run.backups_removed), 'backup')} and "
                     f"{human_count(run.wal_files_removed, 'WAL file')}, {human_bytes(run.bytes_freed)} freed")
    if report.drills is not None:
        lines.append(f"last drill:     {_drill_words(report.drills.last)}")
        if report.drills.last_success is not report.drills.last and report.drills.last_success is not None:
            lines.append(f"last passed:    {_drill_words(report.drills.last_success)}")
    lines += [_repository_words(each) for each in report.repositories]
    return "\n".join(lines) + "\n"


def _repository_words(state: RepositoryStatus) -> str:
    """A repository's place and role (its check says how it is); the figures above are the
    reference's."""
    words = f"{state.level} {'required' if state.required else 'optional'}, {state.url}"
    if state.reference:
        words += "; the figures above are its own"
    if state.spool is not None:
        words += f"; spool {state.spool.directory} (at most {human_bytes(state.spool.max_bytes)})"
        if state.spool.files_waiting is not None and state.spool.bytes_waiting is not None:
            words += (f", {human_count(state.spool.files_waiting, 'file')} waiting "
                      f"({human_bytes(state.spool.bytes_waiting)})" + (", full: behind" if state.spool.behind else ""))
    return f"repository {state.name}:".ljust(16) + " " + words


def _drill_words(drill: DrillResult | None) -> str:
    if drill is None:
        return "none yet"
    rto = f", RTO {human_seconds(drill.rto_seconds)}" if drill.rto_seconds is not None else ""
    why = f": {drill.reason}" if drill.reason else ""
    return f"{drill.drill_id} {drill.result} {show_time(drill.finished_at)} (backup {drill.backup_id or '-'}{rto}){why}"


# The newest backups whose stored share the text shows; the JSON has every one.
_SHARES_SHOWN = 8


def _shares(report: StatusReport) -> str:
    """What each of the newest backups really stored, of its size: "A 41%, B (incr) 2.5%"."""
    def share(each: StoredShare) -> str:
        kind = " (incr)" if each.backup_type == "incremental" else ""
        value = "-" if each.stored_share is None else f"{each.stored_share * 100:.3g}%"
        return f"{each.backup_id}{kind} {value}"

    shown = report.stored_shares[-_SHARES_SHOWN:]
    more = len(report.stored_shares) - len(shown)
    return (f"({more} older) ... " if more else "") + ", ".join(map(share, shown)) + " of their size"


def _role(timeline: TimelineRange, report: StatusReport) -> str:
    """What a timeline is to the server: judged (the head), or a branch off its history."""
    if timeline.branch:
        return " [branch: not the server's history]"
    if timeline.timeline == report.head_timeline and report.archiver.timeline is not None:
        return " [the server's: judged]"
    return ""


def _file_words(file: ArchivedFile) -> str:
    age = "" if file.age_seconds is None else f" ({human_seconds(file.age_seconds)} ago)"
    return f"{file.name} to {file.end_lsn}, stored {show_time(file.stored_at)}{age}"


@summary.register
def status_summary(report: StatusReport) -> str:
    """Every check at FAIL with its message, else the level and the checks that warn."""
    failing = [check for check in report.checks if check.level == "FAIL"]
    if failing:
        return "status FAIL: " + "; ".join(f"{check.name}: {check.message}" for check in failing)
    warnings = [check.name for check in report.checks if check.level == "WARN"]
    return f"status {report.overall}" + (f" ({', '.join(warnings)})" if warnings else "")


# --- verify -----------------------------------------------------------------------------


@render.register
def verify_text(report: VerifyReport) -> str:
    """One line per finding (severity, object, what is wrong), then what was checked."""
    lines = [f"{finding.severity.upper():<8}{finding.key}: {finding.problem}" for finding in report.findings]
    if lines:
        lines.append("")
    restorable = sum(verdict.restorable for verdict in report.backups)
    backups = f"backups:   {len(report.backups)} with a manifest, {restorable} restorable"
    if report.unfinished:
        backups += f"; unfinished (no manifest): {', '.join(report.unfinished)}"
    if report.being_removed:
        backups += f"; being removed by retention, not checked: {', '.join(report.being_removed)}"
    lines.append(backups)
    lines.append(f"WAL:       {human_count(report.wal_files, 'file')} stored")
    for checked in report.timelines:
        path = " -> ".join(map(str, checked.path))
        if checked.checked_from is None:
            lines.append(f"timeline {checked.timeline} (path {path}): no backup on its path; WAL not checked")
        else:
            lines.append(f"timeline {checked.timeline} (path {path}): WAL from {checked.checked_from} to "
                         f"{checked.checked_to or '(nothing)'}, {human_count(len(checked.gaps), 'gap')}")
    if report.deep:
        content = (f"content:   read {human_count(report.objects_read, 'object')}, {human_bytes(report.bytes_read)} "
                   "stored, each decoded and checked")
        if report.super_blocks:
            content += f"; {human_count(report.super_blocks, 'super-block')} checked against their block maps"
        lines.append(content)
    else:
        lines.append("content:   not read (--deep reads every object and checks its checksum)")
    lines += [f"note:      {note}" for note in report.notes]
    lines.append(f"verify:    {_outcome(report)}")
    return "\n".join(lines) + "\n"


@summary.register
def verify_summary(report: VerifyReport) -> str:
    """What was verified and the outcome, with the first finding when there is one."""
    said = (f"verified {report.archive}{' (deep)' if report.deep else ''}: "
            f"{human_count(len(report.backups), 'backup')}, {human_count(report.wal_files, 'WAL file')}: "
            f"{_outcome(report)}")
    if report.findings:
        first = report.findings[0]
        said += f"; first: {first.key}: {first.problem}"
    return said


def _outcome(report: VerifyReport) -> str:
    if not report.findings:
        return "clean"
    return f"{human_count(report.errors, 'error')}, {human_count(report.warnings, 'warning')}"


# --- retention --------------------------------------------------------------------------


@render.register
def retention_text(report: RetentionReport) -> str:
    """The decision as a person reads it: every backup kept and why, what goes and why,
    then its summary."""
    lines = [f"policy: {report.policy}"]
    for kept in report.kept:
        lines.append(f"keep    backup {kept.backup_id}{_link(kept.parent)}: {'; '.join(kept.reasons)}")
    for gone in report.removed_backups:
        noun = "backup" if gone.kind != "unfinished" else "folder"
        link = "" if gone.parent is None else f"incremental on {gone.parent}; "
        lines.append(f"remove  {noun} {gone.backup_id} ({link}{gone.objects} objects, "
                     f"{human_bytes(gone.stored_bytes)}): {gone.why}")
    for wal in report.removed_wal:
        files = wal.first if wal.files == 1 else f"{wal.first} .. {wal.last}, {wal.files} files"
        lines.append(f"remove  WAL {files} ({human_bytes(wal.stored_bytes)}): {wal.why}")
    for lease_id in report.expired_leases:
        lines.append(f"expired lease {shown(lease_id)}: ignored" + ("" if report.dry_run else ", removed"))
    lines += [f"note: {note}" for note in report.notes]
    lines.append(retention_summary(report))
    return "\n".join(lines) + "\n"


def _link(parent: str | None) -> str:
    """An incremental's place in its chain, after its id; nothing for a full backup."""
    return "" if parent is None else f" (incremental on {parent})"


@summary.register
def retention_summary(report: RetentionReport) -> str:
    """One line: what went (or would), and the stored bytes freed."""
    backups = [item.backup_id for item in report.removed_backups if item.kind != "unfinished"]
    unfinished = [item.backup_id for item in report.removed_backups if item.kind == "unfinished"]
    verb = "would remove" if report.dry_run else "removed"
    words = [f"{human_count(len(backups), 'backup')}" + (f" ({', '.join(backups)})" if backups else "")]
    if unfinished:
        words.append(f"{len(unfinished)} unfinished ({', '.join(unfinished)})")
    words.append(human_count(sum(item.files for item in report.removed_wal), "WAL file"))
    freed = "would free" if report.dry_run else "freed"
    return (f"retention{' dry run' if report.dry_run else ''}: {verb} {', '.join(words)}; kept "
            f"{human_count(len(report.kept), 'backup')}; {freed} {human_bytes(report.stored_bytes)} stored")


# --- backup-list and wal-list ---------------------------------------------------------


@render.register
def backup_list_text(listing: BackupListing) -> str:
    rows = [
        [b.backup_id, b.label, show_time(b.start_time), show_time(b.stop_time), str(b.start_lsn), str(b.stop_lsn),
         str(b.timeline), "full" if b.parent is None else "incr", b.parent or "-",
         str(chain_length(b)) + (" broken" if b.broken else ""), human_bytes(b.size), human_bytes(b.stored_size),
         human_bytes(b.chain_stored_size), str(b.pg_major), _configuration(b)]
        for b in listing.backups
    ]
    rows += [[backup_id, "(unfinished: no manifest)", *["-"] * 13] for backup_id in listing.unfinished]
    rows += [[backup_id, "(being removed by retention)", *["-"] * 13] for backup_id in listing.deleting]
    # STORED: the backup's own objects; CHAIN STORED: with its ancestors', what it needs.
    header = ["ID", "LABEL", "START", "STOP", "START LSN", "STOP LSN", "TL", "TYPE", "PARENT", "CHAIN", "SIZE",
              "STORED", "CHAIN STORED", "PG", "CONFIG"]
    if any(b.era != 1 for b in listing.backups):
        # After a `pitrkit upgrade`: which era (cluster) each backup is of.
        header.append("ERA")
        rows = [[*row, str(b.era)] for row, b in zip(rows, listing.backups, strict=False)] + \
            [[*row, "-"] for row in rows[len(listing.backups):]]
    table = _table(header, rows)
    # Why a chain is broken does not fit a column: a line each, under the table.
    table += "".join(f"\n{b.backup_id}: not restorable, its chain is broken: {b.broken}"
                     for b in listing.backups if b.broken)
    table += "".join(f"\n{b.backup_id}: a full backup backup-consolidate made of {b.consolidated_from}, at its point"
                     for b in listing.backups if b.consolidated_from is not None)
    return table + "\n"


@summary.register
def backup_list_summary(listing: BackupListing) -> str:
    return (f"listed {human_count(len(listing.backups), 'backup')}, {len(listing.unfinished)} unfinished, "
            f"{len(listing.deleting)} being removed")


@render.register
def wal_list_text(listing: WalListing) -> str:
    def lsn(value: Lsn | None) -> str:
        return "-" if value is None else str(value)

    def state(row: WalRow) -> str:
        said = "before the first backup" if row.state == "before-first-backup" else row.state
        return f"{said}, partial" if row.partial else said

    def commits(row: WalRow) -> str:
        # From the time index: "-" where a segment has none, "none" for no commit in it.
        if not row.indexed:
            return "-"
        if row.first_commit is None or row.last_commit is None:
            return "none"
        return f"{show_time(row.first_commit)} .. {show_time(row.last_commit)}"

    rows = listing.files
    eras = any(row.era != 1 for row in rows)  # after a `pitrkit upgrade`: which era each file is of
    table = _table(
        ["NAME", "TL", "START LSN", "END LSN", "STORED", "STORED AT", "BACKUP", "STATE", "COMMITS"]
        + (["ERA"] if eras else []),
        [[row.name, str(row.timeline), lsn(row.start_lsn), lsn(row.end_lsn), human_bytes(row.stored_size),
          show_time(row.stored_at), row.backup or "-", state(row), commits(row)] + ([str(row.era)] if eras else [])
         for row in rows],
    )
    if any(row.state == "before-first-backup" for row in rows):
        # A fresh archive: WAL with no backup yet is normal, and none of it is removed.
        table += ("\nno backup yet: this WAL is kept, but a restore needs a base backup to start from "
                  "(pitrkit backup-push)")
    return table + "\n"


@summary.register
def wal_list_summary(listing: WalListing) -> str:
    return f"listed {human_count(len(listing.files), 'WAL file')}"


def _configuration(backup: BackupSummary) -> str:
    """Where the backed-up server's configuration was: with the data directory, or how
    many files came from outside it (copied with the backup by backup/config_capture.py,
    written back by restore/server_config.py)."""
    if backup.configuration is None:
        return "-"
    files = backup.configuration.files
    return f"{len(files)} outside" if files else "in pgdata"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


# --- several repositories -------------------------------------------------------------


@render.register
def per_repository_text(report: PerRepository) -> str:
    """One section per repository: a heading, then its report as the command prints it
    alone (or why it was not made), then what it misses of the reference (verify)."""
    sections = []
    for each in report.repositories:
        lines = [f"== repository {each.repository} ({'required' if each.required else 'optional'}, {each.url}) =="]
        if each.report is not None:
            lines.append(render(each.report).rstrip("\n"))
        else:
            lines.append(f"FAILED: {each.problem}" if each.problem_exit_code else f"{each.problem}")
        if each.missing is not None:
            lines.append(f"missing:   {_missing_words(each.missing)}")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _missing_words(missing: MissingFromReference) -> str:
    if not missing.behind:
        return f"nothing of what {missing.compared_with} holds"
    lacks = []
    if missing.wal_files:
        lacks.append(f"{human_count(missing.wal_files, 'WAL file')} of {missing.compared_with} "
                     f"({missing.oldest_wal} .. {missing.newest_wal})")
    if missing.backups:
        lacks.append(f"backup{'' if len(missing.backups) == 1 else 's'} {', '.join(missing.backups)}")
    return " and ".join(lacks)


@summary.register
def per_repository_summary(report: PerRepository) -> str:
    """Each repository's own summary, or why the command did not run there."""
    return "; ".join(f"repository {each.repository}: "
                     + (summary(each.report) if each.report is not None else f"{each.problem}")
                     for each in report.repositories)

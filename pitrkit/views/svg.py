"""The status page's pictures (views/html.py embeds them): pure functions from the status
report (ops/status.py) to inline SVG.

Drawn on the server, with no script and no external asset, like the rest of the page.
Every text shown is escaped, and every mark carries a <title> (the browser's hover text)
that says in words what it is, so a picture names what it shows to whoever reads it
without eyes too. Each stays readable with no data (a line says so), with one item and
with hundreds: a label is written only where there is room beside the previous one; the
titles are always there. Times on the axes are UTC, as the captions say.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from pitrkit.ops.status import WAL_HOURS, BackupMark, DrillResult, Gap, StatusReport, TimelineRange
from pitrkit.progress import human_bytes, human_seconds

WIDTH = 880
_LEFT = 130  # room for the rows' labels
_RIGHT = 20
_PLOT = WIDTH - _LEFT - _RIGHT
_CHAR = 6.2  # pixels per character of an 11px label, about
_MIN_SPAN = timedelta(seconds=10)  # the narrowest span a time axis shows
_SIZES_WEEKS = 5  # the backup sizes chart's span

# Colours readable on white and told apart without relying on red/green alone: each
# kind of mark also has its own shape and a legend in words.
_RESTORABLE, _RESTORABLE_EDGE = "#a5d6a7", "#2e7d32"
_GAP, _LOST = "#c62828", "#ffcdd2"
_WINDOW = "#1565c0"
_FULL, _INCREMENTAL, _UNUSABLE = "#263238", "#ef6c00", "#9e9e9e"
_BAR, _STORED = "#90caf9", "#1565c0"
_AXIS, _TEXT = "#9e9e9e", "#333"
_PASSED, _FAILED = _RESTORABLE_EDGE, _GAP
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'

_STEPS = [timedelta(seconds=seconds) for seconds in (1, 2, 5, 10, 15, 30)] + [
    timedelta(minutes=minutes) for minutes in (1, 2, 5, 10, 15, 30)] + [
    timedelta(hours=hours) for hours in (1, 2, 3, 6, 12, 24, 48, 7 * 24, 14 * 24, 28 * 24, 91 * 24, 365 * 24)]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Scale:
    """Instants from `start` to `end` onto the plot's x pixels."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.end = end
        self.seconds = max((end - start).total_seconds(), 1.0)

    def x(self, moment: datetime) -> float:
        share = (moment - self.start).total_seconds() / self.seconds
        return round(_LEFT + _PLOT * min(max(share, 0.0), 1.0), 1)

    def ticks(self) -> Iterable[tuple[float, str]]:
        """About six round instants across the span, labelled by what changes between them."""
        step = next((each for each in _STEPS if self.seconds / each.total_seconds() <= 7), _STEPS[-1])
        first = self.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if step >= timedelta(days=1):
            first = first.replace(hour=0)
        # The first round instant of the step's grid (minutes divide an hour, hours a day).
        while first + step <= self.start:
            first += step
        moment = first
        while moment <= self.end:
            if moment >= self.start:
                label = moment.strftime("%H:%M:%S" if step < timedelta(minutes=1) else
                                        "%H:%M" if step < timedelta(days=1) else "%Y-%m-%d")
                if timedelta(minutes=1) <= step < timedelta(days=1) and (moment.hour == 0 or moment == first):
                    label = moment.strftime("%m-%d %H:%M")
                yield self.x(moment), label
            moment += step


def _svg(svg_id: str, height: int, title: str, body: list[str]) -> str:
    return (f'<svg id="{svg_id}" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" {_FONT}><title>{_esc(title)}</title>'
            + "".join(body) + "</svg>")


def _empty(svg_id: str, title: str, said: str) -> str:
    return _svg(svg_id, 30, title, [f'<text x="{_LEFT}" y="20" fill="{_TEXT}">{_esc(said)}</text>'])


def _text(x: float, y: float, said: str, *, anchor: str = "start", fill: str = _TEXT, css: str = "") -> str:
    extra = f' class="{css}"' if css else ""
    return f'<text x="{x}" y="{y}" text-anchor="{anchor}" fill="{fill}"{extra}>{_esc(said)}</text>'


def _axis(scale: _Scale, top: float, bottom: float) -> list[str]:
    parts = [f'<line x1="{_LEFT}" y1="{bottom}" x2="{_LEFT + _PLOT}" y2="{bottom}" stroke="{_AXIS}"/>']
    for x, label in scale.ticks():
        parts.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom + 4}" stroke="#eeeeee"/>')
        # A label at the right edge ends there rather than be cut off.
        fits = x + len(label) * _CHAR / 2 <= WIDTH - 2
        parts.append(_text(x if fits else WIDTH - 2, bottom + 15, label, anchor="middle" if fits else "end",
                           fill="#666"))
    return parts


def _bars_axes(report: StatusReport, instants: list[datetime], top: float, bottom: float, highest: str,
               unit: str = "") -> tuple[_Scale, float, list[str]]:
    """The axes of a chart with a bar at each of `instants`, up to the report's time: the
    scale of its time axis, the bars' width (narrower as they are more) and the axes drawn,
    the value axis from 0 at `bottom` to `highest` at `top`, named `unit`. A young
    archive's bars spread over the span they have, not over the chart's whole span."""
    now = report.generated_at
    first = min(min(instants), now - _MIN_SPAN)
    scale = _Scale(first - (now - first) * 0.04, now)
    width = min(max(_PLOT / len(instants) * 0.6, 2.0), 14.0)
    drawn = _axis(scale, top, bottom) + [_text(_LEFT - 6, top + 8, highest, anchor="end"),
                                         _text(_LEFT - 6, bottom, "0", anchor="end")]
    if unit:
        drawn.append(_text(8, top + 8, unit))
    return scale, width, drawn


class _Labels:
    """A row's labels placed left to right, each only if it does not run into the last,
    and kept inside the plot."""

    def __init__(self) -> None:
        self.right = -1e9

    def place(self, x: float, said: str, centred: bool = True) -> float | None:
        """The left edge for label `said` at `x` (centred on it, or starting there), or
        None when there is no room for it."""
        width = len(said) * _CHAR
        left = min(max(x - width / 2 if centred else x, float(_LEFT)), WIDTH - 4 - width)
        if left < self.right + 6:
            return None
        self.right = left + width
        return round(left, 1)


def _legend(y: float, items: list[tuple[str, str]]) -> list[str]:
    """Swatches (an SVG shape each) with their words, left to right."""
    parts, x = [], float(_LEFT)
    for shape, said in items:
        parts.append(shape.format(x=x, y=y - 9, cx=x + 5, cy=y - 4))
        parts.append(_text(x + 14, y, said))
        x += 24 + _CHAR * len(said)
    return parts


# --- the timelines --------------------------------------------------------------------------

_ROW = 64  # pixels per timeline


def timelines_svg(report: StatusReport) -> str:
    """One row per PostgreSQL timeline: its restorable range, each backup on it as a
    marker (a diamond for a full backup, a circle for an incremental, grey when its chain
    is broken), each gap with the points it loses, the retention window and now."""
    title = "Restorable range per timeline, backups, gaps and the retention window"
    if not report.timelines:
        return _empty("timelines-chart", title, "no WAL in the archive: no timeline to draw")
    end = report.generated_at
    window_start = report.retention.window_start
    moments = [end - _MIN_SPAN]
    moments += [row.oldest.time for row in report.timelines if row.oldest is not None]
    moments += [mark.start_time for mark in report.backup_marks]
    moments += [moment for row in report.timelines for gap in row.gaps
                for moment in (gap.before_stored_at, gap.resumes_stored_at) if moment is not None]
    if window_start is not None:
        moments.append(window_start)
    first = min(moments)
    scale = _Scale(first - (end - first) * 0.04, end + (end - first) * 0.02)
    top, rows = 22, len(report.timelines)
    bottom = top + rows * _ROW
    body = _axis(scale, top, bottom)
    if window_start is not None:
        x = scale.x(window_start)
        said = f"retention window from {_utc(window_start)} ({report.retention.policy})"
        body.append(f'<g class="retention-window"><title>{_esc(said)}</title>'
                    f'<rect x="{x}" y="{top}" width="{round(scale.x(end) - x, 1)}" height="{bottom - top}" '
                    f'fill="{_WINDOW}" fill-opacity="0.07" stroke="{_WINDOW}" stroke-dasharray="4 3"/>'
                    + _text(x + 3, top + 11, "retention window", fill=_WINDOW) + "</g>")
    marks: dict[int, list[BackupMark]] = {}
    for mark in report.backup_marks:
        marks.setdefault(mark.timeline, []).append(mark)
    for number, row in enumerate(report.timelines):
        body += _timeline_row(report, row, marks.get(row.timeline, []), scale, top + number * _ROW)
    now = scale.x(end)
    body.append(f'<line x1="{now}" y1="{top - 4}" x2="{now}" y2="{bottom}" stroke="{_TEXT}"><title>now: '
                f'{_esc(_utc(end))}</title></line>' + _text(now, top - 8, "now", anchor="end"))
    body += _legend(bottom + 40, [
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_RESTORABLE}" stroke="{_RESTORABLE_EDGE}"/>',
         "restorable"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_GAP}"/>', "gap (missing WAL)"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_LOST}"/>', "not restorable"),
        (f'<path d="M{{cx}} {{y}} l5 5 l-5 5 l-5 -5 z" fill="{_FULL}"/>', "full backup"),
        (f'<circle cx="{{cx}}" cy="{{cy}}" r="4.5" fill="white" stroke="{_INCREMENTAL}" stroke-width="2"/>',
         "incremental backup"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_WINDOW}" fill-opacity="0.15" '
         f'stroke="{_WINDOW}" stroke-dasharray="3 2"/>', "retention window"),
    ])
    return _svg("timelines-chart", bottom + 52, title, body)


def _timeline_row(report: StatusReport, row: TimelineRange, marks: list[BackupMark], scale: _Scale,
                  y: float) -> list[str]:
    middle = y + _ROW / 2
    said = f"timeline {row.timeline}"
    note = "branch" if row.branch else ("judged" if row.timeline == report.head_timeline else "")
    body = [f'<g class="timeline" data-timeline="{row.timeline}">',
            _text(8, middle - 2, said), _text(8, middle + 12, note, fill="#777") if note else "",
            f'<line x1="{_LEFT}" y1="{middle}" x2="{_LEFT + _PLOT}" y2="{middle}" stroke="#e0e0e0"/>']
    if row.oldest is not None:
        newest_at = row.newest.stored_at if row.newest and row.newest.stored_at else report.generated_at
        x1, x2 = scale.x(row.oldest.time), scale.x(newest_at)
        ends = f"LSN {row.newest.lsn} ({row.newest.segment})" if row.newest else "?"
        body.append(f'<rect class="restorable" x="{x1}" y="{middle - 7}" width="{max(x2 - x1, 2)}" height="14" '
                    f'fill="{_RESTORABLE}" stroke="{_RESTORABLE_EDGE}"><title>{_esc(said)} restorable from '
                    f'{_esc(_utc(row.oldest.time))} (backup {_esc(row.oldest.backup_id)}) to {_esc(ends)}'
                    f'{_esc(", stored " + _utc(newest_at)) if row.newest else ""}</title></rect>')
    else:
        body.append(_text(_LEFT + 4, middle - 10, "no usable backup on its path: nothing restores", fill=_GAP))
    labels = _Labels()
    for gap in row.gaps:
        body.append(_gap(report, gap, scale, middle))
        said = f"gap {gap.missing_segment}"
        if (left := labels.place(scale.x(gap.before_stored_at or report.generated_at), said, centred=False)) \
                is not None:
            body.append(_text(left, middle - 13, said, fill=_GAP, css="gap-label"))
    labels = _Labels()
    for mark in sorted(marks, key=lambda each: each.stop_time):
        body.append(_backup(mark, scale, middle))
        if (left := labels.place(scale.x(mark.stop_time), mark.backup_id)) is not None:
            body.append(_text(left, middle + 22, mark.backup_id, css="backup-label"))
    body.append("</g>")
    return body


def _gap(report: StatusReport, gap: Gap, scale: _Scale, middle: float) -> str:
    """The hole in the WAL (red, between the segments stored on either side), within the
    points it loses (light red, up to the stop of the next backup that restores)."""
    before = gap.before_stored_at or report.generated_at
    resumes = gap.resumes_stored_at or report.generated_at
    again = gap.restorable_again_at or report.generated_at
    x1, x2, x3 = scale.x(before), scale.x(resumes), scale.x(again)
    bounds = f"LSN {gap.missing_lsn}" + (f" to {gap.resumes_lsn}" if gap.resumes_lsn else " on")
    said = (f"gap: segment {gap.missing_segment} is missing ({bounds}) after backup {gap.after_backup}; "
            + (f"WAL resumes at {gap.resumes_at}" if gap.resumes_at else "no WAL after it")
            + f"; nothing restores from {_utc(before)} "
            + (f"to {_utc(gap.restorable_again_at)}" if gap.restorable_again_at else "on"))
    return (f'<g class="gap" data-segment="{_esc(gap.missing_segment)}"><title>{_esc(said)}</title>'
            f'<rect x="{x1}" y="{middle - 9}" width="{max(x3 - x1, 3)}" height="18" fill="{_LOST}"/>'
            f'<rect x="{x1}" y="{middle - 9}" width="{max(x2 - x1, 3)}" height="18" fill="{_GAP}"/></g>')


def _backup(mark: BackupMark, scale: _Scale, middle: float) -> str:
    x, start = scale.x(mark.stop_time), scale.x(mark.start_time)
    colour = _UNUSABLE if not mark.usable else (_FULL if mark.backup_type == "full" else _INCREMENTAL)
    said = (f"backup {mark.backup_id} ({mark.backup_type}{'' if mark.usable else ', chain broken: not usable'}): "
            f"{_utc(mark.start_time)} to {_utc(mark.stop_time)}, stop LSN {mark.stop_lsn}, "
            f"{human_bytes(mark.size_bytes)} of files, {human_bytes(mark.stored_bytes)} stored")
    if mark.backup_type == "full":
        shape = f'<path d="M{x} {middle - 7} l7 7 l-7 7 l-7 -7 z" fill="{colour}" stroke="white"/>'
    else:
        shape = f'<circle cx="{x}" cy="{middle}" r="5.5" fill="white" stroke="{colour}" stroke-width="2.5"/>'
    return (f'<g class="backup" data-backup="{_esc(mark.backup_id)}" data-type="{_esc(mark.backup_type)}">'
            f'<title>{_esc(said)}</title>'
            f'<line x1="{start}" y1="{middle}" x2="{x}" y2="{middle}" stroke="{colour}" stroke-width="3"/>'
            f"{shape}</g>")


# --- WAL per hour ---------------------------------------------------------------------------


def wal_per_hour_svg(report: StatusReport) -> str:
    """A bar per hour of the last week: the WAL segments that reached the archive in it."""
    title = f"WAL segments archived per hour, the last {WAL_HOURS // 24} days (UTC)"
    per = report.wal_per_hour
    if per is None:
        return _empty("wal-chart", title, "no WAL in the archive")
    counts = {round((hour.hour - per.since).total_seconds() / 3600): hour for hour in per.hours}
    highest = max((hour.segments for hour in per.hours), default=0)
    top, height = 14, 110
    bottom = top + height
    scale = _Scale(per.since, per.since + timedelta(hours=WAL_HOURS))
    body = _axis(scale, top, bottom)
    step = _PLOT / WAL_HOURS
    for number, hour in sorted(counts.items()):
        tall = max(round(height * hour.segments / max(highest, 1), 1), 1.0)
        said = (f"{_utc(hour.hour)}: {hour.segments} segment{'' if hour.segments == 1 else 's'}, "
                f"{human_bytes(hour.stored_bytes)} stored")
        body.append(f'<rect class="wal-hour" x="{round(_LEFT + number * step, 1)}" y="{bottom - tall}" '
                    f'width="{max(round(step - 0.5, 1), 1)}" height="{tall}" fill="{_STORED}">'
                    f"<title>{_esc(said)}</title></rect>")
    total = sum(hour.segments for hour in per.hours)
    body += [_text(_LEFT - 6, top + 8, str(highest), anchor="end"), _text(_LEFT - 6, bottom, "0", anchor="end"),
             _text(8, top + 8, "segments/hour"),
             _text(_LEFT, bottom + 32, f"{total} segment{'' if total == 1 else 's'} archived since "
                   f"{_utc(per.since)}" + ("" if total else ": none")),
             ]
    return _svg("wal-chart", bottom + 42, title, body)


# --- backup sizes ---------------------------------------------------------------------------


def backup_sizes_svg(report: StatusReport) -> str:
    """A bar per backup of the last weeks at its stop time: its files' size, and inside
    it what it stored (an incremental's changed blocks, a full's compressed files)."""
    title = f"Backup sizes, the last {_SIZES_WEEKS} weeks (UTC)"
    since = report.generated_at - timedelta(weeks=_SIZES_WEEKS)
    marks = [mark for mark in report.backup_marks if mark.stop_time >= since]
    if not marks:
        return _empty("sizes-chart", title, f"no backup in the last {_SIZES_WEEKS} weeks")
    highest = max(max(mark.size_bytes, mark.stored_bytes) for mark in marks) or 1
    top, height = 20, 110
    bottom = top + height
    scale, width, body = _bars_axes(report, [mark.stop_time for mark in marks], top, bottom, human_bytes(highest))
    labels = _Labels()
    for mark in sorted(marks, key=lambda each: each.stop_time):
        x = scale.x(mark.stop_time)
        size = max(round(height * mark.size_bytes / highest, 1), 1.0)
        stored = max(round(height * mark.stored_bytes / highest, 1), 1.0)
        said = (f"backup {mark.backup_id} ({mark.backup_type}), stopped {_utc(mark.stop_time)}: "
                f"{human_bytes(mark.size_bytes)} of files, {human_bytes(mark.stored_bytes)} stored")
        body.append(f'<g class="backup-size" data-backup="{_esc(mark.backup_id)}"><title>{_esc(said)}</title>'
                    f'<rect x="{round(x - width / 2, 1)}" y="{bottom - size}" width="{round(width, 1)}" '
                    f'height="{size}" fill="{_BAR}"/>'
                    f'<rect x="{round(x - width / 4, 1)}" y="{bottom - stored}" width="{round(width / 2, 1)}" '
                    f'height="{stored}" fill="{_STORED if mark.backup_type == "full" else _INCREMENTAL}"/></g>')
        if (left := labels.place(x, mark.backup_id)) is not None:
            body.append(_text(left, bottom - size - 3, mark.backup_id, css="backup-label"))
    body += _legend(bottom + 36, [
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_BAR}"/>', "files backed up"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_STORED}"/>', "stored (full)"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_INCREMENTAL}"/>', "stored (incremental)"),
    ])
    return _svg("sizes-chart", bottom + 46, title, body)


# --- restore drills -------------------------------------------------------------------------


def _rto_words(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 60 else human_seconds(seconds)


def drills_svg(report: StatusReport) -> str:
    """The last restore drills (ops/drill.py, newest few) at the time each ended: a bar as
    tall as its time to restore (RTO), green when it passed, red when it failed; a failed
    drill that never got its copy answering (no RTO) is a red cross on the axis. Each mark
    is labelled with its result and RTO where there is room, and its title names the drill,
    its backup, its RTO, the WAL it replayed and why it failed."""
    title = "Restore drills: time to restore (RTO) and result of the last drills (UTC)"
    drills = report.drills.recent if report.drills is not None else []
    if not drills:
        return _empty("drills-chart", title, "no restore drill has run yet")
    highest = max((drill.rto_seconds or 0.0 for drill in drills), default=0.0) or 1.0
    top, height = 26, 100
    bottom = top + height
    scale, width, body = _bars_axes(report, [drill.finished_at for drill in drills], top, bottom,
                                    _rto_words(highest), unit="RTO")
    labels = _Labels()
    for drill in sorted(drills, key=lambda each: each.finished_at):
        x = scale.x(drill.finished_at)
        colour = _PASSED if drill.result == "passed" else _FAILED
        if drill.rto_seconds is not None:
            tall = max(round(height * drill.rto_seconds / highest, 1), 1.0)
            shape = (f'<rect x="{round(x - width / 2, 1)}" y="{bottom - tall}" width="{round(width, 1)}" '
                     f'height="{tall}" fill="{colour}"/>')
        else:
            tall = 12.0
            shape = (f'<path d="M{x - 5} {bottom - 11} l10 10 m0 -10 l-10 10" stroke="{colour}" '
                     f'stroke-width="2.5"/>')
        body.append(f'<g class="drill" data-drill="{_esc(drill.drill_id)}" data-result="{drill.result}">'
                    f"<title>{_esc(_drill_said(drill))}</title>{shape}</g>")
        said = drill.result + ("" if drill.rto_seconds is None else f" {_rto_words(drill.rto_seconds)}")
        if (left := labels.place(x, said)) is not None:
            body.append(_text(left, bottom - tall - 3, said, fill=colour, css="drill-label"))
    body += _legend(bottom + 36, [
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_PASSED}"/>', "passed (height: RTO)"),
        (f'<rect x="{{x}}" y="{{y}}" width="10" height="10" fill="{_FAILED}"/>', "failed"),
        (f'<path d="M{{x}} {{y}} l10 10 m0 -10 l-10 10" stroke="{_FAILED}" stroke-width="2.5"/>',
         "failed before the copy answered (no RTO)"),
    ])
    return _svg("drills-chart", bottom + 46, title, body)


def _drill_said(drill: DrillResult) -> str:
    rto = "no RTO" if drill.rto_seconds is None else f"RTO {_rto_words(drill.rto_seconds)}"
    replayed = "" if drill.wal_replayed_bytes is None else f", {human_bytes(drill.wal_replayed_bytes)} of WAL replayed"
    why = f": {drill.reason}" if drill.result == "failed" and drill.reason else ""
    return (f"drill {drill.drill_id} {drill.result} {_utc(drill.finished_at)}: backup {drill.backup_id or '-'}, "
            f"{rto}{replayed}{why}")

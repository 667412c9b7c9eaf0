"""Recovery targets as a person types them: `--time`, `--lsn`, `--latest` and
`--timeline`, parsed into the planner's `Target` and `TimelineChoice`.

Times are accepted in the forms a DBA has at hand: ISO 8601 with a space or a `T`, and
the text PostgreSQL itself prints for `now()` / `clock_timestamp()` (offsets `+00`,
`+05:30`, `+0530`). A time without an offset is wall-clock time in the local time zone
(TZ, else the system's), like the server's own `recovery_target_time` input; the result
is always an aware datetime, so nothing downstream guesses again. A local time that the
clock skipped or showed twice (daylight saving changes) is refused rather than guessed:
an hour's difference in a restore target is lost data. A time outside 1970 to 9998 (UTC)
is refused too: no WAL was written then, and at the edges of what datetime holds the
planner's arithmetic would overflow.
"""

from __future__ import annotations

import re
from argparse import Namespace
from datetime import UTC, datetime, timedelta, timezone

from pitrkit.errors import UsageError
from pitrkit.plan import Target, TimelineChoice
from pitrkit.wal import Lsn

_TIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[T ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?)?"
    r"\s*(?P<offset>Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?",
    re.IGNORECASE,
)
_OFFSET = re.compile(r"(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2})?:?(?P<seconds>\d{2})?")

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

_TIME_FORMS = "e.g. '2026-11-23 14:41:37' (local time), '2026-11-23T14:41:37.123+01:00' or '2026-11-23 14:41:37+00'"


def parse_time(text: str) -> datetime:
    """An aware datetime for `text`; UsageError naming the accepted forms otherwise."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"not a time: {text!r} ({_TIME_FORMS})")
    try:
        wall_clock = datetime(
            int(match["year"]), int(match["month"]), int(match["day"]),
            int(match["hour"]), int(match["minute"]), int(match["second"] or 0),
            int((match["fraction"] or "0").ljust(6, "0")),
        )
    except ValueError as exc:
        raise UsageError(f"not a time: {text!r} ({exc})") from None
    try:
        if match["offset"] is None:
            moment = _localize(wall_clock, text)
        else:
            moment = wall_clock.replace(tzinfo=_parse_offset(match["offset"], text))
        in_range = EARLIEST <= moment < LATEST  # comparing converts to UTC, which can overflow
    except (OverflowError, ValueError):
        in_range = False
    if not in_range:
        raise UsageError(f"not a time to restore to: {text!r} is outside the years 1970 to 9998")
    return moment


def _parse_offset(text: str, whole: str) -> timezone:
    if text.upper() == "Z":
        return UTC
    parts = _OFFSET.fullmatch(text)
    assert parts is not None  # _TIME only lets well-formed offsets through
    offset = timedelta(
        hours=int(parts["hours"]), minutes=int(parts["minutes"] or 0), seconds=int(parts["seconds"] or 0)
    )
    if offset >= timedelta(hours=24) or int(parts["minutes"] or 0) >= 60:
        raise UsageError(f"not a time: {whole!r} (offset {text} is out of range)")
    return timezone(-offset if parts["sign"] == "-" else offset)


def _localize(wall_clock: datetime, text: str) -> datetime:
    """`wall_clock` in the local time zone. `fold` picks the first or second of two
    readings of the same wall-clock time; both give one instant unless the clock was
    set back (the time happened twice) or forward (it never happened) around it."""
    first = wall_clock.replace(fold=0).astimezone()
    second = wall_clock.replace(fold=1).astimezone()
    if first == second:
        return first
    zone = first.tzname()
    shown_first = first.astimezone().replace(tzinfo=None) == wall_clock
    shown_second = second.astimezone().replace(tzinfo=None) == wall_clock
    if shown_first and shown_second:
        raise UsageError(
            f"{text!r} happened twice in the local time zone ({first.isoformat()} and {second.isoformat()}, "
            "the clock was set back); give the offset"
        )
    raise UsageError(f"{text!r} never happened in the local time zone ({zone}: the clock skipped it); give the offset")


def target_from_args(args: Namespace) -> Target:
    """The target of `restore-plan` / `restore`: exactly one of --time, --lsn, --latest
    (argparse enforces that)."""
    if args.time is not None:
        return Target(kind="time", time=parse_time(args.time), text=args.time)
    if args.lsn is not None:
        return Target(kind="lsn", lsn=Lsn.parse(args.lsn), text=args.lsn)
    if args.latest:
        return Target(kind="latest", text="latest")
    raise UsageError("give a target: --time, --lsn or --latest")


def timeline_from_args(args: Namespace) -> TimelineChoice:
    """--timeline: absent (follow the target), `latest`, `current` (the backup's) or a
    timeline id, in decimal as recovery_target_timeline takes it."""
    text = args.timeline
    if text is None:
        return None
    choice = text.strip().lower()
    if choice in ("latest", "current"):
        return "latest" if choice == "latest" else "current"
    if not choice.isdigit() or not 0 < int(choice) <= 0xFFFFFFFF:
        raise UsageError(f"--timeline: expected a timeline id (1, 2, ...), 'latest' or 'current', not {text!r}")
    return int(choice)

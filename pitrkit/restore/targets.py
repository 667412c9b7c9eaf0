"""Recovery targets: the `Target` and `TimelineChoice` the planner plans to, and how a
person types them (`--time`, `--lsn`, `--xid`, `--name`, `--immediate`, `--latest`,
`--exclusive` and `--timeline`): every recovery target PostgreSQL knows.

An xid is taken as `pg_current_xact_id()` / `txid_current()` print it, 64 bits with the
epoch, or as a plain 32-bit xid; PostgreSQL's recovery_target_xid reads either and
compares the low 32 bits, so those must name a normal transaction (3 or more). A
restore point's name is what `pg_create_restore_point()` accepts: 1 to 63 bytes
(MAXFNAMELEN - 1), and here printable, since it is written into postgresql.auto.conf.

Times are accepted in the forms a DBA has at hand: ISO 8601 with a space or a `T`, and
the text PostgreSQL itself prints for `now()` / `clock_timestamp()` (offsets `+00`,
`+05:30`, `+0530`), and what `date` prints (`Sun Dec  6 04:06:37 UTC 2026`). A time
without an offset is wall-clock time in the local time zone (TZ, else the system's), like
the server's own `recovery_target_time` input; the result is always an aware datetime, so
nothing downstream guesses again. A local time that the clock skipped or showed twice
(daylight saving changes) is refused rather than guessed: an hour's difference in a
restore target is lost data.

A zone name is read only where it means one offset: UTC, GMT and Z, and the local zone's
own abbreviations (CET and CEST on a Berlin host), which `date` prints there and which
also tell the two readings of a repeated hour apart. Any other abbreviation is refused:
IST is India, Ireland or Israel, and a guess would restore to the wrong hour. A time
outside 1970 to 9998 (UTC) is refused too: no WAL was written then, and at the edges of
what datetime holds the planner's arithmetic would overflow.
"""

from __future__ import annotations

import re
import time
from argparse import Namespace
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import msgspec

from pitrkit.catalog.restore_points import check_name
from pitrkit.errors import UsageError
from pitrkit.postgres.wal import Lsn

TargetKind = Literal["time", "lsn", "xid", "name", "immediate", "latest"]
# The kinds recovery_target_inclusive applies to (PostgreSQL ignores it for the others).
INCLUSIVE_KINDS = ("time", "lsn", "xid")
# FirstNormalTransactionId: 0, 1 and 2 are never a transaction's.
FIRST_NORMAL_XID = 3


class Target(msgspec.Struct, kw_only=True, frozen=True):
    """Where a restore ends: a time, an LSN, a transaction's commit, a named restore
    point, the backup's end (immediate), or the end of the archived WAL (latest)."""

    kind: TargetKind
    time: datetime | None = None  # aware; kind == "time"
    # kind == "lsn"; for kind == "name", the restore point's LSN when the catalog knows
    # the point (the end of its WAL record; restore/plan.py fills it in), else None.
    lsn: Lsn | None = None
    xid: int | None = None  # kind == "xid": as typed, 64-bit with the epoch or 32-bit
    name: str | None = None  # kind == "name"
    # False: --exclusive, recovery stops just before the target (time, lsn, xid only).
    inclusive: bool = True
    text: str = ""  # what the user typed, for messages


# --timeline as the planner takes it: a timeline id, "latest", "current" (the backup's),
# or None (the timeline the target is on).
TimelineChoice = int | Literal["latest", "current"] | None


_TIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[T ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?)?"
    r"\s*(?:(?P<offset>Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)|(?P<zone>[A-Z]{2,6}))?",
    re.IGNORECASE,
)
# `date` in the C locale: `Sun Dec  6 04:06:37 UTC 2026`; a zone without an
# abbreviation shows as its offset (`+04`).
_DATE_OUTPUT = re.compile(
    r"(?P<weekday>[A-Z]{3})\s+(?P<month_name>[A-Z]{3})\s+(?P<day>\d{1,2})\s+"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?\s+"
    r"(?:(?P<offset>[+-]\d{2}(?::?\d{2})?)|(?P<zone>[A-Z]{1,6}))\s+(?P<year>\d{4})",
    re.IGNORECASE,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UTC_NAMES = ("UTC", "GMT", "Z", "UT")
_OFFSET = re.compile(r"(?P<sign>[+-])(?P<hours>\d{2}):?(?P<minutes>\d{2})?:?(?P<seconds>\d{2})?")

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)

_TIME_FORMS = ("e.g. '2026-11-23 14:41:37' (local time), '2026-11-23T14:41:37.123+01:00', '2026-11-23 14:41:37+00' "
               "or 'Mon Nov 23 14:41:37 UTC 2026'")


def parse_time(text: str) -> datetime:
    """An aware datetime for `text`; UsageError naming the accepted forms otherwise."""
    match = _TIME.fullmatch(text.strip()) or _DATE_OUTPUT.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"not a time: {text!r} ({_TIME_FORMS})")
    groups = match.groupdict()
    month = groups.get("month") or _month(groups.get("month_name") or "", text)
    try:
        wall_clock = datetime(
            int(match["year"]), int(month), int(match["day"]),
            int(match["hour"]), int(match["minute"]), int(match["second"] or 0),
            int((match["fraction"] or "0").ljust(6, "0")),
        )
    except ValueError as exc:
        raise UsageError(f"not a time: {text!r} ({exc})") from None
    if groups.get("weekday") and _WEEKDAYS[wall_clock.weekday()] != match["weekday"].lower():
        raise UsageError(f"not a time: {text!r} ({wall_clock:%Y-%m-%d} is a {wall_clock:%A})")
    try:
        if match["zone"] is not None:
            moment = _in_zone(wall_clock, match["zone"], text)
        elif match["offset"] is None:
            moment = _localize(wall_clock, text)
        else:
            moment = wall_clock.replace(tzinfo=_parse_offset(match["offset"], text))
        in_range = EARLIEST <= moment < LATEST  # comparing converts to UTC, which can overflow
    except (OverflowError, ValueError):
        in_range = False
    if not in_range:
        raise UsageError(f"not a time to restore to: {text!r} is outside the years 1970 to 9998")
    return moment


def _month(name: str, text: str) -> int:
    if name.lower() not in _MONTHS:
        raise UsageError(f"not a time: {text!r} (no month {name!r})")
    return _MONTHS.index(name.lower()) + 1


def _in_zone(wall_clock: datetime, name: str, text: str) -> datetime:
    """`wall_clock` in the zone `name` abbreviates, where that is one offset: UTC, or
    the local zone showing exactly that abbreviation at that wall-clock time."""
    if name.upper() in _UTC_NAMES:
        return wall_clock.replace(tzinfo=UTC)
    example = f"'{wall_clock.isoformat(sep=' ')}+01:00'"
    local_names = sorted({zone for zone in time.tzname if zone.isalpha()})
    if name.upper() not in (zone.upper() for zone in local_names):
        readable = ", ".join(["UTC", "GMT", "Z", *local_names])
        raise UsageError(f"time zone {name!r} in {text!r} is ambiguous or not the local zone's: pitrkit reads "
                         f"only {readable} (the local zone's abbreviations); give the offset from UTC instead, "
                         f"e.g. {example} for one hour east of UTC")
    readings = [reading for reading in (wall_clock.replace(fold=fold).astimezone() for fold in (0, 1))
                if reading.replace(tzinfo=None) == wall_clock]
    if not readings:
        return _localize(wall_clock, text)  # the clock skipped it: refused, saying so
    shown = [reading for reading in readings if (reading.tzname() or "").upper() == name.upper()]
    if not shown:
        actual = readings[0]
        raise UsageError(f"{text!r}: the local time zone shows {actual.tzname()}, not {name}, at that time; give "
                         f"the offset from UTC instead, e.g. '{actual.isoformat(sep=' ')}' for {actual.tzname()}")
    return shown[0]

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


def parse_xid(text: str) -> int:
    """A transaction id as `pg_current_xact_id()` (64 bits, with the epoch) or
    `txid_current()` print it, or a 32-bit xid: decimal, its low 32 bits at least 3."""
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit():
        raise UsageError(f"--xid: expected a transaction id in decimal, as txid_current() or pg_current_xact_id() "
                         f"print it, not {text!r}")
    xid = int(digits)
    if xid >= 1 << 64:
        raise UsageError(f"--xid {digits} is out of range: a transaction id has at most 64 bits "
                         f"(up to {(1 << 64) - 1})")
    if xid & 0xFFFFFFFF < FIRST_NORMAL_XID:
        raise UsageError(f"--xid {digits} is not a transaction's id: PostgreSQL compares its low 32 bits "
                         f"({xid & 0xFFFFFFFF}), and ids below {FIRST_NORMAL_XID} are never a transaction's")
    return xid


def target_from_args(args: Namespace) -> Target:
    """The target of `restore-plan` / `restore`: exactly one of --time, --lsn, --xid,
    --name, --immediate, --latest (argparse enforces that), and --exclusive where
    PostgreSQL applies it."""
    inclusive = not args.exclusive
    target = _target(args, inclusive)
    if not inclusive and target.kind not in INCLUSIVE_KINDS:
        option = {"name": "--name", "immediate": "--immediate", "latest": "--latest"}[target.kind]
        raise UsageError(f"--exclusive applies to --to, --lsn and --xid targets (recovery_target_inclusive), "
                         f"not to {option}")
    return target


def _target(args: Namespace, inclusive: bool) -> Target:
    if args.time is not None:
        return Target(kind="time", time=parse_time(args.time), inclusive=inclusive, text=args.time)
    if args.lsn is not None:
        return Target(kind="lsn", lsn=Lsn.parse(args.lsn), inclusive=inclusive, text=args.lsn)
    if args.xid is not None:
        return Target(kind="xid", xid=parse_xid(args.xid), inclusive=inclusive, text=args.xid)
    if args.name is not None:
        return Target(kind="name", name=check_name(args.name), text=args.name)
    if args.immediate:
        return Target(kind="immediate", text="immediate")
    if args.latest:
        return Target(kind="latest", text="latest")
    raise UsageError("give a target: --time, --lsn, --xid, --name, --immediate or --latest")


def timeline_from_args(args: Namespace) -> TimelineChoice | Literal["server"]:
    """--timeline: absent (follow the target), `latest`, `current` (the backup's, as
    PostgreSQL means it), `server` (the configured server's, which plan.server_choice
    asks it for) or a timeline id, in decimal as recovery_target_timeline takes it."""
    text = args.timeline
    if text is None:
        return None
    choice = text.strip().lower()
    if choice == "latest":
        return "latest"
    if choice == "current":
        return "current"
    if choice == "server":
        return "server"
    if not choice.isdigit() or not 0 < int(choice) <= 0xFFFFFFFF:
        raise UsageError(f"--timeline: expected a timeline id (1, 2, ...), 'latest', 'current' or 'server', "
                         f"not {text!r}")
    return int(choice)

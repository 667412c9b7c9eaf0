"""Five-field cron expressions, as `[daemon] cron` gives them: parsed (with a message
saying what is wrong) and evaluated in the host's time zone.

Cron fields are Vixie cron's: minute hour day-of-month month day-of-week, each `*`, a
number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those; months and
weekdays also by name (`jan`, `mon`); weekday 0 and 7 are Sunday. When both day fields
are restricted a day matches if EITHER does ("1,15 * * * mon" runs on the 1st, the 15th
and every Monday); a field that begins with `*` (also `*/2`) counts as unrestricted, as
in Vixie cron.

Daylight saving time: the schedule is read on the wall clock, and a wall-clock minute
runs at its first occurrence only (the hour a fall-back repeats does not run twice). A
minute the spring-forward jump skips never happens; the daemon catches up at the next
slot.

It needs nothing of pitrkit: config.py checks a configured expression with it, and
schedule.py runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MINUTE = timedelta(minutes=1)
# Any satisfiable expression matches within 40 years: with the day of the month and a
# weekday both required (a `*/7` weekday counts as unrestricted, so "* * 1 3 */7" is
# 1 March on a Sunday, next in 2037 after 2026), a date recurs on one weekday within 12
# years, 29 February within 40 (28, more across 2100, which is not a leap year), and
# every date falls on every weekday in the Gregorian 400-year cycle. Searching a little
# longer than that cannot find more.
_SEARCH_LIMIT = timedelta(days=41 * 366)


class CronError(ValueError):
    """A cron expression that is not valid, or can never match; the message says why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] means low + i


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    # 7 is Sunday too; folded into 0 below.
    _Field("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)

# The most days each month can have (February in a leap year).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression, evaluated in `zone` (None: the host's)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool
    zone: tzinfo | None = None

    @classmethod
    def parse(cls, text: str, zone: tzinfo | None = None) -> Cron:
        fields = text.split()
        if len(fields) != 5:
            raise CronError(f"cron expression {text!r} must have 5 fields (minute hour day-of-month month "
                            f"day-of-week), not {len(fields)}")
        minutes, hours, days, months, weekdays = (_parse_field(spec, field) for spec, field in zip(fields, _FIELDS,
                                                                                                  strict=True))
        weekdays = frozenset(day % 7 for day in weekdays)
        cron = cls(text, minutes, hours, days, months, weekdays, days_restricted=not fields[2].startswith("*"),
                   weekdays_restricted=not fields[4].startswith("*"), zone=zone)
        # Only the day-of-month can make an expression impossible ("0 0 31 2 *"), and
        # only when the day-of-week does not offer days of its own.
        if not cron.weekdays_restricted and not any(day <= _MONTH_DAYS[month - 1] for month in months
                                                    for day in days):
            raise CronError(f"cron expression {text!r} never matches: no chosen month has the chosen days")
        return cron

    def describe(self) -> str:
        return f"cron {self.text!r}"

    def day_matches(self, day: datetime) -> bool:
        # Vixie cron: with both day fields restricted either may match; otherwise the
        # restricted one (if any) decides.
        in_month = day.day in self.days
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def matches(self, wall: datetime) -> bool:
        """Whether the wall-clock minute `wall` (naive) is on the schedule."""
        return (wall.minute in self.minutes and wall.hour in self.hours and wall.month in self.months
                and self.day_matches(wall))

    def next_after(self, moment: datetime) -> datetime:
        zone = self.zone or host_zone()
        # Search wall-clock minutes, skipping whole months, days and hours that cannot
        # match; each candidate is then placed on the real time line.
        wall = moment.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0, fold=0) + _MINUTE
        limit = wall + _SEARCH_LIMIT
        while wall < limit:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self.day_matches(wall):
                wall = wall.replace(hour=0, minute=0) + timedelta(days=1)
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0) + timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall += _MINUTE
            else:
                instant = _first_occurrence(wall, zone)
                # Compared on the time line: after a fall-back, `moment` may sit in the
                # repeated hour, whose wall minutes' first occurrences are already past.
                if instant is not None and instant > moment:
                    return instant.astimezone(UTC)
                wall += _MINUTE
        raise CronError(f"cron expression {self.text!r} has no time within {_SEARCH_LIMIT.days} days of {moment}")


def _first_of_next_month(wall: datetime) -> datetime:
    if wall.month == 12:
        return datetime(wall.year + 1, 1, 1)
    return datetime(wall.year, wall.month + 1, 1)


def _first_occurrence(wall: datetime, zone: tzinfo) -> datetime | None:
    """The real instant the wall clock first shows `wall`; None if it never does (a
    minute skipped by a spring-forward jump)."""
    instant = wall.replace(tzinfo=zone, fold=0)
    # A skipped wall time does not survive the round trip through UTC.
    back = instant.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return instant if back == wall else None


def _parse_field(spec: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in spec.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(step_text, field, allow_names=False)
            if step < 1:
                raise CronError(f"cron {field.name} step {item!r} must be at least 1")
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _number(first, field), _number(last, field)
            if low > high:
                raise CronError(f"cron {field.name} range {item!r} runs backwards")
        elif slash:
            raise CronError(f"cron {field.name} step {item!r} needs * or a range before the /")
        else:
            low = high = _number(base, field)
        values.update(range(low, high + 1, step))
    return frozenset(values)


def _number(text: str, field: _Field, allow_names: bool = True) -> int:
    lowered = text.lower()
    if allow_names and lowered in field.names:
        return field.low + field.names.index(lowered)
    if not text.isdigit():
        raise CronError(f"cron {field.name} {text!r} is not a number" + (
            f" or a name ({', '.join(field.names)})" if field.names and allow_names else ""))
    value = int(text)
    if allow_names and not field.low <= value <= field.high:
        raise CronError(f"cron {field.name} {value} is outside {field.low}-{field.high}")
    return value


def host_zone() -> tzinfo:
    """The host's time zone with its rules (not just today's offset, which a schedule
    crossing a DST change would get wrong): $TZ, else /etc/localtime, else UTC."""
    if name := os.environ.get("TZ", "").lstrip(":"):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        with open(localtime, "rb") as file:
            return ZoneInfo.from_file(file, key=str(localtime))
    except (OSError, ValueError):
        return UTC

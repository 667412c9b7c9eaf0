"""The daemon's schedules (pitrkit/daemon/schedule.py): `every` durations and five-field
cron (pitrkit/cron.py).

The cron search skips whole months, days and hours; it is held against the definition
itself, a brute-force walk over real minutes that takes the first one whose wall-clock
time (at its first occurrence) matches, in zones with DST, half-hour DST and odd offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitrkit import config
from pitrkit.cron import Cron, CronError
from pitrkit.daemon.schedule import Every, from_config
from pitrkit.errors import ConfigError

ZONES = [ZoneInfo(name) for name in ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                                     "Asia/Kathmandu", "America/Santiago")]
# How far the brute force walks (in minutes) before it says "not within the horizon".
HORIZON = 45 * 24 * 60


def brute_force(cron: Cron, moment: datetime, zone: ZoneInfo) -> datetime | None:
    """The first real minute after `moment` that the definition accepts, within HORIZON."""
    minute = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(HORIZON):
        local = minute.astimezone(zone)
        if local.fold == 0 and cron.matches(local.replace(tzinfo=None)):
            return minute
        minute += timedelta(minutes=1)
    return None


def field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = number.map(str)
    span = st.tuples(number, number).map(lambda pair: f"{min(pair)}-{max(pair)}")
    stepped = st.tuples(st.sampled_from(["*", f"{low}-{high}"]), st.integers(1, high - low + 1)).map(
        lambda pair: f"{pair[0]}/{pair[1]}")
    item = st.one_of(single, span, stepped)
    return st.one_of(st.just("*"), item, st.lists(item, min_size=1, max_size=4).map(",".join))


EXPRESSIONS = st.tuples(field(0, 59), field(0, 23), field(1, 31), field(1, 12), field(0, 7)).map(" ".join)
MOMENTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(text=EXPRESSIONS, moment=MOMENTS, zone=st.sampled_from(ZONES))
def test_next_after_is_the_first_matching_minute(text: str, moment: datetime, zone: ZoneInfo) -> None:
    try:
        cron = Cron.parse(text, zone)
    except CronError as exc:
        assert "never matches" in str(exc)  # the generator only writes valid fields
        return
    found = cron.next_after(moment)
    expected = brute_force(cron, moment, zone)
    if expected is None:
        assert found > moment + timedelta(minutes=HORIZON)
    else:
        assert found == expected
    assert found.tzinfo is not None and found > moment


# Moments within a day of each DST change of 2026 in Berlin, New York and Lord Howe.
DST_MOMENTS = st.sampled_from([datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
                               datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC),
                               datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, tzinfo=UTC)])


@settings(max_examples=150, deadline=None)
@given(text=EXPRESSIONS, base=DST_MOMENTS, offset=st.integers(-24 * 60, 24 * 60), zone=st.sampled_from(ZONES))
def test_next_after_across_dst_changes(text: str, base: datetime, offset: int, zone: ZoneInfo) -> None:
    try:
        cron = Cron.parse(text, zone)
    except CronError:
        return
    moment = base + timedelta(minutes=offset, seconds=17)
    expected = brute_force(cron, moment, zone)
    found = cron.next_after(moment)
    assert found == expected if expected is not None else found > moment + timedelta(minutes=HORIZON)


BERLIN = ZoneInfo("Europe/Berlin")


def berlin(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def test_the_repeated_hour_runs_once_and_the_skipped_one_not_at_all() -> None:
    half_past_two = Cron.parse("30 2 * * *", BERLIN)
    # 25 October 2026: 02:30 happens twice (CEST, then CET); only the first runs.
    first = half_past_two.next_after(berlin(2026, 10, 25, 0, 0))
    # (Compared in UTC: Python never finds an ambiguous time equal to one in another zone.)
    assert first == berlin(2026, 10, 25, 2, 30).astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert half_past_two.next_after(first) == berlin(2026, 10, 26, 2, 30)
    # 29 March 2026: 02:30 does not exist; the next run is the next day's.
    assert half_past_two.next_after(berlin(2026, 3, 29, 0, 0)) == berlin(2026, 3, 30, 2, 30)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    cron = Cron.parse("0 12 13 * fri", UTC)
    moment = datetime(2026, 11, 1, tzinfo=UTC)  # a Sunday
    runs = []
    for _ in range(4):
        moment = cron.next_after(moment)
        runs.append(moment.day)
    assert runs == [6, 13, 20, 27]  # Fridays, and the 13th (also a Friday in this month)
    tuesday_13th = Cron.parse("0 12 13 * mon", UTC)
    assert tuesday_13th.next_after(datetime(2026, 10, 10, tzinfo=UTC)).day == 12  # Monday 12th before the 13th
    assert tuesday_13th.next_after(datetime(2026, 10, 12, 13, tzinfo=UTC)).day == 13


def test_a_star_step_counts_as_unrestricted_for_the_day_rule() -> None:
    # Vixie cron: "*/2" in day-of-month starts with "*", so only the weekday decides...
    # together with it: odd days that are Mondays.
    cron = Cron.parse("0 0 */2 * mon", UTC)
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    for _ in range(5):
        moment = cron.next_after(moment)
        assert moment.isoweekday() == 1 and moment.day % 2 == 1


@pytest.mark.parametrize(("text", "after", "expected"), [
    # "*/7" is Sunday only, yet unrestricted for the day rule: 1 March AND a Sunday,
    # which after 2026 comes round again in 2037 (hypothesis found it).
    ("* * 1 3 */7", datetime(2027, 1, 1, tzinfo=UTC), datetime(2037, 3, 1, tzinfo=UTC)),
    ("* * 1 3 */7", datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2037, 3, 1, tzinfo=UTC)),
    # The longest wait there is: 29 February on a Sunday, 2088 and then, 2100 not being
    # a leap year, 2128.
    ("0 0 29 2 */7", datetime(2088, 3, 1, tzinfo=UTC), datetime(2128, 2, 29, tzinfo=UTC)),
])
def test_a_date_on_a_weekday_years_away_is_found(text: str, after: datetime, expected: datetime) -> None:
    assert Cron.parse(text, UTC).next_after(after) == expected


def test_names_and_sunday_as_seven() -> None:
    names = Cron.parse("15 3 * JAN-mar sun", UTC)
    numbers = Cron.parse("15 3 * 1-3 7", UTC)
    assert names.months == numbers.months == frozenset({1, 2, 3})
    assert names.weekdays == numbers.weekdays == frozenset({0})
    assert names.next_after(datetime(2026, 11, 26, tzinfo=UTC)) == datetime(2027, 1, 3, 3, 15, tzinfo=UTC)


def test_leap_day() -> None:
    assert Cron.parse("0 0 29 2 *", UTC).next_after(datetime(2097, 1, 1, tzinfo=UTC)) == datetime(
        2104, 2, 29, tzinfo=UTC)


@pytest.mark.parametrize(("text", "message"), [
    ("* * * *", "must have 5 fields"),
    ("60 * * * *", "minute 60 is outside 0-59"),
    ("* 5-2 * * *", "runs backwards"),
    ("*/0 * * * *", "step '*/0' must be at least 1"),
    ("5/10 * * * *", "needs * or a range"),
    ("* * * foo *", "month 'foo' is not a number or a name"),
    ("0 0 31 2,4 *", "never matches"),
    ("0 0 30 2 *", "never matches"),
])
def test_bad_expressions_say_why(text: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("*", r"\*").replace("(", r"\(")):
        Cron.parse(text, UTC)


def test_every_is_its_interval_after_the_previous_slot() -> None:
    every = Every(3 * 3600, "3h")
    slot = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
    assert every.next_after(slot) == slot + timedelta(hours=3)
    assert every.describe() == "every 3h"


def test_from_config() -> None:
    def daemon(**section: str) -> config.DaemonConfig:
        return config.parse({"repository": {"url": "file:///x"}, "daemon": section}, "test").daemon

    assert from_config(daemon()) is None
    assert from_config(daemon(every="90m")) == Every(5400, "90m")
    cron = from_config(daemon(cron="30 2 * * *"))
    assert isinstance(cron, Cron) and cron.hours == frozenset({2})


def test_the_configuration_refuses_a_bad_cron_expression() -> None:
    with pytest.raises(ConfigError, match="daemon.cron: .*never matches"):
        config.parse({"repository": {"url": "file:///x"}, "daemon": {"cron": "0 0 31 2 *"}}, "test")

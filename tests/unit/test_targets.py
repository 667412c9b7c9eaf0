"""Recovery targets as typed on the command line: times in ISO 8601 and PostgreSQL's
own text, local times (including the hours daylight saving skips or repeats), LSNs and
--timeline choices."""

from __future__ import annotations

import time
from argparse import Namespace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitrkit.errors import UsageError
from pitrkit.postgres.wal import Lsn
from pitrkit.restore.targets import parse_time, target_from_args, timeline_from_args


@pytest.fixture
def local_zone(monkeypatch):
    """Set the process's local time zone (TZ) for one test."""

    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-23T14:41:37.123+01:00", datetime(2026, 11, 23, 13, 41, 37, 123000, tzinfo=UTC)),
        ("2026-11-23 14:41:37.123456+00", datetime(2026, 11, 23, 14, 41, 37, 123456, tzinfo=UTC)),
        ("2026-11-23 14:41:37+05:30", datetime(2026, 11, 23, 9, 11, 37, tzinfo=UTC)),
        ("2026-11-23 14:41:37+0530", datetime(2026, 11, 23, 9, 11, 37, tzinfo=UTC)),
        ("2026-11-23 14:41:37-08", datetime(2026, 11, 23, 22, 41, 37, tzinfo=UTC)),
        ("2026-11-23T14:41:37Z", datetime(2026, 11, 23, 14, 41, 37, tzinfo=UTC)),
        ("2026-11-23 14:41+00", datetime(2026, 11, 23, 14, 41, tzinfo=UTC)),
        ("  2026-11-23 14:41:37.5 +00  ", datetime(2026, 11, 23, 14, 41, 37, 500000, tzinfo=UTC)),
    ],
)
def test_times_with_an_offset(text, instant):
    parsed = parse_time(text)
    assert parsed == instant and parsed.tzinfo is not None


def test_a_time_without_an_offset_is_local(local_zone):
    local_zone("America/New_York")
    assert parse_time("2026-11-23 14:41:37") == datetime(2026, 11, 23, 19, 41, 37, tzinfo=UTC)  # EST
    assert parse_time("2026-07-01 14:41:37") == datetime(2026, 7, 1, 18, 41, 37, tzinfo=UTC)  # EDT
    local_zone("Asia/Kolkata")
    parsed = parse_time("2026-11-23 14:41:37")
    assert parsed == datetime(2026, 11, 23, 9, 11, 37, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)


def test_a_local_time_the_clock_skipped_is_refused(local_zone):
    local_zone("Europe/Berlin")
    with pytest.raises(UsageError, match="never happened in the local time zone"):
        parse_time("2026-03-29 02:30:00")


def test_a_local_time_that_happened_twice_is_refused(local_zone):
    local_zone("Europe/Berlin")
    with pytest.raises(UsageError, match=r"happened twice .*\+02:00 and .*\+01:00.*give the offset"):
        parse_time("2026-10-25 02:30:00")
    assert parse_time("2026-10-25 02:30:00+01") == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "",
        "2026-11-23",  # a date alone: which second of it?
        "2026-11-23 14",
        "2026-13-01 00:00:00",
        "2026-02-30 00:00:00",
        "2026-11-23 25:00:00",
        "2026-11-23 14:41:37+24",
        "2026-11-23 14:41:37+05:75",
        "2026-11-23 14:41:37.1234567+00",
        "2026-11-23 14:41:37 Europe/Berlin",
        "0/16B3748",
    ],
)
def test_malformed_times_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as refused:
        parse_time(text)
    assert "\n" not in str(refused.value) and "not a time" in str(refused.value)


offsets = st.integers(min_value=-(14 * 60), max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
instants = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31), timezones=offsets)


def _offset_text(moment: datetime, style: str) -> str:
    offset = moment.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    hours, minutes = divmod(minutes, 60)
    if style == "postgres":  # as PostgreSQL prints timestamptz: +HH, or +HH:MM when needed
        return f"{sign}{hours:02d}" + (f":{minutes:02d}" if minutes else "")
    return f"{sign}{hours:02d}{minutes:02d}" if style == "compact" else f"{sign}{hours:02d}:{minutes:02d}"


@given(instants, st.sampled_from([" ", "T"]), st.sampled_from(["postgres", "compact", "iso"]))
def test_any_written_time_parses_back_to_the_same_instant(moment, separator, style):
    text = moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    assert parse_time(text + _offset_text(moment, style)) == moment


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the zone is the same for every example
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31)))
def test_local_times_round_trip_through_the_local_zone(local_zone, moment):
    # India has no daylight saving since 1945: no wall-clock time is skipped or repeated.
    local_zone("Asia/Kolkata")
    parsed = parse_time(moment.isoformat(sep=" "))
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
    assert parsed.replace(tzinfo=None) == moment


# --- arguments ------------------------------------------------------------------------


def arguments(**given: object) -> Namespace:
    values: dict[str, object] = {"time": None, "lsn": None, "xid": None, "name": None, "immediate": False,
                                 "latest": False, "exclusive": False, "timeline": None}
    values.update(given)
    return Namespace(**values)


def test_target_from_args():
    at_time = target_from_args(arguments(time="2026-11-23 14:41:37+00"))
    assert at_time.kind == "time" and at_time.time == datetime(2026, 11, 23, 14, 41, 37, tzinfo=UTC)
    assert at_time.text == "2026-11-23 14:41:37+00"
    at_lsn = target_from_args(arguments(lsn="0/16B3748"))
    assert at_lsn.kind == "lsn" and at_lsn.lsn == Lsn(0x16B3748)
    assert target_from_args(arguments(latest=True)).kind == "latest"
    with pytest.raises(UsageError, match="not an LSN"):
        target_from_args(arguments(lsn="16B3748"))


@pytest.mark.parametrize(
    ("text", "choice"),
    [(None, None), ("latest", "latest"), ("CURRENT", "current"), ("server", "server"), ("2", 2), (" 12 ", 12)]
)
def test_timeline_choices(text, choice):
    assert timeline_from_args(arguments(timeline=text)) == choice


@pytest.mark.parametrize("text", ["0", "-1", "0x2", "two", "", "4294967296"])
def test_bad_timelines_are_refused(text):
    with pytest.raises(UsageError, match="--timeline: expected a timeline id"):
        timeline_from_args(arguments(timeline=text))


# --- zone names, as `date` prints them -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("Sun Dec  6 04:06:37 UTC 2026", datetime(2026, 12, 6, 4, 6, 37, tzinfo=UTC)),
        ("Sun Dec 6 04:06:37 GMT 2026", datetime(2026, 12, 6, 4, 6, 37, tzinfo=UTC)),
        ("2026-12-06 04:06:37 UTC", datetime(2026, 12, 6, 4, 6, 37, tzinfo=UTC)),
        ("2026-12-06 04:06:37 Z", datetime(2026, 12, 6, 4, 6, 37, tzinfo=UTC)),
        ("2026-12-06 04:06:37 CET", datetime(2026, 12, 6, 3, 6, 37, tzinfo=UTC)),
        ("Mon Jul  6 04:06:37 CEST 2026", datetime(2026, 7, 6, 2, 6, 37, tzinfo=UTC)),
        # The abbreviation tells the two readings of the hour the clock repeats apart.
        ("2026-10-25 02:30:00 CEST", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        ("2026-10-25 02:30:00 CET", datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    ],
)
def test_zone_names_that_mean_one_offset_are_read(local_zone, text, instant):
    local_zone("Europe/Berlin")
    assert parse_time(text) == instant


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-06 04:06:37 EST", "time zone 'EST' in '2026-12-06 04:06:37 EST' is ambiguous or not the local "
                                    "zone's: pitrkit reads only UTC, GMT, Z, CEST, CET (the local zone's "
                                    "abbreviations); give the offset from UTC instead, e.g. "
                                    "'2026-12-06 04:06:37+01:00' for one hour east of UTC"),
        ("Sun Dec  6 04:06:37 IST 2026", "time zone 'IST'"),
        ("2026-07-06 04:06:37 CET", "'2026-07-06 04:06:37 CET': the local time zone shows CEST, not CET, at that "
                                    "time; give the offset from UTC instead, e.g. '2026-07-06 04:06:37+02:00' "
                                    "for CEST"),
        ("2026-03-29 02:30:00 CET", "never happened in the local time zone"),
        ("Mon Dec  6 04:06:37 UTC 2026", "not a time: 'Mon Dec  6 04:06:37 UTC 2026' (2026-12-06 is a Sunday)"),
        ("Sun Dez  6 04:06:37 UTC 2026", "no month 'Dez'"),
    ],
)
def test_other_zone_names_are_refused_with_the_offset_form(local_zone, text, message):
    local_zone("Europe/Berlin")
    with pytest.raises(UsageError) as refused:
        parse_time(text)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_xid_name_immediate_and_exclusive_targets():
    xid = target_from_args(arguments(xid="4294968296", exclusive=True))
    assert (xid.kind, xid.xid, xid.inclusive, xid.text) == ("xid", (1 << 32) + 1000, False, "4294968296")
    assert target_from_args(arguments(xid=" 750 ")).xid == 750
    point = target_from_args(arguments(name="before 'the' upgrade"))
    assert (point.kind, point.name, point.lsn, point.inclusive) == ("name", "before 'the' upgrade", None, True)
    assert target_from_args(arguments(name="é" * 31)).name == "é" * 31  # 62 bytes
    assert target_from_args(arguments(immediate=True)).kind == "immediate"
    assert target_from_args(arguments(lsn="0/16B3748", exclusive=True)).inclusive is False
    assert target_from_args(arguments(time="2026-11-23 14:41:37+00", exclusive=True)).inclusive is False


@pytest.mark.parametrize(("given", "words"), [
    ({"xid": "2"}, "ids below 3 are never a transaction's"),
    ({"xid": str((5 << 32) + 1)}, "compares its low 32 bits (1)"),
    ({"xid": str(1 << 64)}, "at most 64 bits"),
    ({"xid": "0x1F"}, "expected a transaction id in decimal"),
    ({"xid": "١٢٣"}, "expected a transaction id in decimal"),  # Arabic-Indic digits: isdigit, not decimal ASCII
    ({"name": "x" * 64}, "is 64 bytes; a restore point name has at most 63"),
    ({"name": ""}, "cannot be empty"),
    ({"name": "a\tb"}, "do not print"),
    ({"latest": True, "exclusive": True}, "not to --latest"),
    ({"immediate": True, "exclusive": True}, "not to --immediate"),
    ({"name": "p", "exclusive": True}, "not to --name"),
])
def test_bad_xids_names_and_exclusive_kinds_are_one_line(given, words):
    with pytest.raises(UsageError) as refused:
        target_from_args(arguments(**given))
    assert words in str(refused.value) and "\n" not in str(refused.value)

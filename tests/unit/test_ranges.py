"""Every user-facing value with a range is checked where it is read: each numeric and
duration key of the configuration and each numeric or time option on the command line,
given zero, negative, huge, infinite and overflowing values, ends the command with one
`pitrkit: ...` line on stderr and the usage exit code (2), never a traceback or 70
(internal error); and what is accepted can be computed with (no later overflow)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitrkit import config
from pitrkit.catalog import restore_points
from pitrkit.cli import main
from pitrkit.errors import ConfigError, UsageError
from pitrkit.restore import targets
from tests.unit.segments import segment

USAGE = 2
HUGE = [10**18, 1e300, "1e400", "inf", "-inf", "nan"]  # TOML text for the last four

# Every numeric key: section, key, TOML values out of its range.
NUMBERS = [
    ("repository", "timeout", [0, -1, *HUGE]),
    ("repository", "retries", [-1, 101, 10**18, 1.5]),
    ("compression", "threads", [-1, 257, 10**18]),
    ("agent", "idle_timeout", [0, -1, *HUGE]),
    ("agent", "lookahead", [-1, 65, 10**18]),
    ("backup", "workers", [-1, 257, 10**18]),
    ("backup", "wal_timeout", [0, -1, *HUGE]),
    ("receive", "partial_interval", [0, -1, *HUGE]),
    ("daemon", "status_interval", [0, -1, *HUGE]),
    ("retention", "keep_last", [0, -1, 100_001, 10**18]),
    ("retention", "daily", [-1, 100_001, 10**18]),
    ("retention", "weekly", [-1, 100_001]),
    ("retention", "monthly", [-1, 100_001]),
    ("drill", "nice", [-1, 20, 10**18]),
    ("repository", "spool_max", [-1, "'-1GB'", "'1PB'", 2**60 + 1, "'99999999999999999999TB'"]),
    ("drill", "min_free", [-1, "'-1GB'", "'1PB'", 2**60 + 1, "'99999999999999999999TB'"]),
    ("backup", "standby_max_lag", [-1, "'-1GB'", "'1PB'", 2**60 + 1, "'99999999999999999999TB'"]),
    ("receive", "max_slot_retained", [-1, "'-1GB'", "'1PB'", 2**60 + 1, 2**63 - 1, "'1048577TB'",
                                      "'99999999999999999999TB'", "'99999999999999999999'"]),
]
BAD_DURATIONS = ["'-1h'", "'101y'", "'99999999999999999999w'", "'1e400'", "'5300w'", -1, 10**18, "inf", "nan"]
# Every duration key (0 is a duration: "no window", a lease released at once ...).
DURATIONS = [
    ("retention", "window"), ("retention", "unfinished_grace"), ("retention", "restore_lease"),
    ("status", "backup_max_age"), ("status", "wal_max_age"), ("daemon", "every"),
    ("drill", "every"), ("drill", "max_age"),
]


def toml_value(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def configuration(tmp_path: Path, section: str, key: str, value: object) -> Path:
    archive = tmp_path / "archive"
    archive.mkdir(exist_ok=True)
    sections = {"repository": f'url = "file://{archive}"\n', "retention": ""}
    sections[section] = sections.get(section, "") + f"{key} = {toml_value(value)}\n"
    path = tmp_path / "pitrkit.toml"
    path.write_text("".join(f"[{name}]\n{body}" for name, body in sections.items()))
    return path


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == USAGE and len(lines) == 1 and lines[0].startswith("pitrkit: "), (code, err)
    assert "internal error" not in err
    return lines[0]


@pytest.mark.parametrize(("section", "key", "value"),
                         [(section, key, value) for section, key, values in NUMBERS for value in values])
def test_every_numeric_key_out_of_range_is_one_line(tmp_path, capsys, section, key, value):
    line = refused(capsys, ["--config", str(configuration(tmp_path, section, key, value)), "backup-list"])
    assert f"{section}.{key}" in line


@pytest.mark.parametrize(("section", "key", "value"),
                         [(section, key, value) for section, key in DURATIONS for value in BAD_DURATIONS])
def test_every_duration_key_out_of_range_is_one_line(tmp_path, capsys, section, key, value):
    line = refused(capsys, ["--config", str(configuration(tmp_path, section, key, value)), "backup-list"])
    assert f"{section}.{key}" in line


def test_a_schedule_of_no_time_at_all_is_one_line(tmp_path, capsys):
    assert "daemon.every" in refused(capsys, ["--config", str(configuration(tmp_path, "daemon", "every", "'0'")),
                                              "backup-list"])
    assert "drill.every" in refused(capsys, ["--config", str(configuration(tmp_path, "drill", "every", "'0'")),
                                             "backup-list"])


@pytest.mark.parametrize("checks", ['[{sql = " ", expect = "1"}]', '[{sql = "SELECT 1", expect = "1", database = ""}]'])
def test_a_drill_check_without_a_query_or_a_database_is_one_line(tmp_path, capsys, checks):
    assert "drill.checks[1]" in refused(capsys, ["--config", str(configuration(tmp_path, "drill", "checks", checks)),
                                                 "backup-list"])



@pytest.mark.parametrize("value", ["'30.5d'", "'2592001s'", "'5w'", "'4000h'"])
def test_a_restore_lease_longer_than_a_lease_may_hold_is_one_line(tmp_path, capsys, value):
    # Readers refuse a lease held longer as forged (config.MAX_HELD_FOR).
    line = refused(capsys, ["--config", str(configuration(tmp_path, "retention", "restore_lease", value)),
                            "backup-list"])
    assert "retention.restore_lease must be at most 30d" in line


def test_a_restore_lease_of_30_days_is_accepted():
    parsed = config.parse({"repository": {"url": "file:///x"}, "retention": {"restore_lease": "30d"}}, "test")
    assert parsed.retention is not None and parsed.retention.restore_lease_seconds == 30 * 86400

@pytest.mark.parametrize("value", [2**60, "1048576TB", "0", 0])
def test_a_slot_size_up_to_an_exbibyte_is_accepted(value):
    parsed = config.parse({"repository": {"url": "file:///x"}, "receive": {"max_slot_retained": value}}, "test")
    assert parsed.receive.max_slot_retained_bytes == config.parse_size(value) <= config.MAX_SIZE
    parsed = config.parse({"repository": {"url": "file:///x"}, "drill": {"min_free": value}}, "test")
    assert parsed.drill.min_free_bytes == config.parse_size(value) <= config.MAX_SIZE
    parsed = config.parse({"repository": {"url": "file:///x"}, "backup": {"standby_max_lag": value}}, "test")
    assert parsed.backup.standby_max_lag_bytes == config.parse_size(value) <= config.MAX_SIZE

@pytest.mark.parametrize("level", [0, -1, 23, 10**18])
def test_a_compression_level_out_of_range_is_one_line(tmp_path, capsys, level):
    # Only the algorithm knows its levels: the compressor checks when it is made.
    path = configuration(tmp_path, "compression", "level", level)
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(segment(1))
    assert "compression" in refused(capsys, ["--config", str(path), "wal-push", str(wal)])


@pytest.mark.parametrize("argv", [
    ["restore-plan", "--to", "9999-12-31 23:59"],
    ["restore-plan", "--to", "9999-12-31 23:59:59-14"],
    ["restore-plan", "--to", "0001-01-01 00:00"],
    ["restore-plan", "--to", "0001-01-01 00:00+14"],
    ["restore-plan", "--to", "1969-12-31 23:59:59Z"],
    ["restore-plan", "--to", "9999-12-31"],
    ["restore-plan", "--latest", "--timeline", "0"],
    ["restore-plan", "--latest", "--timeline", "4294967296"],
    ["restore-plan", "--latest", "--timeline", "99999999999999999999999"],
    ["restore-plan", "--lsn", "FFFFFFFFF/0"],
    ["restore-plan", "--xid", "0"],
    ["restore-plan", "--xid", "2"],
    ["restore-plan", "--xid", "-5"],
    ["restore-plan", "--xid", "4294967296"],  # epoch 1, xid 0: never a transaction's
    ["restore-plan", "--xid", "18446744073709551616"],
    ["restore-plan", "--xid", "1e9"],
    ["restore-plan", "--xid", "0x10"],
    ["restore-plan", "--name", "x" * 64],
    ["restore-plan", "--name", "é" * 32],  # 64 bytes
    ["restore-plan", "--name", ""],
    ["restore-plan", "--name", "a\nb"],
    ["restore-plan", "--latest", "--exclusive"],
    ["restore-plan", "--immediate", "--exclusive"],
    ["restore-plan", "--name", "p", "--exclusive"],
    ["restore-plan", "--xid", "1000", "--lsn", "0/1"],
    ["restore-point", "x" * 64],
    ["restore-point", ""],
    ["wal-list", "--timeline", "0"],
    ["wal-list", "--timeline=-1"],
    ["wal-list", "--timeline", "4294967296"],
    ["wal-list", "--timeline", "1e400"],
    ["restore", "--latest", "--target-dir", "/nonexistent/x", "--port", "0"],
    ["restore", "--latest", "--target-dir", "/nonexistent/x", "--port", "65536"],
    ["restore", "--latest", "--target-dir", "/nonexistent/x", "--port=-1"],
    ["restore", "--latest", "--target-dir", "/nonexistent/x", "--port", "99999999999999999999"],
])
def test_every_numeric_or_time_option_out_of_range_is_one_line(tmp_path, capsys, argv):
    path = configuration(tmp_path, "repository", "retries", 0)
    refused(capsys, ["--config", str(path), *argv])


# --- fuzzed ----------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                       st.from_regex(r"\A\s*-?\d{1,30}(\.\d{1,5})?\s*[smhdw]?\s*\Z"), st.text(max_size=12)))
def test_any_duration_is_refused_or_usable(value):
    document = {"repository": {"url": "file:///x"}, "status": {"backup_max_age": value}}
    try:
        parsed = config.parse(document, "fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc) and "status.backup_max_age" in str(exc)
        return
    seconds = parsed.status.backup_max_age_seconds
    assert 0 <= seconds <= config.MAX_SECONDS
    datetime.now(UTC) + 2 * timedelta(seconds=seconds)  # what status computes: no overflow


# Sizes in bytes, whose range is MAX_SIZE, not seconds: their own test above.
_SIZES = ("max_slot_retained", "min_free", "standby_max_lag")


@settings(max_examples=300)
@given(key=st.sampled_from([(section, key) for section, key, _ in NUMBERS if key not in _SIZES]),
       value=st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                       st.floats(allow_nan=True, allow_infinity=True)))
def test_any_number_is_refused_or_in_range(key, value):
    section, name = key
    document = {"repository": {"url": "file:///x"}, "retention": {}, section: {name: value}}
    if section == "repository":
        document["repository"][name] = value
    try:
        parsed = config.parse(document, "fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    got = getattr(getattr(parsed, section), name)
    assert math.isfinite(got) and 0 <= got <= config.MAX_SECONDS


@settings(max_examples=300)
@given(text=st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=24)))
def test_any_xid_is_refused_or_in_range(text):
    try:
        xid = targets.parse_xid(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 < xid < 1 << 64 and xid & 0xFFFFFFFF >= targets.FIRST_NORMAL_XID


@settings(max_examples=300)
@given(name=st.text(max_size=80))
def test_any_restore_point_name_is_refused_or_one_postgresql_takes(name):
    try:
        checked = restore_points.check_name(name)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert 0 < len(checked.encode()) <= 63 and checked.isprintable()


@settings(max_examples=500)
@given(moment=st.datetimes(), offset_minutes=st.one_of(st.none(), st.integers(-23 * 60 - 59, 23 * 60 + 59)),
       separator=st.sampled_from([" ", "T"]))
def test_any_time_is_refused_or_in_range(moment, offset_minutes, separator):
    text = moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
    if offset_minutes is not None:
        sign, minutes = ("-" if offset_minutes < 0 else "+"), abs(offset_minutes)
        text += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    try:
        parsed = targets.parse_time(text)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    assert targets.EARLIEST <= parsed < targets.LATEST
    parsed.astimezone(UTC) + timedelta(days=366)  # the planner's arithmetic stays in range

"""Retention policy (pitrkit/ops/policy.py): which backups the rules keep, and which WAL they
need, on synthetic catalogs and timeline trees.

The properties state each rule as a fact about the catalog, independently of how
ops/policy.py computes it: a kept backup's reasons must be exactly the rules whose statement
holds for it, and a removed backup must satisfy none. The WAL property enumerates segment
by segment what replay of each timeline from each kept backup reads."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pitrkit.catalog.archived_wal import TimelineStep, on_path, serving_timeline
from pitrkit.catalog.documents import BackupSummary
from pitrkit.config import RetentionConfig
from pitrkit.errors import ConfigError
from pitrkit.ops.policy import HostZone, RetentionPolicy, select_backups, show_duration, wal_to_keep
from pitrkit.postgres.wal import Lsn, SegmentName

SEGMENT_SIZE = 16 << 20
BERLIN = ZoneInfo("Europe/Berlin")
# Zones whose days are not 24 hours twice a year, one with a 30-minute shift.
ZONES: list[tzinfo] = [UTC, BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
# Windows with the text a reason shows them as.
WINDOWS = {timedelta(minutes=90): "90m", timedelta(hours=36): "36h", timedelta(days=7): "7d",
           timedelta(days=30): "30d"}


def summary(backup_id: str, stop_time: datetime, *, start_time: datetime | None = None, timeline: int = 1,
            start_lsn: int = SEGMENT_SIZE, chain: tuple[str, ...] = ()) -> BackupSummary:
    """With `chain` (ancestors, the full first), an incremental backup on its last."""
    first = SegmentName(timeline, start_lsn // SEGMENT_SIZE, SEGMENT_SIZE).name
    return BackupSummary(
        backup_id=backup_id, label=backup_id, system_identifier=1, pg_version=150000, timeline=timeline,
        start_lsn=Lsn(start_lsn), start_time=start_time or stop_time - timedelta(minutes=20),
        stop_lsn=Lsn(start_lsn + 1), stop_time=stop_time, first_segment=first, last_segment=first, size=1,
        stored_size=1, file_count=1, compression="zstd", pitrkit_version="0",
        parent=chain[-1] if chain else None, chain=list(chain),
    )


def daily_chain(links: dict[str, tuple[str, ...]]) -> list[BackupSummary]:
    """Backups one a day at noon from 2026-09-01, in the order given, each with its
    chain; WAL positions grow with them."""
    return [summary(backup_id, SEPTEMBER + timedelta(days=day, hours=12), start_lsn=(day + 1) * SEGMENT_SIZE,
                    chain=chain)
            for day, (backup_id, chain) in enumerate(links.items())]


def policy(keep_last: int = 1, daily: int = 0, weekly: int = 0, monthly: int = 0,
           window: timedelta | None = None, zone: tzinfo = UTC) -> RetentionPolicy:
    return RetentionPolicy(keep_last, daily, weekly, monthly, window, zone)


def kept(verdicts) -> dict[str, list[str]]:
    return {verdict.backup_id: verdict.reasons for verdict in verdicts if verdict.keep}


# --- backups: properties ------------------------------------------------------------------


@st.composite
def catalogs(draw) -> list[BackupSummary]:
    """Backups over weeks to months: bursts minutes apart, daily runs, and pauses of
    weeks, each taking minutes to hours (so a long one can finish after a later start).
    Oldest first by start time, as catalog/backups.py gives them."""
    start = draw(st.datetimes(datetime(2024, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)))
    gaps = st.one_of(st.integers(1, 180).map(lambda m: timedelta(minutes=m)),
                     st.integers(1, 48).map(lambda h: timedelta(hours=h)),
                     st.builds(lambda d, m: timedelta(days=d, minutes=m), st.integers(1, 40), st.integers(0, 1439)))
    backups = []
    for number in range(draw(st.integers(1, 40))):
        start += draw(gaps)
        took = timedelta(minutes=draw(st.integers(1, 600)))
        backups.append(summary(f"b{number:02d}", start + took, start_time=start))
    return backups


policies = st.builds(policy, keep_last=st.integers(1, 5), daily=st.integers(0, 10), weekly=st.integers(0, 6),
                     monthly=st.integers(0, 4), window=st.none() | st.sampled_from(list(WINDOWS)),
                     zone=st.sampled_from(ZONES))


def _day(moment: datetime) -> tuple[tuple[int, ...], str]:
    return (moment.year, moment.month, moment.day), moment.strftime("%Y-%m-%d")


def _week(moment: datetime) -> tuple[tuple[int, ...], str]:
    year, week, _ = moment.isocalendar()
    return (year, week), f"{year}-W{week:02d}"


def _month(moment: datetime) -> tuple[tuple[int, ...], str]:
    return (moment.year, moment.month), moment.strftime("%Y-%m")


def true_statements(backup: BackupSummary, backups: list[BackupSummary], rules: RetentionPolicy,
                    now: datetime) -> list[str]:
    """Every rule statement that holds for `backup`, in the policy's order of rules."""

    def newer(other: BackupSummary) -> bool:
        return (other.stop_time, other.backup_id) > (backup.stop_time, backup.backup_id)

    statements = []
    if sum(map(newer, backups)) < rules.keep_last:
        statements.append(f"last {rules.keep_last}")
    for rule, count, period in (("daily", rules.daily, _day), ("weekly", rules.weekly, _week),
                                ("monthly", rules.monthly, _month)):
        key, label = period(backup.stop_time.astimezone(rules.zone))
        periods = {other.backup_id: period(other.stop_time.astimezone(rules.zone))[0] for other in backups}
        newest_of_its_period = not any(newer(other) for other in backups if periods[other.backup_id] == key)
        later_periods = {other for other in periods.values() if other > key}
        # The newest of its period, and its period among the `count` latest that have a backup.
        if newest_of_its_period and len(later_periods) < count:
            statements.append(f"{rule} {label}")
    if rules.window is not None:
        old_enough = [other for other in backups if other.stop_time <= now - rules.window]
        if backup in old_enough:
            holds = not any(map(newer, old_enough))
        else:
            holds = not old_enough and all(newer(other) for other in backups if other is not backup)
        if holds:
            statements.append(f"window {WINDOWS[rules.window]}")
    return statements


@settings(max_examples=300, deadline=None)
@given(catalogs(), policies, st.integers(0, 60 * 24 * 60).map(lambda m: timedelta(minutes=m)))
def test_a_backup_is_kept_exactly_for_the_rules_that_hold_for_it(backups, rules, after_newest):
    now = max(backup.stop_time for backup in backups) + after_newest
    verdicts = select_backups(backups, rules, now)
    assert [verdict.backup_id for verdict in verdicts] == [backup.backup_id for backup in backups]
    for backup, verdict in zip(backups, verdicts, strict=True):
        # Kept: its reasons are true and complete. Removed: no rule holds for it.
        assert verdict.reasons == true_statements(backup, backups, rules, now), backup.backup_id
        assert verdict.keep == bool(verdict.reasons)


@settings(max_examples=200, deadline=None)
@given(catalogs(), policies)
def test_what_the_policy_promises_stays(backups, rules):
    now = max(backup.stop_time for backup in backups) + timedelta(days=3)
    reasons = kept(select_backups(backups, rules, now))
    newest_first = sorted(backups, key=lambda backup: (backup.stop_time, backup.backup_id), reverse=True)
    assert newest_first[0].backup_id in reasons  # the newest, always
    assert {backup.backup_id for backup in newest_first[: rules.keep_last]} <= set(reasons)
    for rule, count, period in (("daily", rules.daily, _day), ("weekly", rules.weekly, _week),
                                ("monthly", rules.monthly, _month)):
        periods = {period(backup.stop_time.astimezone(rules.zone))[1] for backup in backups}
        # As many periods as asked for, or every period there is: never fewer.
        covered = {reason.partition(" ")[2] for reasons_of in reasons.values() for reason in reasons_of
                   if reason.startswith(rule + " ")}
        assert len(covered) == min(count, len(periods))
        assert covered == set(sorted(periods, reverse=True)[:count])
    if rules.window is not None:
        anchors = [backup_id for backup_id, reasons_of in reasons.items()
                   if f"window {WINDOWS[rules.window]}" in reasons_of]
        assert len(anchors) == 1


@st.composite
def chained_catalogs(draw) -> list[BackupSummary]:
    """catalogs() where some backups are incrementals on an earlier one (its chain and
    it), and some backups are then lost: their descendants' chains are broken."""
    backups = [msgspec.structs.replace(backup, start_lsn=Lsn((number + 1) * SEGMENT_SIZE))
               for number, backup in enumerate(draw(catalogs()))]
    for number, backup in enumerate(backups):
        if number and draw(st.booleans()):
            parent = backups[draw(st.integers(0, number - 1))]
            backups[number] = msgspec.structs.replace(backup, parent=parent.backup_id,
                                                      chain=[*parent.chain, parent.backup_id])
    lost = draw(st.sets(st.sampled_from([backup.backup_id for backup in backups]), max_size=len(backups) - 1))
    return [backup for backup in backups if backup.backup_id not in lost]


@settings(max_examples=300, deadline=None)
@given(chained_catalogs(), policies)
def test_the_rules_keep_usable_backups_and_every_kept_backup_keeps_its_chain(backups, rules):
    now = max(backup.stop_time for backup in backups) + timedelta(days=1)
    stored = {backup.backup_id for backup in backups}
    usable = [backup for backup in backups if set(backup.chain) <= stored]
    verdicts = {verdict.backup_id: verdict for verdict in select_backups(backups, rules, now)}
    for backup in backups:
        verdict = verdicts[backup.backup_id]
        rule_reasons = [reason for reason in verdict.reasons if not reason.startswith("ancestor of ")]
        # The rules are those a catalog of the usable backups alone has.
        assert rule_reasons == (true_statements(backup, usable, rules, now) if backup in usable else [])
        if verdict.keep:
            assert all(verdicts[ancestor].keep for ancestor in backup.chain if ancestor in stored)
    for backup in backups:
        descendants = [other.backup_id for other in backups if backup.backup_id in other.chain
                       and any(not reason.startswith("ancestor of ") for reason in verdicts[other.backup_id].reasons)]
        assert any(reason.startswith("ancestor of ") for reason in verdicts[backup.backup_id].reasons) \
            == bool(descendants)


# --- backups: examples ------------------------------------------------------------------

SEPTEMBER = datetime(2026, 9, 1, tzinfo=UTC)


def four_a_day(days: int) -> list[BackupSummary]:
    """Backups finishing at 01, 07, 13 and 19 UTC every day from 2026-09-01, named by
    when they finish: "10-30T19"."""
    return [summary(stop.strftime("%m-%dT%H"), stop)
            for stop in (SEPTEMBER + timedelta(days=day, hours=hour) for day in range(days) for hour in (1, 7, 13, 19))]


def test_seven_dailies_and_four_weeklies_over_sixty_days():
    backups = four_a_day(60)  # to Friday 2026-10-30, in ISO week 44
    now = backups[-1].stop_time + timedelta(hours=1)
    assert kept(select_backups(backups, policy(daily=7, weekly=4), now)) == {
        "10-11T19": ["weekly 2026-W41"],  # Sundays end weeks
        "10-18T19": ["weekly 2026-W42"],
        "10-24T19": ["daily 2026-10-24"],
        "10-25T19": ["daily 2026-10-25", "weekly 2026-W43"],
        "10-26T19": ["daily 2026-10-26"],
        "10-27T19": ["daily 2026-10-27"],
        "10-28T19": ["daily 2026-10-28"],
        "10-29T19": ["daily 2026-10-29"],
        "10-30T19": ["last 1", "daily 2026-10-30", "weekly 2026-W44"],
    }


def test_a_window_keeps_the_newest_backup_from_before_it_starts():
    backups = four_a_day(60)
    now = backups[-1].stop_time + timedelta(hours=1)  # 10-30 20:00: the window starts 10-23 20:00
    reasons = kept(select_backups(backups, policy(keep_last=2, window=timedelta(days=7)), now))
    assert reasons == {"10-23T19": ["window 7d"], "10-30T13": ["last 2"], "10-30T19": ["last 2"]}


def test_a_backup_that_finished_as_the_window_starts_is_its_anchor():
    backups = four_a_day(60)
    now = datetime(2026, 10, 23, 19, tzinfo=UTC) + timedelta(days=7)
    assert kept(select_backups(backups, policy(window=timedelta(days=7)), now)) == {
        "10-23T19": ["window 7d"], "10-30T19": ["last 1"]}


def test_a_window_longer_than_the_history_keeps_the_oldest_backup():
    backups = four_a_day(3)
    now = backups[-1].stop_time
    assert kept(select_backups(backups, policy(window=timedelta(days=30)), now)) == {
        "09-01T01": ["window 30d"], "09-03T19": ["last 1"]}


def test_days_without_backups_do_not_count():
    """The daemon stopped for three months: the last seven days that had a backup stay."""
    backups = four_a_day(20)
    now = backups[-1].stop_time + timedelta(days=90)
    reasons = kept(select_backups(backups, policy(daily=7, monthly=3), now))
    assert sorted(reasons) == ["09-14T19", "09-15T19", "09-16T19", "09-17T19", "09-18T19", "09-19T19", "09-20T19"]
    assert reasons["09-20T19"] == ["last 1", "daily 2026-09-20", "monthly 2026-09"]


def test_days_are_counted_in_the_policy_zone():
    """23:30 and 00:30 in Berlin on the night summer time starts are two days there, one
    day in UTC."""
    backups = [summary("early", datetime(2026, 3, 27, 10, tzinfo=UTC)),
               summary("evening", datetime(2026, 3, 28, 22, 30, tzinfo=UTC)),  # 23:30 CET, Saturday
               summary("night", datetime(2026, 3, 28, 23, 30, tzinfo=UTC))]  # 00:30 CET, Sunday 29th
    now = datetime(2026, 3, 29, 12, tzinfo=UTC)
    assert kept(select_backups(backups, policy(daily=2, zone=BERLIN), now)) == {
        "evening": ["daily 2026-03-28"], "night": ["last 1", "daily 2026-03-29"]}
    assert kept(select_backups(backups, policy(daily=2, zone=UTC), now)) == {
        "early": ["daily 2026-03-27"], "night": ["last 1", "daily 2026-03-28"]}


def test_newest_means_finished_last():
    """A long backup that started first but finished last is the newest; the output keeps
    the input's order."""
    noon = datetime(2026, 5, 4, 12, tzinfo=UTC)
    backups = [summary("long", noon + timedelta(hours=5), start_time=noon),
               summary("short", noon + timedelta(hours=2), start_time=noon + timedelta(hours=1))]
    verdicts = select_backups(backups, policy(daily=1), noon + timedelta(hours=6))
    assert [(verdict.backup_id, verdict.keep) for verdict in verdicts] == [("long", True), ("short", False)]


# --- backups: chains of incrementals ---------------------------------------------------


def test_a_kept_incremental_keeps_every_ancestor():
    backups = daily_chain({"a": (), "b": ("a",), "c": ("a", "b"), "d": ()})
    now = backups[-1].stop_time
    # keep_last 2 keeps c and d; c needs b and a.
    assert kept(select_backups(backups, policy(keep_last=2), now)) == {
        "a": ["ancestor of c"], "b": ["ancestor of c"], "c": ["last 2"], "d": ["last 2"]}
    # Only d (a full): the chain goes whole.
    assert kept(select_backups(backups, policy(keep_last=1), now)) == {"d": ["last 1"]}


def test_an_ancestor_names_a_few_of_its_kept_descendants():
    links = {"full": ()} | {f"i{n}": ("full", *[f"i{k}" for k in range(n)]) for n in range(5)}
    backups = daily_chain(links)
    reasons = kept(select_backups(backups, policy(keep_last=5), backups[-1].stop_time))
    assert reasons["full"] == ["ancestor of i0, i1, i2 and 2 more"]
    assert reasons["i0"] == ["last 5", "ancestor of i1, i2, i3 and 1 more"]
    assert reasons["i3"] == ["last 5", "ancestor of i4"]


def test_calendar_rules_count_incrementals_like_fulls():
    """A weekly full and daily incrementals: each day's backup is its incremental, the
    point it restores to being its own stop time."""
    backups = daily_chain({"1mon": (), "2tue": ("1mon",), "3wed": ("1mon", "2tue"), "4thu": ("1mon", "2tue", "3wed")})
    assert kept(select_backups(backups, policy(daily=2), backups[-1].stop_time)) == {
        "1mon": ["ancestor of 3wed, 4thu"], "2tue": ["ancestor of 3wed, 4thu"],
        "3wed": ["daily 2026-09-03", "ancestor of 4thu"], "4thu": ["last 1", "daily 2026-09-04"]}


def test_a_broken_incremental_is_kept_by_no_rule():
    """Its parent is gone: it restores nothing, so the newest usable backup is the newest."""
    backups = daily_chain({"a": (), "c": ("a", "b")})  # b is not in the archive
    assert kept(select_backups(backups, policy(keep_last=1, daily=3), backups[-1].stop_time)) == {
        "a": ["last 1", "daily 2026-09-01"]}


def test_what_is_held_keeps_its_ancestors():
    backups = daily_chain({"a": (), "b": ("a",), "c": ()})
    verdicts = select_backups(backups, policy(keep_last=1), backups[-1].stop_time, held={"b": ["leased by r"]})
    assert kept(verdicts) == {"a": ["ancestor of b"], "b": ["leased by r"], "c": ["last 1"]}


def test_no_backups_no_verdicts():
    assert select_backups([], policy(daily=7, window=timedelta(days=7)), SEPTEMBER) == []


# --- the policy from the config ---------------------------------------------------------


def test_the_policy_from_the_config_and_its_description():
    rules = RetentionPolicy.from_config(RetentionConfig(keep_last=2, daily=7, weekly=4, window="2w",
                                                        timezone="Europe/Berlin"))
    assert rules == policy(keep_last=2, daily=7, weekly=4, window=timedelta(days=14), zone=BERLIN)
    assert rules.describe() == "last 2, 7 daily, 4 weekly, window 14d"
    assert RetentionPolicy.from_config(RetentionConfig(monthly=12)).describe() == "last 1, 12 monthly"
    assert isinstance(RetentionPolicy.from_config(RetentionConfig()).zone, HostZone)
    with pytest.raises(ConfigError, match="retention.window"):
        RetentionPolicy.from_config(RetentionConfig(window="a week"))


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(days=7), "7d"), (timedelta(hours=36), "36h"), (timedelta(minutes=90), "90m"),
    (timedelta(seconds=45), "45s"), (timedelta(seconds=1.5), "1.5s"),
])
def test_durations_are_shown_in_their_largest_exact_unit(duration, text):
    assert show_duration(duration) == text


@contextmanager
def host_zone(name: str) -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@settings(max_examples=300, deadline=None)
@given(st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC)))
@example(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))  # 02:30 summer time...
@example(datetime(2026, 10, 25, 1, 30, tzinfo=UTC))  # ...and 02:30 again, winter time
@example(datetime(2026, 3, 29, 1, 30, tzinfo=UTC))  # 03:30, just after 02:00 became 03:00
def test_the_host_zone_follows_the_host_clock_through_daylight_saving(moment):
    with host_zone("Europe/Berlin"):
        local = moment.astimezone(HostZone())
    expected = moment.astimezone(BERLIN)
    assert (local.replace(tzinfo=None), local.fold) == (expected.replace(tzinfo=None), expected.fold)
    with host_zone("Europe/Berlin"):
        assert local.utcoffset() == expected.utcoffset()
        assert local.astimezone(UTC) == moment


# --- WAL --------------------------------------------------------------------------------


def step(timeline: int, begin: int, end: int | None) -> TimelineStep:
    return TimelineStep(timeline=timeline, begin=Lsn(begin), end=None if end is None else Lsn(end))


class TimelineTree:
    """Timelines as PostgreSQL makes them: each new one branches off an older one at a
    switch point past where that one began."""

    def __init__(self) -> None:
        self.paths: dict[int, list[TimelineStep]] = {1: [step(1, 0, None)]}

    def branch(self, parent: int, switch: int) -> int:
        timeline = max(self.paths) + 1
        *before, last = self.paths[parent]
        assert last.begin < switch
        self.paths[timeline] = [*before, step(parent, last.begin, switch), step(timeline, switch, None)]
        return timeline

    def begin(self, timeline: int) -> int:
        return self.paths[timeline][-1].begin


def at(segno: int, offset: int = 100) -> int:
    return segno * SEGMENT_SIZE + offset


@st.composite
def histories_and_keepers(draw) -> tuple[dict[int, list[TimelineStep]], list[BackupSummary], bool]:
    """Timeline trees with backups on their timelines; or, in a damaged archive, history
    files that disagree (each timeline's path drawn on its own)."""
    tree = TimelineTree()
    for _ in range(draw(st.integers(0, 5))):
        parent = draw(st.sampled_from(sorted(tree.paths)))
        segments_later = draw(st.integers(0, 8))  # 0: in the segment where the parent began
        tree.branch(parent, tree.begin(parent) + segments_later * SEGMENT_SIZE + draw(st.integers(1, SEGMENT_SIZE - 1)))
    consistent = draw(st.booleans())
    paths = tree.paths if consistent else {timeline: disagreeing_path(draw, timeline) for timeline in tree.paths}
    keepers = []
    for number in range(draw(st.integers(0, 4))):
        # Somewhere on some timeline's path.
        on = draw(st.sampled_from(draw(st.sampled_from(list(paths.values())))))
        end = on.begin + 12 * SEGMENT_SIZE if on.end is None else on.end
        start = draw(st.integers(on.begin, end - 1))
        keepers.append(summary(f"k{number}", SEPTEMBER, timeline=on.timeline, start_lsn=start))
    return paths, keepers, consistent


def disagreeing_path(draw, timeline: int) -> list[TimelineStep]:
    older = draw(st.permutations(range(1, timeline)))
    ancestors = older[: draw(st.integers(0, len(older)))]
    switch_segments = draw(st.sets(st.integers(1, 30), min_size=len(ancestors), max_size=len(ancestors)))
    switches = sorted(at(segno, draw(st.integers(0, SEGMENT_SIZE - 1))) for segno in switch_segments)
    begins = [0, *switches]
    return [step(tl, begin, end) for tl, begin, end in zip([*ancestors, timeline], begins, [*switches, None],
                                                             strict=True)]


def is_kept(ranges: dict[int, list[tuple[int, int | None]]], timeline: int, segno: int) -> bool:
    return any(first <= segno and (last is None or segno <= last) for first, last in ranges.get(timeline, []))


@settings(max_examples=300, deadline=None)
@given(histories_and_keepers())
def test_wal_is_kept_exactly_where_replay_from_a_kept_backup_reads_it(drawn):
    paths, keepers, consistent = drawn
    ranges = wal_to_keep(paths, keepers, SEGMENT_SIZE)
    # Past every switch and every backup's start, nothing changes any more.
    horizon = max([step.begin // SEGMENT_SIZE for path in paths.values() for step in path]
                  + [backup.start_lsn // SEGMENT_SIZE for backup in keepers]) + 2
    needed = set()
    for path in paths.values():
        for backup in keepers:
            if on_path(path, backup):
                first = SegmentName.parse(backup.first_segment, SEGMENT_SIZE).segno
                needed |= {(serving_timeline(path, segno, SEGMENT_SIZE), segno) for segno in range(first, horizon + 1)}
    for timeline in paths:
        for segno in range(horizon + 1):
            assert is_kept(ranges, timeline, segno) == ((timeline, segno) in needed), (timeline, segno)
    for timeline, spans in ranges.items():
        assert spans, timeline
        # Sorted, disjoint and merged; only the last may run on to the newest WAL.
        for (first, last), (following, _) in zip(spans, spans[1:], strict=False):
            assert last is not None and first <= last < following - 1
        assert (spans[-1][1] is None) == is_kept(ranges, timeline, horizon)
        if consistent:
            # Every backup's replay runs on to the newest WAL of its timeline's descendants.
            assert len(spans) == 1 and spans[0][1] is None


def test_wal_after_a_branch():
    """Timeline 2 branches off timeline 1 in segment 10; A started on 1 before the
    branch, B on 1 after it, C on 2."""
    tree = TimelineTree()
    tree.branch(1, at(10, 500))
    a = summary("A", SEPTEMBER, timeline=1, start_lsn=at(3))
    b = summary("B", SEPTEMBER, timeline=1, start_lsn=at(12))
    c = summary("C", SEPTEMBER, timeline=2, start_lsn=at(15))
    # A restores along both: timeline 1 onward, and 1 up to the branch then 2, whose
    # segment 10 holds timeline 1's WAL up to the switch.
    assert wal_to_keep(tree.paths, [a], SEGMENT_SIZE) == {1: [(3, None)], 2: [(10, None)]}
    # Without A, timeline 1's WAL before B goes, and timeline 2's before C.
    assert wal_to_keep(tree.paths, [b, c], SEGMENT_SIZE) == {1: [(12, None)], 2: [(15, None)]}
    # C alone holds nothing of timeline 1: its replay starts on 2.
    assert wal_to_keep(tree.paths, [c], SEGMENT_SIZE) == {2: [(15, None)]}
    assert wal_to_keep(tree.paths, [], SEGMENT_SIZE) == {}


def test_wal_of_a_branch_of_a_branch():
    """3 branches off 2 in segment 20: A (on 1) needs a stretch of every timeline."""
    tree = TimelineTree()
    tree.branch(1, at(10))
    tree.branch(2, at(20))
    a = summary("A", SEPTEMBER, timeline=1, start_lsn=at(3))
    d = summary("D", SEPTEMBER, timeline=2, start_lsn=at(22))  # after 3 branched: not on 3's path
    assert wal_to_keep(tree.paths, [a], SEGMENT_SIZE) == {1: [(3, None)], 2: [(10, None)], 3: [(20, None)]}
    assert wal_to_keep(tree.paths, [d], SEGMENT_SIZE) == {2: [(22, None)]}
    # A backup on 2 before 3 branched: 2's files from it, then 3's from the switch.
    e = summary("E", SEPTEMBER, timeline=2, start_lsn=at(14))
    assert wal_to_keep(tree.paths, [e, d], SEGMENT_SIZE) == {2: [(14, None)], 3: [(20, None)]}


def test_a_backup_in_the_switch_segment_before_the_switch():
    """B started on timeline 1 in segment 10 just before 2 branched off in that segment:
    it is on both paths, and timeline 2's replay reads segment 10 from 2's copy."""
    tree = TimelineTree()
    tree.branch(1, at(10, 900))
    b = summary("B", SEPTEMBER, timeline=1, start_lsn=at(10, 100))
    assert wal_to_keep(tree.paths, [b], SEGMENT_SIZE) == {1: [(10, None)], 2: [(10, None)]}


def test_wal_of_history_files_that_disagree():
    """A damaged archive whose history files each tell timeline 2 a different story:
    timeline 2's WAL is needed in stretches, merged where they meet, and the newest WAL
    from where a backup on 2 itself starts."""
    paths = {1: [step(1, 0, None)], 2: [step(1, 0, at(10)), step(2, at(10), None)]}
    for timeline, (begins, ends) in {3: (14, 16), 4: (18, 20), 5: (17, 19)}.items():
        paths[timeline] = [step(1, 0, at(begins)), step(2, at(begins), at(ends)), step(timeline, at(ends), None)]
    k = summary("K", SEPTEMBER, timeline=1, start_lsn=at(12))  # on 1 after 2's own switch: not on 2's path
    assert wal_to_keep(paths, [k], SEGMENT_SIZE)[2] == [(14, 15), (17, 19)]
    later = summary("L", SEPTEMBER, timeline=2, start_lsn=at(30))
    assert wal_to_keep(paths, [k, later], SEGMENT_SIZE)[2] == [(14, 15), (17, 19), (30, None)]
    earlier = summary("E", SEPTEMBER, timeline=2, start_lsn=at(11))
    assert wal_to_keep(paths, [k, later, earlier], SEGMENT_SIZE)[2] == [(11, None)]
    paths[6] = [step(1, 0, at(16)), step(2, at(16), at(17)), step(6, at(17), None)]  # reads 2's segment 16
    assert wal_to_keep(paths, [k], SEGMENT_SIZE)[2] == [(14, 19)]

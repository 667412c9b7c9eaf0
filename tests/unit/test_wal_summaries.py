"""What backup/changes.py makes of WAL summaries without a server: whether a set of
summary files covers a range (fail closed on any gap), how summaries merge, and that
rows the server returns are checked (postgres/summaries.py). The real thing, on a real
PostgreSQL 18, is tests/integration/test_changed_blocks.py."""

from __future__ import annotations

import struct

import pytest

from pitrkit.backup import changes
from pitrkit.backup.changes import ForkChanges, RelationFork
from pitrkit.postgres import summaries
from pitrkit.postgres.summaries import ForkSummary, SummaryUnreadable, WalSummary
from pitrkit.postgres.wal import Lsn


def lsn(value: int) -> Lsn:
    return Lsn(value)


def summary(timeline: int, start: int, end: int) -> WalSummary:
    return WalSummary(timeline, lsn(start), lsn(end))


AVAILABLE = [summary(1, 100, 200), summary(1, 200, 350), summary(1, 350, 400), summary(2, 300, 500),
             summary(2, 600, 700)]


@pytest.mark.parametrize(("timeline", "begin", "end", "used"), [
    (1, 100, 400, [summary(1, 100, 200), summary(1, 200, 350), summary(1, 350, 400)]),
    # Summaries reaching past the range's edges are used whole (they may only add blocks).
    (1, 150, 360, [summary(1, 100, 200), summary(1, 200, 350), summary(1, 350, 400)]),
    (1, 200, 350, [summary(1, 200, 350)]),
    (1, 210, 220, [summary(1, 200, 350)]),
    (2, 300, 500, [summary(2, 300, 500)]),
])
def test_covered_ranges_use_exactly_the_summaries_needed(timeline, begin, end, used):
    assert changes._covering(AVAILABLE, timeline, lsn(begin), lsn(end)) == used


@pytest.mark.parametrize(("timeline", "begin", "end", "reason"), [
    (1, 50, 200, "have a gap: nothing summarizes the WAL from 0/32"),  # before the oldest
    (1, 100, 401, "have a gap: nothing summarizes the WAL from 0/190"),  # past the newest
    (2, 300, 650, "have a gap: nothing summarizes the WAL from 0/1F4"),  # a hole in the middle
    (3, 100, 200, "there are no WAL summaries on timeline 3"),  # another timeline's do not count
    (1, 500, 600, "there are no WAL summaries on timeline 1"),
])
def test_a_range_not_covered_completely_is_refused_with_where(timeline, begin, end, reason):
    answer = changes._covering(AVAILABLE, timeline, lsn(begin), lsn(end))
    assert isinstance(answer, str) and reason in answer


def test_merged_summaries_name_forks_limits_and_new_databases():
    merged = changes._merge([
        ForkSummary(1663, 5, 16384, 0, None, [1, 7]),
        ForkSummary(1663, 5, 16384, 2, 0, []),  # a truncated visibility map
        ForkSummary(1663, 16400, 0, 0, 0, []),  # CREATE DATABASE (either strategy) or DROP DATABASE
        ForkSummary(16385, 16401, 0, 0, 0, []),  # the same in a tablespace
        ForkSummary(1664, 0, 1262, 0, None, [0]),
    ], 3)
    assert merged.forks == {RelationFork(1663, 5, 16384, 0): ForkChanges([1, 7], None),
                            RelationFork(1663, 5, 16384, 2): ForkChanges([], 0),
                            RelationFork(1664, 0, 1262, 0): ForkChanges([0], None)}
    assert merged.new_databases == {(1663, 16400), (16385, 16401)}
    assert merged.summary_files == 3


def test_a_forks_blocks_of_one_segment():
    fork = ForkChanges([0, 5, 131071, 131072, 131080, 262144], None)
    assert fork.between(0, 131072) == [0, 5, 131071]
    assert fork.between(131072, 262144) == [131072, 131080]
    assert fork.between(262144, 393216) == [262144]
    assert fork.between(393216, 524288) == []


def packed(*blocks: int) -> bytes:
    return b"".join(struct.pack(">q", block) for block in blocks)


def test_a_row_from_the_server_is_decoded():
    assert summaries._fork((1663, 5, 16384, 0, 3, packed(9, 1, 1, 4294967294))) == \
        ForkSummary(1663, 5, 16384, 0, 3, [1, 9, 4294967294])
    assert summaries._fork((1663, 5, 0, 0, 0, b"")) == ForkSummary(1663, 5, 0, 0, 0, [])


@pytest.mark.parametrize("row", [
    (1663, 5, 16384, 0, None, packed(-1)),  # a negative block
    (1663, 5, 16384, 0, None, packed(4294967295)),  # InvalidBlockNumber
    (1663, 5, 16384, 0, -2, b""),  # a negative limit
    (1663, 5, 16384, 0, 1 << 32, b""),
    (1663, 5, 16384, 4, None, b""),  # no fork 4
    (1663, 5, 16384, -1, None, b""),
    (0, 5, 16384, 0, None, b""),  # no tablespace 0
    (1663, -5, 16384, 0, None, b""),
    (1663, 5, 1 << 32, 0, None, b""),
    (1663, 5, 0, 2, 0, b""),  # relfilenode 0 is only ever the database's main fork
    (1663, 5, 16384, 0, None, b"\x00" * 7),  # not whole int8s
    (1663, 5, 16384, 0, None, "0"),
    (1663, 5, "16384", 0, None, b""),
])
def test_impossible_rows_are_refused(row):
    with pytest.raises(SummaryUnreadable):
        summaries._fork(row)


def test_no_summaries_before_17_and_no_impossible_timelines():
    # Refused before any query: there is no server behind None.
    path = [(1, lsn(100), lsn(200))]
    assert changes.summarized_changes(None, 16, path, 1.0) == \
        changes.NotSummarized("PostgreSQL 16 has no WAL summaries (they came with PostgreSQL 17)")
    refused = changes.summarized_changes(None, 18, [(0, lsn(100), lsn(200))], 1.0)
    assert isinstance(refused, changes.NotSummarized) and "timeline 0, which cannot exist" in refused.reason

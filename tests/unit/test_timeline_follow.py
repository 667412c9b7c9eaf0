"""Where `wal-receive` resumes after a failover (pitrkit/wal/timeline_follow.py), and the
multi-host conninfo it follows the primary with."""

from __future__ import annotations

import pytest

from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.wal.receive import _primary_of_several
from pitrkit.wal.timeline_follow import Switch, newest_wal, plan

SEGMENT = 16 << 20
HISTORY_2 = "1\t0/55BE118\tno recovery target specified\n"
HISTORY_3 = HISTORY_2 + "2\t0/7000100\tno recovery target specified\n"


def test_newest_wal_is_where_pg_receivewal_resumes():
    names = ["000000010000000000000006", "000000010000000000000007.partial", "00000002.history",
             "pitrkit-receive.json", ".000000010000000000000008.tmp"]
    assert newest_wal(names, SEGMENT) == SegmentName(1, 7, SEGMENT)
    assert newest_wal(["000000010000000000000007", "000000020000000000000007.partial"], SEGMENT) == \
        SegmentName(2, 7, SEGMENT)
    assert newest_wal(["pitrkit-receive.json"], SEGMENT) is None


def test_a_spool_ahead_of_the_fork_restarts_at_the_forks_segment_on_the_next_timeline():
    names = ["000000010000000000000007.partial"]
    assert plan(names, 2, HISTORY_2, SEGMENT) == Switch(1, Lsn.parse("0/55BE118"), 2, SegmentName(2, 5, SEGMENT))
    # Timeline 2 passed by: streaming goes through it, from timeline 1's fork.
    assert plan(names, 3, HISTORY_3, SEGMENT) == Switch(1, Lsn.parse("0/55BE118"), 2, SegmentName(2, 5, SEGMENT))


def test_nothing_to_do_on_the_same_timeline_or_an_empty_spool():
    assert plan(["000000020000000000000007.partial"], 2, HISTORY_2, SEGMENT) is None
    assert plan([], 2, HISTORY_2, SEGMENT) is None
    # The server on an older timeline than the spool's (the old primary back): pg_receivewal refuses.
    assert plan(["000000020000000000000007.partial"], 1, None, SEGMENT) is None


def test_a_server_that_does_not_descend_from_the_spools_timeline_is_refused():
    with pytest.raises(PitrkitError, match="does not pass through timeline 2"):
        plan(["000000020000000000000007.partial"], 3, "1\t0/3000000\tx\n", SEGMENT)
    with pytest.raises(PitrkitError, match="history"):
        plan(["000000010000000000000007.partial"], 2, "not a history", SEGMENT)


def test_several_hosts_follow_the_primary_unless_told_otherwise():
    assert _primary_of_several("host=a,b port=1,2") == "host=a,b port=1,2 target_session_attrs=primary"
    assert _primary_of_several("host=a,b target_session_attrs=any") == "host=a,b target_session_attrs=any"
    assert _primary_of_several("host=a port=1") == "host=a port=1"
    assert "target_session_attrs=primary" in _primary_of_several("postgresql://u@a:1,b:2/postgres")
    with pytest.raises(ConfigError):
        _primary_of_several("host")

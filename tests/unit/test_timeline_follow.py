"""Where `wal-receive` resumes after a failover (pitrkit/wal/timeline_follow.py), and the
multi-host conninfo it follows the primary with."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

import pytest

from pitrkit import config
from pitrkit.errors import ConfigError, PitrkitError
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.storage.repositories import open_all
from pitrkit.wal.push import push
from pitrkit.wal.receive import Receiver, _primary_of_several
from pitrkit.wal.receiver_health import ServerIdentity, SlotState
from pitrkit.wal.timeline_follow import Switch, newest_wal, plan
from tests.unit.segments import init_archive, segment

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


# --- the sidecar's switch, on a real archive, without a server ---------------------------------


def spool_receiver(tmp_path: Path, monkeypatch, timeline: int = 2, history: str = HISTORY_2) -> Receiver:
    root = tmp_path / "archive"
    root.mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = config.parse(tomllib.loads(f'[repository]\nurl = "file://{root}"\nretries = 0\n'
                                          f'[receive]\nspool = "{spool}"'), "test.toml")
    repositories = open_all(settings)
    init_archive(repositories[0].archive)
    receiver = Receiver(settings, repositories, spool, Path("/bin/pg_receivewal"))
    identity = ServerIdentity(host="db2:5432", timeline=timeline, history=history)
    monkeypatch.setattr(receiver._session, "identify", lambda: identity)
    return receiver


def slot_at(lsn: str) -> SlotState:
    return SlotState(name="pitrkit", active=False, restart_lsn=Lsn.parse(lsn), wal_status="reserved",
                     retained_bytes=0, safe_wal_size=None)


def stored(receiver: Receiver, name: str) -> bytes:
    return receiver._repositories[0].archive.read_wal(name)


def test_the_old_timeline_is_archived_and_streaming_restarts_at_the_fork(tmp_path, monkeypatch, caplog):
    receiver = spool_receiver(tmp_path, monkeypatch)
    spool = receiver._spool
    old = segment(7, filler=b"the old primary's last commits")
    (spool / "000000010000000000000007.partial").write_bytes(old)
    receiver._note_archived(Lsn.parse("0/7800000"))  # the old timeline, archived beyond the fork
    with caplog.at_level(logging.INFO, logger="pitrkit.wal.receive"):
        assert receiver._follow_timeline(slot_at("0/55BE148"))
    # Of the new timeline, only what precedes the fork is archived: the old timeline's
    # end, further on, is not a position on it (no lag would show until it is passed).
    assert receiver.health().last_archived_lsn == Lsn.parse("0/55BE118")
    assert stored(receiver, "000000010000000000000007.partial") == old
    assert sorted(os.listdir(spool)) == ["000000020000000000000005.partial"]
    assert (spool / "000000020000000000000005.partial").stat().st_size == 0  # pg_receivewal fills it
    switch = next(record for record in caplog.records if record.getMessage() == "timeline-switch")
    assert switch.fields["start"] == SegmentName(2, 5, SEGMENT)  # type: ignore[attr-defined]
    assert receiver.health().following == "db2:5432" and receiver.health().timeline == 2
    # Started again on the new timeline: nothing more to do.
    assert receiver._follow_timeline(slot_at("0/55BE148"))
    assert sorted(os.listdir(spool)) == ["000000020000000000000005.partial"]


def test_a_slot_made_too_late_says_what_the_archive_may_lack(tmp_path, monkeypatch, caplog):
    receiver = spool_receiver(tmp_path, monkeypatch)
    (receiver._spool / "000000010000000000000007.partial").write_bytes(segment(7, filler=b"commits"))
    with caplog.at_level(logging.INFO, logger="pitrkit.wal.receive"):
        assert receiver._follow_timeline(slot_at("0/9000028"))
    assert os.listdir(receiver._spool) == []  # pg_receivewal starts from the slot
    gap = next(record for record in caplog.records if record.getMessage() == "timeline-gap")
    assert gap.levelno == logging.ERROR and "0/55BE118" in gap.fields["error"]  # type: ignore[attr-defined]


def test_an_old_timeline_file_the_archive_refuses_stays_and_streaming_waits(tmp_path, monkeypatch):
    receiver = spool_receiver(tmp_path, monkeypatch)
    name = "000000010000000000000007.partial"
    push(receiver._repositories[0].archive, write(tmp_path / name, segment(7, filler=b"one server's WAL")))
    (receiver._spool / name).write_bytes(segment(7, filler=b"another's WAL"))
    assert not receiver._follow_timeline(slot_at("0/55BE148"))
    assert os.listdir(receiver._spool) == [name]
    assert receiver.health().last_error is not None and "diverges" in receiver.health().last_error


def test_a_server_of_another_lineage_is_not_streamed_from(tmp_path, monkeypatch, caplog):
    receiver = spool_receiver(tmp_path, monkeypatch, timeline=3, history="1\t0/3000000\tx\n")
    (receiver._spool / "000000020000000000000007.partial").write_bytes(segment(7, filler=b"x", timeline=2))
    with caplog.at_level(logging.INFO, logger="pitrkit.wal.receive"):
        assert not receiver._follow_timeline(slot_at("0/3000000"))
    assert [r.getMessage() for r in caplog.records] == ["timeline-refused"]
    assert os.listdir(receiver._spool) == ["000000020000000000000007.partial"]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

"""Look-ahead bookkeeping (pitrkit/wal/lookahead.py): what may be taken, and when not."""

from __future__ import annotations

import threading

import pytest

from pitrkit.wal import lookahead
from pitrkit.wal.lookahead import Ahead, file_stamp, ready_after, segments_after


@pytest.fixture
def ahead():
    pool = Ahead(1, "test")
    yield pool
    pool.close(wait=True)


def test_result_is_taken_once(ahead):
    ahead.schedule("a", 1, lambda: "done")
    future = ahead.take("a", 1)
    assert future is not None and future.result() == "done"
    assert ahead.take("a", 1) is None


def test_result_from_another_stamp_is_not_used(ahead):
    ahead.schedule("a", 1, lambda: "from old content")
    assert ahead.take("a", 2) is None
    assert ahead.take("a", 1) is None  # and it is gone


def test_stale_result_is_not_used(ahead, monkeypatch):
    ahead.schedule("a", None, lambda: "old")
    monkeypatch.setattr(lookahead, "FRESH_FOR", -1.0)
    assert ahead.take("a", None) is None


def test_scheduling_twice_runs_once(ahead):
    runs = []
    gate = threading.Event()
    ahead.schedule("a", None, lambda: (gate.wait(5), runs.append(1)))
    ahead.schedule("a", None, lambda: runs.append(2))
    assert ahead.pending() == 1
    gate.set()
    ahead.take("a", None).result()
    assert runs == [1]


def test_failure_is_kept_for_the_caller(ahead):
    def fail():
        raise RuntimeError("storage down")

    ahead.schedule("a", None, fail)
    with pytest.raises(RuntimeError):
        ahead.take("a", None).result()


def test_ready_after(tmp_path):
    status = tmp_path / "archive_status"
    status.mkdir()
    for mark in ["000000010000000000000001.done", "000000010000000000000002.ready",
                 "000000010000000000000003.ready", "000000010000000000000005.ready",
                 "00000002.history.ready", "000000010000000000000004.00000028.backup.ready",
                 "000000010000000000000006.partial.ready", "junk.ready",
                 "000000010000000000000007.ready"]:
        (status / mark).touch()
    current = tmp_path / "000000010000000000000002"
    assert [p.name for p in ready_after(current, 2)] == ["000000010000000000000003", "000000010000000000000005"]
    assert [p.name for p in ready_after(current, 10)] == [
        "000000010000000000000003", "000000010000000000000005", "000000010000000000000007"]
    assert ready_after(tmp_path / "archive_status" / "x", 3) == []  # no archive_status there


def test_segments_after_crosses_the_log_boundary_and_respects_memory():
    assert segments_after("0000000200000000000000FE", 16 << 20, 3) == [
        "0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]
    assert len(segments_after("000000010000000000000001", 1 << 30, 8)) == 1  # 1 GiB segments: one ahead
    assert len(segments_after("000000010000000000000001", 16 << 20, 100)) == lookahead.FETCH_AHEAD_BYTES // (16 << 20)
    assert segments_after("00000002.history", 16 << 20, 3) == []
    assert segments_after("not-a-name", 16 << 20, 3) == []


def test_file_stamp_changes_with_content(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"one")
    first = file_stamp(path)
    path.write_bytes(b"three")
    assert file_stamp(path) != first
    assert file_stamp(tmp_path / "missing") is None


def test_segments_after_stop_at_the_plans_last_segment():
    assert segments_after("0000000100000000000000FE", 16 << 20, 4, "000000010000000100000000") == [
        "0000000100000000000000FF", "000000010000000100000000"]
    assert segments_after("000000010000000000000003", 16 << 20, 4, "000000010000000000000003") == []

"""The drill's pure parts: the random point of the restorable range, the report's id,
and the stored report checked as it is decoded (tests/integration/test_drill.py runs
drills on real PostgreSQL)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest

from pitrkit.catalog.backups import backups
from pitrkit.catalog.documents import DrillReport
from pitrkit.cli import main
from pitrkit.errors import RefusedError
from pitrkit.ops.drill import new_drill_id, random_point
from pitrkit.restore.plan import make_plan
from pitrkit.restore.targets import Target
from pitrkit.storage import codec
from tests.unit.synthetic_archive import SEGMENT_SIZE, SyntheticArchive, lsn

LATEST = Target(kind="latest", text="latest")


@pytest.fixture
def store(tmp_path) -> SyntheticArchive:
    synthetic = SyntheticArchive(tmp_path / "archive")
    synthetic.segments(1, 1, 20)
    return synthetic


def test_a_random_point_lies_between_the_oldest_backup_and_the_last_segment(store):
    store.backup("b1", 1, 2, 3)
    store.backup("b2", 1, 10, 11)
    plan = make_plan(store.archive, LATEST)
    oldest = min(each.stop_lsn for each in backups(store.archive))
    points = {random_point(plan, backups(store.archive), SEGMENT_SIZE, seed) for seed in range(200)}
    assert None not in points
    assert all(oldest <= point < lsn(20) for point in points if point is not None)
    # Drawn over the whole range, not near one end: both halves are hit.
    middle = (oldest + lsn(20)) // 2
    assert any(point < middle for point in points if point) and any(point >= middle for point in points if point)


def test_no_random_point_when_the_range_is_empty(store):
    store.backup("b1", 1, 19, 20)
    plan = make_plan(store.archive, LATEST)
    assert random_point(plan, backups(store.archive), SEGMENT_SIZE, 1) is None


def test_drill_ids_sort_as_the_drills_ran():
    first = new_drill_id(datetime(2026, 12, 7, 1, 2, 3, 4000, tzinfo=UTC))
    second = new_drill_id(datetime(2026, 12, 7, 1, 2, 3, 5000, tzinfo=UTC))
    assert first.startswith("20261207T010203004Z-") and first < second


def report(**fields) -> bytes:
    """A stored report's bytes, with `fields` forged in."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    document = json.loads(codec.encode(DrillReport(
        drill_id="20261207T000000000Z-0123abcd", host="h", pitrkit_version="1", started_at=now, finished_at=now,
        result="passed", target_kind="latest", backup_id="b1", rto_seconds=1.5)))
    document.update(fields)
    return json.dumps(document).encode()


def test_a_stored_report_decodes():
    assert codec.decode(report(), DrillReport, "drills/x.json").rto_seconds == 1.5


@pytest.mark.parametrize("fields", [{"drill_id": "../../x"}, {"drill_id": "20261207T000000000Z-0123abcd/.."},
                                    {"backup_id": "../b"}, {"rto_seconds": -1}, {"rto_seconds": 1e300},
                                    {"wal_replayed_bytes": -5}, {"result": "maybe"}, {"reason": "x" * 5000}])
def test_a_forged_report_is_refused(fields):
    with pytest.raises(ValueError):
        codec.decode(report(**fields), DrillReport, "drills/x.json")


def test_a_drill_as_root_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (tmp_path / "archive").mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\n')
    assert main(["--config", str(config), "drill"]) == RefusedError.exit_code
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("pitrkit: drill must not run as root")


def test_backup_and_random_are_one_choice(capsys):
    assert main(["drill", "--backup", "x", "--random"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "pitrkit: drill: argument --random: not allowed with argument --backup"


def test_a_scratch_directory_without_room_fails_the_drill_before_it_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    store = SyntheticArchive(tmp_path / "archive")
    store.segments(1, 1, 20)
    store.backup("b1", 1, 2, 3)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = tmp_path / "pitrkit.toml"
    # No host has an exbibyte free.
    config.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n'
                      f'[drill]\nscratch = "{scratch}"\nmin_free = "1048576TB"\nionice = "none"\nnice = 0\n')
    assert main(["--config", str(config), "drill"]) == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("pitrkit: drill ") and "not enough free space in" in line, line
    assert list(scratch.iterdir()) == []
    (stored,) = (store.root / "drills").iterdir()
    report = codec.decode(stored.read_bytes(), DrillReport, "drills")
    assert report.result == "failed" and report.backup_id == "b1" and report.rto_seconds is None

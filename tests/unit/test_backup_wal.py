"""backup-push archives its last WAL segments from pg_wal beside the archiver
(pitrkit/backup/push.py, push_finished_wal): only segments the server has finished
(`.ready`), through wal-push's own checks, never over what the archive holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit.backup.push import push_finished_wal
from pitrkit.config import load
from pitrkit.postgres.wal import SegmentName
from pitrkit.storage.archive import Archive
from pitrkit.wal.fetch import read_for_recovery
from pitrkit.wal.push import push
from tests.unit.segments import SEG_16MIB, init_archive, segment

# The segment pg_backup_start switched away from, then the backup's own.
BEFORE, NAMES = "000000010000000000000001", ["000000010000000000000002", "000000010000000000000003",
                                             "000000010000000000000004"]


@pytest.fixture
def archive(tmp_path) -> Archive:
    (tmp_path / "archive").mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n')
    archived = Archive(load(config))
    init_archive(archived)
    return archived


@pytest.fixture
def pgdata(tmp_path) -> Path:
    wal = tmp_path / "pgdata" / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for segno, name in enumerate([BEFORE, *NAMES], start=1):
        (wal / name).write_bytes(segment(segno))
    return tmp_path / "pgdata"


def needed() -> list[SegmentName]:
    return [SegmentName.parse(name, SEG_16MIB) for name in NAMES]


def test_only_finished_segments_not_yet_archived_are_pushed(archive, pgdata):
    wal = pgdata / "pg_wal"
    push(archive, wal / BEFORE)  # the archiver delivers into this archive
    push(archive, wal / NAMES[0])  # archived already
    (wal / "archive_status" / f"{NAMES[0]}.done").touch()
    (wal / "archive_status" / f"{NAMES[1]}.ready").touch()
    # NAMES[2] has no mark: the server may still be writing it.
    assert push_finished_wal(archive, str(pgdata), needed()) == [NAMES[1]]
    assert read_for_recovery(archive, NAMES[1]).data == segment(3)
    with pytest.raises(Exception, match="not in the archive"):
        read_for_recovery(archive, NAMES[2])


def test_without_an_archiver_delivering_here_nothing_is_pushed(archive, pgdata):
    # archive_command fails, or archives elsewhere: the segment before the backup's is
    # not stored, and the backup must time out waiting, as without this help.
    for name in NAMES:
        (pgdata / "pg_wal" / "archive_status" / f"{name}.ready").touch()
    assert push_finished_wal(archive, str(pgdata), needed()) == []
    with pytest.raises(Exception, match="not in the archive"):
        read_for_recovery(archive, NAMES[0])


def test_a_segment_that_fails_the_checks_is_left_to_the_archiver(archive, pgdata):
    wal = pgdata / "pg_wal"
    push(archive, wal / BEFORE)
    (wal / NAMES[1]).write_bytes(segment(7))  # its page address is another segment's
    (wal / "archive_status" / f"{NAMES[1]}.ready").touch()
    assert push_finished_wal(archive, str(pgdata), needed()) == []
    with pytest.raises(Exception, match="not in the archive"):
        read_for_recovery(archive, NAMES[1])


def test_a_segment_archived_with_other_content_is_never_replaced(archive, pgdata, tmp_path):
    other = tmp_path / "other" / NAMES[1]
    other.parent.mkdir()
    other.write_bytes(segment(3, filler=b"the archive's own"))
    push(archive, other)
    push(archive, pgdata / "pg_wal" / BEFORE)
    (pgdata / "pg_wal" / "archive_status" / f"{NAMES[1]}.ready").touch()
    assert push_finished_wal(archive, str(pgdata), needed()) == []
    assert read_for_recovery(archive, NAMES[1]).data == other.read_bytes()

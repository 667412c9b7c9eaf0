"""Archive: the identity document `archive.json`, which only `pitrkit init` creates, and
its cache in long-lived processes."""

from __future__ import annotations

import pytest

from pitrkit.cli import main
from pitrkit.config import parse
from pitrkit.errors import NotInArchive
from pitrkit.storage import archive as archive_module
from pitrkit.storage.archive import Archive, ArchiveMissing
from pitrkit.wal.fetch import read_for_recovery
from pitrkit.wal.push import push
from tests.unit.segments import init_archive, segment

NAME = "000000010000000000000001"


@pytest.fixture
def archive(tmp_path) -> Archive:
    root = tmp_path / "archive"
    root.mkdir()
    archive = Archive(parse({"repository": {"url": f"file://{root}", "retries": 0}}, "test"))
    init_archive(archive)
    return archive


def test_a_wiped_archive_is_noticed_at_the_next_push_and_never_recreated(tmp_path, archive):
    """An agent lives for minutes and holds archive.json in memory; if the archive is
    wiped (or its file system unmounted) meanwhile, the next push must be refused, not
    served from the cached copy into an archive that no longer exists."""
    wal = tmp_path / NAME
    wal.write_bytes(segment(1))
    push(archive, wal)
    assert archive.identity().system_identifier  # cached now
    root = tmp_path / "archive"
    (root / "archive.json").unlink()

    second = tmp_path / "000000010000000000000002"
    second.write_bytes(segment(2))
    with pytest.raises(ArchiveMissing, match="pitrkit init"):
        push(archive, second)
    assert not (root / "archive.json").exists()
    assert not (root / "wal" / "0000000100000000" / second.name).exists()


def test_not_archived_is_answered_only_by_an_archive_that_is_there(tmp_path, archive):
    with pytest.raises(NotInArchive):
        read_for_recovery(archive, NAME)
    archive.identity()  # cached
    (tmp_path / "archive" / "archive.json").unlink()
    with pytest.raises(ArchiveMissing):
        read_for_recovery(archive, NAME)
    with pytest.raises(ArchiveMissing):
        read_for_recovery(archive, "00000002.history")


def test_the_cached_copy_serves_readers_within_the_ttl(tmp_path, archive):
    """Readers that need the segment size or the cipher for an object they found keep
    the copy: archive.json does not change, and a read per object would double the
    requests of a restore."""
    first = archive.identity()
    (tmp_path / "archive" / "archive.json").unlink()
    assert archive.identity() is first
    with pytest.raises(ArchiveMissing):
        archive.identity(fresh=True)


def test_an_archive_directory_that_does_not_exist_is_reported_at_once(tmp_path, capsys, monkeypatch):
    """Retrying cannot make a missing directory appear: one clear line, no five tries."""
    slept: list[float] = []
    monkeypatch.setattr(archive_module.time, "sleep", slept.append)
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path}/absent"\nretries = 4\n')
    assert main(["--config", str(config), "backup-list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pitrkit: ") and err.count("\n") == 1 and "attempts" not in err
    assert err.endswith(f" failed: archive directory {tmp_path}/absent does not exist: create it, owned by the OS "
                        "user PostgreSQL runs as, mode 0700 (or correct [repository] url; or mount its file system)\n")
    assert slept == []

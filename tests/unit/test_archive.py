"""Archive: the identity document's cache in long-lived processes."""

from __future__ import annotations

import pytest

from pitrkit import archive as archive_module
from pitrkit.archive import Archive
from pitrkit.cli import main
from pitrkit.config import parse
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.push import push
from tests.unit.segments import segment

NAME = "000000010000000000000001"


def test_a_wiped_archive_is_noticed_after_the_identity_ttl(tmp_path):
    """An agent lives for minutes; if its archive is wiped and re-created meanwhile, it
    must not keep pushing without an archive.json."""
    root = tmp_path / "archive"
    root.mkdir()
    archive = Archive(parse({"repository": {"url": f"file://{root}"}}, "test"))
    wal = tmp_path / NAME
    wal.write_bytes(segment(1))
    push(archive, wal)
    assert archive.identity().system_identifier
    (root / "archive.json").unlink()

    assert archive.identity().system_identifier  # within the TTL: the cached copy
    archive._identity_read_at -= archive_module.IDENTITY_TTL + 1
    with pytest.raises(ObjectNotFound):
        archive.identity()
    push(archive, wal)  # re-creates it
    assert (root / "archive.json").exists()


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

"""The built-in file:// backend: the conformance suite, plus what only a local file
system can show (durability mechanics, no stray files, URL forms)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitrkit.hookspecs import ObjectExists
from pitrkit.plugins.local import LocalStorage, parse_file_url
from pitrkit.storage_conformance import StorageConformance


class TestLocalStorage(StorageConformance):
    @pytest.fixture
    def storage(self, tmp_path):
        root = tmp_path / "archive"
        root.mkdir()
        return LocalStorage(root)

    @pytest.fixture
    def unreachable_storage(self, tmp_path):
        return LocalStorage(tmp_path / "not-mounted")


def test_put_leaves_no_temporary_files(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("wal/x/y", b"data")
    storage.put("wal/x/y", b"new", overwrite=True)
    with pytest.raises(ObjectExists):
        storage.put("wal/x/y", b"other")
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert names == ["wal", "wal/x", "wal/x/y"]


def test_temporary_files_are_not_listed(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("a", b"1")
    (tmp_path / ".a.123.tmp").write_bytes(b"half-written")
    assert [info.key for info in storage.list("")] == ["a"]


def test_objects_are_not_world_readable(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("wal/k", b"secret-ish")
    assert os.stat(tmp_path / "wal" / "k").st_mode & 0o007 == 0


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/../b", ".hidden", "a/.tmp"])
def test_invalid_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).put(key, b"x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("file:///var/lib/pitrkit", Path("/var/lib/pitrkit")), ("/srv/archive", Path("/srv/archive")),
     ("file://localhost/srv/a%20b", Path("/srv/a b")), ("gs://bucket/prefix", None)],
)
def test_parse_file_url(url, expected):
    assert parse_file_url(url) == expected


@pytest.mark.parametrize("url", ["file://relative/path", "file://otherhost/srv"])
def test_parse_file_url_refuses_non_local(url):
    with pytest.raises(ValueError):
        parse_file_url(url)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates entries for another owner")
def test_root_creates_files_and_folders_owned_by_the_archive_owner(tmp_path):
    # backup-push run as root must leave an archive that postgres (its owner) can read,
    # replace documents in and add to.
    root = tmp_path / "archive"
    root.mkdir()
    os.chown(root, 4321, 4322)
    storage = LocalStorage(root)
    storage.put("backups/20261126T010203Z/data/00000000", b"part")
    storage.put("catalog/backups.json", b"{}", overwrite=True)
    for path in ["backups", "backups/20261126T010203Z", "backups/20261126T010203Z/data",
                 "backups/20261126T010203Z/data/00000000", "catalog", "catalog/backups.json"]:
        status = (root / path).stat()
        assert (status.st_uid, status.st_gid) == (4321, 4322), path

"""The built-in file:// backend: the conformance suite, plus what only a local file
system can show (durability mechanics, no stray files, URL forms)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pitrkit.hookspecs import ObjectExists, StorageError
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


# -- containment: links inside the archive are never followed ------------------------------


@pytest.fixture
def outside(tmp_path):
    """A directory outside the archive, with a file a link inside the archive points at."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret").write_bytes(b"not the archive's")
    return place


def _entries(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"" for p in directory.rglob("*")}


def test_a_linked_folder_inside_the_archive_is_not_followed(tmp_path, outside):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "wal").symlink_to(outside)
    storage = LocalStorage(root)
    before = _entries(outside)
    for operation in (lambda: storage.get("wal/secret"), lambda: storage.stat("wal/secret"),
                      lambda: storage.put("wal/new", b"x"), lambda: storage.put("wal/secret", b"x", overwrite=True),
                      lambda: storage.delete("wal/secret"), lambda: storage.list("wal/"),
                      lambda: storage.list(""), lambda: storage.list_folder("wal/"),
                      lambda: storage.list_folder("")):
        with pytest.raises(StorageError, match="wal is a symbolic link"):
            operation()
    assert _entries(outside) == before


def test_a_link_deeper_in_a_key_is_not_followed(tmp_path, outside):
    root = tmp_path / "archive"
    storage = LocalStorage(root)
    root.mkdir()
    storage.put("backups/b1/manifest.json", b"{}")
    (root / "backups" / "b1" / "data").symlink_to(outside)
    with pytest.raises(StorageError, match="backups/b1/data is a symbolic link"):
        storage.get("backups/b1/data/secret")
    with pytest.raises(StorageError, match="backups/b1/data is a symbolic link"):
        storage.put("backups/b1/data/00000000", b"part")
    with pytest.raises(StorageError, match="backups/b1/data is a symbolic link"):
        list(storage.list("backups/"))
    assert _entries(outside) == {"secret": b"not the archive's"}


def test_a_linked_object_is_not_read_and_is_replaced_not_written_through(tmp_path, outside):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "catalog").mkdir()
    (root / "catalog" / "backups.json").symlink_to(outside / "secret")
    storage = LocalStorage(root)
    for operation in (lambda: storage.get("catalog/backups.json"), lambda: storage.stat("catalog/backups.json"),
                      lambda: storage.list("catalog/"), lambda: storage.list_folder("catalog/")):
        with pytest.raises(StorageError, match="catalog/backups.json is a symbolic link"):
            operation()
    with pytest.raises(ObjectExists):
        storage.put("catalog/backups.json", b"{}")
    storage.put("catalog/backups.json", b"{}", overwrite=True)
    assert storage.get("catalog/backups.json") == b"{}"
    assert (outside / "secret").read_bytes() == b"not the archive's"


def test_deleting_a_link_removes_the_link_only(tmp_path, outside):
    root = tmp_path / "archive"
    (root / "leases").mkdir(parents=True)
    (root / "leases" / "x.json").symlink_to(outside / "secret")
    LocalStorage(root).delete("leases/x.json")
    assert not (root / "leases").exists()
    assert (outside / "secret").read_bytes() == b"not the archive's"


def test_a_fifo_in_the_archive_is_refused_not_waited_on(tmp_path):
    root = tmp_path / "archive"
    (root / "wal").mkdir(parents=True)
    os.mkfifo(root / "wal" / "segment")
    with pytest.raises(StorageError, match="not a regular file"):
        LocalStorage(root).get("wal/segment")


def test_the_archive_directory_itself_may_be_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "archive").symlink_to(real)
    storage = LocalStorage(tmp_path / "archive")
    storage.put("wal/0000000100000000/000000010000000000000001", b"segment")
    assert storage.get("wal/0000000100000000/000000010000000000000001") == b"segment"
    assert [info.key for info in storage.list("wal/")] == ["wal/0000000100000000/000000010000000000000001"]
    assert storage.list_folder("wal/").folders == ["wal/0000000100000000/"]
    storage.delete("wal/0000000100000000/000000010000000000000001")
    assert _entries(real) == {}

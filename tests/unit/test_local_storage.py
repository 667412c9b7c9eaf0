"""The built-in file:// backend: the conformance suite, plus what only a local file
system can show (durability mechanics, no stray files, URL forms)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from pitrkit.config import Config, RepositoryConfig
from pitrkit.hookspecs import ObjectExists, StorageError
from pitrkit.storage.archive import Archive, ArchiveUnavailable
from pitrkit.storage.conformance import StorageConformance
from pitrkit.storage.plugins.local import LocalStorage, parse_file_url
from pitrkit.wal.push import push
from tests.unit.segments import init_archive, segment


class Fsyncs:
    """Every fsync(2) made, by path and thread, with directory fsyncs failing (EIO) or
    waiting where a test says: a disk that fails or is slow at the one step durability
    rests on. The calls themselves are real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done: list[tuple[str, Path]] = []
        self.failing: set[Path] = set()
        self.fail_once = False
        # (thread name, directory) -> released when set
        self.waits: dict[tuple[str, Path], threading.Event] = {}
        self.waiting = threading.Event()
        real = os.fsync

        def fsync(descriptor: int) -> None:
            path = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
            thread = threading.current_thread().name
            if stat.S_ISDIR(os.fstat(descriptor).st_mode):
                if path in self.failing:
                    if self.fail_once:
                        self.failing.discard(path)
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                if (gate := self.waits.get((thread, path))) is not None:
                    self.waiting.set()
                    gate.wait(10)
            real(descriptor)
            self.done.append((thread, path))

        monkeypatch.setattr(os, "fsync", fsync)

    def synced(self, path: Path, thread: str | None = None) -> bool:
        return any(done == path and (thread is None or name == thread) for name, done in self.done)


class TestLocalStorage(StorageConformance):
    @pytest.fixture
    def storage(self, tmp_path):
        root = tmp_path / "archive"
        root.mkdir()
        return LocalStorage(root)

    @pytest.fixture
    def unreachable_storage(self, tmp_path):
        return LocalStorage(tmp_path / "not-mounted")

    @pytest.fixture
    def malformed_url(self):
        return "file://elsewhere/srv/archive"  # a host: file URLs name a local path only

    @pytest.fixture
    def failing_durability(self, storage, monkeypatch):
        fsyncs = Fsyncs(monkeypatch)

        @contextlib.contextmanager
        def failing():
            fsyncs.failing.add(storage.root)
            try:
                yield
            finally:
                fsyncs.failing.clear()

        return failing


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


# --- listings while objects come and go -------------------------------------------------


@pytest.fixture
def wal_folder(tmp_path) -> tuple[LocalStorage, Path]:
    root = tmp_path / "archive"
    root.mkdir()
    storage = LocalStorage(root)
    for segno in (1, 2, 3):
        storage.put(f"wal/0000000100000000/00000001000000000000000{segno}", b"x" * segno)
    return storage, root / "wal" / "0000000100000000"


def deleted_after_readdir(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """The race window, opened on purpose: the directory is read (the real readdir, with
    `victim` in it), then `victim` is really deleted, before the lister stats it."""
    real = os.scandir

    class ReadThenDeleted:
        def __init__(self, path):
            with real(path) as entries:
                self.entries = iter(list(entries))
            folder = Path(os.readlink(f"/proc/self/fd/{path}")) if isinstance(path, int) else Path(path)
            if folder == victim.parent:
                victim.unlink(missing_ok=True)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def close(self):
            return None

    monkeypatch.setattr(os, "scandir", ReadThenDeleted)


def test_an_object_deleted_while_listing_is_left_out_and_the_rest_stands(wal_folder, monkeypatch):
    storage, folder = wal_folder
    deleted_after_readdir(monkeypatch, folder / "000000010000000000000002")
    listed = storage.list_folder("wal/0000000100000000/")
    assert [info.key[-1] for info in listed.objects] == ["1", "3"]


def test_an_object_deleted_while_walking_is_left_out_and_the_rest_stands(wal_folder, monkeypatch):
    storage, folder = wal_folder
    deleted_after_readdir(monkeypatch, folder / "000000010000000000000002")
    assert [info.key[-1] for info in storage.list("wal/")] == ["1", "3"]


def test_a_folder_deleted_while_walking_is_left_out_and_the_rest_stands(wal_folder, monkeypatch):
    storage, folder = wal_folder
    storage.put("wal/0000000100000001/000000010000000100000000", b"y")
    real = os.scandir

    def scandir(path):
        opened = Path(os.readlink(f"/proc/self/fd/{path}")) if isinstance(path, int) else Path(path)
        if opened == folder:  # deleted by retention after wal/ was read
            for each in folder.iterdir():
                each.unlink()
            folder.rmdir()
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [info.key for info in storage.list("wal/")] == ["wal/0000000100000001/000000010000000100000000"]


def test_concurrent_deletes_never_empty_a_listing(tmp_path):
    # Real files, really deleted by another thread while listings run: the object that
    # stays must be in every listing.
    root = tmp_path / "archive"
    root.mkdir()
    storage = LocalStorage(root)
    storage.put("wal/0000000100000000/000000010000000000000001", b"stays")
    folder = root / "wal" / "0000000100000000"
    stop = threading.Event()

    def churn() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            path = folder / f"00000001000000000000{number % 200 + 2:04X}"
            path.write_bytes(b"x")
            path.unlink()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(3000):
            keys = [info.key for info in storage.list_folder("wal/0000000100000000/").objects]
            assert "wal/0000000100000000/000000010000000000000001" in keys
    finally:
        stop.set()
        thread.join()


def test_a_folder_holding_no_object_is_not_listed(tmp_path):
    # A delete killed between its unlink and its rmdir leaves empty directories: in an
    # object store they are no folder, and a listing showing one would show a removed
    # backup as a backup with nothing in it.
    root = tmp_path / "archive"
    root.mkdir()
    storage = LocalStorage(root)
    storage.put("backups/20261206T000000Z/data/part-000001", b"part")
    storage.put("backups/20261207T000000Z/data/part-000001", b"part")
    (root / "backups" / "20261206T000000Z" / "data" / "part-000001").unlink()  # the kill

    assert storage.list_folder("backups/").folders == ["backups/20261207T000000Z/"]
    assert storage.list_folder("backups/20261206T000000Z/").folders == []


@pytest.mark.parametrize("listing", ["list", "list_folder"])
def test_a_symbolic_link_to_nothing_is_a_fault_not_an_empty_folder(wal_folder, listing):
    storage, folder = wal_folder
    (folder / "000000010000000000000004").symlink_to(folder / "gone")
    with pytest.raises(StorageError, match="is a symbolic link"):
        if listing == "list":
            list(storage.list("wal/"))
        else:
            storage.list_folder("wal/0000000100000000/")


def test_an_entry_that_cannot_be_stated_is_a_fault(wal_folder):
    storage, folder = wal_folder
    (folder / "000000010000000000000004").symlink_to("000000010000000000000004")  # a loop: ELOOP
    with pytest.raises(StorageError):
        storage.list_folder("wal/0000000100000000/")
    with pytest.raises(StorageError):
        list(storage.list("wal/"))


def test_a_missing_folder_is_empty_only_while_the_archive_is_there(tmp_path, monkeypatch):
    root = tmp_path / "archive"
    root.mkdir()
    storage = LocalStorage(root)
    assert storage.list_folder("wal/0000000100000000/") == ([], [])
    assert list(storage.list("wal/0000000100000000/")) == []
    root.rmdir()  # unmounted: the folder is not "empty", the archive is not there
    for listing in (lambda: storage.list_folder("wal/0000000100000000/"),
                    lambda: list(storage.list("wal/0000000100000000/"))):
        with pytest.raises(StorageError, match="does not exist"):
            listing()


# --- "already exists" only for what is durable -----------------------------------------


@pytest.fixture
def pushing(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    files = tmp_path / "pg_wal"
    files.mkdir()
    archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=2)))
    (files / "000000010000000000000001").write_bytes(segment(1))
    init_archive(archive)
    push(archive, files / "000000010000000000000001")  # the folders exist
    (files / "000000010000000000000002").write_bytes(segment(2))
    return archive, files / "000000010000000000000002", root / "wal" / "0000000100000000"


def test_a_push_whose_directory_fsync_keeps_failing_never_succeeds(pushing, monkeypatch):
    archive, path, folder = pushing
    fsyncs = Fsyncs(monkeypatch)
    fsyncs.failing.add(folder)
    # The first attempt links the object and fails to fsync its folder; the retries find
    # it there, and must not take it for an identical, durable copy.
    with pytest.raises(ArchiveUnavailable, match="Input/output error"):
        push(archive, path)


def test_a_push_retried_after_a_failed_directory_fsync_succeeds_once_it_is_durable(pushing, monkeypatch):
    archive, path, folder = pushing
    fsyncs = Fsyncs(monkeypatch)
    fsyncs.failing.add(folder)
    fsyncs.fail_once = True
    assert "already archived with identical content" in push(archive, path)
    assert fsyncs.synced(folder / path.name) and fsyncs.synced(folder)


def test_a_concurrent_identical_push_waits_for_durability(pushing, monkeypatch):
    archive, path, folder = pushing
    fsyncs = Fsyncs(monkeypatch)
    fsyncs.waits["first", folder] = threading.Event()
    first = threading.Thread(target=push, args=(archive, path), name="first")
    first.start()
    try:
        assert fsyncs.waiting.wait(10)  # the first pusher linked the object, not yet fsync'd its folder
        assert not fsyncs.synced(folder)
        assert "already archived with identical content" in push(archive, path)
        # Exit 0 for the second pusher: only after it made the object durable itself.
        assert fsyncs.synced(folder / path.name, threading.current_thread().name)
        assert fsyncs.synced(folder, threading.current_thread().name)
    finally:
        fsyncs.waits["first", folder].set()
        first.join()



@pytest.mark.parametrize("made_before", [False, True])
def test_a_put_makes_every_folder_on_its_way_durable(tmp_path, monkeypatch, made_before):
    # made_before: a pusher made the folders and crashed before fsyncing them into their
    # parents (or is still before it): their entries may be lost on power loss with
    # every object in them, so the put that finds them fsyncs them too.
    root = tmp_path / "archive"
    root.mkdir()
    folder = root / "wal" / "0000000100000000"
    if made_before:
        folder.mkdir(parents=True)
    fsyncs = Fsyncs(monkeypatch)
    LocalStorage(root).put("wal/0000000100000000/000000010000000000000001", b"x")
    # Each once, and each after its child's entry is there.
    assert [path for _, path in fsyncs.done if path.is_dir()] == [root, root / "wal", folder]

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
    with pytest.raises(StorageError, match="catalog/backups.json is a symbolic link"):
        storage.put("catalog/backups.json", b"{}")  # the name is taken, by nothing an object can be
    storage.put("catalog/backups.json", b"{}", overwrite=True)
    assert storage.get("catalog/backups.json") == b"{}"
    assert (outside / "secret").read_bytes() == b"not the archive's"


def test_ranged_reads_and_copies_do_not_follow_links(tmp_path, outside):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "wal").symlink_to(outside)
    storage = LocalStorage(root)
    storage.put("doc", b"x")
    before = _entries(outside)
    for operation in (lambda: storage.get_range("wal/secret", 0, 5), lambda: storage.copy("wal/secret", "copy"),
                      lambda: storage.copy("doc", "wal/copy")):
        with pytest.raises(StorageError, match="wal is a symbolic link"):
            operation()
    (root / "linked").symlink_to(outside / "secret")
    for operation in (lambda: storage.get_range("linked", 0, 5), lambda: storage.copy("linked", "copy")):
        with pytest.raises(StorageError, match="linked is a symbolic link"):
            operation()
    assert _entries(outside) == before
    assert sorted(_entries(root)) == ["doc", "linked", "wal"]


def test_a_copy_the_kernel_cannot_make_goes_through_a_buffer(tmp_path, monkeypatch):
    # copy_file_range(2) fails on kernels before 4.5 and across file systems.
    def cannot(*args):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", cannot)
    storage = LocalStorage(tmp_path)
    data = os.urandom(3 << 20)  # several buffers
    storage.put("backups/A/data/0", data)
    storage.copy("backups/A/data/0", "backups/B/data/0")
    assert storage.get("backups/B/data/0") == data


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

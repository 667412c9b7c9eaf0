"""The storage conformance suite: what every storage plugin must do, tested against it.
It is shipped in the package so that plugins in other distributions can run it; it
imports pytest, so only test code imports it.

A plugin's test module subclasses `StorageConformance` and provides two fixtures:
`storage` (a fresh, empty archive) and `unreachable_storage` (a backend whose archive
container does not exist: a missing directory, a missing bucket). A backend that makes
an object durable in a step of its own after publishing it (a file system's directory
fsync) also provides `failing_durability`; see its default below. Example:

    class TestMyStore(StorageConformance):
        @pytest.fixture
        def storage(self, my_server):
            return MyStore(my_server.url + "/fresh-prefix", timeout=5)

        @pytest.fixture
        def unreachable_storage(self, my_server):
            return MyStore(my_server.url.replace("bucket", "no-such-bucket"), timeout=5)

The optional methods (hookspecs.RangedReads, hookspecs.ServerSideCopy) are tested through
pitrkit.storage.capabilities, as the core calls them, twice: with the backend's own
method (skipped when it has none) and with the fallback on the required methods
(`RequiredMethodsOnly`), which must answer alike.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from pitrkit.hookspecs import ObjectExists, ObjectNotFound, RangedReads, ServerSideCopy, Storage, StorageError
from pitrkit.storage import capabilities


class RequiredMethodsOnly:
    """`storage` seen with only the methods every backend has, none of the optional ones:
    what pitrkit.storage.capabilities falls back to for a backend without them."""

    def __init__(self, storage: Storage) -> None:
        self.url = storage.url
        self.put, self.get, self.stat = storage.put, storage.get, storage.stat
        self.list, self.list_folder, self.delete = storage.list, storage.list_folder, storage.delete


def _both_ways(way: str, storage: Storage, optional: type, method: str) -> Storage:
    if way == "fallback":
        return RequiredMethodsOnly(storage)
    if not isinstance(storage, optional):
        pytest.skip(f"{type(storage).__name__} has no {method} of its own: pitrkit uses the fallback, "
                    "tested beside this")
    return storage


class StorageConformance:
    # -- put / get ---------------------------------------------------------------------

    def test_put_then_get_returns_the_bytes(self, storage):
        data = os.urandom(100_000)
        storage.put("wal/0000000100000000/000000010000000000000001", data)
        assert storage.get("wal/0000000100000000/000000010000000000000001") == data

    def test_empty_object(self, storage):
        storage.put("empty", b"")
        assert storage.get("empty") == b""
        assert storage.stat("empty").size == 0

    def test_large_object(self, storage):
        data = os.urandom(1 << 20) * 17  # bigger than a WAL segment, not a power of two
        storage.put("big", data)
        assert storage.get("big") == data

    def test_put_is_create_only(self, storage):
        storage.put("doc", b"first")
        with pytest.raises(ObjectExists):
            storage.put("doc", b"second")
        with pytest.raises(ObjectExists):
            storage.put("doc", b"first")  # even identical content: deciding is the caller's job
        assert storage.get("doc") == b"first"

    def test_overwrite_replaces(self, storage):
        storage.put("doc", b"first")
        storage.put("doc", b"second, longer", overwrite=True)
        assert storage.get("doc") == b"second, longer"
        storage.put("new", b"x", overwrite=True)  # overwrite also creates
        assert storage.get("new") == b"x"

    def test_concurrent_create_only_puts_have_one_winner(self, storage):
        outcomes: list[str] = []
        barrier = threading.Barrier(4)

        def writer(payload: bytes) -> None:
            barrier.wait()
            try:
                storage.put("race", payload)
                outcomes.append("stored")
            except ObjectExists:
                outcomes.append("exists")

        threads = [threading.Thread(target=writer, args=(bytes([n]) * 50_000,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["exists", "exists", "exists", "stored"]
        stored = storage.get("race")
        assert len(stored) == 50_000 and len(set(stored)) == 1  # one writer's bytes, whole

    # -- durability of what a put finds ------------------------------------------------

    @pytest.fixture
    def failing_durability(self):
        """A context manager factory: inside, `storage` can publish an object but not make
        it durable (local: every directory fsync fails with EIO). The default skips: an
        object store's object is durable once anyone can see it."""
        pytest.skip("objects are durable once visible: no durability step of the backend's own to fail")

    def test_object_exists_only_for_a_durable_object(self, storage, failing_durability):
        # pitrkit retries a put that failed, and wal-push exits 0 when the retry finds its
        # own bytes stored: "exists" must not be said of an object a crash could still lose.
        with failing_durability():
            for _ in range(3):
                with pytest.raises(StorageError):
                    storage.put("doc", b"first")
        with pytest.raises(ObjectExists):
            storage.put("doc", b"first")
        assert storage.get("doc") == b"first"

    # -- absence -----------------------------------------------------------------------

    def test_get_missing_raises_not_found(self, storage):
        with pytest.raises(ObjectNotFound):
            storage.get("wal/0000000100000000/000000010000000000000099")

    def test_stat(self, storage):
        storage.put("a/b", b"12345")
        info = storage.stat("a/b")
        assert (info.key, info.size) == ("a/b", 5)
        assert info.modified is None or abs(info.modified - time.time()) < 3600
        with pytest.raises(ObjectNotFound):
            storage.stat("a/c")

    def test_unreachable_archive_is_a_fault_not_absence(self, unreachable_storage):
        # A missing bucket or unmounted directory must never read as "object not found":
        # wal-fetch would tell PostgreSQL the WAL ends here and recovery would stop early.
        with pytest.raises(StorageError):
            unreachable_storage.get("archive.json")
        with pytest.raises(StorageError):
            unreachable_storage.stat("archive.json")
        with pytest.raises(StorageError):
            unreachable_storage.put("archive.json", b"{}")
        with pytest.raises(StorageError):
            list(unreachable_storage.list(""))
        with pytest.raises(StorageError):
            unreachable_storage.list_folder("wal/")

    # -- list / delete -----------------------------------------------------------------

    def test_list_in_key_order_with_sizes(self, storage):
        keys = ["wal/00000002.history", "wal/0000000100000000/000000010000000000000002",
                "wal/0000000100000000/000000010000000000000001", "archive.json",
                "a-c", "a/b", "wal/0000000100000001/000000010000000100000000"]
        for number, key in enumerate(keys):
            storage.put(key, b"x" * number)
        listed = list(storage.list(""))
        assert [info.key for info in listed] == sorted(keys, key=str.encode)
        assert {info.key: info.size for info in listed} == {key: n for n, key in enumerate(keys)}

    def test_list_by_prefix(self, storage):
        for key in ["wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C",
                    "wal/00000002.history", "walrus"]:
            storage.put(key, b"x")
        assert [i.key for i in storage.list("wal/0000000100000000/")] == [
            "wal/0000000100000000/A", "wal/0000000100000000/B"]
        assert [i.key for i in storage.list("wal/000000010000000")] == [
            "wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C"]
        assert [i.key for i in storage.list("wal")] == [
            "wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C",
            "wal/00000002.history", "walrus"]
        assert list(storage.list("nothing/")) == []

    def test_empty_archive_lists_nothing(self, storage):
        assert list(storage.list("")) == []
        assert storage.list_folder("") == ([], [])
        assert storage.list_folder("wal/") == ([], [])

    def test_list_folder_one_level(self, storage):
        for key in ["archive.json", "wal/00000002.history", "wal/0000000100000000/A",
                    "wal/0000000100000000/B", "wal/0000000100000001/C", "walrus", "wal-x/D"]:
            storage.put(key, b"xy")
        root = storage.list_folder("")
        assert [i.key for i in root.objects] == ["archive.json", "walrus"]
        assert root.folders == ["wal-x/", "wal/"]  # key (byte) order: "-" < "/"
        wal = storage.list_folder("wal/")
        assert [(i.key, i.size) for i in wal.objects] == [("wal/00000002.history", 2)]
        assert wal.folders == ["wal/0000000100000000/", "wal/0000000100000001/"]
        assert [i.key for i in storage.list_folder("wal/0000000100000000/").objects] == [
            "wal/0000000100000000/A", "wal/0000000100000000/B"]
        assert storage.list_folder("nothing/") == ([], [])

    def test_delete(self, storage):
        storage.put("gone", b"x")
        storage.delete("gone")
        with pytest.raises(ObjectNotFound):
            storage.get("gone")
        storage.delete("gone")  # absent: not an error
        storage.put("gone", b"again")  # and the name is free again
        assert storage.get("gone") == b"again"

    def test_a_folder_whose_objects_are_all_deleted_is_not_listed(self, storage):
        # Retention removes whole backup and WAL folders; readers must not find them as
        # empty ones (a backup folder without a manifest reads as an unfinished backup).
        storage.put("backups/B/data/0", b"x")
        storage.put("backups/B/manifest.json", b"{}")
        storage.put("backups/C/manifest.json", b"{}")
        storage.delete("backups/B/data/0")
        storage.delete("backups/B/manifest.json")
        assert storage.list_folder("backups/").folders == ["backups/C/"]
        storage.put("backups/B/data/1", b"y")  # and it can be written again
        assert storage.list_folder("backups/").folders == ["backups/B/", "backups/C/"]

    # -- optional methods, as the core calls them (pitrkit/storage/capabilities.py) -----

    @pytest.fixture(params=["own method", "fallback"])
    def ranged(self, request, storage):
        """`storage` read with its own get_range, then with the fallback (get and slice)."""
        return _both_ways(request.param, storage, RangedReads, "get_range")

    @pytest.fixture(params=["own method", "fallback"])
    def copying(self, request, storage):
        """`storage` copied with its own copy, then with the fallback (get, then put)."""
        return _both_ways(request.param, storage, ServerSideCopy, "copy")

    def test_read_range(self, ranged):
        data = os.urandom(100_000)
        ranged.put("backups/B/data/0", data)
        for offset, length in [(0, 10), (0, 1), (1000, 5000), (0, 100_000), (99_999, 1), (99_990, 10),
                               (99_990, 100), (5, 0), (100_000, 0), (100_000, 10), (200_000, 10), (0, 1 << 40)]:
            # What a slice gives: fewer bytes where the object ends, none from its end on.
            assert capabilities.read_range(ranged, "backups/B/data/0", offset, length) == data[offset:offset + length]
        ranged.put("empty", b"")
        for offset, length in [(0, 10), (0, 0), (5, 10)]:
            assert capabilities.read_range(ranged, "empty", offset, length) == b""

    def test_read_range_of_a_missing_object_raises_not_found(self, ranged):
        ranged.put("backups/B/data/1", b"another object beside it")
        for offset, length in [(0, 10), (0, 0), (1000, 10)]:  # whatever the range, b"" included
            with pytest.raises(ObjectNotFound):
                capabilities.read_range(ranged, "backups/B/data/0", offset, length)

    def test_read_range_on_an_unreachable_archive_is_a_fault(self, unreachable_storage):
        for storage in (unreachable_storage, RequiredMethodsOnly(unreachable_storage)):
            with pytest.raises(StorageError):
                capabilities.read_range(storage, "archive.json", 0, 10)

    def test_copy(self, copying):
        data = os.urandom(300_000)
        copying.put("backups/A/data/0", data)
        capabilities.copy(copying, "backups/A/data/0", "backups/B/data/0")
        assert copying.get("backups/B/data/0") == data
        assert copying.get("backups/A/data/0") == data  # the original stays
        assert copying.stat("backups/B/data/0").size == len(data)
        copying.delete("backups/A/data/0")  # two objects, not two names of one
        assert copying.get("backups/B/data/0") == data
        copying.put("empty", b"")
        capabilities.copy(copying, "empty", "empty-too")
        assert copying.get("empty-too") == b""

    def test_copy_is_create_only(self, copying):
        copying.put("doc", b"first")
        copying.put("taken", b"already here")
        with pytest.raises(ObjectExists):
            capabilities.copy(copying, "doc", "taken")
        assert copying.get("taken") == b"already here"
        copying.put("same", b"first")
        with pytest.raises(ObjectExists):
            capabilities.copy(copying, "doc", "same")  # even identical content, as put

    def test_copy_of_a_missing_object_raises_not_found(self, copying):
        with pytest.raises(ObjectNotFound):
            capabilities.copy(copying, "backups/A/data/0", "backups/B/data/0")
        with pytest.raises(ObjectNotFound):
            copying.get("backups/B/data/0")  # and stores nothing

    def test_copy_on_an_unreachable_archive_is_a_fault(self, unreachable_storage):
        for storage in (unreachable_storage, RequiredMethodsOnly(unreachable_storage)):
            with pytest.raises(StorageError):
                capabilities.copy(storage, "archive.json", "copy.json")

"""The storage conformance suite: what every storage plugin must do, tested against it.
It is shipped in the package so that plugins in other distributions can run it; it
imports pytest, so only test code imports it.

A plugin's test module subclasses `StorageConformance` and provides two fixtures:
`storage` (a fresh, empty archive) and `unreachable_storage` (a backend whose archive
container does not exist: a missing directory, a missing bucket). A backend that makes
an object durable in a step of its own after publishing it (a file system's directory
fsync) also provides `failing_durability`; see its default below. A plugin whose hook
refuses some URLs of its scheme provides `malformed_url`, one of them. Example:

    class TestMyStore(StorageConformance):
        @pytest.fixture
        def storage(self, my_server):
            return MyStore(my_server.url + "/fresh-prefix", timeout=5)

        @pytest.fixture
        def unreachable_storage(self, my_server):
            return MyStore(my_server.url.replace("bucket", "no-such-bucket"), timeout=5)

The hook itself is tested as pitrkit calls it: the plugin manager opens `storage.url`
through the installed `pitrkit.plugins` entry point, so the plugin must be installed
(`pip install -e .` while writing it).

Every failure says what was called, what the contract expects and what came back, with
or without pytest's assertion rewriting (which pytest does not apply to an installed
module unless told: `pytest.register_assert_rewrite("pitrkit.storage.conformance")` in
a conftest.py, before the import, adds its detail to the suite's own messages).

The optional methods (hookspecs.RangedReads, hookspecs.ServerSideCopy) are tested through
pitrkit.storage.capabilities, as the core calls them, twice: with the backend's own
method (skipped when it has none) and with the fallback on the required methods
(`RequiredMethodsOnly`), which must answer alike.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pitrkit.errors import PitrkitError
from pitrkit.hookspecs import (
    MAX_KEY_LENGTH,
    ObjectExists,
    ObjectNotFound,
    RangedReads,
    ServerSideCopy,
    Storage,
    StorageError,
)
from pitrkit.storage import capabilities
from pitrkit.storage.plugins import Plugins, missing_storage_members


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


# -- messages: what was called, what the contract expects, what came back ---------------


def _show(value: Any) -> str:
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)
        if len(value) > 24:
            return f"{len(value)} bytes starting {value[:12]!r}"
    text = repr(value)
    return text if len(text) <= 600 else f"{text[:600]}... ({len(text)} characters)"


def expect(got: Any, expected: Any, what: str) -> None:
    """Fail, saying `what` (the call and the rule), unless `got == expected`."""
    if got != expected:
        raise AssertionError(f"{what}: expected {_show(expected)}, got {_show(got)}")


def expect_true(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


@contextmanager
def expect_raise(expected: type[Exception], what: str) -> Iterator[None]:
    """Fail, saying `what`, unless the block raises `expected` (or a subclass)."""
    try:
        yield
    except expected:
        return
    except Exception as exc:
        raise AssertionError(f"{what}: expected {expected.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {expected.__name__}, but it returned without one")


def _keys(infos) -> list[str]:
    return [info.key for info in infos]


def _byte_order(keys) -> list[str]:
    return sorted(keys, key=str.encode)


def _in_threads(*work: Callable[[], None]) -> None:
    """Run each callable in a thread of its own, at once; re-raise the first failure."""
    failures: list[Exception] = []

    def run(each: Callable[[], None]) -> None:
        try:
            each()
        except Exception as exc:  # handed to the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(each,)) for each in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


# Keys in pitrkit's alphabet that a backend must store apart and list in byte order:
# case, the separators "-", "." and "_" on either side of "/", a digit after a letter,
# and names that look like a file system's temporary files.
ORDER_KEYS = ["a-b", "a.b", "a/b", "a0", "aB", "a_b", "ab", "A", "B", "Z/z", "_x", "0", "x.tmp", "x.1a2b3c.tmp"]


class StorageConformance:
    # -- the backend and its hook, as pitrkit opens them ---------------------------------

    def test_the_backend_has_every_required_method(self, storage):
        expect(missing_storage_members(storage), [],
               f"members of pitrkit.hookspecs.Storage that {type(storage).__name__} lacks")

    def test_each_required_method_answers_on_an_empty_archive(self, storage):
        # Each method once, each on its own, so that a first run names every method that
        # does not work yet rather than the first one the other tests happen to call.
        calls: list[tuple[str, Callable[[], Any], Any]] = [
            ("get('absent')", lambda: storage.get("absent"), ObjectNotFound),
            ("stat('absent')", lambda: storage.stat("absent"), ObjectNotFound),
            ("list('')", lambda: list(storage.list("")), []),
            ("list_folder('')", lambda: storage.list_folder(""), ([], [])),
            ("delete('absent')", lambda: storage.delete("absent"), None),
            ("put('present', b'x')", lambda: storage.put("present", b"x"), None),
        ]
        wrong = []
        for call, run, expected in calls:
            try:
                got = run()
            except Exception as exc:  # every method's own failure, reported together
                if not (isinstance(expected, type) and isinstance(exc, expected)):
                    wrong.append(f"{call}: expected {_show(expected)}, got {type(exc).__name__}: {exc}")
                continue
            if isinstance(expected, type) or got != expected:
                wrong.append(f"{call}: expected {_show(expected)}, got {_show(got)}")
        expect_true(not wrong, "on an empty archive:\n" + "\n".join(wrong))

    def _opened(self, url: str) -> tuple[Plugins, Storage]:
        plugins = Plugins()
        try:
            return plugins, plugins.storage(url, 5.0)
        except PitrkitError as exc:  # no entry point, a hook that does not answer, a backend missing methods
            raise AssertionError(f"pitrkit cannot open {url!r} through its plugins: {exc}") from None

    def test_the_hook_opens_the_archive_at_its_url(self, storage):
        _, opened = self._opened(storage.url)
        expect(opened.url, storage.url, f"url of the backend pitrkit_storage(url={storage.url!r}) returned")
        storage.put("archive.json", b"{}")
        expect(opened.get("archive.json"), b"{}",
               "get through the backend the hook opened for the same url, of an object put through the suite's")

    def test_the_hook_answers_none_for_other_schemes(self, storage):
        plugins, _ = self._opened(storage.url)
        ours = [impl for impl in plugins.manager.hook.pitrkit_storage.get_hookimpls()
                if impl.function(**self._arguments(impl, storage.url)) is not None]
        scheme = storage.url.partition("://")[0]
        for other in ("pitrkit-conformance-nobody://bucket/prefix",
                      "gs://bucket/prefix" if scheme == "file" else "file:///var/lib/pitrkit/archive"):
            for impl in ours:
                answer = impl.function(**self._arguments(impl, other))
                expect(answer, None, f"pitrkit_storage(url={other!r}) of {impl.plugin_name} (not its scheme: return "
                                     "None, so that another plugin can answer)")

    @staticmethod
    def _arguments(impl, url: str) -> dict:
        # A hook function may declare only the arguments it uses.
        return {name: value for name, value in (("url", url), ("timeout", 5.0)) if name in impl.argnames}

    @pytest.fixture
    def malformed_url(self):
        """A URL of the plugin's scheme that its hook must refuse with ValueError (which
        pitrkit reports as `repository.url: <message>`). Default: skip."""
        pytest.skip("no malformed_url fixture: give one (a URL of your scheme your hook refuses) to test it")

    def test_the_hook_refuses_a_malformed_url_with_value_error(self, storage, malformed_url):
        plugins, _ = self._opened(storage.url)  # the plugin loaded, as pitrkit loads it
        with expect_raise(ValueError, f"pitrkit_storage(url={malformed_url!r}), a malformed URL of its scheme"):
            plugins.manager.hook.pitrkit_storage(url=malformed_url, timeout=5.0)

    # -- put / get ---------------------------------------------------------------------

    def test_put_then_get_returns_the_bytes(self, storage):
        data = os.urandom(100_000)
        storage.put("wal/0000000100000000/000000010000000000000001", data)
        expect(storage.get("wal/0000000100000000/000000010000000000000001"), data,
               "get of the object just put")

    def test_empty_object(self, storage):
        storage.put("empty", b"")
        expect(storage.get("empty"), b"", "get of an empty object")
        expect(storage.stat("empty").size, 0, "stat('empty').size of an empty object")

    def test_large_object(self, storage):
        data = os.urandom(1 << 20) * 17  # bigger than a WAL segment, not a power of two
        storage.put("big", data)
        expect(storage.get("big"), data, "get of a 17 MiB object")

    def test_put_is_create_only(self, storage):
        storage.put("doc", b"first")
        with expect_raise(ObjectExists, "put('doc', b'second') over an existing key (create-only)"):
            storage.put("doc", b"second")
        with expect_raise(ObjectExists, "put('doc', b'first') over an existing key with the same bytes (deciding "
                                        "what identical means is pitrkit's job)"):
            storage.put("doc", b"first")
        expect(storage.get("doc"), b"first", "get after refused puts (the object stays untouched)")

    def test_overwrite_replaces(self, storage):
        storage.put("doc", b"first")
        storage.put("doc", b"second, longer", overwrite=True)
        expect(storage.get("doc"), b"second, longer", "get after put(..., overwrite=True)")
        storage.put("new", b"x", overwrite=True)
        expect(storage.get("new"), b"x", "get after put(..., overwrite=True) of a new key (overwrite also creates)")

    def test_concurrent_create_only_puts_have_one_winner(self, storage):
        outcomes: list[str] = []
        barrier = threading.Barrier(4)

        def writer(payload: bytes) -> Callable[[], None]:
            def write() -> None:
                barrier.wait()
                try:
                    storage.put("race", payload)
                    outcomes.append("stored")
                except ObjectExists:
                    outcomes.append("exists")
            return write

        _in_threads(*(writer(bytes([n]) * 50_000) for n in range(4)))
        expect(sorted(outcomes), ["exists", "exists", "exists", "stored"],
               "outcomes of 4 concurrent create-only puts of one key (one atomic conditional write each)")
        stored = storage.get("race")
        expect_true(len(stored) == 50_000 and len(set(stored)) == 1,
                    f"the raced object must be one writer's bytes, whole: got {_show(stored)}")

    def test_reads_during_overwrites_see_whole_objects(self, storage):
        # An overwrite replaces the object atomically: a reader gets the old bytes or the
        # new, never a mix, a prefix or nothing.
        versions = [bytes([n]) * (200_000 + 1000 * n) for n in range(3)]
        storage.put("doc", versions[0])
        done = threading.Event()

        def overwrite() -> None:
            try:
                for n in range(1, 16):
                    storage.put("doc", versions[n % 3], overwrite=True)
            finally:
                done.set()

        def read() -> None:
            while not done.is_set():
                try:
                    data = storage.get("doc")
                    size = storage.stat("doc").size
                except ObjectNotFound:
                    raise AssertionError("get or stat of 'doc' while it is overwritten raised ObjectNotFound: an "
                                         "overwrite replaces the object atomically, it is never absent") from None
                expect_true(data in versions, "get('doc') while it is overwritten must return one version whole, "
                                              f"got {_show(data)} (a torn or partial object)")
                expect_true(size in {len(each) for each in versions},
                            f"stat('doc').size while it is overwritten: got {size}, no version's size")

        _in_threads(overwrite, read)
        expect(storage.get("doc"), versions[15 % 3], "get after the overwrites")

    def test_reads_and_listings_during_puts_see_no_unfinished_object(self, storage):
        # A put publishes its object whole or not at all, and whatever a backend writes on
        # the way (a temporary file, an unfinished upload) is never listed nor read.
        data = {f"backups/B/data/{n:08d}": bytes([n]) * 300_000 for n in range(8)}
        done = threading.Event()

        def put() -> None:
            try:
                for key, value in data.items():
                    storage.put(key, value)
            finally:
                done.set()

        def look() -> None:
            while not done.is_set():
                for info in storage.list(""):
                    expect_true(info.key in data and info.size == len(data[info.key]),
                                f"list('') during puts listed {info} (only finished objects, with their "
                                "whole size, may be listed; never a temporary one)")
                for info in storage.list_folder("backups/B/data/").objects:
                    expect_true(info.key in data, f"list_folder during puts listed {info}")
                try:
                    got = storage.get("backups/B/data/00000007")
                except ObjectNotFound:
                    continue
                expect(got, data["backups/B/data/00000007"], "get of an object while it is being put")

        _in_threads(put, look)
        expect(_keys(storage.list("")), list(data), "list('') after the puts")

    def test_keys_of_the_whole_alphabet(self, storage):
        # pitrkit's keys (hookspecs.MAX_KEY_LENGTH): ASCII letters (case matters), digits,
        # "-", "_", "." and "/"; components up to 100 bytes, keys up to MAX_KEY_LENGTH.
        longest = "/".join(["k" * 99] * 2) + "/" + "z" * (MAX_KEY_LENGTH - 200)
        keys = [*ORDER_KEYS, "backups/20261123T120000Z/manifest.json", "c" * 100, "deep/" * 12 + "leaf",
                "leases/20261123T120000Z-0a1b2c3d.json",
                "wal/0000000100000000/000000010000000000000003.00000028.backup", longest]
        expect(len(longest.encode()), MAX_KEY_LENGTH, "the suite's longest key")
        for n, key in enumerate(keys):
            storage.put(key, key.encode() + bytes([n]))
        for n, key in enumerate(keys):
            expect(storage.get(key), key.encode() + bytes([n]), f"get({key!r})")
            expect(storage.stat(key).size, len(key) + 1, f"stat({key!r}).size")
        expect(_keys(storage.list("")), _byte_order(keys), "list('') of keys across the alphabet, in UTF-8 byte order")

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
                with expect_raise(StorageError, "put('doc') while the backend's durability step fails"):
                    storage.put("doc", b"first")
        with expect_raise(ObjectExists, "put('doc') again once durability works, over the object published before"):
            storage.put("doc", b"first")
        expect(storage.get("doc"), b"first", "get('doc')")

    # -- absence -----------------------------------------------------------------------

    def test_get_missing_raises_not_found(self, storage):
        with expect_raise(ObjectNotFound, "get of an absent key in a reachable archive"):
            storage.get("wal/0000000100000000/000000010000000000000099")

    def test_stat(self, storage):
        storage.put("a/b", b"12345")
        info = storage.stat("a/b")
        expect((info.key, info.size), ("a/b", 5), "stat('a/b') (key, size) of a 5-byte object")
        expect_true(info.modified is None or abs(info.modified - time.time()) < 3600,
                    f"stat('a/b').modified must be None or the store time in POSIX seconds, got {info.modified!r}")
        with expect_raise(ObjectNotFound, "stat of an absent key in a reachable archive"):
            storage.stat("a/c")

    def test_unreachable_archive_is_a_fault_not_absence(self, unreachable_storage):
        # A missing bucket or unmounted directory must never read as "object not found":
        # wal-fetch would tell PostgreSQL the WAL ends here and recovery would stop early.
        fault = "{} on an archive whose container does not exist (a fault, never absence)"
        with expect_raise(StorageError, fault.format("get('archive.json')")):
            unreachable_storage.get("archive.json")
        with expect_raise(StorageError, fault.format("stat('archive.json')")):
            unreachable_storage.stat("archive.json")
        with expect_raise(StorageError, fault.format("put('archive.json')")):
            unreachable_storage.put("archive.json", b"{}")
        with expect_raise(StorageError, fault.format("list('')")):
            list(unreachable_storage.list(""))
        with expect_raise(StorageError, fault.format("list_folder('wal/')")):
            unreachable_storage.list_folder("wal/")

    def test_delete_on_an_unreachable_archive_is_a_fault(self, unreachable_storage):
        # Deleting an absent key is no error, but retention must not take "the container
        # is gone" for "deleted".
        with expect_raise(StorageError, "delete('archive.json') on an archive whose container does not exist"):
            unreachable_storage.delete("archive.json")

    # -- list / delete -----------------------------------------------------------------

    def test_list_in_key_order_with_sizes(self, storage):
        keys = ["wal/00000002.history", "wal/0000000100000000/000000010000000000000002",
                "wal/0000000100000000/000000010000000000000001", "archive.json",
                "a-c", "a/b", "wal/0000000100000001/000000010000000100000000"]
        for number, key in enumerate(keys):
            storage.put(key, b"x" * number)
        listed = list(storage.list(""))
        expect(_keys(listed), _byte_order(keys), "list('') keys, in UTF-8 byte order")
        expect({info.key: info.size for info in listed}, {key: n for n, key in enumerate(keys)},
               "list('') sizes by key")

    def test_list_order_is_utf8_byte_order(self, storage):
        for key in reversed(ORDER_KEYS):  # stored in the wrong order: the listing sorts
            storage.put(key, b"x")
        expect(_keys(storage.list("")), _byte_order(ORDER_KEYS),
               "list('') order (UTF-8 bytes of the key: 'A' < 'B' < 'a-b' < 'a.b' < 'a/b' < 'a0')")
        root = storage.list_folder("")
        expect(_keys(root.objects), _byte_order(key for key in ORDER_KEYS if "/" not in key),
               "list_folder('').objects order")
        expect(root.folders, ["Z/", "a/"], "list_folder('').folders")

    def test_list_by_prefix(self, storage):
        for key in ["wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C",
                    "wal/00000002.history", "walrus"]:
            storage.put(key, b"x")
        expect(_keys(storage.list("wal/0000000100000000/")), ["wal/0000000100000000/A", "wal/0000000100000000/B"],
               "list('wal/0000000100000000/')")
        expect(_keys(storage.list("wal/000000010000000")),
               ["wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C"],
               "list('wal/000000010000000') (a string prefix, not a folder)")
        expect(_keys(storage.list("wal")),
               ["wal/0000000100000000/A", "wal/0000000100000000/B", "wal/0000000100000001/C",
                "wal/00000002.history", "walrus"], "list('wal') (a string prefix: 'walrus' too)")
        expect(list(storage.list("nothing/")), [], "list('nothing/') of a prefix no key has")

    def test_empty_archive_lists_nothing(self, storage):
        expect(list(storage.list("")), [], "list('') of an empty archive")
        expect(storage.list_folder(""), ([], []), "list_folder('') of an empty archive")
        expect(storage.list_folder("wal/"), ([], []), "list_folder('wal/') of an empty archive")

    def test_list_folder_one_level(self, storage):
        for key in ["archive.json", "wal/00000002.history", "wal/0000000100000000/A",
                    "wal/0000000100000000/B", "wal/0000000100000001/C", "walrus", "wal-x/D"]:
            storage.put(key, b"xy")
        root = storage.list_folder("")
        expect(_keys(root.objects), ["archive.json", "walrus"], "list_folder('').objects (this level only)")
        expect(root.folders, ["wal-x/", "wal/"], "list_folder('').folders (in byte order: '-' < '/')")
        wal = storage.list_folder("wal/")
        expect([(i.key, i.size) for i in wal.objects], [("wal/00000002.history", 2)],
               "list_folder('wal/').objects as (key, size)")
        expect(wal.folders, ["wal/0000000100000000/", "wal/0000000100000001/"], "list_folder('wal/').folders")
        expect(_keys(storage.list_folder("wal/0000000100000000/").objects),
               ["wal/0000000100000000/A", "wal/0000000100000000/B"], "list_folder('wal/0000000100000000/').objects")
        expect(storage.list_folder("nothing/"), ([], []), "list_folder('nothing/') of a folder that does not exist")

    def test_delete(self, storage):
        storage.put("gone", b"x")
        storage.delete("gone")
        with expect_raise(ObjectNotFound, "get of a deleted key"):
            storage.get("gone")
        storage.delete("gone")  # absent: not an error
        storage.put("gone", b"again")
        expect(storage.get("gone"), b"again", "get after a create-only put of a deleted key (the name is free)")

    def test_a_folder_whose_objects_are_all_deleted_is_not_listed(self, storage):
        # Retention removes whole backup and WAL folders; readers must not find them as
        # empty ones (a backup folder without a manifest reads as an unfinished backup).
        storage.put("backups/B/data/0", b"x")
        storage.put("backups/B/manifest.json", b"{}")
        storage.put("backups/C/manifest.json", b"{}")
        storage.delete("backups/B/data/0")
        storage.delete("backups/B/manifest.json")
        expect(storage.list_folder("backups/").folders, ["backups/C/"],
               "list_folder('backups/').folders after every object of backups/B/ was deleted (a folder exists "
               "only while it holds objects)")
        storage.put("backups/B/data/1", b"y")
        expect(storage.list_folder("backups/").folders, ["backups/B/", "backups/C/"],
               "list_folder('backups/').folders once backups/B/ holds an object again")

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
            expect(capabilities.read_range(ranged, "backups/B/data/0", offset, length), data[offset:offset + length],
                   f"get_range(key, {offset}, {length}) of a 100000-byte object (exactly get(key)[offset:offset + "
                   "length])")
        ranged.put("empty", b"")
        for offset, length in [(0, 10), (0, 0), (5, 10)]:
            expect(capabilities.read_range(ranged, "empty", offset, length), b"",
                   f"get_range('empty', {offset}, {length}) of an empty object")

    def test_read_range_of_a_missing_object_raises_not_found(self, ranged):
        ranged.put("backups/B/data/1", b"another object beside it")
        for offset, length in [(0, 10), (0, 0), (1000, 10)]:  # whatever the range, b"" included
            with expect_raise(ObjectNotFound, f"get_range of an absent key, range {offset}+{length}"):
                capabilities.read_range(ranged, "backups/B/data/0", offset, length)

    def test_read_range_on_an_unreachable_archive_is_a_fault(self, unreachable_storage):
        for storage in (unreachable_storage, RequiredMethodsOnly(unreachable_storage)):
            with expect_raise(StorageError, "get_range on an archive whose container does not exist"):
                capabilities.read_range(storage, "archive.json", 0, 10)

    def test_copy(self, copying):
        data = os.urandom(300_000)
        copying.put("backups/A/data/0", data)
        capabilities.copy(copying, "backups/A/data/0", "backups/B/data/0")
        expect(copying.get("backups/B/data/0"), data, "get of the copy")
        expect(copying.get("backups/A/data/0"), data, "get of the source after the copy (it stays)")
        expect(copying.stat("backups/B/data/0").size, len(data), "stat of the copy: size")
        copying.delete("backups/A/data/0")
        expect(copying.get("backups/B/data/0"), data,
               "get of the copy after its source was deleted (two objects, not two names of one)")
        copying.put("empty", b"")
        capabilities.copy(copying, "empty", "empty-too")
        expect(copying.get("empty-too"), b"", "get of a copy of an empty object")

    def test_copy_is_create_only(self, copying):
        copying.put("doc", b"first")
        copying.put("taken", b"already here")
        with expect_raise(ObjectExists, "copy('doc', 'taken') onto an existing key (create-only, as put)"):
            capabilities.copy(copying, "doc", "taken")
        expect(copying.get("taken"), b"already here", "get of the target after a refused copy (untouched)")
        copying.put("same", b"first")
        with expect_raise(ObjectExists, "copy('doc', 'same') onto an existing key with the same bytes"):
            capabilities.copy(copying, "doc", "same")

    def test_copy_of_a_missing_object_raises_not_found(self, copying):
        with expect_raise(ObjectNotFound, "copy of an absent source"):
            capabilities.copy(copying, "backups/A/data/0", "backups/B/data/0")
        with expect_raise(ObjectNotFound, "get of the target of a copy whose source was absent (nothing stored)"):
            copying.get("backups/B/data/0")

    def test_copy_on_an_unreachable_archive_is_a_fault(self, unreachable_storage):
        for storage in (unreachable_storage, RequiredMethodsOnly(unreachable_storage)):
            with expect_raise(StorageError, "copy on an archive whose container does not exist"):
                capabilities.copy(storage, "archive.json", "copy.json")

"""Archive.get_range and Archive.copy: the backend's own ranged read and server-side copy
when it has them, the fallbacks on the required methods when not (a backend seen through
`RequiredMethodsOnly`), both bounded and retried like every Archive call, and a range no
storage can read refused before any storage call. The answers each backend owes are the
conformance suite's (pitrkit/storage/conformance.py); this is the core's side."""

from __future__ import annotations

import os

import pytest

from pitrkit.config import parse
from pitrkit.errors import RefusedError
from pitrkit.hookspecs import ObjectExists, ObjectNotFound, StorageError
from pitrkit.storage.archive import Archive, ArchiveUnavailable
from pitrkit.storage.conformance import RequiredMethodsOnly
from pitrkit.storage.plugins.local import LocalStorage

DATA = os.urandom(70_000)


class Counting:
    """A storage with the required methods, its calls recorded by name, the next
    `failures` of them failing with a StorageError (a fault Archive retries)."""

    def __init__(self, storage) -> None:
        self.storage, self.url = storage, storage.url
        self.failures = 0
        self.calls: list[str] = []

    def _call(self, name: str, *args, **kwargs):
        self.calls.append(name)
        if self.failures:
            self.failures -= 1
            raise StorageError("injected fault")
        return getattr(self.storage, name)(*args, **kwargs)

    def put(self, key, data, *, overwrite=False):
        return self._call("put", key, data, overwrite=overwrite)

    def get(self, key):
        return self._call("get", key)

    def stat(self, key):
        return self._call("stat", key)

    def list(self, prefix=""):
        return self._call("list", prefix)

    def list_folder(self, prefix):
        return self._call("list_folder", prefix)

    def delete(self, key):
        return self._call("delete", key)


class CountingWithOptional(Counting):
    def get_range(self, key, offset, length):
        return self._call("get_range", key, offset, length)

    def copy(self, source, target):
        return self._call("copy", source, target)


@pytest.fixture(params=["own method", "fallback"])
def way(request) -> str:
    return request.param


def _make(tmp_path, way: str, retries: int = 0) -> tuple[Archive, Counting]:
    """An archive on file:// whose storage is seen with its own get_range and copy, or
    with the required methods only (what a plugin without them offers), holding DATA."""
    root = tmp_path / "archive"
    root.mkdir()
    archive = Archive(parse({"repository": {"url": f"file://{root}", "retries": retries}}, "test"))
    local = archive.storage
    assert isinstance(local, LocalStorage)
    local.put("backups/A/data/0", DATA)
    counting = CountingWithOptional(local) if way == "own method" else Counting(RequiredMethodsOnly(local))
    archive.storage = counting
    return archive, counting


def test_a_range_and_a_copy_through_the_backends_methods_or_the_fallbacks(tmp_path, way):
    archive, storage = _make(tmp_path, way)
    for offset, length in [(0, 10), (1234, 5000), (69_990, 10), (69_990, 100), (70_000, 5), (80_000, 5), (7, 0)]:
        assert archive.get_range("backups/A/data/0", offset, length) == DATA[offset:offset + length]
    archive.copy("backups/A/data/0", "backups/B/data/0")
    assert archive.get("backups/B/data/0") == DATA
    expected = {"own method": ["get_range"] * 7 + ["copy"], "fallback": ["get"] * 7 + ["get", "put"]}[way]
    assert storage.calls == [*expected, "get"]


def test_answers_are_not_retried(tmp_path, way):
    archive, storage = _make(tmp_path, way, retries=3)
    with pytest.raises(ObjectNotFound):
        archive.get_range("backups/A/data/1", 0, 10)
    with pytest.raises(ObjectNotFound):
        archive.get_range("backups/A/data/1", 0, 0)  # even when no byte is asked for
    archive.put("backups/B/data/0", b"taken")
    with pytest.raises(ObjectExists):
        archive.copy("backups/A/data/0", "backups/B/data/0")
    assert archive.get("backups/B/data/0") == b"taken"
    with pytest.raises(ObjectNotFound):
        archive.copy("backups/A/data/1", "backups/C/data/0")
    assert len(storage.calls) == {"own method": 6, "fallback": 7}[way]  # each call once: none retried


def test_faults_are_retried_then_reported(tmp_path, way, monkeypatch):
    monkeypatch.setattr("pitrkit.storage.archive._BACKOFF_FIRST", 0.001)
    archive, storage = _make(tmp_path, way, retries=2)
    storage.failures = 2
    assert archive.get_range("backups/A/data/0", 5, 5) == DATA[5:10]
    storage.failures = 2
    archive.copy("backups/A/data/0", "backups/B/data/0")
    assert archive.get("backups/B/data/0") == DATA
    storage.failures = 3
    with pytest.raises(ArchiveUnavailable, match=r"reading backups/A/data/0 \(bytes 5 to 10\) failed after 3"):
        archive.get_range("backups/A/data/0", 5, 5)
    storage.failures = 3
    with pytest.raises(ArchiveUnavailable, match="copying backups/A/data/0 to backups/C/data/0 failed after 3"):
        archive.copy("backups/A/data/0", "backups/C/data/0")
    with pytest.raises(ObjectNotFound):
        archive.get("backups/C/data/0")


@pytest.mark.parametrize(("offset", "length"), [(-1, 10), (0, -1), (2**62, 2**62), (1.5, 1), (None, 1)])
def test_a_range_no_storage_can_read_is_refused_before_storage_is_asked(tmp_path, way, offset, length):
    # Offsets come from stored documents: a forged one is one clear refusal, not a
    # traceback from deep in a backend (an OverflowError from pread, a negative slice).
    archive, storage = _make(tmp_path, way)
    with pytest.raises(RefusedError, match="refusing to read backups/A/data/0 from file://"):
        archive.get_range("backups/A/data/0", offset, length)  # type: ignore[arg-type]
    assert storage.calls == []

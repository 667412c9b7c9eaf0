"""How the core calls the storage contract's optional methods (pitrkit/storage/capabilities.py):
a backend's own `get_range` and `copy` when it has them, the required methods otherwise.
What each answers is the conformance suite's (pitrkit/storage/conformance.py)."""

from __future__ import annotations

import pytest

from pitrkit.hookspecs import StorageError
from pitrkit.storage import capabilities


class RequiredOnly:
    """A backend with the methods every backend has (those these tests need), recording
    which are called."""

    url = "memory://"

    def __init__(self) -> None:
        self.objects = {"a": b"0123456789"}
        self.calls: list[str] = []

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self.calls.append(f"put {key}")
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        self.calls.append(f"get {key}")
        return self.objects[key]


class WithOptional(RequiredOnly):
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.calls.append(f"get_range {key}")
        return self.objects[key][offset:offset + length]

    def copy(self, source: str, target: str) -> None:
        self.calls.append(f"copy {source} {target}")
        self.objects[target] = self.objects[source]


def test_a_backend_without_the_optional_methods_is_served_by_the_required_ones():
    storage = RequiredOnly()
    assert capabilities.read_range(storage, "a", 2, 3) == b"234"
    capabilities.copy(storage, "a", "b")
    assert storage.objects["b"] == b"0123456789"
    assert storage.calls == ["get a", "get a", "put b"]


def test_a_backend_with_them_is_asked_through_them_alone():
    storage = WithOptional()
    assert capabilities.read_range(storage, "a", 2, 3) == b"234"
    capabilities.copy(storage, "a", "b")
    assert storage.objects["b"] == b"0123456789"
    assert storage.calls == ["get_range a", "copy a b"]


@pytest.mark.parametrize("storage", [RequiredOnly(), WithOptional()], ids=["fallback", "own method"])
@pytest.mark.parametrize(("offset", "length", "why"), [
    (-1, 3, "of 0 or more"), (0, -1, "of 0 or more"),
    (True, 3, "in whole bytes"), (0, 2.0, "in whole bytes"), ("0", 3, "in whole bytes"),
    (capabilities.MAX_RANGE_END, 1, "ends past"), (1, capabilities.MAX_RANGE_END, "ends past"),
])
def test_a_range_no_storage_can_read_is_refused_before_the_backend_is_asked(storage, offset, length, why):
    # A negative slice and a negative file offset would answer differently; past 2**63 a
    # pread raises OverflowError, not a storage fault.
    with pytest.raises(ValueError, match=why):
        capabilities.read_range(storage, "a", offset, length)
    assert storage.calls == []


def test_the_largest_range_is_read():
    for storage in (RequiredOnly(), WithOptional()):
        assert capabilities.read_range(storage, "a", 0, capabilities.MAX_RANGE_END) == b"0123456789"
        assert capabilities.read_range(storage, "a", capabilities.MAX_RANGE_END, 0) == b""


def test_a_backend_that_answers_more_than_the_range_is_a_fault():
    class Overlong(WithOptional):
        def get_range(self, key: str, offset: int, length: int) -> bytes:
            return self.objects[key]  # the whole object: a Range header ignored, unnoticed

    with pytest.raises(StorageError, match="10 bytes answered for a range of 3"):
        capabilities.read_range(Overlong(), "a", 2, 3)

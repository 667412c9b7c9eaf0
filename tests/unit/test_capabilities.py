"""How the core calls the storage contract's optional methods (pitrkit/storage/capabilities.py):
a backend's own `get_range` and `copy` when it has them, the required methods otherwise.
What each answers is the conformance suite's (pitrkit/storage/conformance.py)."""

from __future__ import annotations

import pytest

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
    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.calls.append(f"get_range {key}")
        return self.objects[key][start:start + length]

    def copy(self, source: str, destination: str) -> None:
        self.calls.append(f"copy {source} {destination}")
        self.objects[destination] = self.objects[source]


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
@pytest.mark.parametrize(("start", "length"), [(-1, 3), (0, -1)])
def test_a_negative_range_is_refused_before_the_backend_is_asked(storage, start, length):
    # A negative slice and a negative file offset would answer differently.
    with pytest.raises(ValueError, match="a byte range needs a start and a length of 0 or more"):
        capabilities.read_range(storage, "a", start, length)
    assert storage.calls == []

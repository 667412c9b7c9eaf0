"""The storage contract's optional methods as the core calls them: the backend's own
`get_range` or `copy` when it has one (hookspecs.RangedReads, hookspecs.ServerSideCopy),
else the same answer from the methods every backend has. A plugin written before these
methods existed (pitrkit-gcs) goes on working unchanged, only without what they spare.
"""

from __future__ import annotations

from pitrkit.hookspecs import RangedReads, ServerSideCopy, Storage


def read_range(storage: Storage, key: str, start: int, length: int) -> bytes:
    """Bytes `start` to `start + length` of the object: fewer where it ends first, b""
    from its end on; `ObjectNotFound` if absent."""
    if start < 0 or length < 0:
        # Checked here, not by each backend: a negative slice and a negative file offset
        # would answer differently.
        raise ValueError(f"a byte range needs a start and a length of 0 or more, not {start} and {length}")
    if isinstance(storage, RangedReads):
        return storage.get_range(key, start, length)
    return storage.get(key)[start:start + length]


def copy(storage: Storage, source: str, destination: str) -> None:
    """Store the object `source` also under `destination`, create-only and durable as a
    `put`; `ObjectNotFound` if `source` is absent."""
    if isinstance(storage, ServerSideCopy):
        storage.copy(source, destination)
    else:
        storage.put(destination, storage.get(source))

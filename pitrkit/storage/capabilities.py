"""The storage contract's optional methods as the core calls them: the backend's own
`get_range` or `copy` when it has one (hookspecs.RangedReads, hookspecs.ServerSideCopy),
else the same answer from the methods every backend has. A plugin written before these
methods existed goes on working unchanged, only without what they spare. Also the one
check of a byte range, made before any backend sees it.
"""

from __future__ import annotations

from pitrkit.hookspecs import RangedReads, ServerSideCopy, Storage, StorageError

# The end of the furthest range pitrkit asks for: the largest file offset (off_t) a file
# system or an HTTP Range header can carry. Past it pread(2) fails with OverflowError
# rather than an OSError, and nothing pitrkit stores comes near it.
MAX_RANGE_END = (1 << 63) - 1


def check_range(offset: int, length: int) -> None:
    """Raise `ValueError`, saying why, unless `offset` and `length` are a byte range every
    backend reads alike: ints (not bools), neither negative (a negative slice and a
    negative file offset answer differently), ending by `MAX_RANGE_END`."""
    if type(offset) is not int or type(length) is not int:
        raise ValueError(f"a byte range is an offset and a length in whole bytes, not {offset!r} and {length!r}")
    if offset < 0 or length < 0:
        raise ValueError(f"a byte range needs an offset and a length of 0 or more, not {offset} and {length}")
    if offset + length > MAX_RANGE_END:
        raise ValueError(f"the byte range {offset}+{length} ends past {MAX_RANGE_END}, the largest offset storage "
                         "can address")


def read_range(storage: Storage, key: str, offset: int, length: int) -> bytes:
    """Bytes `offset` to `offset + length` of the object: fewer where it ends first, b""
    from its end on; `ObjectNotFound` if absent. `ValueError` for a range `check_range`
    refuses, before the backend is asked."""
    check_range(offset, length)
    if not isinstance(storage, RangedReads):
        return storage.get(key)[offset:offset + length]
    data = storage.get_range(key, offset, length)
    if len(data) > length:
        # A backend that answers past the range (an HTTP server that ignored the Range
        # header, unnoticed) would hand the caller the wrong bytes at the right place.
        raise StorageError(f"{storage.url}: {key}: {len(data)} bytes answered for a range of {length}")
    return data


def copy(storage: Storage, source: str, target: str) -> None:
    """Store the object `source` also under `target`, create-only and durable as a
    `put`; `ObjectNotFound` if `source` is absent."""
    if isinstance(storage, ServerSideCopy):
        storage.copy(source, target)
    else:
        storage.put(target, storage.get(source))

"""The whole plugin contract: the hooks pitrkit calls and the interfaces plugins return.

A plugin is a module (or object) with functions marked `@hookimpl`, registered by pitrkit
itself (the built-ins) or found through the `pitrkit.plugins` entry-point group. Entry
points are looked up by name only when the configuration asks for something no
registered plugin provides: the entry point's name is the URL scheme of a storage
backend (`gs` for `gs://...`) or the name of a compression algorithm.

Storage backends are deliberately small and uniform (WAL-G's `Folder` is the model):
whole objects by key, create-only by default, and three exceptions that carry meaning.
They know nothing about PostgreSQL; every backend must pass `pitrkit.storage.conformance`.
Beyond the required methods (`Storage`), a backend may offer optional ones (`RangedReads`,
`ServerSideCopy`) that spare work; pitrkit calls those through
`pitrkit.storage.capabilities`, which falls back to the required methods without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import pluggy

hookspec = pluggy.HookspecMarker("pitrkit")
hookimpl = pluggy.HookimplMarker("pitrkit")


# --- storage -------------------------------------------------------------------------


class StorageError(Exception):
    """The storage did not answer, or answered with a fault. Callers retry it a bounded
    number of times, then give up; it never means "the object is absent"."""


class StorageMissing(StorageError):
    """The archive's container itself does not exist (a directory that is not there, a
    bucket never created): a fault, never "not found", but one that retrying cannot
    cure, so pitrkit reports it at once instead of after every retry."""


class ObjectNotFound(Exception):
    """The storage answered, authoritatively, that the key does not exist. A backend
    raises this only when it reached the archive and it is there (the directory or
    bucket exists); a missing bucket or an unmounted directory is a `StorageError`."""


class ObjectExists(Exception):
    """A create-only `put` found the key already present; nothing was written. It also
    promises that the object there is durable, as a put's return would: a caller that
    finds its own bytes there (a retry, a concurrent identical push) reports success."""


class ObjectInfo(NamedTuple):
    key: str
    size: int
    # When the object was stored (POSIX seconds), if the backend knows; the planner
    # uses it to tell roughly when a WAL segment or history file reached the archive.
    modified: float | None = None


class Folder(NamedTuple):
    """One level of the key hierarchy, as WAL-G's `ListFolder` returns it."""

    objects: list[ObjectInfo]  # keys directly in the folder, in key order
    folders: list[str]  # sub-folder prefixes, each ending in "/", in key order


# The keys pitrkit stores objects under (docs/archive-format.md has the layout): components
# of ASCII letters, digits, "-", "_" and ".", none empty nor starting with ".", joined by
# "/"; at most `MAX_KEY_LENGTH` bytes in all and 100 in a component (pitrkit's own keys
# stay under 100 bytes, and a file name under a file system's 255). So a backend
# may keep its temporary objects under names starting with "." (the file:// backend does),
# and needs no escaping; byte order and code point order are the same for these keys.
MAX_KEY_LENGTH = 256


@runtime_checkable
class Storage(Protocol):
    """One archive's objects, addressed by `/`-separated keys relative to the archive root.

    Every method honours the `timeout` (seconds) the backend was created with, so that no
    call hangs forever; retries are the caller's business, not the backend's, except
    where the backend's own client retries idempotent requests by itself. A backend on a
    local file system may leave it unenforced, as file:// does: a system call cannot be
    abandoned safely.

    Runtime-checkable: `isinstance(backend, Storage)` says whether every member is there
    (not their signatures). pitrkit checks the object a plugin returns the same way when
    it opens an archive, and refuses an incomplete one naming what is missing.
    """

    url: str

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Store `data` under `key`, durably: return only once the object would survive
        a crash of this host (local: file and directory fsync'd; remote: the upload is
        confirmed and its checksum verified). Without `overwrite` the put is create-only
        and raises `ObjectExists` if the key is present, leaving it untouched; with
        `overwrite` it replaces the object atomically (for small mutable documents).
        `ObjectExists` is raised only once the existing object is durable too: it may be
        a concurrent writer's that has not finished making it so, or an earlier attempt
        of ours that failed after publishing it (local: fsync it and its directory).
        Nothing written on the way is ever visible: `get` and the listings see the object
        whole or not at all. Local: new intermediate directories are fsync'd in their
        parents too."""

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` if absent."""

    def stat(self, key: str) -> ObjectInfo:
        """Size (and, if known, store time) of the object; `ObjectNotFound` if absent."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order (byte order of the
        UTF-8 key). An empty archive yields nothing. May be lazy (pages fetched as it is
        consumed): pitrkit consumes it whole before using it, and a fault on the way is a
        `StorageError`, never a shorter listing. Never an unfinished or temporary object."""

    def list_folder(self, prefix: str) -> Folder:
        """The objects directly under `prefix` (the archive root "" or a prefix ending in
        "/") and its sub-folders, without descending into them: how the planner finds
        timelines and WAL directories without listing every segment. A folder exists only
        while it holds an object: one whose objects were all deleted is not listed.
        On a hot path: `wal-fetch` calls it for every segment that is not stored, so it
        should be one request for one level, never a scan of the archive."""

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is not an error (but an unreachable
        archive is a `StorageError`, as for every method)."""


# Optional storage methods: each a protocol of its own, so that a backend without it
# still is a `Storage`. The core never calls one directly but through
# pitrkit/storage/capabilities.py, which uses it when the backend has it (an isinstance
# check against the protocol: is there a method of that name) and otherwise gets the same
# answer from the required methods. A backend that has one must answer exactly as that
# fallback would; the conformance suite runs each test both ways.


@runtime_checkable
class RangedReads(Protocol):
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes `offset` to `offset + length` of the object, without reading the rest:
        exactly `get(key)[offset:offset + length]`, so fewer where the object ends first
        and b"" from its end on (and for `length` 0). `ObjectNotFound` if absent, whatever
        the range. Never more than `length` bytes (pitrkit refuses an answer that has
        more). pitrkit passes only ints with 0 <= offset, 0 <= length and
        offset + length <= 2**63 - 1 (`capabilities.MAX_RANGE_END`). Fallback: `get` and
        slice."""


@runtime_checkable
class ServerSideCopy(Protocol):
    def copy(self, source: str, target: str) -> None:
        """Store the object `source` also under `target`, without its bytes passing
        through this host: exactly as `put(target, get(source))` would, so durable and
        create-only (`ObjectExists` if `target` is present, which stays untouched; where
        the backend's `put` takes a retry's own earlier object for success, its copy does
        too). `ObjectNotFound` if `source` is absent, and nothing is stored. Fallback:
        `get`, then `put`."""


# --- compression ---------------------------------------------------------------------


class Compressor(Protocol):
    """A compression algorithm. `name` is stored in every object header, so an object
    can always be read back with the compressor of that name, whatever is configured."""

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes | memoryview, size: int) -> bytes:
        """`size` is the plaintext size from the object header: an upper bound the
        decompressor may use to refuse a decompression bomb."""


# --- encryption ----------------------------------------------------------------------


class DocumentSignature(NamedTuple):
    """What authenticates one stored JSON document (docs/archive-format.md): the
    algorithm, the id of the key that made `tag`, and the tag itself (a MAC or a
    signature)."""

    algorithm: str
    key_id: str
    tag: bytes


class DocumentAuthenticator(Protocol):
    """Authentication of the archive's JSON documents (`archive.json`, manifests,
    `catalog/*`), which are stored in plain text. pitrkit builds the message (the
    document's key and its exact bytes, domain-separated) and stores the signature
    beside the document; the authenticator only makes and checks tags."""

    # False on a host that can only verify (a restore host holding a public verify key).
    can_sign: bool

    def sign(self, message: bytes) -> DocumentSignature: ...

    def verify(self, message: bytes, signature: DocumentSignature) -> None:
        """Raise `ValueError`, saying why, when `signature` does not authenticate
        `message` with a key this host has (an unknown key id included)."""


class Cipher(Protocol):
    """Authenticated encryption of object bodies. `associated` is the object's header,
    which the cipher must authenticate so that it cannot be altered or swapped. `name`
    (the algorithm) and `key_id` are stored in each object's header."""

    name: str
    key_id: str
    # The non-secret parameters `archive.json` must record for this cipher to write:
    # those the hook was given, or new ones for a new archive or after a key rotation.
    archive_parameters: dict
    # False on a host that can only write (a recipient-mode public key).
    can_decrypt: bool
    # How the archive's documents are authenticated under this cipher's keys; None for a
    # cipher that does not authenticate documents (they are then stored and read plain,
    # and anyone with write access to the storage can alter them).
    documents: DocumentAuthenticator | None

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes, associated: bytes, key_id: str) -> bytes:
        """Raise `ValueError` when authentication fails or the key is unknown."""


# --- hooks ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def pitrkit_storage(url: str, timeout: float) -> Storage | None:
    """Return a `Storage` for `url` if this plugin handles its scheme, else None."""


@hookspec(firstresult=True)
def pitrkit_compressor(name: str, level: int, threads: int) -> Compressor | None:
    """Return the compressor called `name`, else None. `level` is the configured level
    (ignored when only decompressing); `threads` is how many threads it may use
    (0: as many as there are cores). pitrkit keeps the compressor for the same three
    arguments and calls it from many threads at once."""


@hookspec(firstresult=True)
def pitrkit_cipher(settings: dict, archive_parameters: dict) -> Cipher | None:
    """Return a `Cipher` for the `[encryption]` settings and the non-secret parameters
    recorded in `archive.json` ({} for an archive not yet created), else None. Raise
    `ValueError` for settings that do not fit the archive."""

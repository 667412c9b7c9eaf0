"""One archive: its storage backend opened from the configuration, the key layout, the
identity document `archive.json`, and the cipher `[encryption]` configures for it.

`archive.json` is what makes a location an archive. `pitrkit init` creates it, and only
`init` does: without it every command treats the archive as absent (`ArchiveMissing`),
never as empty. An unmounted file system, a mistyped path or an empty bucket prefix
answers "not found" for every key, and taking that for "nothing archived yet" would let
`wal-fetch` end recovery early and `wal-push` store WAL where no restore will look.

Every storage call made through `Archive` is bounded: the backend enforces a timeout per
call and `Archive` retries a `StorageError` a configured number of times with
exponential backoff and jitter, then raises `ArchiveUnavailable`. "Not found" and
"already exists" are answers, not faults, and are never retried.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from pitrkit import catalog
from pitrkit.catalog import ArchiveIdentity
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.hookspecs import Cipher, Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError
from pitrkit.plugins import Plugins
from pitrkit.wal import WalFileKind, WalFileName

log = logging.getLogger(__name__)

IDENTITY_KEY = "archive.json"
WAL_PREFIX = "wal/"
BACKUPS_PREFIX = "backups/"
CATALOG_PREFIX = "catalog/"
BACKUP_CATALOG_KEY = "catalog/backups.json"
WAL_INDEX_PREFIX = "catalog/wal/"
RETENTION_STATE_KEY = "catalog/retention.json"
LEASES_PREFIX = "leases/"

IDENTITY_TTL = 60.0

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0

Result = TypeVar("Result")


class ArchiveUnavailable(PitrkitError):
    """Storage kept failing after every retry."""

    exit_code = 1


class ArchiveMissing(PitrkitError):
    """The configured location holds no `archive.json`: a fault, never an empty archive
    (wal-fetch exits 126 for it, see cli.outcome)."""

    exit_code = 1


def wal_key(file: WalFileName) -> str:
    """`wal/<timeline><log>/<name>` for segment-based names (so that a directory or
    prefix holds at most one 4 GiB "log" of segments), `wal/<name>` for history files."""
    if file.kind == WalFileKind.HISTORY:
        return WAL_PREFIX + file.name
    return wal_folder(file.segment) + file.name


def wal_folder(name: str) -> str:
    """`wal/<timeline><log>/`: the folder of a segment-based WAL file name (a segment, its
    `.partial` or `.backup` file), or of a name's first 16 digits (timeline and log)."""
    return f"{WAL_PREFIX}{name[:16]}/"


def log_folder(timeline: int, log_number: int) -> str:
    """`wal/<TLI><LOG>/`, the folder of one timeline's 4 GiB "log" of segments."""
    return wal_folder(f"{timeline:08X}{log_number:08X}")


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


def manifest_key(backup_id: str) -> str:
    """The backup's commit marker: a backup whose manifest is absent does not exist."""
    return f"{BACKUPS_PREFIX}{backup_id}/manifest.json"


def lease_key(lease_id: str) -> str:
    return f"{LEASES_PREFIX}{lease_id}.json"


def wal_index_key(log_folder: str) -> str:
    """The catalog's index of one WAL folder, `wal/<TLI><LOG>/` -> `catalog/wal/<TLI><LOG>.json`."""
    return f"{WAL_INDEX_PREFIX}{log_folder.removeprefix(WAL_PREFIX).rstrip('/')}.json"


class Archive:
    def __init__(self, config: Config, plugins: Plugins | None = None) -> None:
        self.config = config
        self.plugins = plugins or Plugins()
        self.storage = self.plugins.storage(config.repository.url, config.repository.timeout)
        self._retries = config.repository.retries
        self._identity: ArchiveIdentity | None = None
        self._identity_read_at = 0.0
        # The cipher and the archive.json parameters it was built for: rebuilt when they
        # change (a rotation, an archive created after we first looked).
        self._cipher: tuple[catalog.EncryptionParameters | None, Cipher] | None = None
        # Restore workers and the agent's look-ahead threads ask at once: build it once
        # (a passphrase command run twice, or scrypt paid twice, is time for nothing).
        self._cipher_lock = threading.Lock()

    # -- bounded storage calls -----------------------------------------------------------

    def _call(self, what: str, call: Callable[[], Result]) -> Result:
        delay = _BACKOFF_FIRST
        for attempt in range(self._retries + 1):
            try:
                return call()
            except StorageError as exc:
                if attempt == self._retries:
                    raise ArchiveUnavailable(f"{what} failed after {attempt + 1} attempts: {exc}") from None
                pause = delay * random.uniform(0.5, 1.0)  # jitter: retries of many callers spread out
                log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s",
                            what, attempt + 1, self._retries + 1, pause, exc)
                time.sleep(pause)
                delay = min(delay * 2, _BACKOFF_MAX)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self._call(f"storing {key}", lambda: self.storage.put(key, data, overwrite=overwrite))

    def get(self, key: str) -> bytes:
        return self._call(f"reading {key}", lambda: self.storage.get(key))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(f"checking {key}", lambda: self.storage.stat(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._call(f"listing {prefix or 'the archive'}", lambda: list(self.storage.list(prefix))))

    def list_folder(self, prefix: str) -> Folder:
        return self._call(f"listing {prefix or 'the archive'}", lambda: self.storage.list_folder(prefix))

    def delete(self, key: str) -> None:
        self._call(f"deleting {key}", lambda: self.storage.delete(key))

    # -- identity ------------------------------------------------------------------------

    def identity(self, *, fresh: bool = False) -> ArchiveIdentity:
        """`archive.json`; raises `ArchiveMissing` when it is absent. It does not change
        once written (but for a key rotation), so readers use a copy up to
        `IDENTITY_TTL` seconds old. `fresh`: read it now, for an answer that must not
        rest on a copy that may have outlived the file system it came from (every push,
        every "not archived")."""
        if fresh or self._identity is None or time.monotonic() - self._identity_read_at > IDENTITY_TTL:
            try:
                data = self.get(IDENTITY_KEY)
            except ObjectNotFound:
                self._identity = None
                raise ArchiveMissing(
                    f"the archive {self.storage.url} has no {IDENTITY_KEY}: its storage is not mounted or not "
                    "the archive's, or the archive was never created (`pitrkit init` creates it)") from None
            try:
                self._identity = catalog.decode(data, ArchiveIdentity, f"{self.storage.url}/{IDENTITY_KEY}")
            except ValueError as exc:
                raise PitrkitError(str(exc)) from None
            self._identity_read_at = time.monotonic()
        return self._identity

    def create(self, system_identifier: int, segment_size: int, major: int) -> ArchiveIdentity | None:
        """Create `archive.json` for the cluster with these facts (`pitrkit init`), with
        the encryption parameters `[encryption]` asks for; None if one already exists
        (another init got there first: the caller reads and checks it)."""
        encryption = None
        if self.config.encryption.mode != "off":
            cipher = self._make_cipher(None)
            encryption = msgspec.convert(cipher.archive_parameters, catalog.EncryptionParameters)
        identity = ArchiveIdentity(
            system_identifier=system_identifier,
            wal_segment_size=segment_size,
            pg_versions=[major],
            encryption=encryption,
            created_at=datetime.now(UTC).replace(microsecond=0),
        )
        try:
            self.put(IDENTITY_KEY, catalog.encode(identity))
        except ObjectExists:
            return None
        log.info("initialized archive %s for system identifier %d", self.storage.url, system_identifier)
        self._identity, self._identity_read_at = identity, time.monotonic()
        if encryption is not None:
            self._cipher = (encryption, cipher)
        return identity

    # -- encryption ----------------------------------------------------------------------

    def cipher(self) -> Cipher | None:
        """The cipher that reads this archive's objects (with any key `[encryption]`
        lists); None when encryption is off. With encryption on, objects must be
        encrypted whatever `archive.json` says: it is not authenticated, so a copy
        rewritten to say "not encrypted" must not make forged plaintext objects
        acceptable. Built once: it may read key files, run a passphrase command, stretch
        passphrases."""
        if self.config.encryption.mode == "off":
            return None
        recorded = self.identity().encryption
        with self._cipher_lock:
            if self._cipher is None or self._cipher[0] != recorded:
                self._cipher = (recorded, self._make_cipher(recorded))
            return self._cipher[1]

    def write_cipher(self) -> Cipher | None:
        """The cipher new objects must be written with, or None for plaintext. Refuses
        whatever would leave the archive unreadable or mixed: plaintext into an encrypted
        archive, encryption into a plaintext one, a key that is not the archive's current
        key. A configuration that rotates (names the archive's current key as an old key)
        records its new key in `archive.json` first."""
        url = self.storage.url
        recorded = self.identity().encryption
        if self.config.encryption.mode == "off":
            if recorded is not None:
                raise RefusedError(f"the archive {url} is encrypted ({recorded.mode} mode), but [encryption] is "
                                   "off: refusing to store plaintext in it")
            return None
        if recorded is None:
            raise RefusedError(f"the archive {url} was created without encryption; [encryption] can only be "
                               "turned on for a new archive (a new repository.url, then a new base backup)")
        cipher = self.cipher()
        assert cipher is not None
        wanted = msgspec.convert(cipher.archive_parameters, catalog.EncryptionParameters)
        if wanted.key_ids != recorded.key_ids:
            self._record_encryption(wanted, cipher)
            recorded = wanted
        if cipher.key_id != recorded.current_key_id:
            retired = " (a retired key)" if cipher.key_id in recorded.key_ids else ""
            raise RefusedError(
                f"the configured encryption key {cipher.key_id}{retired} is not the archive's current key "
                f"{recorded.current_key_id}: refusing to write with it (to rotate, list the current key in "
                "encryption.old_keys; see docs/encryption.md)")
        return cipher

    def _record_encryption(self, parameters: catalog.EncryptionParameters, cipher: Cipher) -> None:
        identity = msgspec.structs.replace(self.identity(), encryption=parameters)
        self.put(IDENTITY_KEY, catalog.encode(identity), overwrite=True)
        log.warning("archive %s: encryption key %s is now current (keys, oldest first: %s)",
                    self.storage.url, parameters.current_key_id, ", ".join(parameters.key_ids))
        self._identity, self._identity_read_at = identity, time.monotonic()
        self._cipher = (parameters, cipher)  # the parameters it proposed: nothing to rebuild

    def _make_cipher(self, recorded: catalog.EncryptionParameters | None) -> Cipher:
        parameters = {} if recorded is None else msgspec.to_builtins(recorded)
        return self.plugins.cipher(msgspec.to_builtins(self.config.encryption), parameters)

"""One archive: its storage backend opened from the configuration, the key layout, the
identity document `archive.json`, the cipher `[encryption]` configures for it, and the
reading and writing of the archive's JSON documents, authenticated under that cipher's
keys when encryption is on (storage/codec.py, storage/envelope.py).

An archive holds one or more eras (storage/identity.py `Era`): the clusters a
`pg_upgrade` made of the first. `Archive.era(n)` is the archive seen from era n: the
same storage, identity and keys, every other key under the era's prefix (`eras/<n>/`,
nothing for era 1), so that WAL, backups and catalog of an era live in their own
namespace and every module that reads or writes them works on one era unchanged.

`archive.json` is what makes a location an archive. `pitrkit init` creates it, and only
`init` does: without it every command treats the archive as absent (`ArchiveMissing`),
never as empty. An unmounted file system, a mistyped path or an empty bucket prefix
answers "not found" for every key, and taking that for "nothing archived yet" would let
`wal-fetch` end recovery early and `wal-push` store WAL where no restore will look.

Every storage call made through `Archive` is bounded: the backend enforces a timeout per
call and `Archive` retries a `StorageError` a configured number of times with
exponential backoff and jitter, then raises `ArchiveUnavailable`. "Not found" and
"already exists" are answers, not faults, and are never retried; nor is an archive that
does not exist at all (`StorageMissing`), which no retry can make appear. A ranged read
(`get_range`) and a copy (`copy`) use the backend's own when it has one and otherwise
the required methods (storage/capabilities.py), retried alike.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from pitrkit.config import Config
from pitrkit.errors import NotInArchive, PitrkitError, RefusedError
from pitrkit.hookspecs import (
    Cipher,
    DocumentAuthenticator,
    Folder,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageMissing,
)
from pitrkit.postgres.wal import WalFileKind, WalFileName
from pitrkit.storage import capabilities, codec, envelope, objects
from pitrkit.storage.codec import Document
from pitrkit.storage.identity import ArchiveIdentity, EncryptionParameters, Era
from pitrkit.storage.plugins import Plugins

log = logging.getLogger(__name__)

IDENTITY_KEY = "archive.json"
WAL_PREFIX = "wal/"
BACKUPS_PREFIX = "backups/"
CATALOG_PREFIX = "catalog/"
BACKUP_CATALOG_KEY = "catalog/backups.json"
WAL_INDEX_PREFIX = "catalog/wal/"
RETENTION_STATE_KEY = "catalog/retention.json"
LEASES_PREFIX = "leases/"
DRILLS_PREFIX = "drills/"
ERAS_PREFIX = "eras/"

IDENTITY_TTL = 60.0

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0

Result = TypeVar("Result")


class ArchiveUnavailable(PitrkitError):
    """Storage kept failing after every retry."""

    exit_code = 1


class TamperedDocument(RefusedError):
    """With encryption on, a stored JSON document that does not authenticate under the
    configured keys: altered, moved from another key, or made without the keys."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key} does not authenticate: {why}; refusing it (altered, or not written with this "
                         "archive's keys: see docs/encryption.md)")
        self.key = key


class ArchiveMissing(PitrkitError):
    """The configured location holds no `archive.json`: a fault, never an empty archive
    (wal-fetch exits 126 for it, see errors.outcome)."""

    exit_code = 1


def era_prefix(era: int) -> str:
    """Where era `era`'s keys start: the root for era 1 (every archive's layout before its
    first upgrade, kept as it is), `eras/<n>/` for a later one."""
    return "" if era == 1 else f"{ERAS_PREFIX}{era}/"


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


def claim_key(backup_id: str) -> str:
    """Stored create-only first: the run that stores it owns the backup folder."""
    return f"{BACKUPS_PREFIX}{backup_id}/claim.json"


def manifest_key(backup_id: str) -> str:
    """The backup's commit marker: a backup whose manifest is absent does not exist."""
    return f"{BACKUPS_PREFIX}{backup_id}/manifest.json"


def lease_key(lease_id: str) -> str:
    return f"{LEASES_PREFIX}{lease_id}.json"


def drill_key(drill_id: str) -> str:
    """A restore drill's report (ops/drill.py); retention leaves `drills/` alone."""
    return f"{DRILLS_PREFIX}{drill_id}.json"


def wal_index_key(log_folder: str) -> str:
    """The catalog's index of one WAL folder, `wal/<TLI><LOG>/` -> `catalog/wal/<TLI><LOG>.json`."""
    return f"{WAL_INDEX_PREFIX}{log_folder.removeprefix(WAL_PREFIX).rstrip('/')}.json"


def _relative(prefix: str, found: list[ObjectInfo]) -> list[ObjectInfo]:
    """Listed objects with their keys relative to an era's prefix."""
    if not prefix:
        return found
    return [info._replace(key=info.key[len(prefix):]) for info in found]


def stored_at(modified: float | None) -> datetime | None:
    """An object's store time (`ObjectInfo.modified`, POSIX seconds) as an instant."""
    return None if modified is None else datetime.fromtimestamp(modified, UTC)


class Archive:
    def __init__(self, config: Config, plugins: Plugins | None = None) -> None:
        """Open `config`'s repository: its first, when it has several (storage/repositories.py
        opens each), with that repository's own encryption and retention."""
        if isinstance(config.repository, list):
            # Also a list of one: its entry may carry its own [encryption] and [retention].
            config = config.first_repository
        repository = config.repositories[0]
        self.config = config
        self.name = repository.name
        self.plugins = plugins or Plugins()
        self.storage = self.plugins.storage(repository.url, repository.timeout)
        self._retries = repository.retries
        self._identity: ArchiveIdentity | None = None
        self._identity_read_at = 0.0
        # The bytes `_identity` was verified from: re-reading archive.json (the agent does
        # it often) costs a comparison, not a verification, while it is unchanged.
        self._identity_bytes = b""
        # The cipher and the archive.json parameters it was built for: rebuilt when they
        # change (a rotation, an archive created after we first looked).
        self._cipher: tuple[EncryptionParameters | None, Cipher] | None = None
        # Restore workers and the agent's look-ahead threads ask at once: build it once
        # (a passphrase command run twice, or scrypt paid twice, is time for nothing).
        self._cipher_lock = threading.Lock()
        # Which era this is a view of (`era`): its keys start with `prefix`; the identity
        # and the cipher are the root archive's, shared by every view.
        self.era_number = 1
        self.prefix = ""
        self._root = self
        self._views: dict[int, Archive] = {}

    # -- eras ----------------------------------------------------------------------------

    def era(self, number: int) -> Archive:
        """This archive seen from era `number` (module docstring); refuses an era that
        `archive.json` does not record."""
        root = self._root
        if number == 1:  # every archive has it: no read of archive.json (wal-fetch's hot path)
            return root
        if root.identity().era(number) is None:
            raise RefusedError(f"the archive {self.storage.url} has no era {number} (its eras: "
                               f"{', '.join(str(era.era) for era in root.identity().all_eras)})")
        if number not in root._views:
            view = copy.copy(root)
            view.era_number, view.prefix, view._views = number, era_prefix(number), {}
            root._views[number] = view
        return root._views[number]

    def era_of(self, system_identifier: int) -> Archive:
        """The view of the era of the cluster with this system identifier, read afresh;
        refuses a cluster the archive has never held."""
        identity = self._root.identity(fresh=True)
        era = identity.era_of(system_identifier)
        if era is None:
            raise RefusedError(f"the archive {self.storage.url} belongs to the cluster with system identifier "
                               f"{identity.clusters}, not to {system_identifier}: after a pg_upgrade, `pitrkit "
                               "upgrade` records the new cluster")
        return self.era(era.era)

    def current(self) -> Archive:
        """The view of the newest era: the cluster that runs now, which new backups and
        WAL are of."""
        return self.era(self._root.identity().current_era.era)

    def eras(self) -> list[Archive]:
        """A view of every era, oldest first."""
        return [self.era(era.era) for era in self._root.identity().all_eras]

    @property
    def era_record(self) -> Era:
        """What `archive.json` records of this view's era."""
        era = self._root.identity().era(self.era_number)
        assert era is not None  # `era` checked it, and eras are never removed
        return era

    # -- bounded storage calls -----------------------------------------------------------

    def _call(self, what: str, call: Callable[[], Result]) -> Result:
        delay = _BACKOFF_FIRST
        for attempt in range(self._retries + 1):
            try:
                return call()
            except StorageMissing as exc:
                raise ArchiveUnavailable(f"{what} failed: {exc}") from None
            except StorageError as exc:
                if attempt == self._retries:
                    raise ArchiveUnavailable(f"{what} failed after {attempt + 1} attempts: {exc}") from None
                pause = delay * random.uniform(0.5, 1.0)  # jitter: retries of many callers spread out
                log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s",
                            what, attempt + 1, self._retries + 1, pause, exc)
                time.sleep(pause)
                delay = min(delay * 2, _BACKOFF_MAX)
        raise AssertionError("unreachable")

    # Keys given to and returned by these are the era's (relative to `prefix`).

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        key = self.prefix + key
        self._call(f"storing {key}", lambda: self.storage.put(key, data, overwrite=overwrite))

    def get(self, key: str) -> bytes:
        key = self.prefix + key
        return self._call(f"reading {key}", lambda: self.storage.get(key))

    def stat(self, key: str) -> ObjectInfo:
        key = self.prefix + key
        return self._call(f"checking {key}", lambda: self.storage.stat(key))._replace(key=key[len(self.prefix):])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self.prefix + prefix
        found = self._call(f"listing {full or 'the archive'}", lambda: list(self.storage.list(full)))
        return iter(_relative(self.prefix, found))

    def list_folder(self, prefix: str) -> Folder:
        full = self.prefix + prefix
        folder = self._call(f"listing {full or 'the archive'}", lambda: self.storage.list_folder(full))
        if not self.prefix:
            return folder
        cut = len(self.prefix)
        return Folder(_relative(self.prefix, folder.objects), [each[cut:] for each in folder.folders])

    def delete(self, key: str) -> None:
        key = self.prefix + key
        self._call(f"deleting {key}", lambda: self.storage.delete(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes `offset` to `offset + length` of the object: fewer where it ends first,
        b"" from its end on; `ObjectNotFound` if absent. Read with the backend's own
        ranged read when it has one, else `get` and slice (storage/capabilities.py). A
        range `capabilities.check_range` refuses (negative, not an int, ending past what
        storage addresses: offsets come from stored documents, which are hostile until
        checked) is refused here, before any storage call. Unverified: the caller checks
        the bytes against what it expects of them (a digest, a frame)."""
        key = self.prefix + key
        try:
            capabilities.check_range(offset, length)
        except ValueError as exc:
            raise RefusedError(f"refusing to read {key} from {self.storage.url}: {exc}") from None
        return self._call(f"reading {key} (bytes {offset} to {offset + length})",
                          lambda: capabilities.read_range(self.storage, key, offset, length))

    def copy(self, source: str, target: str) -> None:
        """Store the object `source` also under `target`, durably and create-only as
        `put` (`ObjectExists` if `target` is present; a retried copy may meet its own
        earlier attempt there, as a retried put may); `ObjectNotFound` if `source` is
        absent. The backend's server-side copy when it has one, else `get`, then `put`
        (storage/capabilities.py)."""
        source, target = self.prefix + source, self.prefix + target
        self._call(f"copying {source} to {target}", lambda: capabilities.copy(self.storage, source, target))

    def read_wal(self, name: str) -> bytes:
        """The plaintext of the archived WAL file `name`, exactly that object, verified
        (storage/objects.py). `NotInArchive` when the archive answers that it does not
        have it. A corrupt read may be a transfer fault, so the object is read again up
        to `[repository] retries` times before it is declared corrupt."""
        key = wal_key(WalFileName.parse(name))
        attempt = 0
        while True:
            try:
                blob = self.get(key)
            except ObjectNotFound:
                raise NotInArchive(f"{name} is not in the archive {self.storage.url}") from None
            try:
                return objects.decode(key, blob, self.plugins.compressor, self.cipher())
            except objects.CorruptObject as exc:
                if attempt == self._retries:
                    raise PitrkitError(str(exc)) from None
                attempt += 1
                log.warning("%s; reading it again", exc)

    # -- documents -----------------------------------------------------------------------

    def put_document(self, key: str, document: msgspec.Struct, *, overwrite: bool = False,
                     pretty: bool = True) -> None:
        """Store a JSON document, in its authenticated envelope when encryption is on
        (bound to its key from the archive's root: another era's document is another's)."""
        self.put(key, self._sealed(self.prefix + key, codec.encode(document, pretty=pretty), self._authenticator()),
                 overwrite=overwrite)

    def get_document(self, key: str, kind: type[Document]) -> Document:
        """A stored JSON document, authenticated when encryption is on. Raises
        `ObjectNotFound`, `TamperedDocument` (never to be ignored) and `ValueError` for
        an authentic document that does not decode."""
        return self._opened(self.prefix + key, self.get(key), kind, self._authenticator())

    def _authenticator(self) -> DocumentAuthenticator | None:
        cipher = self.cipher()
        return None if cipher is None else cipher.documents

    def _sealed(self, key: str, data: bytes, authenticator: DocumentAuthenticator | None) -> bytes:
        if authenticator is None:
            return data
        if not authenticator.can_sign:
            raise RefusedError(f"cannot write {key}: documents in this encrypted archive are signed, and this host "
                               "holds only the verify key (set encryption.signing_key_file where documents are "
                               "written)")
        return envelope.seal(key, data, authenticator)

    def _opened(self, key: str, data: bytes, kind: type[Document],
                authenticator: DocumentAuthenticator | None) -> Document:
        if envelope.is_sealed(data):
            try:
                data = envelope.unseal(key, data, authenticator)
            except ValueError as exc:
                raise TamperedDocument(key, str(exc)) from None
        elif authenticator is not None:
            raise TamperedDocument(key, "it is not authenticated, but encryption is configured, and anyone with "
                                        "write access to the storage can make a plain document")
        return codec.decode(data, kind, key)

    # -- identity ------------------------------------------------------------------------

    def identity(self, *, fresh: bool = False) -> ArchiveIdentity:
        """`archive.json`; raises `ArchiveMissing` when it is absent. It does not change
        once written (but for a key rotation), so readers use a copy up to
        `IDENTITY_TTL` seconds old. `fresh`: read it now, for an answer that must not
        rest on a copy that may have outlived the file system it came from (every push,
        every "not archived"). With encryption on it is authenticated, by the key its own
        parameters derive (a passphrase's salt): a changed salt derives another key, which
        then fails; unchanged bytes are not verified again. An era's view reads its
        root's."""
        if self._root is not self:
            return self._root.identity(fresh=fresh)
        if fresh or self._identity is None or time.monotonic() - self._identity_read_at > IDENTITY_TTL:
            try:
                data = self.get(IDENTITY_KEY)
            except ObjectNotFound:
                self._identity = None
                raise ArchiveMissing(
                    f"the archive {self.storage.url} has no {IDENTITY_KEY}: its storage is not mounted or not "
                    "the archive's, or the archive was never created (`pitrkit init` creates it)") from None
            if self._identity is None or data != self._identity_bytes:
                self._identity = self._verified_identity(data)
                self._identity_bytes = data
            self._identity_read_at = time.monotonic()
        return self._identity

    def _verified_identity(self, data: bytes) -> ArchiveIdentity:
        authenticator = None
        try:
            if self.config.encryption.mode != "off":
                # The parameters first, on trust, to build the keys; then the whole
                # document is checked with them.
                try:
                    claimed = envelope.unseal(IDENTITY_KEY, data, None) if envelope.is_sealed(data) else data
                except ValueError as exc:
                    raise TamperedDocument(IDENTITY_KEY, str(exc)) from None
                recorded = codec.decode(claimed, ArchiveIdentity, IDENTITY_KEY).encryption
                if recorded is None and not envelope.is_sealed(data):
                    raise RefusedError(f"[encryption] is on, but {self.storage.url}/{IDENTITY_KEY} records no "
                                       "encryption and is not authenticated: the archive was created without "
                                       "encryption (it can only be turned on for a new archive), or someone with "
                                       "write access replaced archive.json; refusing it")
                authenticator = self._cipher_for(recorded).documents
            return self._opened(IDENTITY_KEY, data, ArchiveIdentity, authenticator)
        except ValueError as exc:  # "archive.json is not a valid ArchiveIdentity: ..."
            raise PitrkitError(f"{self.storage.url}/{exc}") from None

    def _store_identity(self, identity: ArchiveIdentity, cipher: Cipher | None, *, overwrite: bool) -> None:
        """Write `archive.json`, authenticated under `cipher`'s keys (those its own
        parameters derive); raises `ObjectExists` when not `overwrite`."""
        data = self._sealed(IDENTITY_KEY, codec.encode(identity), None if cipher is None else cipher.documents)
        self.put(IDENTITY_KEY, data, overwrite=overwrite)
        self._identity, self._identity_bytes, self._identity_read_at = identity, data, time.monotonic()

    def create(self, system_identifier: int, segment_size: int, major: int) -> ArchiveIdentity | None:
        """Create `archive.json` for the cluster with these facts (`pitrkit init`), with
        the encryption parameters `[encryption]` asks for; None if one already exists
        (another init got there first: the caller reads and checks it)."""
        encryption = None
        cipher = None
        if self.config.encryption.mode != "off":
            cipher = self._make_cipher(None)
            encryption = msgspec.convert(cipher.archive_parameters, EncryptionParameters)
        identity = ArchiveIdentity(
            system_identifier=system_identifier,
            wal_segment_size=segment_size,
            pg_versions=[major],
            encryption=encryption,
            created_at=datetime.now(UTC).replace(microsecond=0),
        )
        try:
            self._store_identity(identity, cipher, overwrite=False)
        except ObjectExists:
            return None
        log.info("initialized archive %s for system identifier %d", self.storage.url, system_identifier)
        if cipher is not None:
            self._cipher = (encryption, cipher)
        return identity

    def record_era(self, system_identifier: int, major: int) -> Era:
        """Append the era of the cluster with these facts to `archive.json` (`pitrkit
        upgrade`; the caller has checked that it is a new cluster of a major no older).
        Rewritten in place, as a key rotation rewrites it: the two are not run at once."""
        identity = self.identity(fresh=True)
        eras = identity.all_eras
        era = Era(era=len(eras) + 1, system_identifier=system_identifier, pg_version=major,
                  recorded_at=datetime.now(UTC).replace(microsecond=0))
        eras = [*eras, era]
        updated = msgspec.structs.replace(identity, eras=eras, pg_versions=[each.pg_version for each in eras])
        # Checked as any reader will check it, before it is stored.
        codec.decode(codec.encode(updated), ArchiveIdentity, IDENTITY_KEY)
        self._store_identity(updated, self.write_cipher(), overwrite=True)
        log.warning("archive %s: era %d recorded, the cluster with system identifier %d (PostgreSQL %d)",
                    self.storage.url, era.era, system_identifier, major)
        return era

    # -- encryption ----------------------------------------------------------------------

    def cipher(self) -> Cipher | None:
        """The cipher that reads this archive's objects (with any key `[encryption]`
        lists); None when encryption is off. With encryption on, objects must be
        encrypted whatever `archive.json` says, and it says so authenticated. Built
        once: it may read key files, run a passphrase command, stretch passphrases."""
        if self.config.encryption.mode == "off":
            return None
        if self._root is not self:
            return self._root.cipher()
        return self._cipher_for(self.identity().encryption)

    def _cipher_for(self, recorded: EncryptionParameters | None) -> Cipher:
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
        if self._root is not self:
            return self._root.write_cipher()
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
        wanted = msgspec.convert(cipher.archive_parameters, EncryptionParameters)
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

    def _record_encryption(self, parameters: EncryptionParameters, cipher: Cipher) -> None:
        identity = msgspec.structs.replace(self.identity(), encryption=parameters)
        self._store_identity(identity, cipher, overwrite=True)
        log.warning("archive %s: encryption key %s is now current (keys, oldest first: %s)",
                    self.storage.url, parameters.current_key_id, ", ".join(parameters.key_ids))
        self._cipher = (parameters, cipher)  # the parameters it proposed: nothing to rebuild

    def _make_cipher(self, recorded: EncryptionParameters | None) -> Cipher:
        parameters = {} if recorded is None else msgspec.to_builtins(recorded)
        return self.plugins.cipher(msgspec.to_builtins(self.config.encryption), parameters)

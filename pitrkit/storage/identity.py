"""`archive.json`, the archive's own identity: which cluster it belongs to, and the
non-secret half of an encrypted archive's keys (docs/archive-format.md#archivejson).

Anyone who can write to the storage can write it, so what could exhaust a reader is
checked as it is decoded (each type's `__post_init__`, which msgspec runs on decoding):
a tampered archive.json must not make a restore host allocate or spin without end.
"""

from __future__ import annotations

import msgspec

from pitrkit.storage.codec import Time

ARCHIVE_FORMAT_VERSION = 1

# Bounds on what archive.json may ask scrypt for: pitrkit writes n=2^17, r=8, p=1 (128
# MiB, see storage/keys.py). The memory scrypt takes is 128·n·r bytes and its time grows with p.
SCRYPT_MAX_MEMORY = 1 << 30
SCRYPT_MAX_P = 16
SALT_SIZES = range(16, 65)


class ScryptParameters(msgspec.Struct, kw_only=True, frozen=True):
    """How passphrases are stretched into keys for this archive (one salt per archive)."""

    salt: bytes  # random; base64 in JSON
    n: int
    r: int
    p: int

    def __post_init__(self) -> None:
        if len(self.salt) not in SALT_SIZES:
            raise ValueError(f"scrypt salt of {len(self.salt)} bytes (expected {SALT_SIZES.start} to "
                             f"{SALT_SIZES.stop - 1})")
        if self.n < 2 or self.n & (self.n - 1) or self.r < 1 or not 1 <= self.p <= SCRYPT_MAX_P \
                or 128 * self.n * self.r > SCRYPT_MAX_MEMORY:
            raise ValueError(f"scrypt parameters n={self.n} r={self.r} p={self.p} are out of bounds (n a power "
                             f"of two, 128·n·r at most {SCRYPT_MAX_MEMORY >> 20} MiB, p at most {SCRYPT_MAX_P})")


class EncryptionParameters(msgspec.Struct, kw_only=True, frozen=True):
    """The non-secret half of an encrypted archive's keys, in `archive.json`."""

    mode: str  # "key" (symmetric keys, passphrases) or "recipient" (X25519)
    algorithm: str  # the object cipher, e.g. "aes-256-gcm-chunked"
    # Ids of every key that has been the archive's current key, oldest first; the last
    # is the current one, the only one new objects may be written with.
    key_ids: list[str]
    scrypt: ScryptParameters | None = None  # set once a passphrase has been used

    def __post_init__(self) -> None:
        if not self.key_ids:
            raise ValueError("encryption.key_ids is empty: the archive has no current key")

    @property
    def current_key_id(self) -> str:
        return self.key_ids[-1]


class ArchiveIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """`archive.json`: which cluster this archive belongs to. Created by `pitrkit init`
    (`Archive.create`); afterwards only a key rotation rewrites it (appending to
    `encryption.key_ids`)."""

    format_version: int = ARCHIVE_FORMAT_VERSION
    system_identifier: int
    wal_segment_size: int
    # The major version of the cluster that created the archive. A list so that later
    # majors can be recorded; nothing appends to it yet.
    pg_versions: list[int]
    # Non-secret encryption parameters (mode, key ids, salt); None when not encrypted.
    encryption: EncryptionParameters | None = None
    created_at: Time

    def __post_init__(self) -> None:
        # PostgreSQL's limits (initdb --wal-segsize): a power of two from 1 MiB to 1 GiB.
        size = self.wal_segment_size
        if not (1 << 20 <= size <= 1 << 30 and size & (size - 1) == 0):
            raise ValueError(f"wal_segment_size {size} is not a power of two from 1 MiB to 1 GiB")

"""`archive.json`, the archive's own identity: which cluster it belongs to, its eras
(the clusters a `pg_upgrade` made of it, `pitrkit upgrade`), and the non-secret half of
an encrypted archive's keys (docs/archive-format.md#archivejson).

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

# PostgreSQL majors pitrkit can meet (10 is the first with the two-part numbering the
# WAL and control files of today use); anything else in an era is a hostile document.
PG_MAJORS = range(10, 100)
# More eras than any archive lives through (one per major upgrade): a bound on a
# tampered document's list, not a policy.
MAX_ERAS = 100


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


class Era(msgspec.Struct, kw_only=True, frozen=True):
    """One cluster the archive has held: the first is `init`'s, each later one is what a
    `pg_upgrade` made of the previous (a new system identifier, a newer major), recorded
    by `pitrkit upgrade`. Era 1's objects are at the archive's root; era n's (n > 1)
    under `eras/<n>/` (storage/archive.py `era_prefix`), since pg_upgrade keeps
    timeline 1 and the segment numbering, so the eras' WAL names could meet."""

    era: int
    system_identifier: int
    pg_version: int  # the major version, e.g. 18
    recorded_at: Time

    def __post_init__(self) -> None:
        if self.pg_version not in PG_MAJORS:
            raise ValueError(f"era {self.era}: PostgreSQL major version {self.pg_version} is not one pitrkit knows "
                             f"({PG_MAJORS.start} to {PG_MAJORS.stop - 1})")
        if not 0 < self.system_identifier < 1 << 64:
            raise ValueError(f"era {self.era}: system identifier {self.system_identifier} is not an unsigned "
                             "64-bit number")


class ArchiveIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """`archive.json`: which cluster this archive belongs to. Created by `pitrkit init`
    (`Archive.create`); afterwards only a key rotation rewrites it (appending to
    `encryption.key_ids`)."""

    format_version: int = ARCHIVE_FORMAT_VERSION
    system_identifier: int
    wal_segment_size: int
    # The major version of each era, oldest first (the first is the cluster that created
    # the archive; `pitrkit upgrade` appends).
    pg_versions: list[int]
    # Non-secret encryption parameters (mode, key ids, salt); None when not encrypted.
    encryption: EncryptionParameters | None = None
    created_at: Time
    # Empty until the first `pitrkit upgrade`, which records era 1 (from the fields
    # above) and the new one: an archive never upgraded is era 1 alone, unchanged.
    eras: list[Era] = []

    def __post_init__(self) -> None:
        # PostgreSQL's limits (initdb --wal-segsize): a power of two from 1 MiB to 1 GiB.
        size = self.wal_segment_size
        if not (1 << 20 <= size <= 1 << 30 and size & (size - 1) == 0):
            raise ValueError(f"wal_segment_size {size} is not a power of two from 1 MiB to 1 GiB")
        if not self.pg_versions or len(self.pg_versions) > MAX_ERAS or \
                any(version not in PG_MAJORS for version in self.pg_versions):
            raise ValueError(f"pg_versions {self.pg_versions[:MAX_ERAS]} is not a list of 1 to {MAX_ERAS} "
                             f"PostgreSQL major versions")
        if self.eras:
            self._check_eras()
        elif len(self.pg_versions) != 1:
            raise ValueError(f"pg_versions {self.pg_versions} lists several majors, but no eras are recorded")

    def _check_eras(self) -> None:
        """The eras must be 1, 2, ... in order, era 1 the archive's own cluster, each a
        cluster of its own and no older a major than the one before (pg_upgrade only goes
        forward); `pg_versions` says the same majors."""
        eras = self.eras
        if len(eras) > MAX_ERAS:
            raise ValueError(f"{len(eras)} eras (at most {MAX_ERAS})")
        if [era.era for era in eras] != list(range(1, len(eras) + 1)):
            raise ValueError(f"eras are numbered {[era.era for era in eras]}, not 1, 2, ... in order")
        if eras[0].system_identifier != self.system_identifier:
            raise ValueError(f"era 1 is of system identifier {eras[0].system_identifier}, not of the archive's "
                             f"({self.system_identifier})")
        if len({era.system_identifier for era in eras}) != len(eras):
            raise ValueError("two eras have the same system identifier")
        versions = [era.pg_version for era in eras]
        if versions != sorted(versions):
            raise ValueError(f"the eras' majors {versions} go backwards (pg_upgrade only goes to a newer major)")
        if versions != self.pg_versions:
            raise ValueError(f"pg_versions {self.pg_versions} does not match the eras' majors {versions}")

    @property
    def all_eras(self) -> list[Era]:
        """Every era, oldest first: era 1 alone, from the archive's own fields, until an
        upgrade is recorded."""
        if self.eras:
            return self.eras
        return [Era(era=1, system_identifier=self.system_identifier, pg_version=self.pg_versions[0],
                    recorded_at=self.created_at)]

    @property
    def current_era(self) -> Era:
        """The newest era: the cluster that runs now, which new backups are of."""
        return self.all_eras[-1]

    def era(self, number: int) -> Era | None:
        eras = self.all_eras
        return eras[number - 1] if 1 <= number <= len(eras) else None

    def as_era(self, era: Era) -> ArchiveIdentity:
        """This identity as the archive of one era's cluster alone (era 1's layout), for
        checks that hold an era's backups and WAL to the archive's cluster (verify)."""
        return msgspec.structs.replace(self, system_identifier=era.system_identifier, pg_versions=[era.pg_version],
                                       eras=[])

    @property
    def clusters(self) -> str:
        """The clusters it holds as messages name them: the system identifier, or with
        several eras each with its era."""
        eras = self.all_eras
        if len(eras) == 1:
            return str(eras[0].system_identifier)
        return ", ".join(f"{era.system_identifier} (era {era.era})" for era in eras)

    def era_of(self, system_identifier: int) -> Era | None:
        """The era of the cluster with this system identifier; None for a cluster the
        archive has never held."""
        return next((era for era in self.all_eras if era.system_identifier == system_identifier), None)

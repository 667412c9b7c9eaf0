"""Types of the JSON documents the backups and the catalog store in the archive:
manifests, the catalog's caches and retention's intent, leases and the catalog lock.
(`archive.json` is the archive's own, storage/identity.py; how every document is encoded,
and authenticated in an encrypted archive: storage/codec.py, storage/envelope.py.)

Documents are parsed at the edge with these types and passed around typed; a document
that does not decode is reported, never half-used.

Anyone who can write to the storage can write these documents, so every value that
reaches the file system, an allocation or a loop is checked as it is decoded (each
type's `__post_init__`, which msgspec runs on decoding): a path that could leave the data
directory, a size or count that could not be real. What needs the whole document (a
file's folder being listed, the stream tiling its parts) is checked where it is used, in
`unpack.check_manifest`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal

import msgspec

from pitrkit.config import MAX_HELD_FOR
from pitrkit.postgres.wal import Lsn
from pitrkit.storage.codec import Time
from pitrkit.storage.objects import ObjectHeader

# 1: every backup full, its files' bytes in `parts`, no checksums of the files. 2:
# checksummed, and incremental backups (`parent`) with block-mapped files (`block_files`,
# `block_maps`, `block_parts`): every file has a checksum, every relation file a block
# map with its blocks' checksums (catalog/checksums.py). Every backup pitrkit writes now
# is version 2, full ones too; version 1 is still read and restored, without the checks.
MANIFEST_FORMAT_VERSION = 1  # what a manifest without the field is
INCREMENTAL_FORMAT_VERSION = 2
CHECKSUMMED_FORMAT_VERSION = 2
# PostgreSQL's BLCKSZ and RELSEG_SIZE as the binaries pitrkit supports build them: 8 KiB
# pages, 1 GiB segment files. Block maps count in these.
BLOCK_SIZE = 8192
BLOCKS_PER_SEGMENT = 131072
# A file's checksum in a format_version 2 manifest: xxh3_128 (catalog/checksums.py).
FILE_CHECKSUM_SIZE = 16
# The longest chain of incrementals on one full a manifest may name: bounds what a
# restore loads (one manifest and one set of block maps per link).
MAX_CHAIN = 1000

# Largest stored backup part a manifest may list: pitrkit writes 32 MiB parts (backup/push.py),
# and a restore holds one per worker in memory.
MAX_PART_SIZE = 1 << 30
# Beyond any file a data directory holds; bounds the arithmetic on sizes and offsets.
MAX_FILE_SIZE = 1 << 48
_MAX_MTIME = 1 << 40  # os.utime refuses times far past this with OverflowError


# Who holds a lease or the lock, as its holder wrote it: shown in messages (escaped:
# see `shown`), so bounded. A host name has at most 253 characters; a holder or a
# command is a few words.
HostName = Annotated[str, msgspec.Meta(max_length=255)]
Label = Annotated[str, msgspec.Meta(max_length=512)]
# The longest a lease or the lock holds past its last renewal (config.MAX_HELD_FOR):
# a forged document cannot hold the archive's backups and WAL for longer than this past
# its store time. (No lower bound: a negative duration has simply lapsed.)
HeldFor = Annotated[float, msgspec.Meta(le=MAX_HELD_FOR)]


# --- base backups ---------------------------------------------------------------------


def check_data_path(path: str) -> None:
    """A path from a manifest, relative to the data directory: no absolute path, no
    `..`, `.` or empty component, no NUL. ("" alone, the data directory itself, is a
    directory's path only.)"""
    parts = path.split("/")  # an absolute path starts with an empty component
    if "" in parts or ".." in parts or "." in parts or "\0" in path:
        raise ValueError(f"path {path!r} is not a plain relative path inside the data directory")


def _check_plain_name(what: str, name: str) -> None:
    """A name that is one plain key component (a backup's folder, a lease's file)."""
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"{what} {name!r} is not a plain name")


def _check_size(what: str, value: int, limit: int) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"{what} {value} is out of bounds (0 to {limit})")


def _check_file_checksum(path: str, checksum: bytes) -> None:
    if len(checksum) not in (0, FILE_CHECKSUM_SIZE):
        raise ValueError(f"{path}: a checksum of {len(checksum)} bytes, not {FILE_CHECKSUM_SIZE}")


class BackupTablespace(msgspec.Struct, kw_only=True, frozen=True):
    oid: int
    name: str
    # Where the tablespace lived on the backed-up server (the pg_tblspc/<oid> link target).
    # Restore never creates it: see unpack.check_tablespace_directory.
    location: str

    def __post_init__(self) -> None:
        if not 0 < self.oid < 1 << 32:
            raise ValueError(f"tablespace oid {self.oid} is not an OID")
        # As PostgreSQL stores it (CREATE TABLESPACE canonicalizes): absolute, no `..`,
        # `.`, doubled or trailing slash.
        location = self.location
        if "\0" in location or not location.startswith("/") or location.startswith("//") or location == "/" \
                or posixpath.normpath(location) != location:
            raise ValueError(f"tablespace {self.oid}'s location {location!r} is not a canonical absolute path")


class BackupPart(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One stored object of a backup's data: a slice of the backup stream (the files'
    contents, concatenated in manifest order), in the stored-object format."""

    key: str  # relative to the archive root: backups/<id>/data/<n>
    size: int  # plaintext bytes
    stored_size: int
    # The plaintext's digest, as the object's own header has it, hex: SHA-256, or empty
    # when the header has an XXH3-128 one instead (the stream parts of an unencrypted
    # backup: see storage/objects.py).
    sha256: str
    xxh3_128: str = ""

    @classmethod
    def of(cls, key: str, header: ObjectHeader, stored_size: int) -> BackupPart:
        """The record of the object just stored under `key` with this header: its digest
        whichever it is."""
        return cls(key=key, size=header.size, stored_size=stored_size, sha256=header.sha256.hex(),
                   xxh3_128=header.xxh3_128.hex())

    @property
    def digest(self) -> str:
        """`<algorithm>:<hex>`: a part is the one listed when its header's `digest` is this."""
        return f"xxh3_128:{self.xxh3_128}" if self.xxh3_128 else f"sha256:{self.sha256}"

    def __post_init__(self) -> None:
        _check_size(f"part {self.key!r} size", self.size, MAX_PART_SIZE)
        _check_size(f"part {self.key!r} stored size", self.stored_size, 2 * MAX_PART_SIZE)


class BackupFile(msgspec.Struct, array_like=True, frozen=True):
    """A regular file: `path` relative to the data directory (tablespace files sit under
    `pg_tblspc/<oid>/`, as the server sees them). Its bytes start at `offset` in part
    number `part` and run on into the following parts. Array-like, because a cluster can
    have a hundred thousand of them."""

    path: str
    size: int
    mode: int
    mtime: int  # seconds
    part: int
    offset: int
    # format_version 2: the file's checksum, 16 bytes (catalog/checksums.py); b"" before.
    checksum: bytes = b""

    def __post_init__(self) -> None:
        check_data_path(self.path)
        # One comparison chain for the common case: a manifest can list a million files.
        if not (0 <= self.size <= MAX_FILE_SIZE and 0 <= self.mode <= 0o7777 and 0 <= self.part <= MAX_FILE_SIZE
                and 0 <= self.offset <= MAX_PART_SIZE and -_MAX_MTIME < self.mtime < _MAX_MTIME
                and len(self.checksum) in (0, FILE_CHECKSUM_SIZE)):
            _check_file_checksum(self.path, self.checksum)
            _check_size(f"{self.path}: size", self.size, MAX_FILE_SIZE)
            _check_size(f"{self.path}: mode", self.mode, 0o7777)
            _check_size(f"{self.path}: part", self.part, MAX_FILE_SIZE)
            _check_size(f"{self.path}: offset", self.offset, MAX_PART_SIZE)
            raise ValueError(f"{self.path}: modification time {self.mtime} is out of bounds")


class BlockFile(msgspec.Struct, array_like=True, frozen=True):
    """A relation file of an incremental backup restored block by block: its length at
    copy time, and the block map (an index into `block_maps`) saying which backup of the
    chain holds each block. `stored_blocks` of them are this backup's own."""

    path: str
    size: int
    mode: int
    mtime: int
    block_map: int
    stored_blocks: int
    checksum: bytes = b""  # as BackupFile's: of the block checksums in its map

    def __post_init__(self) -> None:
        check_data_path(self.path)
        _check_size(f"{self.path}: size", self.size, BLOCKS_PER_SEGMENT * BLOCK_SIZE)
        if self.size % BLOCK_SIZE:
            raise ValueError(f"{self.path}: a block-mapped file of {self.size} bytes, not whole blocks")
        _check_size(f"{self.path}: mode", self.mode, 0o7777)
        _check_size(f"{self.path}: block map", self.block_map, MAX_FILE_SIZE)
        _check_size(f"{self.path}: stored blocks", self.stored_blocks, self.size // BLOCK_SIZE)
        if not -_MAX_MTIME < self.mtime < _MAX_MTIME:
            raise ValueError(f"{self.path}: modification time {self.mtime} is out of bounds")
        _check_file_checksum(self.path, self.checksum)


class BlockPart(msgspec.Struct, kw_only=True, frozen=True):
    """An object of super-blocks: each a stored object of its own (storage/objects.py),
    compressed and encrypted alone so that a ranged read fetches just it, laid back to
    back. Where each lies is in the block maps."""

    key: str  # backups/<id>/blocks/<n>
    stored_size: int

    def __post_init__(self) -> None:
        _check_size(f"block part {self.key!r} stored size", self.stored_size, 2 * MAX_PART_SIZE)


class BackupDirectory(msgspec.Struct, array_like=True, frozen=True):
    path: str  # relative to the data directory, "" is the data directory itself
    mode: int

    def __post_init__(self) -> None:
        if self.path:
            check_data_path(self.path)
        _check_size(f"{self.path or 'the data directory'}: mode", self.mode, 0o7777)


# What a configuration file copied from outside the data directory can be (ConfigFile.role).
CONFIG_ROLES = ("config_file", "hba_file", "ident_file", "include", "hba_include", "ident_include")
# Larger is not a configuration file: backup-push does not copy it, restore reads it whole.
MAX_CONFIG_FILE = 1 << 20
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_host_path(what: str, path: str) -> None:
    """A path on the backed-up host, only shown and compared with include lines and the
    data directory: absolute and normal (a `..` would make a path outside the data
    directory compare as inside it), one line (it is shown in restore's output)."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "\0" in path or "\n" in path:
        raise ValueError(f"{what} {path!r} is not a normal absolute path")


# Where the copies of configuration files from outside the data directory travel in the
# backup stream, relative to the data directory; restore empties it. backup-push never
# copies a directory of this name from a data directory.
CAPTURED_DIR = ".pitrkit-config"


class ConfigFile(msgspec.Struct, kw_only=True, frozen=True):
    """A configuration file the server read from outside its data directory, copied into
    the backup stream as `.pitrkit-config/<name>` (see backup/config_capture.py, and
    restore/server_config.py for writing it back). `path` is where the server read it:
    shown, and matched against include lines, never written to."""

    name: str  # a plain file name, unique in the backup
    path: str  # absolute, on the backed-up host
    # config_file, hba_file or ident_file; include (read by include/include_dir of the
    # server configuration); hba_include or ident_include (PostgreSQL 16+'s includes of
    # pg_hba.conf and pg_ident.conf)
    role: str
    mode: int
    size: int
    sha256: str  # hex, of the content as copied

    def __post_init__(self) -> None:
        # The name is all restore joins to .pitrkit-config/ and pitrkit.conf.d/: one plain
        # component, so the copy is read from and written to nowhere else.
        if not _CONFIG_NAME.fullmatch(self.name):
            raise ValueError(f"configuration file name {self.name!r} is not a plain file name")
        if self.role not in CONFIG_ROLES:
            raise ValueError(f"configuration file {self.name} has an unknown role {self.role!r}")
        _check_host_path(f"configuration file {self.name}'s path", self.path)
        _check_size(f"configuration file {self.name}: mode", self.mode, 0o7777)
        _check_size(f"configuration file {self.name}: size", self.size, MAX_CONFIG_FILE)
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"configuration file {self.name}'s sha256 {self.sha256!r} is not one")


class ServerConfiguration(msgspec.Struct, kw_only=True, frozen=True):
    """Where the backed-up server's configuration lived, and the files copied from
    outside its data directory."""

    data_directory: str  # the server's data_directory (absolute)
    config_file: str  # the server's config_file, hba_file and ident_file settings
    hba_file: str
    ident_file: str
    files: list[ConfigFile] = []

    def __post_init__(self) -> None:
        for role in ("data_directory", "config_file", "hba_file", "ident_file"):
            _check_host_path(f"configuration {role}", getattr(self, role))
        names: set[str] = set()
        for file in self.files:
            if file.name in names:
                raise ValueError(f"configuration file name {file.name!r} is listed twice")
            names.add(file.name)


class ChangeSource(msgspec.Struct, kw_only=True, frozen=True):
    """How an incremental backup found the blocks changed since its parent."""

    # "wal-summaries": PostgreSQL 17+'s WAL summaries said which blocks changed, and
    # only those were read. "page-lsn": every relation file was read and the pages whose
    # LSN is at or after the parent's start kept.
    method: str
    note: Label  # for the operator: why the fallback, how many summary files, ...

    def __post_init__(self) -> None:
        if self.method not in ("wal-summaries", "page-lsn"):
            raise ValueError(f"unknown changed-block method {self.method!r}")


class BackupSummary(msgspec.Struct, kw_only=True, frozen=True):
    """What the planner, `backup-list` and the catalog need to know about a backup: the
    manifest without its file list."""

    format_version: int = MANIFEST_FORMAT_VERSION
    backup_id: str
    label: str
    system_identifier: int
    pg_version: int  # server_version_num, e.g. 150014
    timeline: int  # the timeline the backup started on
    start_lsn: Lsn  # the backup's redo point: WAL replay starts here
    start_time: Time
    stop_lsn: Lsn  # the backup is consistent once replay has passed this point
    stop_time: Time  # the server's clock after pg_backup_stop: targets from here on
    first_segment: str  # WAL file names: every segment from first to last is needed
    last_segment: str
    tablespaces: list[BackupTablespace] = []
    size: int  # bytes of the files backed up
    stored_size: int  # bytes of the stored objects
    file_count: int
    compression: str
    pitrkit_version: str
    # None: a backup taken before pitrkit recorded the server's configuration.
    configuration: ServerConfiguration | None = None
    # An incremental backup: the backup it was taken against, and its whole chain of
    # ancestors, the full first and `parent` last ([] for a full backup). It restores
    # only while every one of them is stored.
    parent: str | None = None
    chain: list[str] = []
    changed_blocks: ChangeSource | None = None
    # A full backup `backup-consolidate` made from the archive alone: the incremental
    # whose point it restores (ops/consolidate.py). None for a backup taken from the server.
    consolidated_from: str | None = None

    def __post_init__(self) -> None:
        # The id names the backup's folder: one plain key component.
        _check_plain_name("backup id", self.backup_id)
        if self.consolidated_from is not None:
            _check_plain_name("consolidated_from backup id", self.consolidated_from)
            if self.parent is not None:
                raise ValueError(f"backup {self.backup_id} names a parent, but a consolidated backup is a full one")
        if self.parent is None and self.chain:
            raise ValueError(f"backup {self.backup_id} names a chain but no parent")
        if self.parent is not None:
            # Ids are the backups' start times: each ancestor is older than its child,
            # so a chain that does not strictly ascend to this backup is forged (and a
            # cycle impossible).
            if not 0 < len(self.chain) <= MAX_CHAIN or self.chain[-1] != self.parent:
                raise ValueError(f"backup {self.backup_id}'s chain does not end with its parent {self.parent!r}")
            for ancestor in self.chain:
                _check_plain_name("ancestor backup id", ancestor)
            if any(older >= newer for older, newer in zip(self.chain, [*self.chain[1:], self.backup_id], strict=True)):
                raise ValueError(f"backup {self.backup_id}'s chain is not in the order the backups were taken")
        _check_size("size", self.size, MAX_FILE_SIZE)
        _check_size("stored_size", self.stored_size, MAX_FILE_SIZE)
        _check_size("file_count", self.file_count, MAX_FILE_SIZE)

    @property
    def pg_major(self) -> int:
        return self.pg_version // 10000

    @property
    def kind(self) -> str:
        return "full" if self.parent is None else "incremental"


class BackupManifest(BackupSummary, kw_only=True, frozen=True):
    """`backups/<id>/manifest.json`, stored last: its presence is what makes the backup
    exist. Decoding it as a `BackupSummary` skips everything below."""

    def summary(self) -> BackupSummary:
        """The manifest without its file list, as the catalog lists it."""
        return BackupSummary(**{field: getattr(self, field) for field in BackupSummary.__struct_fields__})

    backup_label: str  # as pg_backup_stop returned it; restore writes it as backup_label
    tablespace_map: str | None = None  # ditto, for tablespace_map
    parts: list[BackupPart]
    directories: list[BackupDirectory]
    files: list[BackupFile]  # in the stream of `parts`: every file of a full backup
    # An incremental's relation files whose blocks come from block maps (see
    # backup/blockmap.py): the maps, and the objects holding the blocks it stored itself.
    block_files: list[BlockFile] = []
    block_maps: list[BackupPart] = []
    block_parts: list[BlockPart] = []


# --- the catalog (catalog/...) ----------------------------------------------------------


class BackupCatalog(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/backups.json`: the summaries of the backups whose manifests exist,
    oldest first. A cache of the manifests, reconciled with them on every read."""

    backups: list[BackupSummary] = []


class WalIndexEntry(msgspec.Struct, array_like=True, frozen=True):
    name: str  # the WAL file name: a segment, or a .backup file (never a .partial: see catalog/archived_wal.py)
    stored_size: int
    modified: float | None  # when it reached the archive, if the storage says


class WalFolderIndex(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/wal/<TLI><LOG>.json`: the listing of a WAL folder `wal/<TLI><LOG>/` that
    no longer receives segments (a later folder of the same timeline exists), so that
    planning and `wal-list` read one document instead of listing the folder."""

    folder: str  # "wal/<TLI><LOG>/"
    entries: list[WalIndexEntry]
    indexed_at: Time


# PostgreSQL's MAXFNAMELEN - 1: the longest restore point name, in bytes.
MAX_RESTORE_POINT_NAME = 63
# Far more restore points than people make by hand; bounds what one document decodes to.
MAX_RESTORE_POINTS = 100_000
_SEGMENT_NAME = re.compile(r"[0-9A-F]{24}")


class RestorePoint(msgspec.Struct, kw_only=True, frozen=True):
    """A named restore point `pitrkit restore-point` made with pg_create_restore_point():
    recovery_target_name stops at the first point of a name, which ends at `lsn`."""

    name: str  # 1 to 63 bytes, printable
    lsn: Lsn  # what pg_create_restore_point() returned: the end of its WAL record
    timeline: int  # the server's timeline when it was made
    segment: str  # the WAL segment the record ends in (pg_walfile_name(lsn))
    created_at: Time  # the server's clock just after it was made
    system_identifier: int  # the server's, as archive.json records it

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > MAX_RESTORE_POINT_NAME or not self.name.isprintable():
            raise ValueError(f"restore point name {self.name!r} is not 1 to {MAX_RESTORE_POINT_NAME} printable bytes")
        if not 0 < self.timeline < 1 << 32:
            raise ValueError(f"restore point {self.name!r}: timeline {self.timeline} is not a timeline id")
        if not _SEGMENT_NAME.fullmatch(self.segment) or int(self.segment[:8], 16) != self.timeline:
            raise ValueError(f"restore point {self.name!r}: {self.segment!r} is not a WAL segment of timeline "
                             f"{self.timeline}")
        if self.lsn <= 0:
            raise ValueError(f"restore point {self.name!r}: LSN {self.lsn} is not a record's end")


class RestorePointCatalog(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/restore-points.json`: every restore point `pitrkit restore-point` made,
    oldest first, each name once (catalog/restore_points.py). Not a cache: the WAL holds
    the points' records, but pitrkit does not read them back yet, so `catalog rebuild`
    keeps this document as it is."""

    points: Annotated[list[RestorePoint], msgspec.Meta(max_length=MAX_RESTORE_POINTS)] = []

    def __post_init__(self) -> None:
        names = [point.name for point in self.points]
        if len(set(names)) != len(names):
            raise ValueError("a restore point name is recorded twice")


# The time index (catalog/time_index.py): times are Unix microseconds, as PostgreSQL's
# own TimestampTz is microseconds; a plausible range keeps a forged value from misleading.
_MIN_TIME_US = 0
_MAX_TIME_US = 253402300799_999_999  # 9999-12-31
_MAX_XID = (1 << 64) - 1
_MAX_RANGES = 1 << 20  # a 1 GiB segment of commit records alone holds fewer than 2^25 xids


class IndexedTransaction(msgspec.Struct, array_like=True, frozen=True):
    """A commit or abort record: its xid (64-bit when `epoch_known`) and time."""

    xid: int
    time_us: int

    def __post_init__(self) -> None:
        _check_xid(self.xid)
        _check_time(self.time_us)


class IndexedRestorePoint(msgspec.Struct, array_like=True, frozen=True):
    name: str
    time_us: int
    end_lsn: int

    def __post_init__(self) -> None:
        if len(self.name) > 63 or "\0" in self.name:
            raise ValueError(f"restore point name {self.name[:80]!r} is longer than PostgreSQL allows")
        _check_time(self.time_us)
        if not 0 <= self.end_lsn < 1 << 64:
            raise ValueError(f"restore point LSN {self.end_lsn} out of range")


class SegmentTimes(msgspec.Struct, array_like=True, frozen=True):
    """What the time index knows of one segment: the records that END in it."""

    segment: str  # its 24-digit name
    first_us: int | None  # the earliest and latest commit/abort time (not monotonic in WAL order)
    last_us: int | None
    restore_points: list[IndexedRestorePoint]
    final: IndexedTransaction | None  # the last commit/abort in WAL order
    start_known: bool  # false: it began with the tail of a record whose kind was not read
    next_full_xid: int | None  # the xid reference carried to the next segment

    def __post_init__(self) -> None:
        if len(self.segment) != 24 or not all(c in "0123456789ABCDEF" for c in self.segment):
            raise ValueError(f"{self.segment[:40]!r} is not a segment name")
        if (self.first_us is None) != (self.last_us is None) or (self.final is None) != (self.first_us is None):
            raise ValueError(f"{self.segment}: a time range and its transactions disagree")
        if self.first_us is not None and self.last_us is not None:
            _check_time(self.first_us)
            _check_time(self.last_us)
            if self.first_us > self.last_us:
                raise ValueError(f"{self.segment}: time range backwards")
        if self.next_full_xid is not None:
            _check_xid(self.next_full_xid)


class SegmentXids(msgspec.Struct, array_like=True, frozen=True):
    """The xids of the commit/abort records that end in one segment (COMMIT/ABORT
    PREPARED: the prepared transaction's xid)."""

    segment: str
    epoch_known: bool  # false: 32-bit xids, their epoch unknown (no checkpoint read before them)
    xids: list[tuple[int, int]]  # sorted, disjoint ranges (first, last)

    def __post_init__(self) -> None:
        if len(self.xids) > _MAX_RANGES:
            raise ValueError(f"{self.segment[:40]}: {len(self.xids)} xid ranges")
        previous = -2
        for first, last in self.xids:
            _check_xid(first)
            _check_xid(last)
            if not previous + 1 < first <= last:
                raise ValueError(f"{self.segment[:40]}: xid ranges not sorted and disjoint")
            previous = last


class XidIndexFolder(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/xids/<TLI><LOG>`: the xids of a WAL folder's segments, apart from their
    times so that a time target never decodes them."""

    folder: str
    segments: list[SegmentXids]


class TimeIndexFolder(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/times/<TLI><LOG>`: the time index of a WAL folder's segments, in WAL order
    (an object in storage/objects.py's format: encrypted in an encrypted archive)."""

    folder: str  # "wal/<TLI><LOG>/"
    segments: list[SegmentTimes]
    indexed_at: Time

    def __post_init__(self) -> None:
        if len(self.segments) > 4096:  # 4096 one-MiB segments per 4 GiB folder
            raise ValueError(f"{self.folder}: {len(self.segments)} segments")
        names = [entry.segment for entry in self.segments]
        if names != sorted(set(names)):
            raise ValueError(f"{self.folder}: segments not in WAL order")
        stem = self.folder.removeprefix("wal/").rstrip("/")
        if any(not name.startswith(stem) for name in names):
            raise ValueError(f"{self.folder}: holds another folder's segment")


def _check_time(value: int) -> None:
    if not _MIN_TIME_US <= value <= _MAX_TIME_US:
        raise ValueError(f"time {value} out of range")


def _check_xid(value: int) -> None:
    if not 0 <= value <= _MAX_XID:
        raise ValueError(f"xid {value} out of range")


# --- retention (catalog/retention.json, leases/) -----------------------------------------


class RetentionRun(msgspec.Struct, kw_only=True, frozen=True):
    """What one finished `retention apply` removed."""

    finished_at: Time
    backups_removed: list[str]
    wal_files_removed: int
    bytes_freed: int  # stored bytes


class RetentionState(msgspec.Struct, kw_only=True, frozen=True):
    """`catalog/retention.json`: retention's intent and its last result.

    `deleting` is written BEFORE any object is deleted: a backup named there no longer
    exists for any reader (the planner, backup-list, status), even while its manifest is
    still stored, and a later run finishes removing it. That is what lets a run killed
    midway leave nothing half-usable behind."""

    deleting: list[str] = []  # backup ids whose objects are being removed
    decided_at: Time | None = None
    last_run: RetentionRun | None = None


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """`leases/<lease_id>.json`: a running restore's claim on a backup and the WAL after
    it along one timeline's path. Retention keeps what an unexpired lease names; the
    holder renews `expires_at` while it works and deletes the lease when done."""

    lease_id: str  # names its key, leases/<lease_id>.json
    holder: Label  # who: "restore on <host> pid <pid>", for the operator
    backup_id: str
    # The timeline recovery ends on: its history gives the path whose WAL is claimed,
    # from the backup's first segment onward.
    timeline: int
    first_segment: str
    taken_at: Time  # the holder's clock, for people
    expires_at: Time  # the holder's clock: judged only where the storage has no store times
    # Seconds the lease holds past its object's store time (the storage's clock); None in
    # leases written before it existed, judged by `expires_at`.
    held_for: HeldFor | None = None

    def __post_init__(self) -> None:
        # Both are storage keys' components: retention reads and removes the lease by
        # its id, and keeps the backup's folder by its id.
        _check_plain_name("lease id", self.lease_id)
        _check_plain_name("backup id", self.backup_id)


class CatalogLock(msgspec.Struct, kw_only=True, frozen=True):
    """`locks/catalog.json`: who rewrites catalog documents now (catalog/lock.py). Stored
    create-only; renewed by its holder, which rewrites it with a new `expires_at`."""

    token: str  # random, per taking: how a holder tells its lock from a successor's
    host: HostName
    pid: int
    command: Label  # "retention apply", "catalog rebuild", "backup-push"
    taken_at: Time  # the holder's clock, for people
    expires_at: Time  # the holder's clock: judged only where the storage has no store times
    # Seconds the lock holds past its object's store time (the storage's clock).
    held_for: HeldFor


class BackupClaim(msgspec.Struct, kw_only=True, frozen=True):
    """`backups/<id>/claim.json`: the backup-push run that took this backup id, stored
    create-only before anything else in the folder (backup/push.py, _claim_backup_id).
    A retried write that meets a claim tells its own by the token."""

    token: str  # random, per run
    host: HostName
    pid: int
    claimed_at: Time  # the server's clock: the second the id names


# --- restore drills (drills/) -------------------------------------------------------------

# What one drill check reports (the query's answer, a pg_amcheck line): enough to read
# in a report, bounded because a forged report is shown by status.
CheckDetail = Annotated[str, msgspec.Meta(max_length=4096)]
_DRILL_ID = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{8}")


class DrillCheck(msgspec.Struct, kw_only=True, frozen=True):
    """One check a drill ran on the restored copy: `amcheck` and `connect` per database,
    `sql` for each `[drill] checks` query (its answer and the one it must give)."""

    kind: Literal["amcheck", "connect", "sql"]
    database: Label
    passed: bool
    detail: CheckDetail  # what it found: "ok", the query's answer, pg_amcheck's first complaint
    sql: CheckDetail | None = None
    expect: CheckDetail | None = None


class DrillReport(msgspec.Struct, kw_only=True, frozen=True):
    """`drills/<drill_id>.json`: one `pitrkit drill`, passed or failed, stored whatever the
    outcome (a drill that fails is the news). The id begins with the UTC start time to
    the millisecond, so that the names sort in the order the drills ran."""

    drill_id: str
    host: HostName
    pitrkit_version: Label
    started_at: Time
    finished_at: Time
    result: Literal["passed", "failed"]
    reason: CheckDetail | None = None  # why it failed, one line
    # What was restored: the newest backup to the end of the WAL ("latest"), a chosen
    # backup to its end of WAL, or a random LSN of the restorable range ("random").
    target_kind: Literal["latest", "backup", "random"]
    target_lsn: Lsn | None = None  # the random point chosen
    backup_id: str | None = None  # None: the drill failed before a plan
    timeline: int | None = None  # the timeline recovery ended on, as planned
    wal_segments: int = 0  # WAL segments the plan replays
    # Time to restore: from the start of the restore to the promoted copy accepting
    # connections (the checks are not counted), and its two stages.
    rto_seconds: float | None = None
    restore_seconds: float | None = None
    replay_seconds: float | None = None
    wal_replayed_bytes: int | None = None  # from the backup's redo point to the last replayed location
    reached_lsn: Lsn | None = None
    databases: list[Label] = []
    checks: list[DrillCheck] = []

    def __post_init__(self) -> None:
        # The id names the report's key, drills/<drill_id>.json.
        if not _DRILL_ID.fullmatch(self.drill_id):
            raise ValueError(f"drill id {self.drill_id!r} is not of the form YYYYMMDDTHHMMSSmmmZ-<8 hex digits>")
        if self.backup_id is not None:
            _check_plain_name("backup id", self.backup_id)
        for value in (self.rto_seconds, self.restore_seconds, self.replay_seconds):
            if value is not None and not 0 <= value < 1e10:
                raise ValueError(f"drill {self.drill_id}: a duration of {value} seconds")
        if self.wal_replayed_bytes is not None:
            _check_size("WAL replayed", self.wal_replayed_bytes, MAX_FILE_SIZE)


def shown(text: str) -> str:
    """Text from a document (who holds a lease or the lock) as a message shows it: as it
    is when every character prints, else quoted with escapes, so that a newline or a
    terminal control sequence in a forged document cannot break or fake a line."""
    return text if text.isprintable() else repr(text)

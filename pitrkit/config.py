"""The configuration: a TOML file decoded into typed sections.

The file is parsed once at the edge (here) and passed around as a `Config`; nothing
else in pitrkit reads TOML or looks keys up by string. Unknown keys are refused, not
ignored: a misspelt `retires = 5` silently doing nothing is how backups go missing.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from pitrkit.errors import ConfigError

DEFAULT_PATH = Path("/etc/pitrkit/pitrkit.toml")
ENVIRONMENT_VARIABLE = "PITRKIT_CONFIG"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class PostgresConfig(_Section, frozen=True):
    pgdata: str | None = None
    bindir: str | None = None
    conninfo: str | None = None
    # The binaries of each major an archive's eras hold ("15" = "/usr/lib/postgresql/15/bin"):
    # a restore starts a backup of an earlier era (before a pg_upgrade) with its own major.
    bindirs: dict[str, str] = {}

    def __post_init__(self) -> None:
        for major in self.bindirs:
            if not (major.isdigit() and 10 <= int(major) <= 99):
                raise ValueError(f"[postgres.bindirs] key {major!r} is not a PostgreSQL major version such as \"15\"")


# zstd's levels (zstandard.MAX_COMPRESSION_LEVEL is 22), checked when the file is loaded
# rather than when wal-push first compresses: a bad level is a mistake in the file, and
# loading the file must not import zstd (wal-fetch never compresses).
ZSTD_LEVELS = range(1, 23)


class CompressionConfig(_Section, frozen=True):
    algorithm: str = "zstd"
    # Passed to the algorithm; for zstd, one of ZSTD_LEVELS.
    level: int = 3
    # Compression threads; 0 means one per core. WAL compression is CPU-bound and
    # archive_command runs one segment at a time, so using the cores is what keeps up.
    threads: int = 0


class AgentConfig(_Section, frozen=True):
    # Hand wal-push / wal-fetch to a long-lived `pitrkit agent` (see wal/agent_client.py).
    enabled: bool = True
    # Seconds without a request after which the agent exits.
    idle_timeout: float = 600.0
    # Segments pushed ahead of PostgreSQL's request when a backlog is marked .ready, and
    # fetched ahead of recovery's next request; 0 turns look-ahead off.
    lookahead: int = 4
    # After answering a push, index the segment's commit times, xids and restore points
    # in a child process at idle CPU priority (wal/time_indexer.py).
    time_index: bool = True


class BackupConfig(_Section, frozen=True):
    # Threads that compress and store (backup-push) or fetch and write (restore) backup
    # parts in parallel; 0 means one per core.
    workers: int = 0
    # Seconds backup-push waits for the WAL its backup needs to reach the archive
    # before it gives up; the backup does not exist until that WAL is archived.
    wal_timeout: float = 600.0
    # A backup of a standby ([postgres] conninfo reaches one): how to reach its primary,
    # whose pg_switch_wal() completes the backup's last WAL segment (a standby cannot
    # switch), and how far the standby's replay may be behind the primary's WAL, in bytes
    # or a size ("1GB"). Unset: a standby is refused. See docs/backups.md.
    primary_conninfo: str | None = None
    standby_max_lag: int | str = "1GB"

    @property
    def standby_max_lag_bytes(self) -> int:
        return _loaded_size(self.standby_max_lag)


def _standby_problems(backup: BackupConfig) -> list[str]:
    """`[backup] primary_conninfo` and `standby_max_lag`. The connection string is parsed
    by libpq only when backup-push connects (loading psycopg here would slow wal-push):
    here, only what is wrong whatever libpq says."""
    problems = []
    if backup.primary_conninfo is not None and (not backup.primary_conninfo.strip()
                                                or "\0" in backup.primary_conninfo):
        # "" would be libpq's defaults: the local server, i.e. the standby itself.
        problems.append("backup.primary_conninfo must be a libpq connection string to the primary, not empty "
                        "(empty means libpq's defaults: the standby itself)")
    lag = parse_size(backup.standby_max_lag)
    if lag is None or lag > MAX_SIZE:
        problems.append("backup.standby_max_lag must be a number of bytes or a size such as \"1GB\" (units kB, MB, "
                        "GB, TB), at most 1 EiB (1048576TB)")
    return problems


# PostgreSQL's memory units (max_slot_wal_keep_size = '10GB'), so that the threshold
# can be written the way the server setting it guards is.
_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[kMGT]B)?")
_SIZE_UNITS = {None: 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
# The largest size a setting takes: 1 EiB, beyond any disk and well inside the 64-bit
# integers PostgreSQL reports sizes in, so that comparing and printing stay exact.
MAX_SIZE = 1 << 60


def _loaded_size(value: int | str) -> int:
    """Bytes of a size that `parse` has already checked."""
    size = parse_size(value)
    assert size is not None  # checked when the file was loaded
    return size


def parse_size(value: int | str) -> int | None:
    """Bytes from an integer or a size such as "4GB" (1024-based, as PostgreSQL's units);
    None if `value` is neither."""
    if isinstance(value, int):
        return value if value >= 0 else None
    match = _SIZE.fullmatch(value.strip())
    return None if match is None else int(match["number"]) * _SIZE_UNITS[match["unit"]]


# Durations as a DBA writes them in a policy: "7d", "36h", "90m", "30s", "2w", or a
# number of seconds.
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# The longest duration or timeout any setting takes: a century, far beyond any sensible
# value and well inside what timedelta, datetime arithmetic and the OS's timeouts
# (threading.TIMEOUT_MAX, ~292 years) can hold, so that no later computation overflows.
MAX_SECONDS = 100 * 365 * 86400.0
# The longest a restore lease or the catalog lock holds past its last renewal: 30 days.
# pitrkit's own hold 10 minutes, or a restore's `[retention] restore_lease`, bounded by
# this; readers refuse a longer one as forged (catalog/documents.py).
MAX_HELD_FOR = 30 * 86400.0
# Threads per process (compression, backup and restore workers): more than any machine
# pitrkit runs on has cores, fewer than would exhaust its memory for stacks.
MAX_THREADS = 256


def parse_duration(value: int | float | str) -> float | None:
    """Seconds from a number or a duration such as "7d" (units s, m, h, d, w); None if
    `value` is neither, negative, or longer than `MAX_SECONDS`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())) is not None:
        seconds = float(match["number"]) * _DURATION_UNITS[match["unit"]]
    else:
        return None
    return seconds if 0 <= seconds <= MAX_SECONDS else None


# `[daemon] full_every`: a duration with its unit ("7d", "12h"), or a count of incrementals
# ("27 incrementals"). A bare number is refused: it is seconds in every other duration,
# and whoever writes `full_every = "27"` may well mean a count.
_FULL_EVERY_DURATION = re.compile(r"\d+(?:\.\d+)?\s*[smhdw]")
_FULL_EVERY_COUNT = re.compile(r"(?P<count>\d+)\s+incrementals?")
# The most incrementals on one full: catalog/documents.py's MAX_CHAIN (the catalog imports
# this module, not the other way round; tests/unit/test_config.py holds the two equal).
MAX_INCREMENTALS = 1000


class FullEvery(NamedTuple):
    """When a scheduled backup is full: once the chain's full is `seconds` old, or once
    `incrementals` incrementals were taken on it; exactly one of the two is set."""

    seconds: float | None
    incrementals: int | None


def parse_full_every(value: str) -> FullEvery | None:
    """`full_every` as written; None if it is neither a duration with its unit (above 0,
    at most `MAX_SECONDS`) nor a count from 1 to `MAX_INCREMENTALS`."""
    text = value.strip()
    if _FULL_EVERY_DURATION.fullmatch(text):
        seconds = parse_duration(text)
        return FullEvery(seconds, None) if seconds else None
    if (match := _FULL_EVERY_COUNT.fullmatch(text)) is not None:
        count = int(match["count"])
        return FullEvery(None, count) if 1 <= count <= MAX_INCREMENTALS else None
    return None


def _loaded_duration(value: str) -> float:
    """Seconds of a duration that `parse` has already checked."""
    seconds = parse_duration(value)
    assert seconds is not None  # checked when the file was loaded
    return seconds


class ReceiveConfig(_Section, frozen=True):
    # The physical replication slot `wal-receive` streams from (created if missing). It
    # is also the sidecar's application_name, the name synchronous_standby_names uses,
    # unless [postgres] conninfo sets one.
    slot: str = "pitrkit"
    # The local directory pg_receivewal writes into. Required by wal-receive; it must
    # exist, on a file system that survives a reboot (WAL waits here until archived).
    spool: str | None = None
    # Seconds between shipments of the segment still being written, as <segment>.partial:
    # the most an archive restore can miss of what the sidecar received.
    partial_interval: float = 10.0
    # pg_receivewal --synchronous: flush every write and report it at once, so the server
    # can wait for the sidecar (synchronous_standby_names) before acknowledging a commit.
    synchronous: bool = False
    # Warn when the slot holds back more WAL than this on the server (bytes, or "4GB").
    max_slot_retained: int | str = "4GB"

    @property
    def max_slot_retained_bytes(self) -> int:
        return _loaded_size(self.max_slot_retained)


class KeySource(_Section, frozen=True):
    """An older key in `[[encryption.old_keys]]`: exactly one of these."""

    key_file: str | None = None
    passphrase_env: str | None = None
    passphrase_command: list[str] | None = None
    # Recipient mode: the old pair's private key (to read its objects) or, on a host
    # that only writes, its public key (to name the key being rotated away from).
    private_key_file: str | None = None
    public_key_file: str | None = None

    def given(self) -> list[str]:
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]


class EncryptionConfig(_Section, frozen=True):
    # "off", "key" (a key file or a passphrase) or "recipient" (an X25519 key pair:
    # writers need only the public key). See docs/encryption.md.
    mode: Literal["off", "key", "recipient"] = "off"
    # mode = "key": exactly one of these is the current key. The passphrase is never
    # written here: it comes from the environment or from a command's standard output
    # (an argv list, run without a shell).
    key_file: str | None = None
    passphrase_env: str | None = None
    passphrase_command: list[str] | None = None
    # mode = "recipient": the public key (enough for wal-push and backup-push); the
    # private key only where wal-fetch and restore run.
    public_key_file: str | None = None
    private_key_file: str | None = None
    # mode = "recipient": the Ed25519 pair that signs the archive's documents (manifests,
    # catalog, archive.json). The signing key where documents are written (wal-push,
    # backup-push, retention), the verify key, or the signing key it derives from,
    # everywhere they are read.
    signing_key_file: str | None = None
    verify_key_file: str | None = None
    # Keys that were current before a rotation, so that their objects stay readable.
    old_keys: list[KeySource] = []


class RetentionConfig(_Section, frozen=True):
    """`[retention]`: which backups `retention apply` keeps (the union of every rule) and
    so which WAL. See docs/operations.md."""

    # The newest N backups (>= 1: the newest backup is never removed).
    keep_last: int = 1
    # The newest backup of each of the D (W, M) most recent days (ISO weeks, months)
    # that have a backup, in `timezone`.
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    # Every point of the last `window` (a duration, "7d") stays restorable: the newest
    # backup consistent before the window starts is kept, with all WAL after it.
    window: str | None = None
    # A backup folder without a manifest whose newest object is older than this is an
    # interrupted backup, and removed (a running backup keeps writing parts).
    unfinished_grace: str = "6h"
    # How long a restore without --start holds its lease on the backup and WAL it uses,
    # so that the recovery the operator starts afterwards still finds them; at most 30
    # days (MAX_HELD_FOR, above).
    restore_lease: str = "12h"
    # The zone whose calendar days, weeks and months the rules count; None: the host's.
    timezone: str | None = None

    @property
    def unfinished_grace_seconds(self) -> float:
        return _loaded_duration(self.unfinished_grace)

    @property
    def restore_lease_seconds(self) -> float:
        return _loaded_duration(self.restore_lease)


class RepositoryConfig(_Section, frozen=True):
    """One `[repository]`, or one entry of `[[repository]]` (docs/configuration.md)."""

    url: str
    # Seconds any single storage call may take before it counts as failed.
    timeout: float = 60.0
    # How many times a failed storage call is retried (with exponential backoff).
    retries: int = 4
    # What messages, status and `--repo` call it; "" is filled in when the file is loaded:
    # "repo1", "repo2", ... by position.
    name: str = ""
    # False: wal-push and backup-push succeed without this repository. WAL it could not
    # take waits in `spool` (at most `spool_max` bytes) and is caught up later; PostgreSQL's
    # archiver is never held back for it. At least one repository is required.
    required: bool = True
    spool: str | None = None
    spool_max: int | str = "4GB"
    # This repository's own keys and policy; not set: the top-level [encryption] and
    # [retention].
    encryption: EncryptionConfig | None = None
    retention: RetentionConfig | None = None

    @property
    def spool_max_bytes(self) -> int:
        return _loaded_size(self.spool_max)


class DaemonConfig(_Section, frozen=True):
    """`[daemon]`: what `pitrkit daemon` runs. The streaming sidecar runs when
    [receive] spool is set."""

    # Scheduled backups: a duration ("6h") or a cron expression ("30 2 * * *", in the
    # host's zone); at most one. Neither: the daemon takes no backups.
    every: str | None = None
    cron: str | None = None
    # Which scheduled backups are full: a duration ("7d": once the full the newest backup
    # stands on started that long ago) or a count ("27 incrementals": once that many were
    # taken on it); the others are incremental. Not set: every scheduled backup is full.
    full_every: str | None = None
    # Apply [retention] after each scheduled backup (when [retention] is configured).
    retention: bool = True
    # host:port of the status page (/) and Prometheus metrics (/metrics); "" turns the
    # server off. Loopback by default: the page shows the archive's layout.
    listen: str = "127.0.0.1:9187"
    # Seconds between refreshes of the served status (each reads the catalog).
    status_interval: float = 30.0

    @property
    def full_every_rule(self) -> FullEvery | None:
        if self.full_every is None:
            return None
        rule = parse_full_every(self.full_every)
        assert rule is not None  # checked when the file was loaded
        return rule


class StatusConfig(_Section, frozen=True):
    """`[status]`: when `pitrkit status` turns WARN."""

    # The newest backup finished longer ago than this (a duration); twice this is a FAIL.
    backup_max_age: str = "36h"
    # The newest WAL reached the archive longer ago than this. Only meaningful with
    # archive_timeout (or the sidecar) set: an idle server archives nothing.
    wal_max_age: str = "1h"

    @property
    def backup_max_age_seconds(self) -> float:
        return _loaded_duration(self.backup_max_age)

    @property
    def wal_max_age_seconds(self) -> float:
        return _loaded_duration(self.wal_max_age)


class DrillQuery(_Section, frozen=True):
    """One of `[drill] checks`: a query run on the restored copy and the answer it must
    give (its first column of its first row, as text; "" for no row or NULL)."""

    sql: str
    expect: str
    database: str = "postgres"


class DrillConfig(_Section, frozen=True):
    """`[drill]`: `pitrkit drill`, restore drills (ops/drill.py), and how often the daemon runs one."""

    # The daemon runs a drill this often (a duration, "7d"); None: only by hand.
    every: str | None = None
    # Where the scratch cluster is restored (a fresh directory in it, removed after);
    # None: the system's temporary directory.
    scratch: str | None = None
    # Free space the scratch directory must keep beyond the backup's size before a drill
    # starts (a size, "1GB"): the host's other work shares that disk.
    min_free: int | str = "1GB"
    # `status` turns WARN when the last successful drill is older than this.
    max_age: str = "8d"
    # Scheduling priority of the drill and the server it starts: nice (0-19) and the I/O
    # class ("idle", "best-effort" at its lowest level, or "none" to leave it).
    nice: int = 10
    ionice: Literal["idle", "best-effort", "none"] = "best-effort"
    # The restored copy's configuration: "none" (a minimal one: the drill shares the host,
    # and the production server's memory settings, libraries and certificates are not its),
    # or "backup" (the backed-up files, as restore --config-files backup).
    config_files: Literal["none", "backup"] = "none"
    checks: list[DrillQuery] = []

    @property
    def every_seconds(self) -> float | None:
        return None if self.every is None else _loaded_duration(self.every)

    @property
    def max_age_seconds(self) -> float:
        return _loaded_duration(self.max_age)

    @property
    def min_free_bytes(self) -> int:
        return _loaded_size(self.min_free)


class Config(_Section, frozen=True):
    # One `[repository]` table, or `[[repository]]` entries: every one is written to, and
    # read in this order (storage/repositories.py). Use `repositories`, never this field.
    repository: RepositoryConfig | list[RepositoryConfig]
    postgres: PostgresConfig = PostgresConfig()
    compression: CompressionConfig = CompressionConfig()
    agent: AgentConfig = AgentConfig()
    backup: BackupConfig = BackupConfig()
    receive: ReceiveConfig = ReceiveConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    # None: no policy; `retention apply` refuses rather than guess one.
    retention: RetentionConfig | None = None
    daemon: DaemonConfig = DaemonConfig()
    status: StatusConfig = StatusConfig()
    drill: DrillConfig = DrillConfig()

    @property
    def repositories(self) -> tuple[RepositoryConfig, ...]:
        """Every configured repository, in the order they are read."""
        return tuple(self.repository) if isinstance(self.repository, list) else (self.repository,)

    def for_repository(self, repository: RepositoryConfig) -> Config:
        """This configuration as one repository sees it: that repository alone, with its
        own [encryption] and [retention] where it has them."""
        return msgspec.structs.replace(
            self, repository=repository, encryption=repository.encryption or self.encryption,
            retention=repository.retention if repository.retention is not None else self.retention)

    @property
    def first_repository(self) -> Config:
        """The configuration as the first repository sees it (`for_repository`)."""
        return self.for_repository(self.repositories[0])


def locate(explicit: str | None) -> Path:
    """The config file to use: `--config`, else $PITRKIT_CONFIG, else the default."""
    return Path(explicit or os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_PATH)


def load(path: Path) -> Config:
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (pass --config PATH or set {ENVIRONMENT_VARIABLE})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    return parse(document, str(path))


def parse(document: dict, source: str) -> Config:
    try:
        config = msgspec.convert(document, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(str(exc))}") from None
    config = _named_repositories(config)
    _check_ranges(config, source)
    return config


# A repository's name appears in messages, status, metrics labels and spool paths.
_REPOSITORY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _named_repositories(config: Config) -> Config:
    """`[[repository]]` entries without a name get "repo1", "repo2", ... by position."""
    if not isinstance(config.repository, list):
        return config if config.repository.name else msgspec.structs.replace(
            config, repository=msgspec.structs.replace(config.repository, name="repo1"))
    named = [entry if entry.name else msgspec.structs.replace(entry, name=f"repo{number}")
             for number, entry in enumerate(config.repository, 1)]
    return msgspec.structs.replace(config, repository=named)


def _seconds_problem(name: str, value: float) -> list[str]:
    """A timeout or interval: more than nothing, at most `MAX_SECONDS` (NaN is neither)."""
    if not 0 < value <= MAX_SECONDS:
        return [f"{name} must be a number of seconds above 0 and at most {MAX_SECONDS:.0f} (100 years), "
                f"not {value:g}"]
    return []


def _count_problem(name: str, value: int, low: int, high: int) -> list[str]:
    if not low <= value <= high:
        return [f"{name} must be a whole number from {low} to {high}, not {value}"]
    return []


def _zstd_level_problem(config: Config) -> list[str]:
    if config.compression.algorithm == "zstd" and config.compression.level not in ZSTD_LEVELS:
        return [f"compression.level must be {ZSTD_LEVELS.start} to {ZSTD_LEVELS.stop - 1} for zstd, "
                f"not {config.compression.level}"]
    return []


def _check_ranges(config: Config, source: str) -> None:
    problems = [
        *_repositories_problems(config),
        *_zstd_level_problem(config),
        *_count_problem("compression.threads", config.compression.threads, 0, MAX_THREADS),
        # Each is a segment spooled or pushed ahead: 64 is a gigabyte of 16 MiB segments.
        *_count_problem("agent.lookahead", config.agent.lookahead, 0, 64),
        *_seconds_problem("agent.idle_timeout", config.agent.idle_timeout),
        *_count_problem("backup.workers", config.backup.workers, 0, MAX_THREADS),
        *_seconds_problem("backup.wal_timeout", config.backup.wal_timeout),
        *_standby_problems(config.backup),
    ]
    if not config.receive.slot or not re.fullmatch(r"[a-z0-9_]{1,63}", config.receive.slot):
        problems.append("receive.slot must be 1 to 63 lower-case letters, digits or underscores "
                        "(a replication slot name)")
    problems += _seconds_problem("receive.partial_interval", config.receive.partial_interval)
    retained = parse_size(config.receive.max_slot_retained)
    if retained is None or retained > MAX_SIZE:
        problems.append("receive.max_slot_retained must be a number of bytes or a size such as \"4GB\" "
                        "(units kB, MB, GB, TB), at most 1 EiB (1048576TB)")
    problems += _encryption_problems(config.encryption)
    problems += _operations_problems(config)
    if problems:
        raise ConfigError(f"{source}: {problems[0]}")


def _repositories_problems(config: Config) -> list[str]:
    entries = config.repositories
    problems = []
    if not entries:
        problems.append("[[repository]] has no entries: configure at least one repository")
    if entries and not any(entry.required for entry in entries):
        problems.append("every repository has required = false: at least one must be required, or WAL could be "
                        "acknowledged to PostgreSQL while no repository holds it")
    names = [entry.name for entry in entries]
    for entry in entries:
        # With one [repository], keys read as before ("repository.timeout").
        at = "repository" if len(entries) == 1 else f"repository {entry.name!r}"
        if not _REPOSITORY_NAME.fullmatch(entry.name):
            problems.append(f"{at}: name must be 1 to 32 lower-case letters, digits, '-' or '_', starting with a "
                            "letter")
        if names.count(entry.name) > 1:
            problems.append(f"{at}: two repositories have this name")
        problems += _seconds_problem(f"{at}.timeout", entry.timeout)
        # Each retry waits up to 5 s more: 100 is over eight minutes of an outage per call.
        problems += _count_problem(f"{at}.retries", entry.retries, 0, 100)
        spool_max = parse_size(entry.spool_max)
        if spool_max is None or spool_max > MAX_SIZE:
            problems.append(f"{at}.spool_max must be a number of bytes or a size such as \"4GB\" (units kB, MB, GB, "
                            "TB), at most 1 EiB (1048576TB)")
        if not entry.required and entry.spool is None:
            problems.append(f"{at}: required = false needs spool, a local directory where WAL waits for it")
        if entry.spool is not None and not os.path.isabs(entry.spool):
            problems.append(f"{at}.spool must be an absolute path, not {entry.spool!r}")
        if entry.encryption is not None:
            problems += [f"{at}: {problem}" for problem in _encryption_problems(entry.encryption)]
        if entry.retention is not None:
            problems += [f"{at}: {problem}" for problem in _retention_problems(entry.retention, config.backup)]
    return problems


# Backups a retention rule keeps: far more than any archive holds.
_MAX_KEPT = 100_000


def _operations_problems(config: Config) -> list[str]:
    problems = []
    durations = [("status.backup_max_age", config.status.backup_max_age),
                 ("status.wal_max_age", config.status.wal_max_age)]
    if config.daemon.every is not None:
        durations.append(("daemon.every", config.daemon.every))
    durations.append(("drill.max_age", config.drill.max_age))
    if config.drill.every is not None:
        durations.append(("drill.every", config.drill.every))
    if config.retention is not None:
        problems += _retention_problems(config.retention, config.backup)
    for name, value in durations:
        seconds = parse_duration(value)
        if seconds is None or (name in ("daemon.every", "drill.every") and seconds <= 0):
            problems.append(_duration_problem(name))
    if config.daemon.every is not None and config.daemon.cron is not None:
        problems.append("daemon.every and daemon.cron are both set: choose one schedule")
    if config.daemon.full_every is not None:
        if parse_full_every(config.daemon.full_every) is None:
            problems.append(f"daemon.full_every must be a duration with its unit such as \"7d\" or \"12h\" (units s, "
                            f"m, h, d, w; at most 100 years) or a count such as \"27 incrementals\" (1 to "
                            f"{MAX_INCREMENTALS}), not {config.daemon.full_every!r}")
        elif config.daemon.every is None and config.daemon.cron is None:
            # It chooses the kind of scheduled backups only: without a schedule it would
            # silently do nothing.
            problems.append("daemon.full_every is set but there is no backup schedule: set daemon.every or "
                            "daemon.cron too (full_every chooses which scheduled backups are full)")
    if config.daemon.cron is not None:
        # Only when a cron schedule is configured: wal-push and wal-fetch load this module
        # for every segment (the hot path), and have no use for the cron parser.
        from pitrkit.cron import Cron, CronError

        try:
            Cron.parse(config.daemon.cron)
        except CronError as exc:
            problems.append(f"daemon.cron: {exc}")
    problems += _seconds_problem("daemon.status_interval", config.daemon.status_interval)
    return problems + _drill_problems(config.drill)


def _duration_problem(name: str) -> str:
    return (f"{name} must be a duration such as \"7d\", \"36h\" or \"90m\" (units s, m, h, d, w), "
            "at most 100 years")


def _retention_problems(retention: RetentionConfig, backup: BackupConfig) -> list[str]:
    problems = []
    if retention.keep_last < 1:
        problems.append("retention.keep_last must be at least 1: the newest backup is never removed")
    else:
        problems += _count_problem("retention.keep_last", retention.keep_last, 1, _MAX_KEPT)
    for name in ("daily", "weekly", "monthly"):
        problems += _count_problem(f"retention.{name}", getattr(retention, name), 0, _MAX_KEPT)
    durations = [("retention.unfinished_grace", retention.unfinished_grace),
                 ("retention.restore_lease", retention.restore_lease)]
    if retention.window is not None:
        durations.append(("retention.window", retention.window))
    problems += [_duration_problem(name) for name, value in durations if parse_duration(value) is None]
    if (held := parse_duration(retention.restore_lease)) is not None and held > MAX_HELD_FOR:
        # A longer lease would not decode: readers refuse it as forged (catalog/documents.py).
        problems.append(f"retention.restore_lease must be at most {MAX_HELD_FOR / 86400:.0f}d, the longest a "
                        "lease may hold")
    if retention.timezone is not None and not _known_zone(retention.timezone):
        problems.append(f"retention.timezone {retention.timezone!r} is not a time zone name such as \"UTC\" "
                        "or \"Europe/Berlin\"")
    if (grace := parse_duration(retention.unfinished_grace)) is not None and grace <= backup.wal_timeout:
        # After its last part, a backup-push waits up to wal_timeout for its WAL before it
        # stores the manifest: a shorter grace removes the parts of a backup about to commit.
        problems.append("retention.unfinished_grace must be longer than backup.wal_timeout "
                        f"({backup.wal_timeout:g}s): a backup waiting for its WAL writes nothing meanwhile")
    return problems


def _drill_problems(drill: DrillConfig) -> list[str]:
    problems = _count_problem("drill.nice", drill.nice, 0, 19)
    free = parse_size(drill.min_free)
    if free is None or free > MAX_SIZE:
        problems.append("drill.min_free must be a number of bytes or a size such as \"1GB\" (units kB, MB, GB, TB), "
                        "at most 1 EiB (1048576TB)")
    for number, check in enumerate(drill.checks, 1):
        if not check.sql.strip():
            problems.append(f"drill.checks[{number}].sql is empty")
        if not check.database or "\0" in check.database or "\0" in check.sql:
            problems.append(f"drill.checks[{number}]: a database name and query without NUL characters")
    return problems


def _known_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only when a zone is configured

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


_KEY_MODE_SOURCES = ("key_file", "passphrase_env", "passphrase_command")
_RECIPIENT_FILES = ("public_key_file", "private_key_file")
_SIGNING_FILES = ("signing_key_file", "verify_key_file")


def _encryption_problems(encryption: EncryptionConfig) -> list[str]:
    """Which keys each mode takes: a key given for another mode is a mistake (a key file
    under `mode = "off"` would otherwise silently leave the archive in plaintext)."""
    current = [name for name in (*_KEY_MODE_SOURCES, *_RECIPIENT_FILES) if getattr(encryption, name) is not None]
    signing = [name for name in _SIGNING_FILES if getattr(encryption, name) is not None]
    if encryption.mode == "off":
        if current or signing or encryption.old_keys:
            return [f"encryption.{(current or signing or ['old_keys'])[0]} is set but encryption.mode is \"off\" "
                    "(set mode = \"key\" or \"recipient\")"]
        return []
    allowed = _KEY_MODE_SOURCES if encryption.mode == "key" else _RECIPIENT_FILES
    problems = [f"encryption.{name} does not apply to mode = \"{encryption.mode}\"" for name in current
                if name not in allowed]
    if encryption.mode == "key":
        problems += [f"encryption.{name} does not apply to mode = \"key\" (the key itself authenticates the "
                     "archive's documents)" for name in signing]
    elif not signing:
        problems.append("encryption mode \"recipient\" needs signing_key_file (writers) or verify_key_file "
                        "(readers): the archive's documents are signed (pitrkit keygen --signing)")
    if encryption.mode == "key" and len(current) != 1:
        problems.append("encryption mode \"key\" needs exactly one of key_file, passphrase_env, passphrase_command")
    if encryption.mode == "recipient" and not current:
        problems.append("encryption mode \"recipient\" needs public_key_file (writers) or private_key_file")
    for number, old in enumerate(encryption.old_keys, 1):
        given = old.given()
        if len(given) != 1 or given[0] not in allowed:
            problems.append(f"encryption.old_keys entry {number} must set exactly one of {', '.join(allowed)}")
    if encryption.passphrase_command == [] or any(old.passphrase_command == [] for old in encryption.old_keys):
        problems.append("encryption passphrase_command must be a non-empty list: the program and its arguments")
    return problems


# msgspec reports "Expected `int`, got `str` - at `$.compression.level`"; a DBA wants
# the dotted key first, in the file's own terms.
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_FIELD = re.compile(r"^Object (?P<kind>contains unknown|missing required) field `(?P<field>[^`]+)`$")


def _describe(message: str) -> str:
    match = _AT.match(message)
    assert match is not None  # the pattern matches any string
    what, path = match["what"], (match["path"] or "").lstrip(".")
    field = _FIELD.match(what)
    if field:
        key = f"{path}.{field['field']}" if path else field["field"]
        if field["kind"] == "contains unknown":
            return f"unknown key '{key}'" + _did_you_mean(path, field["field"])
        return f"missing required key '{key}'"
    what = what.replace("`", "")
    return f"key '{path}': {what[0].lower()}{what[1:]}" if path else what


def _did_you_mean(path: str, key: str) -> str:
    """The nearest key the section at `path` takes (a misspelling), else the section that
    takes `key` as it is (a key put under the wrong table); "" when neither."""
    import difflib  # only for a bad file: wal-push loads this module for every segment

    close = difflib.get_close_matches(key, _known_keys(path), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    elsewhere = [name for name in _known_keys("") if key in _known_keys(name)]
    if elsewhere:
        return f" (did you mean '{key}' under [{elsewhere[0]}]?)"
    return ""


def _known_keys(path: str) -> list[str]:
    """The keys of the section at msgspec's `path` ("", "retention", "encryption.old_keys[0]")."""
    section: type[msgspec.Struct] | None = Config
    for part in filter(None, re.sub(r"\[\d+\]", "", path).split(".")):
        section = _section_in(typing.get_type_hints(section).get(part))
        if section is None:
            return []
    assert section is not None
    return [field.encode_name for field in msgspec.structs.fields(section)]


def _section_in(hint: object) -> type[msgspec.Struct] | None:
    """The section type a field's annotation holds (`RetentionConfig | None`, `list[OldKey]`)."""
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return hint
    for argument in typing.get_args(hint):
        if found := _section_in(argument):
            return found
    return None

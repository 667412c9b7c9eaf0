"""What a retention policy keeps: which backups, and which WAL files they need.

Pure functions of the catalog's facts (backup summaries, timeline paths) and the clock
passed in; nothing here reads or deletes anything. The retention engine (ops/retention.py)
asks, status compares the promise with what exists, and the tests can enumerate every
case without an archive.

Backups: the union of the `[retention]` rules, each kept backup with the rules that
keep it. A backup belongs to the instant it became usable, its `stop_time`, whether it
is full or incremental; calendar
rules count days, ISO weeks and months in the policy's zone, and only periods THAT HAVE
A BACKUP (restic's and borg's reading of "keep 7 dailies"): if backups stop for a month,
the next retention run still keeps the last seven days that had one, instead of letting
the calendar walk past them and remove every backup there is.

Chains (catalog/chains.py): the rules count only usable backups (an incremental whose
chain is broken restores nothing, and is kept by no rule), and a kept backup keeps every
ancestor of its chain, whatever the rules say of them. An incremental and the full
`backup-consolidate` made of it restore the same point (timeline, LSNs and stop time):
they count as one point, which the rules keep by the backup with the shortest chain; the
others stay only while a kept backup's chain or a lease needs them.

WAL: a segment file (T, s) is needed while replay of some archived timeline E, starting
from a kept backup on E's path, reads T's copy of segment s. Which timelines are
abandoned, and when their WAL may go, needs store times: that is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo

import msgspec

from pitrkit.catalog.archived_wal import TimelineStep, on_path, serving_timeline
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import BackupSummary
from pitrkit.config import RetentionConfig, parse_duration
from pitrkit.errors import ConfigError
from pitrkit.postgres.wal import SegmentName


class RetentionPolicy(NamedTuple):
    """`[retention]` as values: durations and the zone parsed once, at the edge."""

    keep_last: int  # >= 1 (config checks it): the newest backup is never removed
    daily: int
    weekly: int
    monthly: int
    window: timedelta | None
    zone: tzinfo  # whose calendar the daily, weekly and monthly rules count

    @classmethod
    def from_config(cls, config: RetentionConfig) -> RetentionPolicy:
        """The policy of a `[retention]` section. config.parse has checked its values; a
        section built otherwise still gets no guessed window."""
        window = None
        if config.window is not None:
            seconds = parse_duration(config.window)
            if seconds is None:
                raise ConfigError(f"retention.window must be a duration such as \"7d\", not {config.window!r}")
            window = timedelta(seconds=seconds)
        zone = HostZone() if config.timezone is None else ZoneInfo(config.timezone)
        return cls(config.keep_last, config.daily, config.weekly, config.monthly, window, zone)

    def describe(self) -> str:
        """The rules in a line, for messages: "last 2, 7 daily, 4 weekly, window 7d"."""
        rules = [f"last {self.keep_last}"]
        rules += [f"{count} {name}" for name, count in
                  (("daily", self.daily), ("weekly", self.weekly), ("monthly", self.monthly)) if count]
        if self.window is not None:
            rules.append(f"window {show_duration(self.window)}")
        return ", ".join(rules)


class BackupVerdict(msgspec.Struct, kw_only=True, frozen=True):
    """Whether retention keeps a backup, and why."""

    backup_id: str
    keep: bool
    # The rules that keep it, in the policy's order: "last 7", "daily 2026-11-20",
    # "weekly 2026-W47", "monthly 2026-11", "window 7d"; then what else holds it (the
    # caller's `held`: leases), then "ancestor of B, C" (kept backups whose chains
    # need it); [] when it is removed.
    reasons: list[str]


class HostZone(tzinfo):
    """The host's zone as the C library applies it (TZ, else /etc/localtime): the same
    local time `backup-list` shows (progress.show_time). Each instant gets its own
    offset, so days follow daylight saving time as the operator's clock does; a fixed
    offset taken from "now" would move backups across midnight for half the year."""

    def fromutc(self, moment: datetime) -> datetime:
        # fromtimestamp() without a zone is the C library's localtime(), and marks the
        # second pass through a repeated hour with fold=1.
        return datetime.fromtimestamp(moment.replace(tzinfo=UTC).timestamp()).replace(tzinfo=self)

    def utcoffset(self, moment: datetime | None) -> timedelta | None:
        if moment is None:
            return None
        wall = moment.replace(tzinfo=None)
        # timestamp() of a naive time reads it as local time, honouring fold.
        return wall - datetime.fromtimestamp(wall.timestamp(), UTC).replace(tzinfo=None)

    def dst(self, moment: datetime | None) -> timedelta | None:
        return None  # the C library does not say; nothing here needs it

    def tzname(self, moment: datetime | None) -> str | None:
        if moment is None:
            return None
        return datetime.fromtimestamp(moment.replace(tzinfo=None).timestamp()).astimezone().tzname()

    def __repr__(self) -> str:
        return "HostZone()"


def show_duration(duration: timedelta) -> str:
    """A duration in the largest unit that states it exactly: "7d", "36h", "90m", "45s"."""
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- backups ----------------------------------------------------------------------------

# A calendar period as a sortable key (later periods sort higher) and its label.
Period = tuple[tuple[int, ...], str]


def _day(local: datetime) -> Period:
    return (local.year, local.month, local.day), local.date().isoformat()


def _iso_week(local: datetime) -> Period:
    year, week, _ = local.isocalendar()
    return (year, week), f"{year}-W{week:02d}"


def _month(local: datetime) -> Period:
    return (local.year, local.month), f"{local.year}-{local.month:02d}"


_CALENDAR_RULES: tuple[tuple[str, Callable[[datetime], Period]], ...] = (
    ("daily", _day),
    ("weekly", _iso_week),
    ("monthly", _month),
)


def _age(backup: BackupSummary) -> tuple[datetime, str]:
    """Orders backups by when they became usable; the id only breaks ties."""
    return backup.stop_time, backup.backup_id


def select_backups(backups: Sequence[BackupSummary], policy: RetentionPolicy, now: datetime,
                   held: Mapping[str, Sequence[str]] | None = None) -> list[BackupVerdict]:
    """A verdict for each of `backups`, in their order.

    - last N: the N newest backups;
    - daily D (weekly, monthly): the newest backup of each of the D most recent days (ISO
      weeks, months) in `policy.zone` that have a backup;
    - window W: the newest backup with stop_time <= now - W, so that every point of the
      last W is restorable from it; when none is that old, the oldest backup (the window
      reaches back as far as the archive does).
    "Newest" is by stop_time, as everywhere a backup is placed in time. The rules see
    only usable backups (catalog/chains.py): a broken incremental is kept by none.

    `held`: backups kept whatever the rules say, with the reasons shown (the leases of
    running restores). Last, every ancestor of a kept backup is kept: its chain is what
    restores it."""
    if policy.keep_last < 1:
        raise ValueError("keep_last must be at least 1: the newest backup is never removed")
    reasons: dict[str, list[str]] = {backup.backup_id: [] for backup in backups}
    usable = one_per_point(check_chains(backups).usable)
    newest_first = sorted(usable, key=_age, reverse=True)
    for backup in newest_first[: policy.keep_last]:
        reasons[backup.backup_id].append(f"last {policy.keep_last}")
    for rule, period_of in _CALENDAR_RULES:
        count = getattr(policy, rule)
        # The newest backup of each period: newest_first meets it first.
        newest_of: dict[tuple[int, ...], tuple[str, BackupSummary]] = {}
        for backup in newest_first:
            key, label = period_of(backup.stop_time.astimezone(policy.zone))
            newest_of.setdefault(key, (label, backup))
        for key in sorted(newest_of, reverse=True)[:count]:
            label, backup = newest_of[key]
            reasons[backup.backup_id].append(f"{rule} {label}")
    if policy.window is not None and usable:
        start = now - policy.window
        before = [backup for backup in usable if backup.stop_time <= start]
        anchor = max(before, key=_age) if before else min(usable, key=_age)
        reasons[anchor.backup_id].append(f"window {show_duration(policy.window)}")
    for backup_id, words in (held or {}).items():
        if backup_id in reasons:
            reasons[backup_id] += words
    _keep_ancestors(backups, reasons)
    return [BackupVerdict(backup_id=backup.backup_id, keep=bool(reasons[backup.backup_id]),
                          reasons=reasons[backup.backup_id]) for backup in backups]


def point_of(backup: BackupSummary) -> tuple[str, int, int, int, datetime]:
    """What makes backups one point for the rules: an incremental and the fulls
    backup-consolidate made of it (`consolidated_from`), at its point (timeline, start and
    stop LSN and stop time, which backup-consolidate copies; a backup naming one it is
    not at the point of stands alone)."""
    return (backup.consolidated_from or backup.backup_id, backup.timeline, backup.start_lsn, backup.stop_lsn,
            backup.stop_time)


def one_per_point(usable: Sequence[BackupSummary]) -> list[BackupSummary]:
    """Of backups that restore the same point, the one with the shortest chain (the id
    breaks ties): what the rules count, in the order given."""
    chosen: dict[tuple[str, int, int, int, datetime], BackupSummary] = {}
    for backup in usable:
        other = chosen.get(point_of(backup))
        if other is None or (len(backup.chain), backup.backup_id) < (len(other.chain), other.backup_id):
            chosen[point_of(backup)] = backup
    kept = {backup.backup_id for backup in chosen.values()}
    return [backup for backup in usable if backup.backup_id in kept]


def _keep_ancestors(backups: Sequence[BackupSummary], reasons: dict[str, list[str]]) -> None:
    """Adds "ancestor of ..." to each stored ancestor of a backup the rules or `held`
    keep. A chain lists every ancestor, so one pass over the kept backups is the closure."""
    descendants: dict[str, list[str]] = {}
    for backup in backups:
        if reasons[backup.backup_id]:
            for ancestor in backup.chain:
                if ancestor in reasons:
                    descendants.setdefault(ancestor, []).append(backup.backup_id)
    for ancestor, kept in descendants.items():
        # A full under a long chain of kept incrementals: name a few, count the rest.
        named = ", ".join(kept[:_NAMED_DESCENDANTS])
        more = len(kept) - _NAMED_DESCENDANTS
        reasons[ancestor].append(f"ancestor of {named}" + (f" and {more} more" if more > 0 else ""))


_NAMED_DESCENDANTS = 3


# --- WAL --------------------------------------------------------------------------------

# Segment numbers first..last, both included; last None: on to the newest WAL.
SegmentRange = tuple[int, int | None]


def wal_to_keep(paths: Mapping[int, list[TimelineStep]], keepers: Sequence[BackupSummary], segment_size: int
                ) -> dict[int, list[SegmentRange]]:
    """Per timeline T, the segment numbers whose T-file must stay, as sorted, disjoint,
    merged ranges (timelines with nothing to keep are absent).

    `paths`: every archived timeline E with its path (ArchivedWal.path(E)); `keepers`: the
    retained and the leased backups. (T, s) is kept iff for some E and some keeper B on
    E's path, B's first segment <= s and replay along E's path reads segment s from T:
    every kept backup then replays to the newest WAL of every timeline that descends
    from it, and WAL only older branches read is not held by newer backups.

    With consistent history files this is one open-ended range per timeline; history
    files that disagree (a damaged archive) can leave bounded stretches too."""
    needed: dict[int, list[SegmentRange]] = {}
    for path in paths.values():
        firsts = [SegmentName.parse(backup.first_segment, segment_size).segno
                  for backup in keepers if on_path(path, backup)]
        if not firsts:
            continue
        first = min(firsts)  # the backups on one path need nested tails of it: the longest covers all
        # The serving timeline only changes where a step begins: cut the tail there.
        cuts = sorted({first} | {step.begin // segment_size for step in path if step.begin // segment_size > first})
        for number, cut in enumerate(cuts):
            last = cuts[number + 1] - 1 if number + 1 < len(cuts) else None
            needed.setdefault(serving_timeline(path, cut, segment_size), []).append((cut, last))
    return {timeline: _merged(ranges) for timeline, ranges in sorted(needed.items())}


def _merged(ranges: list[SegmentRange]) -> list[SegmentRange]:
    """Sorted ranges with the overlapping and adjacent ones joined."""
    merged: list[SegmentRange] = []
    for first, last in sorted(ranges, key=lambda span: span[0]):
        if merged:
            previous_first, previous_last = merged[-1]
            if previous_last is None:
                break  # open-ended: everything later is inside it
            if first <= previous_last + 1:
                merged[-1] = (previous_first, None if last is None else max(last, previous_last))
                continue
        merged.append((first, last))
    return merged

"""The restore planner: from a recovery target to the backup a restore unpacks, the
timeline path, and the WAL segments recovery will replay, checked to be archived; or a
refusal naming the missing piece. The planner fetches no WAL: recovery asks for each
segment through `restore_command` (wal/fetch.py, with wal/lookahead.py reading ahead).

It decides in this order, each step refusing with the piece that is missing:
1. the timeline to end on: the one whose own WAL holds the target (refusing when several
   do, unless --timeline says which), or what --timeline names;
2. that timeline's path, from its history file;
3. the newest usable backup on the path that is consistent before the target: a full
   backup, or an incremental whose whole chain is stored (catalog/chains.py; a newer
   broken one is passed over, and a note says why); an incremental's plan lists its
   chain, the ancestors a restore fetches blocks from;
4. the unbroken run of segments from the backup's first one along the path, which must
   cover the backup's consistency point and reach the target.

The run may end in a `<segment>.partial` (see catalog/archived_wal.py): the open segment a
streaming receiver shipped, when it is the newest WAL of its timeline. Where its WAL
ends is known only by reading it, so the planner reads that one object and takes the end
of its last valid page as the archive's end: an upper bound, less than a page past the
last record. wal-fetch then serves the partial when recovery asks for the segment.

It reads only what it needs (see catalog/archived_wal.py): never a listing of every segment.
"""

from __future__ import annotations

import logging
import math
import sys
from argparse import Namespace
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec

from pitrkit.catalog.archived_wal import ArchivedWal, TimelineStep, WalChain, on_path
from pitrkit.catalog.backups import backups
from pitrkit.catalog.chains import check_chains
from pitrkit.catalog.documents import BackupSummary, IndexedTransaction, WalIndexEntry
from pitrkit.catalog.time_index import Located, NotFound, after_time, around_time, locate
from pitrkit.config import Config
from pitrkit.errors import ConfigError, PitrkitError, RefusedError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.progress import human_bytes, show_time
from pitrkit.restore import pgconf
from pitrkit.restore.targets import Target, TimelineChoice, target_from_args, timeline_from_args
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive, TamperedDocument

log = logging.getLogger(__name__)

__all__ = ["PlanRefused", "RestorePlan", "TimelineStep", "describe", "make_plan"]


class PlanRefused(RefusedError):
    """The target cannot be reached from what the archive holds; the message names the
    missing piece (no backup before the target, the first missing segment, a timeline
    that does not lead there, an ambiguous target)."""


class TimeStop(msgspec.Struct, kw_only=True, frozen=True):
    """Where the time index says recovery stops: the first segment on the path holding
    a commit/abort record later than the target, and the transactions either side (xid
    and Unix microseconds; None when not read)."""

    segment: str
    last_before: IndexedTransaction | None
    first_after: IndexedTransaction | None


class RestorePlan(msgspec.Struct, kw_only=True, frozen=True):
    target: Target
    # recovery_target_timeline to write: the timeline recovery ends on.
    timeline: int
    path: list[TimelineStep]
    backup: BackupSummary
    # An incremental backup's ancestors, the full backup first ([] for a full backup):
    # what a restore reads blocks from besides `backup`.
    chain: list[str] = []
    # Every WAL file recovery will ask restore_command for (the restore itself fetches
    # none; it checks that each is stored), in replay order: segment names from the
    # backup's first segment to the one holding the target (or the newest on the path
    # for --latest), then the history files of the path's timelines. The last may be
    # `<segment>.partial`: recovery asks for the segment and is served the partial.
    segments: list[str]
    history_files: list[str]
    wal_stored_size: int
    # End of the gap-free WAL the archive holds on this path: the end of its last
    # segment, or, when that is a partial, of the partial's last valid page. With a
    # `stop`, the run is read only that far: the end of the segment recovery stops in.
    archive_end: Lsn
    # Timelines on which the target exists; more than one means it was ambiguous and
    # --timeline decided.
    candidate_timelines: list[int]
    notes: list[str] = []
    # A time target found in the time index (catalog/time_index.py): the segment where
    # recovery stops and the transactions either side; None without an index.
    stop: TimeStop | None = None
    # What the backup's configuration files would run (restore-plan reads them; see
    # restore/pgconf.py); None when not read.
    configuration: pgconf.Found | None = None


def make_plan(archive: Archive, target: Target, timeline: TimelineChoice = None, *,
              wal: ArchivedWal | None = None, finished: list[BackupSummary] | None = None) -> RestorePlan:
    """`wal` and `finished`: the archive as the caller has already read it (verify plans
    to every backup's stop point on one reading, and to that backup alone)."""
    if wal is None:
        wal = ArchivedWal(archive)  # no archive.json: ArchiveMissing, a fault rather than "no WAL"
    if finished is None:
        finished = backups(archive)
    if not finished:
        raise PlanRefused(f"the archive {archive.storage.url} holds no finished backup")
    candidates = _candidate_timelines(wal, target)
    ending = _ending_timeline(wal, finished, target, timeline, candidates)
    try:
        path = wal.path(ending)
    except PitrkitError as exc:
        raise PlanRefused(f"timeline {ending} does not lead anywhere: {exc}") from None
    notes: list[str] = []
    backup = _choose_backup(path, finished, target, ending, notes)
    located = _located_time(archive, wal, path, backup, target, notes) if target.kind == "time" else None
    # With the target's segment known, the run is walked only up to it.
    bound = None if located is None else max(located.segno, wal.segno(backup.last_segment))
    chain = wal.chain(path, wal.segno(backup.first_segment), bound)
    if bound is not None and chain.last_segno < bound:
        raise PlanRefused(_short_of(chain, target, Lsn((chain.last_segno + 1) * wal.segment_size)))
    if chain.partial is not None:
        archive_end = wal.partial_end(chain.partial)
    else:
        archive_end = SegmentName.parse(chain.segments[-1].name, wal.segment_size).end_lsn if chain.segments \
            else Lsn(chain.first_segno * wal.segment_size)
    segments = _segments_to_target(wal, chain, backup, target, archive_end)
    stop = None if located is None else _time_stop(archive, located, target)

    if len(candidates) > 1:
        notes.append(f"the target lies on timelines {_listing(candidates)}; --timeline chose {ending}")
    if target.kind == "time" and stop is None:
        notes.append("the plan runs to the end of the unbroken WAL; recovery stops at the first transaction after "
                     "the target")
        if chain.missing and chain.gap:
            notes.append(f"segment {chain.missing} is missing: WAL after it is out of reach")
    if segments[-1] is chain.partial:
        stored = "" if chain.partial.modified is None else f", as of {show_time(_instant(chain.partial.modified))}"
        notes.append(f"the last segment is only stored as {chain.partial.name}, the open segment a streaming "
                     f"receiver shipped{stored}: recovery replays its WAL and ends there; the archive end is the "
                     "end of its last valid page, an upper bound (the last record ends within that page)")
    return RestorePlan(
        target=target,
        timeline=ending,
        path=path,
        backup=backup,
        chain=list(backup.chain),
        segments=list(map(attrgetter("name"), segments)),
        history_files=[f"{step.timeline:08X}.history" for step in path if step.timeline != 1],
        wal_stored_size=sum(map(attrgetter("stored_size"), segments)),
        archive_end=archive_end,
        candidate_timelines=candidates or [ending],
        notes=notes,
        stop=stop,
    )


# --- 1. which timeline ------------------------------------------------------------------


class _OwnRange(NamedTuple):
    """Where a timeline's own WAL lies: from its branch point (exclusive; timeline 1 from
    the start) to the end of its newest segment, and in time from when its history file
    was stored to when its newest segment was."""

    timeline: int
    branch: Lsn
    end: Lsn
    created: float  # -inf for timeline 1
    last_stored: float  # +inf when the storage does not say

    def holds(self, target: Target) -> bool:
        if target.kind == "lsn":
            assert target.lsn is not None
            after_branch = target.lsn >= self.branch if self.timeline == 1 else target.lsn > self.branch
            return after_branch and target.lsn < self.end
        if target.kind == "time":
            assert target.time is not None
            return self.created < target.time.timestamp() <= self.last_stored
        return False

    def starts_before(self, target: Target) -> bool:
        if target.kind == "lsn":
            assert target.lsn is not None
            return self.branch <= target.lsn
        assert target.time is not None
        return self.created < target.time.timestamp()


def _own_ranges(wal: ArchivedWal) -> list[_OwnRange]:
    ranges = []
    for timeline in wal.timelines:
        if timeline != 1 and timeline not in wal.history_files:
            continue  # no path leads to it
        history = wal.history(timeline)
        branch = history[-1].switch_lsn if history else Lsn(0)
        newest = wal.newest_segment(timeline, branch // wal.segment_size)
        partial = wal.newest_partial(timeline)
        if partial is not None and (newest is None or partial[0] > newest[0]):
            # Its segment's end: an upper bound that costs no read. The chain's check
            # against the partial's real end refuses an LSN past it.
            newest = partial
        if newest is None:
            continue  # nothing archived on it yet
        segno, entry = newest
        created = -math.inf if timeline == 1 else wal.history_files[timeline].modified or -math.inf
        ranges.append(_OwnRange(timeline, branch, Lsn((segno + 1) * wal.segment_size), created,
                                math.inf if entry.modified is None else entry.modified))
    return ranges


def _candidate_timelines(wal: ArchivedWal, target: Target) -> list[int]:
    return [own.timeline for own in _own_ranges(wal) if own.holds(target)]


def _ending_timeline(wal: ArchivedWal, finished: list[BackupSummary], target: Target, choice: TimelineChoice,
                     candidates: list[int]) -> int:
    timelines = wal.timelines
    if not timelines:
        raise PlanRefused("the archive holds no WAL")
    if choice == "latest" or (choice is None and target.kind == "latest"):
        # PostgreSQL's own default: recovery_target_timeline = 'latest'.
        return timelines[-1]
    if choice == "current":
        consistent = [b for b in check_chains(finished).usable if _consistent_before(b, target)]
        if not consistent:
            raise PlanRefused(_nothing_consistent(target, finished))
        return max(consistent, key=lambda b: (b.start_time, b.backup_id)).timeline
    if isinstance(choice, int):
        if choice not in timelines:
            raise PlanRefused(f"timeline {choice} is not in the archive (it has timelines {_listing(timelines)})")
        return choice
    if len(candidates) > 1:
        raise PlanRefused(
            f"{_target_words(target)} lies on timelines {_listing(candidates)} (a restored server branched off "
            f"and both went on archiving); pass " + " or ".join(f"--timeline {t}" for t in candidates)
        )
    if candidates:
        return candidates[0]
    # On no timeline: plan on the newest one it comes after, so that the WAL check below
    # names what is missing there (the first gap, or where the archive ends).
    preceding = [own.timeline for own in _own_ranges(wal) if own.starts_before(target)]
    return max(preceding) if preceding else timelines[-1]


# --- 3. which backup --------------------------------------------------------------------


def _consistent_before(backup: BackupSummary, target: Target) -> bool:
    if target.kind == "lsn":
        assert target.lsn is not None
        return backup.stop_lsn <= target.lsn
    if target.kind == "time":
        assert target.time is not None
        return backup.stop_time <= target.time
    return True


def _nothing_consistent(target: Target, considered: list[BackupSummary]) -> str:
    oldest = min(considered, key=lambda b: (b.start_time, b.backup_id))
    return (f"no backup is consistent before {_target_words(target)}; the oldest backup {oldest.backup_id} is "
            f"consistent from {show_time(oldest.stop_time)} (LSN {oldest.stop_lsn})")


def _choose_backup(path: list[TimelineStep], finished: list[BackupSummary], target: Target,
                   ending: int, notes: list[str]) -> BackupSummary:
    """The newest usable backup on `path` consistent before `target`; each newer one passed
    over because its chain is broken is a note."""
    on = [b for b in finished if on_path(path, b)]
    if not on:
        found = ", ".join(f"{b.backup_id} (timeline {b.timeline})" for b in finished)
        raise PlanRefused(f"no backup lies on the way to timeline {ending} ({_path_words(path)}); backups: {found}")
    consistent = [b for b in on if _consistent_before(b, target)]
    if not consistent:
        raise PlanRefused(_nothing_consistent(target, on))
    # The chains are judged among all finished backups: an ancestor need not lie on
    # this path (a full taken before a branch point does, one after it on another
    # timeline would not be an ancestor).
    broken = check_chains(finished).broken_by_id()
    usable = [b for b in consistent if b.backup_id not in broken]
    # Along one path LSNs only grow, so the newest backup is the one starting last.
    passed = [b for b in consistent if b.backup_id in broken
              and (not usable or b.start_lsn > max(usable, key=lambda u: u.start_lsn).start_lsn)]
    if not usable:
        raise PlanRefused("no usable backup is consistent before " + _target_words(target) + ": "
                          + "; ".join(f"backup {b.backup_id}'s chain is broken: {broken[b.backup_id].problem}"
                                      for b in passed))
    # At one start, the shortest chain: the full backup-consolidate made of an incremental.
    chosen = max(usable, key=lambda b: (b.start_lsn, -len(b.chain)))
    notes += [f"backup {b.backup_id} is newer, but its chain is broken ({broken[b.backup_id].problem}): planned "
              f"from {chosen.backup_id}" for b in sorted(passed, key=lambda b: b.start_lsn, reverse=True)]
    return chosen


# --- 4. which segments ------------------------------------------------------------------


def _segments_to_target(wal: ArchivedWal, chain: WalChain, backup: BackupSummary,
                        target: Target, archive_end: Lsn) -> list[WalIndexEntry]:
    if chain.last_segno < wal.segno(backup.last_segment):
        raise PlanRefused(f"segment {chain.missing} is missing from the archive: backup {backup.backup_id} needs "
                          f"{backup.first_segment} to {backup.last_segment} to become consistent")
    if backup.stop_lsn > archive_end:
        raise PlanRefused(f"backup {backup.backup_id} becomes consistent at LSN {backup.stop_lsn}, but "
                          f"{_ends_at(chain, archive_end)}")
    if target.kind == "lsn":
        assert target.lsn is not None
        holding = target.lsn // wal.segment_size
        if chain.last_segno < holding or target.lsn >= archive_end:
            raise PlanRefused(_short_of(chain, target, archive_end))
        return chain.segments[: holding - chain.first_segno + 1]
    if target.kind == "time":
        assert target.time is not None
        stored = chain.segments[-1].modified
        if stored is not None and stored < target.time.timestamp():
            raise PlanRefused(_short_of(chain, target, archive_end))
    elif chain.gap:
        # Recovery would stop at the hole and promote there, without the WAL after it.
        raise PlanRefused(_short_of(chain, target, archive_end))
    return chain.segments


def _located_time(archive: Archive, wal: ArchivedWal, path: list[TimelineStep], backup: BackupSummary,
                  target: Target, notes: list[str]) -> Located | None:
    """The segment the time index says recovery stops in: the first from the backup's
    on the path holding a commit/abort later than the target; None (and a note) where a
    segment on the way has no index entry or none is later, and the plan runs to the end
    of the unbroken WAL as without an index."""
    assert target.time is not None
    newest = wal.newest_on_path(path)
    if newest is None:
        return None
    found = locate(archive, wal, path, wal.segno(backup.first_segment), newest[0], after_time(_micros(target.time)))
    if isinstance(found, NotFound):
        notes.append("the time index holds no transaction after the target: recovery replays all the archived WAL")
        return None
    if not isinstance(found, Located):
        notes.append(f"segment {found.segment} has no time index entry ('pitrkit catalog rebuild' makes it), so the "
                     "archive cannot tell which segment holds the target time")
        return None
    return found


def _time_stop(archive: Archive, located: Located, target: Target) -> TimeStop:
    assert target.time is not None
    around = around_time(archive, located, _micros(target.time))
    return TimeStop(segment=located.entry.segment, last_before=around.before, first_after=around.after)


def _micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _short_of(chain: WalChain, target: Target, archive_end: Lsn) -> str:
    if chain.gap:
        return (f"segment {chain.missing} is missing from the archive: the WAL between the backup and "
                f"{_target_words(target)} has a gap there")
    return f"{_ends_at(chain, archive_end)}; {_target_words(target)} is later"


def _ends_at(chain: WalChain, archive_end: Lsn) -> str:
    last = chain.segments[-1]
    stored = "" if last.modified is None else f", stored at {show_time(_instant(last.modified))}"
    if chain.partial is not None:
        return (f"the archive's WAL on timeline {int(last.name[:8], 16)} ends at LSN {archive_end} at most "
                f"(in the partial segment {last.name}{stored})")
    return f"the archive's WAL on timeline {int(last.name[:8], 16)} ends at LSN {archive_end}{stored}"


# --- showing ----------------------------------------------------------------------------


def _instant(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _listing(numbers: list[int]) -> str:
    words = [str(number) for number in numbers]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _target_words(target: Target) -> str:
    if target.kind == "lsn":
        return f"the target LSN {target.lsn}"
    if target.kind == "time":
        assert target.time is not None
        return f"the target time {target.time.astimezone(UTC).isoformat(sep=' ')}"
    return "the latest point"


def _path_words(path: list[TimelineStep]) -> str:
    return ", then ".join(
        f"timeline {step.timeline} from {step.begin}" + ("" if step.end is None else f" to {step.end}")
        for step in path
    )


def describe(plan: RestorePlan) -> str:
    """The plan as a person reads it before restoring."""
    target = plan.target
    if target.kind == "time":
        assert target.time is not None
        resolved = (f"{target.time.astimezone(UTC).isoformat(sep=' ')} "
                    f"(local {target.time.astimezone().isoformat(sep=' ')})")
        target_line = f"time {target.text!r} = {resolved}"
    elif target.kind == "lsn":
        target_line = f"LSN {target.lsn}"
    else:
        target_line = "latest: the end of the archived WAL"
    backup = plan.backup
    why = {
        "time": f" that is consistent before the target (from {show_time(backup.stop_time)})",
        "lsn": f" that is consistent before the target (from LSN {backup.stop_lsn})",
        "latest": "",
    }[target.kind]
    lines = [
        f"target:       {target_line}",
        f"timeline:     {plan.timeline} (path: {_path_words(plan.path)})",
        f"backup:       {backup.backup_id} '{backup.label}', started {show_time(backup.start_time)} at "
        f"{backup.start_lsn} on timeline {backup.timeline}",
        f"              chosen as the newest backup on this path{why}",
    ]
    if plan.chain:
        lines.append(f"chain:        incremental: {len(plan.chain)} ancestor(s) to fetch blocks from, "
                     f"{' > '.join(plan.chain)} > {backup.backup_id}")
    lines += [
        f"WAL:          {len(plan.segments)} segments, {plan.segments[0]} .. {plan.segments[-1]}, "
        f"{human_bytes(plan.wal_stored_size)} stored",
    ]
    if plan.history_files:
        lines.append(f"history:      {', '.join(plan.history_files)}")
    if plan.stop is None:
        lines.append(f"archive end:  {plan.archive_end} (end of the unbroken WAL on this path)")
    else:
        lines.append(f"WAL end:      {plan.archive_end} (the end of the segment recovery stops in; the WAL after it "
                     "was not read)")
    if plan.stop is not None:
        lines.append(f"stops in:     {plan.stop.segment} (time index): the first transaction after the target "
                     f"ends there; {_transaction_words('last before', plan.stop.last_before)}; "
                     f"{_transaction_words('first after', plan.stop.first_after)}")
    lines += [f"note:         {note}" for note in plan.notes]
    if plan.configuration is not None:
        lines += [f"warning:      {line}" if number == 0 else f"              {line}"
                  for number, line in enumerate(pgconf.describe(plan.configuration))]
        lines += [f"configuration: {note}" for note in plan.configuration.notes]
    return "\n".join(lines)


def _transaction_words(which: str, transaction: IndexedTransaction | None) -> str:
    if transaction is None:
        return f"{which}: not known"
    moment = datetime.fromtimestamp(transaction.time_us / 1_000_000, UTC)
    return f"{which}: xid {transaction.xid} at {moment.isoformat(sep=' ', timespec='microseconds')}"


def backup_configuration(archive: Archive, backup_id: str) -> pgconf.Found:
    """The code-running settings of the backup's configuration files, read from its
    parts. A part that cannot be read (a host with only a public key, a damaged part)
    is a note here: the restore would say more; a manifest that does not authenticate
    is refused, as everywhere."""
    try:
        return pgconf.code_settings(pgconf.in_backup(archive, backup_id))
    except TamperedDocument:
        raise
    except ObjectNotFound:
        return pgconf.Found(notes=["the backup's configuration files were not read: its manifest is gone"])
    except PitrkitError as exc:
        return pgconf.Found(notes=[f"the backup's configuration files were not read: {exc}"])


def server_choice(target: Target, choice: TimelineChoice | Literal["server"],
                  config: Config) -> tuple[TimelineChoice, int | None]:
    """--timeline with `server` resolved to the configured server's timeline, and that
    timeline when it was asked: for `server` (which needs the answer) and for a plan to
    the latest point along the archive's newest timeline (which may be a restored copy's
    branch, see latest_warning; a server that does not answer then is no error)."""
    # psycopg (through postgres/server.py) only when the server is asked
    from pitrkit.postgres.server import ServerError, configured_server_timeline

    if choice == "server":
        try:
            server = configured_server_timeline(config.postgres.conninfo)
        except ServerError as exc:
            raise PlanRefused(f"--timeline server needs the server's timeline: {exc}") from None
        return server, server
    if target.kind == "latest" and choice in (None, "latest") and config.postgres.conninfo is not None:
        try:
            return choice, configured_server_timeline(config.postgres.conninfo)
        except (ServerError, ConfigError) as exc:
            log.debug("not checking the server's timeline: %s", exc)
    return choice, None


def latest_warning(plan: RestorePlan, server: int | None) -> str | None:
    """A plan along a timeline that is not the server's, made without naming it: the
    newest timeline in the archive is a branch (a test restore promoted with archiving
    on), and --latest would restore the abandoned copy's history, not the server's."""
    if server is None or plan.timeline == server or plan.target.kind != "latest":
        return None
    return (f"warning: the newest timeline in the archive, {plan.timeline}, is not timeline {server} that the "
            f"server in [postgres] conninfo is on: --latest follows timeline {plan.timeline} (a restored copy "
            "promoted with archiving on?); to restore the server's own history, add --timeline server")


def command(args: Namespace, config: Config, config_path: Path) -> str:
    target = target_from_args(args)
    choice, server = server_choice(target, timeline_from_args(args), config)
    archive = Archive(config)
    plan = make_plan(archive, target, choice)
    plan = msgspec.structs.replace(plan, configuration=backup_configuration(archive, plan.backup.backup_id))
    if warning := latest_warning(plan, server):
        print(f"pitrkit: {warning}", file=sys.stderr)
    text = codec.encode(plan).decode() if args.json else describe(plan) + "\n"
    sys.stdout.write(text)
    return (f"restore plan: backup {plan.backup.backup_id}, {len(plan.segments)} segments to "
            f"{plan.segments[-1]}, timeline {plan.timeline}")

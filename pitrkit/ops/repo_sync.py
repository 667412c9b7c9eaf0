"""`pitrkit repo sync`: fill one repository from another (a repository added later, an
optional one that fell behind, a required one a backup-push could not reach).

What the target lacks is copied, in the order a reader needs it: WAL and history files
first, then backups oldest first (an incremental only once its whole chain is there),
then the restore points (added to the target's own, under its catalog lock) and the
time index. How each object is copied, checked and, between repositories that encode
differently, re-encoded is backup/replicate.py's. Nothing in the target is overwritten
or deleted, so a run interrupted anywhere is finished by the next, and a second run
copies nothing.

Two repositories may encode differently: each has its own [encryption] (and keys), and
encrypted objects are bound to their key. Where both encode alike (both plain, or the
same keys and archive.json parameters) objects are copied as stored, each checked first
by decoding it through the source's cipher against the digest the manifest (or block
map) records. Otherwise each object is decoded through the source's cipher, checked the
same way, and encoded again through the target's (with the digest the target's backups
use: SHA-256 when encrypted, XXH3-128 for stream parts and super-blocks when plain), and
read back through the target's cipher where this host can decrypt. Re-encoding changes
stored sizes and the super-blocks' offsets in their block parts, so a backup's block maps
and manifest are written anew for the target; the plaintext checksums of files and
blocks (catalog/checksums.py) do not change.
"""

from __future__ import annotations

import logging
import sys
from argparse import Namespace
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from pitrkit.backup.replicate import WORKERS, Copier
from pitrkit.catalog import restore_points, time_index
from pitrkit.catalog.backups import survey_backups
from pitrkit.catalog.documents import RestorePoint
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, UsageError
from pitrkit.postgres.wal import WalFileName
from pitrkit.progress import human_bytes, human_count
from pitrkit.storage.archive import WAL_PREFIX, Archive
from pitrkit.storage.repositories import Repository, chosen, open_all

log = logging.getLogger(__name__)


class SyncReport(msgspec.Struct, kw_only=True):
    """What one `repo sync` from `source` to `target` copied (or, `dry_run`, would copy)."""

    source: str
    target: str
    dry_run: bool
    # "as stored": both encode alike; "re-encoded": through the source's cipher, then the target's.
    copying: str
    wal: list[str] = []  # WAL and history file names
    backups: list[str] = []
    restore_points: list[str] = []
    time_index: list[str] = []  # keys
    bytes_written: int = 0
    problems: list[str] = []  # what was not copied, and why: the command then fails (SyncFailed)


class SyncFailed(PitrkitError):
    """A sync left something uncopied; the report says what."""


# -- the whole repository ------------------------------------------------------------------


def sync(source: Repository, target: Repository, *, dry_run: bool = False) -> SyncReport:
    """Copy into `target` everything of `source` it lacks (module docstring), era by era
    (`pitrkit upgrade`): the target must record the source's eras (run `pitrkit upgrade`
    with it configured)."""
    copiers = [Copier(era, target.archive.era(era.era_number)) for era in source.archive.eras()]
    report = SyncReport(source=source.name, target=target.name, dry_run=dry_run, copying=copiers[0].copying)
    for copier in copiers:
        _sync_wal(copier, report, dry_run)
        _sync_backups(copier, report, dry_run)
        _sync_restore_points(copier, report, dry_run)
        _sync_time_index(copier, report, dry_run)
    report.bytes_written = sum(copier.written for copier in copiers)
    return report


def _missing(source: Archive, target: Archive, prefix: str) -> list[str]:
    have = {info.key for info in target.list(prefix)}
    return [info.key for info in source.list(prefix) if info.key not in have]


def _sync_wal(copier: Copier, report: SyncReport, dry_run: bool) -> None:
    names = {}
    for key in _missing(copier.source, copier.target, WAL_PREFIX):
        try:
            names[key] = WalFileName.parse(key.rpartition("/")[2]).name
        except ValueError:
            continue  # not pitrkit's: left where it is

    def copy(key: str) -> str | None:
        """The problem copying it, if any."""
        try:
            copier.copy_object(key)
        except PitrkitError as exc:
            return f"{names[key]}: {exc}"
        return None

    with ThreadPoolExecutor(WORKERS, thread_name_prefix="repo-sync-wal") as pool:
        outcomes = [None] * len(names) if dry_run else list(pool.map(copy, names))
    for key, problem in zip(names, outcomes, strict=True):
        if problem is None:
            report.wal.append(names[key])
        else:
            report.problems.append(problem)


def _sync_backups(copier: Copier, report: SyncReport, dry_run: bool) -> None:
    there = survey_backups(copier.target)
    have = {summary.backup_id for summary in there.finished}
    failed: set[str] = set()
    for summary in survey_backups(copier.source).finished:
        backup_id = summary.backup_id
        if backup_id in have:
            continue
        if backup_id in there.deleting:
            log.info("backup %s: retention is removing it from %s; not copied back", backup_id, report.target)
            continue
        broken = [ancestor for ancestor in summary.chain if ancestor in failed]
        if broken or (not dry_run and any(ancestor not in have for ancestor in summary.chain)):
            failed.add(backup_id)
            report.problems.append(f"backup {backup_id}: its chain ({', '.join(summary.chain)}) is not complete in "
                                   f"{report.target}")
            continue
        if not dry_run:
            try:
                copier.copy_backup(backup_id)
            except PitrkitError as exc:
                failed.add(backup_id)
                report.problems.append(f"backup {backup_id}: {exc}")
                continue
        have.add(backup_id)
        report.backups.append(backup_id)


def _sync_restore_points(copier: Copier, report: SyncReport, dry_run: bool) -> None:
    try:
        known = {point.name: point for point in restore_points.restore_points(copier.target)}
        wanted = [point for point in restore_points.restore_points(copier.source) if point.name not in known]
    except PitrkitError as exc:
        report.problems.append(f"restore points: {exc}")
        return
    for point in wanted:
        if not dry_run:
            try:
                restore_points.record(copier.target, point.name, _made(point))
            except PitrkitError as exc:
                report.problems.append(f"restore point {point.name!r}: {exc}")
                continue
        report.restore_points.append(point.name)


def _made(point: RestorePoint) -> Callable[[], RestorePoint]:
    return lambda: point


def _sync_time_index(copier: Copier, report: SyncReport, dry_run: bool) -> None:
    for prefix in (time_index.TIMES_PREFIX, time_index.XIDS_PREFIX):
        for key in _missing(copier.source, copier.target, prefix):
            if not dry_run:
                try:
                    copier.copy_object(key)
                except PitrkitError as exc:
                    # A cache: `catalog rebuild` (or the time indexer) makes it in the target.
                    log.warning("time index %s not copied: %s", key, exc)
                    continue
            report.time_index.append(key)


# -- the command -----------------------------------------------------------------------------


def pairs(repositories: list[Repository], source_name: str | None, target_name: str | None
          ) -> list[tuple[Repository, Repository]]:
    """Which repository fills which: `--to` (default: every one but the source) from
    `--from` (default: the first configured one that is not the target)."""
    if len(repositories) < 2:
        raise UsageError("repo sync: only one repository is configured; it copies between [[repository]] entries")
    targets = chosen(repositories, target_name)
    if source_name is not None:
        source = chosen(repositories, source_name)[0]
        targets = [each for each in targets if each.name != source.name]
        if not targets:
            raise UsageError(f"repo sync: --from and --to both name {source_name}")
        return [(source, target) for target in targets]
    if target_name is None:
        return [(repositories[0], target) for target in repositories[1:]]
    return [(next(each for each in repositories if each.name != target_name), targets[0])]


def describe(report: SyncReport) -> list[str]:
    would = "would copy" if report.dry_run else "copied"
    lines = [f"repo sync {report.source} -> {report.target} ({report.copying}): {would} "
             f"{human_count(len(report.wal), 'WAL file')}, {human_count(len(report.backups), 'backup')}, "
             f"{human_count(len(report.restore_points), 'restore point')}, "
             f"{human_count(len(report.time_index), 'time index object')}"
             + ("" if report.dry_run else f"; {human_bytes(report.bytes_written)} written")]
    lines += [f"  backup {backup_id}" for backup_id in report.backups]
    lines += [f"  not copied: {problem}" for problem in report.problems]
    return lines


def command(args: Namespace, config: Config, config_path: Path) -> str:
    repositories = open_all(config)
    reports = [sync(source, target, dry_run=args.dry_run)
               for source, target in pairs(repositories, args.source, args.target)]
    for report in reports:
        for line in describe(report):
            print(line)
    sys.stdout.flush()
    problems = [f"{report.target}: {problem}" for report in reports for problem in report.problems]
    if problems:
        raise SyncFailed(f"repo sync left {human_count(len(problems), 'thing')} uncopied; the first: {problems[0]}")
    return "; ".join(describe(report)[0] for report in reports)

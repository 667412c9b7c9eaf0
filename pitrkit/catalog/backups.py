"""Which backups the archive holds: the finished ones, the unfinished ones, and those
retention is removing.

A backup exists once its manifest, its commit marker, is stored: manifests are the truth
about backups, and everything here reconciles with them.

* `catalog/backups.json` lists the summaries of finished backups (catalog/maintenance.py
  writes it as backups finish, ops/retention.py without the backups it removes). Reading
  it is checked against one listing of `backups/`: a backup folder it does not know is
  read from its manifest, an entry whose folder is gone is dropped.
* `catalog/retention.json` names the backups retention is removing (ops/retention.py): they
  exist for no reader from the moment it is stored, while their objects go.
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import NamedTuple

from pitrkit.catalog.documents import BackupCatalog, BackupClaim, BackupSummary, RetentionState
from pitrkit.errors import PitrkitError
from pitrkit.hookspecs import ObjectExists, ObjectNotFound
from pitrkit.storage.archive import (
    BACKUP_CATALOG_KEY,
    BACKUPS_PREFIX,
    RETENTION_STATE_KEY,
    Archive,
    backup_prefix,
    claim_key,
    manifest_key,
    stored_at,
)

log = logging.getLogger(__name__)

# Manifest checks in flight when surveying backups: tiny, latency-bound requests.
_MANIFEST_THREADS = 8


class BackupSurvey(NamedTuple):
    finished: list[BackupSummary]  # oldest first
    # Folders under backups/ without a manifest: a backup in progress, or one that was
    # interrupted and awaits cleanup. Neither exists for the planner.
    unfinished: list[str]
    # Folders of backups retention is removing (in catalog/retention.json): whatever of
    # them is still stored, they exist for no reader.
    deleting: list[str]


def backups(archive: Archive) -> list[BackupSummary]:
    """The backups whose manifests exist and that retention is not removing, oldest first."""
    return survey_backups(archive).finished


def retention_state(archive: Archive) -> RetentionState:
    """`catalog/retention.json`; the empty state when there is none. An unreadable one is
    ignored with a warning: retention removes a backup's manifest before anything else
    of it, so a backup whose manifest is stored is complete, and the next run rewrites
    the document."""
    try:
        return archive.get_document(RETENTION_STATE_KEY, RetentionState)
    except ObjectNotFound:
        return RetentionState()
    except ValueError as exc:
        log.warning("ignoring %s; the next 'pitrkit retention apply' rewrites it", exc)
        return RetentionState()


def backup_folders(archive: Archive) -> list[str]:
    """The ids of the folders under `backups/`: finished, unfinished or being removed."""
    return [folder.removeprefix(BACKUPS_PREFIX).rstrip("/") for folder in archive.list_folder(BACKUPS_PREFIX).folders]


def survey_backups(archive: Archive) -> BackupSurvey:
    """Every folder under `backups/`, as finished, unfinished or being removed: one
    listing, the catalog, and the manifests it does not vouch for."""
    # Retention's intent first, the folders after: a backup retention starts removing
    # after this read still has its manifest when listed, so it is still complete.
    being_removed = set(retention_state(archive).deleting)
    cached = {summary.backup_id: summary for summary in read_backup_catalog(archive)}
    listed = backup_folders(archive)
    ids = [backup_id for backup_id in listed if backup_id not in being_removed]

    def summary_of(backup_id: str) -> BackupSummary | None:
        # A cached entry still needs its manifest: the manifest is what makes a backup
        # exist, and a deletion interrupted after removing it leaves the folder behind.
        if backup_id in cached:
            return cached[backup_id] if manifest_present(archive, backup_id) else None
        return read_summary(archive, backup_id)

    finished: list[BackupSummary] = []
    unfinished: list[str] = []
    with ThreadPoolExecutor(_MANIFEST_THREADS, thread_name_prefix="manifests") as pool:
        for backup_id, summary in zip(ids, pool.map(summary_of, ids), strict=True):
            if summary is None:
                unfinished.append(backup_id)
            else:
                finished.append(summary)
    return BackupSurvey(oldest_first(finished), unfinished,
                        [backup_id for backup_id in listed if backup_id in being_removed])


def last_written(archive: Archive, backup_id: str) -> datetime | None:
    """When the newest object of a backup folder was stored (one listing), None when the
    storage does not say: how an unfinished backup that is still running (it keeps
    storing parts) is told from one that was interrupted."""
    stamps = [info.modified for info in archive.list(backup_prefix(backup_id)) if info.modified is not None]
    return stored_at(max(stamps)) if stamps else None


def manifest_present(archive: Archive, backup_id: str) -> bool:
    """Whether the backup's commit marker is stored: what makes it exist."""
    try:
        archive.stat(manifest_key(backup_id))
    except ObjectNotFound:
        return False
    return True


def oldest_first(summaries: list[BackupSummary]) -> list[BackupSummary]:
    """The order `catalog/backups.json` keeps and every reader lists: by start time."""
    return sorted(summaries, key=lambda summary: (summary.start_time, summary.backup_id))


def read_backup_catalog(archive: Archive) -> list[BackupSummary]:
    """`catalog/backups.json` as stored, not yet reconciled with `backups/`; empty when
    it is absent or unreadable."""
    try:
        return archive.get_document(BACKUP_CATALOG_KEY, BackupCatalog).backups
    except ObjectNotFound:
        return []
    except ValueError as exc:
        # Only a cache: the manifests say the same, they just cost more to read.
        log.warning("ignoring the backup catalog (%s); reading the manifests instead; "
                    "'pitrkit catalog rebuild' rewrites it", exc)
        return []


def read_summary(archive: Archive, backup_id: str) -> BackupSummary | None:
    """The backup's summary from its manifest; None when the manifest is absent."""
    key = manifest_key(backup_id)
    try:
        summary = archive.get_document(key, BackupSummary)
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise PitrkitError(f"backup {backup_id} is unusable: {exc}") from None
    if summary.backup_id != backup_id:
        raise PitrkitError(f"backup {backup_id} is unusable: {key} names backup {summary.backup_id!r}")
    return summary


def claim(archive: Archive, backup_id: str, token: str, now: datetime) -> bool:
    """Whether this run (`token`) holds backup id `backup_id`: its `claim.json` stored
    create-only, so that of two runs wanting one id (backup-push's in the same second,
    backup-consolidate's of the same incremental) exactly one has it. A claim that meets
    its own earlier attempt (a retried write whose first answer was lost) knows it by its
    token. Taken before anything else goes into the folder."""
    record = BackupClaim(token=token, host=socket.gethostname(), pid=os.getpid(), claimed_at=now)
    try:
        archive.put_document(claim_key(backup_id), record, pretty=False)
    except ObjectExists:
        try:
            return archive.get_document(claim_key(backup_id), BackupClaim).token == token
        except (ObjectNotFound, ValueError):
            return False  # another run's, removed or unreadable: not ours either way
    return True

"""Writing the catalog: recording a finished backup, indexing the WAL folders sealed
since the last time, and `catalog rebuild`, which recreates the whole catalog from the
objects (and the WAL time index, catalog/time_index.py, where it is missing). The
catalog's other writer is retention (ops/retention.py): it rewrites
`catalog/backups.json` and the indexes of the folders it removes WAL from, and alone
writes `catalog/retention.json`.

The catalog (`catalog/...`) is a cache. Manifests are the truth about backups and the
objects under `wal/` are the truth about WAL; every reader reconciles with them
(catalog/backups.py, catalog/archived_wal.py), and a rebuild recreates the catalog from
them alone, so losing or corrupting it never loses data.

Every rewrite of a catalog document holds the catalog lock (catalog/lock.py): `catalog rebuild`
refuses while another writer holds it; a backup's own update is skipped (backup/push.py
warns, and readers find the backup from its manifest meanwhile).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pitrkit.catalog import lock, restore_points
from pitrkit.catalog.archived_wal import ArchivedWal, LogFolder
from pitrkit.catalog.backups import backup_folders, oldest_first, read_backup_catalog, read_summary
from pitrkit.catalog.documents import BackupCatalog, BackupSummary, WalFolderIndex
from pitrkit.catalog.time_index import IndexProgress, index_wal, remove_stale
from pitrkit.hookspecs import ObjectExists
from pitrkit.progress import Progress, human_count
from pitrkit.storage.archive import BACKUP_CATALOG_KEY, Archive, log_folder, wal_index_key


def record_backup(archive: Archive, summary: BackupSummary, command: str = "backup-push") -> None:
    """Add a backup whose manifest has just been stored to `catalog/backups.json`, and
    index the WAL folders sealed since the last time.

    Under the catalog lock (`command` says who holds it): `LockHeld` when another writer has it (retention, a rebuild,
    another backup's update), and the caller skips the update."""
    with lock.take(archive, command):
        known = [entry for entry in read_backup_catalog(archive) if entry.backup_id != summary.backup_id]
        document = BackupCatalog(backups=oldest_first([*known, summary]))
        archive.put_document(BACKUP_CATALOG_KEY, document, overwrite=True)
        refresh(archive)


def refresh(archive: Archive) -> list[str]:
    """Index the sealed WAL folders that have no index yet; returns the keys written.
    Cheap: two one-level listings, then one listing per folder sealed since last time."""
    wal = ArchivedWal(archive)
    written = []
    for timeline, numbers in wal.logs.items():
        for log_number in numbers[:-1]:
            key = wal_index_key(log_folder(timeline, log_number))
            if key in wal.indexed:
                continue
            try:
                archive.put_document(key, _folder_index(wal.relist(timeline, log_number)), pretty=False)
            except ObjectExists:
                continue  # a concurrent refresh indexed it from the same sealed folder
            written.append(key)
    return written


def rebuild(archive: Archive) -> list[str]:
    """Recreate the whole catalog from the objects, under the catalog lock; returns one
    line per change."""
    with lock.take(archive, "catalog rebuild"):
        return _rebuild(archive)


def _rebuild(archive: Archive) -> list[str]:
    report = []
    finished: list[BackupSummary] = []
    unfinished: list[str] = []
    for backup_id in backup_folders(archive):
        summary = read_summary(archive, backup_id)
        if summary is None:
            unfinished.append(backup_id)
        else:
            finished.append(summary)
    finished = oldest_first(finished)
    archive.put_document(BACKUP_CATALOG_KEY, BackupCatalog(backups=finished), overwrite=True)
    line = f"wrote {BACKUP_CATALOG_KEY}: {human_count(len(finished), 'backup')}"
    if unfinished:
        line += f" (left out, no manifest: {', '.join(unfinished)})"
    report.append(line)

    wal = ArchivedWal(archive)
    wanted = set()
    for timeline, numbers in sorted(wal.logs.items()):
        for log_number in numbers[:-1]:
            listed = wal.relist(timeline, log_number)
            key = wal_index_key(log_folder(timeline, log_number))
            archive.put_document(key, _folder_index(listed), pretty=False, overwrite=True)
            wanted.add(key)
            report.append(f"wrote {key}: {human_count(len(listed.entries), 'file')}")
    for key in sorted(wal.indexed - wanted):
        archive.delete(key)
        report.append(f"removed {key}: its folder is gone or still receives WAL")
    report += _index_times(archive, wal)
    if points := restore_points.rebuild_line(archive):
        report.append(points)
    return report


def _index_times(archive: Archive, wal: ArchivedWal) -> list[str]:
    """The time index of every segment that lacks one, read from the WAL (catalog/time_index.py),
    with progress on a terminal."""
    with Progress("time index: WAL read") as shown:
        def seen(step: IndexProgress) -> None:
            shown.total = step.total * wal.segment_size
            shown.advance(step.wal_bytes - shown.done)

        return remove_stale(archive, wal) + index_wal(archive, wal, progress=seen)


def _folder_index(folder: LogFolder) -> WalFolderIndex:
    return WalFolderIndex(
        folder=log_folder(folder.timeline, folder.log_number),
        entries=folder.entries,
        indexed_at=datetime.now(UTC).replace(microsecond=0),
    )

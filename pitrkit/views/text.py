"""Reports as text for people: tables and lines, times in the reader's time zone, sizes
and counts as people write them. (`--json` prints the report Struct itself.)
"""

from __future__ import annotations

from pitrkit.catalog.contents import BackupListing, WalListing, WalRow
from pitrkit.catalog.documents import BackupSummary
from pitrkit.postgres.wal import Lsn
from pitrkit.progress import human_bytes, show_time

# backup-list and wal-list


def backup_list(listing: BackupListing) -> str:
    rows = [
        [b.backup_id, b.label, show_time(b.start_time), show_time(b.stop_time), str(b.start_lsn), str(b.stop_lsn),
         str(b.timeline), human_bytes(b.size), human_bytes(b.stored_size), str(b.pg_major),
         _configuration(b)]
        for b in listing.backups
    ]
    rows += [[backup_id, "(unfinished: no manifest)", *["-"] * 9] for backup_id in listing.unfinished]
    rows += [[backup_id, "(being removed by retention)", *["-"] * 9] for backup_id in listing.deleting]
    return _table(["ID", "LABEL", "START", "STOP", "START LSN", "STOP LSN", "TL", "SIZE", "STORED", "PG", "CONFIG"],
                  rows)


def wal_list(listing: WalListing) -> str:
    def lsn(value: Lsn | None) -> str:
        return "-" if value is None else str(value)

    def state(row: WalRow) -> str:
        said = "before the first backup" if row.state == "before-first-backup" else row.state
        return f"{said}, partial" if row.partial else said

    rows = listing.files
    table = _table(
        ["NAME", "TL", "START LSN", "END LSN", "STORED", "STORED AT", "BACKUP", "STATE"],
        [[row.name, str(row.timeline), lsn(row.start_lsn), lsn(row.end_lsn), human_bytes(row.stored_size),
          show_time(row.stored_at), row.backup or "-", state(row)] for row in rows],
    )
    if any(row.state == "before-first-backup" for row in rows):
        # A fresh archive: WAL with no backup yet is normal, and none of it is removed.
        table += ("\nno backup yet: this WAL is kept, but a restore needs a base backup to start from "
                  "(pitrkit backup-push)")
    return table


def _configuration(backup: BackupSummary) -> str:
    """Where the backed-up server's configuration was: with the data directory, or how
    many files came from outside it (copied with the backup; see restore/server_config.py)."""
    if backup.configuration is None:
        return "-"
    files = backup.configuration.files
    return f"{len(files)} outside" if files else "in pgdata"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])

"""`backup-list`, `wal-list` and `catalog rebuild`: what the archive holds, collected by the
catalog (catalog/contents.py, catalog/maintenance.py), printed as text (views/text.py) or,
with `--json`, as the report itself.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

from pitrkit.catalog.contents import WalListing, backup_listing, wal_rows
from pitrkit.catalog.maintenance import rebuild
from pitrkit.config import Config
from pitrkit.errors import UsageError
from pitrkit.progress import human_count
from pitrkit.storage import codec
from pitrkit.storage.archive import Archive
from pitrkit.views import text


def command(args: Namespace, config: Config, config_path: Path) -> str:
    archive = Archive(config)
    if args.command == "backup-list":
        backups = backup_listing(archive)
        _print(codec.encode(backups).decode() if args.json else text.backup_list(backups))
        return (f"listed {human_count(len(backups.backups), 'backup')}, {len(backups.unfinished)} unfinished, "
                f"{len(backups.deleting)} being removed")
    if args.command == "wal-list":
        wal = WalListing(files=wal_rows(archive, args.timeline))
        _print(codec.encode(wal).decode() if args.json else text.wal_list(wal))
        return f"listed {human_count(len(wal.files), 'WAL file')}"
    if args.command == "catalog" and args.action == "rebuild":
        report = rebuild(archive)
        _print("\n".join(report))
        return f"rebuilt the catalog: {human_count(len(report), 'change')}"
    raise UsageError(f"listing has no command {args.command!r}")


def _print(output: str) -> None:
    sys.stdout.write(output if output.endswith("\n") else output + "\n")

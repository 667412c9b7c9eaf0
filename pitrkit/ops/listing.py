"""`backup-list`, `wal-list` and `catalog rebuild`: what the archive holds, collected by
the catalog (catalog/contents.py) and printed by cli.py as text (views/text.py) or, with
`--json`, as the listing itself; and the catalog recreated from the stored objects alone
(catalog/maintenance.py).
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

from pitrkit.catalog.contents import BackupListing, WalListing, backup_listing, wal_rows
from pitrkit.catalog.maintenance import rebuild
from pitrkit.config import Config
from pitrkit.errors import UsageError
from pitrkit.progress import human_count
from pitrkit.storage.archive import Archive


def command_report(args: Namespace, config: Config, config_path: Path) -> BackupListing | WalListing:
    """`pitrkit backup-list` / `wal-list`: the listing cli.py prints."""
    archive = Archive(config)
    if args.command == "backup-list":
        return backup_listing(archive)
    return WalListing(files=wal_rows(archive, args.timeline))


def command(args: Namespace, config: Config, config_path: Path) -> str:
    """`pitrkit catalog rebuild`: one line per change it made."""
    if args.action != "rebuild":
        raise UsageError(f"catalog has no action {args.action!r}")
    changes = rebuild(Archive(config))
    sys.stdout.write("\n".join(changes) + "\n")
    return f"rebuilt the catalog: {human_count(len(changes), 'change')}"

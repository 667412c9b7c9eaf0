"""`backup-list`, `wal-list` and `catalog rebuild`: what the archive holds, collected by
the catalog (catalog/contents.py) and printed by cli.py as text (views/text.py) or, with
`--json`, as the listing itself; and the catalog recreated from the stored objects alone
(catalog/maintenance.py). Each runs per repository (`--repo NAME`: one), as
ops/per_repository says.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

from pitrkit.catalog.contents import BackupListing, WalListing, backup_listing, wal_rows
from pitrkit.catalog.maintenance import rebuild
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, UsageError
from pitrkit.ops.per_repository import PerRepository, run_each
from pitrkit.progress import human_count
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import Repository, chosen, open_all


def command_report(args: Namespace, config: Config, config_path: Path
                   ) -> BackupListing | WalListing | PerRepository[BackupListing] | PerRepository[WalListing]:
    """`pitrkit backup-list` / `wal-list` [--repo NAME]: the listing cli.py prints, one
    repository's as before several existed, else one per repository (ops/per_repository)."""
    repositories = chosen(open_all(config), args.repo)

    def backups(repository: Repository, seen: Config) -> BackupListing:
        return backup_listing(repository.archive)

    def wal(repository: Repository, seen: Config) -> WalListing:
        return WalListing(files=wal_rows(repository.archive, args.timeline))

    if args.command == "backup-list":
        listed: BackupListing | PerRepository[BackupListing] = run_each("backup-list", repositories, config, backups)
        return listed
    rows: WalListing | PerRepository[WalListing] = run_each("wal-list", repositories, config, wal)
    return rows


def _rebuild_eras(archive: Archive) -> list[str]:
    """`rebuild` each era's catalog, the changes of a later era named with it."""
    changes: list[str] = []
    for era in archive.eras():
        named = "" if era.era_number == 1 else f"era {era.era_number}: "
        changes += [named + change for change in rebuild(era)]
    return changes


def command(args: Namespace, config: Config, config_path: Path) -> str:
    """`pitrkit catalog rebuild [--repo NAME]`: one line per change it made; with several
    repositories each line names its repository, and every repository is rebuilt before a
    failure ends the command."""
    if args.action != "rebuild":
        raise UsageError(f"catalog has no action {args.action!r}")
    repositories = chosen(open_all(config), args.repo)
    if len(repositories) == 1:
        changes = _rebuild_eras(repositories[0].archive)
        sys.stdout.write("\n".join(changes) + "\n")
        return f"rebuilt the catalog: {human_count(len(changes), 'change')}"
    done: list[str] = []
    failed: list[tuple[str, PitrkitError]] = []
    for repository in repositories:
        try:
            changes = _rebuild_eras(repository.archive)
        except PitrkitError as exc:
            failed.append((repository.name, exc))
            continue
        sys.stdout.write("".join(f"repository {repository.name}: {change}\n" for change in changes))
        done.append(f"{repository.name} {human_count(len(changes), 'change')}")
    sys.stdout.flush()
    if failed:
        error = failed[0][1]
        error.args = ("; ".join(f"repository {name!r}: {exc}" for name, exc in failed)
                      + (f" (rebuilt: {', '.join(done)})" if done else ""),)
        raise error
    return f"rebuilt the catalogs: {', '.join(done)}"

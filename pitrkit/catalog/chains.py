"""Which backups can be restored as far as their chains go: a full backup always, an
incremental one only while its whole chain of ancestors is stored and hangs together.

The one place every reader asks (the planner, retention, verify, `backup-list`,
`status`): a pure function of the finished backups' summaries (catalog/backups.py),
reading nothing. A link of a chain holds when the parent is stored, is itself usable,
started before its child (in time and in WAL), is of the same system and PostgreSQL
major, and its own chain plus itself is what the child records as its chain. Summaries
are decoded with their chain checked to ascend to the backup (catalog/documents.py), so
a chain has no cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from pitrkit.catalog.documents import BackupSummary


class BrokenChain(msgspec.Struct, kw_only=True, frozen=True):
    """A backup that cannot be restored because of its chain."""

    backup_id: str
    ancestor: str  # the ancestor at fault: the first one missing, or the unusable link
    problem: str  # for messages: "its ancestor X is not in the archive"


class Chains(NamedTuple):
    usable: list[BackupSummary]  # in the order given
    broken: list[BrokenChain]  # in the order given

    def broken_by_id(self) -> dict[str, BrokenChain]:
        return {each.backup_id: each for each in self.broken}


def check_chains(finished: Sequence[BackupSummary]) -> Chains:
    """`finished` split into the usable backups and the broken chains, each in its order."""
    by_id = {backup.backup_id: backup for backup in finished}
    broken: dict[str, BrokenChain] = {}
    # Ancestors first: in a chain that hangs together, a parent's chain is shorter than
    # its child's, so its verdict is known when the child's is decided.
    for backup in sorted(finished, key=lambda each: len(each.chain)):
        if backup.parent is None:
            continue
        found = _link_problem(backup, by_id)
        if found is None and backup.parent in broken:
            parent = broken[backup.parent]
            found = (parent.ancestor, f"its ancestor {backup.parent} is unusable: {parent.problem}")
        if found is not None:
            broken[backup.backup_id] = BrokenChain(backup_id=backup.backup_id, ancestor=found[0], problem=found[1])
    return Chains([backup for backup in finished if backup.backup_id not in broken],
                  [broken[backup.backup_id] for backup in finished if backup.backup_id in broken])


def _link_problem(backup: BackupSummary, by_id: dict[str, BackupSummary]) -> tuple[str, str] | None:
    """What is wrong with `backup`'s own link to its parent: (the ancestor at fault, why)."""
    for ancestor in backup.chain:
        if ancestor not in by_id:
            return ancestor, f"its ancestor {ancestor} is not in the archive"
    assert backup.parent is not None  # the caller's: only incrementals have a link
    parent = by_id[backup.parent]
    if parent.system_identifier != backup.system_identifier or parent.pg_major != backup.pg_major:
        return parent.backup_id, (f"its parent {parent.backup_id} is of system {parent.system_identifier}, "
                                  f"PostgreSQL {parent.pg_major}, not of system {backup.system_identifier}, "
                                  f"PostgreSQL {backup.pg_major}")
    if not (parent.start_time < backup.start_time and parent.start_lsn < backup.start_lsn):
        return parent.backup_id, (f"its parent {parent.backup_id} started at {parent.start_lsn} "
                                  f"({parent.start_time.isoformat()}), not before it")
    if [*parent.chain, parent.backup_id] != backup.chain:
        return parent.backup_id, (f"its chain {' > '.join(backup.chain)} is not its parent's chain and its "
                                  "parent")
    return None


def chain_length(backup: BackupSummary) -> int:
    """The backups a restore of `backup` reads: its ancestors and itself (1 for a full)."""
    return len(backup.chain) + 1

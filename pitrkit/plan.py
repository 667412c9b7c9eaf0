"""The restore planner: from a recovery target to the backup, timeline path and WAL
segments a restore will use, or a refusal naming the missing piece.

(Contract first; the planning itself is being written.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from pitrkit.archive import Archive
from pitrkit.catalog import BackupSummary
from pitrkit.errors import RefusedError
from pitrkit.wal import Lsn


class PlanRefused(RefusedError):
    """The target cannot be reached from what the archive holds; the message names the
    missing piece (no backup before the target, the first missing segment, a timeline
    that does not lead there, an ambiguous target)."""


class Target(msgspec.Struct, kw_only=True, frozen=True):
    kind: Literal["time", "lsn", "latest"]
    time: datetime | None = None  # aware; kind == "time"
    lsn: Lsn | None = None  # kind == "lsn"
    text: str = ""  # what the user typed, for messages


class TimelineStep(msgspec.Struct, kw_only=True, frozen=True):
    """Replay runs on `timeline` from `begin` until `end`, where the path switches to the
    next step's timeline (None on the last step)."""

    timeline: int
    begin: Lsn
    end: Lsn | None


class RestorePlan(msgspec.Struct, kw_only=True, frozen=True):
    target: Target
    # recovery_target_timeline to write: the timeline recovery ends on.
    timeline: int
    path: list[TimelineStep]
    backup: BackupSummary
    # Every WAL file recovery will fetch, in replay order: segment names from the
    # backup's first segment to the one holding the target (or the newest on the path
    # for --latest), then the history files of the path's timelines.
    segments: list[str]
    history_files: list[str]
    wal_stored_size: int
    # End of the gap-free WAL the archive holds on this path (end of its last segment).
    archive_end: Lsn
    # Timelines on which the target exists; more than one means it was ambiguous and
    # --timeline decided.
    candidate_timelines: list[int]
    notes: list[str] = []


TimelineChoice = int | Literal["latest", "current"] | None


def make_plan(archive: Archive, target: Target, timeline: TimelineChoice = None) -> RestorePlan:
    raise NotImplementedError

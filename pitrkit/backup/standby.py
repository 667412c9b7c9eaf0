"""backup-push on a standby: the sessions with its primary (`[backup] primary_conninfo`;
one before the start, one after the stop, none held during the copy), the checks that
say the standby may be backed up now (the primary of the same cluster, on
the same timeline, the standby's replay at most `[backup] standby_max_lag` behind it), and
after pg_backup_stop, the checks of where the backup ended and the primary's WAL switch
that makes its last segment archivable.

PostgreSQL's rules for a backup taken on a standby (do_pg_backup_start/stop, xlog.c):

* pg_backup_start makes a restartpoint (a standby's checkpoint) at the last checkpoint
  record replayed: the backup starts at the primary's checkpoint's redo point, on that
  checkpoint's timeline (`START TIMELINE`; the label also says `BACKUP FROM: standby`).
* pg_backup_stop writes no WAL and switches no segment (a standby cannot): its stop LSN is
  the standby's minimum recovery point, which a restore's recovery reaches before it is
  consistent (the pg_control copied last holds an earlier or equal one). It waits for the
  archive only with archive_mode = always on the standby, and then for a segment the
  primary may not have finished: backup-push never asks it to wait (`wait_for_archive =>
  false`), and waits for the archive itself (backup/push.py).
* The stop segment may be the one the primary is still writing: only the primary's
  pg_switch_wal() completes it, so that whatever archives (the primary's archive_command,
  the standby's with archive_mode = always, wal-receive) archives it. The stop LSN is the
  standby's minimum recovery point, so the standby has replayed it, so the primary has
  written it: the switch comes after the stop, and only while the primary is still in
  the stop segment.

A backup whose WAL crosses a timeline switch cannot be described by one timeline and a
run of segments (the manifest's): one that would is refused before it starts when it can
be seen then, else failed after the stop, before its manifest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NamedTuple

from pitrkit.config import BackupConfig
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.postgres.conninfo import conninfo_parameters
from pitrkit.postgres.server import BackupStop, ServerFacts, ServerSession
from pitrkit.postgres.wal import Lsn, SegmentName
from pitrkit.progress import human_bytes

log = logging.getLogger(__name__)

SETTING = "[backup] primary_conninfo"


class Primary(NamedTuple):
    """The standby's primary: a session with it and its facts."""

    session: ServerSession
    facts: ServerFacts


def check_setting(backup: BackupConfig) -> None:
    """A `[backup] primary_conninfo` libpq cannot parse is refused in one line (without
    libpq's words, which may quote a password) whatever the server turns out to be: on a
    primary it is not used, and would otherwise wait, wrong, for the next failover."""
    if backup.primary_conninfo is not None:
        conninfo_parameters(backup.primary_conninfo, SETTING)


@contextlib.contextmanager
def primary_of(facts: ServerFacts, backup: BackupConfig) -> Iterator[Primary]:
    """A session with the primary of the standby whose facts are `facts`: a primary of
    the same cluster, refused in one line otherwise. Opened twice by a backup, for the
    checks before the start and for the WAL switch after the stop, and never held
    during the copy: a copy takes hours, and a connection to the primary broken meanwhile
    (a network blip, a restart) must not fail it."""
    if backup.primary_conninfo is None:
        raise RefusedError(f"the server in [postgres] conninfo is a standby (in recovery): set {SETTING} to reach "
                           "its primary, which must switch WAL segments for the backup (docs/backups.md), or run "
                           "backup-push against the primary")
    with ServerSession(backup.primary_conninfo, SETTING) as session:
        primary = Primary(session, session.facts())
        if primary.facts.in_recovery:
            raise RefusedError(f"the server {SETTING} reaches is in recovery too: it must reach the primary, which "
                               "alone can switch WAL segments (a cascading standby's upstream is not one)")
        if primary.facts.system_identifier != facts.system_identifier:
            raise RefusedError(f"the server {SETTING} reaches belongs to the cluster with system identifier "
                               f"{primary.facts.system_identifier}, not to this standby's ({facts.system_identifier})")
        yield primary


def check_standby(standby: ServerSession, primary: Primary, backup: BackupConfig) -> None:
    """Refused in one line unless the standby is on its primary's timeline and its replay
    at most `[backup] standby_max_lag` behind the primary's WAL."""
    # The standby's last restartpoint's timeline: where a backup started now begins
    # (pg_backup_start's restartpoint may move it to a later checkpoint, not back).
    on_standby, on_primary = standby.timeline(), primary.session.timeline()
    if on_standby != on_primary:
        raise RefusedError(f"the standby is on timeline {on_standby} (its last restartpoint), the primary "
                           f"{SETTING} reaches on timeline {on_primary}: a backup of it would start on another "
                           "timeline than the primary's WAL; wait for the standby's next restartpoint on the "
                           "primary's timeline, or check that it follows this primary")
    # The primary's position first: the standby's replay read after it can only be further.
    written = primary.session.current_wal_lsn()
    replayed = standby.replay_lsn()
    if replayed is None:
        raise RefusedError("the standby has not replayed any WAL yet: it cannot be backed up")
    lag = max(written - replayed, 0)
    if lag > backup.standby_max_lag_bytes:
        raise RefusedError(f"the standby's replay is {human_bytes(lag)} behind its primary (replayed to {replayed}, "
                           f"the primary has written to {written}), more than [backup] standby_max_lag "
                           f"({backup.standby_max_lag}): is replay paused or delayed (recovery_min_apply_delay)? "
                           "A backup of it would be that old")
    log.info("backing up a standby %s behind its primary (replayed to %s, the primary at %s)", human_bytes(lag),
             replayed, written)


def finish_stop(standby: ServerSession, primary: Primary, stop: BackupStop) -> SegmentName:
    """After pg_backup_stop on the standby: check that the backup's WAL is on one timeline,
    the primary's, and have the primary complete the stop segment; the last segment the
    backup needs."""
    timeline = stop.label.timeline
    on_primary = primary.session.timeline()
    if on_primary != timeline:
        raise PitrkitError(f"the backup started on timeline {timeline} (the standby's restartpoint), but the primary "
                           f"is on timeline {on_primary}: its WAL would cross a timeline switch; take it again once "
                           "the standby has a restartpoint on the primary's timeline")
    ended_on = standby.recovery_timeline()
    if ended_on is not None and ended_on != timeline:
        raise PitrkitError(f"the standby moved from timeline {timeline} to {ended_on} during the backup (its "
                           "upstream was promoted?): take it again from the new timeline's primary")
    size = primary.facts.wal_segment_size
    last = SegmentName.containing(timeline, Lsn(stop.stop_lsn - 1), size)
    if SegmentName.containing(timeline, primary.session.current_wal_lsn(), size).segno <= last.segno:
        switched = primary.session.switch_wal()
        log.info("the primary switched WAL segments at %s, completing %s", switched, last.name)
    return last

"""Where `wal-receive` resumes streaming when the server it reaches is on a later timeline
than the WAL in its spool: a standby was promoted, and `[postgres] conninfo`'s hosts led
the sidecar to it.

pg_receivewal resumes from the newest WAL file in its directory, on that file's timeline,
and asks the server for that timeline from the start of that file's segment. After a
failover that is wrong whenever the sidecar holds WAL of the old timeline past the point
where the new timeline forked from it (the new timeline's history says where): a sidecar
synchronous to the old primary is ahead of an asynchronous standby, and once that WAL
reaches into a later segment than the fork's, the new primary refuses the request
("requested starting point ... is not in this server's history"), for ever.

So before pg_receivewal starts against such a server, the sidecar ships every file of the
older timeline in its spool (its partial is that timeline's `.partial` in the archive:
the old primary's WAL past the fork lives nowhere else) and removes them, then leaves an
empty `<next timeline><segment of the fork>.partial`: pg_receivewal starts there, on the
timeline that follows, from the start of the fork's segment, as it does itself when it
streams across a timeline switch. The new timeline's first segment holds the old
timeline's WAL up to the fork, so the archive gets the whole new timeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pitrkit.errors import PitrkitError, UsageError
from pitrkit.postgres.wal import Lsn, SegmentName, WalFileKind, WalFileName, parse_history


class Switch(NamedTuple):
    """The spool's WAL is on `old_timeline`, which the server's history ends at `fork`."""

    old_timeline: int
    fork: Lsn
    next_timeline: int
    # Where pg_receivewal must start: the fork's segment on the next timeline.
    start: SegmentName


def newest_wal(names: Iterable[str], segment_size: int) -> SegmentName | None:
    """The WAL file pg_receivewal resumes from (FindStreamingStart): the highest segment,
    then the highest timeline; complete segments and `.partial` files alike."""
    newest: SegmentName | None = None
    for name in names:
        try:
            file = WalFileName.parse(name)
        except UsageError:
            continue  # our state and lock files, pg_receivewal's temporary files
        if file.kind not in (WalFileKind.SEGMENT, WalFileKind.PARTIAL):
            continue
        segment = SegmentName.parse(file.segment, segment_size)
        if newest is None or (segment.segno, segment.timeline) > (newest.segno, newest.timeline):
            newest = segment
    return newest


def plan(names: Iterable[str], server_timeline: int, history: str | None, segment_size: int) -> Switch | None:
    """The switch to make before streaming from a server on `server_timeline` (whose
    history file is `history`), given the spool's file `names`; None when pg_receivewal
    can resume by itself (an empty spool, or WAL on the server's timeline or a later one,
    which pg_receivewal refuses itself)."""
    newest = newest_wal(names, segment_size)
    if newest is None or newest.timeline >= server_timeline:
        return None
    try:
        entries = parse_history(history or "", f"the server's {server_timeline:08X}.history")
    except UsageError as exc:
        raise PitrkitError(str(exc)) from None
    for index, entry in enumerate(entries):
        if entry.parent == newest.timeline:
            following = entries[index + 1].parent if index + 1 < len(entries) else server_timeline
            start = SegmentName.containing(following, entry.switch_lsn, segment_size)
            return Switch(newest.timeline, entry.switch_lsn, following, start)
    raise PitrkitError(f"the server is on timeline {server_timeline}, whose history does not pass through "
                       f"timeline {newest.timeline} of the WAL in the spool: it is not a descendant of the "
                       "server the sidecar streamed from")

"""Work the agent does before PostgreSQL asks for it.

Archiving: when PostgreSQL hands over segment N and more segments are already marked
`.ready` in `pg_wal/archive_status`, the agent starts pushing them at once, so that by
the time the archiver asks for N+1 it is already durable (or nearly so) and the call
returns as soon as it has checked that. This is what makes pgBackRest's asynchronous
archiving fast with a backlog; here it costs nothing in steady state, where there is no
backlog and every call is served as it comes.

Recovery: when the startup process asks for segment N, the next segments of the same
timeline are read, verified and written into a spool file beside the destination (in
pg_wal) in the background, so that the request for N+1 is a rename: replay waits neither
on storage nor on writing 16 MiB. Never past the restore plan's last segment (`wal-fetch
--until`): recovery must not be handed WAL beyond where the plan stops it.

A result computed ahead is used at most once, only while fresh, and only if the file it
was computed from is unchanged; anything else, including a failure, makes the request
do the work itself, exactly as it would without look-ahead; and a failure to schedule
work ahead is the agent's to log, never part of the answer to the request it follows
(wal/agent.py). So look-ahead can make a call faster but never changes its answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pitrkit.errors import UsageError
from pitrkit.postgres.wal import SegmentName, WalFileKind, WalFileName

log = logging.getLogger(__name__)

# A result older than this is not trusted: it may predate a change made since (a
# deleted object, an operator's fix).
FRESH_FOR = 60.0
# Segments fetched ahead wait in spool files until asked for; never more than this in all.
FETCH_AHEAD_BYTES = 256 << 20


class Ahead:
    """Background jobs keyed by what they are for, each result taken at most once."""

    def __init__(self, workers: int, name: str, discard: Callable[[Any], None] | None = None) -> None:
        """`discard` is called with the result of a job that is dropped untaken (stale,
        or still there at close), e.g. to remove a file the job wrote."""
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._jobs: dict[object, tuple[float, object, Future]] = {}
        self._lock = threading.Lock()
        self._discard = discard

    def schedule(self, key: object, stamp: object, job: Callable[[], object]) -> None:
        with self._lock:
            now = time.monotonic()
            for old in [k for k, (born, _, _) in self._jobs.items() if now - born > FRESH_FOR]:
                self._drop(self._jobs.pop(old)[2])
            if key not in self._jobs:
                self._jobs[key] = (now, stamp, self._pool.submit(job))

    def take(self, key: object, stamp: object) -> Future | None:
        """The job for `key` if it is fresh and was made from the same `stamp`."""
        with self._lock:
            entry = self._jobs.pop(key, None)
        if entry is None:
            return None
        born, made_from, future = entry
        if time.monotonic() - born > FRESH_FOR or made_from != stamp:
            self._drop(future)
            return None
        return future

    def _drop(self, future: Future) -> None:
        if future.cancel() or self._discard is None:
            return  # never ran: nothing to clean up
        discard = self._discard

        def clean_up(done: Future) -> None:
            if not done.cancelled() and done.exception() is None:
                discard(done.result())

        future.add_done_callback(clean_up)  # runs at once if the job is already done

    def pending(self) -> int:
        with self._lock:
            return sum(not future.done() for _, _, future in self._jobs.values())

    def close(self, wait: bool) -> None:
        """Cancel what has not started; with `wait`, let running jobs finish (a push
        half-way through a put leaves a temporary file behind if the process exits).
        Results never taken are discarded."""
        with self._lock:
            untaken = [future for _, _, future in self._jobs.values()]
            self._jobs.clear()
        for future in untaken:
            self._drop(future)
        self._pool.shutdown(wait=wait, cancel_futures=True)


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """Identity of a file's current content, as far as stat can tell."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_dev, status.st_size, status.st_mtime_ns)


def ready_after(path: Path, limit: int) -> list[Path]:
    """Up to `limit` WAL segments after `path` that PostgreSQL has marked ready to archive
    (`pg_wal/archive_status/<name>.ready`), in the order it will ask for them."""
    try:
        marks = os.listdir(path.parent / "archive_status")
    except OSError:
        return []
    names = []
    for mark in marks:
        name = mark.removesuffix(".ready")
        if name == mark or name <= path.name:
            continue
        try:
            if WalFileName.parse(name).kind == WalFileKind.SEGMENT:
                names.append(name)
        except UsageError:
            continue
    return [path.parent / name for name in sorted(names)[:limit]]


def segments_after(name: str, segment_size: int, limit: int, until: str | None = None) -> list[str]:
    """The next `limit` segment names on the same timeline, bounded by FETCH_AHEAD_BYTES,
    and by `until` (the restore plan's last segment, wal/fetch.py's refuse_past)."""
    try:
        file = WalFileName.parse(name)
    except UsageError:
        return []
    if file.kind != WalFileKind.SEGMENT:
        return []
    segment = SegmentName.parse(file.segment, segment_size)
    names = []
    for _ in range(min(limit, max(1, FETCH_AHEAD_BYTES // segment_size))):
        segment = segment.next()
        if until is not None and segment.name[8:24] > until[8:24]:
            break
        names.append(segment.name)
    return names

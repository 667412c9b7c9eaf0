"""`pitrkit wal-fetch NAME DEST`: PostgreSQL's restore_command.

The exit code is the contract with the startup process. 0: DEST holds the verified file.
1: the archive answered that it does not have NAME, which PostgreSQL takes as "end of
archived WAL". Anything else must not look like that, or a fault (storage down, a
corrupt object, a broken configuration) would end recovery early and promote the server
at the wrong point; so every other failure exits 126, which makes PostgreSQL abort
recovery instead (it treats exit codes above 125 as fatal). An archive without its
`archive.json` is such a fault: "not found" from it means nothing.

A segment that is not archived yet may still be in the archive as `<segment>.partial`:
the open segment a streaming receiver (`pitrkit wal-receive`) ships every few seconds.
When it is the newest WAL of its timeline, its content is served under the segment's
name: PostgreSQL replays it to where its WAL ends, asks for the next segment, is told
there is none, and ends recovery there, with every transaction the partial holds. A
partial with later WAL after it is a leftover, and a full segment always wins.

A restore to a target the plan places writes `wal-fetch %f %p --until SEGMENT`: nothing
past the plan's last segment is served (refuse_past), nor read ahead. A restore of a
backup of a later era than the first (after `pitrkit upgrade`) writes `--era N`: the
WAL comes from that era's namespace (storage/archive.py `Archive.era`), since eras
share segment names.

With several repositories (`read_from_first`), the file comes from the first that has
it (storage/repositories.py): exit 1 only when every one answered "not found", 126 when
any could not answer and none had it. A segment is looked for in all of them before a
partial may stand in for it, so that a lagging repository's partial never ends recovery
while another holds the full segment; the partial, and the check that it is the newest
WAL of its timeline, then come wholly from one repository.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pitrkit.errors import NotInArchive, PitrkitError, UsageError
from pitrkit.postgres.wal import (
    InvalidSegment,
    SegmentName,
    WalFileKind,
    WalFileName,
    read_page_header,
    segments_per_log,
)
from pitrkit.storage.archive import Archive, wal_folder
from pitrkit.storage.repositories import Repository, first_answer

log = logging.getLogger(__name__)

# Segments fetched ahead (by the agent, see wal/lookahead.py) wait under this prefix in the
# directory of the request's destination: on the same file system, so that serving one
# is a rename. PostgreSQL ignores files in pg_wal whose names are not WAL file names.
SPOOL_PREFIX = ".pitrkit-ahead."


class Fetched(NamedTuple):
    """What a request for a WAL file is answered with."""

    data: bytes
    # The stored object the data came from when it is not the one named: the segment's
    # newest partial.
    partial: str | None = None


def fetch(archive: Archive, name: str, destination: Path, until: str | None = None) -> str:
    """Restore the archived WAL file `name` to `destination`; returns a summary. `until`:
    see refuse_past."""
    refuse_past(name, until)
    return restore(read_for_recovery(archive, name), name, destination)


def fetch_from_first(repositories: Sequence[Repository], name: str, destination: Path, until: str | None = None,
                     era: int = 1) -> str:
    """`fetch` from the first repository that has `name` (module docstring), in era `era`."""
    refuse_past(name, until)
    return restore(read_from_first(repositories, name, era), name, destination)


def read_from_first(repositories: Sequence[Repository], name: str, era: int = 1) -> Fetched:
    """`read_for_recovery` over several repositories (module docstring)."""
    if len(repositories) == 1:
        return read_for_recovery(repositories[0].archive.era(era), name)
    try:
        return Fetched(read_exact_from_first(repositories, name, era))
    except NotInArchive:
        # Every repository answered "not found" for the file itself: a partial may stand in.
        if WalFileName.parse(name).kind != WalFileKind.SEGMENT:
            raise
    return first_answer(repositories, lambda archive: read_for_recovery(archive.era(era), name))


def read_exact_from_first(repositories: Sequence[Repository], name: str, era: int = 1) -> bytes:
    """The archived file `name` itself, from the first repository that has it."""
    return first_answer(repositories, lambda archive: _read_exact(archive.era(era), name))


def _read_exact(archive: Archive, name: str) -> bytes:
    try:
        return archive.read_wal(name)
    except NotInArchive:
        archive.identity(fresh=True)  # an archive that is not there cannot say "not found"
        raise


def refuse_past(name: str, until: str | None) -> None:
    """Answer a segment later than `until`, the restore plan's last segment, as not
    archived (exit 1): recovery ends there, at the plan's end, and where the plan was
    wrong PostgreSQL stops with "recovery ended before configured recovery target was
    reached" rather than promote. History files are served."""
    if until is None:
        return
    bound = WalFileName.parse(until)  # UsageError for anything else: a fault, exit 126
    if bound.kind != WalFileKind.SEGMENT:
        raise UsageError(f"--until {until!r} is not a WAL segment name")
    file = WalFileName.parse(name)
    # [8:24]: the log and segment numbers, fixed-width hex, so they sort as they number;
    # the timeline does not matter, recovery along the plan's path needs none later.
    if file.kind == WalFileKind.SEGMENT and file.name[8:24] > bound.name[8:24]:
        raise NotInArchive(f"{name} is past the restore plan's last segment {until}: not served, recovery ends there")


def read_for_recovery(archive: Archive, name: str) -> Fetched:
    """What recovery gets when it asks for `name`: the archived file, else, for a
    segment, its partial if that is the newest WAL of its timeline. Only the request
    itself may decide that: a partial read ahead could be overtaken by its full segment
    before PostgreSQL asks, and would then end recovery early."""
    try:
        try:
            return Fetched(archive.read_wal(name))
        except NotInArchive:
            file = WalFileName.parse(name)
            if file.kind != WalFileKind.SEGMENT:
                raise
            return _read_newest_partial(archive, file)
    except NotInArchive:
        # "Not archived" ends recovery, so only an archive that is there may say it: an
        # unmounted file system or an empty bucket prefix answers "not found" for every
        # name. Read afresh, never a copy cached before the storage went away.
        archive.identity(fresh=True)  # ArchiveMissing: a fault, exit 126
        raise


def restore(fetched: Fetched, name: str, destination: Path) -> str:
    _write_atomically(destination, fetched.data)
    if fetched.partial is not None:
        return (f"restored {name} from {fetched.partial}, the newest WAL of its timeline: "
                f"{len(fetched.data)} bytes; recovery ends within it")
    return f"restored {name}: {len(fetched.data)} bytes"


def spool(repositories: Sequence[Repository], name: str, directory: Path, era: int = 1) -> Path:
    """Fetch `name` of era `era` before it is asked for into a spool file in `directory`,
    from the first repository that has it. Only the object itself, never a partial
    standing in for it (see read_for_recovery)."""
    # A later era's named apart: two eras hold segments of one name.
    path = directory / f"{SPOOL_PREFIX}{name}" if era == 1 else directory / f"{SPOOL_PREFIX}era{era}.{name}"
    data = repositories[0].archive.era(era).read_wal(name) if len(repositories) == 1 else read_exact_from_first(
        repositories, name, era)
    _write_atomically(path, data)
    return path


def restore_spooled(spooled: Path, name: str, destination: Path) -> str | None:
    """Move a spooled file to `destination`; None if the spool file is gone."""
    try:
        os.replace(spooled, destination)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PitrkitError(f"cannot move {spooled} to {destination}: {exc.strerror}") from None
    return f"restored {name}: fetched ahead"


def remove_spooled(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot remove spool file %s: %s", path, exc)


def remove_stale_spool(directory: Path) -> None:
    """Remove spool files an earlier agent left behind (it was killed, say)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(SPOOL_PREFIX):
            remove_spooled(directory / name)


def _read_newest_partial(archive: Archive, file: WalFileName) -> Fetched:
    """`<segment>.partial`, padded to a whole segment, if no later WAL of the timeline is
    stored; else NotInArchive. Costs one listing of the segment's folder, and of the next
    folder for the last segment of a 4 GiB log (stored names sort in WAL order)."""
    partial = WalFileName.parse(f"{file.name}.partial")
    stored = {info.key.rpartition("/")[2] for info in archive.list_folder(wal_folder(file.name)).objects}
    if file.name in stored:
        return Fetched(archive.read_wal(file.name))  # archived since we asked: the full segment wins
    absent = f"{file.name} is not in the archive {archive.storage.url}"
    if partial.name not in stored:
        raise NotInArchive(absent)
    not_newest = NotInArchive(f"{absent}; its {partial.name} is, but later WAL of timeline {file.timeline} "
                              "is stored too, so it is not where the timeline ends")
    # [:24]: the segment part of segment, `.partial` and `.backup` names alike.
    if any(name[:24] > file.name for name in stored):
        raise not_newest
    try:
        data = archive.read_wal(partial.name)
    except NotInArchive:
        # Deleted since the listing: the receiver stores the full segment first, then
        # removes the partial.
        return Fetched(archive.read_wal(file.name))
    try:
        header = read_page_header(data)
        following = SegmentName.parse(file.segment, header.segment_size).next()
    except (InvalidSegment, PitrkitError) as exc:
        raise PitrkitError(f"{partial.name} in the archive is not a WAL segment: {exc}") from None
    if len(data) > header.segment_size:
        raise PitrkitError(f"{partial.name} in the archive is longer than a segment "
                           f"({len(data)} bytes; its header says {header.segment_size})")
    if following.segno % segments_per_log(header.segment_size) == 0:
        if archive.list_folder(wal_folder(following.name)).objects:
            raise not_newest
    # PostgreSQL refuses a restored segment of the wrong size. Zeros past the end of the
    # WAL are what pg_receivewal pads with, and replay reads them as the end.
    return Fetched(data.ljust(header.segment_size, b"\0"), partial.name)


def _write_atomically(destination: Path, data: bytes) -> None:
    """Write beside the destination, then rename: PostgreSQL must never see a partial
    file under the name it asked for. No fsync: a restored file that a crash loses is
    simply fetched again when recovery restarts."""
    # Unique per process and thread: two fetches of one file (a retry racing a slow
    # first attempt) must not write into the same temporary file.
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.{threading.get_ident()}.pitrkit.tmp")
    try:
        with open(temporary, "wb") as target:
            target.write(data)
        os.replace(temporary, destination)
    except OSError as exc:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise PitrkitError(f"cannot write {destination}: {exc.strerror}") from None

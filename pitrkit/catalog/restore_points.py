"""The named restore points the archive knows: `catalog/restore-points.json`
(documents.RestorePointCatalog), read by the planner (restore/plan.py, for
`--name`) and added to by `pitrkit restore-point` (backup/restore_point.py).

Recovery stops at the FIRST restore point of a name it meets, so a name is recorded
once: `record` refuses a name already there, under the catalog lock (catalog/lock.py),
and makes the point on the server only after that check, so that a refused name never
reaches the WAL. A point made with pg_create_restore_point() outside pitrkit is not in
the catalog; `--name` then plans like `--to` (to the end of the unbroken WAL).

The document is not a cache that `catalog rebuild` can recreate from the objects: the
WAL holds the points' records (XLOG_RESTORE_POINT), but pitrkit does not read WAL records
yet, so a rebuild keeps the document as it is (`rebuild_line`). Reading them from the
WAL plugs in there. Retention leaves it alone: a point whose WAL or backups are gone
stays recorded (its name is still taken in the WAL that remains) and the planner refuses
it naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable

from pitrkit.catalog import documents, lock
from pitrkit.catalog.documents import RestorePoint, RestorePointCatalog, shown
from pitrkit.errors import PitrkitError, RefusedError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.progress import human_count
from pitrkit.storage.archive import Archive

RESTORE_POINTS_KEY = "catalog/restore-points.json"


def check_name(name: str, option: str = "--name") -> str:
    """A restore point name PostgreSQL accepts, 1 to 63 bytes, printable (it is written
    into postgresql.auto.conf, and shown in messages); UsageError otherwise."""
    size = len(name.encode())
    if not name:
        raise UsageError(f"{option}: a restore point name cannot be empty")
    if size > documents.MAX_RESTORE_POINT_NAME:
        raise UsageError(f"{option}: {name[:20]!r}... is {size} bytes; a restore point name has at most "
                         f"{documents.MAX_RESTORE_POINT_NAME} (PostgreSQL's MAXFNAMELEN - 1)")
    if not name.isprintable():
        raise UsageError(f"{option}: {name!r} holds characters that do not print; a restore point name must not")
    return name


class NameTaken(RefusedError):
    """The archive already records a restore point of this name."""


class UnreadablePoints(RefusedError):
    """`catalog/restore-points.json` is stored but does not decode."""


def restore_points(archive: Archive) -> list[RestorePoint]:
    """The recorded points, oldest first; [] when none was ever made. A document that
    does not authenticate or decode is refused (raised), never read as "no points":
    a name planned like a time would restore past the point."""
    try:
        return archive.get_document(RESTORE_POINTS_KEY, RestorePointCatalog).points
    except ObjectNotFound:
        return []
    except ValueError as exc:
        raise UnreadablePoints(f"{exc}; the restore points cannot be read (the WAL still holds them: restore "
                               "with --to or --lsn instead of --name)") from None


def find(archive: Archive, name: str) -> RestorePoint | None:
    """The recorded point named `name`, None when the catalog has none."""
    return next((point for point in restore_points(archive) if point.name == name), None)


def record(archive: Archive, name: str, make: Callable[[], RestorePoint]) -> RestorePoint:
    """Under the catalog lock: refuse `name` when recorded, else `make` the point (on the
    server) and record it. `LockHeld` when another writer holds the lock, before
    anything is made."""
    with lock.take(archive, "restore-point") as held:
        known = restore_points(archive)
        for point in known:
            if point.name == name:
                raise NameTaken(f"a restore point named {shown(name)!r} already exists (LSN {point.lsn}, "
                                f"{point.created_at.isoformat(sep=' ', timespec='seconds')}, timeline "
                                f"{point.timeline}): recovery stops at the first point of a name; choose another")
        point = make()
        try:
            held.check()  # still ours: a rewrite after losing the lock could drop a successor's point
            archive.put_document(RESTORE_POINTS_KEY, RestorePointCatalog(points=[*known, point]), overwrite=True)
        except PitrkitError as exc:
            # The server made it: making it again would add a second point that recovery never stops at.
            raise PitrkitError(f"restore point {shown(name)!r} was made at LSN {point.lsn} (segment {point.segment}) "
                               f"but not recorded in the archive: {exc}; do not make it again (recovery stops at "
                               f"this first point of the name): restore to it with --lsn {point.lsn}") from None
        return point


def rebuild_line(archive: Archive) -> str | None:
    """What `catalog rebuild` says of the restore points: kept as they are (they are
    not rebuilt from the WAL yet), or why the document could not be read; None when
    none was ever recorded."""
    try:
        points = restore_points(archive)
    except RefusedError as exc:
        return f"kept {RESTORE_POINTS_KEY} as it is, though it cannot be read ({exc})"
    if not points:
        return None
    return (f"kept {RESTORE_POINTS_KEY}: {human_count(len(points), 'restore point')} (not rebuilt: pitrkit does "
            "not read restore point records from the WAL yet)")

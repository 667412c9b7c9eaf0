"""`pitrkit restore-point NAME`: a named restore point, made on the server in `[postgres]`
with pg_create_restore_point() and recorded in the archive's catalog
(catalog/restore_points.py), so that `restore --name NAME` is planned exactly, like an
LSN, from the point's LSN, timeline and segment.

The name is checked against the catalog under its lock before the server is asked:
recovery stops at the first point of a name, so a second point of the same name would be
unreachable, and the refused name never reaches the WAL. A point of that name made by
hand (pg_create_restore_point()) is refused too where the time index holds it; WAL not
indexed yet is not read, so one made there is not seen. The server must be the
archive's own (its system identifier), a primary (the server refuses during recovery),
with wal_level replica or logical. The point is restorable once the segment its record
ends in is archived; the command says which segment that is.

With several repositories the point is made through the first required one and then
recorded in each other one (a name recorded in any of them is refused before the
server is asked); a required repository that cannot record it fails the command,
naming the point's LSN so that it is not made again, and `repo sync` records it there
later, as it does in an optional one that was missed.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from pitrkit.catalog import restore_points
from pitrkit.catalog.archived_wal import ArchivedWal
from pitrkit.catalog.documents import RestorePoint, shown
from pitrkit.catalog.time_index import indexed_restore_point
from pitrkit.config import Config
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.postgres.server import ServerSession
from pitrkit.postgres.wal import Lsn
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import Repository, open_all, to_every


def create(archive: Archive, config: Config, name: str) -> RestorePoint:
    """Make the restore point `name` on the configured server and record it; refused
    (nothing made) when the name is recorded, the catalog is locked, or the server is
    not the archive's primary."""
    name = restore_points.check_name(name, "restore-point")
    identity = archive.identity()  # no archive.json: no archive to record in
    # Recorded in the era of the cluster that runs now, whose WAL holds the point.
    archive = archive.era(identity.current_era.era)
    era = archive.era_record
    # A recorded name is refused below, under the lock, as such; the index holds it too.
    indexed = None if restore_points.find(archive, name) else indexed_restore_point(archive, ArchivedWal(archive), name)
    if indexed is not None:
        segment, point = indexed
        raise RefusedError(f"the time index holds a restore point {shown(name)!r} already (made by hand with "
                           f"pg_create_restore_point(), ending at LSN {Lsn(point.end_lsn)} in segment {segment}): "
                           "recovery stops at the first point of a name, so a second would be unreachable; "
                           "choose another name")
    with ServerSession(config.postgres.conninfo) as server:
        facts = server.facts()
        if facts.system_identifier != era.system_identifier:
            raise RefusedError(f"the archive {archive.storage.url} belongs to the cluster with system identifier "
                               f"{era.system_identifier}, not to this server ({facts.system_identifier})")
        if facts.in_recovery:
            raise RefusedError("the server in [postgres] conninfo is in recovery (a standby): restore points are "
                               "made on the primary")

        def make() -> RestorePoint:
            lsn, segment, made_at = server.create_restore_point(name)
            return RestorePoint(name=name, lsn=lsn, timeline=int(segment[:8], 16), segment=segment,
                                created_at=made_at, system_identifier=facts.system_identifier)

        return restore_points.record(archive, name, make)


def record_elsewhere(others: list[Repository], point: RestorePoint) -> None:
    """Record the point, made already, in each of `others` (module docstring)."""
    try:
        to_every(others, lambda archive: restore_points.record(archive.era_of(point.system_identifier), point.name,
                                                               lambda: point))
    except PitrkitError as exc:
        exc.args = (f"restore point {shown(point.name)!r} was made at LSN {point.lsn} and recorded in the first "
                    f"repository, but not in every required one: {exc}; do not make it again: `pitrkit repo sync` "
                    "records it there",)
        raise


def command(args: Namespace, config: Config, config_path: Path) -> str:
    repositories = open_all(config)
    first = next(each for each in repositories if each.required)
    others = [each for each in repositories if each is not first]
    for each in others:
        if restore_points.find(each.archive, restore_points.check_name(args.name, "restore-point")) is not None:
            raise restore_points.NameTaken(f"repository {each.name!r} already records a restore point named "
                                           f"{shown(args.name)!r}: recovery stops at the first point of a name; "
                                           "choose another")
    point = create(first.archive, config.for_repository(first.settings), args.name)
    if others:
        record_elsewhere(others, point)
    print(f"restore point {shown(point.name)!r} at LSN {point.lsn} on timeline {point.timeline}, "
          f"{point.created_at.isoformat(sep=' ', timespec='seconds')}: restorable with "
          f"restore --name once segment {point.segment} is archived")
    return f"restore point {shown(point.name)!r} recorded at LSN {point.lsn} (segment {point.segment})"

"""`pitrkit upgrade`: record the cluster a `pg_upgrade` made as the archive's next era
(pgBackRest's stanza-upgrade), in every repository.

pg_upgrade gives the new cluster a new system identifier and keeps timeline 1 and the
segment numbering, so without this step `wal-push` refuses the new cluster's WAL (not
this archive's cluster) and, were it taken, its names could meet the old cluster's. An
era (storage/identity.py `Era`) records the new cluster's system identifier and major;
its WAL, backups and catalog then live under `eras/<n>/` (storage/archive.py), while
every earlier era stays listed, planned, restorable and kept by retention.

The facts come from the new cluster as `pitrkit init` reads them ([postgres] conninfo,
else pg_controldata on [postgres] pgdata with [postgres] bindir: the new major's). It
refuses a cluster that cannot be reached, an older major than the newest era's, another
WAL segment size (pg_upgrade cannot change it), and a cluster that is an earlier era's.
The newest era's own cluster is nothing to do: it says so and exits 0, so that running
it again (after a repository that was down, say) is safe. Every repository is checked
before any is written; a required one that fails fails the command, an optional one is
reported and can be upgraded later by running the command again.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from pitrkit.config import Config
from pitrkit.errors import RefusedError
from pitrkit.ops.init import ClusterFacts, cluster_facts
from pitrkit.storage.archive import Archive
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.repositories import open_all, to_every


def check(identity: ArchiveIdentity, facts: ClusterFacts, url: str) -> str | None:
    """Why the cluster cannot be recorded as the archive's next era (a `RefusedError`),
    or None when it is a new era to record; "nothing to do" when the newest era already
    is this cluster."""
    current = identity.current_era
    if facts.system_identifier == current.system_identifier:
        return (f"the archive {url} already records this cluster (system identifier {facts.system_identifier}, "
                f"PostgreSQL {current.pg_version}) as its newest era, {current.era}; nothing to do")
    earlier = identity.era_of(facts.system_identifier)
    if earlier is not None:
        raise RefusedError(f"the cluster with system identifier {facts.system_identifier} (read from "
                           f"{facts.source}) is era {earlier.era} of the archive {url}, not its newest "
                           f"({current.era}, system identifier {current.system_identifier}): an archive's eras "
                           "only go forward")
    if facts.major < current.pg_version:
        raise RefusedError(f"the cluster read from {facts.source} is PostgreSQL {facts.major}, older than the "
                           f"archive {url}'s newest era ({current.era}, PostgreSQL {current.pg_version}): "
                           "pg_upgrade only goes to a newer major")
    if facts.wal_segment_size != identity.wal_segment_size:
        raise RefusedError(f"the cluster read from {facts.source} writes {facts.wal_segment_size}-byte WAL "
                           f"segments, the archive {url} holds {identity.wal_segment_size}-byte ones")
    return None


def upgrade(archive: Archive, facts: ClusterFacts) -> str:
    """Record the cluster as `archive`'s next era, unless it already is the newest."""
    url = archive.storage.url
    nothing = check(archive.identity(fresh=True), facts, url)
    if nothing is not None:
        return nothing
    era = archive.record_era(facts.system_identifier, facts.major)
    return (f"recorded era {era.era} in the archive {url}: the cluster with system identifier "
            f"{facts.system_identifier}, PostgreSQL {facts.major} (read from {facts.source}); its WAL and backups "
            f"go under eras/{era.era}/. Take a full backup now: the backups of earlier eras restore only their "
            "own clusters")


def command(args: Namespace, config: Config, config_path: Path) -> str:
    facts = cluster_facts(config)
    repositories = open_all(config)
    # Every repository that answers is checked before any is written (as init does):
    # one that refuses refuses the command without changing the others.
    checked = to_every(repositories, lambda archive: check(archive.identity(fresh=True), facts,
                                                           archive.storage.url))
    written = to_every([each for each in repositories if each.name in checked.results],
                       lambda archive: upgrade(archive, facts))
    lines = [written.results[each.name] if len(repositories) == 1 else
             f"repository {each.name!r}: {written.results[each.name]}"
             for each in repositories if each.name in written.results]
    for repository, fault in checked.missed + written.missed:
        lines.append(f"repository {repository.name!r} (optional) was not upgraded: {fault}; run `pitrkit upgrade` "
                     "again once it answers")
    for line in lines:
        print(line)
    return "; ".join(lines)

"""`pitrkit init`: create the archive, `archive.json`, for the configured repository and
cluster (pgBackRest's stanza-create).

Creating an archive is an explicit step because the alternative, creating it on the
first write, cannot tell an empty archive from one that is not there: an unmounted file
system or a mistyped bucket prefix would silently become a new archive and take WAL no
restore will ever look for. So only `init` writes `archive.json`, and every other command
treats its absence as a fault (see storage/archive.py).

The cluster's facts (system identifier, WAL segment size, major version) come from the
server over `[postgres] conninfo` or, when it is not set or the server does not answer,
from `pg_controldata` on `[postgres] pgdata` (which works while the server is stopped).
Running `init` again for the same cluster changes nothing and exits 0; an archive of
another cluster, or an `archive.json` that does not decode, is refused.

With several `[[repository]]` entries, each gets its own `archive.json` for the same
cluster, encrypted or not as its own [encryption] says; one already initialised is left
alone and said so. Every repository is checked before any is created, so a repository
of another cluster refuses the command without creating the others.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from argparse import Namespace
from pathlib import Path
from typing import NamedTuple

from pitrkit.config import Config
from pitrkit.errors import ConfigError, PitrkitError, RefusedError
from pitrkit.storage.archive import Archive, ArchiveMissing
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.repositories import open_all

log = logging.getLogger(__name__)

_CONTROLDATA_TIMEOUT = 60.0


class ClusterFacts(NamedTuple):
    system_identifier: int
    wal_segment_size: int
    major: int
    source: str  # where they were read, for the output


def cluster_facts(config: Config) -> ClusterFacts:
    """The facts from the server, else from pg_controldata (see the module docstring)."""
    postgres = config.postgres
    if postgres.conninfo or not postgres.pgdata:
        # Only when the server is asked: postgres/server.py imports psycopg, which a
        # stopped cluster's facts do not need.
        from pitrkit.postgres.server import ServerError, ServerSession

        try:
            with ServerSession(postgres.conninfo) as server:
                facts = server.facts()
        except ServerError as exc:
            if not postgres.pgdata:
                raise
            log.info("%s; reading pg_controldata instead", exc)
            reached = f"pg_controldata on {postgres.pgdata} (the server did not answer)"
        else:
            return ClusterFacts(facts.system_identifier, facts.wal_segment_size, facts.major,
                                "the server [postgres] conninfo reaches")
    else:
        reached = f"pg_controldata on {postgres.pgdata}"
    return _controldata(Path(postgres.pgdata), postgres.bindir, reached)


def _controldata(pgdata: Path, bindir: str | None, source: str) -> ClusterFacts:
    tool = _pg_controldata(bindir)
    try:
        done = subprocess.run([tool, "-D", str(pgdata)], capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C"}, timeout=_CONTROLDATA_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PitrkitError(f"cannot run {tool}: {exc}") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or f"exit {done.returncode}"
        raise PitrkitError(f"{tool} -D {pgdata} failed: {said}")
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    try:
        system_identifier = int(fields["Database system identifier"])
        segment_size = int(fields["Bytes per WAL segment"])
    except (KeyError, ValueError):
        raise PitrkitError(f"{tool} -D {pgdata} printed no system identifier and WAL segment size") from None
    try:
        # The major version is the data directory's, not the tool's.
        major = int((pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError) as exc:
        raise PitrkitError(f"cannot read the major version from {pgdata / 'PG_VERSION'}: {exc}") from None
    return ClusterFacts(system_identifier, segment_size, major, source)


def _pg_controldata(bindir: str | None) -> str:
    if bindir:
        path = Path(bindir) / "pg_controldata"
        if not os.access(path, os.X_OK):
            raise ConfigError(f"[postgres] bindir {bindir} has no executable pg_controldata")
        return str(path)
    found = shutil.which("pg_controldata")
    if found is None:
        raise ConfigError("[postgres] bindir is not set and pg_controldata is not on PATH: set bindir, or "
                          "[postgres] conninfo to read the facts from the running server")
    return found


def initialise(archive: Archive, facts: ClusterFacts) -> str:
    """Create the archive for the cluster, or check that it already is this cluster's;
    returns what was done."""
    url = archive.storage.url
    try:
        existing: ArchiveIdentity | None = archive.identity(fresh=True)
    except ArchiveMissing:
        existing = None
    if existing is None:
        created = archive.create(facts.system_identifier, facts.wal_segment_size, facts.major)
        if created is not None:
            encrypted = (f", encrypted ({created.encryption.mode} mode, key {created.encryption.current_key_id})"
                         if created.encryption else "")
            return (f"created the archive {url} (archive.json) for the cluster with system identifier "
                    f"{facts.system_identifier}: PostgreSQL {facts.major}, {facts.wal_segment_size >> 20} MiB WAL "
                    f"segments{encrypted}; read from {facts.source}")
        existing = archive.identity(fresh=True)  # another init got there first
    _check_same_cluster(existing, facts, url, archive.config.encryption.mode)
    era = existing.era_of(facts.system_identifier)
    assert era is not None  # _check_same_cluster
    which = "" if len(existing.all_eras) == 1 else f", its era {era.era}"
    return (f"the archive {url} is already initialised for this cluster (system identifier "
            f"{facts.system_identifier}{which}, created {existing.created_at:%Y-%m-%d %H:%M:%S}Z); nothing changed")


def _check_same_cluster(identity: ArchiveIdentity, facts: ClusterFacts, url: str, encryption: str) -> None:
    # Any of its eras' clusters (`pitrkit upgrade`) is the archive's.
    if identity.era_of(facts.system_identifier) is None:
        upgraded = "; after a pg_upgrade, `pitrkit upgrade` records the new cluster" if \
            facts.major > identity.current_era.pg_version else ""
        raise RefusedError(f"the archive {url} belongs to the cluster with system identifier "
                           f"{identity.current_era.system_identifier}, not to this one ({facts.system_identifier}, "
                           f"read from {facts.source}): use another repository.url for this cluster{upgraded}")
    if identity.wal_segment_size != facts.wal_segment_size:
        raise RefusedError(f"the archive {url} holds {identity.wal_segment_size}-byte WAL segments, this cluster "
                           f"writes {facts.wal_segment_size}-byte ones (read from {facts.source})")
    if identity.encryption is None and encryption != "off":
        raise RefusedError(f"the archive {url} was created without encryption, but [encryption] is on: "
                           "encryption can only be chosen for a new archive (a new repository.url)")
    if identity.encryption is not None and encryption == "off":
        raise RefusedError(f"the archive {url} is encrypted ({identity.encryption.mode} mode), but "
                           "[encryption] is off")


def initialise_all(archives: list[Archive], facts: ClusterFacts) -> list[str]:
    """`initialise` each repository, once every existing one is checked to be this
    cluster's (refusing before anything is created); what was done, per repository."""
    for archive in archives:
        try:
            existing = archive.identity(fresh=True)
        except ArchiveMissing:
            continue
        _check_same_cluster(existing, facts, archive.storage.url, archive.config.encryption.mode)
    said = [initialise(archive, facts) for archive in archives]
    if len(archives) == 1:
        return said
    return [f"repository {archive.name!r}: {line}" for archive, line in zip(archives, said, strict=True)]


def command(args: Namespace, config: Config, config_path: Path) -> str:
    done = initialise_all([repository.archive for repository in open_all(config)], cluster_facts(config))
    for line in done:
        print(line)
    return "; ".join(done)

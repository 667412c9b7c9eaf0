"""`pitrkit init` on real PostgreSQL 15 and 18, as the server user: the facts from
pg_controldata while the cluster is stopped, from the server once it runs, the same
archive.json either way; again is a no-op, another cluster or an unreadable archive.json
is refused in one line."""

from __future__ import annotations

import pytest

from pitrkit.storage import codec
from pitrkit.storage.archive import IDENTITY_KEY
from pitrkit.storage.identity import ArchiveIdentity

import pgharness

pytestmark = pytest.mark.integration


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pitrkit: ") and "Traceback" not in stderr, stderr
    return lines[0]


def test_init_creates_the_archive_once_and_refuses_another_cluster(cluster, pitrkit_setup, pg_major):
    primary = cluster(wal_segsize=32)
    said = pitrkit_setup.init(primary)  # stopped: from pg_controldata
    assert said.startswith(f"created the archive {pitrkit_setup.url} (archive.json) for the cluster with system "
                           f"identifier {primary.system_identifier}: PostgreSQL {pg_major}, 32 MiB WAL segments; "
                           f"read from pg_controldata on {primary.pgdata}"), said
    stored = pitrkit_setup.archive / IDENTITY_KEY
    identity = codec.decode(stored.read_bytes(), ArchiveIdentity, IDENTITY_KEY)
    assert (identity.system_identifier, identity.wal_segment_size, identity.pg_versions) == \
        (primary.system_identifier, 32 << 20, [pg_major])
    assert stored.stat().st_uid == pgharness.server_user().uid
    written = stored.read_bytes()

    primary.start()
    again = pitrkit_setup.run("init")  # running: from the server
    assert again.returncode == 0, again.stderr
    assert "is already initialised for this cluster" in again.stdout and again.stderr == ""
    assert stored.read_bytes() == written

    other = cluster()
    pitrkit_setup.write_config(postgres=other)
    refused = pitrkit_setup.run("init")
    assert refused.returncode == 1
    message = one_line(refused.stderr)
    assert str(primary.system_identifier) in message and str(other.system_identifier) in message
    assert stored.read_bytes() == written

    stored.write_bytes(written[: len(written) // 2])  # cut short: not a document
    pitrkit_setup.write_config(postgres=primary)
    unreadable = pitrkit_setup.run("init")
    assert unreadable.returncode == 2
    assert "archive.json" in one_line(unreadable.stderr)
    assert stored.read_bytes() == written[: len(written) // 2]

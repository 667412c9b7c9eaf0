"""Which relation fork and segment a data-directory file is (backup/changes.relation_of),
the way PostgreSQL names them (src/common/relpath.c)."""

from __future__ import annotations

import pytest

from pitrkit.backup.changes import RelationFork, relation_of


@pytest.mark.parametrize(("path", "expected"), [
    ("base/5/16384", (RelationFork(1663, 5, 16384, 0), 0)),
    ("base/5/16384.1", (RelationFork(1663, 5, 16384, 0), 1)),
    ("base/5/16384_fsm", (RelationFork(1663, 5, 16384, 1), 0)),
    ("base/5/16384_vm", (RelationFork(1663, 5, 16384, 2), 0)),
    ("base/5/16384_init", (RelationFork(1663, 5, 16384, 3), 0)),
    ("base/16401/2619.12", (RelationFork(1663, 16401, 2619, 0), 12)),
    ("base/1/1259_vm.3", (RelationFork(1663, 1, 1259, 2), 3)),
    ("global/1262", (RelationFork(1664, 0, 1262, 0), 0)),
    ("global/1262_fsm", (RelationFork(1664, 0, 1262, 1), 0)),
    ("global/2676.1", (RelationFork(1664, 0, 2676, 0), 1)),
    ("pg_tblspc/16385/PG_18_202506291/5/16390", (RelationFork(16385, 5, 16390, 0), 0)),
    ("pg_tblspc/16385/PG_15_202209061/16386/16390_vm.2", (RelationFork(16385, 16386, 16390, 2), 2)),
    ("base/5/4294967295", (RelationFork(1663, 5, 4294967295, 0), 0)),
    ("base/5/16384.32767", (RelationFork(1663, 5, 16384, 0), 32767)),
])
def test_relation_files(path, expected):
    assert relation_of(path) == expected


@pytest.mark.parametrize("path", [
    "base/5/t3_16384",  # a temporary relation
    "base/5/t3_16384_fsm",
    "base/5/t3_16384.1",
    "base/5/pg_internal.init",
    "base/5/PG_VERSION",
    "base/5/pg_filenode.map",
    "global/pg_control",
    "global/pg_filenode.map",
    "global/pg_internal.init",
    "PG_VERSION",
    "postgresql.conf",
    "pg_wal/000000010000000000000001",
    "pg_xact/0000",
    "pg_multixact/offsets/0000",
    "base/5/16384_foo",
    "base/5/16384.",
    "base/5/16384.0",  # segment 0 has no suffix
    "base/5/016384",  # OIDs have no leading zeros
    "base/05/16384",
    "base/5/0",
    "base/5/4294967296",  # past the largest OID
    "base/5/16384.32768",  # a block number past uint32
    "base/5/16384/1",
    "base/5",
    "base/pgsql_tmp/pgsql_tmp123.0",
    "base/5/16384 ",
    "base//16384",
    "global/1262.1.1",
    "pg_tblspc/16385/PG_18_202506291/5/t2_16390",
    "pg_tblspc/16385/PG_18_202506291/pgsql_tmp/x",
    "pg_tblspc/16385/16390",
    "pg_tblspc/16385/PG_18/5/16390",
    "pg_tblspc/16385/PG_18_202506291/5/16390/x",
    "/base/5/16384",
    "./base/5/16384",
    "base/5/١٢٣",  # digits of another script are not an OID
])
def test_everything_else_is_not_a_relation(path):
    assert relation_of(path) is None

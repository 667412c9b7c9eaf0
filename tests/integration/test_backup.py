"""`pitrkit backup-push` against real PostgreSQL 15 and 18, run as the server user through
the installed `pitrkit` exactly as a DBA runs it, with archive_command calling pitrkit.

The backup is judged by what it stored: the manifest's facts against the server's, and
the files reassembled from the stored parts (decoded, then cut by the file records)
against the data directory and against pg_basebackup's copy of the same cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import xxhash

from pitrkit.backup.changes import relation_of
from pitrkit.backup.push import PART_SIZE
from pitrkit.catalog import blockmap
from pitrkit.catalog.documents import BackupCatalog, BackupManifest, BackupTablespace
from pitrkit.postgres.wal import SegmentName
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import BACKUP_CATALOG_KEY
from pitrkit.storage.plugins import Plugins

import pgharness

pytestmark = pytest.mark.integration

# Present in every pg_basebackup copy, never in pitrkit's: pitrkit keeps the label and
# map in the manifest, and pg_basebackup's own manifest is its business.
BASEBACKUP_ONLY = {"backup_label", "backup_manifest", "tablespace_map"}


def archiving_primary(cluster, setup, **settings) -> pgharness.Cluster:
    primary = cluster(archive_mode="on", archive_command=setup.archive_command, **settings)
    primary.env.update(setup.env)
    setup.init(primary)
    return primary.start()


def add_config(setup, text: str) -> None:
    with open(setup.config, "a") as config:  # appending keeps the server user's ownership
        config.write(text)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pitrkit: ") and "Traceback" not in stderr, stderr
    return lines[0]


def manifests(setup) -> list[Path]:
    return sorted((setup.archive / "backups").glob("*/manifest.json"))


def read_manifest(setup, backup_id: str) -> BackupManifest:
    key = f"backups/{backup_id}/manifest.json"
    return codec.decode((setup.archive / key).read_bytes(), BackupManifest, key)


def reassemble(setup, manifest: BackupManifest) -> dict[str, bytes]:
    """Every file's content, read back the way a restore reads it."""
    compressor_for = Plugins().compressor
    stream = bytearray()
    part_starts = []
    for part in manifest.parts:
        data = objects.decode(part.key, (setup.archive / part.key).read_bytes(), compressor_for)
        assert len(data) == part.size <= PART_SIZE
        assert (setup.archive / part.key).stat().st_size == part.stored_size
        part_starts.append(len(stream))
        stream += data
    # Whole parts, but for the short ones at both ends (push.part_length).
    assert all(PART_SIZE // 8 <= part.size <= PART_SIZE for part in manifest.parts[:-1])
    files, position = {}, 0
    for file in manifest.files:
        start = part_starts[file.part] + file.offset if file.size else position
        assert start == position, f"{file.path} does not follow the previous file in the stream"
        files[file.path] = bytes(stream[start : start + file.size])
        position = start + file.size
    assert position == len(stream)
    return files


def tree(root: Path) -> tuple[set[str], set[str]]:
    """(directories, files) under root, relative, following symlinks (tablespaces)."""
    directories, files = set(), set()
    for folder, _subfolders, names in os.walk(root, followlinks=True):
        relative = os.path.relpath(folder, root)
        directories.add("" if relative == "." else relative)
        files.update(os.path.normpath(os.path.join(relative, name)) for name in names)
    return directories, files


def relation_files(cluster, relation: str) -> dict[str, bytes]:
    """The on-disk files of a relation (all forks and segments), by data-directory path."""
    (path,) = cluster.sql(f"SELECT pg_relation_filepath('{relation}')")[0]
    on_disk = cluster.pgdata / path
    found = {f"{path}{p.name[len(on_disk.name):]}": p.read_bytes()
             for p in on_disk.parent.iterdir() if p.name == on_disk.name or p.name.startswith(on_disk.name + "_")
             or p.name.startswith(on_disk.name + ".")}
    assert path in found
    return found


def test_backup_of_a_cluster_with_a_tablespace(cluster, pitrkit_setup, pg_major):
    # No autovacuum: the tables below must not change on disk once checkpointed.
    primary = archiving_primary(cluster, pitrkit_setup, autovacuum=False)
    space = pgharness.make_server_dir(primary.directory / "extra_space", mode=0o700)
    primary.sql(f"CREATE TABLESPACE extra LOCATION '{space}'")
    primary.sql(
        "CREATE TABLE t (id int PRIMARY KEY, payload text);"
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 60000) g;"
        "CREATE TABLE u (id int, payload text) TABLESPACE extra;"
        "INSERT INTO u SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g;"
        "CREATE UNLOGGED TABLE scratch (id int);"
        "INSERT INTO scratch SELECT generate_series(1, 5000);"
        "SELECT pg_create_physical_replication_slot('keeper', true)"
    )
    # VACUUM sets every hint bit and the visibility map, CHECKPOINT writes them out:
    # from here on t and u are what any backup must copy, byte for byte.
    for statement in ("VACUUM t", "VACUUM u", "CHECKPOINT"):
        primary.sql(statement)
    stable = relation_files(primary, "t") | relation_files(primary, "u")
    (unlogged,) = primary.sql("SELECT pg_relation_filepath('scratch')")[0]
    (oid,) = primary.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")[0]
    spill = pgharness.make_server_dir(primary.pgdata / "base" / "pgsql_tmp") / "pgsql_tmp4242.0"
    spill.write_bytes(b"spilled sort")
    pgharness.give_to_server_user(spill)

    with primary.connect() as session:  # a temporary table exists while the backup runs
        session.execute("CREATE TEMP TABLE scratchpad AS SELECT generate_series(1, 100) AS id")
        (temporary,) = session.execute("SELECT pg_relation_filepath('scratchpad')").fetchone()
        # PostgreSQL's exclusions, each for something that really is on disk.
        excluded = ["postmaster.pid", "postmaster.opts", "global/pg_internal.init", "pg_replslot/keeper/state",
                    temporary, unlogged, "base/pgsql_tmp/pgsql_tmp4242.0"]
        assert all((primary.pgdata / path).exists() for path in excluded)
        result = pitrkit_setup.run("backup-push", "--json")
        assert result.returncode == 0, result.stderr
        reference = pgharness.make_server_dir(primary.directory / "reference")
        reference_space = pgharness.make_server_dir(primary.directory / "reference_space", mode=0o700)
        primary.pg_basebackup(reference, "-X", "none", "-T", f"{space}={reference_space}")

    printed = json.loads(result.stdout)
    manifest = read_manifest(pitrkit_setup, printed["backup_id"])
    assert printed == codec.to_builtins(manifest.summary())

    # The facts.
    assert manifest.system_identifier == primary.system_identifier
    assert manifest.pg_version // 10000 == pg_major
    assert manifest.timeline == 1
    assert manifest.start_lsn < manifest.stop_lsn
    assert manifest.start_time <= manifest.stop_time
    assert manifest.label == f"pitrkit {manifest.backup_id}"
    assert manifest.first_segment == SegmentName.containing(1, manifest.start_lsn).name
    assert manifest.last_segment == SegmentName.containing(1, manifest.stop_lsn - 1).name
    assert manifest.backup_label.startswith("START WAL LOCATION: ")
    assert f"{oid} {space}" in (manifest.tablespace_map or "")
    segment = SegmentName.parse(manifest.first_segment)
    while True:  # every segment the backup needs was archived before the manifest
        assert pitrkit_setup.stored(segment.name).exists(), segment.name
        if segment.name == manifest.last_segment:
            break
        segment = segment.next()
    assert manifest.tablespaces == [BackupTablespace(oid=oid, name="extra", location=str(space))]
    assert manifest.file_count == len(manifest.files)
    assert manifest.size == sum(file.size for file in manifest.files)
    assert manifest.stored_size == sum(part.stored_size for part in [*manifest.parts, *manifest.block_maps])
    assert manifest.compression == "zstd" and manifest.stored_size < manifest.size

    # The files: the same set as pg_basebackup's, the stable ones byte for byte.
    files = reassemble(pitrkit_setup, manifest)
    # Their checksums (format_version 2), as docs/archive-format.md defines them: every
    # relation file's pages in its block map, every file's in its record.
    assert manifest.format_version == 2 and not manifest.block_files
    maps = {file_map.path: file_map for part in manifest.block_maps for file_map in blockmap.decode_block_map(
        objects.decode(part.key, (pitrkit_setup.archive / part.key).read_bytes(), Plugins().compressor)).files}
    assert "global/1262" in maps and any(path.startswith(f"pg_tblspc/{oid}/") for path in maps)
    for record in manifest.files:
        content = files[record.path]
        if record.path in maps:
            pages = b"".join(xxhash.xxh3_64_intdigest(content[n:n + 8192]).to_bytes(8, "little")
                             for n in range(0, len(content), 8192))
            assert maps[record.path].checksums == pages, record.path
            assert record.checksum == xxhash.xxh3_128_digest(pages), record.path
        else:
            assert relation_of(record.path) is None or len(content) % 8192, record.path
            assert record.checksum == xxhash.xxh3_128_digest(content), record.path
    reference_directories, reference_files = tree(reference)
    assert set(files) == reference_files - BASEBACKUP_ONLY
    tablespace_link = f"pg_tblspc/{oid}"
    assert {d.path for d in manifest.directories} == reference_directories - {tablespace_link}
    for path, content in stable.items():
        assert files[path] == content, path
        assert (reference / path).read_bytes() == content, path
    assert any(path.startswith(f"{tablespace_link}/PG_{pg_major}_") for path in stable)
    assert files["PG_VERSION"] == (primary.pgdata / "PG_VERSION").read_bytes()
    assert manifest.files[-1].path == "global/pg_control"

    assert not set(excluded) & set(files)
    assert f"{unlogged}_init" in files
    assert not [path for path in files if path.startswith(("pg_wal/", "pg_replslot/"))]
    directories = {d.path for d in manifest.directories}
    assert {"", "pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_tblspc"} <= directories


def test_label_and_plain_output(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")

    result = pitrkit_setup.run("backup-push", "--label", "before the upgrade")
    assert result.returncode == 0, result.stderr
    backup_id = result.stdout.strip()
    assert result.stdout == backup_id + "\n"
    manifest = read_manifest(pitrkit_setup, backup_id)
    assert manifest.label == "before the upgrade"
    assert manifest.backup_id == backup_id and manifest.tablespaces == [] and manifest.tablespace_map is None
    assert "LABEL: before the upgrade" in manifest.backup_label
    recorded = codec.decode((pitrkit_setup.archive / BACKUP_CATALOG_KEY).read_bytes(), BackupCatalog, "catalog")
    assert recorded.backups == [manifest.summary()]


# --- refusals -----------------------------------------------------------------------------


def test_refuses_without_archive_mode(cluster, pitrkit_setup):
    primary = cluster(archive_mode="off").start()
    pitrkit_setup.init(primary)

    result = pitrkit_setup.run("backup-push")
    assert result.returncode != 0
    assert "archive_mode is off" in one_line(result.stderr)
    assert not (pitrkit_setup.archive / "backups").exists()


def test_refuses_an_archive_that_was_never_initialised(cluster, pitrkit_setup):
    """It used to create archive.json itself (with [encryption]) or leave it to the
    first segment: an unmounted archive directory became a new archive."""
    primary = cluster(archive_mode="on", archive_command=pitrkit_setup.archive_command).start()
    pitrkit_setup.write_config(postgres=primary)
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")

    result = pitrkit_setup.run("backup-push")
    assert result.returncode == 1
    message = one_line(result.stderr)
    assert "has no archive.json" in message and "pitrkit init" in message
    assert list(pitrkit_setup.archive.iterdir()) == []


def test_refuses_a_pgdata_that_is_not_the_servers(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    text = pitrkit_setup.config.read_text()
    pitrkit_setup.config.write_text(text.replace(f'pgdata = "{primary.pgdata}"', f'pgdata = "{primary.directory}"'))

    result = pitrkit_setup.run("backup-push")
    assert result.returncode != 0
    message = one_line(result.stderr)
    assert "pgdata" in message and str(primary.directory) in message
    assert not (pitrkit_setup.archive / "backups").exists()


def test_wal_that_never_reaches_the_archive_leaves_no_manifest(cluster, pitrkit_setup):
    primary = cluster(archive_mode="on", archive_command="false").start()
    pitrkit_setup.init(primary)
    add_config(pitrkit_setup, "[backup]\nwal_timeout = 2\n")
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")

    result = pitrkit_setup.run("backup-push")
    assert result.returncode != 0
    message = one_line(result.stderr)
    (first_needed,) = primary.sql("SELECT pg_walfile_name(redo_lsn) FROM pg_control_checkpoint()")[0]
    assert f"WAL segment {first_needed} did not reach the archive" in message
    assert "pg_stat_archiver" in message
    assert manifests(pitrkit_setup) == []
    # The parts were stored: an unfinished backup, left for retention to remove.
    assert list((pitrkit_setup.archive / "backups").glob("*/data/00000000"))


def test_a_backup_interrupted_while_waiting_for_wal_leaves_no_manifest(cluster, pitrkit_setup):
    # Its copy is done and its block maps are being stored beside the wait: Ctrl-C there
    # must still end it without a manifest, and end the server's backup with the session.
    primary = cluster(archive_mode="on", archive_command="false").start()
    pitrkit_setup.init(primary)
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    user = pgharness.server_user()
    drop = ({"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
            if user.switch else {})
    backup = subprocess.Popen([pitrkit_setup.pitrkit, "--config", pitrkit_setup.config, "-v", "backup-push"],
                              cwd="/", env=pgharness.server_env(pitrkit_setup.env), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **drop)
    said = []
    assert backup.stderr is not None
    for line in backup.stderr:
        said.append(line)
        if "to be archived" in line:  # waiting for WAL (at most [backup] wal_timeout, 600 s)
            break
    backup.send_signal(signal.SIGINT)
    _, rest = backup.communicate(timeout=60)
    assert backup.returncode != 0, "".join(said) + rest
    assert "Traceback" not in rest
    assert manifests(pitrkit_setup) == []
    # The session is gone (its backend exits once the client has), and with it the backup.
    pgharness.wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                           "'client backend' AND application_name = 'pitrkit backup-push'")
                       == [(0,)], 60, interval=0.1, what="backup-push's session to end")


def test_a_failure_during_the_copy_aborts_without_a_manifest(cluster, pitrkit_setup):
    primary = archiving_primary(cluster, pitrkit_setup)
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    unreadable = primary.pgdata / "global" / "zz_root_only"  # copied after the rest of global/
    unreadable.write_bytes(b"secret")
    unreadable.chmod(0o600)  # owned by root: the server user cannot read it

    result = pitrkit_setup.run("backup-push")
    assert result.returncode != 0
    assert f"cannot read {unreadable}: Permission denied" in one_line(result.stderr)
    assert manifests(pitrkit_setup) == []

"""Documents and objects written by someone else: a manifest, catalog/backups.json,
archive.json or an object header that lies is refused as corrupt, naming it, before
anything is written or allocated. The whole-command view, with real backups and
PostgreSQL, is tests/integration/test_hostile_archive.py."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import operator
import os
import re
import stat
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import zstandard

from pitrkit.catalog import documents
from pitrkit.catalog.documents import BackupManifest, BackupTablespace
from pitrkit.errors import RefusedError
from pitrkit.ops.retention import RetentionReport
from pitrkit.restore import unpack
from pitrkit.storage import codec, objects
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.objects import CorruptObject, ObjectHeader
from pitrkit.storage.plugins.compression import NoCompression, Zstd
from pitrkit.wal.receiver_health import ReceiverHealth
from tests.unit.test_restore import FILES, make_backup, restore_into

# --- a manifest, as JSON to rewrite ------------------------------------------------------------


def manifest_document(tmp_path: Path, **kwargs) -> tuple[dict, BackupManifest]:
    archive, manifest = make_backup(tmp_path / "archive", FILES, 100, **kwargs)
    return codec.to_builtins(manifest), manifest


def decode_manifest(document: dict) -> BackupManifest:
    return codec.decode(msgspec.json.encode(document), BackupManifest, "backups/B1/manifest.json")


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "base/../../x", "base//1", "./base",
                                  "base/1/", "base/\0/x", ""])
def test_a_file_path_that_could_leave_the_data_directory_is_refused_on_decoding(tmp_path, path):
    document, _ = manifest_document(tmp_path)
    document["files"][1][0] = path
    with pytest.raises(ValueError, match=r"backups/B1/manifest.json is not a valid BackupManifest: path .* is "
                                         r"not a plain relative path .* at `\$.files\[1\]`"):
        decode_manifest(document)


@pytest.mark.parametrize("path", ["..", "/srv", "base/../..", "a\0b"])
def test_a_directory_path_that_could_leave_the_data_directory_is_refused(tmp_path, path):
    document, _ = manifest_document(tmp_path)
    document["directories"].append([path, 0o700])
    with pytest.raises(ValueError, match="not a plain relative path"):
        decode_manifest(document)


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("oid", 0, "not an OID"), ("oid", -5, "not an OID"), ("oid", 1 << 32, "not an OID"),
    ("location", "relative/ts", "not a canonical absolute path"),
    ("location", "/srv/ts/../../etc", "not a canonical absolute path"),
    ("location", "/srv/ts\0", "not a canonical absolute path"),
    ("location", "//srv/ts", "not a canonical absolute path"), ("location", "/", "not a canonical absolute path"),
    ("location", "/srv/ts/", "not a canonical absolute path"),
])
def test_a_tablespace_that_is_not_one_is_refused(tmp_path, field, value, problem):
    document, _ = manifest_document(tmp_path)
    document["tablespaces"] = [{"oid": 16390, "name": "fast", "location": "/srv/fast", field: value}]
    with pytest.raises(ValueError, match=problem):
        decode_manifest(document)


@pytest.mark.parametrize(("where", "index", "value", "problem"), [
    ("files", 1, -1, "size -1 is out of bounds"), ("files", 1, 1 << 60, "size .* is out of bounds"),
    ("files", 2, 0o104755, "mode .* is out of bounds"), ("files", 3, 1 << 62, "modification time"),
    ("files", 5, -1, "offset -1 is out of bounds"), ("files", 4, -1, "part -1 is out of bounds"),
])
def test_file_sizes_modes_and_offsets_are_bounded(tmp_path, where, index, value, problem):
    document, _ = manifest_document(tmp_path)
    document[where][0][index] = value
    with pytest.raises(ValueError, match=problem):
        decode_manifest(document)


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("size", 8 << 30, "size .* is out of bounds"), ("size", -1, "size -1 is out of bounds"),
    ("stored_size", -1, "stored size -1"),
])
def test_part_sizes_are_bounded(tmp_path, field, value, problem):
    document, _ = manifest_document(tmp_path)
    document["parts"][0][field] = value
    with pytest.raises(ValueError, match=problem):
        decode_manifest(document)


@pytest.mark.parametrize(("field", "value"), [("backup_id", "../../etc"), ("backup_id", ""), ("backup_id", ".x"),
                                              ("file_count", -1), ("size", -3)])
def test_summary_ids_and_counts_are_checked(tmp_path, field, value):
    document, _ = manifest_document(tmp_path)
    document[field] = value
    with pytest.raises(ValueError, match="not a plain name|out of bounds"):
        decode_manifest(document)
    # The catalog's copy is a summary of the same type: checked the same way.
    summary = {key: value for key, value in document.items()
               if key in documents.BackupSummary.__struct_fields__}
    with pytest.raises(ValueError):
        codec.decode(msgspec.json.encode({"backups": [summary]}), documents.BackupCatalog, "catalog/backups.json")


# --- the server's configuration from outside the data directory (catalog/documents.py) ------

CONFIG_DIR = "/etc/postgresql/15/main"


def configuration_document(**record) -> dict:
    """A manifest's `configuration` as backup-push writes it for Debian's layout, its
    pg_hba.conf copied as .pitrkit-config/00-pg_hba.conf; `record` changes that file's record."""
    copied = {"name": "00-pg_hba.conf", "path": f"{CONFIG_DIR}/pg_hba.conf", "role": "hba_file", "mode": 0o640,
              "size": 0, "sha256": hashlib.sha256(b"").hexdigest(), **record}
    return {"data_directory": "/var/lib/postgresql/15/main", "config_file": f"{CONFIG_DIR}/postgresql.conf",
            "hba_file": f"{CONFIG_DIR}/pg_hba.conf", "ident_file": f"{CONFIG_DIR}/pg_ident.conf", "files": [copied]}


def test_a_configuration_as_backup_push_records_it_decodes(tmp_path):
    document, _ = manifest_document(tmp_path)
    document["configuration"] = configuration_document()
    assert decode_manifest(document).configuration.files[0].name == "00-pg_hba.conf"


@pytest.mark.parametrize(("record", "problem"), [
    # restore reads .pitrkit-config/<name> and writes pitrkit.conf.d/<name>: one plain name.
    ({"name": "../../../../tmp/pg_hba.conf"}, "configuration file name .* is not a plain file name"),
    ({"name": "/etc/passwd"}, "is not a plain file name"), ({"name": ".."}, "is not a plain file name"),
    ({"name": "sub/pg_hba.conf"}, "is not a plain file name"), ({"name": ".hidden"}, "is not a plain file name"),
    ({"name": ""}, "is not a plain file name"), ({"name": "a\0b"}, "is not a plain file name"),
    ({"role": "data_directory"}, "unknown role 'data_directory'"),
    ({"path": "relative/pg_hba.conf"}, "path 'relative/pg_hba.conf' is not a normal absolute path"),
    ({"path": "/var/lib/postgresql/15/main/../../../../etc/pg_hba.conf"}, "is not a normal absolute path"),
    ({"path": "/etc/pg_hba.conf\n  postgresql.conf <- forged"}, "is not a normal absolute path"),
    ({"path": "/etc/pg_hba.conf\0"}, "is not a normal absolute path"),
    ({"size": 1 << 40}, "size 1099511627776 is out of bounds"), ({"mode": 0o104644}, "mode .* is out of bounds"),
    ({"sha256": "00"}, "sha256 '00' is not one"),
])
def test_a_configuration_file_record_that_could_reach_elsewhere_is_refused_on_decoding(tmp_path, record, problem):
    document, _ = manifest_document(tmp_path)
    document["configuration"] = configuration_document(**record)
    with pytest.raises(ValueError, match=f"is not a valid BackupManifest: .*{problem}.* at "
                                         r"`\$.configuration.files\[0\]`"):
        decode_manifest(document)


@pytest.mark.parametrize("field", ["data_directory", "config_file", "hba_file", "ident_file"])
@pytest.mark.parametrize("path", ["relative/main", "/var/lib/postgresql/15/main/../../../../../etc", "/srv/a\nb", ""])
def test_configuration_paths_that_are_not_normal_absolute_paths_are_refused(tmp_path, field, path):
    # A `..` would make a path outside the data directory compare as one inside it.
    document, _ = manifest_document(tmp_path)
    document["configuration"] = {**configuration_document(), field: path}
    with pytest.raises(ValueError, match=f"configuration {field} .* is not a normal absolute path"):
        decode_manifest(document)
    # The catalog's copy of the summary is checked the same way.
    summary = {key: value for key, value in document.items() if key in documents.BackupSummary.__struct_fields__}
    with pytest.raises(ValueError, match="is not a normal absolute path"):
        codec.decode(msgspec.json.encode({"backups": [summary]}), documents.BackupCatalog, "catalog/backups.json")


def test_a_configuration_file_name_listed_twice_is_refused(tmp_path):
    document, _ = manifest_document(tmp_path)
    document["configuration"] = configuration_document()
    document["configuration"]["files"].append({**document["configuration"]["files"][0], "role": "include"})
    with pytest.raises(ValueError, match="configuration file name '00-pg_hba.conf' is listed twice"):
        decode_manifest(document)


# --- what needs the whole manifest -------------------------------------------------------------


def checked(manifest: BackupManifest, **changes) -> None:
    unpack.check_manifest(msgspec.structs.replace(manifest, **changes))


def test_a_sound_manifest_passes(tmp_path):
    _, manifest = manifest_document(tmp_path)
    unpack.check_manifest(manifest)


def test_a_file_in_a_directory_the_manifest_does_not_list_is_refused(tmp_path):
    # pg_tblspc/16390 is no tablespace and no listed directory: nothing may be written there.
    _, manifest = manifest_document(tmp_path)
    files = [*manifest.files[:-1], msgspec.structs.replace(manifest.files[-1], path="pg_tblspc/16390/x")]
    with pytest.raises(unpack.CorruptManifest, match="lists 'pg_tblspc/16390/x', whose directory "
                                                     "'pg_tblspc/16390' it does not list"):
        checked(manifest, files=files)


def test_a_file_in_place_of_a_tablespace_link_is_refused(tmp_path):
    _, manifest = manifest_document(tmp_path)
    files = [*manifest.files[:-1], msgspec.structs.replace(manifest.files[-1], path="pg_tblspc/16390")]
    with pytest.raises(unpack.CorruptManifest, match="both as a file and as a directory or tablespace link"):
        checked(manifest, files=files, tablespaces=[BackupTablespace(oid=16390, name="t", location="/srv/t")],
                directories=[*manifest.directories, documents.BackupDirectory("pg_tblspc", 0o700)])


def test_parts_outside_the_backup_are_refused(tmp_path):
    _, manifest = manifest_document(tmp_path)
    for key in ("archive.json", "backups/B2/data/0", "backups/B1/data/../../../archive.json"):
        parts = [msgspec.structs.replace(manifest.parts[0], key=key), *manifest.parts[1:]]
        with pytest.raises(unpack.CorruptManifest, match="not an object of that backup"):
            checked(manifest, parts=parts)


def test_a_configuration_file_must_be_in_the_stream_as_recorded(tmp_path):
    # restore reads each copy from the stream once the rest is written: refused before.
    hba = b"local all all peer\n"
    _, manifest = make_backup(tmp_path / "archive", {**FILES, ".pitrkit-config/00-pg_hba.conf": hba}, 100)
    record = documents.ConfigFile(name="00-pg_hba.conf", path=f"{CONFIG_DIR}/pg_hba.conf", role="hba_file",
                                mode=0o640, size=len(hba), sha256=hashlib.sha256(hba).hexdigest())
    configuration = documents.ServerConfiguration(**{**configuration_document(), "files": [record]})
    checked(manifest, configuration=configuration)
    for change in ({"name": "01-pg_hba.conf"}, {"size": len(hba) + 1}):
        elsewhere = msgspec.structs.replace(configuration, files=[msgspec.structs.replace(record, **change)])
        with pytest.raises(unpack.CorruptManifest, match=f"records the configuration file {CONFIG_DIR}/pg_hba.conf "
                                                         r"as .pitrkit-config/.*, which it does not list"):
            checked(manifest, configuration=elsewhere)


def test_tablespaces_twice_a_map_naming_others_and_wrong_counts_are_refused(tmp_path):
    _, manifest = manifest_document(tmp_path)
    space = BackupTablespace(oid=16390, name="t", location="/srv/t")
    with pytest.raises(unpack.CorruptManifest, match="tablespace twice"):
        checked(manifest, tablespaces=[space, space])
    with pytest.raises(unpack.CorruptManifest, match="names no tablespace"):
        checked(manifest, tablespaces=[space], tablespace_map="16390 /srv/t\n16391 /etc\n")
    with pytest.raises(unpack.CorruptManifest, match="says 99 files"):
        checked(manifest, file_count=99)


# --- modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root_mode", "file_mask", "dir_mode"), [(0o700, 0o600, 0o700), (0o750, 0o640, 0o750)])
def test_no_setuid_setgid_sticky_or_world_bit_survives(tmp_path, root_mode, file_mask, dir_mode):
    archive, manifest = make_backup(tmp_path / "archive", FILES, 100,
                                    directories={"": root_mode, "global": 0o1777, "base": 0o2777, "base/1": 0o777})
    hostile = [msgspec.structs.replace(file, mode=mode) for file, mode in
               zip(manifest.files, [0o4755, 0o2777, 0o1666, 0o777, 0o6644, 0o604, 0o400], strict=False)]
    restore_into(archive, msgspec.structs.replace(manifest, files=hostile), tmp_path / "restored")
    for path in (tmp_path / "restored").rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == dir_mode, path
        else:
            assert mode & ~file_mask == 0, (path, oct(mode))
    assert stat.S_IMODE((tmp_path / "restored").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "restored" / "PG_VERSION").stat().st_mode) == 0o4755 & file_mask


# --- tablespaces go only where the operator said ---------------------------------------------------


SPACE = BackupTablespace(oid=16390, name="fast", location="/nonexistent/fast")
TARGET = Path("/nonexistent/restored")


def recorded(location: Path) -> unpack.TablespaceTarget:
    space = BackupTablespace(oid=16390, name="fast", location=str(location))
    [target] = unpack.resolve_tablespaces([space], [], "B1")
    assert not target.mapped
    return target


def test_a_recorded_location_that_does_not_exist_is_refused_naming_the_tablespace_and_the_option(tmp_path):
    with pytest.raises(RefusedError, match=r"tablespace 'fast' was at '.*/absent', which does not exist: "
                                           r"restore writes .* \(--tablespace-map fast=NEW_DIRECTORY\)"):
        unpack.check_tablespace_directory(recorded(tmp_path / "absent"), TARGET)
    assert not (tmp_path / "absent").exists()


def test_a_recorded_location_is_used_only_if_empty_and_no_link(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").touch()
    with pytest.raises(RefusedError, match="which is not empty"):
        unpack.check_tablespace_directory(recorded(tmp_path / "full"), TARGET)
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(RefusedError, match="which is a symbolic link"):
        unpack.check_tablespace_directory(recorded(tmp_path / "link"), TARGET)
    (tmp_path / "file").touch()
    with pytest.raises(RefusedError, match="which is not a directory"):
        unpack.check_tablespace_directory(recorded(tmp_path / "file"), TARGET)
    unpack.check_tablespace_directory(recorded(tmp_path / "empty"), TARGET)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a directory owned by another user")
def test_a_recorded_location_of_another_user_is_refused(tmp_path):
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 4321, 4321)
    with pytest.raises(RefusedError, match="which belongs to another user"):
        unpack.check_tablespace_directory(recorded(tmp_path / "theirs"), TARGET)


def test_a_tablespace_directory_may_not_hold_or_be_inside_the_target(tmp_path):
    # The parent of a target still to be created is empty: it must not take the tablespace.
    (tmp_path / "restored").mkdir()
    for location, where in [(tmp_path, "holds"), (tmp_path / "restored", "is"),
                            (tmp_path / "restored" / "base", "is inside")]:
        with pytest.raises(RefusedError, match=f"which {where} the target directory .*--tablespace-map"):
            unpack.check_tablespace_directory(recorded(location), tmp_path / "restored")
    [mapped] = unpack.resolve_tablespaces([SPACE], unpack.parse_tablespace_mappings([f"fast={tmp_path}/r/ts"]), "B1")
    with pytest.raises(RefusedError, match="is inside the target directory"):
        unpack.check_tablespace_directory(mapped, tmp_path / "r")


def test_a_mapped_location_may_be_created(tmp_path):
    [target] = unpack.resolve_tablespaces([SPACE], unpack.parse_tablespace_mappings([f"fast={tmp_path}/new"]), "B1")
    assert target.mapped
    unpack.check_tablespace_directory(target, TARGET)


# --- archive.json ----------------------------------------------------------------------------------


def identity_document(**encryption) -> bytes:
    scrypt = {"salt": base64.b64encode(b"s" * 16).decode(), "n": 1 << 17, "r": 8, "p": 1}
    scrypt.update(encryption.pop("scrypt", {}))
    document = {"system_identifier": 7, "wal_segment_size": 16 << 20, "pg_versions": [15],
                "created_at": "2026-01-01T00:00:00Z",
                "encryption": {"mode": "key", "algorithm": "aes-256-gcm-chunked", "key_ids": ["k1"],
                               "scrypt": scrypt, **encryption}}
    return msgspec.json.encode(document)


def test_the_archive_identity_as_pitrkit_writes_it_decodes():
    codec.decode(identity_document(), ArchiveIdentity, "archive.json")


@pytest.mark.parametrize(("change", "problem"), [
    ({"scrypt": {"n": 1 << 40}}, "scrypt parameters n=1099511627776 .* out of bounds"),
    ({"scrypt": {"n": 1000}}, "out of bounds"), ({"scrypt": {"r": 1 << 20}}, "out of bounds"),
    ({"scrypt": {"p": 1 << 30}}, "out of bounds"), ({"scrypt": {"r": 0}}, "out of bounds"),
    ({"scrypt": {"salt": base64.b64encode(b"s" * (1 << 20)).decode()}}, "scrypt salt of 1048576 bytes"),
    ({"scrypt": {"salt": ""}}, "scrypt salt of 0 bytes"),
    ({"key_ids": []}, "no current key"),
])
def test_tampered_encryption_parameters_are_refused_before_any_key_is_stretched(change, problem):
    with pytest.raises(ValueError, match=f"archive.json is not a valid ArchiveIdentity: .*{problem}"):
        codec.decode(identity_document(**change), ArchiveIdentity, "archive.json")


@pytest.mark.parametrize("size", [0, -1, 3 << 20, 1 << 31])
def test_a_wal_segment_size_postgresql_cannot_have_is_refused(size):
    document = msgspec.json.decode(identity_document())
    document["wal_segment_size"] = size
    with pytest.raises(ValueError, match="wal_segment_size"):
        codec.decode(msgspec.json.encode(document), ArchiveIdentity, "archive.json")


# --- times ------------------------------------------------------------------------------------------

TIME = "2026-11-30T12:00:00Z"
LEASE = {"lease_id": "20261130T120000Z-0a1b2c3d", "holder": "restore on db2 pid 7", "backup_id": "B1", "timeline": 1,
         "first_segment": "000000010000000000000002", "taken_at": TIME, "expires_at": TIME, "held_for": 600.0}
LOCK = {"token": "0a1b2c3d4e5f6a7b", "host": "db1", "pid": 7, "command": "retention apply", "taken_at": TIME,
        "expires_at": TIME, "held_for": 600.0}


def time_documents(tmp_path: Path) -> list[tuple[type[msgspec.Struct], dict, list[tuple[str | int, ...]]]]:
    """A valid document of each type that holds times, and the paths to its times."""
    summary = {key: value for key, value in manifest_document(tmp_path)[0].items()
               if key in documents.BackupSummary.__struct_fields__}
    health = ReceiverHealth(observed_at=datetime.now(UTC), pid=7, running=True, receiving=True, server_reachable=True,
                            server_lsn=None, last_received_lsn=None, last_archived_lsn=None,
                            last_archived_at=datetime.now(UTC), lag_bytes=None, lag_seconds=None, spool_bytes=0,
                            spool_segments=0, slot=None, receiver_restarts=0, last_error=None)
    return [
        (ArchiveIdentity, msgspec.json.decode(identity_document()), [("created_at",)]),
        (documents.BackupCatalog, {"backups": [summary]}, [("backups", 0, "start_time"), ("backups", 0, "stop_time")]),
        (documents.WalFolderIndex, {"folder": "wal/0000000100000000/", "entries": [], "indexed_at": TIME},
         [("indexed_at",)]),
        (documents.RetentionState, {"deleting": [], "decided_at": TIME, "last_run": {
            "finished_at": TIME, "backups_removed": [], "wal_files_removed": 0, "bytes_freed": 0}},
         [("decided_at",), ("last_run", "finished_at")]),
        (documents.Lease, dict(LEASE), [("taken_at",), ("expires_at",)]),
        (documents.CatalogLock, dict(LOCK), [("taken_at",), ("expires_at",)]),
        (ReceiverHealth, codec.to_builtins(health), [("observed_at",), ("last_archived_at",)]),
        # What the daemon reads from `retention apply --json`.
        (RetentionReport, {"dry_run": False, "decided_at": TIME, "policy": "last 1", "kept": [
            {"backup_id": "B1", "stop_time": TIME, "reasons": ["last 1"]}], "removed_backups": [], "removed_wal": [],
            "expired_leases": [], "stored_bytes": 0}, [("decided_at",), ("kept", 0, "stop_time")]),
    ]


def test_every_time_in_a_document_must_carry_its_offset(tmp_path):
    for kind, document, paths in time_documents(tmp_path):
        codec.decode(msgspec.json.encode(document), kind, "k")  # as pitrkit writes it
        for *parents, last in paths:
            naive = copy.deepcopy(document)
            functools.reduce(operator.getitem, parents, naive)[last] = "2026-11-30T12:00:00"  # which zone's noon?
            where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in [*parents, last])
            with pytest.raises(ValueError, match=rf"^k is not a valid {kind.__name__}: Expected `datetime` with a "
                                                 rf"timezone component - at `\${re.escape(where)}`$"):
                codec.decode(msgspec.json.encode(naive), kind, "k")


# --- leases and the catalog lock ----------------------------------------------------------------


@pytest.mark.parametrize(("kind", "document", "field", "value", "problem"), [
    (documents.Lease, LEASE, "holder", "x" * 513, r"Expected `str` of length <= 512 - at `\$.holder`"),
    (documents.CatalogLock, LOCK, "host", "x" * 256, r"Expected `str` of length <= 255 - at `\$.host`"),
    (documents.CatalogLock, LOCK, "command", "x" * 513, r"Expected `str` of length <= 512 - at `\$.command`"),
    # A forged claim cannot hold the archive for ever: 30 days past its store time at most.
    (documents.Lease, LEASE, "held_for", 30 * 86400 + 1, r"Expected `float` <= 2592000.0 - at `\$.held_for`"),
    (documents.Lease, LEASE, "held_for", 1e300, r"Expected `float` <= 2592000.0"),
    (documents.CatalogLock, LOCK, "held_for", 1e300, r"Expected `float` <= 2592000.0 - at `\$.held_for`"),
    # Storage keys' components: retention reads and removes a lease by its id.
    (documents.Lease, LEASE, "lease_id", "../catalog/backups", r"lease id '../catalog/backups' is not a plain name"),
    (documents.Lease, LEASE, "lease_id", "", r"lease id '' is not a plain name"),
    (documents.Lease, LEASE, "backup_id", "A/../B", r"backup id 'A/../B' is not a plain name"),
])
def test_a_forged_lease_or_lock_is_refused_on_decoding(kind, document, field, value, problem):
    forged = msgspec.json.encode({**document, field: value})
    with pytest.raises(ValueError, match=rf"^k is not a valid {kind.__name__}: {problem}"):
        codec.decode(forged, kind, "k")


def test_a_lease_or_lock_at_the_bounds_decodes():
    for kind, document in ((documents.Lease, LEASE), (documents.CatalogLock, LOCK)):
        codec.decode(msgspec.json.encode({**document, "held_for": 30 * 86400}), kind, "k")
    codec.decode(msgspec.json.encode({**LEASE, "holder": "x" * 512, "held_for": -5.0}), documents.Lease, "k")
    codec.decode(msgspec.json.encode({**LOCK, "host": "h" * 255, "command": "c" * 512}), documents.CatalogLock, "k")

# --- object headers ----------------------------------------------------------------------------------


def forged(size: int, body: bytes, compression: str = "zstd") -> bytes:
    header = msgspec.msgpack.encode({"compression": compression, "size": size, "sha256": b"\0" * 32})
    return b"PTKO\0\x01" + len(header).to_bytes(4, "big") + header + body


COMPRESSORS = {"zstd": Zstd(3, 1), "none": NoCompression()}


@pytest.mark.parametrize("claimed", [8 << 30, 1 << 50])
def test_a_small_object_claiming_a_huge_size_is_refused_before_allocating_it(claimed):
    # A frame that does not state its size: zstd would allocate what the header claims.
    body = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
    assert len(body) < 1024
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject, match=r"stored object backups/B1/data/0 is corrupt: the header claims "
                                                r"\d+ bytes from a \d+-byte zstd body"):
            objects.decode("backups/B1/data/0", forged(claimed, body), COMPRESSORS.__getitem__)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
    finally:
        tracemalloc.stop()


def test_a_negative_size_and_a_short_checksum_are_corrupt_headers():
    with pytest.raises(CorruptObject, match="unreadable header: header claims size -1"):
        objects.decode("k", forged(-1, b""), COMPRESSORS.__getitem__)
    header = msgspec.msgpack.encode(ObjectHeader(compression="none", size=0, sha256=b"\0" * 32))
    short = header.replace(b"\xc4\x20" + b"\0" * 32, b"\xc4\x01\0")
    with pytest.raises(CorruptObject, match="1-byte SHA-256"):
        objects.decode("k", b"PTKO\0\x01" + len(short).to_bytes(4, "big") + short, COMPRESSORS.__getitem__)


def test_an_uncompressed_body_must_be_the_size_its_header_says():
    with pytest.raises(CorruptObject, match="the body is 3 bytes, the header says 1099511627776"):
        objects.decode("k", forged(1 << 40, b"abc", "none"), COMPRESSORS.__getitem__)

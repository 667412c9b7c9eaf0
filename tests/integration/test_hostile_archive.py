"""The hostile-archive suite: a real backup of PostgreSQL 15 and 18, whose manifest,
catalog/backups.json, archive.json and stored objects are then rewritten the way anyone
with write access to the storage could rewrite them. Whatever they say, restore and
restore-plan must write nothing outside the target directory (a sentinel directory the
server user may write to, where the hostile paths point, stays empty), no setuid, setgid,
sticky or world bit may survive, and a refusal is one line on stderr and a non-zero exit,
never a traceback or an "internal error".

Everything runs as the server user through the installed `pitrkit`, as a DBA runs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
import zstandard

import pgharness
from pitr_workload import archive_everything, archiving_primary, backup_push, restore_into, succeeded, write_round

pytestmark = pytest.mark.integration

TABLESPACE = "fast"
FETCH_FAULT = 126
INTERNAL_ERROR = 70


class Hostile:
    """A backup (with a tablespace) and the places a hostile archive could reach: a
    sentinel directory the server user may write into, and the tablespace's directory."""

    def __init__(self, cluster, setup, server_tmp: Path) -> None:
        self.cluster = cluster
        self.setup = setup
        self.server_tmp = server_tmp
        self.tablespace = pgharness.make_server_dir(server_tmp / "space", mode=0o700)
        primary = archiving_primary(cluster, setup)
        primary.sql(f"CREATE TABLESPACE {TABLESPACE} LOCATION '{self.tablespace}'")
        primary.sql(f"CREATE TABLE hot (id int PRIMARY KEY) TABLESPACE {TABLESPACE};"
                    "INSERT INTO hot SELECT generate_series(1, 1000)")
        write_round(primary, 1)
        self.backup = backup_push(setup)
        archive_everything(primary)
        # Stopped, so that nothing but pitrkit changes what is watched (the tablespace).
        primary.stop()
        # A storage fault is reported once, not after a retry's warning line.
        setup.write_config(postgres=primary, retries=0)
        self.sentinel = pgharness.make_server_dir(server_tmp / "sentinel", mode=0o700)
        self.backup_dir = setup.archive / "backups" / self.backup["backup_id"]
        self.manifest = self.backup_dir / "manifest.json"
        self.catalog = setup.archive / "catalog" / "backups.json"
        self.identity = setup.archive / "archive.json"
        self.mapped = server_tmp / "mapped"  # absent: --tablespace-map may create it

    def document(self) -> dict:
        return json.loads(self.manifest.read_bytes())

    # -- what must hold after each hostile command ------------------------------------------

    def outside(self) -> dict[str, tuple[int, int]]:
        """Every entry outside the archive and what restore was told to write (the target,
        the mapped tablespace directory): the sentinel, the tablespace's original
        directory, the test's configuration directory."""
        found = {}
        for top in (self.server_tmp, self.tablespace):
            for folder, subfolders, files in os.walk(top):
                if Path(folder) in (self.setup.archive, self.setup.runtime_dir, self.mapped):
                    subfolders[:] = []
                    continue
                for name in subfolders + files:
                    if Path(folder, name) == self.mapped:
                        continue
                    status = os.lstat(os.path.join(folder, name))
                    found[os.path.join(folder, name)] = (status.st_mode, status.st_size)
        return found

    def refused(self, command: str, *args: str, says: str) -> str:
        """`pitrkit COMMAND ARGS` (restore: into a fresh directory, --latest) must exit
        non-zero with exactly one line on stderr containing `says`, and leave everything
        outside the target as it was."""
        before = self.outside()
        if command == "restore":
            restored, result = restore_into(self.cluster, self.setup, "--latest", *args)
        else:
            result = self.setup.run(command, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode not in (0, INTERNAL_ERROR), (result.returncode, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("pitrkit: "), result.stderr
        assert "internal error" not in lines[0] and "Traceback" not in result.stderr, result.stderr
        assert says in lines[0], lines[0]
        assert self.outside() == before, lines[0]
        assert not os.listdir(self.sentinel)
        if command == "restore" and "is incomplete" in lines[0]:
            shutil.rmtree(self.mapped, ignore_errors=True)  # as the message says, for the next case
        elif command == "restore":
            # Refused before anything was written: not even the target directory.
            assert os.listdir(restored.directory) == ["sock"], lines[0]
            assert not self.mapped.exists(), lines[0]
        return lines[0]


@contextmanager
def rewritten(path: Path, change: Callable[[bytes], bytes]) -> Iterator[None]:
    """`path` in the archive rewritten by `change` (as a bucket writer would), put back after."""
    original = path.read_bytes()
    path.write_bytes(change(original))
    pgharness.give_to_server_user(path)
    try:
        yield
    finally:
        path.write_bytes(original)
        pgharness.give_to_server_user(path)


def json_change(change: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        document = json.loads(data)
        change(document)
        return json.dumps(document).encode()
    return apply


@contextmanager
def moved_aside(path: Path) -> Iterator[None]:
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    try:
        yield
    finally:
        aside.rename(path)


def no_dangerous_bits(top: Path) -> None:
    for folder, subfolders, files in os.walk(top):
        for name in [".", *subfolders, *files]:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            if stat.S_ISLNK(mode):
                continue
            assert stat.S_IMODE(mode) & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o007) == 0, \
                (os.path.join(folder, name), oct(mode))


# --- the manifest ----------------------------------------------------------------------------


def test_a_rewritten_manifest_cannot_reach_outside_the_restore(cluster, pitrkit_setup, server_tmp):
    hostile = Hostile(cluster, pitrkit_setup, server_tmp)
    mapping = ("--tablespace-map", f"{TABLESPACE}={hostile.mapped}")
    # Up from wherever the target is, then down into the sentinel.
    escape = "../" * 30 + str(hostile.sentinel / "pwned").lstrip("/")
    link = server_tmp / "link-to-sentinel"
    link.symlink_to(hostile.sentinel)
    tablespace_oid = hostile.document()["tablespaces"][0]["oid"]

    def file_path(path: str) -> Callable[[dict], None]:
        return lambda document: document["files"][0].__setitem__(0, path)

    def tablespace_location(location: str) -> Callable[[dict], None]:
        return lambda document: document["tablespaces"][0].__setitem__("location", location)

    data_directory = hostile.document()["configuration"]["data_directory"]

    def copied_file(**record: object) -> Callable[[dict], None]:
        """The configuration records a pg_hba.conf copied from outside the data directory,
        as backup-push records Debian's, with `record` changed."""
        copied = {"name": "00-pg_hba.conf", "path": "/etc/postgresql/15/main/pg_hba.conf", "role": "hba_file",
                  "mode": 0o640, "size": 0, "sha256": hashlib.sha256(b"").hexdigest(), **record}
        return lambda document: document["configuration"]["files"].append(copied)

    # Restore reads a copy as .pitrkit-config/<name> and writes it as pitrkit.conf.d/<name>.
    hba_file_from_elsewhere = copied_file(name=escape.replace("pwned", "pg_hba.conf"))
    hba_file_not_in_the_stream = copied_file()

    # Compared as inside the data directory, it would be copied in from wherever `..` leads.
    def hba_file_up_from_the_data_directory(document: dict) -> None:
        document["configuration"]["hba_file"] = f"{data_directory}/{escape}"

    def file_checksum(chosen: Callable[[str, int], bool], value: str) -> Callable[[dict], None]:
        def apply(document: dict) -> None:
            next(entry for entry in document["files"] if chosen(entry[0], entry[1]))[6] = value
        return apply

    # Checksums (format_version 2) that are not the files': every file is written, then
    # read back and refused; a relation file in the tablespace is checked through its link.
    zeros = base64.b64encode(bytes(16)).decode()
    in_tablespace = next(path for path, size, *_ in hostile.document()["files"]
                         if path.startswith("pg_tblspc/") and size and path.rpartition("/")[2].isdigit())

    cases: list[tuple[Callable[[dict], None], tuple[str, ...], str]] = [
        (file_checksum(lambda path, _: path == "PG_VERSION", zeros), mapping,
         f"the restored PG_VERSION is not what backup {hostile.backup['backup_id']} holds: the checksum of its "
         "bytes is"),
        (file_checksum(lambda path, _: path == in_tablespace, zeros), mapping,
         f"block map of {in_tablespace} does not match its manifest"),
        (file_checksum(lambda path, _: path == "PG_VERSION", ""), mapping, "but no checksum of PG_VERSION"),
        (file_path(escape), mapping, "is not a plain relative path"),
        (file_path(str(hostile.sentinel / "pwned")), mapping, "is not a plain relative path"),
        (file_path("base/1/\0x"), mapping, "is not a plain relative path"),
        (lambda document: document["directories"].append([str(hostile.sentinel / "dir"), 0o700]), mapping,
         "is not a plain relative path"),
        (lambda document: document["directories"].append(["base/../../..", 0o700]), mapping,
         "is not a plain relative path"),
        # Below a pg_tblspc entry that is no tablespace of the backup: it would have to be made.
        (file_path(f"pg_tblspc/{tablespace_oid + 1}/PG_x/1/1"), mapping, "it does not list"),
        (lambda document: document["parts"][0].__setitem__("key", "archive.json"), mapping,
         "not an object of that backup"),
        (lambda document: document["files"][0].__setitem__(1, 1 << 60), mapping, "out of bounds"),
        (lambda document: document["parts"][0].__setitem__("size", 8 << 30), mapping, "out of bounds"),
        (lambda document: document["tablespaces"][0].__setitem__("oid", -1), mapping, "is not an OID"),
        (tablespace_location("/srv/../" + str(hostile.sentinel)), mapping, "not a canonical absolute path"),
        # A tablespace goes where --tablespace-map says, or into an existing, empty
        # directory of the restoring user at its recorded location: never created elsewhere.
        (tablespace_location(str(hostile.sentinel / "ts")), (), "does not exist"),
        (tablespace_location(str(link)), (), "is a symbolic link"),
        (lambda document: None, (), "is not empty"),  # the original location, the primary's
        (hba_file_from_elsewhere, mapping, "is not a plain file name"),
        (copied_file(role="data_directory"), mapping, "unknown role 'data_directory'"),
        (hba_file_up_from_the_data_directory, mapping, "is not a normal absolute path"),
        (hba_file_not_in_the_stream, mapping, "as .pitrkit-config/00-pg_hba.conf of 0 bytes, which it does not list"),
    ]
    # The catalog is a cache: gone, the planner reads the manifest, as it does for a
    # backup the catalog does not list yet. (Its disagreeing is refused: see below.)
    with moved_aside(hostile.catalog):
        for change, args, says in cases:
            with rewritten(hostile.manifest, json_change(change)):
                line = hostile.refused("restore", *args, says=says)
            if not args:
                assert f"tablespace '{TABLESPACE}'" in line and "--tablespace-map" in line, line

        # Modes: whatever the manifest says, none survives that PostgreSQL would not make;
        # and an existing, empty directory of ours at the recorded location is used.
        prepared = pgharness.make_server_dir(server_tmp / "prepared", mode=0o700)

        def setuid_everywhere(document: dict) -> None:
            tablespace_location(str(prepared))(document)
            for entry in document["files"]:
                entry[2] = 0o6777
            for entry in document["directories"]:
                entry[1] = 0o3777

        with rewritten(hostile.manifest, json_change(setuid_everywhere)):
            restored, result = restore_into(cluster, pitrkit_setup, "--latest")
            succeeded(result)
        assert os.readlink(restored.pgdata / "pg_tblspc" / str(tablespace_oid)) == str(prepared)
        assert os.listdir(prepared)
        no_dangerous_bits(restored.pgdata)
        no_dangerous_bits(prepared)
        assert stat.S_IMODE((restored.pgdata / "PG_VERSION").stat().st_mode) == 0o600
        assert not os.listdir(hostile.sentinel)


# --- the catalog and links inside the archive -------------------------------------------------


def test_a_rewritten_catalog_or_a_link_in_the_archive_cannot_redirect_the_restore(cluster, pitrkit_setup,
                                                                                  server_tmp):
    hostile = Hostile(cluster, pitrkit_setup, server_tmp)
    mapping = ("--tablespace-map", f"{TABLESPACE}={hostile.mapped}")

    def catalog_location(document: dict) -> None:
        document["backups"][0]["tablespaces"][0]["location"] = str(hostile.sentinel / "ts")

    # The tablespace location the catalog (a cache) gives is never used: the manifest's
    # is, and a catalog that disagrees with the manifest is refused.
    with rewritten(hostile.catalog, json_change(catalog_location)):
        hostile.refused("restore", says="disagree about tablespaces")
        hostile.refused("restore", *mapping, says="disagree about tablespaces")

    # A catalog that does not decode is only a cache: the plan comes from the manifests.
    def traversal(document: dict) -> None:
        document["backups"][0]["backup_id"] = "../../../etc"

    with rewritten(hostile.catalog, json_change(traversal)):
        plan = json.loads(succeeded(pitrkit_setup.run("restore-plan", "--latest", "--json")))
        assert plan["backup"]["backup_id"] == hostile.backup["backup_id"]

    # Links inside the archive are not followed, wherever they point.
    outside_copy = server_tmp / "outside-copy"
    for inside in (hostile.catalog, hostile.backup_dir / "data"):
        inside.rename(outside_copy)
        inside.symlink_to(outside_copy)
        try:
            if inside == hostile.catalog:
                line = hostile.refused("restore-plan", "--latest", says="catalog/backups.json is a symbolic link")
            else:
                line = hostile.refused("restore", *mapping, says="data is a symbolic link")
            assert "never follows links inside the archive" in line
        finally:
            inside.unlink()
            outside_copy.rename(inside)


# --- archive.json and object headers -------------------------------------------------------------


def test_tampered_sizes_in_archive_json_and_object_headers_are_refused_as_corrupt(cluster, pitrkit_setup,
                                                                                  server_tmp):
    hostile = Hostile(cluster, pitrkit_setup, server_tmp)
    mapping = ("--tablespace-map", f"{TABLESPACE}={hostile.mapped}")

    def encrypted(**change) -> Callable[[dict], None]:
        def apply(document: dict) -> None:
            scrypt = {"salt": "c2FsdHNhbHRzYWx0c2FsdA==", "n": 1 << 17, "r": 8, "p": 1}
            document["encryption"] = {"mode": "key", "algorithm": "aes-256-gcm-chunked", "key_ids": ["k"],
                                      "scrypt": scrypt}
            for field, value in change.items():
                (scrypt if field in scrypt else document["encryption"])[field] = value
        return apply

    for change, says in [
        (lambda document: document.__setitem__("wal_segment_size", 0), "wal_segment_size 0"),
        (encrypted(n=1 << 40), "scrypt parameters n=1099511627776"),
        (encrypted(r=1 << 24), "out of bounds"),
        (encrypted(salt="QUFB" * 100_000), "scrypt salt of 300000 bytes"),
        (encrypted(key_ids=[]), "no current key"),
    ]:
        with rewritten(hostile.identity, json_change(change)):
            line = hostile.refused("restore-plan", "--latest", says=says)
            assert "archive.json" in line
            hostile.refused("restore", *mapping, says=says)

    # A stored object whose header claims far more than its body can hold: refused as
    # corrupt, naming it, before anything that size is allocated.
    def claims_a_pebibyte(blob: bytes) -> bytes:
        length = int.from_bytes(blob[6:10], "big")
        header = msgspec.msgpack.decode(blob[10 : 10 + length])
        header["size"] = 1 << 50
        forged = msgspec.msgpack.encode(header)
        body = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * 1000)
        return blob[:6] + len(forged).to_bytes(4, "big") + forged + body

    part = hostile.document()["parts"][0]["key"]
    with rewritten(pitrkit_setup.archive / part, claims_a_pebibyte):
        line = hostile.refused("restore", *mapping, says=f"stored object {part} is corrupt")
        assert "more than zstd can expand to" in line
    segment = hostile.backup["first_segment"]
    with rewritten(pitrkit_setup.stored(segment), claims_a_pebibyte):
        fetched = pgharness.make_server_dir(server_tmp / "fetched", mode=0o700) / segment
        result = pitrkit_setup.run("wal-fetch", segment, str(fetched))
        assert result.returncode == FETCH_FAULT, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert f"{segment}" in line and "is corrupt" in line and "more than zstd can expand to" in line, line
        assert not fetched.exists()

"""backup-push's part writer (backup/push.py PartStore): the digest of a backup's stream
parts, XXH3-128 (stored-object format version 2) in an unencrypted archive, SHA-256 in
an encrypted one (docs/archive-format.md, "The digest of a stream part"), which the
manifest records and restore refuses a part whose header's is not, whichever the
algorithm; and storing parts beside compressing the next ones.

Real parts: written by backup-push's own PartStore and copy_files from real files, read
back by restore's read_part.
"""

from __future__ import annotations

import hashlib
import struct
import threading

import msgspec
import pytest
import xxhash

from pitrkit.backup import push
from pitrkit.backup.push import PartStore, SourceFile, copy_files
from pitrkit.catalog import checksums
from pitrkit.catalog.documents import BackupPart
from pitrkit.config import EncryptionConfig
from pitrkit.errors import RefusedError
from pitrkit.hookspecs import ObjectExists
from pitrkit.progress import Progress
from pitrkit.restore import unpack
from pitrkit.storage import keys, objects
from pitrkit.storage.plugins.compression import Zstd
from tests.unit.chain_archive import ChainBuilder, pages

FRAME = struct.Struct(">4sHI")
FILES = {"base/5/16384": pages("rel", 9), "PG_VERSION": b"15\n", "base/5/16385": pages("other", 4)}


def stored_parts(builder: ChainBuilder, tmp_path, monkeypatch) -> tuple[list[BackupPart], bytes]:
    """The FILES copied by backup-push's copier into parts of 5 pages: the parts and the stream."""
    monkeypatch.setattr(push, "PART_SIZE", 5 * 8192)
    monkeypatch.setattr(push, "_SHORTEST_SHIFT", 0)  # every part whole (see test_part_length)
    pgdata = tmp_path / "pgdata"
    for path, content in FILES.items():
        (pgdata / path).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / path).write_bytes(content)
    store = PartStore(builder.archive, "20260101T000000Z", Zstd(3, 1), builder.cipher, 2)
    copy_files(str(pgdata), [SourceFile(path, len(content)) for path, content in FILES.items()], store,
               Progress("test", enabled=False))
    return store.finish(), b"".join(FILES.values())


def frame_version(builder: ChainBuilder, part: BackupPart) -> int:
    return FRAME.unpack_from(builder.archive.get(part.key))[1]


def test_an_unencrypted_backup_stores_xxh3_parts_and_restore_reads_them(tmp_path, monkeypatch):
    builder = ChainBuilder(tmp_path / "archive")
    parts, stream = stored_parts(builder, tmp_path, monkeypatch)
    assert len(parts) == 3
    for part in parts:
        data = unpack.read_part(builder.archive, part)
        assert (part.sha256, part.xxh3_128) == ("", xxhash.xxh3_128_hexdigest(data))
        assert part.digest == f"xxh3_128:{part.xxh3_128}"
        assert frame_version(builder, part) == objects.XXH3_FORMAT_VERSION
    assert b"".join(unpack.read_part(builder.archive, part) for part in parts) == stream


def test_an_encrypted_backup_keeps_sha256_parts(tmp_path, monkeypatch):
    key = tmp_path / "key"
    keys.generate_key_file(key)
    builder = ChainBuilder(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    parts, stream = stored_parts(builder, tmp_path, monkeypatch)
    for part in parts:
        data = unpack.read_part(builder.archive, part)
        assert (part.sha256, part.xxh3_128) == (hashlib.sha256(data).hexdigest(), "")
        assert frame_version(builder, part) == objects.FORMAT_VERSION
    assert b"".join(unpack.read_part(builder.archive, part) for part in parts) == stream


def test_an_xxh3_part_swapped_for_another_is_refused(tmp_path, monkeypatch):
    builder = ChainBuilder(tmp_path / "archive")
    parts, _ = stored_parts(builder, tmp_path, monkeypatch)
    # A valid object of the same size in the wrong place: its own digest checks out.
    target = tmp_path / "archive" / parts[0].key
    target.chmod(0o600)
    target.write_bytes(builder.archive.get(parts[1].key))
    with pytest.raises(RefusedError, match=rf"backup part {parts[0].key} is not the one the manifest lists "
                                           r"\(40960 bytes, xxh3_128:"):
        unpack.read_part(builder.archive, parts[0])


@pytest.mark.parametrize("recorded", ["sha256", "xxh3_128", "none"])
def test_a_manifest_digest_that_is_not_the_headers_is_refused(tmp_path, monkeypatch, recorded):
    builder = ChainBuilder(tmp_path / "archive")
    part = stored_parts(builder, tmp_path, monkeypatch)[0][0]
    data = unpack.read_part(builder.archive, part)
    lie = {"sha256": {"sha256": hashlib.sha256(data).hexdigest(), "xxh3_128": ""},  # the right bytes, other algorithm
           "xxh3_128": {"xxh3_128": xxhash.xxh3_128_hexdigest(data + b"!")},
           "none": {"sha256": "", "xxh3_128": ""}}[recorded]
    with pytest.raises(RefusedError, match="is not the one the manifest lists"):
        unpack.read_part(builder.archive, msgspec.structs.replace(part, **lie))


def test_a_manifest_part_records_only_the_digest_it_has():
    sha = BackupPart(key="backups/B/data/00000000", size=1, stored_size=9, sha256="ab" * 32)
    xxh = BackupPart(key="backups/B/data/00000001", size=1, stored_size=9, sha256="", xxh3_128="cd" * 16)
    # A SHA-256 part is written as before XXH3 digests (no new key), and read back.
    assert msgspec.json.decode(msgspec.json.encode(sha)) == {"key": sha.key, "size": 1, "stored_size": 9,
                                                             "sha256": "ab" * 32}
    assert msgspec.json.decode(msgspec.json.encode(xxh), type=BackupPart) == xxh
    assert (sha.digest, xxh.digest) == (f"sha256:{'ab' * 32}", f"xxh3_128:{'cd' * 16}")


# --- part lengths ------------------------------------------------------------------------


def test_part_length_is_short_at_both_ends_and_whole_between():
    mib, whole = 1 << 20, push.PART_SIZE
    # The first parts ramp up, so that compression starts after 4 MiB of reading.
    assert [push.part_length(n, 10 << 30, 2) for n in range(5)] == [4 * mib, 8 * mib, 16 * mib, whole, whole]
    # The last ones: a worker's share of what is left, never less than 4 MiB.
    assert push.part_length(40, 3 * whole, 2) == whole
    assert push.part_length(40, whole, 2) == 16 * mib
    assert push.part_length(40, 10 * mib, 2) == 5 * mib
    assert push.part_length(40, 6 * mib, 2) == 6 * mib  # no remnant shorter than the shortest after it
    assert push.part_length(40, mib, 2) == mib
    assert push.part_length(40, 10 * mib, 1) == 10 * mib
    # Past the end of the listing (files grew): whole parts again, not a flood of small ones.
    assert push.part_length(40, 0, 2) == push.part_length(40, -mib, 2) == whole


def test_a_copy_cuts_short_parts_at_both_ends_and_keeps_the_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(push, "PART_SIZE", 8 * 8192)  # shortest 1 page
    files = {f"base/5/{16384 + n}": pages(f"rel{n}", 12) for n in range(4)}  # 48 pages in all
    pgdata = tmp_path / "pgdata"
    for path, content in files.items():
        (pgdata / path).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / path).write_bytes(content)
    builder = ChainBuilder(tmp_path / "archive")
    store = PartStore(builder.archive, "20260101T000000Z", Zstd(3, 1), None, 2)
    records, _ = copy_files(str(pgdata), [SourceFile(path, len(content)) for path, content in files.items()],
                            store, Progress("test", enabled=False))
    parts = store.finish()
    # 1, 2, 4 pages, then whole parts of 8 while more than two are left, then halves of
    # what is left, down to the shortest, 1 page, and what is left after that.
    assert [part.size / 8192 for part in parts] == [1, 2, 4, 8, 8, 8, 8, 4.5, 2.25, 1.125, 1.125]
    stream = b"".join(unpack.read_part(builder.archive, part) for part in parts)
    assert stream == b"".join(files.values())
    starts = [sum(part.size for part in parts[:n]) for n in range(len(parts))]
    assert [starts[record.part] + record.offset for record in records] == [n * 12 * 8192 for n in range(4)]


# --- storing beside compressing ----------------------------------------------------------


def test_the_next_part_compresses_while_one_is_stored(tmp_path, monkeypatch):
    # One worker: the first part's put waits until the second part is being compressed,
    # which only a writer that stores beside compressing lets happen.
    builder = ChainBuilder(tmp_path / "archive")
    second_compressing = threading.Event()
    compressing, most = [0], [0]
    encode = objects.encode

    def counted(data, *args, **kwargs):
        compressing[0] += 1
        most[0] = max(most[0], compressing[0])
        if data[:8192] == FILES["base/5/16384"][5 * 8192:6 * 8192]:
            second_compressing.set()
        try:
            return encode(data, *args, **kwargs)
        finally:
            compressing[0] -= 1

    put = builder.archive.put

    def slow_put(key, blob):
        if key.endswith("/00000000"):
            assert second_compressing.wait(10), "the second part did not compress while the first was stored"
        return put(key, blob)

    monkeypatch.setattr(objects, "encode", counted)
    monkeypatch.setattr(builder.archive, "put", slow_put)
    monkeypatch.setattr(push, "PART_SIZE", 5 * 8192)
    monkeypatch.setattr(push, "_SHORTEST_SHIFT", 0)
    pgdata = tmp_path / "pgdata"
    for path, content in FILES.items():
        (pgdata / path).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / path).write_bytes(content)
    store = PartStore(builder.archive, "20260101T000000Z", Zstd(3, 1), None, 1)
    copy_files(str(pgdata), [SourceFile(path, len(content)) for path, content in FILES.items()], store,
               Progress("test", enabled=False))
    parts = store.finish()
    assert b"".join(unpack.read_part(builder.archive, part) for part in parts) == b"".join(FILES.values())
    assert most[0] == 1  # `workers` bounds what compresses at once, not what is stored


def test_a_part_that_cannot_be_stored_fails_the_backup(tmp_path, monkeypatch):
    builder = ChainBuilder(tmp_path / "archive")

    def taken(key, blob):
        raise ObjectExists(key)

    monkeypatch.setattr(builder.archive, "put", taken)
    with pytest.raises(RefusedError, match=r"backups/20260101T000000Z/data/0000000\d already exists"):
        stored_parts(builder, tmp_path, monkeypatch)


# --- the checksum of a relation file that is not whole pages -----------------------------


def encryption_settings(mode: str, tmp_path) -> EncryptionConfig | None:
    if mode == "off":
        return None
    if mode == "key":
        keys.generate_key_file(tmp_path / "key")
        return EncryptionConfig(mode="key", key_file=str(tmp_path / "key"))
    keys.generate_key_pair(tmp_path / "r.key", tmp_path / "r.pub")
    keys.generate_signing_pair(tmp_path / "s.key", tmp_path / "s.pub")
    # The database host's half: it cannot decrypt what it stores.
    return EncryptionConfig(mode="recipient", public_key_file=str(tmp_path / "r.pub"),
                            signing_key_file=str(tmp_path / "s.key"))


@pytest.mark.parametrize("mode", ["off", "key", "recipient"])
def test_a_relation_file_copied_mid_page_has_the_checksum_of_its_bytes(tmp_path, monkeypatch, mode):
    # Its pages were hashed going by, not its bytes: they are read back from the parts
    # already stored (decrypted with the key), or, where the host cannot decrypt them,
    # were hashed going by after all.
    builder = ChainBuilder(tmp_path / "archive", encryption_settings(mode, tmp_path))
    assert PartStore(builder.archive, "x", Zstd(3, 1), builder.cipher, 1).can_read_back == (mode != "recipient")
    monkeypatch.setattr(push, "PART_SIZE", 3 * 8192 + 1000)
    files = {"PG_VERSION": b"15\n", "base/5/16384": pages("rel", 3),
             "base/5/16386": pages("torn", 7) + b"half a page"}  # across three parts
    pgdata = tmp_path / "pgdata"
    for path, content in files.items():
        (pgdata / path).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / path).write_bytes(content)
    store = PartStore(builder.archive, "20260101T000000Z", Zstd(3, 1), builder.cipher, 2)
    records, maps = copy_files(str(pgdata), [SourceFile(path, len(content)) for path, content in files.items()],
                               store, Progress("test", enabled=False))
    store.finish()
    assert [file_map.path for file_map in maps] == ["base/5/16384"]
    checksum = {record.path: record.checksum for record in records}
    assert checksum["base/5/16386"] == checksums.of_bytes(files["base/5/16386"])
    assert checksum["base/5/16384"] == checksums.of_blocks(checksums.packed(checksums.page_checksums(
        files["base/5/16384"])))
    assert checksum["PG_VERSION"] == checksums.of_bytes(b"15\n")


@pytest.mark.parametrize("digest", [objects.SHA256, objects.XXH3_128])
def test_a_part_record_made_of_a_header_has_its_digest(digest):
    blob, header = objects.encode(b"x" * 1000, Zstd(3, 1), digest=digest)
    record = BackupPart.of("backups/B/data/00000000", header, len(blob))
    assert (record.size, record.stored_size, record.digest) == (1000, len(blob), header.digest)

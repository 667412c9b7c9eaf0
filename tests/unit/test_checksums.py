"""Checksums of format_version 2 (catalog/checksums.py): what backup-push computes as it
copies real files into real parts, what the manifest and block maps accept as they are
decoded, and restore reading back every file it wrote and refusing one that is not what
the backup recorded (restore/checked.py), from archives stored through the real object
code (tests/unit/chain_archive.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from pitrkit.backup import incremental, push
from pitrkit.backup.push import PartStore, SourceFile, copy_files
from pitrkit.catalog import blockmap, checksums
from pitrkit.catalog.blockmap import Run
from pitrkit.catalog.documents import BLOCK_SIZE, BackupFile, BackupManifest, BlockFile
from pitrkit.errors import ParentRefused, RefusedError
from pitrkit.ops.verify import verify
from pitrkit.progress import Progress
from pitrkit.restore import checked, unpack
from pitrkit.storage.plugins.compression import Zstd
from tests.unit.chain_archive import ChainBuilder, page, pages
from tests.unit.test_chain_restore import build, restore, restored_files


def independent_block_checksums(data: bytes) -> bytes:
    """The definition, written out: xxh3_64 of each 8 KiB page, 8 bytes little-endian."""
    return b"".join(xxhash.xxh3_64_intdigest(data[n:n + BLOCK_SIZE]).to_bytes(8, "little")
                    for n in range(0, len(data), BLOCK_SIZE))


# --- the definitions ------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 3 * BLOCK_SIZE), max_size=12))
def test_pages_cut_anywhere_have_the_checksums_of_whole_pages(cuts):
    data = pages("cut", 5) + b"tail"
    hasher = checksums.PageHasher()
    start = 0
    for cut in [*cuts, len(data)]:
        hasher.update(memoryview(data)[start:start + cut])
        start += cut
    assert checksums.packed(hasher.checksums) == independent_block_checksums(data[:5 * BLOCK_SIZE])
    assert not hasher.whole_pages  # "tail" is a page cut short


def test_a_files_checksum_is_of_its_block_checksums_or_of_its_bytes():
    data = pages("file", 3)
    assert checksums.of_blocks(independent_block_checksums(data)) == \
        xxhash.xxh3_128(independent_block_checksums(data)).digest()
    assert checksums.of_bytes(data) == xxhash.xxh3_128(data).digest()
    assert len(checksums.of_bytes(b"")) == 16


@pytest.mark.parametrize("length", [1, 8, 15, 17, 32])
def test_a_file_checksum_of_another_length_is_refused_as_it_is_decoded(length):
    checksum = msgspec.json.encode(bytes(length)).decode()
    with pytest.raises(msgspec.ValidationError, match=f"a checksum of {length} bytes, not 16"):
        msgspec.json.decode(f'["base/5/1", 0, 384, 0, 0, 0, {checksum}]', type=BackupFile)
    with pytest.raises(msgspec.ValidationError, match=f"a checksum of {length} bytes, not 16"):
        msgspec.json.decode(f'["base/5/1", 0, 384, 0, 0, 0, {checksum}]', type=BlockFile)


def test_records_without_a_checksum_decode_as_version_1_wrote_them():
    assert msgspec.json.decode('["PG_VERSION", 3, 384, 0, 0, 0]', type=BackupFile).checksum == b""
    assert msgspec.json.decode('["base/5/1", 0, 384, 0, 0, 0]', type=BlockFile).checksum == b""


def test_wal_push_and_fetch_do_not_import_xxhash():
    ran = subprocess.run([sys.executable, "-c", "import sys, pitrkit.wal.push, pitrkit.wal.fetch; "
                          "print('xxhash' in sys.modules)"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert ran.stdout.strip() == "False"


# --- backup-push ---------------------------------------------------------------------------------


def test_copy_files_checksums_relation_files_by_page_across_part_buffers(tmp_path, monkeypatch):
    # Parts of 3 pages and 1000 bytes: pages of every file straddle part buffers.
    monkeypatch.setattr(push, "PART_SIZE", 3 * BLOCK_SIZE + 1000)
    pgdata = tmp_path / "pgdata"
    files = {
        "PG_VERSION": b"15\n",
        "base/5/16384": pages("rel", 7),
        "base/5/16384_vm": pages("vm", 1),
        "base/5/16385": b"",
        "base/5/16386": pages("torn", 2) + b"half a page",  # being extended while copied
        "base/5/pg_filenode.map": b"m" * 512,
    }
    for path, content in files.items():
        (pgdata / path).parent.mkdir(parents=True, exist_ok=True)
        (pgdata / path).write_bytes(content)
    builder = ChainBuilder(tmp_path / "archive")
    store = PartStore(builder.archive, "20260101T000000Z", Zstd(3, 1), None, 2)
    records, maps = copy_files(str(pgdata), [SourceFile(path, len(content)) for path, content in files.items()],
                               store, Progress("test", enabled=False), own=3)
    parts = store.finish()
    assert b"".join(unpack.read_part(builder.archive, part) for part in parts) == b"".join(files.values())

    by_path = {file_map.path: file_map for file_map in maps}
    assert sorted(by_path) == ["base/5/16384", "base/5/16384_vm", "base/5/16385"]
    for path, file_map in by_path.items():
        content = files[path]
        assert file_map.checksums == independent_block_checksums(content)
        assert (file_map.blocks, file_map.sources, file_map.super_blocks) == (len(content) // BLOCK_SIZE, 4, b"")
        assert list(file_map.iter_runs()) == ([Run(0, file_map.blocks, 3, 0)] if content else [])
    for record in records:
        content = files[record.path]
        assert record.checksum == (checksums.of_blocks(independent_block_checksums(content)) if record.path in by_path
                                   else checksums.of_bytes(content)), record.path


# --- restore -------------------------------------------------------------------------------------


def full(builder: ChainBuilder, **lie: object) -> BackupManifest:
    return builder.backup({"PG_VERSION": b"15\n", "base/5/100": pages("100", 20), "base/5/200": b"",
                           "global/pg_control": bytes(range(256)) * 33}, **lie)  # type: ignore[arg-type]


def unpacked(builder: ChainBuilder, root: Path) -> None:
    unpack.unpack(builder.archive, builder.manifests[-1], root, [], 2, lambda _: None)


def test_a_full_backup_has_maps_of_its_relation_files_and_restores_checked(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    manifest = full(builder)
    assert manifest.block_maps and not manifest.block_files
    unpacked(builder, tmp_path / "restored")
    assert restored_files(tmp_path / "restored")["base/5/100"] == pages("100", 20)


def test_a_stream_relation_file_whose_block_differs_from_its_map_is_refused_naming_the_block(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    full(builder, wrong_block=("base/5/100", 13))
    with pytest.raises(checked.NotAsBackedUp, match=r"the restored base/5/100 is not what backup \w+ holds: "
                                                    r"block 13 has checksum [0-9a-f]{16}, its block map records"):
        unpacked(builder, tmp_path / "restored")
    assert not (tmp_path / "restored" / "backup_label").exists()  # never started by mistake


def test_a_stream_file_whose_bytes_differ_from_its_checksum_is_refused_naming_it(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    full(builder, wrong_file="global/pg_control")
    with pytest.raises(RefusedError, match="the restored global/pg_control is not what backup .* holds: the "
                                           "checksum of its bytes is"):
        unpacked(builder, tmp_path / "restored")


def test_a_map_whose_checksums_the_file_checksum_does_not_cover_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    full(builder, wrong_file="base/5/100")
    with pytest.raises(RefusedError, match="block map of base/5/100 does not match its manifest"):
        unpacked(builder, tmp_path / "restored")


def test_a_version_1_backup_restores_without_checksums(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    manifest = full(builder, format_version=1)
    assert not manifest.block_maps and not any(file.checksum for file in manifest.files)
    unpacked(builder, tmp_path / "restored")
    assert restored_files(tmp_path / "restored")["base/5/100"] == pages("100", 20)


def test_a_version_2_manifest_without_a_files_checksum_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    manifest = full(builder)
    stripped = msgspec.structs.replace(manifest, files=[msgspec.structs.replace(file, checksum=b"")
                                                        if file.path == "PG_VERSION" else file
                                                        for file in manifest.files])
    with pytest.raises(RefusedError, match="has format_version 2 but no checksum of PG_VERSION"):
        unpack.check_manifest(stripped)


def test_a_chain_restore_checks_every_block_against_the_targets_maps(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    target = builder.manifests[-1]
    plan, _ = restore(builder, tmp_path / "restored")
    # Every relation file of the target, block-mapped or in its stream, with its checksums.
    assert set(plan.block_checksums) == {path for path in states[-1] if path.startswith("base/")}
    assert plan.block_checksums["base/5/100"] == independent_block_checksums(states[-1]["base/5/100"])
    assert all(len(file.checksum) == 16 for file in [*target.files, *target.block_files])


def test_a_super_block_whose_pages_are_not_the_maps_checksums_is_refused_naming_the_block(tmp_path):
    # The super-block decodes and is the one the map records (its SHA-256): only the
    # block checksums, cumulative over the chain, can tell its pages are not the file's.
    builder = ChainBuilder(tmp_path / "archive")
    state = {"PG_VERSION": b"15\n", "base/5/600": pages("600", 30)}
    builder.backup(state)
    state["base/5/600"] = b"".join(page("600-I1", n) if n in (3, 20) else state["base/5/600"][n * BLOCK_SIZE:
                                                                                              (n + 1) * BLOCK_SIZE]
                                   for n in range(30))
    builder.backup(state, {"base/5/600": {3, 20}}, wrong_block=("base/5/600", 20))
    with pytest.raises(RefusedError, match="the restored base/5/600 is not what backup .* holds: block 20 has"):
        restore(builder, tmp_path / "restored")


def test_differing_blocks_names_every_block_that_differs_and_the_missing_ones(tmp_path):
    data = pages("d", 4)
    path = tmp_path / "file"
    path.write_bytes(data[:BLOCK_SIZE] + page("other", 1) + data[2 * BLOCK_SIZE:3 * BLOCK_SIZE])
    found = [(block, got is None, want is None)
             for block, got, want in checked.differing_blocks(path, independent_block_checksums(data))]
    assert found == [(1, False, False), (3, True, False)]


# --- the parent -----------------------------------------------------------------------------------


def test_an_incremental_on_a_version_1_parent_is_refused_for_a_full_backup(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    manifest = full(builder, format_version=1)
    with pytest.raises(ParentRefused, match=f"backup {manifest.backup_id} was taken by an older pitrkit without "
                                            "block checksums: take a full backup first"):
        incremental.load_parent(builder.archive, manifest.summary())


def test_a_parent_gives_every_relation_files_blocks_with_their_checksums(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    manifest = full(builder)
    parent = incremental.load_parent(builder.archive, manifest.summary())
    base = parent.blocks_of("base/5/100")
    assert base is not None
    assert (base.blocks, base.runs) == (20, blockmap.pack_runs([blockmap.Run(0, 20, 0, 0)]))
    assert base.checksums == independent_block_checksums(pages("100", 20))
    assert parent.blocks_of("PG_VERSION") is None
    assert blockmap.CHECKSUM_SIZE == 8


# --- verify --deep ---------------------------------------------------------------------------------


def test_verify_deep_finds_a_block_map_whose_checksums_the_manifest_does_not_cover(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    full(builder)
    builder.backup({"PG_VERSION": b"15\n", "base/5/100": pages("100", 20), "base/5/200": b"",
                    "global/pg_control": bytes(range(256)) * 33}, {"base/5/100": {4}}, wrong_file="base/5/100")
    bad = builder.manifests[-1].block_maps[0].key
    findings = {finding.key: finding.problem for finding in verify(builder.archive, True, 2).findings}
    assert findings[bad] == (f"its block map of base/5/100 is not of the file backup {builder.manifests[-1].backup_id}"
                             "'s manifest lists (its length or its block checksums)")
    assert builder.manifests[0].block_maps[0].key not in findings  # the full's maps are sound

"""Restoring an incremental backup from its chain (restore/chain.py), from chains stored
in a real file:// archive through the real object code (tests/unit/chain_archive.py):
the restored files are exactly the target's, each block and object read once, and a
chain that lies is refused before anything is written."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from pitrkit.backup.incremental import SuperBlockStore
from pitrkit.catalog.blockmap import SuperBlock, recorded_digest
from pitrkit.catalog.documents import BLOCK_SIZE, BackupManifest, BlockFile
from pitrkit.catalog.maintenance import rebuild
from pitrkit.cli import main
from pitrkit.config import EncryptionConfig
from pitrkit.errors import RefusedError
from pitrkit.ops import verify
from pitrkit.progress import human_bytes
from pitrkit.restore import chain, chain_writes, engine, unpack
from pitrkit.storage import keys, objects
from pitrkit.storage.archive import manifest_key
from pitrkit.storage.plugins.compression import NoCompression
from pitrkit.wal.push import push
from tests.unit.chain_archive import (
    MOST_WINDOW,
    WINDOWED_FILE,
    ChainBuilder,
    CountingArchive,
    page,
    pages,
    small_windows,
)
from tests.unit.segments import segment


def changed(content: bytes, tag: str, blocks: set[int], length: int | None = None) -> bytes:
    """`content` with `blocks` rewritten and cut or extended (new pages) to `length` blocks."""
    count = len(content) // BLOCK_SIZE if length is None else length
    old = [content[n * BLOCK_SIZE:(n + 1) * BLOCK_SIZE] for n in range(len(content) // BLOCK_SIZE)]
    return b"".join(page(tag, n) if n in blocks or n >= len(old) else old[n] for n in range(count))


def build(builder: ChainBuilder) -> list[dict[str, bytes]]:
    """A full and four incrementals; returns each backup's data directory."""
    states = []
    state = {
        "PG_VERSION": b"15\n",
        "global/pg_control": bytes(range(256)) * 33,
        "base/5/100": pages("100-F", 20),
        "base/5/200": pages("200-F", 6),
        "base/5/300": pages("300-F", 10),  # deleted in I2: never restored
        "base/5/500": pages("500-F", 9),
        "base/5/600": pages("600-F", 4),
        "base/5/700": b"",
    }
    builder.backup(state)
    states.append(dict(state))

    # I1: 100 changed and extended; 200 copied whole again; 600 extended by 26 blocks
    # (four super-blocks of its own); 700 an empty block-mapped file.
    state["global/pg_control"] = bytes(range(255, -1, -1)) * 33
    state["base/5/100"] = changed(state["base/5/100"], "100-I1", {2, 3, 10}, 24)
    state["base/5/200"] = pages("200-I1", 6)
    state["base/5/500"] = changed(state["base/5/500"], "500-I1", {1})
    state["base/5/600"] = changed(state["base/5/600"], "600-I1", {0}, 30)
    builder.backup(state, {"base/5/100": {2, 3, 10}, "base/5/500": {1}, "base/5/600": {0}, "base/5/700": set()})
    states.append(dict(state))

    # I2: 300 dropped, 400 created; 200 block-mapped on I1's stream copy; 600's block 6
    # splits I1's first super-block into three runs.
    del state["base/5/300"]
    state["base/5/400"] = pages("400-I2", 3)
    state["base/5/100"] = changed(state["base/5/100"], "100-I2", {3, 15})
    state["base/5/200"] = changed(state["base/5/200"], "200-I2", {1})
    state["base/5/500"] = changed(state["base/5/500"], "500-I2", {2})
    state["base/5/600"] = changed(state["base/5/600"], "600-I2", {6, 12})
    builder.backup(state, {"base/5/100": {3, 15}, "base/5/200": {1}, "base/5/500": {2}, "base/5/600": {6, 12},
                           "base/5/700": set()})
    states.append(dict(state))

    # I3: 100 truncated to 12 blocks; 500 copied whole again; 200 unchanged.
    state["base/5/100"] = changed(state["base/5/100"], "100-I3", {0, 11}, 12)
    state["base/5/400"] = changed(state["base/5/400"], "400-I3", {0})
    state["base/5/500"] = pages("500-I3", 9)
    state["base/5/600"] = changed(state["base/5/600"], "600-I3", {7})
    builder.backup(state, {"base/5/100": {0, 11}, "base/5/200": set(), "base/5/400": {0},
                           "base/5/600": {7}, "base/5/700": set()})
    states.append(dict(state))

    # I4, the target: 500 block-mapped on I3's stream copy, 200 and 600 extended.
    state["PG_VERSION"] = b"15\n"
    state["base/5/100"] = changed(state["base/5/100"], "100-I4", {5})
    state["base/5/200"] = changed(state["base/5/200"], "200-I4", set(), 8)
    state["base/5/500"] = changed(state["base/5/500"], "500-I4", {4})
    state["base/5/600"] = changed(state["base/5/600"], "600-I4", set(), 45)
    builder.backup(state, {"base/5/100": {5}, "base/5/200": set(), "base/5/400": set(), "base/5/500": {4},
                           "base/5/600": set(), "base/5/700": set()})
    states.append(dict(state))
    return states


def restore(builder: ChainBuilder, root: Path, manifests: list[BackupManifest] | None = None,
            workers: int = 3) -> tuple[chain.ChainPlan, int]:
    plan = chain.plan_chain(builder.archive, manifests or builder.manifests, workers)
    written: list[int] = []
    chain_writes.unpack_chain(plan, root, [], workers, written.append)
    return plan, sum(written)


def expected(builder: ChainBuilder, states: list[dict[str, bytes]], number: int) -> dict[str, bytes]:
    """Backup `number`'s data directory as a restore writes it: its files and backup_label."""
    return {**states[number], "backup_label": builder.manifests[number].backup_label.encode()}


def restored_files(root: Path) -> dict[str, bytes]:
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def test_a_chain_restores_the_targets_files_exactly_reading_each_object_and_super_block_once(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    target = builder.manifests[-1]
    archive: CountingArchive = builder.archive
    archive.gets.clear()
    root = tmp_path / "restored"

    plan, written = restore(builder, root)

    assert restored_files(root) == expected(builder, states, -1)
    assert written == target.size == plan.written  # every byte written once
    # Decoded: every part and super-block read, whole (the full's parts hold more
    # than the few blocks taken from them).
    part_bytes = sum(read.part.size for read in plan.stream_reads)
    page_bytes = sum(block.pages * 8192 for read in plan.block_reads for block, _ in read.blocks)
    assert plan.decoded == part_bytes + page_bytes > plan.written
    assert plan.describe().endswith(f"backups: {human_bytes(plan.decoded)} decoded for {human_bytes(target.size)} "
                                    "written")
    assert all((root / record.path).stat().st_mtime == record.mtime for record in target.block_files)
    # Blocks come from every kind of holder: the full's stream (100's block 1), I1's
    # (200), I2's (400) and I3's (500) streams, I1's to I3's super-blocks, the target's own.
    assert {read.source for read in plan.stream_reads} == {0, 1, 2, 3, 4}
    assert {read.source for read in plan.block_reads} == {1, 2, 3, 4}
    # Each object read once; no ranged read overlaps another; the full's parts holding
    # only the dropped file 300 are not read.
    assert [key for key, count in Counter(archive.gets).items() if count > 1] == []
    by_key: dict[str, list[tuple[int, int]]] = {}
    for key, offset, length in archive.ranges:
        by_key.setdefault(key, []).append((offset, offset + length))
    for spans in by_key.values():
        spans.sort()
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
    full = builder.manifests[0]
    slices = unpack.slices_by_part(full.files, full.parts)
    only_300 = [full.parts[n].key for n, pieces in enumerate(slices)
                if pieces and {full.files[piece.file].path for piece in pieces} == {"base/5/300"}]
    assert only_300 and not set(only_300) & set(archive.gets)
    # I1's first super-block of 600 serves three runs of the target's map: read once.
    assert len(archive.ranges) == len(plan.block_reads)
    super_blocks = [(read.key, block.offset) for read in plan.block_reads for block, _ in read.blocks]
    assert len(super_blocks) == len(set(super_blocks))
    assert any(len(pieces) >= 3 for read in plan.block_reads if read.source == 1 for _, pieces in read.blocks)
    # Of the older incrementals, only the map objects of files the target takes
    # super-blocks from are read.
    map_reads = [key for key in archive.gets if "/blockmap/" in key]
    assert set(map_reads) >= {part.key for part in target.block_maps}
    assert len(map_reads) < sum(len(manifest.block_maps) for manifest in builder.manifests)


def test_each_link_restores_its_own_state(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    for number in range(1, len(states)):
        root = tmp_path / f"restored-{number}"
        restore(builder, root, builder.manifests[:number + 1], workers=1 + number % 3)
        assert restored_files(root) == expected(builder, states, number)


def test_large_files_are_written_window_by_window_exactly(tmp_path, monkeypatch):
    small_windows(monkeypatch)
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    for number in range(1, len(states)):
        root = tmp_path / f"restored-{number}"
        plan, written = restore(builder, root, builder.manifests[:number + 1], workers=1 + number % 3)
        assert restored_files(root) == expected(builder, states, number)
        assert written == plan.written

    work = chain_writes.schedule(plan)
    windowed = {index for index, file in enumerate(plan.files)
                if isinstance(file, BlockFile) and file.size >= WINDOWED_FILE}
    assert {plan.files[index].path for index in windowed} == {"base/5/100", "base/5/600"}  # 12 and 45 blocks
    assert {window.file for window in work.windows} == windowed
    # The other reads hold none of their slices; their windows tile them, each written
    # in one piece, none longer than the most a window may be.
    rest = {piece.file for read in work.stream_reads for piece in read.slices} \
        | {piece.file for read in work.block_reads for _, slices in read.blocks for piece in slices}
    assert rest and not rest & windowed
    for index in windowed:
        spans = sorted((window.start, window.end) for window in work.windows if window.file == index)
        assert spans[0][0] == 0 and spans[-1][1] == plan.files[index].size
        assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
        assert all(end - start <= MOST_WINDOW for start, end in spans)
        assert work.pieces[index] == len(spans)
    assert all(window.whole for window in work.windows)
    # Taken in turns: the two files' first windows, then their second ones.
    assert [window.file for window in work.windows[:4]] == sorted(windowed) * 2
    # Cut inside slices: pieces of one slice of the plan end up in two windows.
    assert any(piece.file_offset % BLOCK_SIZE for window in work.windows
               for read in window.block_reads for _, slices in read.blocks for piece in slices)


def test_an_encrypted_chain_restores_exactly(tmp_path):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    builder = ChainBuilder(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)))
    states = build(builder)
    block = next(builder.maps[-1]["base/5/600"].iter_super_blocks())
    stored = (tmp_path / "archive" / builder.manifests[-1].block_parts[block.part].key).read_bytes()
    header, _ = objects.read_header("super-block", stored[block.offset:block.offset + block.length])
    assert header.key_id is not None  # the super-blocks are encrypted, each on its own
    restore(builder, tmp_path / "restored")
    assert restored_files(tmp_path / "restored") == expected(builder, states, -1)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", [objects.XXH3_128, objects.SHA256])  # as backup-push stores them, as it did
def test_a_valid_super_block_put_in_anothers_place_is_refused(tmp_path, digest):
    # Uncompressed, so that a super-block of other pages has exactly the same length.
    builder = ChainBuilder(tmp_path / "archive", compressor=NoCompression(), super_block_digest=digest)
    build(builder)
    target = builder.manifests[-1]
    restore(builder, tmp_path / "before", [*builder.manifests[:-1], target])  # each format restores
    record = next(block for block in builder.maps[1]["base/5/600"].iter_super_blocks() if block.pages == 8)
    blob, header = objects.encode(pages("impostor", 8), NoCompression(), digest=digest)
    assert header.digest.startswith(digest)
    assert len(blob) == record.length
    path = tmp_path / "archive" / builder.manifests[1].block_parts[record.part].key
    data = bytearray(path.read_bytes())
    data[record.offset:record.offset + record.length] = blob
    path.write_bytes(bytes(data))
    with pytest.raises(RefusedError, match=r"super-block at offset \d+ of .* is not the one the block map records"):
        restore(builder, tmp_path / "restored", [*builder.manifests[:-1], target])


@pytest.mark.parametrize(("block", "refusal"), [
    (1, "from backup 20260101T000000Z, whose copy has 32768 bytes"),  # the full's stream copy of 4 blocks
    (4, "from backup 20260102T000000Z, which stored 27 of it"),  # I1's super-blocks
])
def test_a_map_pointing_past_what_a_source_stored_is_refused(tmp_path, block, refusal):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)

    def forge(path: str, sources: list[int], positions: list[int]) -> None:
        if path == "base/5/600":
            positions[block] = 400

    builder.backup(build_states_last(builder), {"base/5/600": set()}, tamper=forge)
    with pytest.raises(RefusedError, match=refusal):
        chain.plan_chain(builder.archive, builder.manifests)


def build_states_last(builder: ChainBuilder) -> dict[str, bytes]:
    """The newest backup's data directory, read back through a restore."""
    root = builder.root.parent / f"state-{len(builder.manifests)}"
    restore(builder, root)
    found = restored_files(root)
    del found["backup_label"]
    return found


def test_a_missing_link_is_refused_naming_it(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    gone = builder.manifests[2].backup_id
    (tmp_path / "archive" / manifest_key(gone)).unlink()
    with pytest.raises(RefusedError, match=f"its link {gone} is missing from the archive"):
        engine.fetch_chain(builder.archive, builder.manifests[-1])


def test_links_fetched_are_the_chain(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    assert engine.fetch_chain(builder.archive, builder.manifests[-1]) == builder.manifests[:-1]


def test_manifests_that_do_not_make_one_chain_are_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    skipped = [*builder.manifests[:2], *builder.manifests[3:]]
    with pytest.raises(RefusedError, match="do not make one chain"):
        chain.plan_chain(builder.archive, skipped)


def test_a_format_this_pitrkit_does_not_know_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    builder.backup(build_states_last(builder), {"base/5/100": set()}, format_version=3)
    with pytest.raises(RefusedError, match="format_version 3; this pitrkit reads up to 2"):
        chain.plan_chain(builder.archive, builder.manifests)


def test_a_full_restore_refuses_an_incremental_manifest(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    with pytest.raises(RefusedError, match="restored with its chain"):
        unpack.unpack(builder.archive, builder.manifests[-1], tmp_path / "restored", [], 2, lambda _: None)


# --- the restore command -------------------------------------------------------------------------


def test_restore_of_an_incremental_says_its_chain_and_writes_the_target(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # restore refuses root; the files are this user's anyway
    builder = ChainBuilder(tmp_path / "archive")
    states = build(builder)
    wal = tmp_path / "wal" / "000000010000000000000002"
    wal.parent.mkdir()
    wal.write_bytes(segment(2))
    push(builder.archive, wal)
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n')
    root = tmp_path / "restored"
    assert main(["--config", str(config), "restore", "--latest", "--target-dir", str(root)]) == 0
    out = capsys.readouterr().out
    target = builder.manifests[-1]
    assert (f"restoring backup {target.backup_id}: incremental on {target.parent}, chain of 5 (full backup "
            f"{target.chain[0]} first)") in out
    found = restored_files(root)
    assert {path: found[path] for path in states[-1]} == states[-1]
    assert not any(path.startswith("base/5/300") for path in found)


def test_a_link_whose_manifest_is_not_the_one_the_catalog_lists_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    rebuild(builder.archive)
    link = builder.manifests[1]
    builder.archive.put_document(manifest_key(link.backup_id), msgspec.structs.replace(link, label="other"),
                                 overwrite=True)
    with pytest.raises(RefusedError, match=f"its link {link.backup_id}'s manifest is not the one .* label"):
        engine.fetch_chain(builder.archive, builder.manifests[-1])


def test_a_missing_block_part_is_refused_naming_it(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    gone = builder.manifests[3].block_parts[0].key
    (tmp_path / "archive" / gone).unlink()
    with pytest.raises(RefusedError, match=f"block part {gone} is missing"):
        restore(builder, tmp_path / "restored")


def test_a_block_part_cut_short_in_storage_is_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    path = tmp_path / "archive" / builder.manifests[1].block_parts[0].key
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RefusedError, match=f"{builder.manifests[1].block_parts[0].key} ends before byte"):
        restore(builder, tmp_path / "restored")


def test_block_objects_outside_the_backup_and_block_files_without_a_parent_are_refused(tmp_path):
    builder = ChainBuilder(tmp_path / "archive")
    build(builder)
    target = builder.manifests[-1]
    older = builder.manifests[1]
    with pytest.raises(unpack.CorruptManifest, match="lists block part .*, which is not an object of that backup"):
        unpack.check_manifest(msgspec.structs.replace(target, block_parts=[*older.block_parts]))
    with pytest.raises(unpack.CorruptManifest, match="lists block map .*, which is not an object of that backup"):
        unpack.check_manifest(msgspec.structs.replace(target, block_maps=[*older.block_maps]))
    with pytest.raises(unpack.CorruptManifest, match="names no parent"):
        unpack.check_manifest(msgspec.structs.replace(target, parent=None, chain=[]))
    unpack.check_manifest(target)


@pytest.mark.parametrize("encrypted", [False, True])
def test_backup_push_stores_super_blocks_with_xxh3_unless_encrypted(tmp_path, encrypted):
    key = tmp_path / "archive.key"
    keys.generate_key_file(key)
    builder = ChainBuilder(tmp_path / "archive", EncryptionConfig(mode="key", key_file=str(key)) if encrypted else None)
    store = SuperBlockStore(builder.archive, "20260101T000000Z", builder.compressor, builder.cipher, 1)
    stored: list[SuperBlock] = []
    store.submit(pages("s", 8), 0, 8, stored.append)
    [part] = store.finish()
    blob = builder.archive.get(part.key)
    header, _ = objects.read_header(part.key, blob)
    assert header.digest.startswith(objects.SHA256 if encrypted else objects.XXH3_128)
    assert stored == [SuperBlock(0, 0, len(blob), 0, 8, recorded_digest(header))]
    assert chain_writes.super_block(builder.archive, part.key, stored[0], blob) == pages("s", 8)


def test_a_chain_begun_with_sha256_super_blocks_restores_with_xxh3_ones_after_it(tmp_path):
    builder = ChainBuilder(tmp_path / "archive", super_block_digest=objects.SHA256)  # as before XXH3-128 ones
    build(builder)
    builder.super_block_digest = objects.XXH3_128
    state = build_states_last(builder) | {"base/5/500": pages("500-I5", 9)}
    # The others block-mapped, storing nothing: their blocks come from the older links.
    builder.backup(state, {path: set() for path in state if path.startswith("base/")} | {"base/5/500": set(range(9))})
    plan, _ = restore(builder, tmp_path / "restored")
    read = {(source, objects.read_header(key, builder.archive.get_range(key, block.offset, block.length))[0]
             .digest.split(":")[0]) for source, key, block in
            ((read.source, read.key, block) for read in plan.block_reads for block, _ in read.blocks)}
    assert {digest for _, digest in read} == {objects.SHA256, objects.XXH3_128}
    assert restored_files(tmp_path / "restored") == {**state, "backup_label": builder.manifests[-1].backup_label
                                                     .encode()}
    wal = tmp_path / "wal" / "000000010000000000000002"
    wal.parent.mkdir()
    wal.write_bytes(segment(2))
    push(builder.archive, wal)
    rebuild(builder.archive)
    report = verify.verify(builder.archive, True, workers=2)  # --deep: every super-block of both kinds checked
    assert report.findings == [] and report.super_blocks == sum(
        1 for maps in builder.maps for file_map in maps.values() for _ in file_map.iter_super_blocks())

"""Block maps (catalog/blockmap.py): run-length encoding round-trips, and a map from
storage that does not describe its file is refused as it is decoded."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from pitrkit.catalog import blockmap
from pitrkit.catalog.blockmap import FileMap, Run, SuperBlock, SuperBlockIndex
from pitrkit.storage import objects
from pitrkit.storage.plugins.compression import NoCompression

SHA = bytes(32)


def file_map(runs: list[Run], super_blocks: list[SuperBlock] = (), sources: int = 3, blocks: int | None = None
             ) -> FileMap:
    blocks = sum(run.length for run in runs) if blocks is None else blocks
    return FileMap("base/5/16384", blocks, sources, blockmap.pack_runs(runs),
                   blockmap.pack_super_blocks(list(super_blocks)), bytes(8 * blocks))


def decoded(made: FileMap) -> FileMap:
    data = blockmap.encode_block_map(blockmap.BlockMapDocument(files=[made]))
    return blockmap.decode_block_map(data).files[0]


def stored(runs: list[Run], super_blocks: list[SuperBlock] = (), sources: int = 3, blocks: int | None = None,
           checksums: bytes | None = None) -> bytes:
    """A block map as anyone with write access to the storage could store it."""
    blocks = sum(run.length for run in runs) if blocks is None else blocks
    checksums = bytes(8 * blocks) if checksums is None else checksums
    return msgspec.msgpack.encode({"files": [["base/5/16384", blocks, sources, blockmap.pack_runs(runs),
                                              blockmap.pack_super_blocks(list(super_blocks)), checksums]]})


@given(st.lists(st.integers(0, 2), max_size=200))
def test_runs_round_trip(sources):
    positions, stored = [], {0: 0, 1: 0, 2: 0}
    for source in sources:
        positions.append(stored[source])
        stored[source] += 1
    runs = blockmap.block_runs(sources, positions)
    assert sum(run.length for run in runs) == len(sources)
    made = file_map(runs, [SuperBlock(0, 0, 100, 0, stored[2], SHA)] if stored[2] else [])
    assert blockmap.expand(decoded(made)) == (sources, positions)


def test_a_run_of_one_source_is_one_record():
    assert blockmap.block_runs([0] * 5, list(range(5))) == [Run(0, 5, 0, 0)]
    assert blockmap.block_runs([0, 0, 1, 0], [0, 1, 0, 3]) == [Run(0, 2, 0, 0), Run(2, 1, 1, 0), Run(3, 1, 0, 3)]


@pytest.mark.parametrize(("runs", "super_blocks", "why"), [
    ([Run(0, 2, 0, 0), Run(3, 1, 0, 3)], [], "does not follow block 2"),
    ([Run(0, 2, 0, 0), Run(1, 2, 0, 1)], [], "does not follow block 2"),
    ([Run(0, 2, 3, 0)], [], "does not follow block 0"),  # source past the chain
    ([Run(0, 2, 2, 0)], [SuperBlock(0, 0, 10, 0, 1, SHA)], "points past the 1 blocks"),
    ([Run(0, 2, 2, 0)], [SuperBlock(0, 0, 10, 1, 2, SHA)], "does not follow position 0"),
    ([Run(0, 2, 2, 0)], [SuperBlock(0, 0, 0, 0, 2, SHA)], "does not follow position 0"),
    # No super-blocks: a stream copy's map, whose own blocks are at their block numbers.
    ([Run(0, 2, 0, 0), Run(2, 2, 2, 0)], [], "points past"),
])
def test_a_map_that_does_not_describe_its_file_is_refused(runs, super_blocks, why):
    with pytest.raises(msgspec.ValidationError, match=why):
        blockmap.decode_block_map(stored(runs, super_blocks))


def test_runs_must_end_at_the_files_length():
    with pytest.raises(msgspec.ValidationError, match="the file has 3"):
        blockmap.decode_block_map(stored([Run(0, 2, 0, 0)], blocks=3))


def test_the_super_block_holding_a_position():
    super_blocks = [SuperBlock(0, 0, 9, 0, 8, SHA), SuperBlock(0, 9, 9, 8, 8, SHA), SuperBlock(1, 0, 9, 16, 4, SHA)]
    index = SuperBlockIndex(file_map([Run(0, 20, 2, 0)], super_blocks))
    assert [index.holding(position).first for position in (0, 7, 8, 15, 16, 19)] == [0, 0, 8, 8, 16, 16]


def test_a_stream_copys_map_has_its_own_blocks_at_their_numbers():
    made = decoded(file_map([Run(0, 3, 0, 0), Run(3, 4, 2, 3)]))
    assert blockmap.expand(made) == ([0, 0, 0, 2, 2, 2, 2], list(range(7)))


@pytest.mark.parametrize("length", [0, 8, 23, 25, 32])
def test_checksums_must_be_eight_bytes_per_block(length):
    with pytest.raises(msgspec.ValidationError, match=f"3 blocks with {length} bytes of checksums"):
        blockmap.decode_block_map(stored([Run(0, 3, 0, 0)], checksums=bytes(length)))
    assert decoded(file_map([Run(0, 3, 0, 0)])).checksums == bytes(24)


def test_a_recorded_digest_is_the_headers_and_never_passes_for_the_other_algorithms():
    data = b"p" * 8192
    _, sha256 = objects.encode(data, NoCompression())
    _, xxh3 = objects.encode(data, NoCompression(), digest=objects.XXH3_128)
    assert blockmap.recorded_digest(sha256) == hashlib.sha256(data).digest()
    assert blockmap.recorded_digest(xxh3) == xxhash.xxh3_128_digest(data) + bytes(16)
    assert blockmap.digest_text(blockmap.recorded_digest(sha256)) == \
        f"sha256 {hashlib.sha256(data).hexdigest()[:16]}..."
    assert blockmap.digest_text(blockmap.recorded_digest(xxh3)) == \
        f"xxh3_128 {xxhash.xxh3_128_hexdigest(data)[:16]}..."

"""Block maps (catalog/blockmap.py): run-length encoding round-trips, and a map from
storage that does not describe its file is refused as it is decoded."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from unittest import mock

import msgspec
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from pitrkit.catalog import blockmap
from pitrkit.catalog.blockmap import FileMap, Run, SuperBlock
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


def test_a_super_block_by_number_and_all_of_them_as_a_table():
    super_blocks = [SuperBlock(0, 0, 9, 0, 8, SHA), SuperBlock(0, 9, 9, 8, 8, SHA), SuperBlock(1, 0, 9, 16, 4, SHA)]
    made = decoded(file_map([Run(0, 20, 2, 0)], super_blocks))
    assert [made.super_block(number) for number in range(3)] == super_blocks
    table = made.super_block_table()
    assert [tuple(int(record[field]) for field in ("part", "offset", "length", "first", "pages")) for record in table] \
        == [block[:5] for block in super_blocks]


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


# Values a stranger's map may hold in any field: edges of what the checks allow.
_EDGES = [0, 1, 2, 3, blockmap.BLOCKS_PER_SEGMENT, blockmap.BLOCKS_PER_SEGMENT + 1, 2 * blockmap.MAX_PART_SIZE,
          2 * blockmap.MAX_PART_SIZE + 1, 2**32 - 1]


@st.composite
def maps_maybe_broken(draw) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], int, int]:
    """(runs, super-blocks, sources, blocks) of a sound map, then perhaps one field of a
    record, or the length, set to an edge value."""
    sources = draw(st.integers(1, 4))
    own = sources - 1
    blocks: list[list[int]] = []
    if draw(st.booleans()):  # stored super-blocks, not a stream copy's map
        for _ in range(draw(st.integers(1, 4))):
            blocks.append([draw(st.integers(0, 3)), draw(st.integers(0, 10**6)), draw(st.integers(1, 10**5)),
                           sum(block[4] for block in blocks), draw(st.integers(1, 9))])
    stored = sum(block[4] for block in blocks)
    runs: list[list[int]] = []
    for _ in range(draw(st.integers(0, 12))):
        first = sum(run[1] for run in runs)
        length = draw(st.integers(1, 6))
        source = draw(st.integers(0, own))
        if source == own:
            start = first if not blocks else draw(st.integers(0, max(0, stored - length)))
        else:
            start = draw(st.integers(0, 1000))
        runs.append([first, length, source, start])
    length = sum(run[1] for run in runs)
    if draw(st.booleans()):
        records = draw(st.sampled_from([records for records in (runs, blocks) if records] or [[]]))
        if records:
            record = draw(st.sampled_from(records))
            record[draw(st.integers(0, len(record) - 1))] = draw(st.sampled_from(_EDGES))
        else:
            length = draw(st.sampled_from(_EDGES))
    return [tuple(run) for run in runs], [tuple(block) for block in blocks], sources, length


def checked_both_ways(drawn: tuple[list[tuple[int, ...]], list[tuple[int, ...]], int, int]) -> tuple[bool, bool]:
    """A map's records (runs, super-blocks, sources, blocks) found sound by numpy's bulk
    check, and by FileMap's loops alone."""
    runs, super_blocks, sources, length = drawn
    made = {"path": "base/5/16384", "blocks": length, "sources": sources,
            "runs": b"".join(blockmap._RUN.pack(*run) for run in runs),
            "super_blocks": b"".join(blockmap._SUPER_BLOCK.pack(*block, SHA) for block in super_blocks),
            "checksums": bytes(8 * length) if length < 10**6 else b""}
    try:
        with mock.patch.object(blockmap, "_CHECKED_IN_BULK", 10**9):  # the loops alone
            FileMap(**made)
        one_by_one = True
    except ValueError:
        one_by_one = False
    return blockmap._records_sound(SimpleNamespace(**made)), one_by_one  # type: ignore[arg-type]


@settings(max_examples=300)
@given(maps_maybe_broken())
def test_a_large_maps_records_are_checked_in_bulk_exactly_as_one_by_one(drawn):
    bulk, one_by_one = checked_both_ways(drawn)
    assert bulk == one_by_one


def test_a_large_map_with_a_bad_record_is_refused_by_name():
    runs = [Run(block, 1, block % 2, block) for block in range(400)] + [Run(401, 1, 0, 0)]
    assert len(runs) >= blockmap._CHECKED_IN_BULK
    with pytest.raises(msgspec.ValidationError, match=r"run \(401, 1, 0, 0\) does not follow block 400"):
        blockmap.decode_block_map(stored(runs))
    blockmap.decode_block_map(stored(runs[:-1]))


_SOUND_STORED = ([(0, 2, 0, 0), (2, 3, 2, 0), (5, 1, 1, 7), (6, 2, 2, 3)],
                 [(0, 10, 50, 0, 2), (0, 60, 40, 2, 3)], 3, 8)
_SOUND_COPIED = ([(0, 2, 0, 0), (2, 3, 2, 2), (5, 1, 1, 7), (6, 2, 2, 6)], [], 3, 8)
# Its own blocks all in the first super-block: the last one's fields change nothing else.
_SOUND_FIRST = ([(0, 2, 0, 0), (2, 2, 2, 0), (4, 4, 1, 0)], [(0, 10, 50, 0, 2), (0, 60, 40, 2, 3)], 3, 8)


def test_records_no_single_field_can_break_are_checked_in_bulk_as_one_by_one():
    for case in [([(0, 2, 0, 0), (2, 0, 1, 0), (2, 6, 2, 0)], [(0, 0, 9, 0, 6)], 3, 8),  # a run of no blocks
                 ([(0, 8, 0, 0)], [(0, 0, 9, 0, 0)], 3, 8)]:  # a super-block of no pages
        assert checked_both_ways(case) == (False, False)


@pytest.mark.parametrize("sound", [_SOUND_STORED, _SOUND_COPIED, _SOUND_FIRST], ids=["stored", "copied", "first"])
def test_every_field_of_a_map_at_every_edge_is_checked_in_bulk_as_one_by_one(sound):
    runs, super_blocks, sources, length = sound
    cases = [(runs, super_blocks, sources, value) for value in _EDGES]
    for kind, records in (("runs", runs), ("super_blocks", super_blocks)):
        for number in (0, len(records) - 1) if records else ():
            for field in range(len(records[number])):
                for value in _EDGES:
                    changed = [list(record) for record in records]
                    changed[number][field] = value
                    changed = [tuple(record) for record in changed]
                    cases.append((changed, super_blocks, sources, length) if kind == "runs"
                                 else (runs, changed, sources, length))
    verdicts = [checked_both_ways(case) for case in cases]
    assert all(bulk == one_by_one for bulk, one_by_one in verdicts)
    assert {one_by_one for _, one_by_one in verdicts} == {True, False}

"""How backup-push --incremental reads a block-mapped file (backup/incremental.py): the
changed pages read by preadv over short gaps into one buffer, the file's runs made span
by span from the parent's, and the length recorded when the file is truncated under the
copy. Real files on a temporary directory."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from pitrkit.backup import incremental
from pitrkit.backup.incremental import Base, read_blocks
from pitrkit.catalog import blockmap
from pitrkit.catalog.blockmap import Run
from pitrkit.catalog.documents import BLOCK_SIZE


def numbered_pages(count: int) -> bytes:
    """`count` pages, each filled with its own block number."""
    return b"".join(number.to_bytes(4, "little") * (BLOCK_SIZE // 4) for number in range(count))


def page_numbers(data: memoryview) -> list[int]:
    return [int.from_bytes(data[start:start + 4], "little") for start in range(0, len(data), BLOCK_SIZE)]


def test_the_wanted_pages_are_read_in_order_across_gaps_and_runs(tmp_path):
    path = tmp_path / "16384"
    path.write_bytes(numbered_pages(200))
    wanted = [0, 1, 2, 4, 9, 10, 30, 31, 32, 33, 150, 199]  # gaps of 1, 4, 19 and more
    fd = os.open(path, os.O_RDONLY)
    try:
        read, data = read_blocks(fd, wanted)
    finally:
        os.close(fd)
    assert read == wanted
    assert page_numbers(data) == wanted


def test_more_runs_than_one_call_takes_are_read_in_several(tmp_path):
    path = tmp_path / "16384"
    path.write_bytes(numbered_pages(6000))
    wanted = list(range(0, 6000, 2))  # 3,000 runs a gap of one apart: over 1,024 buffers
    fd = os.open(path, os.O_RDONLY)
    try:
        read, data = read_blocks(fd, wanted)
    finally:
        os.close(fd)
    assert read == wanted
    assert page_numbers(data) == wanted


def test_a_file_shorter_than_the_wanted_blocks_gives_the_pages_it_has(tmp_path):
    path = tmp_path / "16384"
    path.write_bytes(numbered_pages(40) + b"\x01" * 100)  # truncated under the copy, mid-page
    fd = os.open(path, os.O_RDONLY)
    try:
        read, data = read_blocks(fd, [3, 5, 38, 39, 40, 41, 60])
    finally:
        os.close(fd)
    assert read == [3, 5, 38, 39]
    assert page_numbers(data) == [3, 5, 38, 39]


def block_by_block(base: Base, blocks: int, stored: list[int], own: int) -> bytes:
    """The runs as an independent, per-block computation makes them."""
    parents = [Run(*fields) for fields in blockmap.unpack_runs(base.runs)]
    sources = [run.source for run in parents for _ in range(run.length)]
    positions = [run.position + offset for run in parents for offset in range(run.length)]
    sources = sources[:blocks] + [own] * max(0, blocks - len(sources))
    positions = positions[:blocks] + [0] * max(0, blocks - len(positions))
    for position, block in enumerate(stored):
        sources[block], positions[block] = own, position
    return blockmap.pack_runs(blockmap.block_runs(sources, positions))


@st.composite
def parents_and_changes(draw: st.DrawFn) -> tuple[Base, int, list[int]]:
    parent_blocks = draw(st.integers(0, 60))
    sources = draw(st.lists(st.integers(0, 2), min_size=parent_blocks, max_size=parent_blocks))
    positions = [draw(st.integers(0, 3)) + block for block in range(parent_blocks)]
    base = Base(parent_blocks, blockmap.pack_runs(blockmap.block_runs(sources, positions)), bytes(8 * parent_blocks))
    blocks = draw(st.integers(0, 80))
    # Every block past the parent's length is stored, as copy_block_file stores it.
    changed = draw(st.sets(st.integers(0, max(0, min(blocks, parent_blocks) - 1)))) if blocks else set()
    stored = sorted({block for block in changed if block < blocks} | set(range(min(parent_blocks, blocks), blocks)))
    return base, blocks, stored


@given(parents_and_changes())
def test_runs_made_span_by_span_are_the_runs_made_block_by_block(case):
    base, blocks, stored = case
    assert incremental._runs(base, blocks, stored, 3) == block_by_block(base, blocks, stored, 3)


def test_the_runs_of_an_unchanged_file_are_the_parents():
    base = Base(10, blockmap.pack_runs([Run(0, 4, 0, 0), Run(4, 6, 1, 2)]), bytes(80))
    assert incremental._runs(base, 10, [], 2) == base.runs
    assert incremental._runs(base, 6, [], 2) == blockmap.pack_runs([Run(0, 4, 0, 0), Run(4, 2, 1, 2)])


def test_the_length_recorded_follows_what_the_copy_saw():
    # Nothing happened: the length listed.
    assert incremental._length(100, 100, [3, 4, *range(90, 100)], 90) == 100
    # Grown meanwhile: the new blocks are not copied (replay writes them).
    assert incremental._length(100, 120, [3, *range(90, 100)], 90) == 100
    # Truncated after the copy: shorter, but never below a page stored.
    assert incremental._length(100, 50, [3, 60], 100) == 61
    assert incremental._length(100, 50, [3, 40], 100) == 50
    # The reads ran into a truncation at 95 and the file grew again: blocks 95 on were
    # never read, and the parent does not have them.
    assert incremental._length(100, 110, [3, *range(90, 95)], 90) == 95

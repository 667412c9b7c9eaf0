"""What a restore would decode of a block-mapped file (backup/restore_cost.py), and the
incremental plan that copies a file whole when that passes the bound
(backup/incremental.plan_file)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pitrkit.backup import incremental
from pitrkit.backup.changes import ForkChanges, RelationFork, Summarized
from pitrkit.backup.restore_cost import DECODE_BOUND, decoded_pages
from pitrkit.catalog import blockmap
from pitrkit.catalog.blockmap import SUPER_BLOCK_PAGES
from pitrkit.catalog.documents import BLOCK_SIZE
from pitrkit.postgres.wal import Lsn


def runs_of(sources: list[int], positions: list[int]) -> bytes:
    return blockmap.pack_runs(blockmap.block_runs(sources, positions))


def whole_copy(blocks: int, source: int = 0) -> bytes:
    """The map of a file a backup copied whole: one run, position = block number."""
    return runs_of([source] * blocks, list(range(blocks)))


def interleaved(blocks: int) -> bytes:
    """The map of a file whose even pages an incremental (source 1) holds, in block
    order, and whose odd ones the full (source 0) does."""
    return runs_of([1 - block % 2 for block in range(blocks)],
                   [block // 2 if block % 2 == 0 else block for block in range(blocks)])


def test_pages_kept_from_a_whole_copy_cost_every_unit_they_touch():
    # Two pages changed in a 1,000-page file: the other 998 lie in all 32 units of the
    # old copy (the last holds 1000 - 31 * 32 = 8 pages).
    assert decoded_pages(whole_copy(1000), 1000, [5, 500], 2) == 2 + 1000


def test_one_kept_page_costs_its_whole_unit():
    changed = [block for block in range(100) if block != 70]
    assert decoded_pages(whole_copy(100), 100, changed, 99) == 99 + SUPER_BLOCK_PAGES


def test_a_units_size_ends_where_its_source_holds_no_more_of_the_file():
    # Source 1 stored 5 pages of the file (positions 0-4): its unit is 5 pages, not 32.
    sources = [1 if block in (3, 9, 20, 21, 40) else 0 for block in range(64)]
    positions = [[3, 9, 20, 21, 40].index(block) if source else block for block, source in enumerate(sources)]
    assert decoded_pages(runs_of(sources, positions), 64, [], 0) == 5 + 64


def test_nothing_kept_costs_only_what_is_stored():
    assert decoded_pages(whole_copy(64), 64, list(range(64)), 64) == 64
    assert decoded_pages(whole_copy(64), 0, [], 10) == 10  # the parent's copy is past its limit


def test_interleaved_links_cost_each_links_units():
    # Even pages from an incremental (source 1, its 32 stored pages: one super-block),
    # odd ones from the full: unchanged, the file decodes 32 + 64 pages for its 64.
    assert decoded_pages(interleaved(64), 64, [], 0) == 32 + 64


def brute_force(sources: list[int], positions: list[int], kept_end: int, changed: list[int], stored: int) -> int:
    """Page by page: each kept page's (source, unit), each unit counted once at its size."""
    held: dict[int, int] = {}
    for source, position in zip(sources, positions, strict=True):
        held[source] = max(held.get(source, 0), position + 1)
    stored_blocks = set(changed)
    units = {(sources[block], positions[block] // SUPER_BLOCK_PAGES)
             for block in range(kept_end) if block not in stored_blocks}
    return stored + sum(min(SUPER_BLOCK_PAGES, held[source] - unit * SUPER_BLOCK_PAGES) for source, unit in units)


@st.composite
def maps_and_changes(draw: st.DrawFn) -> tuple[list[int], list[int], int, list[int]]:
    blocks = draw(st.integers(1, 300))
    sources = draw(st.lists(st.integers(0, 4), min_size=blocks, max_size=blocks))
    seen: dict[int, int] = {}
    positions = []
    for source in sources:  # each source's pages in block order, as backup-push stores them
        positions.append(seen.get(source, 0))
        seen[source] = positions[-1] + 1
    positions = [block if source == 0 else position for block, (source, position) in
                 enumerate(zip(sources, positions, strict=True))]  # source 0: a whole copy
    kept_end = draw(st.integers(0, blocks))
    changed = sorted(draw(st.sets(st.integers(0, blocks + 20))))
    return sources, positions, kept_end, changed


@given(maps_and_changes())
def test_the_estimate_is_the_page_by_page_count(case):
    sources, positions, kept_end, changed = case
    stored = len(changed)
    assert decoded_pages(runs_of(sources, positions), kept_end, changed, stored) == \
        brute_force(sources, positions, kept_end, changed, stored)


# --- the plan ---------------------------------------------------------------------------------

PATH = "base/5/16384"
FORK = RelationFork(1663, 5, 16384, 0)


def parent_with(runs: bytes, blocks: int) -> incremental.Parent:
    file_map = blockmap.FileMap(path=PATH, blocks=blocks, sources=3, runs=runs, super_blocks=b"",
                                checksums=bytes(8 * blocks))
    return incremental.Parent(manifest=None, stream={}, maps={PATH: file_map})  # type: ignore[arg-type]


def plan(parent: incremental.Parent, blocks: int, changed: list[int]) -> incremental.BlockPlan | None:
    summarized = Summarized(forks={FORK: ForkChanges(changed, None)}, new_databases=set(), summary_files=1)
    changes = incremental.Changes(summarized, Lsn(0), False)
    return incremental.plan_file(PATH, blocks * BLOCK_SIZE, parent, changes, set())


def test_a_file_changed_here_and_there_is_block_mapped():
    parent = parent_with(whole_copy(4096), 4096)
    assert plan(parent, 4096, list(range(0, 4096, 20))) is not None  # 5 % changed: decodes 1.05 times


def test_a_file_changed_all_over_is_copied_whole():
    parent = parent_with(whole_copy(4096), 4096)
    changed = list(range(0, 4096, 3))  # a third changed: 1.33 times, past the bound
    assert len(changed) + 4096 > DECODE_BOUND * 4096
    assert plan(parent, 4096, changed) is None


def test_a_chain_that_scattered_a_file_is_ended_by_a_whole_copy():
    # An incremental (source 1) holds every other page of the full's file: its next
    # incremental, changing only 5 % more, would decode 1.5 times the file's pages.
    parent = parent_with(interleaved(4096), 4096)
    assert plan(parent, 4096, list(range(0, 4096, 20))) is None


def scanned_plan(parent: incremental.Parent, blocks: int) -> incremental.BlockPlan | None:
    changes = incremental.Changes(None, Lsn(0), False)
    return incremental.plan_file(PATH, blocks * BLOCK_SIZE, parent, changes, set())


def test_without_summaries_the_parents_map_is_what_is_bounded():
    assert scanned_plan(parent_with(whole_copy(4096), 4096), 4096) is not None
    assert scanned_plan(parent_with(interleaved(4096), 4096), 4096) is None

"""What a restore would decode of a block-mapped file: the cost a chain adds to restoring
it, which `backup-push --incremental` bounds (backup/incremental.py copies a file whole
when its map would cost a restore more than `DECODE_BOUND` times the file).

A restore fetches each block once, from the backup its map names, but decodes whole
units: an incremental's super-block (up to SUPER_BLOCK_PAGES pages of one file) or the
stream part of a backup that copied the file whole. A page kept from an older backup
costs the unit it lies in, however few of that unit's pages are still the newest. Where
every link changes a large share of a file at random, the older links' units are mostly
superseded yet decoded for the rest: with 46 % of pgbench_accounts' pages changed per
link (pgbench scale 150, 1 % of the rows updated), a full and six block-mapped
incrementals decoded 5.9 GiB to write 2.3 GiB, and restored in 1.5 to 1.9 times a full
backup's time. Copied whole, such a file is restored from its newest copy alone.

The estimate counts a kept page's unit in groups of SUPER_BLOCK_PAGES positions of its
source: exact for an incremental's super-blocks as backup-push writes them, and a lower
bound for a stream part (which restore decodes in pieces of up to 32 MiB), so a file is
never copied whole for a cost it would not have.
"""

from __future__ import annotations

from collections.abc import Sequence

from pitrkit.catalog.blockmap import SUPER_BLOCK_PAGES, run_table

# A block-mapped file whose restore would decode more than this many times its pages is
# copied whole. A chain's restore is to take at most 1.1 times a full backup's; decoding
# is a fifth to a third of a restore's CPU (the rest, writing, fsync and the read-back
# check, is the same for both), so 1.25 times the decoding keeps any chain within it.
# A file with under a quarter of its pages changed at random since its last whole copy
# stays block-mapped. pgBackRest stores a quarter-changed file nearly whole at every
# link: its blocks of a 1 GiB file are 88 KiB, eleven pages, and 96 % of them would
# hold a changed page.
DECODE_BOUND = 1.25


def decoded_pages(parent_runs: bytes, kept_end: int, changed: Sequence[int], stored: int) -> int:
    """The pages a restore of the file would decode if this backup stores `stored` of
    its pages and keeps every other page below `kept_end` from the parent's map
    (`parent_runs`, packed Run records that tile at least `kept_end` blocks): `changed`,
    ascending block numbers, are among the stored ones."""
    import numpy as np  # only for an incremental's plan: wal-push and wal-fetch never load numpy

    kept = np.ones(kept_end, dtype=bool)
    stored_below = np.asarray(changed, dtype=np.int64)
    kept[stored_below[stored_below < kept_end]] = False
    pages = np.flatnonzero(kept)
    if not len(pages):
        return stored
    first, length, source, position = run_table(parent_runs).T
    run = np.searchsorted(first, pages, side="right") - 1
    units = np.unique(source[run] << 32 | (position[run] + pages - first[run]) // SUPER_BLOCK_PAGES)
    # A unit holds SUPER_BLOCK_PAGES positions, fewer at the end of what its source holds
    # of the file (at least as far as the parent's map points into it).
    held = np.zeros(int(source.max()) + 1, dtype=np.int64)
    np.maximum.at(held, source, position + length)
    unit_start = (units & 0xFFFFFFFF) * SUPER_BLOCK_PAGES
    return stored + int(np.minimum(SUPER_BLOCK_PAGES, held[units >> 32] - unit_start).sum())

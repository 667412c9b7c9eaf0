"""Writing a chain's plan (restore/chain.py) into a data directory: every read of the
plan fetched and decoded once, every byte written once, then all of it read back and
checked (restore/checked.py).

Large block-mapped files are written window by window. A chain interleaves its backups'
blocks in such a file: when every link changed half of a table's pages, a run of the
target's map is under two pages long on average, so writing each decoded super-block's
pages where they go costs a write call per run. That was some 210,000 calls of 8 KiB for
a chain of 7 at pgbench scale 150, where a full restore of the same data makes 3,000 of
1 MiB. Small writes out of order into a file's holes cost the kernel about three times
the CPU per byte, and the interpreter more than the kernel. A window is a range of one
file: what the plan takes into it is decoded and copied into one buffer, then written in
calls of 1 MiB.

Windows are cut where no stream part's slices of the file continue across the cut, so
each part is decoded once for the file (a part is up to 32 MiB). A super-block whose
pages straddle a cut is decoded by both windows (up to 32 pages, a few per window). A part
that also holds other files (the end of one relation file, the start of the next, small
files between) is decoded again for each of them. That is why only files of at least
`_WINDOWED_FILE` bytes are windowed; the rest are written read by read, as a full
backup's parts are.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from pitrkit.catalog.blockmap import MisplacedSuperBlock, SuperBlock, super_block_pages
from pitrkit.catalog.documents import BlockFile
from pitrkit.errors import RefusedError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.restore import checked, unpack
from pitrkit.restore.chain import BlockRead, ChainPlan, StreamRead, coalesced, narrowed_reads
from pitrkit.restore.unpack import FileWriter, Slice
from pitrkit.storage import objects
from pitrkit.storage.archive import Archive

# Files at least this long are written window by window.
_WINDOWED_FILE = 16 << 20
# A window is cut once it is this long, at the first place no stream part spans, and at
# the latest at `_MOST` bytes: what one worker's buffer holds, whatever a part spans.
_WINDOW = 16 << 20
_MOST = 64 << 20
# Decoded super-blocks of one read (outside windows) are written together, up to this
# many bytes of them: a file's pages from neighbouring super-blocks go out in one
# pwritev(2).
_WRITE_SIZE = 1 << 20


class Window(NamedTuple):
    """Bytes `start` to `end` of file number `file`, and the reads of what the plan takes
    into them (slices at their offsets in the file)."""

    file: int
    start: int
    end: int
    stream_reads: list[StreamRead]
    block_reads: list[BlockRead]
    # The slices cover the window: written in one piece. Otherwise (restore/delta.py
    # fetches only the blocks that differ) each slice is a piece of its own.
    whole: bool

    @property
    def slices(self) -> int:
        return sum(len(read.slices) for read in self.stream_reads) \
            + sum(len(slices) for read in self.block_reads for _, slices in read.blocks)


class Schedule(NamedTuple):
    """The plan as work: the windows of large files, the reads of the rest, and how many
    writes each file gets (a FileWriter's `pieces`)."""

    windows: list[Window]
    stream_reads: list[StreamRead]
    block_reads: list[BlockRead]
    pieces: list[int]


def unpack_chain(plan: ChainPlan, root: Path, tablespaces: list[unpack.TablespaceTarget], workers: int,
                 advance: Callable[[int], None]) -> None:
    """Write the target backup into `root` (absent or empty; its parent exists) and the
    tablespace locations, as `unpack.unpack` writes a full one; return once all of it is
    durable. `advance(n)` is called with the bytes of files written."""
    target = plan.target
    modes = unpack.Modes.of(target)
    touched = unpack.make_directories(root, target, tablespaces, modes)
    write(plan, root, modes, workers, advance)
    checked.check_directory(root, target, plan.files, plan.block_checksums, workers)
    unpack.finish_directory(root, target, tablespaces, touched)


def write(plan: ChainPlan, root: Path, modes: unpack.Modes, workers: int, advance: Callable[[int], None],
          existing: bool = False) -> None:
    """Every slice of the plan written into the files under `root`, `workers` reads at a
    time; returns once every file is durable. `existing`: as FileWriter's (restore/delta.py
    writes a plan it narrowed into the files that are there)."""
    work = schedule(plan)
    writer = FileWriter(root, plan.files, work.pieces, modes, existing=existing)
    unpack.write_files(writer, tasks(plan.archive, work, writer, advance), workers)


def schedule(plan: ChainPlan) -> Schedule:
    """The windows of the plan's large block-mapped files, and its reads cut to the
    slices of the other files.

    The slices of one file that one part or one super-block gives lie in file order
    (restore/chain.py makes them so, block by block of the target's maps), so each
    such group is placed by its ends, not slice by slice: a chain of 7 at pgbench scale
    150 has 220,000 slices, and every pass over them costs a tenth of a second."""
    windowed = {index for index, file in enumerate(plan.files)
                if isinstance(file, BlockFile) and file.size >= _WINDOWED_FILE}
    # Per windowed file: (stream read number, its slices), (source, super-block, its slices).
    parts: dict[int, list[tuple[int, list[Slice]]]] = {file: [] for file in windowed}
    blocks: dict[int, list[tuple[int, SuperBlock, list[Slice]]]] = {file: [] for file in windowed}
    stream_reads = []
    for number, read in enumerate(plan.stream_reads):
        rest = []
        for file, group in _by_file(read.slices):
            if file in windowed:
                parts[file].append((number, group))
            else:
                rest += group
        if rest:
            stream_reads.append(read._replace(slices=rest))

    def rest_of(source: int, block: SuperBlock, slices: list[Slice]) -> list[Slice]:
        rest: list[Slice] = []
        for file, group in _by_file(slices):
            if file in windowed:
                blocks[file].append((source, block, group))
            else:
                rest += group
        return rest

    block_reads = narrowed_reads(plan.block_reads, rest_of)
    # The files' windows taken in turn, the first of each file, then the second...:
    # workers writing into one file take turns at its inode's lock (Linux spins on it,
    # 4-10 % of a restore's CPU when both workers wrote the same file).
    windows = [window for turn in itertools.zip_longest(
        *(_windows(plan, file, parts[file], blocks[file]) for file in sorted(windowed))) for window in turn if window]
    pieces = unpack.count_pieces(len(plan.files), [read.slices for read in stream_reads]
                                 + [slices for read in block_reads for _, slices in read.blocks])
    for window in windows:
        pieces[window.file] += 1 if window.whole else window.slices
    return Schedule(windows, stream_reads, block_reads, pieces)


def _by_file(slices: list[Slice]) -> list[tuple[int, list[Slice]]]:
    """Slices in groups of one file, in their order (a super-block's are one file's:
    the list itself)."""
    if slices[0].file == slices[-1].file:
        return [(slices[0].file, slices)]
    return [(file, list(group)) for file, group in itertools.groupby(slices, key=_file_of)]


_file_of = operator.attrgetter("file")


def _windows(plan: ChainPlan, file: int, parts: list[tuple[int, list[Slice]]],
             blocks: list[tuple[int, SuperBlock, list[Slice]]]) -> list[Window]:
    """File number `file`'s windows: cut where no part's slices continue across (see the
    module's docstring), each with its share of the parts and super-blocks."""
    size = plan.files[file].size
    spans: list[list[int]] = []
    for start, end in sorted((group[0].file_offset, group[-1].file_offset + group[-1].length) for _, group in parts):
        if spans and start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    cuts = [0]
    span = 0
    while size - cuts[-1] > _WINDOW:
        cut = cuts[-1] + _WINDOW
        while span < len(spans) and spans[span][1] <= cut:
            span += 1
        if span < len(spans) and spans[span][0] < cut:
            cut = spans[span][1]
        cut = min(cut, cuts[-1] + _MOST)
        if cut >= size:
            break
        cuts.append(cut)
    ends = [*cuts[1:], size]
    stream: list[list[StreamRead]] = [[] for _ in cuts]
    for number, group in parts:
        for window, pieces in _placed(group, cuts, ends):
            stream[window].append(plan.stream_reads[number]._replace(slices=pieces))
    held: list[dict[tuple[int, int, int], tuple[SuperBlock, list[Slice]]]] = [{} for _ in cuts]
    for source, block, group in blocks:
        for window, pieces in _placed(group, cuts, ends):
            held[window][source, block.part, block.offset] = (block, pieces)
    windows = []
    for number, (start, end) in enumerate(zip(cuts, ends, strict=True)):
        covered = sum(piece.length for read in stream[number] for piece in read.slices) \
            + sum(piece.length for _, pieces in held[number].values() for piece in pieces)
        if covered:
            windows.append(Window(file, start, end, stream[number], coalesced(held[number], plan.manifests),
                                  covered == end - start))
    return windows


def _placed(group: list[Slice], cuts: list[int], ends: list[int]) -> list[tuple[int, list[Slice]]]:
    """A group of slices, in file order, by the window each falls in (the windows'
    `cuts` and `ends`); a slice that straddles a cut is cut there."""
    window = bisect.bisect_right(cuts, group[0].file_offset) - 1
    if group[-1].file_offset + group[-1].length <= ends[window]:
        return [(window, group)]
    placed: dict[int, list[Slice]] = {}
    for piece in group:
        window = bisect.bisect_right(cuts, piece.file_offset) - 1
        while piece.file_offset + piece.length > ends[window]:
            head = ends[window] - piece.file_offset
            placed.setdefault(window, []).append(piece._replace(length=head))
            piece = Slice(piece.file, ends[window], piece.part_offset + head, piece.length - head)
            window += 1
        placed.setdefault(window, []).append(piece)
    return list(placed.items())


# --- the tasks ---------------------------------------------------------------------------------


def tasks(archive: Archive, work: Schedule, writer: FileWriter,
          advance: Callable[[int], None]) -> list[Callable[[], None]]:
    """The schedule as tasks for `unpack.write_files`: each window, then each read of
    the rest, fetching what it needs and writing it with `writer`."""

    def window_task(window: Window) -> Callable[[], None]:
        def task() -> None:
            view = _window_buffer(window.end - window.start)
            pieces: list[tuple[int, int, memoryview]] = []

            def copy(slices: list[Slice], data: memoryview) -> None:
                for piece in slices:
                    at = piece.file_offset - window.start
                    view[at : at + piece.length] = data[piece.part_offset : piece.part_offset + piece.length]
                    if not window.whole:
                        pieces.append((window.file, piece.file_offset, view[at : at + piece.length]))

            for read in window.stream_reads:
                copy(read.slices, unpack.read_part_here(archive, read.part))
            for block_read in window.block_reads:
                for pages, (_, slices) in super_blocks(archive, block_read):
                    copy(slices, pages)
            if window.whole:
                pieces.append((window.file, window.start, view[: window.end - window.start]))
            writer.write_pieces(pieces)
            advance(sum(len(piece[2]) for piece in pieces))
        return task

    def from_stream(read: StreamRead) -> Callable[[], None]:
        def task() -> None:
            writer.write_slices(read.slices, unpack.read_part_here(archive, read.part))
            advance(sum(piece.length for piece in read.slices))
        return task

    def from_blocks(read: BlockRead) -> Callable[[], None]:
        def task() -> None:
            pieces: list[tuple[int, int, memoryview]] = []
            decoded = 0
            for number, (pages, (_, slices)) in enumerate(super_blocks(archive, read)):
                pieces += [(piece.file, piece.file_offset, pages[piece.part_offset : piece.part_offset + piece.length])
                           for piece in slices]
                decoded += len(pages)
                if decoded >= _WRITE_SIZE or number == len(read.blocks) - 1:
                    writer.write_pieces(pieces)
                    advance(sum(len(piece[2]) for piece in pieces))
                    pieces, decoded = [], 0
        return task

    return [*map(window_task, work.windows), *map(from_stream, work.stream_reads),
            *map(from_blocks, work.block_reads)]


_buffers = threading.local()


def _window_buffer(length: int) -> memoryview:
    """This thread's buffer for windows, at least `length` bytes: memory used again costs
    less than new memory for each window (its mapping and first touch)."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None or len(view) < length:
        view = _buffers.view = memoryview(bytearray(length))
    return view


def super_blocks(archive: Archive, read: BlockRead) -> Iterator[tuple[memoryview, tuple[SuperBlock, list[Slice]]]]:
    """One ranged read of a block part: each super-block's verified pages, with its
    entry of the read (restore and backup-consolidate read them so), decoded one at a
    time as they are used (a read of 8 MiB can
    hold thousands of super-blocks, over 100 MiB decoded)."""
    try:
        data = archive.get_range(read.key, read.offset, read.length)
    except ObjectNotFound:
        raise RefusedError(f"block part {read.key} is missing from the archive") from None
    if len(data) != read.length:
        raise RefusedError(f"block part {read.key} ends before byte {read.offset + read.length}, "
                           "where a block map says it holds super-blocks")
    for entry in read.blocks:
        block = entry[0]
        start = block.offset - read.offset
        yield memoryview(super_block(archive, read.key, block, data[start : start + block.length])), entry


def super_block(archive: Archive, key: str, block: SuperBlock, blob: bytes) -> bytes:
    """The verified pages of one super-block (catalog/blockmap.py's checks)."""
    where = f"the super-block at offset {block.offset} of {key}"
    try:
        return super_block_pages(archive, key, blob, block.pages, block.digest)
    except MisplacedSuperBlock as exc:
        raise RefusedError(f"{where} is {exc.why}") from None
    except objects.CorruptObject as exc:
        raise RefusedError(f"{where}: {exc.why}") from None

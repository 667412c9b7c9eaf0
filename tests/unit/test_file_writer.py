"""restore/unpack.FileWriter: pieces of files written in any order, from several threads,
into real files; descriptors kept open between a file's pieces but never more than its
bound; a file's neighbouring pieces written with one pwritev(2); every file complete and
durable (mode, mtime) once `close` returns."""

from __future__ import annotations

import errno
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from pitrkit.catalog.documents import BackupFile, BlockFile
from pitrkit.errors import PitrkitError
from pitrkit.restore import unpack
from pitrkit.restore.unpack import FileWriter, Modes

MODES = Modes(0o700, 0o600)


def files_of(contents: list[bytes], block_mapped: bool = False) -> list[BackupFile | BlockFile]:
    if block_mapped:
        return [BlockFile(f"f{number}", len(content), 0o640, 1_700_000_000 + number, 0, 0)
                for number, content in enumerate(contents)]
    return [BackupFile(f"f{number}", len(content), 0o640, 1_700_000_000 + number, 0, 0)
            for number, content in enumerate(contents)]


def cut(contents: list[bytes], size: int) -> list[tuple[int, int, memoryview]]:
    """Every file cut into pieces of at most `size` bytes: (file, offset, bytes)."""
    return [(number, offset, memoryview(content)[offset : offset + size])
            for number, content in enumerate(contents) for offset in range(0, len(content), size)]


def open_under(root: Path) -> list[str]:
    """The files under `root` this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the descriptor listdir itself used
        if target.startswith(f"{root}/"):
            held.append(target)
    return held


def pieces_per_file(contents: list[bytes], pieces: list[tuple[int, int, memoryview]]) -> list[int]:
    counts = [0] * len(contents)
    for index, _, _ in pieces:
        counts[index] += 1
    return counts


def test_pieces_in_any_order_from_many_threads_make_the_files_exactly(tmp_path):
    rng = random.Random(5)
    contents = [rng.randbytes(rng.randrange(1, 50_000)) for _ in range(40)] + [b""]
    pieces = cut(contents, 1000)
    rng.shuffle(pieces)
    writer = FileWriter(tmp_path, files_of(contents), pieces_per_file(contents, pieces), MODES, open_files=3)
    writer.create_empty_files()
    batches = [pieces[start : start + 7] for start in range(0, len(pieces), 7)]

    def work(share: list[list[tuple[int, int, memoryview]]]) -> None:
        for batch in share:
            writer.write_pieces(batch)

    threads = [threading.Thread(target=work, args=(batches[number::4],)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    for number, content in enumerate(contents):
        path = tmp_path / f"f{number}"
        assert path.read_bytes() == content
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # masked with the cluster's modes
        assert path.stat().st_mtime == 1_700_000_000 + number
    assert open_under(tmp_path) == []


def test_files_stay_open_between_pieces_up_to_the_bound_and_evicted_ones_are_reopened(tmp_path):
    contents = [bytes([number]) * 3000 for number in range(6)]
    pieces = cut(contents, 1000)
    # Round robin: each file's next piece comes after a piece of every other file.
    order = sorted(pieces, key=lambda piece: (piece[1], piece[0]))
    writer = FileWriter(tmp_path, files_of(contents), pieces_per_file(contents, pieces), MODES, open_files=2)
    most, complete = 0, set()
    for piece in order:
        writer.write_pieces([piece])
        if piece[1] == 2000:
            complete.add(f"{tmp_path}/f{piece[0]}")  # handed on to be made durable, then closed
        most = max(most, len(set(open_under(tmp_path)) - complete))
    writer.close()
    assert most == 2
    assert [(tmp_path / f"f{number}").read_bytes() for number in range(6)] == contents
    assert open_under(tmp_path) == []


def test_a_files_pieces_that_follow_each_other_go_out_in_one_pwritev(tmp_path, monkeypatch):
    content = os.urandom(8192 * 6)
    whole = memoryview(content)
    calls = []
    real_pwrite, real_pwritev = os.pwrite, os.pwritev
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: calls.append(("pwrite", offset, len(data)))
                        or real_pwrite(fd, data, offset))
    monkeypatch.setattr(os, "pwritev", lambda fd, views, offset: calls.append(("pwritev", offset, len(views)))
                        or real_pwritev(fd, views, offset))
    writer = FileWriter(tmp_path, files_of([content], block_mapped=True), [5], MODES)
    # Blocks 4, 0, 2, 1 from separate buffers (as from different super-blocks), then 5.
    writer.write_pieces([(0, 8192 * block, whole[8192 * block : 8192 * (block + 1)]) for block in (4, 0, 2, 1)])
    writer.write_pieces([(0, 8192 * 5, whole[8192 * 5 :])])
    writer.close()
    assert calls == [("pwritev", 0, 3), ("pwrite", 8192 * 4, 8192), ("pwrite", 8192 * 5, 8192)]
    # A block-mapped file is created at its length: block 3, never written, is zeros.
    assert (tmp_path / "f0").read_bytes() == content[: 8192 * 3] + bytes(8192) + content[8192 * 4 :]


def test_short_writes_are_carried_on_where_they_stopped(tmp_path, monkeypatch):
    content = os.urandom(10_000)
    real_pwritev = os.pwritev

    def short(fd: int, views: list[memoryview], offset: int) -> int:
        # At most 700 bytes a call, cutting buffers in the middle.
        taken, left = [], 700
        for view in views:
            taken.append(view[:left])
            left -= len(taken[-1])
            if not left:
                break
        return real_pwritev(fd, taken, offset)

    monkeypatch.setattr(os, "pwritev", short)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwritev(fd, [data[:300]], offset))
    writer = FileWriter(tmp_path, files_of([content]), [10], MODES)
    writer.write_pieces(cut([content], 1000)[::-1])
    writer.close()
    assert (tmp_path / "f0").read_bytes() == content


def test_no_write_call_takes_more_than_a_mebibyte(tmp_path, monkeypatch):
    # A part's slice of several MiB, then pieces that follow each other past 1 MiB.
    big, small = os.urandom(3 * 2**20 + 5), os.urandom(2**20 + 3 * 8192)
    calls: list[int] = []
    real_pwrite, real_pwritev = os.pwrite, os.pwritev
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: calls.append(len(data)) or real_pwrite(fd, data, offset))
    monkeypatch.setattr(os, "pwritev", lambda fd, views, offset: calls.append(sum(map(len, views)))
                        or real_pwritev(fd, views, offset))
    pieces = [(0, 0, memoryview(big)), *cut([b"", small], 8192)]
    writer = FileWriter(tmp_path, files_of([big, small]), pieces_per_file([big, small], pieces), MODES)
    writer.write_pieces(pieces)
    writer.close()
    assert (tmp_path / "f0").read_bytes() == big and (tmp_path / "f1").read_bytes() == small
    assert max(calls) == 2**20 and sum(calls) == len(big) + len(small) and len(calls) == 4 + 2


def test_more_buffers_than_one_pwritev_takes(tmp_path):
    content = os.urandom(3000)
    pieces = cut([content], 1)
    writer = FileWriter(tmp_path, files_of([content]), [len(pieces)], MODES)
    writer.write_pieces(pieces)
    writer.close()
    assert (tmp_path / "f0").read_bytes() == content


def test_a_restore_that_stops_half_way_leaves_nothing_open(tmp_path):
    contents = [b"a" * 100, b"b" * 100]
    writer = FileWriter(tmp_path, files_of(contents), [2, 2], MODES)
    writer.write_pieces([(0, 0, memoryview(contents[0])[:50]), (1, 0, memoryview(contents[1])[:50])])
    assert len(open_under(tmp_path)) == 2
    writer.close()
    assert open_under(tmp_path) == []


def test_a_file_that_cannot_be_made_durable_fails_the_close_naming_it(tmp_path, monkeypatch):
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    writer = FileWriter(tmp_path, files_of([b"x"]), [1], MODES)
    writer.write(0, memoryview(b"x"), 0)
    with pytest.raises(PitrkitError, match=f"cannot finish {tmp_path}/f0: Input/output error"):
        writer.close()
    assert open_under(tmp_path) == []


def test_write_files_returns_once_every_file_is_durable_and_fails_with_the_tasks_failure(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    contents = [b"a" * 10, b"", b"c" * 10]
    writer = FileWriter(tmp_path, files_of(contents), [1, 0, 1], MODES)
    tasks = [lambda: writer.write(0, memoryview(contents[0]), 0), lambda: writer.write(2, memoryview(contents[2]), 0)]
    unpack.write_files(writer, tasks, 2)
    assert sorted(synced) == [f"{tmp_path}/f0", f"{tmp_path}/f1", f"{tmp_path}/f2"]

    def broken() -> None:
        raise PitrkitError("the part is gone")

    writer = FileWriter(tmp_path / "again", files_of(contents), [1, 0, 1], MODES)
    (tmp_path / "again").mkdir()
    with pytest.raises(PitrkitError, match="the part is gone"):
        unpack.write_files(writer, [broken], 2)
    assert open_under(tmp_path) == []

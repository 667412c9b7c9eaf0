"""wal-fetch and a partial segment (`<segment>.partial`, shipped by a streaming receiver):
served under the segment's name only when the full segment is absent and the partial is
the newest WAL of its timeline; never read ahead.

The archive is real local storage filled through wal-push's own function, with 16 MiB
segments built by segments.py (256 per 4 GiB log folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit.cli import main
from pitrkit.config import Config, RepositoryConfig
from pitrkit.errors import FETCH_FAULT, NotInArchive
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import SegmentName, read_page_header, valid_end
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import Repository
from pitrkit.wal import fetch
from pitrkit.wal.agent import _fetch, _Serving
from pitrkit.wal.fetch import SPOOL_PREFIX
from pitrkit.wal.lookahead import Ahead
from pitrkit.wal.push import push
from tests.unit.segments import SEG_16MIB, init_archive, segment
from tests.unit.test_local_storage import deleted_after_readdir

LAST_OF_LOG = 255  # segment numbers: 0x0FF is the last of log 0, 0x100 the first of log 1


def name(segno: int) -> str:
    return SegmentName(1, segno, SEG_16MIB).name


def wal_with_data(segno: int, pages: int) -> bytes:
    """Segment `segno` whose first `pages` pages carry valid headers and data, then zeros,
    as pg_receivewal leaves a `.partial`."""
    data = bytearray(segment(segno))
    for page in range(1, pages):
        data[page * 8192 : page * 8192 + 24] = segment(segno, length=24, pageaddr=segno * SEG_16MIB + page * 8192,
                                                     info=0)
        data[page * 8192 + 40 : page * 8192 + 48] = b"record%02d" % page
    return bytes(data)


class Store:
    def __init__(self, root: Path, files: Path) -> None:
        root.mkdir()
        files.mkdir()
        self.root = root
        self.files = files
        self.archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0)))
        init_archive(self.archive)

    def push(self, file_name: str, data: bytes) -> None:
        path = self.files / file_name
        path.write_bytes(data)
        push(self.archive, path)
        path.unlink()

    def segment(self, segno: int) -> bytes:
        data = segment(segno, filler=b"full segment")
        self.push(name(segno), data)
        return data

    def partial(self, segno: int, pages: int = 3, length: int | None = None) -> bytes:
        data = wal_with_data(segno, pages)[: length or SEG_16MIB]
        self.push(f"{name(segno)}.partial", data)
        return data

    def stored(self, file_name: str) -> Path:
        return self.root / "wal" / file_name[:16] / file_name


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "archive", tmp_path / "pg_wal")


@pytest.fixture
def destination(tmp_path) -> Path:
    directory = tmp_path / "restored"
    directory.mkdir()
    return directory / "RECOVERYXLOG"


def test_the_newest_partial_is_served_under_the_segments_name(store, destination):
    store.segment(4)
    content = store.partial(5)
    summary = fetch.fetch(store.archive, name(5), destination)
    assert destination.read_bytes() == content
    assert f"from {name(5)}.partial" in summary


def test_a_short_partial_is_padded_to_a_whole_segment(store, destination):
    content = store.partial(5, length=3 * 8192 + 100)
    fetch.fetch(store.archive, name(5), destination)
    served = destination.read_bytes()
    assert len(served) == SEG_16MIB
    assert served == content + bytes(SEG_16MIB - len(content))


def test_the_full_segment_wins_over_its_partial(store, destination):
    store.partial(5)
    full = store.segment(5)
    assert "partial" not in fetch.fetch(store.archive, name(5), destination)
    assert destination.read_bytes() == full


def test_a_partial_replaced_by_its_segment_while_being_fetched_serves_the_segment(store, monkeypatch):
    """The race with a receiver: segment 5 is absent when asked for and its partial is
    listed; then the receiver stores segment 5 and deletes the partial before it is read."""
    store.partial(5)
    folder = f"wal/{name(5)[:16]}/"
    listed_before = store.archive.list_folder(folder)
    full = store.segment(5)
    store.stored(f"{name(5)}.partial").unlink()
    segment_key = f"{folder}{name(5)}"
    get, reads = store.archive.get, []

    def get_before_the_segment_landed(key: str) -> bytes:
        reads.append(key)
        if key == segment_key and reads.count(key) == 1:
            raise ObjectNotFound(key)
        return get(key)

    monkeypatch.setattr(store.archive, "get", get_before_the_segment_landed)
    monkeypatch.setattr(store.archive, "list_folder", lambda prefix: listed_before)
    assert fetch.read_for_recovery(store.archive, name(5)) == fetch.Fetched(full)
    assert reads == [segment_key, f"{segment_key}.partial", segment_key]


def test_a_partial_with_a_later_segment_after_it_is_not_served(store, destination):
    store.partial(5)
    store.segment(6)
    with pytest.raises(NotInArchive, match="not where the timeline ends"):
        fetch.fetch(store.archive, name(5), destination)
    assert not destination.exists()


def test_a_partial_with_a_later_partial_after_it_is_not_served(store, destination):
    store.partial(5)
    store.partial(6)
    with pytest.raises(NotInArchive):
        fetch.fetch(store.archive, name(5), destination)
    assert len(fetch.read_for_recovery(store.archive, name(6)).data) == SEG_16MIB


def test_later_wal_in_the_next_log_folder_counts_for_the_last_segment_of_a_log(store, destination):
    store.partial(LAST_OF_LOG)
    assert fetch.read_for_recovery(store.archive, name(LAST_OF_LOG)).partial == f"{name(LAST_OF_LOG)}.partial"
    store.segment(LAST_OF_LOG + 1)
    assert store.stored(name(LAST_OF_LOG + 1)).parent != store.stored(name(LAST_OF_LOG)).parent
    with pytest.raises(NotInArchive):
        fetch.read_for_recovery(store.archive, name(LAST_OF_LOG))


def test_a_partial_of_another_segment_is_not_a_stand_in(store, destination):
    store.partial(6)
    with pytest.raises(NotInArchive, match=f"{name(5)} is not in the archive"):
        fetch.fetch(store.archive, name(5), destination)


def test_only_segments_have_stand_ins(store, destination):
    store.partial(1)
    with pytest.raises(NotInArchive):
        fetch.fetch(store.archive, "00000002.history", destination)


def test_read_ahead_never_spools_a_partial(store, tmp_path):
    store.partial(5)
    with pytest.raises(NotInArchive):
        fetch.spool([Repository(store.archive.config.repositories[0], store.archive)], name(5), tmp_path)
    assert not list(tmp_path.glob(f"{SPOOL_PREFIX}*"))


def test_the_agent_reads_ahead_past_a_partial_but_serves_it_when_asked(store, destination):
    """Fetching segment 4 schedules segment 5 ahead; that job must fail (only a partial
    exists), so the request for 5 decides for itself, and a full segment 5 stored in
    between wins."""
    store.segment(4)
    store.partial(5)
    serving = _Serving([Repository(store.archive.config.repositories[0], store.archive)], Ahead(1, "push"),
                       Ahead(1, "fetch", discard=fetch.remove_spooled), set())
    try:
        _fetch(serving, name(4), destination)
        ahead = serving.fetches.take((name(5), destination.parent, 1), None)  # era 1
        assert ahead is not None
        with pytest.raises(NotInArchive):
            ahead.result()
        assert not list(destination.parent.glob(f"{SPOOL_PREFIX}*"))
        assert "partial" in _fetch(serving, name(5), destination)

        full = store.segment(5)
        assert "partial" not in _fetch(serving, name(5), destination)
        assert destination.read_bytes() == full
    finally:
        serving.close(wait=True)


# --- the exit codes PostgreSQL sees ---------------------------------------------------


@pytest.fixture
def config(tmp_path, store, monkeypatch) -> Path:
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{store.root}"\nretries = 0\n[agent]\nenabled = false\n')
    return path


def wal_fetch(config: Path, file_name: str, destination: Path) -> int:
    return main(["--config", str(config), "wal-fetch", file_name, str(destination)])


def test_exit_codes(capsys, store, config, destination):
    store.partial(5)
    assert wal_fetch(config, name(5), destination) == 0
    assert wal_fetch(config, name(6), destination) == 1  # the end of the WAL
    store.stored(f"{name(5)}.partial").write_bytes(b"damaged")
    assert wal_fetch(config, name(5), destination) == FETCH_FAULT
    assert "Traceback" not in capsys.readouterr().err


# --- how far a partial's WAL reaches ----------------------------------------------------


@pytest.mark.parametrize("pages", [1, 2, 700])
def test_valid_end_is_the_end_of_the_last_page_with_a_valid_header(pages):
    data = wal_with_data(9, pages)
    assert valid_end(data, read_page_header(data)) == 9 * SEG_16MIB + pages * 8192


def test_valid_end_stops_at_recycled_wal_of_another_segment():
    data = bytearray(wal_with_data(9, 4))
    data[4 * 8192 : 4 * 8192 + 24] = segment(2, length=24, pageaddr=2 * SEG_16MIB + 4 * 8192, info=0)
    assert valid_end(data, read_page_header(data)) == 9 * SEG_16MIB + 4 * 8192


def test_valid_end_of_a_truncated_page_is_the_end_of_the_data():
    data = wal_with_data(9, 3)[: 2 * 8192 + 100]
    assert valid_end(data, read_page_header(data)) == 9 * SEG_16MIB + 2 * 8192 + 100


def test_valid_end_of_a_whole_segment_is_its_end():
    data = wal_with_data(9, SEG_16MIB // 8192)
    assert valid_end(data, read_page_header(data)) == 10 * SEG_16MIB


# --- a listing that cannot be trusted -------------------------------------------------


def test_a_broken_entry_in_the_wal_folder_is_a_fault_not_the_end_of_the_wal(capsys, store, config, destination):
    # The partial is the newest WAL of its timeline only if the listing says so: an
    # entry it cannot read must not make the folder look empty ("not archived", exit 1,
    # and PostgreSQL would end recovery before the partial's WAL).
    store.partial(5)
    folder = store.stored(name(5)).parent
    (folder / name(7)).symlink_to(folder / "gone")
    assert wal_fetch(config, name(5), destination) == FETCH_FAULT
    error = capsys.readouterr().err
    assert "is a symbolic link" in error and error.count("\n") == 1


def test_a_segment_deleted_while_the_folder_is_listed_leaves_the_partial_served(store, destination, monkeypatch):
    store.segment(3)
    data = store.partial(5)
    deleted_after_readdir(monkeypatch, store.stored(name(3)))  # retention removing an old segment
    assert "partial" in fetch.fetch(store.archive, name(5), destination)
    assert destination.read_bytes() == data.ljust(SEG_16MIB, b"\0")

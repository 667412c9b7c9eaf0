"""The WAL path over several repositories (issue 16): wal-push to every one, an optional
one's durable spool and its catch-up, wal-fetch from the first that has the file, and
the agent serving both. Real local archives; a repository whose directory is missing
is an unmounted file system, and restoring the directory brings it back."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pitrkit.catalog.time_index import read_times
from pitrkit.cli import main
from pitrkit.config import Config, load
from pitrkit.demo.localpg import wait_for
from pitrkit.errors import FETCH_FAULT, NotInArchive
from pitrkit.storage import objects
from pitrkit.storage.archive import ArchiveUnavailable
from pitrkit.storage.repositories import open_all
from pitrkit.wal import agent_client, spool
from pitrkit.wal.agent import Agent
from pitrkit.wal.catch_up import CatchUp, catch_up
from pitrkit.wal.fetch import read_from_first
from pitrkit.wal.push import push, push_to_every
from pitrkit.wal.receive import Receiver
from tests.unit.segments import SEG_16MIB, init_archive, segment
from tests.unit.test_fetch_partial import wal_with_data
from tests.unit.test_repositories import archives, parse


def name(number: int) -> str:
    return f"00000001{0:08X}{number:08X}"


def wal(tmp_path: Path, number: int, filler: bytes = b"") -> Path:
    path = tmp_path / name(number)
    path.write_bytes(segment(number, filler=filler))
    return path


def stored(tmp_path: Path, repository: str, file_name: str) -> bool:
    return (tmp_path / repository / "wal" / file_name[:16] / file_name).is_file()


def take_down(tmp_path: Path, repository: str) -> None:
    """As an unmount: the repository's directory is no longer where the URL points."""
    os.rename(tmp_path / repository, tmp_path / f"{repository}.away")


def bring_back(tmp_path: Path, repository: str) -> None:
    os.rename(tmp_path / f"{repository}.away", tmp_path / repository)


def with_settings(parsed: Config, repository: str, **settings: object) -> Config:
    entries = []
    for entry in parsed.repositories:
        fields: dict[str, object] = {"url": entry.url, "name": entry.name, "retries": 0, "required": entry.required}
        if entry.spool is not None:
            fields["spool"] = entry.spool
        if entry.name == repository:
            fields |= settings
        entries.append(fields)
    return parse(entries)


def test_a_push_stores_the_file_in_every_repository(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    summary = push_to_every(repositories, wal(tmp_path, 1))
    assert stored(tmp_path, "local", name(1)) and stored(tmp_path, "cloud", name(1))
    assert summary.startswith(f"local: archived {name(1)}") and "; cloud: archived" in summary


def test_a_required_repository_down_fails_the_push(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    take_down(tmp_path, "cloud")
    with pytest.raises(ArchiveUnavailable, match="repository 'cloud'"):
        push_to_every(repositories, wal(tmp_path, 1))


def test_an_optional_repository_down_gets_the_file_spooled_durably_and_caught_up_in_order(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "dr", optional=("dr",)))
    settings = repositories[1].settings
    take_down(tmp_path, "dr")
    assert "dr: spooled" in push_to_every(repositories, wal(tmp_path, 1))
    assert stored(tmp_path, "local", name(1))
    assert spool.state(settings) == spool.SpoolState(1, SEG_16MIB, False, name(1))
    assert (tmp_path / "spool-dr" / "dr" / name(1)).stat().st_mode & 0o777 == 0o600
    # Nothing is caught up while the repository is down: the file stays spooled.
    assert catch_up(repositories) == []
    assert spool.state(settings).waiting == 1
    bring_back(tmp_path, "dr")
    # Back, but WAL waits for it: the next file joins the queue instead of overtaking it.
    assert "dr: spooled" in push_to_every(repositories, wal(tmp_path, 2))
    assert not stored(tmp_path, "dr", name(2))
    assert catch_up(repositories) == ["repository 'dr': caught up 2 spooled WAL file(s) and copied 0 from a "
                                      "required repository"]
    assert stored(tmp_path, "dr", name(1)) and stored(tmp_path, "dr", name(2))
    assert spool.state(settings) == spool.SpoolState(0, 0, False, None)
    # The queue is empty: the repository is written to directly again.
    assert "dr: archived" in push_to_every(repositories, wal(tmp_path, 3))


def test_an_optional_repository_that_does_not_answer_in_time_is_not_waited_for(tmp_path, caplog, monkeypatch):
    """Its store hangs, as a storage that accepts a connection and never answers: the
    push waits for it its timeout, not its retries, and spools the file."""
    repositories = open_all(with_settings(archives(tmp_path, "local", "dr", optional=("dr",)), "dr", timeout=0.2))
    answer = threading.Event()
    put = repositories[1].archive.put

    def hanging_put(key: str, blob: bytes, **options: bool) -> None:
        answer.wait()
        put(key, blob, **options)

    monkeypatch.setattr(repositories[1].archive, "put", hanging_put)
    try:
        with caplog.at_level(logging.WARNING):
            summary = push_to_every(repositories, wal(tmp_path, 1))
        assert "dr: spooled" in summary and stored(tmp_path, "local", name(1))
        assert "repository 'dr': no answer within its timeout (0.2s)" in caplog.text
        assert spool.state(repositories[1].settings).waiting == 1
    finally:
        answer.set()
    # The late attempt lands after all: catch-up finds the spooled copy identical.
    monkeypatch.undo()
    catch_up(repositories)
    assert stored(tmp_path, "dr", name(1)) and spool.state(repositories[1].settings).waiting == 0


def test_a_full_spool_stops_growing_marks_the_repository_behind_and_catch_up_copies_from_a_required_one(tmp_path):
    parsed = with_settings(archives(tmp_path, "local", "dr", optional=("dr",)), "dr", spool_max=SEG_16MIB + 1)
    repositories = open_all(parsed)
    settings = repositories[1].settings
    take_down(tmp_path, "dr")
    for number in (1, 2, 3):
        push_to_every(repositories, wal(tmp_path, number))
    assert spool.state(settings) == spool.SpoolState(1, SEG_16MIB, True, name(1))
    assert spool.behind_since(settings) == name(2)
    assert sorted(os.listdir(tmp_path / "spool-dr" / "dr")) == [".behind", name(1)]
    bring_back(tmp_path, "dr")
    assert "copied 2 from a required repository" in catch_up(repositories)[0]
    assert all(stored(tmp_path, "dr", name(number)) for number in (1, 2, 3))
    assert spool.state(settings) == spool.SpoolState(0, 0, False, None)


def test_a_catch_up_round_is_bounded_and_keeps_the_rest_for_the_next(tmp_path):
    parsed = with_settings(archives(tmp_path, "local", "dr", optional=("dr",)), "dr", spool_max=SEG_16MIB + 1)
    repositories = open_all(parsed)
    take_down(tmp_path, "dr")
    for number in (1, 2, 3, 4):
        push_to_every(repositories, wal(tmp_path, number))
    bring_back(tmp_path, "dr")
    catch_up(repositories, limit=2)
    # One spooled file and one copied: still behind, the claimed marker kept.
    assert spool.state(repositories[1].settings).behind
    catch_up(repositories, limit=2)
    assert not spool.state(repositories[1].settings).behind
    assert all(stored(tmp_path, "dr", name(number)) for number in (1, 2, 3, 4))


def test_a_file_missed_while_a_catch_up_copies_leaves_the_repository_behind(tmp_path):
    parsed = with_settings(archives(tmp_path, "local", "dr", optional=("dr",)), "dr", spool_max=1)
    repositories = open_all(parsed)
    settings = repositories[1].settings
    take_down(tmp_path, "dr")
    push_to_every(repositories, wal(tmp_path, 1))
    claimed = spool.claim_behind(settings)
    push_to_every(repositories, wal(tmp_path, 2))  # while a catch-up holds the claim
    spool.release(claimed)
    assert spool.behind_since(settings) == name(2)


def test_a_conflicting_spooled_file_stays_spooled_and_is_reported(tmp_path, caplog):
    repositories = open_all(archives(tmp_path, "local", "dr", optional=("dr",)))
    take_down(tmp_path, "dr")
    push_to_every(repositories, wal(tmp_path, 1))
    bring_back(tmp_path, "dr")
    push(repositories[1].archive, wal(tmp_path, 1, filler=b"another cluster's"))
    with caplog.at_level(logging.WARNING):
        assert catch_up(repositories) == []
    assert "is still spooled" in caplog.text and "different content" in caplog.text
    assert spool.state(repositories[1].settings).waiting == 1


def test_a_spooled_partial_overtaken_by_its_segment_is_dropped(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "dr", optional=("dr",)))
    take_down(tmp_path, "dr")
    partial = tmp_path / f"{name(1)}.partial"
    partial.write_bytes(wal_with_data(1, 3))
    push_to_every(repositories, partial)
    bring_back(tmp_path, "dr")
    push(repositories[1].archive, wal(tmp_path, 1))
    catch_up(repositories)
    assert not stored(tmp_path, "dr", f"{name(1)}.partial")
    assert spool.state(repositories[1].settings).waiting == 0


def test_a_fetch_reads_the_first_repository_that_has_the_file(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    push(repositories[1].archive, wal(tmp_path, 1))
    assert read_from_first(repositories, name(1)).data == segment(1)
    take_down(tmp_path, "local")
    assert read_from_first(repositories, name(1)).data == segment(1)


def test_a_fetch_is_not_found_only_when_every_repository_says_so(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "cloud"))
    with pytest.raises(NotInArchive):
        read_from_first(repositories, name(1))
    take_down(tmp_path, "cloud")
    with pytest.raises(ArchiveUnavailable, match="repository 'cloud'"):
        read_from_first(repositories, name(1))


def test_a_lagging_repositorys_partial_never_stands_in_for_a_segment_another_holds(tmp_path):
    repositories = open_all(archives(tmp_path, "dr", "local"))
    partial = tmp_path / f"{name(1)}.partial"
    partial.write_bytes(wal_with_data(1, 3))
    push(repositories[0].archive, partial)
    push(repositories[1].archive, wal(tmp_path, 1))
    fetched = read_from_first(repositories, name(1))
    assert (fetched.data, fetched.partial) == (segment(1), None)
    # With the segment nowhere, the partial stands in, from the repository that holds it.
    (tmp_path / "local" / "wal" / name(1)[:16] / name(1)).unlink()
    assert read_from_first(repositories, name(1)).partial == f"{name(1)}.partial"


@pytest.fixture
def config_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    for repository in ("local", "dr"):
        (tmp_path / repository).mkdir()
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[[repository]]\nname = "local"\nurl = "file://{tmp_path / "local"}"\nretries = 0\n'
                    f'[[repository]]\nname = "dr"\nurl = "file://{tmp_path / "dr"}"\nretries = 0\n'
                    f'required = false\nspool = "{tmp_path / "spool"}"\n'
                    "[agent]\nenabled = false\n")
    for repository in open_all(load(path)):
        init_archive(repository.archive)
    return path


def test_wal_push_and_wal_fetch_in_process_over_two_repositories(config_file, tmp_path, capsys):
    take_down(tmp_path, "dr")
    assert main(["--config", str(config_file), "wal-push", str(wal(tmp_path, 1))]) == 0
    assert spool.state(load(config_file).repositories[1]).waiting == 1
    bring_back(tmp_path, "dr")
    shutil.rmtree(tmp_path / "local" / "wal")
    # Only the spool holds it for dr: not found anywhere, so exit 1.
    assert main(["--config", str(config_file), "wal-fetch", name(1), str(tmp_path / "out")]) == 1
    catch_up(open_all(load(config_file)))
    assert main(["--config", str(config_file), "wal-fetch", name(1), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out").read_bytes() == segment(1)
    take_down(tmp_path, "local")
    assert main(["--config", str(config_file), "wal-fetch", name(2), str(tmp_path / "out")]) == FETCH_FAULT


def test_the_agent_pushes_to_every_repository_and_spools_for_an_optional_one(config_file, tmp_path):
    config_file.write_text(config_file.read_text().replace("enabled = false", "lookahead = 2"))
    served = Agent(config_file)
    try:
        take_down(tmp_path, "dr")
        pg_wal = tmp_path / "pg_wal"
        (pg_wal / "archive_status").mkdir(parents=True)
        for number in (1, 2):
            (pg_wal / name(number)).write_bytes(segment(number))
        (pg_wal / "archive_status" / f"{name(2)}.ready").touch()
        for number in (1, 2):
            reply = served._answer([agent_client.PROTOCOL, served.encoded_path, b"wal-push",
                                    os.fsencode(str(pg_wal / name(number)))])
            assert reply.startswith(b"0\0"), reply
        assert all(stored(tmp_path, "local", name(number)) for number in (1, 2))
        assert spool.state(load(config_file).repositories[1]).waiting == 2
        bring_back(tmp_path, "dr")
        assert served._serving is not None
        catch_up(served._serving.repositories)
        assert all(stored(tmp_path, "dr", name(number)) for number in (1, 2))
    finally:
        served._close(wait=True)
        logging.getLogger("pitrkit").removeHandler(served._request_log)


def test_wal_receive_archives_to_every_repository_and_spools_for_an_optional_one_that_is_down(tmp_path):
    entries = archives(tmp_path, "local", "dr", optional=("dr",))
    settings = parse([{"url": each.url, "name": each.name, "retries": 0, "required": each.required,
                       **({"spool": each.spool} if each.spool else {})} for each in entries.repositories],
                     receive={"spool": str(tmp_path / "received")})
    repositories = open_all(settings)
    received = tmp_path / "received"
    received.mkdir()
    older = received / f"{name(1)}.partial"
    older.write_bytes(wal_with_data(1, 2))
    push_to_every(repositories, older)  # both repositories hold segment 1's partial
    older.unlink()
    take_down(tmp_path, "dr")
    (received / name(1)).write_bytes(segment(1))
    (received / f"{name(2)}.partial").write_bytes(wal_with_data(2, 3))
    Receiver(settings, repositories, received, Path("/bin/pg_receivewal"))._archive_spool(final=True)
    assert stored(tmp_path, "local", name(1)) and stored(tmp_path, "local", f"{name(2)}.partial")
    # The full segment replaced the partial where it was stored; dr keeps its partial until it has the segment.
    assert not stored(tmp_path, "local", f"{name(1)}.partial")
    assert sorted(path.name for path in spool.waiting(repositories[1].settings)) == [name(1), f"{name(2)}.partial"]
    assert not (received / name(1)).exists()
    bring_back(tmp_path, "dr")
    catch_up(repositories)
    assert stored(tmp_path, "dr", name(1)) and stored(tmp_path, "dr", f"{name(2)}.partial")
    assert not stored(tmp_path, "dr", f"{name(1)}.partial")


def test_wal_receive_keeps_a_file_a_required_repository_did_not_take(tmp_path):
    settings = archives(tmp_path, "local", "cloud")
    repositories = open_all(settings)
    received = tmp_path / "received"
    received.mkdir()
    (received / name(1)).write_bytes(segment(1))
    take_down(tmp_path, "cloud")
    Receiver(settings, repositories, received, Path("/bin/pg_receivewal"))._archive_spool(final=True)
    assert (received / name(1)).exists()


def test_each_repository_stores_the_file_with_its_own_keys_plaintext_ones_compressed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PITRKIT_TEST_DR_PASSPHRASE", "a passphrase for the DR copy only")
    entries = [{"url": f"file://{tmp_path / each}", "name": each, "retries": 0} for each in ("local", "copy", "dr")]
    entries[2]["encryption"] = {"mode": "key", "passphrase_env": "PITRKIT_TEST_DR_PASSPHRASE"}
    for each in ("local", "copy", "dr"):
        (tmp_path / each).mkdir()
    repositories = open_all(parse(entries))
    for repository in repositories:
        init_archive(repository.archive)
    push_to_every(repositories, wal(tmp_path, 1))
    blobs = {each: (tmp_path / each / "wal" / name(1)[:16] / name(1)).read_bytes() for each in ("local", "copy", "dr")}
    assert blobs["local"] == blobs["copy"] != blobs["dr"]
    key = f"wal/{name(1)[:16]}/{name(1)}"
    assert [objects.read_header(key, blobs[each])[0].encryption is None for each in ("local", "dr")] == [True, False]
    assert all(read_from_first([each], name(1)).data == segment(1) for each in repositories)


def test_the_background_catch_up_drains_a_spool_once_the_repository_is_back(tmp_path):
    repositories = open_all(archives(tmp_path, "local", "dr", optional=("dr",)))
    take_down(tmp_path, "dr")
    push_to_every(repositories, wal(tmp_path, 1))
    catching_up = CatchUp(repositories, every=0.05)
    try:
        assert catching_up.pending()
        bring_back(tmp_path, "dr")
        wait_for(lambda: not catching_up.pending(), 60, what="the spool to drain")
    finally:
        catching_up.close()
    assert stored(tmp_path, "dr", name(1))


def test_without_an_optional_repository_nothing_runs_in_the_background(tmp_path):
    catching_up = CatchUp(open_all(archives(tmp_path, "local", "cloud")))
    assert catching_up._thread is None and not catching_up.pending()
    catching_up.close()


def test_the_time_indexer_indexes_the_segment_in_every_repository_that_holds_it(config_file, tmp_path):
    repositories = open_all(load(config_file))
    push_to_every(repositories, wal(tmp_path, 1))
    indexer = subprocess.run([sys.executable, "-m", "pitrkit.wal.time_indexer", str(config_file)],
                             input=f"{name(1)}\n", text=True, capture_output=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert indexer.returncode == 0, indexer.stderr
    for repository in repositories:
        times = read_times(repository.archive, 1, 0)
        assert times is not None and [entry.segment for entry in times.segments] == [name(1)]

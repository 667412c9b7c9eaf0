"""The agent's answers (pitrkit/wal/agent.py), served in this process through `Agent._answer`,
the function a connection's request goes through: work scheduled ahead after a request
never changes that request's exit code or stderr, even when scheduling fails."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from pitrkit.config import load
from pitrkit.storage.archive import Archive
from pitrkit.wal import agent_client
from pitrkit.wal.agent import Agent
from pitrkit.wal.fetch import SPOOL_PREFIX
from tests.unit.segments import init_archive, segment

FIRST, SECOND, THIRD = "000000010000000000000001", "000000010000000000000002", "000000010000000000000003"


@pytest.fixture
def agent(tmp_path, monkeypatch):
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    (tmp_path / "archive").mkdir()
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "file://{tmp_path / "archive"}"\nretries = 0\n'
                      "[agent]\nlookahead = 2\n")
    init_archive(Archive(load(config)))
    served = Agent(config)
    yield served
    served._close(wait=True)
    logging.getLogger("pitrkit").removeHandler(served._request_log)


@pytest.fixture
def pg_wal(tmp_path) -> Path:
    directory = tmp_path / "pg_wal"
    (directory / "archive_status").mkdir(parents=True)
    for segno, name in enumerate((FIRST, SECOND, THIRD), start=1):
        (directory / name).write_bytes(segment(segno))
    return directory


def ask(agent: Agent, command: str, *args: object) -> tuple[int, str]:
    reply = agent._answer([agent_client.PROTOCOL, agent.encoded_path, command.encode(),
                           *(os.fsencode(str(arg)) for arg in args)])
    code, _, text = reply.decode().partition("\0")
    return int(code), text


def test_a_push_ahead_that_cannot_be_scheduled_leaves_the_push_answered_as_done(agent, pg_wal, caplog):
    assert ask(agent, "wal-push", pg_wal / FIRST) == (0, "")
    # A reload shut the pool down while this request was being served: scheduling the
    # push ahead of THIRD raises RuntimeError. SECOND is durable all the same.
    agent._serving.pushes.close(wait=True)
    (pg_wal / "archive_status" / f"{THIRD}.ready").touch()
    assert ask(agent, "wal-push", pg_wal / SECOND) == (0, "")
    assert (agent._serving.archive.storage.root / "wal" / SECOND[:16] / SECOND).is_file()
    assert "pushing ahead after 000000010000000000000002 failed: RuntimeError" in caplog.text


def test_a_read_ahead_that_cannot_be_scheduled_leaves_the_fetch_answered(agent, pg_wal, tmp_path, caplog):
    for name in (FIRST, SECOND):
        assert ask(agent, "wal-push", pg_wal / name) == (0, "")
    restored = tmp_path / "restored"
    restored.mkdir()
    agent._serving.fetches.close(wait=True)
    assert ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG") == (0, "")
    assert (restored / "RECOVERYXLOG").read_bytes() == segment(1)
    assert "reading ahead after 000000010000000000000001 failed: RuntimeError" in caplog.text
    # And the answer to "not archived" stays exactly that: exit 1, its own line.
    code, text = ask(agent, "wal-fetch", THIRD, restored / "RECOVERYXLOG")
    assert code == 1 and text.count("\n") == 1 and "not in the archive" in text


def test_a_fault_while_choosing_what_to_read_ahead_leaves_the_fetch_answered(agent, pg_wal, tmp_path,
                                                                              monkeypatch, caplog):
    assert ask(agent, "wal-push", pg_wal / FIRST) == (0, "")
    restored = tmp_path / "restored"
    restored.mkdir()

    def spool_directory_gone(directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr("pitrkit.wal.agent.remove_stale_spool", spool_directory_gone)
    assert ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG") == (0, "")
    assert "reading ahead after 000000010000000000000001 failed: PermissionError" in caplog.text


# --- wal-prefetch: restore reads the first segments ahead before the server starts --------


def spooled(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith(SPOOL_PREFIX))


def prefetch(agent: Agent, directory: Path, *names: str) -> tuple[int, str]:
    reply = agent._answer(agent_client.prefetch_request(str(agent.config_path), str(directory), list(names)))
    code, _, text = reply.decode().partition("\0")
    return int(code), text


def settle(agent: Agent) -> None:
    while agent._serving.fetches.pending():
        time.sleep(0.01)


def test_a_prefetched_segment_is_served_by_one_rename_to_a_fetch_of_that_name_there(agent, pg_wal, tmp_path):
    for name in (FIRST, SECOND):
        assert ask(agent, "wal-push", pg_wal / name) == (0, "")
    restored = tmp_path / "restored"
    restored.mkdir()
    assert prefetch(agent, restored, FIRST, SECOND, f"{THIRD}.partial") == (0, "")
    settle(agent)
    assert spooled(restored) == [f"{SPOOL_PREFIX}{FIRST}", f"{SPOOL_PREFIX}{SECOND}"]  # never a partial
    # Another directory is another spool: nothing read ahead into `restored` serves it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert ask(agent, "wal-fetch", FIRST, elsewhere / "RECOVERYXLOG") == (0, "")
    assert (elsewhere / "RECOVERYXLOG").read_bytes() == segment(1)
    assert spooled(restored) == [f"{SPOOL_PREFIX}{FIRST}", f"{SPOOL_PREFIX}{SECOND}"]
    # Here, the request for SECOND takes its spool file; FIRST's stays for a fetch of FIRST.
    assert ask(agent, "wal-fetch", SECOND, restored / "RECOVERYXLOG") == (0, "")
    assert (restored / "RECOVERYXLOG").read_bytes() == segment(2)
    assert f"{SPOOL_PREFIX}{SECOND}" not in spooled(restored)


def test_a_prefetch_that_failed_leaves_the_fetch_its_own_answer(agent, pg_wal, tmp_path):
    restored = tmp_path / "restored"
    restored.mkdir()
    # Nothing archived yet: the read ahead fails, and leaves no file behind.
    assert prefetch(agent, restored, FIRST) == (0, "")
    settle(agent)
    assert spooled(restored) == []
    code, text = ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG")
    assert code == 1 and "not in the archive" in text
    # Archived since: the fetch reads it, never a stale failure.
    assert ask(agent, "wal-push", pg_wal / FIRST) == (0, "")
    assert ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG") == (0, "")
    assert (restored / "RECOVERYXLOG").read_bytes() == segment(1)


def test_a_prefetch_of_a_relative_directory_or_of_no_segment_reads_nothing(agent, pg_wal, tmp_path):
    assert ask(agent, "wal-push", pg_wal / FIRST) == (0, "")
    assert prefetch(agent, Path("restored"), FIRST) == (0, "")
    assert prefetch(agent, tmp_path, "00000002.history", "not-a-segment") == (0, "")
    settle(agent)
    assert spooled(tmp_path) == []


def test_a_segment_read_ahead_on_one_timeline_never_serves_another(agent, pg_wal, tmp_path):
    # Recovery moved on to timeline 2 at SECOND's segment: what was read ahead of it on
    # timeline 1 stays unused, and the fetch of timeline 2's segment reads timeline 2's.
    for name in (FIRST, SECOND):
        assert ask(agent, "wal-push", pg_wal / name) == (0, "")
    switched = "00000002" + SECOND[8:]
    (pg_wal / switched).write_bytes(segment(2, timeline=2, filler=b"timeline 2"))
    assert ask(agent, "wal-push", pg_wal / switched) == (0, "")
    restored = tmp_path / "restored"
    restored.mkdir()
    assert prefetch(agent, restored, SECOND) == (0, "")
    settle(agent)
    assert ask(agent, "wal-fetch", switched, restored / "RECOVERYXLOG") == (0, "")
    assert (restored / "RECOVERYXLOG").read_bytes() == segment(2, timeline=2, filler=b"timeline 2")
    assert f"{SPOOL_PREFIX}{SECOND}" in spooled(restored)


def test_a_fetch_until_the_plans_end_serves_nothing_past_it_nor_reads_it_ahead(agent, pg_wal, tmp_path):
    for name in (FIRST, SECOND, THIRD):
        assert ask(agent, "wal-push", pg_wal / name) == (0, "")
    restored = tmp_path / "restored"
    restored.mkdir()
    assert ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG", f"--until={SECOND}") == (0, "")
    settle(agent)
    assert spooled(restored) == [f"{SPOOL_PREFIX}{SECOND}"]  # look-ahead 2, stopped at SECOND
    code, text = ask(agent, "wal-fetch", THIRD, restored / "RECOVERYXLOG", f"--until={SECOND}")
    assert code == 1 and f"past the restore plan's last segment {SECOND}" in text
    # The end itself and history files are served; a bad bound is a fault, never "not archived".
    assert ask(agent, "wal-fetch", SECOND, restored / "RECOVERYXLOG", f"--until={SECOND}") == (0, "")
    assert ask(agent, "wal-fetch", "00000002.history", restored / "HIST", f"--until={SECOND}")[0] == 1  # none archived
    assert ask(agent, "wal-fetch", FIRST, restored / "RECOVERYXLOG", "--until=00000002.history")[0] == 126
    # The client hands `--until` over to the agent as an option after the paths.
    request = agent_client.parse_request(["wal-fetch", THIRD, "x", "--until", SECOND])
    assert request is not None and request[-1] == f"--until={SECOND}".encode()


@pytest.mark.parametrize("options", [["--until"], ["--until="], ["--era=0"], ["--era=x"], ["--era=2", "--era=2"],
                                     ["--bogus=1"], ["--until=A", "--until=B"]])
def test_a_request_with_options_it_cannot_take_is_declined(agent, tmp_path, options):
    # Declined (b""): the client then runs the command through the full parser, which says what is wrong.
    assert agent._answer([agent_client.PROTOCOL, agent.encoded_path, b"wal-fetch", FIRST.encode(),
                          os.fsencode(str(tmp_path / "x")), *(option.encode() for option in options)]) == b""
    assert agent._answer([agent_client.PROTOCOL, agent.encoded_path, b"wal-push", os.fsencode(str(tmp_path / "x")),
                          b"--era=1"]) == b""

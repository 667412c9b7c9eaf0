"""The agent's answers (pitrkit/wal/agent.py), served in this process through `Agent._answer`,
the function a connection's request goes through: work scheduled ahead after a request
never changes that request's exit code or stderr, even when scheduling fails."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pitrkit.config import load
from pitrkit.storage.archive import Archive
from pitrkit.wal import agent_client
from pitrkit.wal.agent import Agent
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

"""The command-line harness of the plugin author's kit (docs/plugins.md, "Fault tests"
and "End to end"): pitrkit's own commands run on a plugin's archive in a process of their
own, as PostgreSQL's archive_command and restore_command run them, with no PostgreSQL
needed. It imports pytest, so only test code imports it.

It has the pieces (a configuration file, an archive created as `pitrkit init` creates
it, a synthetic WAL segment, a command run) and `ArchiveCommands`, a class of tests that
a plugin's test module subclasses with one fixture, `empty_prefix_url`: the URL of a
prefix where nothing is stored, in a container (bucket) that exists.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pitrkit.config import load
from pitrkit.storage.archive import Archive
from pitrkit.storage.plugins import Plugins

SEGMENT_SIZE = 16 << 20
SYSTEM_IDENTIFIER = 7312345678901234567  # of the cluster the synthetic segments claim to be from
SEGMENT_NAME = "000000010000000000000001"
# PostgreSQL 15's XLogLongPageHeaderData (src/include/access/xlog_internal.h), native order:
# magic, info (XLP_LONG_HEADER), timeline, page address, remaining length, system
# identifier, segment size, block size.
_LONG_HEADER = struct.Struct("=HHIQI4xQII")
_PG15_MAGIC, _XLP_LONG_HEADER = 0xD110, 0x0002


def write_config(path: Path, url: str, *, timeout: float | None = None, retries: int = 0) -> Path:
    """A configuration for `url` with the agent off (every command does its own storage
    calls) and `retries` of pitrkit's own on top of the plugin's."""
    lines = ["[repository]", f'url = "{url}"', f"retries = {retries}"]
    if timeout is not None:
        lines.append(f"timeout = {timeout:g}")
    path.write_text("\n".join([*lines, "[agent]", "enabled = false", ""]))
    return path


def create_archive(config: Path) -> None:
    """`archive.json` in the configured archive, as `pitrkit init` writes it for the
    cluster the synthetic segments come from."""
    Archive(load(config)).create(SYSTEM_IDENTIFIER, SEGMENT_SIZE, 15)


def write_segment(directory: Path, name: str = SEGMENT_NAME) -> Path:
    """A 16 MiB WAL segment `name` of timeline 1 whose first page header is PostgreSQL
    15's, zero-padded: what wal-push checks before it stores one."""
    segno = int(name[8:16], 16) * (0x1_0000_0000 // SEGMENT_SIZE) + int(name[16:], 16)
    header = _LONG_HEADER.pack(_PG15_MAGIC, _XLP_LONG_HEADER, 1, segno * SEGMENT_SIZE, 0, SYSTEM_IDENTIFIER,
                               SEGMENT_SIZE, 8192)
    path = directory / name
    path.write_bytes(header.ljust(SEGMENT_SIZE, b"\0"))
    return path


def run_pitrkit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pitrkit --config CONFIG ARGS...` in a process of its own, with this environment:
    the plugin loaded by its entry point, as in production."""
    return subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=os.environ)


def stored_keys(url: str) -> list[str]:
    """Every key of the archive at `url`, opened through the plugin's entry point."""
    return [info.key for info in Plugins().storage(url, 10.0).list("")]


class ArchiveCommands:
    """pitrkit's commands on an archive of the plugin, as a plugin's tests run them:
    subclass it and provide the fixture `empty_prefix_url`."""

    @pytest.fixture
    def empty_prefix_url(self) -> str:
        raise NotImplementedError("provide the fixture empty_prefix_url: the URL of an empty prefix in a "
                                  "container that exists")

    def test_an_empty_prefix_is_not_an_archive(self, empty_prefix_url: str, tmp_path: Path) -> None:
        """A mistyped prefix (or a bucket emptied by mistake) answers "not found" for every
        key: wal-push must refuse it rather than start an archive there, and wal-fetch must
        not answer "not archived", which would end a recovery early. The rule is the core's,
        whatever the plugin: this checks that the plugin's answers let it hold."""
        config = write_config(tmp_path / "pitrkit.toml", empty_prefix_url)
        segment = write_segment(tmp_path)
        pushed = run_pitrkit(config, "wal-push", str(segment))
        assert pushed.returncode == 1 and "pitrkit init" in pushed.stderr, pushed.stderr
        fetched = run_pitrkit(config, "wal-fetch", segment.name, str(tmp_path / "RECOVERYXLOG"))
        assert fetched.returncode == 126 and "archive.json" in fetched.stderr, fetched.stderr
        assert stored_keys(empty_prefix_url) == []

"""The cloud plugins' end-to-end tests on real PostgreSQL, shared by plugins/pitrkit-gcs,
-s3 and -azure: archive_command runs `pitrkit wal-push` into the plugin's archive (as the
server user, through a venv with pitrkit and the plugin), backup-push stores a base
backup there, and a restore to a time gives exactly the data noted at that time; in an
encrypted archive, every WAL and backup object is also checked to be unreadable without
the key. With it, the kit's command tests (pitrkit.storage.harness.ArchiveCommands).

A plugin's tests subclass `PluginEndToEnd` and provide the fixtures `plugin_setup` (a
`PluginSetup`: what reaches the plugin's archive, made by `plugin_setup`) and the kit's
`empty_prefix_url`; by default each major runs a plain and an encrypted archive, which
a fixture `encrypted` of the subclass's own can narrow. Its conftest.py re-uses the project's PostgreSQL
fixtures (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pitrkit.storage import objects
from pitrkit.storage.harness import ArchiveCommands
from pitrkit.storage.plugins import Plugins

import pgharness  # (on sys.path once tests.conftest is imported)
from pitr_workload import (
    archive_everything,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    recovered,
    write_round,
)
from pitrkit_setup import PitrkitSetup

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def runnable_install(harness_tmp: Path, plugin_root: Path) -> pgharness.RunnableInstall:
    """pitrkit and the plugin at `plugin_root`, installed where the server user can run them."""
    return pgharness.RunnableInstall.create(PROJECT_ROOT, harness_tmp / plugin_root.name,
                                            extra_packages=[plugin_root])


@dataclass
class PluginSetup(PitrkitSetup):
    """A PitrkitSetup whose archive is a plugin's: its URL, and what every pitrkit that
    the test and PostgreSQL run needs in its environment to reach it."""

    archive_url: str = ""
    archive_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.archive_url

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.archive_env}


@contextmanager
def plugin_setup(install: pgharness.RunnableInstall, server_tmp: Path, url: str,
                 env: dict[str, str]) -> Iterator[PluginSetup]:
    setup = PluginSetup(pitrkit=install.pitrkit, archive=server_tmp / "unused", config=server_tmp / "pitrkit.toml",
                        runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                        archive_url=url, archive_env=env)
    setup.write_config()
    try:
        yield setup
    finally:
        setup.stop_agents()


class PluginEndToEnd(ArchiveCommands):
    pytestmark = pytest.mark.integration

    @pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
    def encrypted(self, request: pytest.FixtureRequest) -> bool:
        return request.param

    def test_archive_backup_and_restore_to_a_time(self, cluster, plugin_setup: PluginSetup, encrypted: bool) -> None:
        setup = plugin_setup
        if encrypted:
            setup.encrypt_with_a_new_key()
        primary, backup = primary_with_a_backup(cluster, setup)
        archive_everything(primary)
        write_round(primary, 3)
        point = note_point(primary)
        write_round(primary, 4)
        drop_doomed(primary)
        archive_everything(primary)
        assert "doomed" in point.digests

        # Everything went to the store, under the URL's prefix.
        storage = Plugins().storage(setup.url, 10.0)
        stored = [info.key for info in storage.list("")]
        assert f"backups/{backup['backup_id']}/manifest.json" in stored
        assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in stored)
        assert sum(key.startswith("wal/00000001") for key in stored) >= 2
        if encrypted:
            framed = [key for key in stored
                      if key.startswith(("wal/0", "backups/")) and not key.endswith((".json", ".history"))]
            assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in framed)
            for key in framed:
                blob = storage.get(key)
                header, _ = objects.read_header(key, blob)
                assert header.encryption is not None and header.key_id is not None, key
                with pytest.raises(objects.CorruptObject):  # without the key, nothing reads it
                    objects.decode(key, blob, lambda name: pytest.fail("an object was decompressed without its key"))

        restored = recovered(cluster, setup, "--to", point.time)
        assert digests(restored) == point.digests

"""An az:// archive end to end, against Azurite: the kit's command tests, a missing
container, and archive_command, backup-push and a restore to a time through the plugin
(tests/plugin_end_to_end.py; the connection string read from a file only the server
user reads). Lean for CI: one archive per major, plain on 15 and encrypted on 18."""

from __future__ import annotations

import pytest
from azurite import ACCOUNT

from pitrkit.storage.harness import run_pitrkit, write_config
from tests.plugin_end_to_end import PluginEndToEnd

pytestmark = pytest.mark.integration


class TestAzureEndToEnd(PluginEndToEnd):
    @pytest.fixture
    def encrypted(self, pg_major: int) -> bool:
        return pg_major >= 18

    @pytest.fixture
    def empty_prefix_url(self, container) -> str:
        return f"az://{ACCOUNT}/{container}/typo"


def test_a_missing_container_is_a_fault_for_wal_fetch(emulator, tmp_path):
    config = write_config(tmp_path / "pitrkit.toml", f"az://{ACCOUNT}/no-such-container/main", retries=3)
    fetched = run_pitrkit(config, "wal-fetch", "000000010000000000000001", str(tmp_path / "RECOVERYXLOG"))
    assert fetched.returncode == 126, fetched.stderr
    assert "container no-such-container does not exist" in fetched.stderr and "Traceback" not in fetched.stderr

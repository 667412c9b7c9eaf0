"""A gs:// archive end to end, against the emulator: the kit's command tests, and on
PostgreSQL 15 and 18, plain and encrypted, archive_command, backup-push and a restore to
a time through the plugin (tests/plugin_end_to_end.py)."""

from __future__ import annotations

import pytest

from tests.plugin_end_to_end import PluginEndToEnd


class TestGcsEndToEnd(PluginEndToEnd):
    @pytest.fixture
    def empty_prefix_url(self, bucket) -> str:
        return f"gs://{bucket}/typo"

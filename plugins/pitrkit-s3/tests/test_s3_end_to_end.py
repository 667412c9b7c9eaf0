"""An s3:// archive end to end, against moto's server: the kit's command tests, and on
PostgreSQL 15 and 18, plain and encrypted, archive_command, backup-push and a restore to
a time through the plugin (tests/plugin_end_to_end.py)."""

from __future__ import annotations

import pytest
from moto_server import s3_url

from tests.plugin_end_to_end import PluginEndToEnd


class TestS3EndToEnd(PluginEndToEnd):
    @pytest.fixture
    def empty_prefix_url(self, bucket, moto) -> str:
        return s3_url(bucket, "typo", moto.endpoint)

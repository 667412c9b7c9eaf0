"""A s3:// archive end to end on PostgreSQL 15 and 18, against moto's server: archive_command
runs `pitrkit wal-push` into the bucket, backup-push stores a base backup there, and a
restore to a time gives exactly the data noted at that time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from moto_server import s3_url
from pitrkit_s3.storage import S3Storage

from pitr_workload import (
    archive_everything,
    digests,
    drop_doomed,
    note_point,
    primary_with_a_backup,
    recovered,
    write_round,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "unit"))
from segments import long_header  # noqa: E402  (the project's synthetic WAL headers)

pytestmark = pytest.mark.integration


def test_an_empty_prefix_is_not_an_archive(bucket, moto, tmp_path):
    """A mistyped prefix (or a bucket emptied by mistake) answers "not found" for every
    key: wal-push must refuse it rather than start an archive there, and wal-fetch must
    not answer "not archived", which would end a recovery early. The rule is the core's,
    whatever the plugin."""
    config = tmp_path / "pitrkit.toml"
    url = s3_url(bucket, "typo", moto.endpoint)
    config.write_text(f'[repository]\nurl = "{url}"\nretries = 0\n[agent]\nenabled = false\n')
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(long_header(pageaddr=16 << 20).ljust(16 << 20, b"\0"))

    def pitrkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=120, env=os.environ)

    pushed = pitrkit("wal-push", str(segment))
    assert pushed.returncode == 1 and "pitrkit init" in pushed.stderr, pushed.stderr
    fetched = pitrkit("wal-fetch", segment.name, str(tmp_path / "RECOVERYXLOG"))
    assert fetched.returncode == 126 and "archive.json" in fetched.stderr, fetched.stderr
    assert list(S3Storage(url, timeout=10).list("")) == []


def test_archive_backup_and_restore_to_a_time_through_s3(cluster, s3_setup):
    setup = s3_setup
    primary, backup = primary_with_a_backup(cluster, setup)
    archive_everything(primary)
    write_round(primary, 3)
    point = note_point(primary)
    write_round(primary, 4)
    drop_doomed(primary)
    archive_everything(primary)
    assert "doomed" in point.digests

    # Everything went to the bucket, under the URL's prefix.
    stored = [info.key for info in S3Storage(setup.url, timeout=10).list("")]
    assert f"backups/{backup['backup_id']}/manifest.json" in stored
    assert any(key.startswith(f"backups/{backup['backup_id']}/data/") for key in stored)
    assert sum(key.startswith("wal/00000001") for key in stored) >= 2

    restored = recovered(cluster, setup, "--to", point.time)
    assert digests(restored) == point.digests

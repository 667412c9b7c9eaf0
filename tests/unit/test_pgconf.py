"""The code-running settings of a backup's configuration files (restore/pgconf.py): PostgreSQL's
file syntax and includes, read from a restored data directory and from a stored backup's
parts (real local storage, real stored objects)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from pitrkit.catalog.documents import BackupFile, BackupManifest, BackupPart
from pitrkit.config import Config, RepositoryConfig
from pitrkit.postgres.wal import Lsn
from pitrkit.restore import pgconf
from pitrkit.restore.plan import backup_configuration
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import Archive, manifest_key
from pitrkit.storage.plugins import Plugins


def settings(found: pgconf.Found) -> list[tuple[str, str, str]]:
    return [(setting.file, setting.name, setting.value) for setting in found.settings]


def test_settings_that_run_code_are_found_through_includes_and_the_last_value_counts(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "postgresql.conf").write_text(
        "# archive_command = 'commented out'\n"
        "shared_buffers = 128MB\n"
        "archive_command = 'first'\n"
        "include 'extra.conf'\n"
        "include_if_exists 'absent.conf'\n"
        "include_dir 'conf.d'\n"
        "include '/etc/elsewhere.conf'\n"
        "include '../outside.conf'\n")
    (tmp_path / "extra.conf").write_text("Shared_Preload_Libraries 'evil, pg_stat_statements'  # loaded at start\n")
    (tmp_path / "conf.d" / "10-a.conf").write_text("ssl_passphrase_command = 'sh -c ''id'''\n")
    (tmp_path / "conf.d" / "ignored.txt").write_text("jit_provider = 'x'\n")
    (tmp_path / "postgresql.auto.conf").write_text(
        "archive_command = 'cp %p /attacker/%f'\nsession_preload_libraries = ''\nrestore_command = 'ours'\n")
    found = pgconf.code_settings(pgconf.restored(tmp_path))
    assert settings(found) == [
        ("extra.conf", "shared_preload_libraries", "evil, pg_stat_statements"),
        ("conf.d/10-a.conf", "ssl_passphrase_command", "sh -c 'id'"),
        ("postgresql.auto.conf", "archive_command", "cp %p /attacker/%f"),
    ]
    assert found.notes == ["postgresql.conf: include '/etc/elsewhere.conf' is outside the data directory, not checked",
                           "postgresql.conf: include '../outside.conf' is outside the data directory, not checked"]
    block = pgconf.describe(found)
    assert "  postgresql.auto.conf: archive_command = 'cp %p /attacker/%f'" in block


def test_an_include_loop_stops_at_postgresqls_depth(tmp_path):
    (tmp_path / "postgresql.conf").write_text("include 'postgresql.conf'\narchive_library = 'lib'\n")
    found = pgconf.code_settings(pgconf.restored(tmp_path))
    assert settings(found) == [("postgresql.conf", "archive_library", "lib")]
    assert found.notes == ["postgresql.conf: includes nested deeper than 10, not followed"]


def test_a_configuration_without_such_settings_gives_no_warning(tmp_path):
    (tmp_path / "postgresql.conf").write_text("max_connections = 100\n")
    assert pgconf.describe(pgconf.code_settings(pgconf.restored(tmp_path))) == []


def test_restore_plan_reads_the_files_from_the_backups_parts_only(tmp_path):
    """Two parts: the configuration files in the second; the first is never read."""
    root = tmp_path / "archive"
    root.mkdir()
    archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0)))
    conf, auto = b"port = 5433\n", b"shared_preload_libraries = 'evil'\n"
    streams = [b"x" * 100, conf + auto]
    parts = []
    for number, data in enumerate(streams):
        blob, _ = objects.encode(data, Plugins().compressor("none"))
        key = f"backups/B/data/{number}"
        archive.put(key, blob)
        parts.append(BackupPart(key=key, size=len(data), stored_size=len(blob),
                                sha256=hashlib.sha256(data).hexdigest()))
    (root / "backups/B/data/0").write_bytes(b"unreadable: never fetched")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    manifest = BackupManifest(
        backup_id="B", label="l", system_identifier=1, pg_version=150014, timeline=1, start_lsn=Lsn(0x28),
        start_time=when, stop_lsn=Lsn(0x100), stop_time=when, first_segment="000000010000000000000000",
        last_segment="000000010000000000000000", size=100 + len(conf) + len(auto), stored_size=0, file_count=3,
        compression="none", pitrkit_version="0", backup_label="", parts=parts, directories=[],
        files=[BackupFile("base/1/1", 100, 0o600, 0, 0, 0), BackupFile("postgresql.conf", len(conf), 0o600, 0, 1, 0),
               BackupFile("postgresql.auto.conf", len(auto), 0o600, 0, 1, len(conf))])
    archive.put(manifest_key("B"), codec.encode(manifest, pretty=False))
    found = backup_configuration(archive, "B")
    assert settings(found) == [("postgresql.auto.conf", "shared_preload_libraries", "evil")]
    # A part that cannot be read is a note in the plan, not a failure of it.
    (root / "backups/B/data/1").write_bytes(b"damaged")
    assert "were not read: " in backup_configuration(archive, "B").notes[0]


def test_a_value_that_does_not_print_is_shown_escaped_on_its_one_line(tmp_path):
    # Whoever wrote an unencrypted archive writes these values: an escape sequence must
    # not reach the reader's terminal, nor a line break fake a line of restore's output.
    (tmp_path / "postgresql.conf").write_text(
        "archive_command = 'cp %p /x \x1b[2J\x1b[1;1Hall clear'\n"
        "include '/etc/\x1b]0;title\x07.conf'\n")
    found = pgconf.code_settings(pgconf.restored(tmp_path))
    block = pgconf.describe(found)
    assert "  postgresql.conf: archive_command = 'cp %p /x \\x1b[2J\\x1b[1;1Hall clear'" in block
    assert found.notes == ["postgresql.conf: include '/etc/\\x1b]0;title\\x07.conf' is outside the data directory, "
                           "not checked"]
    assert not any("\x1b" in line or "\x07" in line for line in [*block, *found.notes])

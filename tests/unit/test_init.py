"""`pitrkit init` creates the archive; nothing else does, and every command that writes
refuses, in one line naming `pitrkit init`, a location without `archive.json`. The facts
from a real server or pg_controldata are covered in tests/integration/test_init.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitrkit.cli import main
from pitrkit.config import load
from pitrkit.errors import PitrkitError, RefusedError
from pitrkit.ops.init import ClusterFacts, initialise
from pitrkit.storage import codec, envelope
from pitrkit.storage.archive import IDENTITY_KEY, Archive
from pitrkit.storage.identity import ArchiveIdentity
from tests.unit.segments import SEG_16MIB, SYSID

FACTS = ClusterFacts(SYSID, SEG_16MIB, 15, "the test")


@pytest.fixture(autouse=True)
def no_environment_config(monkeypatch):
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)


def configured(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "archive"
    root.mkdir(exist_ok=True)
    path = tmp_path / "pitrkit.toml"
    path.write_text(f'[repository]\nurl = "file://{root}"\nretries = 0\n[agent]\nenabled = false\n{extra}')
    return path


def stored_identity(tmp_path: Path) -> ArchiveIdentity:
    """archive.json as stored, read without keys (an encrypted archive's is in its
    authenticated envelope)."""
    data = (tmp_path / "archive" / IDENTITY_KEY).read_bytes()
    if envelope.is_sealed(data):
        data = envelope.unseal(IDENTITY_KEY, data, None)
    return codec.decode(data, ArchiveIdentity, "test")


def test_init_creates_archive_json_and_says_so(tmp_path):
    said = initialise(Archive(load(configured(tmp_path))), FACTS)
    assert said.startswith(f"created the archive file://{tmp_path / 'archive'} (archive.json)")
    assert str(SYSID) in said and "PostgreSQL 15, 16 MiB WAL segments" in said
    identity = stored_identity(tmp_path)
    assert (identity.system_identifier, identity.wal_segment_size, identity.pg_versions) == (SYSID, SEG_16MIB, [15])
    assert identity.encryption is None


def test_init_again_for_the_same_cluster_changes_nothing(tmp_path):
    config = load(configured(tmp_path))
    initialise(Archive(config), FACTS)
    before = (tmp_path / "archive" / IDENTITY_KEY).read_bytes()
    said = initialise(Archive(config), FACTS)
    assert "already initialised for this cluster" in said and "nothing changed" in said
    assert (tmp_path / "archive" / IDENTITY_KEY).read_bytes() == before


@pytest.mark.parametrize("other", [FACTS._replace(system_identifier=SYSID + 1),
                                   FACTS._replace(wal_segment_size=SEG_16MIB * 4)])
def test_init_refuses_an_archive_of_another_cluster(tmp_path, other):
    config = load(configured(tmp_path))
    initialise(Archive(config), FACTS)
    with pytest.raises(RefusedError, match="the archive file://.* (belongs to the cluster|holds 16777216-byte)"):
        initialise(Archive(config), other)
    assert stored_identity(tmp_path).system_identifier == SYSID


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"system_identifier": 1}', b"\xff\xfe"])
def test_init_refuses_an_archive_json_it_cannot_read_and_leaves_it(tmp_path, content):
    config = load(configured(tmp_path))
    (tmp_path / "archive" / IDENTITY_KEY).write_bytes(content)
    with pytest.raises(PitrkitError, match="archive.json"):
        initialise(Archive(config), FACTS)
    assert (tmp_path / "archive" / IDENTITY_KEY).read_bytes() == content


def test_init_with_encryption_records_its_parameters(tmp_path):
    key = tmp_path / "archive.key"
    assert main(["keygen", "--key-file", str(key)]) == 0
    config = load(configured(tmp_path, f'[encryption]\nmode = "key"\nkey_file = "{key}"\n'))
    said = initialise(Archive(config), FACTS)
    recorded = stored_identity(tmp_path).encryption
    assert recorded is not None and recorded.mode == "key"
    assert f"encrypted (key mode, key {recorded.current_key_id})" in said
    # The same archive without [encryption] is not "already initialised": it is refused.
    with pytest.raises(RefusedError, match="is encrypted"):
        initialise(Archive(load(configured(tmp_path))), FACTS)


def test_a_lost_race_between_two_inits_reads_the_winners(tmp_path, monkeypatch):
    config = load(configured(tmp_path))
    initialise(Archive(config), FACTS)
    late = Archive(config)
    monkeypatch.setattr(Archive, "identity", _missing_once(Archive.identity))
    assert "already initialised" in initialise(late, FACTS)
    with pytest.raises(RefusedError):
        initialise(Archive(config), FACTS._replace(system_identifier=SYSID + 1))


def _missing_once(identity):
    """Archive.identity that answers "missing" the first time: the other init's
    archive.json appears between this one's look and its create-only put."""
    from pitrkit.storage.archive import ArchiveMissing

    calls = []

    def wrapped(self, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ArchiveMissing("not yet")
        return identity(self, **kwargs)
    return wrapped


# --- the commands that write refuse a location that is no archive --------------------------


def refused(capsys, config: Path, *argv: str) -> str:
    code = main(["--config", str(config), *argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "pitrkit init" in err and "archive.json" in err, err
    return err


def test_wal_receive_refuses_without_init(tmp_path, capsys):
    spool, bindir = tmp_path / "spool", tmp_path / "bin"
    spool.mkdir()
    bindir.mkdir()
    (bindir / "pg_receivewal").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "pg_receivewal").chmod(0o755)
    config = configured(tmp_path, f'[postgres]\nbindir = "{bindir}"\n[receive]\nspool = "{spool}"\n')
    refused(capsys, config, "wal-receive")
    assert list(spool.iterdir()) == []  # not even its lock: it never started
    assert list((tmp_path / "archive").iterdir()) == []


def test_the_daemon_refuses_without_init(tmp_path, capsys):
    config = configured(tmp_path, '[daemon]\nevery = "1h"\nlisten = ""\n')
    refused(capsys, config, "daemon")
    assert list((tmp_path / "archive").iterdir()) == []


# --- the commands that read treat it as a fault, not as an empty archive -------------------


@pytest.mark.parametrize("argv", [["restore-plan", "--latest"], ["wal-list"], ["retention", "apply", "--dry-run"]])
def test_readers_fail_on_a_location_that_is_no_archive(tmp_path, capsys, argv):
    """An unmounted archive must not plan "no WAL", list nothing or decide nothing."""
    config = configured(tmp_path, "[retention]\nkeep_last = 1\n")
    assert main(["--config", str(config), *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no archive.json" in err, err

"""Authenticated documents in an encrypted archive: `archive.json`, manifests and
`catalog/*`, in mode "key" (HMAC under a key derived from the archive key, here a
passphrase, so that archive.json carries a salt) and mode "recipient" (Ed25519, signed
by writers, verified by readers that hold only the verify key).

A synthetic archive on real local storage, the commands through `pitrkit.cli.main`;
each tampering is one changed value in the stored bytes, the tag left as it was.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pitrkit.catalog.documents import BackupCatalog
from pitrkit.cli import main
from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.errors import FETCH_FAULT, ConfigError
from pitrkit.storage import codec, envelope, keys
from pitrkit.storage.archive import IDENTITY_KEY, Archive, TamperedDocument, manifest_key
from pitrkit.storage.identity import ArchiveIdentity
from tests.unit.synthetic_archive import SyntheticArchive, name

PASSPHRASE = "correct horse battery staple"
INDEX_KEY = "catalog/wal/0000000100000000.json"


class Hosts:
    """One archive, and the `[encryption]` of the host that writes it and of the host
    that reads it (the same in key mode)."""

    def __init__(self, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
        if mode == "key":
            monkeypatch.setattr(keys, "SCRYPT_N", 1 << 10)  # a salt in archive.json, at a test's cost
            monkeypatch.setenv("PK_PASS", PASSPHRASE)
            self.writer = self.reader = 'mode = "key"\npassphrase_env = "PK_PASS"\n'
        else:
            keys.generate_key_pair(tmp_path / "r.key", tmp_path / "r.pub")
            keys.generate_signing_pair(tmp_path / "s.key", tmp_path / "s.pub")
            self.writer = (f'mode = "recipient"\npublic_key_file = "{tmp_path}/r.pub"\n'
                           f'signing_key_file = "{tmp_path}/s.key"\n')
            self.reader = (f'mode = "recipient"\nprivate_key_file = "{tmp_path}/r.key"\n'
                           f'verify_key_file = "{tmp_path}/s.pub"\n')
        self.root = tmp_path / "archive"
        self.writer_config = self._config(tmp_path / "writer.toml", self.writer)
        self.reader_config = self._config(tmp_path / "reader.toml", self.reader)
        self.store = SyntheticArchive(self.root, self._settings(self.writer_config))
        # Segments 0..9 of timeline 1 (three 4-segment folders: two sealed) and one backup.
        self.store.segments(1, 0, 9)
        self.store.backup("B1", 1, 1, 2)

    def _config(self, path: Path, encryption: str) -> Path:
        path.write_text(f'[repository]\nurl = "file://{self.root}"\nretries = 0\n[agent]\nenabled = false\n'
                        f"[encryption]\n{encryption}")
        return path

    @staticmethod
    def _settings(config: Path) -> EncryptionConfig:
        from pitrkit.config import load

        return load(config).encryption

    def archive(self, config: Path) -> Archive:
        return Archive(Config(repository=RepositoryConfig(url=f"file://{self.root}", retries=0),
                              encryption=self._settings(config)))

    def tamper(self, key: str, old: bytes, new: bytes) -> None:
        """Change one value in the stored document, keeping its tag."""
        path = self.root / key
        data = path.read_bytes()
        assert data.count(old) == 1, (key, old)
        path.write_bytes(data.replace(old, new))


@pytest.fixture(params=["key", "recipient"])
def hosts(request, tmp_path, monkeypatch) -> Hosts:
    monkeypatch.delenv("PITRKIT_CONFIG", raising=False)
    return Hosts(tmp_path, request.param, monkeypatch)


def run(capsys, config: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, config: Path, key: str, *argv: str, code: int = 1) -> None:
    result, _, err = run(capsys, config, *argv)
    assert result == code, err
    assert err.count("\n") == 1 and err.startswith(f"pitrkit: {key} does not authenticate: "), err
    assert "Traceback" not in err


def test_untampered_documents_are_read_and_written_in_their_envelopes(hosts, capsys):
    assert run(capsys, hosts.writer_config, "catalog", "rebuild")[0] == 0
    for key in (IDENTITY_KEY, manifest_key("B1"), "catalog/backups.json", INDEX_KEY):
        assert envelope.is_sealed((hosts.root / key).read_bytes()), key
    # The document inside is plain JSON, for jq and a person.
    stored = json.loads((hosts.root / "catalog/backups.json").read_bytes())
    assert stored["document"]["backups"][0]["backup_id"] == "B1"
    assert set(stored["authentication"]) == {"algorithm", "key_id", "tag"}
    code, out, err = run(capsys, hosts.reader_config, "backup-list")
    assert (code, err) == (0, "") and "B1" in out
    code, out, err = run(capsys, hosts.reader_config, "restore-plan", "--latest")
    assert (code, err) == (0, "") and name(1, 9) in out


def test_a_tampered_manifest_is_refused_naming_it(hosts, capsys):
    # No catalog yet: backup-list and restore-plan read the manifest.
    hosts.tamper(manifest_key("B1"), b'"system_identifier":1,', b'"system_identifier":7,')
    refused(capsys, hosts.reader_config, manifest_key("B1"), "backup-list")
    refused(capsys, hosts.reader_config, manifest_key("B1"), "restore-plan", "--latest")


def test_a_manifest_moved_under_another_backup_is_refused(hosts, capsys):
    hosts.store.backup("B2", 1, 5, 6)
    (hosts.root / manifest_key("B2")).write_bytes((hosts.root / manifest_key("B1")).read_bytes())
    refused(capsys, hosts.reader_config, manifest_key("B2"), "backup-list")


def test_a_tampered_backup_catalog_is_refused_naming_it(hosts, capsys):
    assert run(capsys, hosts.writer_config, "catalog", "rebuild")[0] == 0
    hosts.tamper("catalog/backups.json", b'"stop_lsn": "0/80000100"', b'"stop_lsn": "0/80000000"')
    refused(capsys, hosts.reader_config, "catalog/backups.json", "backup-list")
    refused(capsys, hosts.reader_config, "catalog/backups.json", "restore-plan", "--latest")
    # The catalog is a cache of authenticated manifests: rebuilding it repairs it.
    assert run(capsys, hosts.writer_config, "catalog", "rebuild")[0] == 0
    assert run(capsys, hosts.reader_config, "backup-list")[0] == 0


def test_a_tampered_wal_index_is_refused_naming_it(hosts, capsys):
    assert run(capsys, hosts.writer_config, "catalog", "rebuild")[0] == 0
    hosts.tamper(INDEX_KEY, b'["000000010000000000000002",', b'["000000010000000000000012",')
    refused(capsys, hosts.reader_config, INDEX_KEY, "restore-plan", "--latest")
    refused(capsys, hosts.reader_config, INDEX_KEY, "wal-list")


def test_a_tampered_archive_json_is_refused_by_every_reader(hosts, capsys, tmp_path):
    data = (hosts.root / IDENTITY_KEY).read_bytes()
    if hosts.reader.startswith('mode = "key"'):
        # The salt: the passphrase then derives another key, whose tag differs.
        identity = codec.decode(envelope.unseal(IDENTITY_KEY, data, None), ArchiveIdentity, IDENTITY_KEY)
        assert identity.encryption is not None and identity.encryption.scrypt is not None
        salt = base64.b64encode(identity.encryption.scrypt.salt)
        hosts.tamper(IDENTITY_KEY, salt, base64.b64encode(bytes(16)))
    else:
        hosts.tamper(IDENTITY_KEY, b'"system_identifier": 1,', b'"system_identifier": 2,')
    for argv in (["backup-list"], ["restore-plan", "--latest"], ["wal-list"]):
        refused(capsys, hosts.reader_config, IDENTITY_KEY, *argv)
    # wal-fetch: a fault (126), so that recovery stops instead of ending early.
    refused(capsys, hosts.reader_config, IDENTITY_KEY, "wal-fetch", name(1, 3), str(tmp_path / "out"),
            code=FETCH_FAULT)
    assert not (tmp_path / "out").exists()


def test_a_plain_document_in_an_encrypted_archive_is_refused(hosts, capsys):
    plain = BackupCatalog(backups=[])
    (hosts.root / "catalog").mkdir()
    (hosts.root / "catalog/backups.json").write_bytes(codec.encode(plain))
    result, _, err = run(capsys, hosts.reader_config, "backup-list")
    assert result == 1 and "catalog/backups.json does not authenticate: it is not authenticated" in err


def test_a_host_with_only_the_verify_key_cannot_write_documents(hosts, capsys):
    if hosts.reader.startswith('mode = "key"'):
        pytest.skip("in key mode every host that has the key can write")
    result, _, err = run(capsys, hosts.reader_config, "catalog", "rebuild")
    assert result == 1 and "cannot write catalog/backups.json" in err and "signing_key_file" in err


def test_archive_json_is_verified_once_while_its_bytes_do_not_change(hosts, monkeypatch):
    archive = hosts.archive(hosts.reader_config)
    cipher = archive.cipher()
    assert cipher is not None and cipher.documents is not None
    checks = []
    verify = type(cipher.documents).verify
    monkeypatch.setattr(type(cipher.documents), "verify", lambda self, *a: (checks.append(1), verify(self, *a)))
    monkeypatch.setattr("pitrkit.storage.archive.IDENTITY_TTL", 0.0)  # re-read on every call, as the agent may
    for _ in range(5):
        archive.identity()
    assert checks == []
    hosts.tamper(IDENTITY_KEY, b'"wal_segment_size": 1073741824', b'"wal_segment_size": 536870912')
    with pytest.raises(TamperedDocument, match=IDENTITY_KEY):
        archive.identity()
    assert checks == [1]


def test_the_signing_pair_is_written_private_and_public_and_never_overwritten(tmp_path, capsys):
    signing, verify = tmp_path / "s.key", tmp_path / "s.pub"
    assert main(["keygen", "--signing", str(signing), str(verify)]) == 0
    key_id = capsys.readouterr().out.strip()
    assert key_id.startswith("ed25519-")
    assert [oct(path.stat().st_mode & 0o777) for path in (signing, verify)] == ["0o600", "0o644"]
    assert keys.signing_key(str(signing), None) == keys.signing_key(str(signing), str(verify))
    assert keys.signing_key(None, str(verify)).key_id == key_id
    assert main(["keygen", "--signing", str(tmp_path / "other"), str(verify)]) == 2
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="is not a pitrkit-ed25519-verify file"):
        keys.signing_key(None, str(signing))

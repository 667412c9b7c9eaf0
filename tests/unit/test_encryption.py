"""Encryption: the chunked object cipher in both modes, tampering of every kind, the key
files and their permissions, `archive.json`'s key policy (current key, rotation,
plaintext and ciphertext never mixed), `pitrkit keygen`, and secrets that must never
reach the archive, stderr or an error message.

Real `cryptography`, real local storage, wal-push and wal-fetch through their own
functions or the CLI. scrypt runs at its real cost where a test goes through the CLI;
tests of the cipher alone record cheap scrypt parameters, which the archive would
otherwise choose.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from pitrkit.cli import main
from pitrkit.config import Config, EncryptionConfig, KeySource, RepositoryConfig
from pitrkit.errors import FETCH_FAULT, ConfigError, RefusedError
from pitrkit.postgres.wal import SegmentName
from pitrkit.storage import codec, envelope, keys, objects
from pitrkit.storage.archive import IDENTITY_KEY, Archive, ArchiveMissing, TamperedDocument
from pitrkit.storage.identity import ArchiveIdentity, EncryptionParameters, ScryptParameters
from pitrkit.storage.plugins import Plugins, encryption
from pitrkit.wal.push import push
from tests.unit.segments import SEG_16MIB, init_archive, segment

KEY = "wal/0000000100000000/000000010000000000000001"
NONE = Plugins().compressor("none")
CHEAP_SCRYPT = ScryptParameters(salt=b"0123456789abcdef", n=1 << 10, r=8, p=1)
PASSPHRASE = "correct horse battery staple"


def compressor_for(name: str):
    return Plugins().compressor(name)


def key_file(directory: Path, name: str = "archive.key") -> str:
    path = directory / name
    keys.generate_key_file(path)
    return str(path)


def key_cipher(path: str, *old: KeySource, recorded: EncryptionParameters | None = None) -> encryption.ChunkedCipher:
    return encryption.build(EncryptionConfig(mode="key", key_file=path, old_keys=list(old)), recorded)


def pair(directory: Path, name: str) -> tuple[str, str]:
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    keys.generate_key_pair(private, public)
    return str(private), str(public)


def signing(directory: Path) -> tuple[str, str]:
    """The document signing pair recipient mode needs: (signing key, verify key)."""
    private, public = directory / "signing.key", directory / "signing.pub"
    if not private.exists():
        keys.generate_signing_pair(private, public)
    return str(private), str(public)


def writer_settings(public: str, directory: Path) -> EncryptionConfig:
    """A database host in recipient mode: the public key, the signing key."""
    return EncryptionConfig(mode="recipient", public_key_file=public, signing_key_file=signing(directory)[0])


def reader_settings(private: str, directory: Path) -> EncryptionConfig:
    """A restore host in recipient mode: the private key, the verify key."""
    return EncryptionConfig(mode="recipient", private_key_file=private, verify_key_file=signing(directory)[1])


def seal(cipher, data: bytes = b"x" * 5000) -> bytes:
    return objects.encode(data, NONE, cipher)[0]


def open_sealed(blob: bytes, cipher) -> bytes:
    return objects.decode(KEY, blob, compressor_for, cipher)


@pytest.fixture
def small_chunks(monkeypatch):
    """1 KiB chunks, so that a few KB make several (the size is in each object)."""
    monkeypatch.setattr(encryption, "CHUNK_SIZE", 1024)


# --- the object cipher -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 10_000])
def test_key_mode_round_trip_at_chunk_boundaries(tmp_path, small_chunks, size):
    cipher = key_cipher(key_file(tmp_path))
    data = os.urandom(size)
    blob, header = objects.encode(data, NONE, cipher)
    assert header.encryption == encryption.ALGORITHM and header.key_id == cipher.key_id
    assert size < 16 or data not in blob
    assert open_sealed(blob, cipher) == data


def test_recipient_mode_writes_with_the_public_key_alone_and_reads_only_with_the_private(tmp_path):
    private, public = pair(tmp_path, "recipient")
    writer = encryption.build(writer_settings(public, tmp_path), None)
    reader = encryption.build(reader_settings(private, tmp_path), None)
    assert not writer.can_decrypt and reader.can_decrypt and writer.key_id == reader.key_id
    blob = seal(writer, SAMPLE := os.urandom(3 * encryption.CHUNK_SIZE + 7))
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*holds only its public key"):
        open_sealed(blob, writer)
    assert open_sealed(blob, reader) == SAMPLE


def test_each_object_has_its_own_data_key_and_nonces(tmp_path):
    cipher = key_cipher(key_file(tmp_path))
    first, second = seal(cipher), seal(cipher)
    header_end = objects.read_header(KEY, first)[1]
    assert first[:header_end] == second[:header_end]  # same header: same content
    assert first[header_end:] != second[header_end:]


def test_the_wrong_key_is_refused_naming_the_object(tmp_path):
    blob = seal(key_cipher(key_file(tmp_path, "a.key")))
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*encrypted with key key-.*does not list"):
        open_sealed(blob, key_cipher(key_file(tmp_path, "b.key")))


def test_a_key_with_the_right_id_but_other_bytes_fails_authentication(tmp_path):
    cipher = key_cipher(key_file(tmp_path))
    blob = seal(cipher)
    impostor = keys.SymmetricKey(cipher.key_id, os.urandom(32))
    forged = encryption.ChunkedCipher("key", impostor, {cipher.key_id: impostor}, msgspec.convert(
        cipher.archive_parameters, EncryptionParameters), encryption.KeyedDocuments(impostor, {}))
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*does not authenticate with key {cipher.key_id}"):
        open_sealed(blob, forged)


def body_start(blob: bytes, mode: str = "key") -> int:
    """Offset of the first chunk in an encrypted object."""
    wrapped = (32 if mode == "recipient" else 0) + 12 + 48
    return objects.read_header(KEY, blob)[1] + wrapped + 11


@pytest.mark.parametrize("where", ["header", "wrapped key", "chunk size", "body"])
def test_any_altered_byte_is_refused_naming_the_object(tmp_path, where):
    cipher = key_cipher(key_file(tmp_path))
    blob = bytearray(seal(cipher))
    header_end = objects.read_header(KEY, bytes(blob))[1]
    offset = {"header": header_end - 3, "wrapped key": header_end + 20, "chunk size": body_start(bytes(blob)) - 1,
              "body": len(blob) - 100}[where]
    blob[offset] ^= 0x01
    with pytest.raises(objects.CorruptObject, match=KEY):
        open_sealed(bytes(blob), cipher)


def test_a_header_from_another_object_is_refused(tmp_path):
    """The header is the AEAD's associated data: grafting one object's body under another
    object's header (e.g. to change the claimed checksum) fails."""
    cipher = key_cipher(key_file(tmp_path))
    first, second = seal(cipher, b"a" * 100), seal(cipher, b"b" * 100)
    end = objects.read_header(KEY, first)[1]
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*does not authenticate"):
        open_sealed(second[:end] + first[end:], cipher)


def test_truncation_at_a_chunk_boundary_and_anywhere_else_is_refused(tmp_path, small_chunks):
    cipher = key_cipher(key_file(tmp_path))
    blob = seal(cipher, os.urandom(4 * 1024))
    start = body_start(blob)
    for cut in (start, start + (1024 + 16), start + 3 * (1024 + 16), len(blob) - 1):
        with pytest.raises(objects.CorruptObject, match=KEY):
            open_sealed(blob[:cut], cipher)


def test_the_cipher_alone_detects_a_body_cut_at_a_chunk_boundary(tmp_path, small_chunks):
    """Without the header's size check: the final-chunk flag is what catches it."""
    cipher = key_cipher(key_file(tmp_path))
    associated = b"the header"
    body = cipher.encrypt(os.urandom(4 * 1024), associated)
    preamble = 12 + 48 + 11
    for chunks in (1, 2, 3):
        with pytest.raises(ValueError, match=f"chunk {chunks - 1} does not authenticate"):
            cipher.decrypt(body[: preamble + chunks * (1024 + 16)], associated, cipher.key_id)


def test_reordered_chunks_are_refused(tmp_path, small_chunks):
    cipher = key_cipher(key_file(tmp_path))
    blob = seal(cipher, os.urandom(3 * 1024))
    start, chunk = body_start(blob), 1024 + 16
    swapped = blob[:start] + blob[start + chunk : start + 2 * chunk] + blob[start : start + chunk] + \
        blob[start + 2 * chunk :]
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*chunk 0 does not authenticate"):
        open_sealed(swapped, cipher)


def test_a_chunk_from_another_object_is_refused(tmp_path, small_chunks):
    cipher = key_cipher(key_file(tmp_path))
    first, second = seal(cipher, b"a" * 3000), seal(cipher, b"a" * 3000)
    start, chunk = body_start(first), 1024 + 16
    grafted = first[: start + chunk] + second[start + chunk : start + 2 * chunk] + first[start + 2 * chunk :]
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*chunk 1 does not authenticate"):
        open_sealed(grafted, cipher)


def test_a_recipient_object_tampered_in_its_ephemeral_key_is_refused(tmp_path):
    private, public = pair(tmp_path, "r")
    reader = encryption.build(reader_settings(private, tmp_path), None)
    blob = bytearray(seal(reader))
    blob[objects.read_header(KEY, bytes(blob))[1] + 5] ^= 0x80
    with pytest.raises(objects.CorruptObject, match=f"{KEY}.*does not authenticate"):
        open_sealed(bytes(blob), reader)


# --- keys and key files ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused(tmp_path, mode):
    path = key_file(tmp_path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=f"refusing the key file {path}: its mode is {mode:04o}"):
        key_cipher(path)


def test_a_key_file_owned_by_another_user_is_refused(tmp_path):
    path = key_file(tmp_path)
    os.chown(path, 4242, -1)
    with pytest.raises(ConfigError, match="owned by uid 4242"):
        key_cipher(path)


def test_a_public_key_is_not_accepted_as_a_key_file(tmp_path):
    _, public = pair(tmp_path, "r")
    os.chmod(public, 0o600)
    with pytest.raises(ConfigError, match="is not a pitrkit-key file"):
        key_cipher(public)


def test_keygen_writes_private_files_0600_and_never_overwrites(tmp_path, capsys):
    assert main(["keygen", "--key-file", str(tmp_path / "k")]) == 0
    key_id = capsys.readouterr().out.strip()
    assert key_id == key_cipher(str(tmp_path / "k")).key_id
    assert main(["keygen", "--recipient", str(tmp_path / "priv"), str(tmp_path / "pub")]) == 0
    assert [oct(os.stat(tmp_path / name).st_mode & 0o777) for name in ("k", "priv", "pub")] == \
        ["0o600", "0o600", "0o644"]
    before = (tmp_path / "k").read_bytes()
    assert main(["keygen", "--key-file", str(tmp_path / "k")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "k").read_bytes() == before
    assert main(["keygen", "--recipient", str(tmp_path / "new"), str(tmp_path / "pub")]) == 2
    assert not (tmp_path / "new").exists()


def test_a_passphrase_is_stretched_with_the_archives_salt(monkeypatch):
    monkeypatch.setenv("PK_PASS", PASSPHRASE)
    settings = EncryptionConfig(mode="key", passphrase_env="PK_PASS")
    recorded = EncryptionParameters(mode="key", algorithm=encryption.ALGORITHM, key_ids=["x"], scrypt=CHEAP_SCRYPT)
    first, again = encryption.build(settings, recorded), encryption.build(settings, recorded)
    assert first.key_id == again.key_id
    other_salt = msgspec.structs.replace(recorded, scrypt=msgspec.structs.replace(CHEAP_SCRYPT, salt=b"x" * 16))
    assert encryption.build(settings, other_salt).key_id != first.key_id
    assert open_sealed(seal(first), again) == b"x" * 5000


def test_a_passphrase_command_is_run_without_a_shell_and_its_failure_shows_no_output():
    assert keys.passphrase_from_command([sys.executable, "-c", f"print({PASSPHRASE!r})"]) == PASSPHRASE.encode()
    failing = [sys.executable, "-c", f"print({PASSPHRASE!r}); raise SystemExit(3)"]
    with pytest.raises(ConfigError) as refused:
        keys.passphrase_from_command(failing)
    assert "exited with code 3" in str(refused.value) and PASSPHRASE not in str(refused.value)


def test_a_missing_passphrase_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PK_NOPE", raising=False)
    with pytest.raises(ConfigError, match="PK_NOPE"):
        keys.passphrase_from_environment("PK_NOPE")


# --- the archive's key policy ------------------------------------------------------------------


class Host:
    """A database host: an archive opened with one `[encryption]`, pushing segments."""

    def __init__(self, root: Path, files: Path, settings: EncryptionConfig) -> None:
        files.mkdir(exist_ok=True)
        self.files = files
        self.archive = Archive(Config(repository=RepositoryConfig(url=f"file://{root}", retries=0),
                                      encryption=settings))

    def init(self) -> Host:
        """`pitrkit init` on this host: create the archive with its `[encryption]`."""
        init_archive(self.archive)
        return self

    def push(self, segno: int, filler: bytes = b"") -> str:
        path = self.files / SegmentName(1, segno, SEG_16MIB).name
        path.write_bytes(segment(segno, filler=filler))
        return push(self.archive, path)

    def read(self, segno: int) -> bytes:
        name = SegmentName(1, segno, SEG_16MIB).name
        key = f"wal/{name[:16]}/{name}"
        return objects.decode(key, self.archive.get(key), self.archive.plugins.compressor, self.archive.cipher())


@pytest.fixture
def archive_root(tmp_path) -> Path:
    root = tmp_path / "archive"
    root.mkdir()
    return root


def identity(root: Path) -> ArchiveIdentity:
    """archive.json as stored, its envelope opened without checking it."""
    return codec.decode(envelope.unseal(IDENTITY_KEY, (root / IDENTITY_KEY).read_bytes(), None), ArchiveIdentity,
                        IDENTITY_KEY)


def test_archive_json_records_mode_and_key_id_never_the_key(tmp_path, archive_root):
    path = key_file(tmp_path)
    host = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=path)).init()
    host.push(1)
    recorded = identity(archive_root).encryption
    assert recorded is not None and recorded.mode == "key" and recorded.key_ids == [host.archive.cipher().key_id]
    assert recorded.scrypt is None
    secret = keys.read_secret_file(path, keys.SYMMETRIC_LABEL)
    assert secret not in (archive_root / IDENTITY_KEY).read_bytes()
    assert host.read(1) == segment(1)


def test_plaintext_and_ciphertext_are_never_mixed_in_one_archive(tmp_path, archive_root):
    plain = Host(archive_root, tmp_path / "files", EncryptionConfig()).init()
    plain.push(1)
    encrypted = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path)))
    with pytest.raises(RefusedError, match="created without encryption"):
        encrypted.push(2)
    other_root = tmp_path / "other"
    other_root.mkdir()
    Host(other_root, tmp_path / "files", encrypted.archive.config.encryption).init().push(1)
    with pytest.raises(RefusedError, match="is encrypted \\(key mode\\).*refusing to store plaintext"):
        Host(other_root, tmp_path / "files", EncryptionConfig()).push(2)


def test_a_key_that_is_not_the_archives_current_key_is_refused(tmp_path, archive_root):
    first = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path, "a")))
    first.init().push(1)
    stranger = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path, "b")))
    with pytest.raises(TamperedDocument, match="archive.json does not authenticate: .*which \\[encryption\\] does "
                                               "not list"):
        stranger.push(2)
    assert not (archive_root / "wal/0000000100000000/000000010000000000000002").exists()


def test_rotation_makes_the_new_key_current_and_keeps_old_objects_readable(tmp_path, archive_root):
    old, new = key_file(tmp_path, "old"), key_file(tmp_path, "new")
    before = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=old)).init()
    before.push(1)
    rotated = Host(archive_root, tmp_path / "files",
                   EncryptionConfig(mode="key", key_file=new, old_keys=[KeySource(key_file=old)]))
    rotated.push(2)
    recorded = identity(archive_root).encryption
    assert recorded is not None and recorded.key_ids == [before.archive.cipher().key_id,
                                                         rotated.archive.cipher().key_id]
    assert rotated.read(1) == segment(1) and rotated.read(2) == segment(2)
    # archive.json is now authenticated under the new key, which a stale host lacks.
    stale = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=old))
    new_id = rotated.archive.cipher().key_id
    with pytest.raises(TamperedDocument, match=f"archive.json does not authenticate: .*key {new_id}.*does not list"):
        stale.push(3)
    with pytest.raises(TamperedDocument, match="archive.json"):
        stale.read(2)


def test_a_public_key_host_pushes_and_cannot_read_what_it_pushed(tmp_path, archive_root):
    private, public = pair(tmp_path, "r")
    writer = Host(archive_root, tmp_path / "files", writer_settings(public, tmp_path)).init()
    writer.push(1)
    assert "identical content" in writer.push(1)  # a re-run of archive_command
    with pytest.raises(RefusedError, match="different content"):
        writer.push(1, filler=b"other")
    with pytest.raises(objects.CorruptObject, match="000000010000000000000001.*holds only its public key"):
        writer.read(1)
    reader = Host(archive_root, tmp_path / "files", reader_settings(private, tmp_path))
    assert reader.read(1) == segment(1)


def test_a_plaintext_object_in_an_encrypted_archive_is_refused_even_if_archive_json_says_plaintext(
        tmp_path, archive_root):
    """Only the key holder can make an encrypted object; anyone who can write to the
    bucket can make a plaintext one, and a plain archive.json saying "not encrypted"."""
    host = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path))).init()
    host.push(1)
    stored = archive_root / "wal/0000000100000000/000000010000000000000002"
    stored.write_bytes(objects.encode(segment(2), NONE)[0])
    with pytest.raises(objects.CorruptObject, match="000000010000000000000002.*it is not encrypted"):
        host.read(2)
    forged = msgspec.structs.replace(identity(archive_root), encryption=None)
    (archive_root / IDENTITY_KEY).write_bytes(codec.encode(forged))
    reader = Host(archive_root, tmp_path / "files", host.archive.config.encryption)
    with pytest.raises(RefusedError, match="archive.json records no encryption and is not authenticated"):
        reader.read(2)


def test_a_reader_that_looked_before_the_archive_existed_writes_with_its_parameters(
        tmp_path, archive_root, monkeypatch):
    """A passphrase's key depends on the archive's salt: a cipher built before
    archive.json existed (another host created it) must not be kept."""
    monkeypatch.setattr(keys, "SCRYPT_N", 1 << 10)
    monkeypatch.setenv("PK_PASS", PASSPHRASE)
    settings = EncryptionConfig(mode="key", passphrase_env="PK_PASS")
    early = Host(archive_root, tmp_path / "files", settings)
    with pytest.raises(ArchiveMissing):
        early.archive.cipher()  # no archive yet: no salt to build a key with
    Host(archive_root, tmp_path / "files", settings).init().push(1)
    assert "archived" in early.push(2)
    assert early.read(1) == segment(1)


def test_the_mode_must_match_the_archives(tmp_path, archive_root):
    Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path))).init().push(1)
    _, public = pair(tmp_path, "r")
    with pytest.raises(ConfigError, match="encrypted in mode 'key'"):
        Host(archive_root, tmp_path / "files", writer_settings(public, tmp_path)).push(2)


# --- through the command line: exit codes and secrets ---------------------------------------------


def write_config(path: Path, root: Path, encryption_section: str) -> Path:
    path.write_text(f'[repository]\nurl = "file://{root}"\nretries = 0\n[agent]\nenabled = false\n'
                    f"[encryption]\n{encryption_section}")
    return path


def test_wal_fetch_with_the_wrong_key_exits_126_naming_the_object(tmp_path, archive_root, capsys):
    first = Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path, "a")))
    first.init().push(1)
    config = write_config(tmp_path / "c.toml", archive_root, f'mode = "key"\nkey_file = "{key_file(tmp_path, "b")}"\n')
    name = SegmentName(1, 1, SEG_16MIB).name
    assert main(["--config", str(config), "wal-fetch", name, str(tmp_path / "out")]) == FETCH_FAULT
    error = capsys.readouterr().err
    assert "archive.json does not authenticate" in error and "does not list" in error
    assert not (tmp_path / "out").exists()


def test_a_passphrase_never_reaches_the_archive_stderr_or_argv(tmp_path, archive_root, monkeypatch, capsys):
    monkeypatch.setenv("PK_PASS", PASSPHRASE)
    Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", passphrase_env="PK_PASS")).init()
    config = write_config(tmp_path / "c.toml", archive_root, 'mode = "key"\npassphrase_env = "PK_PASS"\n')
    segment_path = tmp_path / SegmentName(1, 1, SEG_16MIB).name
    segment_path.write_bytes(segment(1))
    assert main(["-v", "--config", str(config), "wal-push", str(segment_path)]) == 0
    assert main(["-v", "--config", str(config), "wal-fetch", segment_path.name, str(tmp_path / "back")]) == 0
    assert (tmp_path / "back").read_bytes() == segment(1)
    monkeypatch.setenv("PK_PASS", "not the passphrase")
    assert main(["-v", "--config", str(config), "wal-fetch", segment_path.name, str(tmp_path / "x")]) == FETCH_FAULT
    recorded = identity(archive_root).encryption
    assert recorded is not None and recorded.scrypt is not None
    secret = keys.stretch(PASSPHRASE.encode(), recorded.scrypt).secret
    stderr = capsys.readouterr().err
    assert "is not the archive's current key" not in stderr and "does not list" in stderr
    for needle in (PASSPHRASE.encode(), secret, secret.hex().encode()):
        assert needle not in stderr.encode()
        for stored in archive_root.rglob("*"):
            assert not stored.is_file() or needle not in stored.read_bytes(), stored


def test_encryption_off_imports_no_cryptography(tmp_path, archive_root):
    Host(archive_root, tmp_path / "files", EncryptionConfig()).init()
    config = write_config(tmp_path / "c.toml", archive_root, "")
    segment_path = tmp_path / SegmentName(1, 1, SEG_16MIB).name
    segment_path.write_bytes(segment(1))
    probe = ("import sys; from pitrkit.cli import main;"
             "code = main(['--config', sys.argv[1], 'wal-push', sys.argv[2]]);"
             "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'cryptography'}),"
             "'pitrkit.storage.keys' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, str(config), str(segment_path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["0", "[]", "False"], done.stderr


def test_bad_encryption_settings_are_one_clear_line(tmp_path, archive_root, capsys):
    Host(archive_root, tmp_path / "files", EncryptionConfig(mode="key", key_file=key_file(tmp_path))).init()
    config = write_config(tmp_path / "c.toml", archive_root, 'mode = "key"\nkey_file = "/nonexistent/k"\n')
    segment_path = tmp_path / SegmentName(1, 1, SEG_16MIB).name
    segment_path.write_bytes(segment(1))
    assert main(["--config", str(config), "wal-push", str(segment_path)]) == 2
    assert capsys.readouterr().err.strip() == \
        "pitrkit: cannot open the key file /nonexistent/k: No such file or directory"


def test_chunk_nonces_carry_counter_and_final_flag():
    """The nonce layout the format documents: prefix, big-endian counter, final flag."""
    assert encryption._nonce(b"P" * 7, 258, True) == b"P" * 7 + struct.pack(">I", 258) + b"\x01"
    with pytest.raises(ValueError):
        encryption._nonce(b"P" * 7, 1 << 32, False)


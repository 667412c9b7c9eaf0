"""Key material for encryption: reading the keys `[encryption]` names, stretching
passphrases, key ids, wrapping each object's data key, the keys that authenticate the
archive's documents, and writing new keys (`pitrkit keygen`).

A key never leaves this module's values except into the cipher: no message, log line or
exception built here contains a key or a passphrase, only file names, variable names and
key ids. Key ids are fingerprints (a SHA-256 prefix of the key, domain-separated), safe
to store in every object header and in `archive.json`: recovering a key from its id is
as hard as breaking SHA-256, and testing passphrase guesses against an id costs the same
scrypt work per guess as testing them against any encrypted object.

Files are text, one line `<label> <base64>`, so that a key can be printed, pasted into a
password manager or a safe, and a public key cannot be mistaken for a private one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pitrkit import durable
from pitrkit.errors import ConfigError, UsageError
from pitrkit.storage.identity import ScryptParameters

KEY_BYTES = 32
SYMMETRIC_LABEL = "pitrkit-key"
PRIVATE_LABEL = "pitrkit-x25519-private"
PUBLIC_LABEL = "pitrkit-x25519-public"
SIGNING_LABEL = "pitrkit-ed25519-signing"
VERIFY_LABEL = "pitrkit-ed25519-verify"

# scrypt at N=2^17, r=8, p=1: 128 MiB and ~0.4 s here per derivation (OWASP's
# recommendation). Paid once per process: the agent derives once, a wal-push run without
# the agent derives on every segment (prefer a key file there).
SCRYPT_N = 1 << 17
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
PASSPHRASE_COMMAND_TIMEOUT = 30.0


def new_scrypt_parameters() -> ScryptParameters:
    return ScryptParameters(salt=os.urandom(SALT_BYTES), n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)


def symmetric_key_id(key: bytes) -> str:
    return "key-" + hashlib.sha256(b"pitrkit symmetric key id\0" + key).hexdigest()[:16]


def recipient_key_id(public: bytes) -> str:
    return "x25519-" + hashlib.sha256(b"pitrkit recipient key id\0" + public).hexdigest()[:16]


def signing_key_id(public: bytes) -> str:
    return "ed25519-" + hashlib.sha256(b"pitrkit signing key id\0" + public).hexdigest()[:16]


_NONCE = 12
_TAG = 16
_WRAP_INFO = b"pitrkit x25519 data key wrap v1"
_DOCUMENT_MAC_INFO = b"pitrkit document mac v1"


@dataclass(frozen=True, slots=True)
class SymmetricKey:
    """Mode "key": wraps a data key with AES-256-GCM under the key itself."""

    key_id: str
    secret: bytes

    # nonce | encrypted data key | tag
    wrapped_size: ClassVar[int] = _NONCE + KEY_BYTES + _TAG
    can_unwrap: ClassVar[bool] = True

    def __repr__(self) -> str:  # never the secret, even in a debugger or a traceback
        return f"SymmetricKey({self.key_id})"

    def wrap(self, data_key: bytes, associated: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(_NONCE)
        return nonce + AESGCM(self.secret).encrypt(nonce, data_key, associated)

    def unwrap(self, wrapped: bytes, associated: bytes) -> bytes:
        """Raises cryptography's `InvalidTag` when the key or anything authenticated differs."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self.secret).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], associated)

    def document_mac_key(self) -> bytes:
        """The HMAC key for the archive's documents: HKDF of this key with its own label,
        so that no tag made with it is ever made with the key itself."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DOCUMENT_MAC_INFO).derive(
            self.secret)


@dataclass(frozen=True, slots=True)
class RecipientKey:
    """Mode "recipient": wraps a data key for the X25519 public key, with an ephemeral
    key pair per object; only the private key unwraps it."""

    key_id: str
    public: bytes
    private: bytes | None  # None on a host that only writes

    # ephemeral public key | nonce | encrypted data key | tag
    wrapped_size: ClassVar[int] = KEY_BYTES + _NONCE + KEY_BYTES + _TAG

    def __repr__(self) -> str:
        return f"RecipientKey({self.key_id}, private={'yes' if self.private else 'no'})"

    @property
    def can_unwrap(self) -> bool:
        return self.private is not None

    def wrap(self, data_key: bytes, associated: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public))
        nonce = os.urandom(_NONCE)
        return ephemeral_public + nonce + AESGCM(self._wrapping_key(shared, ephemeral_public)).encrypt(
            nonce, data_key, associated)

    def unwrap(self, wrapped: bytes, associated: bytes) -> bytes:
        """Raises cryptography's `InvalidTag` when the key or anything authenticated differs."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        assert self.private is not None  # the caller checks can_unwrap
        ephemeral_public, nonce, sealed = wrapped[:KEY_BYTES], wrapped[KEY_BYTES : KEY_BYTES + _NONCE], \
            wrapped[KEY_BYTES + _NONCE :]
        try:
            shared = X25519PrivateKey.from_private_bytes(self.private).exchange(
                X25519PublicKey.from_public_bytes(ephemeral_public))
        except ValueError:  # a low-order ephemeral point gives an all-zero shared secret
            raise InvalidTag() from None
        return AESGCM(self._wrapping_key(shared, ephemeral_public)).decrypt(nonce, sealed, associated)

    def _wrapping_key(self, shared: bytes, ephemeral_public: bytes) -> bytes:
        """HKDF over the X25519 shared secret, bound to both public keys."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=ephemeral_public + self.public,
                    info=_WRAP_INFO).derive(shared)


Key = SymmetricKey | RecipientKey


@dataclass(frozen=True, slots=True)
class SigningKey:
    """Mode "recipient": the Ed25519 pair that signs the archive's documents. Writers
    (database hosts) hold the private half; readers (restore hosts) the public half."""

    key_id: str
    public: bytes
    private: bytes | None  # None on a host that only verifies

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id}, private={'yes' if self.private else 'no'})"


# --- reading --------------------------------------------------------------------------


def read_secret_file(path: str, label: str) -> bytes:
    """The key in a file that must be private: a regular file owned by this user and
    readable by nobody else (mode 0600 or 0400). Checked on the open descriptor, so the
    file checked is the file read."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        raise ConfigError(f"cannot open the key file {path}: {exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"the key file {path} is not a regular file")
        if status.st_uid != os.geteuid():
            raise ConfigError(f"refusing the key file {path}: it is owned by uid {status.st_uid}, "
                              f"not by the user running pitrkit (uid {os.geteuid()})")
        if status.st_mode & 0o077:
            raise ConfigError(f"refusing the key file {path}: its mode is {stat.S_IMODE(status.st_mode):04o}; "
                              "a key file must be readable by its owner only (chmod 600)")
        return _parse_key_line(file.read(4096), label, path)


def read_public_file(path: str, label: str = PUBLIC_LABEL) -> bytes:
    try:
        return _parse_key_line(Path(path).read_bytes()[:4096], label, path)
    except OSError as exc:
        raise ConfigError(f"cannot read the public key file {path}: {exc.strerror}") from None


def _parse_key_line(text: bytes, label: str, path: str) -> bytes:
    words = text.split()
    if len(words) != 2 or words[0].decode("ascii", "replace") != label:
        raise ConfigError(f"{path} is not a {label} file (pitrkit keygen writes them)")
    try:
        key = base64.b64decode(words[1], validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} does not hold a valid {KEY_BYTES}-byte key")
    return key


def passphrase_from_environment(name: str) -> bytes:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"the environment variable {name} (encryption passphrase_env) is unset or empty")
    return value.encode()


def passphrase_from_command(argv: list[str]) -> bytes:
    """The command's standard output, without its final newline. Run without a shell;
    its stderr passes through to ours, its output is never shown."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              timeout=PASSPHRASE_COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        what = f"timed out after {PASSPHRASE_COMMAND_TIMEOUT:.0f}s" if isinstance(exc, subprocess.TimeoutExpired) \
            else str(getattr(exc, "strerror", None) or exc)
        raise ConfigError(f"encryption passphrase_command {argv[0]!r}: {what}") from None
    if done.returncode != 0:
        raise ConfigError(f"encryption passphrase_command {argv[0]!r} exited with code {done.returncode}")
    passphrase = done.stdout.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise ConfigError(f"encryption passphrase_command {argv[0]!r} printed an empty passphrase")
    return passphrase


def stretch(passphrase: bytes, parameters: ScryptParameters) -> SymmetricKey:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    secret = Scrypt(salt=parameters.salt, length=KEY_BYTES, n=parameters.n, r=parameters.r,
                    p=parameters.p).derive(passphrase)
    return SymmetricKey(symmetric_key_id(secret), secret)


def symmetric_key_file(path: str) -> SymmetricKey:
    secret = read_secret_file(path, SYMMETRIC_LABEL)
    return SymmetricKey(symmetric_key_id(secret), secret)


def recipient_key(public_path: str | None, private_path: str | None) -> RecipientKey:
    """The recipient key from its public file, its private file (the public half is
    derived from it), or both (which must be halves of one pair)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = None if private_path is None else read_secret_file(private_path, PRIVATE_LABEL)
    derived = None if private is None else X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    public = derived if public_path is None else read_public_file(public_path)
    assert public is not None  # config.py requires one of the two files
    if derived is not None and derived != public:
        raise ConfigError(f"the private key {private_path} does not belong to the public key {public_path}")
    return RecipientKey(recipient_key_id(public), public, private)


def signing_key(signing_path: str | None, verify_path: str | None) -> SigningKey:
    """The document signing key from its private file, its public verify file, or both
    (which must be halves of one pair)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = None if signing_path is None else read_secret_file(signing_path, SIGNING_LABEL)
    derived = None if private is None else Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    public = derived if verify_path is None else read_public_file(verify_path, VERIFY_LABEL)
    assert public is not None  # config.py requires one of the two files
    if derived is not None and derived != public:
        raise ConfigError(f"the signing key {signing_path} does not belong to the verify key {verify_path}")
    return SigningKey(signing_key_id(public), public, private)


# --- writing (pitrkit keygen) ---------------------------------------------------------


def write_new_file(path: Path, label: str, key: bytes, mode: int) -> None:
    """Create `path` (never replace it) with `mode` from the start, so that the key is
    not readable by others even for an instant, and make it durable."""
    line = f"{label} {base64.b64encode(key).decode()}\n"
    try:
        durable.write_file(path, line, mode, create_only=True)
    except FileExistsError:
        raise UsageError(f"{path} already exists; refusing to overwrite a key (move it away first)") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None


def generate_key_file(path: Path) -> str:
    secret = os.urandom(KEY_BYTES)
    write_new_file(path, SYMMETRIC_LABEL, secret, 0o600)
    return symmetric_key_id(secret)


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    if public_path.exists() or public_path.is_symlink():
        raise UsageError(f"{public_path} already exists; refusing to overwrite a key (move it away first)")
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    write_new_file(private_path, PRIVATE_LABEL,
                   private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()), 0o600)
    write_new_file(public_path, PUBLIC_LABEL, public, 0o644)
    return recipient_key_id(public)


def generate_signing_pair(signing_path: Path, verify_path: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if verify_path.exists() or verify_path.is_symlink():
        raise UsageError(f"{verify_path} already exists; refusing to overwrite a key (move it away first)")
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    write_new_file(signing_path, SIGNING_LABEL, private.private_bytes_raw(), 0o600)
    write_new_file(verify_path, VERIFY_LABEL, public, 0o644)
    return signing_key_id(public)


def keygen(key_file: Path | None, recipient: list[Path] | None, signing: list[Path] | None = None) -> str:
    """`pitrkit keygen`: write the key(s), print the key id (stdout), never the key."""
    if key_file is not None:
        key_id = generate_key_file(key_file)
        written = f"key file {key_file}"
    elif recipient is not None:
        key_id = generate_key_pair(*recipient)
        written = f"private key {recipient[0]}, public key {recipient[1]}"
    else:
        assert signing is not None
        key_id = generate_signing_pair(*signing)
        written = f"signing key {signing[0]}, verify key {signing[1]}"
    print(key_id)
    return f"wrote {written} (key id {key_id}); back it up: without it the archive cannot be read"

"""Built-in encryption (`[encryption]`): the body cipher of encrypted objects, in two key
modes, and the key policy that `archive.json` records.

Every object gets a fresh random 256-bit data key. The body is

    wrapped data key     mode "key":       nonce 12 | AES-GCM(key, data key) 48
                         mode "recipient": ephemeral X25519 public 32 | nonce 12 |
                                           AES-GCM(HKDF(X25519(ephemeral, recipient)), data key) 48
    nonce prefix 7 | chunk size 4 (big-endian)
    chunks               AES-256-GCM(data key, nonce = prefix | counter 4 | final 1)

Each chunk's associated data is the object header (key id, algorithm, sizes, checksum)
followed by everything above the chunks, so altering any of it fails authentication.
The counter in the nonce makes reordered or swapped chunks fail; the final flag makes a
body cut at a chunk boundary fail (its new last chunk was sealed as "not final"); an
empty body is one empty final chunk, so truncation to nothing fails too. Chunking
bounds each AEAD call (and GCM's per-message limit) to 1 MiB, whatever the object's size.
The data key's wrapping lives with the keys, in `pitrkit.storage.keys`.

The archive's JSON documents are authenticated by the same keys (the envelope is
pitrkit's, in `pitrkit.storage.envelope`; the tags are made here): in mode "key" with HMAC-SHA-256
under a key HKDF derives from the archive key, in mode "recipient" with an Ed25519
signature, made by writers, checked with its public half by readers.

`cryptography` is imported only when a cipher is built, so wal-push and wal-fetch pay
nothing for this module when encryption is off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from pitrkit.config import EncryptionConfig, KeySource
from pitrkit.hookspecs import DocumentSignature, hookimpl
from pitrkit.storage.identity import EncryptionParameters

if TYPE_CHECKING:  # pitrkit.storage.keys is imported only once encryption is configured
    from pitrkit.storage.keys import Key, SigningKey, SymmetricKey

ALGORITHM = "aes-256-gcm-chunked"
HMAC_ALGORITHM = "hmac-sha256"
SIGNATURE_ALGORITHM = "ed25519"
CHUNK_SIZE = 1 << 20
_TAG = 16
_PREFIX = 7
_CHUNKING = struct.Struct(">7sI")


class ChunkedCipher:
    """The `Cipher` of `hookspecs`: encrypts with the current key, decrypts with any
    configured key, found by the key id in the object header."""

    name = ALGORITHM

    def __init__(self, mode: str, current: Key, readable: dict[str, Key], parameters: EncryptionParameters,
                 documents: KeyedDocuments | SignedDocuments) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM
        self.mode = mode
        self.key_id: str = current.key_id
        self._current = current
        self._keys = readable
        # What archive.json must say for this cipher to write: the archive's record,
        # with this key appended when the configuration rotates to it.
        self.archive_parameters = msgspec.to_builtins(parameters)
        # A recipient-mode writer holding only the public key cannot read the archive.
        self.can_decrypt = current.can_unwrap
        self.documents = documents

    def __repr__(self) -> str:
        return f"ChunkedCipher({self.mode}, current={self.key_id})"

    # -- writing -------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        data_key = os.urandom(32)
        preamble = self._current.wrap(data_key, associated) + _CHUNKING.pack(os.urandom(_PREFIX), CHUNK_SIZE)
        prefix = preamble[-_CHUNKING.size:][:_PREFIX]
        aead, chunk_associated = self._aead(data_key), associated + preamble
        view = memoryview(plaintext)
        starts = range(0, len(view), CHUNK_SIZE) if len(view) else range(1)
        last = starts[-1]
        pieces = [preamble]
        for counter, start in enumerate(starts):
            nonce = _nonce(prefix, counter, start == last)
            pieces.append(aead.encrypt(nonce, view[start : start + CHUNK_SIZE], chunk_associated))
        return b"".join(pieces)

    # -- reading -------------------------------------------------------------------------

    def decrypt(self, ciphertext: bytes, associated: bytes, key_id: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        key = self._keys.get(key_id)
        if key is None:
            known = ", ".join(self._keys) or "none"
            raise ValueError(f"it is encrypted with key {key_id}, which [encryption] does not list "
                             f"(configured: {known}); add that key to encryption.old_keys")
        if not key.can_unwrap:
            raise ValueError(f"it is encrypted for recipient {key_id}, and this host holds only its "
                             "public key: reading needs encryption.private_key_file")
        view = memoryview(ciphertext)
        wrapped = key.wrapped_size
        preamble_size = wrapped + _CHUNKING.size
        if len(view) < preamble_size + _TAG:
            raise ValueError(f"the encrypted body is {len(view)} bytes, too short to be one")
        try:
            data_key = key.unwrap(bytes(view[:wrapped]), associated)
        except InvalidTag:
            raise ValueError(f"the data key does not authenticate with key {key_id}: the object header or "
                             "body was altered, or that key file/passphrase is not the one it was written with") \
                from None
        prefix, chunk_size = _CHUNKING.unpack_from(view, wrapped)
        if not 0 < chunk_size <= 1 << 30:
            raise ValueError(f"implausible chunk size {chunk_size}")
        aead, chunk_associated = self._aead(data_key), associated + bytes(view[:preamble_size])
        pieces, start, end, counter = [], preamble_size, len(view), 0
        while start < end:
            stop = min(start + chunk_size + _TAG, end)
            try:
                pieces.append(aead.decrypt(_nonce(prefix, counter, stop == end), view[start:stop], chunk_associated))
            except InvalidTag:
                raise ValueError(f"chunk {counter} does not authenticate: the body was altered, truncated "
                                 "or its chunks reordered") from None
            start, counter = stop, counter + 1
        return b"".join(pieces)


class KeyedDocuments:
    """Mode "key": documents carry an HMAC-SHA-256 tag under the document MAC key of the
    current key (see `keys.SymmetricKey.document_mac_key`); one made under any
    configured key verifies, so rotation needs nothing rewritten."""

    can_sign = True

    def __init__(self, current: SymmetricKey, readable: dict[str, SymmetricKey]) -> None:
        self._current = current.key_id
        self._macs = {key_id: key.document_mac_key() for key_id, key in readable.items()}

    def __repr__(self) -> str:
        return f"KeyedDocuments(current={self._current})"

    def sign(self, message: bytes) -> DocumentSignature:
        tag = hmac.new(self._macs[self._current], message, hashlib.sha256).digest()
        return DocumentSignature(HMAC_ALGORITHM, self._current, tag)

    def verify(self, message: bytes, signature: DocumentSignature) -> None:
        if signature.algorithm != HMAC_ALGORITHM:
            raise ValueError(f"it is authenticated with {signature.algorithm!r}, not {HMAC_ALGORITHM!r}")
        mac = self._macs.get(signature.key_id)
        if mac is None:
            raise ValueError(f"it is authenticated with key {signature.key_id}, which [encryption] does not list")
        if not hmac.compare_digest(hmac.new(mac, message, hashlib.sha256).digest(), signature.tag):
            raise ValueError(f"its MAC under key {signature.key_id} does not match")


class SignedDocuments:
    """Mode "recipient": documents carry an Ed25519 signature by the writers' signing
    key; a host with only the verify key checks them and cannot sign."""

    def __init__(self, key: SigningKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        self.key_id = key.key_id
        self.can_sign = key.private is not None
        self._private = None if key.private is None else Ed25519PrivateKey.from_private_bytes(key.private)
        self._public = Ed25519PublicKey.from_public_bytes(key.public)

    def __repr__(self) -> str:
        return f"SignedDocuments({self.key_id}, can_sign={self.can_sign})"

    def sign(self, message: bytes) -> DocumentSignature:
        assert self._private is not None  # the caller checks can_sign
        return DocumentSignature(SIGNATURE_ALGORITHM, self.key_id, self._private.sign(message))

    def verify(self, message: bytes, signature: DocumentSignature) -> None:
        from cryptography.exceptions import InvalidSignature

        if signature.algorithm != SIGNATURE_ALGORITHM:
            raise ValueError(f"it is authenticated with {signature.algorithm!r}, not {SIGNATURE_ALGORITHM!r}")
        if signature.key_id != self.key_id:
            raise ValueError(f"it is signed with key {signature.key_id}, not with the configured signing key "
                             f"{self.key_id}")
        try:
            self._public.verify(signature.tag, message)
        except InvalidSignature:
            raise ValueError(f"its signature by key {self.key_id} does not match") from None


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    if counter >= 1 << 32:
        raise ValueError("object too large for the chunk counter")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


# --- the key policy -----------------------------------------------------------------------


def build(settings: EncryptionConfig, recorded: EncryptionParameters | None) -> ChunkedCipher:
    """The cipher for `settings` in an archive whose `archive.json` says `recorded` (None:
    a new archive, whose parameters this cipher proposes)."""
    # Only when encryption is on: with it off, wal-push and wal-fetch (the hot path) never
    # load the key code (tests/unit/test_encryption.py holds it).
    from pitrkit.storage import keys

    if recorded is not None and recorded.mode != settings.mode:
        raise ValueError(f"the archive is encrypted in mode {recorded.mode!r}, the configuration says "
                         f"{settings.mode!r}")
    scrypt = recorded.scrypt if recorded is not None else None
    uses_passphrase = settings.passphrase_env is not None or settings.passphrase_command is not None or any(
        old.passphrase_env is not None or old.passphrase_command is not None for old in settings.old_keys)
    if scrypt is None and uses_passphrase:
        scrypt = keys.new_scrypt_parameters()

    def passphrase_key(read: Callable[[], bytes]) -> SymmetricKey:
        assert scrypt is not None
        return keys.stretch(read(), scrypt)

    def symmetric(source: EncryptionConfig | KeySource) -> SymmetricKey:
        if source.key_file is not None:
            return keys.symmetric_key_file(source.key_file)
        if source.passphrase_env is not None:
            env = source.passphrase_env
            return passphrase_key(lambda: keys.passphrase_from_environment(env))
        assert source.passphrase_command is not None
        command = source.passphrase_command
        return passphrase_key(lambda: keys.passphrase_from_command(command))

    current: Key
    older: list[Key]
    documents: KeyedDocuments | SignedDocuments
    if settings.mode == "key":
        current_key = symmetric(settings)
        older_keys = [symmetric(old) for old in settings.old_keys]
        documents = KeyedDocuments(current_key, {key.key_id: key for key in (*older_keys, current_key)})
        current, older = current_key, list(older_keys)
    else:
        current = keys.recipient_key(settings.public_key_file, settings.private_key_file)
        older = [keys.recipient_key(old.public_key_file, old.private_key_file) for old in settings.old_keys]
        documents = SignedDocuments(keys.signing_key(settings.signing_key_file, settings.verify_key_file))
    readable: dict[str, Key] = {key.key_id: key for key in (*older, current)}
    key_ids = [current.key_id] if recorded is None else list(recorded.key_ids)
    if key_ids[-1] != current.key_id and current.key_id not in key_ids and key_ids[-1] in readable:
        # A rotation: the configuration names the archive's current key as an old key
        # and a new key as current. The archive adopts the new key on the next write.
        key_ids.append(current.key_id)
    parameters = EncryptionParameters(mode=settings.mode, algorithm=ALGORITHM, key_ids=key_ids, scrypt=scrypt)
    return ChunkedCipher(settings.mode, current, readable, parameters, documents)


@hookimpl
def pitrkit_cipher(settings: dict, archive_parameters: dict):
    if settings.get("mode", "off") == "off":
        return None
    return build(msgspec.convert(settings, EncryptionConfig),
                 msgspec.convert(archive_parameters, EncryptionParameters) if archive_parameters else None)

"""The stored-object format: every object pitrkit writes is `frame + header + body`.

    offset  size  field
    0       4     magic b"PTKO"
    4       2     format version (big-endian u16): 1, or 2 for an XXH3-128 digest
    6       4     header length N (big-endian u32), at most 64 KiB
    10      N     header: an `ObjectHeader` encoded as a msgpack map
    10+N    ...   body: the plaintext, compressed, then (if configured) encrypted

The header names the compression and the encryption key, and records the plaintext's
size and digest, so an object is self-describing: it can be read back whatever the
configuration says today. A reader refuses an object whose frame, header, size or
digest does not match and says which object and why. When encryption is on, the
header bytes are the cipher's associated data, so they are authenticated too.

The digest is SHA-256 (format version 1), or XXH3-128 (version 2), ten times cheaper,
which backup-push asks for where nothing needs a cryptographic one: the stream parts
of an unencrypted backup (docs/archive-format.md, "The digest of a stream part"). WAL
objects keep SHA-256, and xxhash is imported only when an object has or wants XXH3-128,
never on the wal-push / wal-fetch path.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable

import msgspec

from pitrkit.hookspecs import Cipher, Compressor

MAGIC = b"PTKO"
FORMAT_VERSION = 1  # a SHA-256 digest: every object a pitrkit before XXH3-128 digests wrote
XXH3_FORMAT_VERSION = 2  # an XXH3-128 digest, which such a pitrkit refuses by this version
SHA256 = "sha256"
XXH3_128 = "xxh3_128"
_FRAME = struct.Struct(">4sHI")
_MAX_HEADER = 64 << 10


class ObjectHeader(msgspec.Struct, frozen=True, kw_only=True):
    compression: str
    size: int
    # The plaintext's digest: exactly one of the two, the other empty (and not written).
    # Empty rather than None, so that a reader expecting a SHA-256 (a super-block's,
    # which its map records) compares it with the one it expects and refuses it.
    sha256: bytes = b""
    # Encryption: the cipher's name and the id of the key that encrypted the body;
    # None when the object is not encrypted.
    encryption: str | None = None
    key_id: str | None = None
    xxh3_128: bytes = b""  # last: a SHA-256 header's keys keep the order they always had

    def __post_init__(self) -> None:
        # A size is a claim until the body is decoded; the compressor bounds it by what
        # the body can expand to before allocating anything (see plugins/compression.py).
        if self.size < 0 or (len(self.sha256), len(self.xxh3_128)) not in ((32, 0), (0, 16)):
            raise ValueError(f"header claims size {self.size} and a {len(self.sha256)}-byte SHA-256"
                             + (f" and a {len(self.xxh3_128)}-byte XXH3-128" if self.xxh3_128 else ""))

    @property
    def digest(self) -> str:
        """`<algorithm>:<hex>`, as a manifest's part records it (`BackupPart.digest`)."""
        return f"{XXH3_128}:{self.xxh3_128.hex()}" if self.xxh3_128 else f"{SHA256}:{self.sha256.hex()}"


def _encode_header(header: ObjectHeader) -> bytes:
    # Only the digest the object has: a SHA-256 object's header is byte for byte what
    # it was before XXH3-128 digests (the keys in the order the struct has them).
    return _encode_map({name: value for name, value in msgspec.structs.asdict(header).items() if value != b""})


_encode_map = msgspec.msgpack.Encoder().encode
_decode_header = msgspec.msgpack.Decoder(ObjectHeader).decode


class CorruptObject(Exception):
    """An object that cannot be read back as it was written."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"stored object {key} is corrupt: {why}")
        self.key = key
        self.why = why


# Below this size a thread to hash beside the compression costs more than it saves: a
# 64 KiB super-block encoded in 264 us with one, 69 us without (measured, zstd -3).
_OVERLAP_FROM = 1 << 20


def encode(data: bytes, compressor: Compressor, cipher: Cipher | None = None, *,
           digest: str = SHA256) -> tuple[bytes, ObjectHeader]:
    """Frame `data` for storage; returns the object and its header. `digest`: SHA256,
    or XXH3_128 where no cryptographic digest is needed (see the module's docstring)."""
    if digest == XXH3_128:
        # Only when a backup stores its stream: ~18 GB/s, not worth a thread.
        import xxhash

        body = compressor.compress(data)
        sha256, xxh3_128 = b"", xxhash.xxh3_128_digest(data)
    elif len(data) < _OVERLAP_FROM:
        sha256, xxh3_128 = hashlib.sha256(data).digest(), b""
        body = compressor.compress(data)
    else:
        # Hashing and compressing both release the GIL; overlap them.
        hashed: list[bytes] = []
        hasher = threading.Thread(target=lambda: hashed.append(hashlib.sha256(data).digest()))
        hasher.start()
        body = compressor.compress(data)
        hasher.join()
        sha256, xxh3_128 = hashed[0], b""
    header = ObjectHeader(
        compression=compressor.name,
        size=len(data),
        encryption=None if cipher is None else cipher.name,
        key_id=None if cipher is None else cipher.key_id,
        sha256=sha256,
        xxh3_128=xxh3_128,
    )
    header_bytes = _encode_header(header)
    if cipher is not None:
        body = cipher.encrypt(body, header_bytes)
    version = XXH3_FORMAT_VERSION if header.xxh3_128 else FORMAT_VERSION
    return b"".join((_FRAME.pack(MAGIC, version, len(header_bytes)), header_bytes, body)), header


def read_header(key: str, blob: bytes) -> tuple[ObjectHeader, int]:
    """The object's header and the offset of its body."""
    if len(blob) < _FRAME.size:
        raise CorruptObject(key, f"only {len(blob)} bytes, too short for the object frame")
    magic, version, length = _FRAME.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptObject(key, "not a pitrkit object (bad magic)")
    if version not in (FORMAT_VERSION, XXH3_FORMAT_VERSION):
        raise CorruptObject(key, f"format version {version}; this pitrkit reads versions {FORMAT_VERSION} "
                                 f"and {XXH3_FORMAT_VERSION}")
    if length > _MAX_HEADER or _FRAME.size + length > len(blob):
        raise CorruptObject(key, f"header length {length} does not fit the object")
    try:
        header = _decode_header(blob[_FRAME.size : _FRAME.size + length])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgpack strings must be UTF-8; also the checks above
        raise CorruptObject(key, f"unreadable header: {exc}") from None
    if (version == XXH3_FORMAT_VERSION) != bool(header.xxh3_128):
        raise CorruptObject(key, f"format version {version} with a {header.digest.split(':')[0]} digest; version "
                                 f"{XXH3_FORMAT_VERSION} objects, and only they, have an XXH3-128 one")
    return header, _FRAME.size + length


def decode(
    key: str,
    blob: bytes,
    compressor_for: Callable[[str], Compressor],
    cipher: Cipher | None = None,
    expect: Callable[[ObjectHeader], None] | None = None,
) -> bytes:
    """The verified plaintext of a stored object. `expect(header)`, called before
    anything is decrypted or decompressed, raises CorruptObject for a header the caller
    has another record of (catalog/blockmap.py's super-blocks)."""
    header, offset = read_header(key, blob)
    if expect is not None:
        expect(header)
    body = _body(key, blob, cipher, header, offset)
    try:
        data = compressor_for(header.compression).decompress(body, header.size)
    except ValueError as exc:
        raise CorruptObject(key, str(exc)) from None
    _verify(key, header, data)
    return data


def decode_into(key: str, blob: bytes, compressor_for: Callable[[str], Compressor], cipher: Cipher | None,
                buffer: bytearray) -> tuple[ObjectHeader, memoryview]:
    """As `decode`, with the header, the plaintext decompressed into `buffer` where the
    compressor can (the body itself when it is stored uncompressed and unencrypted): a
    view valid until `buffer` is used again. An object larger than `buffer` is refused
    (by the compressor, after its own checks of the size). For restore's parts:
    decoding into a buffer used again costs less than into new memory
    (plugins/compression.py)."""
    header, offset = read_header(key, blob)
    body = _body(key, blob, cipher, header, offset)
    compressor = compressor_for(header.compression)
    # An optional method of a compressor: (body, size, buffer) -> a view of the
    # plaintext, ValueError for a body that does not decode to `size` bytes or a size
    # the buffer cannot take.
    into = getattr(compressor, "decompress_into", None)
    try:
        data = memoryview(compressor.decompress(body, header.size)) if into is None \
            else into(body, header.size, buffer)
    except ValueError as exc:
        raise CorruptObject(key, str(exc)) from None
    _verify(key, header, data)
    return header, data


def _body(key: str, blob: bytes, cipher: Cipher | None, header: ObjectHeader, offset: int) -> bytes | memoryview:
    """The object's body (at `offset`, after `header`: read_header's), decrypted."""
    body: bytes | memoryview = memoryview(blob)[offset:]
    if cipher is not None and header.key_id is None:
        # In an encrypted archive a plaintext object is a forgery: anyone who can write
        # to the bucket could make one, while an encrypted one needs the key.
        raise CorruptObject(key, "it is not encrypted, but encryption is configured: refusing an object "
                                 "that anyone with write access to the storage could have made")
    if header.key_id is not None:
        if cipher is None:
            raise CorruptObject(key, f"encrypted with key {header.key_id!r}, but no encryption is configured")
        try:
            body = cipher.decrypt(bytes(body), blob[_FRAME.size : offset], header.key_id)
        except ValueError as exc:
            raise CorruptObject(key, f"decryption failed: {exc}") from None
    return body


def _verify(key: str, header: ObjectHeader, data: bytes | memoryview) -> None:
    """The plaintext is the header's: its size and its digest."""
    if len(data) != header.size:
        raise CorruptObject(key, f"{len(data)} bytes after decompression, header says {header.size}")
    if header.xxh3_128:
        # Only when a backup's stream part is read (restore, verify): never a WAL object.
        import xxhash

        if xxhash.xxh3_128_digest(data) != header.xxh3_128:
            raise CorruptObject(key, "XXH3-128 of the content does not match the header")
    elif hashlib.sha256(data).digest() != header.sha256:
        raise CorruptObject(key, "SHA-256 of the content does not match the header")

"""Types of every JSON document pitrkit stores in the archive.

Documents are parsed at the edge with these types and passed around typed; a document
that does not decode is reported, never half-used.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import msgspec

ARCHIVE_FORMAT_VERSION = 1

Document = TypeVar("Document", bound=msgspec.Struct)


class ArchiveIdentity(msgspec.Struct, kw_only=True, frozen=True):
    """`archive.json`: which cluster this archive belongs to. Written once, by the first
    push of a WAL segment, from that segment's page header."""

    format_version: int = ARCHIVE_FORMAT_VERSION
    system_identifier: int
    wal_segment_size: int
    # Major versions that have written WAL into this archive, oldest first.
    pg_versions: list[int]
    # Non-secret encryption parameters (mode, key ids, salt); None when not encrypted.
    encryption: dict | None = None
    created_at: datetime


def encode(document: msgspec.Struct) -> bytes:
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"


def decode(data: bytes, kind: type[Document], name: str) -> Document:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{name} is not a valid {kind.__name__}: {exc}") from None

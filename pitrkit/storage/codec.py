"""How a document — a msgspec Struct pitrkit stores in the archive or prints with
`--json` — becomes JSON and back: LSNs as their text (`0/16B3748`), every time a `Time`
that must carry its UTC offset, and a document that does not decode is a `ValueError`
naming it, never half-used. `to_builtins` gives the same values as plain Python, for
JSON that embeds a document (the daemon's /status.json).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec

from pitrkit.errors import UsageError
from pitrkit.postgres.wal import Lsn

Document = TypeVar("Document", bound=msgspec.Struct)

# Every time in a document: it must carry its UTC offset (pitrkit writes UTC). A naive
# time is refused as it is decoded: compared with an aware one it raises TypeError, and
# which zone it meant cannot be known.
Time = Annotated[datetime, msgspec.Meta(tz=True)]


def _encode_value(value: Any) -> Any:
    if isinstance(value, Lsn):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _decode_value(kind: type, value: Any) -> Any:
    if kind is Lsn:
        if not isinstance(value, str):
            raise ValueError("expected an LSN such as 0/16B3748")
        try:
            return Lsn.parse(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
    raise NotImplementedError(f"cannot decode {kind.__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_encode_value)


def to_builtins(document: msgspec.Struct) -> Any:
    """The document as plain JSON-ready values (LSNs as text), e.g. for --json output."""
    return msgspec.to_builtins(document, enc_hook=_encode_value)


def encode(document: msgspec.Struct, *, pretty: bool = True) -> bytes:
    """JSON for storage. Large documents (manifests) go out compact: indenting a hundred
    thousand file rows only costs time and space."""
    data = _encoder.encode(document)
    return msgspec.json.format(data, indent=2) + b"\n" if pretty else data + b"\n"


def decode(data: bytes, kind: type[Document], name: str) -> Document:
    try:
        return msgspec.json.decode(data, type=kind, dec_hook=_decode_value)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{name} is not a valid {kind.__name__}: {exc}") from None

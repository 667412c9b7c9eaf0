"""The envelope that authenticates a JSON document in an encrypted archive
(docs/archive-format.md#authenticated-documents).

With `[encryption]` on, a document is stored as `{"document":<the document's JSON, byte
for byte as authenticated>,"authentication":{...}}`. The tag covers the document's
storage key and its exact bytes, so a document cannot be altered, nor moved under another
key (one backup's manifest as another's, one folder's WAL index as another's). The tags
themselves are the cipher plugin's (`hookspecs.DocumentAuthenticator`).
"""

from __future__ import annotations

import msgspec

from pitrkit.hookspecs import DocumentAuthenticator, DocumentSignature

_SIGNED_CONTEXT = b"pitrkit document v1\0"
_ENVELOPE_START = b'{"document":'


class Authentication(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    algorithm: str  # "hmac-sha256" (mode "key") or "ed25519" (mode "recipient")
    key_id: str
    tag: bytes  # base64 in JSON


class _Envelope(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    document: msgspec.Raw
    authentication: Authentication


def signed_message(key: str, document: bytes) -> bytes:
    """What a document's tag covers: its storage key and its exact bytes."""
    return _SIGNED_CONTEXT + key.encode() + b"\0" + document


def seal(key: str, document: bytes, authenticator: DocumentAuthenticator) -> bytes:
    """The envelope storing `document` (its JSON) under `key`."""
    document = document.rstrip(b"\n")  # the envelope's own bytes hold no whitespace around it
    signature = authenticator.sign(signed_message(key, document))
    authentication = Authentication(algorithm=signature.algorithm, key_id=signature.key_id, tag=signature.tag)
    return msgspec.json.encode(_Envelope(document=msgspec.Raw(document), authentication=authentication)) + b"\n"


def is_sealed(data: bytes) -> bool:
    return data.startswith(_ENVELOPE_START)


def unseal(key: str, data: bytes, authenticator: DocumentAuthenticator | None) -> bytes:
    """The document's JSON from its envelope, checked by `authenticator` (None: taken on
    trust, as everything is in an archive without encryption). Raises `ValueError`
    saying why it does not authenticate."""
    try:
        envelope = msgspec.json.decode(data, type=_Envelope)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a valid authenticated document: {exc}") from None
    document = bytes(envelope.document)
    if authenticator is not None:
        found = envelope.authentication
        authenticator.verify(signed_message(key, document), DocumentSignature(found.algorithm, found.key_id,
                                                                              found.tag))
    return document

"""`AzureStorage`: one pitrkit archive under a prefix of an Azure Blob Storage container.

Owns the translation between pitrkit's Storage protocol and azure-storage-blob: keys
under the URL's prefix, create-only writes through `If-None-Match: *` (on Put Blob, and
on Put Block List for objects sent in blocks), MD5s on every upload request and of the
whole object, checked again on download, a connection and read timeout and a bounded
retry on every request, and the SDK's exceptions turned into the three that carry
meaning to pitrkit. Both optional methods too: ranged reads and server-side copies
(Copy Blob inside the account, create-only like a put).

Credentials (docs/plugins.md): a connection string, from the file named by
PITRKIT_AZURE_CONNECTION_STRING_FILE or from AZURE_STORAGE_CONNECTION_STRING (Azurite's
is one); otherwise azure-identity's DefaultAzureCredential (a service principal in the
environment, workload identity on AKS, a managed identity). Nothing here ever formats a
connection string, a key or a token into a message.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobPrefix, BlobProperties, BlobServiceClient, ContentSettings, LinearRetry

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError, StorageMissing

# The SDK logs its faults (azure-identity every credential it tried, over many lines) as
# warnings, which would reach stderr beside pitrkit's own line: every fault reaches the
# user as the StorageError made here, in one line.
logging.getLogger("azure").setLevel(logging.CRITICAL)

CONNECTION_STRING_FILE = "PITRKIT_AZURE_CONNECTION_STRING_FILE"
CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"

# Storage account names (3-24 lower-case letters and digits) and container names (3-63
# lower-case letters, digits and single hyphens, starting and ending with a letter or digit).
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
# Objects up to this size go in one Put Blob, atomic with its condition; larger ones as
# blocks of this size, then one Put Block List that carries the condition. A compressed
# 16 MiB WAL segment fits in one request as a rule.
BLOCK_SIZE = 8 << 20
# Retries of one request by the SDK (5xx, 408, timeouts, connection errors), a second or
# so apart: with `timeout` on connecting and on each read, one call takes at most about
# (RETRIES + 1) × timeout. pitrkit's repository.retries retries the StorageError on top.
RETRIES = 3
# The answers that mean "the name is taken" to a create-only write: 409 for Put Blob and
# Put Block List, 412 where a service or proxy answers the condition itself.
_TAKEN = {"BlobAlreadyExists", "ConditionNotMet"}
_CONTENT_RANGE_SIZE = re.compile(r"^bytes \d{1,19}-\d{1,19}/(\d{1,19})$")


def parse_az_url(url: str) -> tuple[str, str, str]:
    """(account, container, key prefix) of `az://account/container[/prefix]`; the prefix is
    "" or ends in "/"."""
    if not url.startswith("az://"):
        raise ValueError(f"expected az://account/container/prefix, got {url!r}")
    account, _, rest = url[len("az://"):].partition("/")
    container, _, prefix = rest.partition("/")
    if not _ACCOUNT_NAME.fullmatch(account):
        raise ValueError(f"{account!r} is not a valid storage account name (az://account/container/prefix)")
    if not _CONTAINER_NAME.fullmatch(container):
        raise ValueError(f"{container!r} is not a valid container name (az://account/container/prefix)")
    if "?" in prefix or "#" in prefix or "//" in prefix:
        raise ValueError(f"the prefix of {url!r} must be a plain path")
    prefix = prefix.strip("/")
    return account, container, prefix + "/" if prefix else ""


def _connection_string() -> tuple[str, str] | None:
    """(where it came from, the connection string), or None when none is configured."""
    path = os.environ.get(CONNECTION_STRING_FILE)
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the connection string file {path} ({CONNECTION_STRING_FILE}): "
                             f"{exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"the connection string file {path} ({CONNECTION_STRING_FILE}) is not UTF-8 "
                             "text") from None
        return f"the file {path}", text
    text = os.environ.get(CONNECTION_STRING, "").strip()
    return (CONNECTION_STRING, text) if text else None


def _service(account: str, timeout: float) -> BlobServiceClient:
    options: dict[str, Any] = {
        "retry_policy": LinearRetry(backoff=1, retry_total=RETRIES, random_jitter_range=1),
        "connection_timeout": timeout, "read_timeout": timeout,
        "max_single_put_size": BLOCK_SIZE, "max_block_size": BLOCK_SIZE,
    }
    configured = _connection_string()
    if configured is not None:
        source, text = configured
        fields = dict(part.partition("=")[::2] for part in text.split(";") if part)
        named = fields.get("AccountName")
        if named is not None and named != account:
            raise ValueError(f"the connection string from {source} is for the storage account {named!r}, "
                             f"not {account!r}")
        try:
            return BlobServiceClient.from_connection_string(text, **options)
        except ValueError:  # the SDK's own message could quote the string: never shown
            raise ValueError(f"the connection string from {source} is not a valid Azure Storage connection string") \
                from None
    # Only when no connection string is configured: azure-identity (msal, cryptography)
    # costs more to import than the blob SDK itself.
    from azure.identity import DefaultAzureCredential

    # Managed identity's IMDS and the other sources have their own (bounded) timeouts.
    return BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=DefaultAzureCredential(),
                             **options)


class AzureStorage:
    """Thread-safe: the agent serves concurrent requests with one instance, and the SDK's
    clients are documented as safe to share between threads."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.account, self.container_name, self.prefix = parse_az_url(url)
        self.timeout = timeout
        self._container = _service(self.account, timeout).get_container_client(self.container_name)

    # -- the Storage protocol ----------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        retried = _RetryCount()
        blob = self._container.get_blob_client(self.prefix + key)
        md5 = hashlib.md5(data).digest()
        # The whole object's MD5, stored with it (x-ms-blob-content-md5) and checked by
        # `get`; each request also carries its own Content-MD5, checked by the service.
        settings = ContentSettings(content_type="application/octet-stream", content_md5=bytearray(md5))
        condition: dict[str, Any] = {} if overwrite else {"match_condition": MatchConditions.IfMissing}
        try:
            with self._faults(f"storing {key}", taken=True):
                if len(data) <= BLOCK_SIZE:
                    # The request's Content-MD5 is the whole object's, made once here
                    # (validate_content would make it again).
                    blob.upload_blob(data, overwrite=overwrite, content_settings=settings, retry_hook=retried,
                                     headers={"Content-MD5": base64.b64encode(md5).decode()})
                else:
                    # Block ids of this put alone: a concurrent writer of the same key
                    # stages its own, and only one list is committed.
                    token = uuid.uuid4().hex
                    blocks = [BlobBlock(f"{token}-{n:06d}") for n in range(-(-len(data) // BLOCK_SIZE))]
                    view = memoryview(data)
                    for n, block in enumerate(blocks):
                        blob.stage_block(block.id, bytes(view[n * BLOCK_SIZE:(n + 1) * BLOCK_SIZE]),
                                         validate_content=True)
                    blob.commit_block_list(blocks, content_settings=settings, retry_hook=retried,
                                           **condition)
        except HttpResponseError as exc:
            if _code(exc) not in _TAKEN:
                raise
            # The first attempt met an object already there: ObjectExists, even for the
            # same bytes (the caller decides what identical means). After a retried
            # attempt the object may be our own earlier attempt, stored although its
            # answer was lost: the same size and MD5 mean it is.
            if retried.count and self._holds(key, len(data), md5):
                return
            raise ObjectExists(key) from None

    def get(self, key: str) -> bytes:
        what = f"reading {key}"
        with self._object(key, what):
            download = self._container.get_blob_client(self.prefix + key).download_blob(max_concurrency=1)
            body = download.readall()
        properties = download.properties
        stored = properties.content_settings.content_md5
        if len(body) != properties.size:
            raise StorageError(f"{self.url}: {what}: {len(body)} bytes of an object of {properties.size}")
        if stored and hashlib.md5(body).digest() != bytes(stored):
            raise StorageError(f"{self.url}: {what}: its bytes do not match its MD5")
        return body

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """hookspecs.RangedReads: GETs with a Range header (the SDK's, in chunks when the
        range is large). No checksum covers part of an object, so what is checked is the
        answer's length against the object's size the service reports; a 416 is a range
        that starts at or past the end: b"". The bytes are the caller's to verify."""
        if length == 0:
            self.stat(key)  # no HTTP range is empty: b"" for an object that is there
            return b""
        what = f"reading {key} (bytes {offset} to {offset + length})"
        try:
            with self._object(key, what):
                download = self._container.get_blob_client(self.prefix + key).download_blob(
                    offset=offset, length=length, max_concurrency=1)
                body = download.readall()
        except StorageError as exc:
            if not isinstance(exc.__cause__, HttpResponseError) or exc.__cause__.status_code != 416:
                raise
            size = self.stat(key).size  # Range Not Satisfiable: the object ends at or before `offset`
            if offset < size:
                raise StorageError(f"{self.url}: {what}: answered 416 for an object of {size} bytes") from None
            return b""
        # The object's whole size, from the first answer's Content-Range ("bytes A-B/SIZE"):
        # properties.size is what this download was.
        stated = _CONTENT_RANGE_SIZE.search(download.properties.content_range or "")
        if stated is None:
            raise StorageError(f"{self.url}: {what}: a partial answer without a valid Content-Range")
        size = int(stated[1])
        if len(body) != max(0, min(offset + length, size) - offset):
            raise StorageError(f"{self.url}: {what}: answered {len(body)} bytes of an object of {size}")
        return body

    def copy(self, source: str, target: str) -> None:
        """hookspecs.ServerSideCopy: Copy Blob inside the account, with `If-None-Match: *`
        on the target: create-only like `put`, and a refusal after a retried attempt is a
        success when the target has the source's size and MD5 (the first attempt landed,
        its answer was lost). Inside an account a copy finishes as it is accepted as a
        rule; one still pending is waited for up to `timeout`, then aborted and removed."""
        retried = _RetryCount()
        original = self._container.get_blob_client(self.prefix + source)
        copied = self._container.get_blob_client(self.prefix + target)
        what = f"copying {source} to {target}"
        try:
            with self._faults(what, absent=True, taken=True):
                started = copied.start_copy_from_url(original.url, match_condition=MatchConditions.IfMissing,
                                                     retry_hook=retried)
        except ResourceNotFoundError as exc:
            self.stat(source)  # ObjectNotFound when the source is absent (nothing was stored)
            raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None
        except HttpResponseError as exc:
            if _code(exc) not in _TAKEN:
                raise
            if retried.count and self._same_bytes(source, target):
                return
            raise ObjectExists(target) from None
        if started.get("copy_status") != "success":
            self._finish_copy(copied, what)

    def _finish_copy(self, copied: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        with self._faults(what):
            while time.monotonic() < deadline:
                status = copied.get_blob_properties().copy.status
                if status == "success":
                    return
                if status != "pending":
                    break
                time.sleep(0.2)
            else:
                copied.abort_copy(copied.get_blob_properties().copy.id)
            copied.delete_blob()  # ours: the create-only copy made it, and it is not a whole copy
        raise StorageError(f"{self.url}: {what}: the copy did not finish within {self.timeout:g}s")

    def stat(self, key: str) -> ObjectInfo:
        with self._object(key, f"checking {key}"):
            properties = self._container.get_blob_client(self.prefix + key).get_blob_properties()
        return self._info(properties)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._faults(f"listing {prefix or 'the archive'}"):
            # Every page is fetched here, inside the fault translation: a lazy iterator
            # would raise the SDK's exceptions in the caller's loop. Uncommitted blocks
            # are never listed (no include=uncommittedblobs).
            infos = [self._info(blob) for blob in self._container.list_blobs(name_starts_with=self.prefix + prefix)]
        # Azure lists in name order already; sorting by the UTF-8 bytes is the protocol's
        # order whatever an emulator does.
        return iter(sorted(infos, key=lambda info: info.key.encode()))

    def list_folder(self, prefix: str) -> Folder:
        objects: list[ObjectInfo] = []
        folders: list[str] = []
        with self._faults(f"listing {prefix or 'the archive'}"):
            for item in self._container.walk_blobs(name_starts_with=self.prefix + prefix, delimiter="/"):
                if isinstance(item, BlobPrefix):
                    folders.append(item.name[len(self.prefix):])
                else:
                    objects.append(self._info(item))
        return Folder(sorted(objects, key=lambda info: info.key.encode()), sorted(folders, key=str.encode))

    def delete(self, key: str) -> None:
        try:
            with self._object(key, f"deleting {key}"):
                self._container.get_blob_client(self.prefix + key).delete_blob()
        except ObjectNotFound:
            pass  # absent is fine; a missing container raises StorageMissing

    # -- helpers -----------------------------------------------------------------------

    def _holds(self, key: str, size: int, md5: bytes) -> bool:
        """Whether the stored object has `size` bytes and the MD5 `md5`."""
        try:
            with self._faults(f"checking {key}", absent=True):
                info = self._container.get_blob_client(self.prefix + key).get_blob_properties()
        except ResourceNotFoundError:
            return False  # deleted meanwhile: not ours either
        stored = info.content_settings.content_md5
        return info.size == size and stored is not None and bytes(stored) == md5

    def _same_bytes(self, source: str, target: str) -> bool:
        try:
            with self._faults(f"checking {source}", absent=True):
                original = self._container.get_blob_client(self.prefix + source).get_blob_properties()
        except ResourceNotFoundError:
            return False
        stored = original.content_settings.content_md5
        return stored is not None and self._holds(target, original.size, bytes(stored))

    def _info(self, blob: BlobProperties) -> ObjectInfo:
        # Azure gives an object's creation time in whole seconds: it was stored within the
        # second after it. The end of that second is what is reported, never a time before
        # the object was stored: the planner refuses a target time later than the newest
        # WAL's store time, and a time cut down to its second would refuse a reachable one.
        created = blob.creation_time
        stored = created.timestamp() + 1 if created else None
        return ObjectInfo(blob.name[len(self.prefix):], blob.size or 0, stored)

    @contextmanager
    def _object(self, key: str, what: str) -> Iterator[None]:
        """As `_faults`, for a request on one object: its 404 is ObjectNotFound when the
        service says the blob is missing (BlobNotFound); a missing container is StorageMissing."""
        try:
            with self._faults(what, absent=True):
                yield
        except ResourceNotFoundError as exc:
            if _code(exc) == "BlobNotFound" or (_code(exc) is None and self._container_exists(what)):
                raise ObjectNotFound(key) from None
            raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None

    def _container_exists(self, what: str) -> bool:
        """After a 404 that names no error (a HEAD has no body, and a proxy may drop the
        x-ms-error-code header): listing the key proves the container exists, with the
        permission pitrkit needs anyway."""
        with self._faults(what):
            next(iter(self._container.list_blobs(name_starts_with=self.prefix, results_per_page=1)), None)
        return True

    @contextmanager
    def _faults(self, what: str, *, absent: bool = False, taken: bool = False) -> Iterator[None]:
        """Every SDK fault as StorageError (StorageMissing for a missing container), except
        what the caller interprets: an object's 404 (`absent`), a create-only write's
        409/412 (`taken`)."""
        try:
            yield
        except HttpResponseError as exc:
            if _code(exc) == "ContainerNotFound":
                raise StorageMissing(f"{self.url}: {what}: the container {self.container_name} does not exist") \
                    from None
            if (absent and isinstance(exc, ResourceNotFoundError)) or (taken and _code(exc) in _TAKEN):
                raise
            raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from exc
        except (AzureError, OSError) as exc:
            raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """One line, without secrets: the status and Azure's error code for an answer; the
    exception's own text otherwise, with every URL's query (a SAS token) cut off."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        return f"HTTP {exc.status_code} {_code(exc) or exc.reason or ''}".rstrip()
    if isinstance(exc, ClientAuthenticationError):  # azure-identity's, before any request
        first = str(exc).split(". ", 1)[0].split("\n", 1)[0].rstrip(".")
        return (f"no Azure credential ({first[:200]}): set {CONNECTION_STRING_FILE} or an identity "
                "(see pitrkit's docs/plugins.md)")
    text = " ".join(str(exc).split())
    text = re.sub(r"\?[^\s'\"]*", "?...", text)
    return f"{type(exc).__name__}: {text[:300]}"


class _RetryCount:
    """The `retry_hook` of one SDK call (called before each retry of its request): whether
    an earlier attempt may have landed although its answer was lost."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, **_: object) -> None:
        self.count += 1


def _code(exc: HttpResponseError) -> str | None:
    """Azure's error code (x-ms-error-code), which the SDK sets on its exceptions."""
    return getattr(exc, "error_code", None)

"""`GcsStorage`: one pitrkit archive under a prefix of a Google Cloud Storage bucket.

Owns the translation between pitrkit's Storage protocol and the google-cloud-storage SDK:
keys under the URL's prefix, create-only writes through `if_generation_match=0`, the
SDK's checksums on upload and download, a timeout and a bounded retry on every request,
and the SDK's exceptions turned into the three that carry meaning to pitrkit. Both
optional methods too: ranged reads (an HTTP Range request, its answer's shape checked)
and server-side copies (the rewrite API, create-only like a put).

Credentials are the SDK's: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
gcloud's user credentials, the metadata server on GCE/GKE). With STORAGE_EMULATOR_HOST
set, the SDK talks to that emulator with anonymous credentials. Nothing here ever formats
a credential into a message.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import queue
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import _should_retry

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError

# Bucket names as GCS accepts them (3-63 characters; dotted names up to 222).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# A 206's Content-Range ("bytes FIRST-LAST/SIZE", SIZE "*" when unknown) and a 416's
# ("bytes */SIZE").
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")
_CONTENT_RANGE_SIZE = re.compile(r"bytes \*/(\d{1,19})")


def parse_gs_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix) of `gs://bucket[/prefix]`; the prefix is "" or ends in "/"."""
    if not url.startswith("gs://"):
        raise ValueError(f"expected gs://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[len("gs://"):].partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(f"{bucket!r} is not a valid bucket name (gs://bucket/prefix)")
    if "?" in prefix or "#" in prefix or "//" in prefix:
        raise ValueError(f"the prefix of {url!r} must be a plain path")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


class GcsStorage:
    """Thread-safe: the agent serves concurrent requests with one instance. The SDK's
    Client holds a requests.Session, which is not documented as thread-safe, so each call
    borrows a Client from a pool instead of sharing one. A Client finds its credentials
    when it is made, so the pool grows only to the number of concurrent calls."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.bucket_name, self.prefix = parse_gs_url(url)
        self.timeout = timeout
        self._idle_clients: queue.SimpleQueue[storage.Client] = queue.SimpleQueue()

    # -- the Storage protocol ----------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        retried: list[Exception] = []
        retry = self._retry(on_error=retried.append)
        try:
            with self._faults(f"storing {key}", api_exceptions.PreconditionFailed), self._client() as client:
                # Objects up to the SDK's multipart limit (8 MiB: a compressed 16 MiB WAL
                # segment, as a rule) go in one request, atomic with its precondition;
                # larger ones (backup parts) as a resumable upload, which real GCS also
                # checks against if_generation_match but emulators do not (docs/plugins.md).
                client.bucket(self.bucket_name).blob(self.prefix + key).upload_from_string(
                    data, content_type="application/octet-stream",
                    if_generation_match=None if overwrite else 0,
                    checksum="crc32c", timeout=self.timeout, retry=retry)
        except api_exceptions.PreconditionFailed:
            # The first attempt met an object already there: ObjectExists, even for the
            # same bytes (the caller decides what identical means). After a retried
            # attempt, the object may be our own earlier attempt, which the server stored
            # although we never saw its answer: the same checksums mean it is.
            if retried and self._holds(key, data):
                return
            raise ObjectExists(key) from None

    def get(self, key: str) -> bytes:
        try:
            with self._faults(f"reading {key}", api_exceptions.NotFound), self._client() as client:
                # checksum="crc32c": the SDK compares the body with the server's
                # x-goog-hash and raises DataCorruption (a StorageError here) on mismatch.
                return client.bucket(self.bucket_name).blob(self.prefix + key).download_as_bytes(
                    checksum="crc32c", timeout=self.timeout, retry=self._retry())
        except api_exceptions.NotFound:
            raise self._absent(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """hookspecs.RangedReads: one GET of the object's media with a Range header. No
        checksum covers a part of an object (x-goog-hash is the whole object's), so what
        is checked is the answer's shape: a 206 must be exactly the bytes asked for that
        exist, as its Content-Range says, its length included; a 200 (a server or proxy
        that ignored the Range) is the whole object, checked against x-goog-hash, then
        sliced; a 416 is a range that starts at or past the end: b"". The bytes of a 206
        are the caller's to verify (a frame, a digest)."""
        if length == 0:
            self.stat(key)  # no HTTP range is empty: b"" for an object that is there
            return b""
        what = f"reading {key} (bytes {offset} to {offset + length})"
        try:
            with self._faults(what, api_exceptions.NotFound), self._client() as client:
                blob = client.bucket(self.bucket_name).blob(self.prefix + key)
                # The SDK's own download URL (the emulator's when STORAGE_EMULATOR_HOST is
                # set) and its authorized session: the SDK's ranged download would hide the
                # status and Content-Range this needs.
                url = blob._get_download_url(client)
                headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
                response = self._retry()(self._fetch)(client, url, headers)
        except api_exceptions.NotFound:
            raise self._absent(key) from None
        return self._range_answer(what, response, offset, length)

    def _fetch(self, client: storage.Client, url: str, headers: dict[str, str]) -> requests.Response:
        """GET `url`, its body read whole (a connection lost mid-body is retried); an
        answer other than 200, 206 or 416 as the SDK's exception for its status."""
        response = client._http.get(url, headers=headers, timeout=self.timeout)
        if response.status_code not in (200, 206, 416):
            raise api_exceptions.from_http_response(response)
        return response

    def _range_answer(self, what: str, response: requests.Response, offset: int, length: int) -> bytes:
        body = response.content
        if response.status_code == 416:
            # Range Not Satisfiable: the object is there and ends at or before `offset`.
            stated = _CONTENT_RANGE_SIZE.fullmatch(response.headers.get("Content-Range", ""))
            if stated and offset < int(stated[1]):
                raise StorageError(f"{self.url}: {what}: answered 416 for an object of {stated[1]} bytes")
            return b""
        if response.status_code == 200:
            stored = _stored_crc32c(response.headers.get("x-goog-hash", ""))
            if stored is not None and stored != _checksums(body)[0]:
                raise StorageError(f"{self.url}: {what}: the whole object was answered, and its bytes do not match "
                                   "its CRC32C")
            return body[offset:offset + length]
        answered = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if answered is None:
            raise StorageError(f"{self.url}: {what}: a partial answer without a valid Content-Range")
        first, last, size = int(answered[1]), int(answered[2]), answered[3]
        end = offset + length if size == "*" else min(offset + length, int(size))
        if (first, last + 1) != (offset, end) or len(body) != end - offset:
            raise StorageError(f"{self.url}: {what}: answered {len(body)} bytes as bytes {first} to {last + 1} of "
                               f"{size}")
        return body

    def copy(self, source: str, target: str) -> None:
        """hookspecs.ServerSideCopy: the rewrite API (inside the bucket it finishes in one
        call as a rule; a rewrite token asks for the next step), create-only through
        ifGenerationMatch=0 on the target. As for `put`: a 412 after a retried attempt may
        be that attempt's own copy, stored although its answer was lost, and the same
        checksums as the source's mean it is."""
        retried: list[Exception] = []
        try:
            with self._faults(f"copying {source} to {target}", api_exceptions.NotFound,
                              api_exceptions.PreconditionFailed), self._client() as client:
                bucket = client.bucket(self.bucket_name)
                original, copied = bucket.blob(self.prefix + source), bucket.blob(self.prefix + target)
                token = None
                while True:
                    token, _, _ = copied.rewrite(original, token=token, if_generation_match=0, timeout=self.timeout,
                                                 retry=self._retry(on_error=retried.append))
                    if token is None:
                        break
        except api_exceptions.NotFound:
            # Inside one bucket only the source can be missing, or the bucket itself.
            raise self._absent(source) from None
        except api_exceptions.PreconditionFailed:
            if retried and self._same_bytes(source, target):
                return
            raise ObjectExists(target) from None

    def stat(self, key: str) -> ObjectInfo:
        try:
            blob = self._metadata(key)
        except api_exceptions.NotFound:
            raise self._absent(key) from None
        created = blob.time_created
        return ObjectInfo(key, blob.size or 0, created.timestamp() if created else None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._faults(f"listing {prefix or 'the archive'}"), self._client() as client:
            # Every page is fetched here, inside the fault translation: a lazy iterator
            # would raise the SDK's exceptions in the caller's loop.
            blobs = list(client.list_blobs(self.bucket_name, prefix=self.prefix + prefix,
                                           timeout=self.timeout, retry=self._retry()))
        infos = [self._info(blob) for blob in blobs]
        # GCS lists in name order already; sorting by the UTF-8 bytes is the protocol's
        # order whatever an emulator or a future API does.
        return iter(sorted(infos, key=lambda info: info.key.encode()))

    def list_folder(self, prefix: str) -> Folder:
        with self._faults(f"listing {prefix or 'the archive'}"), self._client() as client:
            pages = client.list_blobs(self.bucket_name, prefix=self.prefix + prefix, delimiter="/",
                                      timeout=self.timeout, retry=self._retry())
            blobs = list(pages)
            # The sub-folders ("prefixes") are known only once every page has been read.
            folders = sorted((name[len(self.prefix):] for name in pages.prefixes), key=str.encode)
        objects = sorted((self._info(blob) for blob in blobs), key=lambda info: info.key.encode())
        return Folder(objects, folders)

    def delete(self, key: str) -> None:
        try:
            with self._faults(f"deleting {key}", api_exceptions.NotFound), self._client() as client:
                client.bucket(self.bucket_name).blob(self.prefix + key).delete(
                    timeout=self.timeout, retry=self._retry())
        except api_exceptions.NotFound:
            self._absent(key)  # absent is fine; a missing bucket raises StorageError

    # -- helpers -----------------------------------------------------------------------

    def _metadata(self, key: str) -> storage.Blob:
        with self._faults(f"checking {key}", api_exceptions.NotFound), self._client() as client:
            blob = client.bucket(self.bucket_name).blob(self.prefix + key)
            blob.reload(timeout=self.timeout, retry=self._retry())
            return blob

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether the stored object has the checksums of `data` (crc32c always; MD5 too
        when the object has one, which composite objects do not)."""
        try:
            blob = self._metadata(key)
        except api_exceptions.NotFound:
            return False  # deleted meanwhile: not ours either
        crc32c, md5 = _checksums(data)
        return blob.crc32c == crc32c and blob.md5_hash in (None, md5)

    def _same_bytes(self, source: str, target: str) -> bool:
        """Whether the two objects have the same size and checksums."""
        try:
            original, copied = self._metadata(source), self._metadata(target)
        except api_exceptions.NotFound:
            return False
        return (original.size, original.crc32c, original.md5_hash) == (copied.size, copied.crc32c, copied.md5_hash)

    def _absent(self, key: str) -> ObjectNotFound:
        """ObjectNotFound for `key` after a 404, once the bucket is known to exist. GCS
        answers 404 for a missing object and for a missing bucket alike, and only the
        first may reach wal-fetch as "not in the archive". Listing the key proves the
        bucket exists with the permission pitrkit needs anyway (storage.objects.list,
        not storage.buckets.get)."""
        with self._faults(f"checking that bucket {self.bucket_name} exists"), self._client() as client:
            try:
                list(client.list_blobs(self.bucket_name, prefix=self.prefix + key, max_results=1,
                                       timeout=self.timeout, retry=self._retry()))
            except api_exceptions.NotFound:
                raise StorageError(f"{self.url}: the bucket {self.bucket_name} does not exist") from None
        return ObjectNotFound(key)

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        created = blob.time_created
        return ObjectInfo(blob.name[len(self.prefix):], blob.size or 0, created.timestamp() if created else None)

    def _retry(self, on_error: Callable[[Exception], object] | None = None) -> Retry:
        """The SDK's own notion of a transient fault (429, 5xx, connection errors), retried
        with backoff until `timeout` has passed. A request under way when it passes still
        has its own `timeout`, so one call takes at most about twice the timeout; pitrkit's
        Archive retries the StorageError on top."""
        return Retry(predicate=_should_retry, initial=0.1, maximum=2.0, multiplier=2.0,
                     timeout=self.timeout, on_error=on_error)

    @contextmanager
    def _client(self) -> Iterator[storage.Client]:
        try:
            client = self._idle_clients.get_nowait()
        except queue.Empty:
            client = storage.Client()
        try:
            yield client
        finally:
            # Back to the pool after a fault too: the session's connection pool drops a
            # broken connection by itself.
            self._idle_clients.put(client)

    @contextmanager
    def _faults(self, what: str, *answers: type[Exception]) -> Iterator[None]:
        """Every SDK fault as StorageError, except the `answers` the caller interprets
        (a 404 for an object key, a 412 for a create-only put). A 404 anywhere else (an
        upload, a listing) can only mean the bucket is missing: a fault."""
        try:
            yield
        except answers:
            raise
        except api_exceptions.RetryError as exc:
            raise StorageError(f"{self.url}: {what}: still failing after {self.timeout:g}s of retries: "
                               f"{_describe(exc.cause)}") from None
        except (api_exceptions.GoogleAPICallError, auth_exceptions.GoogleAuthError, DataCorruption,
                InvalidResponse, requests.RequestException, http.client.HTTPException, OSError) as exc:
            raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    if isinstance(exc, InvalidResponse):  # a media request's status, as the SDK reports it
        return f"HTTP {exc.response.status_code}"
    text = exc.message if isinstance(exc, api_exceptions.GoogleAPICallError) else str(exc)
    text = " ".join(text.split())  # one line: pitrkit reports a fault as one line on stderr
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code}: {text}"
    return f"{type(exc).__name__}: {text}"


def _stored_crc32c(x_goog_hash: str) -> str | None:
    """The crc32c of x-goog-hash ("crc32c=...,md5=...", possibly repeated and joined by
    ", "), as GCS reports it in object metadata; None when it has none."""
    for part in x_goog_hash.split(","):
        name, _, value = part.strip().partition("=")
        if name == "crc32c":
            return value
    return None


def _checksums(data: bytes) -> tuple[str, str]:
    """(crc32c, md5) as GCS reports them in object metadata: base64 of the big-endian digest."""
    crc = google_crc32c.value(data).to_bytes(4, "big")
    return base64.b64encode(crc).decode(), base64.b64encode(hashlib.md5(data).digest()).decode()

"""`S3Storage`: one pitrkit archive under a prefix of an S3 (or S3-compatible) bucket.

Owns the translation between pitrkit's Storage protocol and S3's API through botocore's
low-level client: keys under the URL's prefix, create-only writes through
`If-None-Match: *` (PutObject, CompleteMultipartUpload, CopyObject), CRC32 checksums
sent with every upload and checked on every whole-object download, multipart uploads
for large objects, a bounded retry of its own on every request, and botocore's
exceptions turned into the three that carry meaning to pitrkit. Both optional methods
too: ranged reads (a Range request, its answer's shape checked) and server-side copies
(CopyObject; UploadPartCopy past S3's 5 GiB CopyObject limit).

Credentials are botocore's default chain: the environment (AWS_ACCESS_KEY_ID, ...),
the shared credentials and config files (AWS_PROFILE), SSO, web identity (IRSA on EKS),
the ECS container and EC2 instance roles. Nothing here ever formats a credential into a
message, and botocore's own messages carry none.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import botocore.session
from botocore import exceptions as errors
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound, StorageError, StorageMissing
from pitrkit_s3.location import parse_s3_url

T = TypeVar("T")

# Objects larger than this go up as a multipart upload of PART_SIZE parts (S3 wants at
# least 5 MiB a part but the last, and at most 10,000 parts: 160 GiB at 16 MiB; parts
# grow past that). pitrkit's own objects stay under it (backup parts are at most 32 MiB
# before compression, and a few bytes of framing more when incompressible), so each is
# one PutObject, atomic with its condition; backup-push uploads several at once itself.
MULTIPART_THRESHOLD = 64 << 20
PART_SIZE = 16 << 20
MAX_PARTS = 10_000
# CopyObject copies up to 5 GiB; past that, UploadPartCopy in parts of this size.
COPY_LIMIT = 5 << 30
COPY_PART_SIZE = 512 << 20
# Error codes that mean "try again" whatever their status (409 for a conditional write
# racing another on the same key, throttling answered as 400 by some stores).
_TRANSIENT_CODES = {"ConditionalRequestConflict", "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException",
                    "RequestThrottled", "InternalError", "ServiceUnavailable"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_CONTENT_RANGE_PREFIX = "bytes "


class _Attempts:
    """Whether a call needed more than one attempt: after a retried write, a 412 may be
    our own earlier attempt that landed although its answer was lost."""

    retried = False


class S3Storage:
    """Thread-safe: the agent serves concurrent requests with one instance, and
    botocore's low-level client is documented as thread-safe (its Session is not, so it
    is used once, under a lock, to make the client)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.location = parse_s3_url(url)
        self.bucket, self.prefix = self.location.bucket, self.location.prefix
        self.timeout = timeout
        self.multipart_threshold = MULTIPART_THRESHOLD
        self.part_size = PART_SIZE
        self.copy_limit = COPY_LIMIT
        self.copy_part_size = COPY_PART_SIZE
        self._lock = threading.Lock()
        self._client: Any = None

    # -- the Storage protocol ----------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        what = f"storing {key}"
        condition = {} if overwrite else {"IfNoneMatch": "*"}
        attempts = _Attempts()
        try:
            if len(data) <= self.multipart_threshold:
                self._call(what, lambda: self._s3().put_object(
                    Bucket=self.bucket, Key=self.prefix + key, Body=data, ChecksumAlgorithm="CRC32",
                    ContentType="application/octet-stream", **condition), attempts, answers={"PreconditionFailed"})
            else:
                self._multipart_put(what, key, data, condition, attempts)
        except _Answer as answer:
            # The first attempt met an object already there: ObjectExists, even for the
            # same bytes (the caller decides what identical means). After a retried
            # attempt the object may be that attempt's own, stored although its answer
            # was lost: the same bytes mean it is.
            if answer.code in ("PreconditionFailed", "NoSuchUpload") and attempts.retried and self._holds(key, data):
                return
            if answer.code == "PreconditionFailed":
                raise ObjectExists(key) from None
            raise StorageError(f"{self.url}: {what}: the multipart upload vanished before it completed") from None

    def _multipart_put(self, what: str, key: str, data: bytes, condition: dict[str, str],
                       attempts: _Attempts) -> None:
        s3, name = self._s3(), self.prefix + key
        part_size = max(self.part_size, -(-len(data) // MAX_PARTS))
        upload = self._call(what, lambda: s3.create_multipart_upload(
            Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32", ContentType="application/octet-stream"))
        upload_id = _upload_id(what, upload)
        completed = False
        try:
            parts = []
            view = memoryview(data)
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                body = bytes(view[start:start + part_size])
                answer = self._call(f"{what} (part {number})", partial(
                    s3.upload_part, Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body,
                    ChecksumAlgorithm="CRC32"))
                parts.append(_part(what, number, answer))
            self._call(what, lambda: s3.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition),
                attempts, answers={"PreconditionFailed", "NoSuchUpload"})
            completed = True
        finally:
            if not completed:
                self._abort(name, upload_id)

    def _abort(self, name: str, upload_id: str) -> None:
        """Best effort: an upload left behind is invisible to reads and listings, and a
        bucket lifecycle rule (docs/plugins.md) removes what this could not."""
        try:
            self._s3().abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
        except (ClientError, BotoCoreError, OSError):
            pass

    def get(self, key: str) -> bytes:
        what = f"reading {key}"
        try:
            # ChecksumMode: botocore compares the body with the stored CRC32 and raises
            # FlexibleChecksumError (retried, then a StorageError) on a mismatch.
            return self._call(what, lambda: self._read_body(self._s3().get_object(
                Bucket=self.bucket, Key=self.prefix + key, ChecksumMode="ENABLED"))[1],
                answers=_NOT_FOUND_CODES)
        except _Answer as answer:
            raise self._absent(key, answer.code) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """hookspecs.RangedReads: one GET with a Range header. No checksum covers a part
        of an object, so what is checked is the answer's shape: a 206 must be exactly the
        bytes asked for that exist, as its Content-Range says; a 200 (a server or proxy
        that ignored the Range) is the whole object, checked against its CRC32 by
        botocore, then sliced; a 416 is a range that starts at or past the end: b""."""
        if length == 0:
            self.stat(key)  # no HTTP range is empty: b"" for an object that is there
            return b""
        what = f"reading {key} (bytes {offset} to {offset + length})"
        try:
            status, body, content_range = self._call(what, lambda: self._read_body(self._s3().get_object(
                Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={offset}-{offset + length - 1}",
                ChecksumMode="ENABLED")), answers=_NOT_FOUND_CODES | {"InvalidRange"})
        except _Answer as answer:
            if answer.code != "InvalidRange":
                raise self._absent(key, answer.code) from None
            # Range Not Satisfiable: the object is there and ends at or before `offset`.
            stated = answer.headers.get("content-range", "").rpartition("/")[2]
            if stated.isdigit() and offset < int(stated):
                raise StorageError(f"{self.url}: {what}: answered 416 for an object of {stated} bytes") from None
            return b""
        if status == 200:
            return body[offset:offset + length]
        first, last, size = _content_range(content_range)
        if first is None:
            raise StorageError(f"{self.url}: {what}: a partial answer without a valid Content-Range")
        end = offset + length if size is None else min(offset + length, size)
        if (first, last + 1) != (offset, end) or len(body) != end - offset:
            raise StorageError(f"{self.url}: {what}: answered {len(body)} bytes as bytes {first} to {last + 1} of "
                               f"{'*' if size is None else size}")
        return body

    def copy(self, source: str, target: str) -> None:
        """hookspecs.ServerSideCopy: CopyObject with If-None-Match: * on the target (or,
        past 5 GiB, a multipart upload of UploadPartCopy parts, completed create-only).
        As for `put`: a 412 after a retried attempt may be that attempt's own copy,
        stored although its answer was lost, and the same bytes as the source's mean it
        is."""
        what = f"copying {source} to {target}"
        attempts = _Attempts()
        try:
            size = self.stat(source).size
            if size <= self.copy_limit:
                self._call(what, lambda: self._s3().copy_object(
                    Bucket=self.bucket, Key=self.prefix + target, IfNoneMatch="*", ChecksumAlgorithm="CRC32",
                    CopySource={"Bucket": self.bucket, "Key": self.prefix + source}),
                    attempts, answers=_NOT_FOUND_CODES | {"PreconditionFailed"})
            else:
                self._multipart_copy(what, source, target, size, attempts)
        except _Answer as answer:
            if answer.code in _NOT_FOUND_CODES:
                raise self._absent(source, answer.code) from None  # in one bucket only the source can be missing
            if attempts.retried and self._same_bytes(source, target):
                return
            if answer.code == "PreconditionFailed":
                raise ObjectExists(target) from None
            raise StorageError(f"{self.url}: {what}: the multipart upload vanished before it completed") from None

    def _multipart_copy(self, what: str, source: str, target: str, size: int, attempts: _Attempts) -> None:
        s3, name = self._s3(), self.prefix + target
        copy_source = {"Bucket": self.bucket, "Key": self.prefix + source}
        part_size = max(self.copy_part_size, -(-size // MAX_PARTS))
        upload = self._call(what, lambda: s3.create_multipart_upload(
            Bucket=self.bucket, Key=name, ChecksumAlgorithm="CRC32", ContentType="application/octet-stream"))
        upload_id = _upload_id(what, upload)
        completed = False
        try:
            parts = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                byte_range = f"bytes={start}-{min(start + part_size, size) - 1}"
                answer = self._call(f"{what} (part {number})", partial(
                    s3.upload_part_copy, Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                    CopySource=copy_source, CopySourceRange=byte_range), answers=_NOT_FOUND_CODES)
                parts.append(_part(what, number, answer.get("CopyPartResult")))
            self._call(what, lambda: s3.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts},
                IfNoneMatch="*"), attempts, answers={"PreconditionFailed", "NoSuchUpload"})
            completed = True
        finally:
            if not completed:
                self._abort(name, upload_id)

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self._call(f"checking {key}", lambda: self._s3().head_object(
                Bucket=self.bucket, Key=self.prefix + key), answers=_NOT_FOUND_CODES)
        except _Answer:
            raise self._absent(key) from None
        return ObjectInfo(key, _size(head.get("ContentLength")), _stored_at(head.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Every page is fetched here: a lazy iterator would raise in the caller's loop.
        objects, _ = self._listing(prefix, delimiter=None)
        return iter(objects)

    def list_folder(self, prefix: str) -> Folder:
        objects, folders = self._listing(prefix, delimiter="/")
        return Folder(objects, folders)

    def delete(self, key: str) -> None:
        # S3 answers 204 for an absent key too; a missing bucket is NoSuchBucket (a fault).
        self._call(f"deleting {key}", lambda: self._s3().delete_object(Bucket=self.bucket, Key=self.prefix + key))

    # -- helpers -----------------------------------------------------------------------

    def _listing(self, prefix: str, delimiter: str | None) -> tuple[builtins.list[ObjectInfo], builtins.list[str]]:
        what = f"listing {prefix or 'the archive'}"
        options = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if delimiter:
            options["Delimiter"] = delimiter
        objects: builtins.list[ObjectInfo] = []  # builtins: `list` is a method here
        folders: builtins.list[str] = []
        token = None
        while True:
            page_options = {**options, "ContinuationToken": token} if token else options
            page = self._call(what, partial(self._s3().list_objects_v2, **page_options))
            for entry in page.get("Contents", []):
                objects.append(ObjectInfo(self._relative(what, entry.get("Key")), _size(entry.get("Size")),
                                          _stored_at(entry.get("LastModified"))))
            folders.extend(self._relative(what, entry.get("Prefix")) for entry in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not isinstance(token, str) or not token:
                raise StorageError(f"{self.url}: {what}: a truncated page without a continuation token")
        # S3 lists in UTF-8 byte order already; sorting makes it the protocol's order
        # whatever an S3-compatible store does.
        objects.sort(key=lambda info: info.key.encode())
        folders.sort(key=str.encode)
        return objects, folders

    def _relative(self, what: str, name: object) -> str:
        """A listed key relative to the archive, checked: the store's answer is hostile."""
        if not isinstance(name, str) or not name.startswith(self.prefix):
            raise StorageError(f"{self.url}: {what}: the listing named a key outside the prefix")
        return name[len(self.prefix):]

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether the stored object has exactly the bytes of `data` (its size first,
        then its bytes, checksum-checked on the way: a rare path, after a lost answer)."""
        try:
            return self.stat(key).size == len(data) and self.get(key) == data
        except ObjectNotFound:
            return False  # deleted meanwhile: not ours either

    def _same_bytes(self, source: str, target: str) -> bool:
        try:
            return self.stat(source).size == self.stat(target).size and self.get(source) == self.get(target)
        except ObjectNotFound:
            return False

    def _absent(self, key: str, code: str = "404") -> ObjectNotFound:
        """ObjectNotFound for `key` after a 404, once the bucket is known to exist. An
        answer with a body says which is missing (NoSuchKey, or NoSuchBucket: a
        StorageMissing already); a HEAD's 404 has no body, and only a missing key may
        reach wal-fetch as "not in the archive": then a listing proves the bucket exists,
        with the permission pitrkit needs anyway (s3:ListBucket). wal-fetch asks for
        segments that are not there yet at the end of every recovery, so a GET's
        NoSuchKey costs no second request."""
        if code == "NoSuchKey":
            return ObjectNotFound(key)
        self._call(f"checking that bucket {self.bucket} exists", lambda: self._s3().list_objects_v2(
            Bucket=self.bucket, Prefix=self.prefix + key, MaxKeys=1))
        return ObjectNotFound(key)

    @staticmethod
    def _read_body(answer: dict) -> tuple[int, bytes, str]:
        """(status, body, Content-Range) of a GetObject answer, its body read whole inside
        the retried call (a connection lost mid-body, or a checksum that does not match,
        is retried like any transient fault)."""
        body = answer["Body"].read()
        length = answer.get("ContentLength")
        if length is not None and length != len(body):
            raise _ShortBody(f"{len(body)} bytes under Content-Length {length}")
        return answer["ResponseMetadata"]["HTTPStatusCode"], body, answer.get("ContentRange", "")

    def _call(self, what: str, request: Callable[[], T], attempts: _Attempts | None = None,
              answers: set[str] = frozenset()) -> T:  # type: ignore[assignment]
        """`request()`, retried with jittered backoff on transient faults (429, 5xx,
        connection errors, corrupted or short bodies) until `timeout` has passed; a
        request under way then still has its own timeouts, so one call takes at most
        about twice the timeout, and pitrkit's Archive retries the StorageError on top.
        An S3 error whose code is in `answers` is raised as _Answer for the caller to
        interpret; a missing bucket as StorageMissing; any other fault as StorageError."""
        deadline = time.monotonic() + self.timeout
        delay = 0.1
        while True:
            try:
                return request()
            except ClientError as exc:
                code, status = _code(exc), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in answers:
                    raise _Answer(code, exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})) from None
                if code == "NoSuchBucket":
                    raise StorageMissing(f"{self.url}: the bucket {self.bucket} does not exist") from None
                if not (status >= 500 or status == 429 or code in _TRANSIENT_CODES):
                    raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None
                fault: Exception = exc
            except _ShortBody as exc:
                fault = exc
            except BotoCoreError as exc:
                if not _transient(exc):
                    raise StorageError(f"{self.url}: {what}: {_describe(exc)}") from None
                fault = exc
            except OSError as exc:
                fault = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageError(f"{self.url}: {what}: still failing after {self.timeout:g}s of retries: "
                                   f"{_describe(fault)}") from None
            time.sleep(min(remaining, delay * (0.5 + random.random() / 2)))
            delay = min(delay * 2, 2.0)
            if attempts is not None:
                attempts.retried = True

    def _s3(self) -> Any:
        """The client, made on first use: finding credentials may mean a request (the
        instance metadata service), which the constructor must not make."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = _make_client(self.location, self.timeout)
                client = self._client
        return client


def _make_client(location: Any, timeout: float) -> Any:
    config = Config(
        connect_timeout=timeout, read_timeout=timeout,
        # One attempt: the retries are _call's, which must know whether a write was
        # retried (a 412 after a lost answer may be our own object).
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=32,
        s3={"addressing_style": "path"} if location.path_style else None,
        request_checksum_calculation="when_supported", response_checksum_validation="when_supported",
        user_agent_extra="pitrkit")
    session = botocore.session.get_session()
    return session.create_client("s3", region_name=location.region, endpoint_url=location.endpoint, config=config)


class _Answer(Exception):
    """An S3 error code the caller interprets (404 for an object key, 412 for a
    create-only write, ...), with the answer's headers."""

    def __init__(self, code: str, headers: dict[str, str]) -> None:
        super().__init__(code)
        self.code, self.headers = code, headers


class _ShortBody(Exception):
    pass


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient(exc: BotoCoreError) -> bool:
    """Connection errors, timeouts, a body cut short or not matching its checksum: worth
    another attempt. Missing credentials, a bad parameter: not."""
    return isinstance(exc, (errors.HTTPClientError, errors.ConnectionError, errors.IncompleteReadError,
                            errors.ResponseStreamingError, errors.FlexibleChecksumError, errors.ChecksumError))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"HTTP {status} {_code(exc)}" + (f": {message}" if message else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line: pitrkit reports a fault as one line on stderr


def _size(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise StorageError(f"the store answered a size of {value!r}")
    return value


def _upload_id(what: str, answer: dict) -> str:
    upload_id = answer.get("UploadId")
    if not isinstance(upload_id, str) or not upload_id:
        raise StorageError(f"{what}: CreateMultipartUpload answered without an UploadId")
    return upload_id


def _part(what: str, number: int, answer: object) -> dict[str, object]:
    """The part's entry for CompleteMultipartUpload, from UploadPart's (or
    UploadPartCopy's) answer: its ETag, and its CRC32 where the store gave one (S3 does;
    some S3-compatible stores do not, and then verify the part by its ETag alone)."""
    etag = answer.get("ETag") if isinstance(answer, dict) else None
    if not isinstance(etag, str) or not etag:
        raise StorageError(f"{what}: part {number} was answered without an ETag")
    part: dict[str, object] = {"PartNumber": number, "ETag": etag}
    checksum = answer.get("ChecksumCRC32") if isinstance(answer, dict) else None
    if isinstance(checksum, str):
        part["ChecksumCRC32"] = checksum
    return part


def _stored_at(modified: object) -> float | None:
    """When the object was stored, from its LastModified. S3 names only the second (its
    stamps end in .000), and the object was stored within it: the end of that second is
    what pitrkit gets, so that the store time is never earlier than the truth (the
    restore planner refuses a time target later than the newest segment's store time,
    and would refuse one that the archive does reach). A stamp with a fraction (some
    S3-compatible stores) is taken as it is."""
    if not isinstance(modified, datetime):
        return None
    stamp = modified.timestamp()
    return stamp + 0.999_999 if modified.microsecond == 0 else stamp


def _content_range(text: str) -> tuple[int | None, int, int | None]:
    """(first, last, size) of "bytes FIRST-LAST/SIZE" (SIZE None for "*"); first None
    when the text is not one."""
    if not text.startswith(_CONTENT_RANGE_PREFIX):
        return None, 0, None
    span, _, size = text[len(_CONTENT_RANGE_PREFIX):].partition("/")
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit() and (size.isdigit() or size == "*")) or len(span) > 40:
        return None, 0, None
    return int(first), int(last), None if size == "*" else int(size)

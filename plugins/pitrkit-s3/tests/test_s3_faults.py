"""S3Storage through the kit's fault-injecting proxy (pitrkit.storage.fault_suite): the
suite's faults on S3's requests, against moto's server, and those of S3's own paths
(multipart uploads, a HEAD's bodiless 404). botocore reaches the proxy as the URL's
`endpoint`; a fault chooses its requests by method, path-style path and headers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import pytest
from moto_server import s3_url
from pitrkit_s3.storage import S3Storage

from pitrkit.hookspecs import ObjectNotFound, StorageError, StorageMissing
from pitrkit.storage.fault_suite import KEY, StorageFaults
from pitrkit.storage.faults import FaultyProxy

PART = 5 << 20
_S3_CODES = {412: "PreconditionFailed", 500: "InternalError", 503: "SlowDown"}


def s3_error(status: int) -> tuple[dict[str, str], bytes]:
    """An error as S3 words it, the code named as S3 names the status."""
    code = _S3_CODES.get(status, "InjectedFault")
    return ({"Content-Type": "application/xml"},
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code>"
            b"<Message>injected by the test proxy</Message></Error>" % code.encode())


def _is_object(path: str) -> bool:
    """A path-style path naming an object (/bucket/key), not a bucket's listing."""
    return path.lstrip("/").split("?", 1)[0].count("/") >= 1


def uploads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """PutObject and UploadPart."""
    return method == "PUT" and _is_object(path) and "x-amz-copy-source" not in headers


def completes(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "POST" and "uploadId=" in path


def downloads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "GET" and _is_object(path)


def copies(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "PUT" and "x-amz-copy-source" in headers


def if_none_match(method: str, path: str, headers: Mapping[str, str]) -> bool:
    # moto ignores it on CopyObject (see test_s3_conformance.py): what S3 would answer is
    # injected here.
    return headers.get("if-none-match") == "*"


@pytest.fixture
def proxy(moto) -> Iterator[FaultyProxy]:
    # SigV4 signs the Host header: it reaches moto as botocore sent it.
    proxy = FaultyProxy(moto.endpoint, error_answer=s3_error, forward_host=True)
    yield proxy
    proxy.close()


def through(bucket: str, proxy: FaultyProxy, timeout: float) -> S3Storage:
    return S3Storage(s3_url(bucket, "archive", proxy.endpoint), timeout=timeout)


class TestS3Faults(StorageFaults):
    uploads, downloads, copies, create_only_copy = uploads, downloads, copies, if_none_match
    lasting_fault = "still failing"

    @pytest.fixture
    def proxy(self, proxy) -> FaultyProxy:
        return proxy

    @pytest.fixture
    def proxied_url(self, bucket, proxy) -> str:
        return s3_url(bucket, "archive", proxy.endpoint)


    @pytest.fixture
    def secrets(self) -> list[str]:
        return [os.environ["AWS_SECRET_ACCESS_KEY"]]


# -- S3's own paths ---------------------------------------------------------------------


@pytest.fixture
def storage(bucket, proxy) -> S3Storage:
    return through(bucket, proxy, 5)


def test_a_reset_mid_part_is_retried_and_stores_the_whole_object(storage, proxy):
    storage.multipart_threshold = storage.part_size = PART
    data = os.urandom(2 * PART + 1)
    proxy.inject("reset-mid-body", uploads, times=2)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-mid-body"] * 2
    assert storage.get(KEY) == data


def test_a_completion_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    # The retried CompleteMultipartUpload meets a finished upload (NoSuchUpload, or 412
    # where a store checks the condition first): the stored object has our bytes.
    storage.multipart_threshold = storage.part_size = PART
    data = os.urandom(PART + 1)
    proxy.inject("reset-after-forward", completes)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get(KEY) == data


def test_a_download_cut_short_is_refused(storage, proxy):
    storage.put(KEY, os.urandom(100_000))
    proxy.inject("short-body", downloads, times=math.inf)
    with pytest.raises(StorageError, match="reading"):
        storage.get(KEY)


def test_a_missing_object_costs_one_request_and_a_missing_bucket_is_a_fault(bucket, moto, proxy):
    # wal-fetch asks for segments not archived yet at the end of every recovery: S3's
    # NoSuchKey says the bucket is there, so no listing follows. A HEAD's 404 has no
    # body, so stat lists to tell a missing key from a missing bucket.
    storage = through(bucket, proxy, 5)
    with pytest.raises(ObjectNotFound):
        storage.get(KEY)
    assert [request.method for request in proxy.requests] == ["GET"]
    proxy.requests.clear()
    with pytest.raises(ObjectNotFound):
        storage.stat(KEY)
    assert [request.method for request in proxy.requests] == ["HEAD", "GET"]  # the HEAD, then a one-key listing
    with pytest.raises(StorageMissing):
        through("no-such-bucket", proxy, 5).get(KEY)

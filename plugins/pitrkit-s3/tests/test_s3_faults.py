"""S3Storage through a loopback proxy that injects faults: transient faults are retried
within the timeout, lasting ones become a StorageError, and no fault ever leaves a
partial or corrupted object that a read accepts."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto_server import s3_url
from pitrkit_s3.storage import S3Storage
from s3_faulty_proxy import COMPLETES, COPIES, DOWNLOADS, UPLOADS, FaultyProxy

from pitrkit.config import load
from pitrkit.hookspecs import ObjectExists, ObjectNotFound, StorageError, StorageMissing
from pitrkit.storage.archive import Archive

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "unit"))
from segments import init_archive, long_header  # noqa: E402  (the project's synthetic WAL)

KEY = "wal/0000000100000000/000000010000000000000001"
PART = 5 << 20


@pytest.fixture
def proxy(moto) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(moto.endpoint)
    yield proxy
    proxy.close()


def through(bucket: str, proxy: FaultyProxy, timeout: float) -> S3Storage:
    return S3Storage(s3_url(bucket, "archive", proxy.endpoint), timeout=timeout)


@pytest.fixture
def storage(bucket, proxy) -> S3Storage:
    return through(bucket, proxy, 5)


def test_503s_are_retried(storage, proxy):
    data = os.urandom(300_000)
    proxy.inject("status", UPLOADS, times=2, status=503)
    proxy.inject("status", DOWNLOADS, times=2, status=503)
    storage.put(KEY, data)
    assert storage.get(KEY) == data
    assert proxy.hits == ["status"] * 4


def test_a_reset_mid_upload_is_retried_and_stores_the_whole_object(storage, proxy):
    data = os.urandom(2_000_000)
    proxy.inject("reset-mid-body", UPLOADS, times=2)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-mid-body"] * 2
    assert storage.get(KEY) == data


def test_a_reset_mid_part_is_retried_and_stores_the_whole_object(storage, proxy):
    storage.multipart_threshold = storage.part_size = PART
    data = os.urandom(2 * PART + 1)
    proxy.inject("reset-mid-body", UPLOADS, times=2)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-mid-body"] * 2
    assert storage.get(KEY) == data


def test_an_upload_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    # The retry meets the object its first attempt stored (412): the same bytes, ours.
    data = os.urandom(100_000)
    proxy.inject("reset-after-forward", UPLOADS)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get(KEY) == data


def test_a_completion_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    # The retried CompleteMultipartUpload meets a finished upload (NoSuchUpload, or 412
    # where a store checks the condition first): the stored object has our bytes.
    storage.multipart_threshold = storage.part_size = PART
    data = os.urandom(PART + 1)
    proxy.inject("reset-after-forward", COMPLETES)
    storage.put(KEY, data)
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get(KEY) == data


def test_a_retry_that_meets_another_writers_object_is_object_exists(storage, proxy):
    storage.put(KEY, b"the other writer's segment")
    proxy.inject("status", UPLOADS, status=503)
    with pytest.raises(ObjectExists):
        storage.put(KEY, b"our different segment")
    assert storage.get(KEY) == b"the other writer's segment"


def test_lasting_resets_fail_with_a_storage_error_and_leave_no_object(bucket, proxy):
    storage = through(bucket, proxy, 1)
    proxy.inject("reset-mid-body", UPLOADS, times=math.inf)
    with pytest.raises(StorageError, match="storing"):
        storage.put(KEY, os.urandom(1_000_000))
    with pytest.raises(ObjectNotFound):
        storage.get(KEY)


def test_a_corrupted_download_is_refused(storage, proxy):
    data = os.urandom(100_000)
    storage.put(KEY, data)
    proxy.inject("corrupt-body", DOWNLOADS, times=math.inf)
    with pytest.raises(StorageError, match="reading"):
        storage.get(KEY)
    assert proxy.hits  # the corruption was injected, and refused


def test_a_download_cut_short_is_refused(storage, proxy):
    storage.put(KEY, os.urandom(100_000))
    proxy.inject("short-body", DOWNLOADS, times=math.inf)
    with pytest.raises(StorageError, match="reading"):
        storage.get(KEY)


def test_latency_within_the_timeout_is_only_slower(storage, proxy):
    proxy.inject("delay", times=math.inf, delay=0.3)
    storage.put(KEY, b"slow")
    assert storage.get(KEY) == b"slow"


def test_latency_beyond_the_timeout_is_a_storage_error(bucket, proxy):
    storage = through(bucket, proxy, 0.5)
    proxy.inject("delay", DOWNLOADS, times=math.inf, delay=3)
    storage.put(KEY, b"x")
    with pytest.raises(StorageError, match="reading"):
        storage.get(KEY)


# -- ranged reads: no checksum covers part of an object, so the answer's shape is checked --


def test_a_ranged_read_asks_for_the_range_and_is_retried(storage, proxy):
    data = os.urandom(300_000)
    storage.put(KEY, data)
    proxy.inject("status", DOWNLOADS, times=2, status=503)
    assert storage.get_range(KEY, 1000, 5000) == data[1000:6000]
    assert proxy.hits == ["status"] * 2


def test_a_ranged_read_answered_with_the_whole_object_is_sliced(storage, proxy):
    data = os.urandom(300_000)
    storage.put(KEY, data)
    proxy.inject("ignore-range", DOWNLOADS, times=math.inf)
    for offset, length in [(1000, 5000), (299_990, 100), (0, 300_000)]:
        assert storage.get_range(KEY, offset, length) == data[offset:offset + length]
    assert proxy.hits == ["ignore-range"] * 3


def test_a_whole_object_answer_that_does_not_match_its_checksum_is_refused(storage, proxy):
    storage.put(KEY, os.urandom(100_000))
    proxy.inject("ignore-range-corrupt-body", DOWNLOADS, times=math.inf)
    with pytest.raises(StorageError, match="reading"):
        storage.get_range(KEY, 10, 20)


def test_a_range_answered_short_is_refused(storage, proxy):
    # botocore checks the body against Content-Length (a retried fault); a body and a
    # Content-Length that agree still leave Content-Range claiming every byte asked for.
    storage.put(KEY, os.urandom(100_000))
    proxy.inject("short-body", DOWNLOADS)
    with pytest.raises(StorageError, match=r"reading .* answered 4999 bytes as bytes 1000 to 6000 of 100000"):
        storage.get_range(KEY, 1000, 5000)


# -- server-side copy: create-only through If-None-Match on the target --------------------


def test_a_copy_is_one_create_only_copy_object_inside_the_bucket(storage, proxy):
    data = os.urandom(100_000)
    storage.put(KEY, data)
    proxy.requests.clear()
    storage.copy(KEY, "backups/B/data/0")
    assert storage.get("backups/B/data/0") == data
    copies = [headers for method, path, headers in proxy.requests if COPIES(method, path, headers)]
    assert len(copies) == 1 and copies[0].get("if-none-match") == "*"
    assert not any(UPLOADS(*request) for request in proxy.requests)  # the bytes never came here


def test_a_copy_refused_by_its_precondition_is_object_exists(storage, proxy):
    # What S3 answers for a target that exists (moto does not: it overwrites, see
    # test_s3_conformance.py), even one that holds the same bytes: as for put.
    storage.put(KEY, b"segment")
    storage.put("copy", b"segment")
    proxy.inject("status", COPIES, status=412)
    with pytest.raises(ObjectExists):
        storage.copy(KEY, "copy")


def test_a_copy_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    data = os.urandom(100_000)
    storage.put(KEY, data)
    proxy.inject("reset-after-forward", COPIES)
    proxy.inject("status", COPIES, status=412)
    storage.copy(KEY, "copy")
    assert proxy.hits == ["reset-after-forward", "status"]
    assert storage.get("copy") == data


def test_a_retried_copy_that_meets_other_bytes_is_object_exists(storage, proxy):
    storage.put(KEY, b"our segment")
    storage.put("copy", b"another writer's")
    proxy.inject("status", COPIES, status=503)
    proxy.inject("status", COPIES, status=412)
    with pytest.raises(ObjectExists):
        storage.copy(KEY, "copy")
    assert proxy.hits == ["status", "status"]
    assert storage.get("copy") == b"another writer's"


def test_wal_push_into_a_failing_store_fails_clearly(bucket, proxy, tmp_path):
    # The whole command: the plugin loaded by its entry point, pitrkit's retries on top of
    # the plugin's, then one `pitrkit: ...` line and a non-zero exit, with nothing stored
    # and no credential in the output.
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "{s3_url(bucket, "archive", proxy.endpoint)}"\ntimeout = 1\n'
                      "retries = 1\n[agent]\nenabled = false\n")
    init_archive(Archive(load(config)))
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(long_header(pageaddr=16 << 20).ljust(16 << 20, b"\0"))
    proxy.inject("status", UPLOADS, times=math.inf, status=503)
    result = subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), "wal-push", str(segment)],
                            capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("pitrkit: ") and "503" in error, result.stderr
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout
    assert [info.key for info in through(bucket, proxy, 5).list("")] == ["archive.json"]


def test_a_missing_object_costs_one_request_and_a_missing_bucket_is_a_fault(bucket, moto, proxy):
    # wal-fetch asks for segments not archived yet at the end of every recovery: S3's
    # NoSuchKey says the bucket is there, so no listing follows. A HEAD's 404 has no
    # body, so stat lists to tell a missing key from a missing bucket.
    storage = through(bucket, proxy, 5)
    with pytest.raises(ObjectNotFound):
        storage.get(KEY)
    assert [method for method, _, _ in proxy.requests] == ["GET"]
    proxy.requests.clear()
    with pytest.raises(ObjectNotFound):
        storage.stat(KEY)
    assert [method for method, _, _ in proxy.requests] == ["HEAD", "GET"]  # the HEAD, then a one-key listing
    with pytest.raises(StorageMissing):
        through("no-such-bucket", proxy, 5).get(KEY)

"""The multipart paths against moto's server, with S3's smallest part size (5 MiB) so
that a few MiB exercise them: create-only completion, UploadPartCopy past the copy
limit, and no upload left behind by a refused one."""

from __future__ import annotations

import os

import pytest
from moto_server import s3_url
from pitrkit_s3.storage import S3Storage

from pitrkit.hookspecs import ObjectExists, ObjectNotFound

PART = 5 << 20


@pytest.fixture
def storage(bucket, moto) -> S3Storage:
    storage = S3Storage(s3_url(bucket, "archive", moto.endpoint), timeout=10)
    storage.multipart_threshold = storage.part_size = PART
    storage.copy_limit = storage.copy_part_size = PART
    return storage


def uploads_under_way(storage: S3Storage) -> list[str]:
    answer = storage._s3().list_multipart_uploads(Bucket=storage.bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def test_a_multipart_put_is_create_only_and_leaves_no_upload_behind(storage):
    first, second = os.urandom(2 * PART + 1), os.urandom(2 * PART + 1)
    storage.put("big", first)
    with pytest.raises(ObjectExists):
        storage.put("big", second)  # refused by CompleteMultipartUpload's If-None-Match
    assert storage.get("big") == first
    assert uploads_under_way(storage) == []  # the refused upload was aborted
    storage.put("big", second, overwrite=True)
    assert storage.get("big") == second


def test_a_copy_past_the_copy_limit_goes_in_parts(storage):
    data = os.urandom(2 * PART + 12345)
    storage.put("source", data)
    storage.copy("source", "copy")
    assert storage.get("copy") == data
    assert storage.stat("copy").size == len(data)
    with pytest.raises(ObjectExists):
        storage.copy("source", "copy")  # completed create-only, which moto enforces
    with pytest.raises(ObjectNotFound):
        storage.copy("absent", "elsewhere")
    assert uploads_under_way(storage) == []

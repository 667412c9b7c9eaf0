"""S3Storage against moto's server: pitrkit's storage conformance suite (every object in
it is one PutObject; test_s3_parts.py takes the multipart paths)."""

from __future__ import annotations

import pytest
from moto_server import s3_url
from pitrkit_s3.storage import S3Storage

from pitrkit.storage_conformance import StorageConformance


class TestS3Storage(StorageConformance):
    @pytest.fixture
    def storage(self, bucket, moto):
        return S3Storage(s3_url(bucket, "archives/main", moto.endpoint), timeout=10)

    @pytest.fixture
    def unreachable_storage(self, moto, credentials):
        return S3Storage(s3_url("no-such-bucket", "archive", moto.endpoint), timeout=10)

    @pytest.fixture
    def malformed_url(self):
        return "s3://Not_A_Bucket!/archive"

    def test_copy_is_create_only(self, copying, request):
        if request.node.callspec.params["copying"] == "own method":
            # moto's server ignores If-None-Match on CopyObject (it enforces it on
            # PutObject and CompleteMultipartUpload), which S3 enforces: the plugin sends
            # it and turns the 412 into ObjectExists, which test_s3_faults.py checks. Strict:
            # once moto enforces it, this passes and fails the run, and the mark goes.
            request.applymarker(pytest.mark.xfail(strict=True, reason="moto overwrites on CopyObject whatever "
                                                                       "If-None-Match says"))
        super().test_copy_is_create_only(copying)


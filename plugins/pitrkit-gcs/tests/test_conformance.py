"""GcsStorage against fake-gcs-server: pitrkit's storage conformance suite."""

from __future__ import annotations

import pytest
from pitrkit_gcs.storage import GcsStorage

from pitrkit.storage_conformance import StorageConformance


class TestGcsStorage(StorageConformance):
    @pytest.fixture
    def storage(self, bucket):
        return GcsStorage(f"gs://{bucket}/archives/main", timeout=10)

    @pytest.fixture
    def unreachable_storage(self, emulator):
        return GcsStorage("gs://no-such-bucket/archive", timeout=10)

    @pytest.fixture
    def malformed_url(self):
        return "gs://Not_A_Bucket!/archive"

    def test_copy_is_create_only(self, copying, request):
        if request.node.callspec.params["copying"] == "own method":
            # fake-gcs-server ignores ifGenerationMatch on rewriteTo (and copyTo), which GCS
            # enforces: the plugin sends it and turns the 412 into ObjectExists, which
            # test_faults.py checks request by request. Strict: once the emulator enforces
            # it, this passes and fails the run, and the mark goes.
            request.applymarker(pytest.mark.xfail(strict=True, reason="fake-gcs-server overwrites on rewriteTo "
                                                                       "whatever ifGenerationMatch says"))
        super().test_copy_is_create_only(copying)

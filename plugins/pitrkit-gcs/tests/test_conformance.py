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

"""AzureStorage against Azurite: pitrkit's storage conformance suite."""

from __future__ import annotations

import pytest
from azurite import ACCOUNT
from pitrkit_azure.storage import AzureStorage

from pitrkit.storage_conformance import StorageConformance


class TestAzureStorage(StorageConformance):
    @pytest.fixture
    def storage(self, container):
        return AzureStorage(f"az://{ACCOUNT}/{container}/archives/main", timeout=10)

    @pytest.fixture
    def unreachable_storage(self, emulator):
        return AzureStorage(f"az://{ACCOUNT}/no-such-container/archive", timeout=10)

    @pytest.fixture
    def malformed_url(self):
        return f"az://{ACCOUNT}/Not_A_Container!/archive"

"""GcsStorage through the kit's fault-injecting proxy (pitrkit.storage.fault_suite): the
suite's faults on the JSON API's requests, against fake-gcs-server."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from pitrkit.storage.fault_suite import StorageFaults
from pitrkit.storage.faults import FaultyProxy


def uploads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return path.startswith("/upload/")


def downloads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "GET" and "alt=media" in path


def rewrites(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "POST" and "/rewriteTo/" in path


def if_generation_0(method: str, path: str, headers: Mapping[str, str]) -> bool:
    # The create-only precondition on the target, in the rewrite's query. fake-gcs-server
    # ignores it (see test_conformance.py): what GCS would answer is injected here.
    return "ifGenerationMatch=0" in path.split("?", 1)[1]


class TestGcsFaults(StorageFaults):
    uploads, downloads, copies, create_only_copy = uploads, downloads, rewrites, if_generation_0
    checksum_mismatch = "do not match its CRC32C"
    lasting_fault = "still failing"

    @pytest.fixture
    def proxy(self, emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
        # The SDK reaches the emulator, and so the proxy, through STORAGE_EMULATOR_HOST.
        proxy = FaultyProxy(emulator.endpoint)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        yield proxy
        proxy.close()

    @pytest.fixture
    def proxied_url(self, bucket, proxy) -> str:
        return f"gs://{bucket}/archive"


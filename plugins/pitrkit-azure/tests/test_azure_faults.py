"""AzureStorage through the kit's fault-injecting proxy (pitrkit.storage.fault_suite): the
suite's faults on the Blob service's requests, against Azurite, and those of Azure's own
paths (block uploads, conflicts Azurite answers itself). The SDK reaches the proxy
through the BlobEndpoint of Azurite's connection string; Shared Key signatures do not
cover the Host header, so Azurite accepts the forwarded requests. A copy is a PUT like an
upload, told apart by x-ms-copy-source."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

import pytest
from azurite import ACCOUNT, KEY
from pitrkit_azure.storage import BLOCK_SIZE, AzureStorage

from pitrkit.hookspecs import ObjectExists, StorageError
from pitrkit.storage.fault_suite import KEY as KEY_NAME
from pitrkit.storage.fault_suite import StorageFaults
from pitrkit.storage.faults import FaultyProxy


def azure_error(status: int) -> tuple[dict[str, str], bytes]:
    """An error as the Blob service words it: the SDK reads its code from x-ms-error-code."""
    code = "ConditionNotMet" if status == 412 else "ServerBusy"
    return ({"Content-Type": "application/xml", "x-ms-error-code": code},
            (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
             "<Message>injected by the test proxy</Message></Error>").encode())


def uploads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """Put Blob and Put Block List: the requests that create an object."""
    return (method == "PUT" and "x-ms-copy-source" not in headers and "comp=block&" not in path + "&"
            and "restype=container" not in path)


def commits(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "PUT" and "comp=blocklist" in path


def downloads(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "GET" and "comp=" not in path and "restype=" not in path


def copies(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return method == "PUT" and "x-ms-copy-source" in headers


def if_none_match(method: str, path: str, headers: Mapping[str, str]) -> bool:
    return headers.get("if-none-match") == "*"


@pytest.fixture
def proxy(emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(emulator.endpoint, error_answer=azure_error)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                       f"BlobEndpoint={proxy.endpoint}/{ACCOUNT};")
    yield proxy
    proxy.close()


class TestAzureFaults(StorageFaults):
    uploads, downloads, copies, create_only_copy = uploads, downloads, copies, if_none_match
    checksum_mismatch = None  # the SDK slices a whole-object answer; the range's bytes are the caller's to check
    lasting_fault = "HTTP 503"  # the SDK's own bounded retries, then the last answer

    @pytest.fixture
    def proxy(self, proxy) -> FaultyProxy:
        return proxy

    @pytest.fixture
    def proxied_url(self, container, proxy) -> str:
        return f"az://{ACCOUNT}/{container}/archive"


    @pytest.fixture
    def secrets(self) -> list[str]:
        return [KEY, "AccountKey"]

    @pytest.mark.parametrize("size", [100_000, BLOCK_SIZE + 1000], ids=["one request", "blocks"])
    def test_a_corrupted_download_is_refused(self, storage, proxy, size):
        storage.put(KEY_NAME, os.urandom(size))
        proxy.inject("corrupt-body", downloads, times=math.inf)
        with pytest.raises(StorageError, match="reading .* do not match its MD5"):
            storage.get(KEY_NAME)
        assert proxy.hits  # the corruption was injected, and refused

    def test_a_range_answered_short_is_refused(self, storage, proxy):
        # The body and its Content-Length agree, so HTTP sees nothing wrong; Content-Range
        # still claims every byte asked for. The SDK asks again (so every answer is cut
        # short here) or the plugin refuses it: either way no short range is returned.
        storage.put(KEY_NAME, os.urandom(100_000))
        proxy.inject("short-body", downloads, times=math.inf)
        with pytest.raises(StorageError, match="reading"):
            storage.get_range(KEY_NAME, 1000, 5000)
        assert proxy.hits


# -- Azure's own paths ----------------------------------------------------------------------


@pytest.fixture
def storage(container, proxy) -> AzureStorage:
    return AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=5)


def test_a_block_upload_whose_commit_landed_but_lost_its_answer_is_a_success(storage, proxy):
    data = os.urandom(BLOCK_SIZE * 2 + 1000)  # three blocks, then Put Block List
    proxy.inject("reset-after-forward", commits)
    storage.put(KEY_NAME, data)
    assert proxy.hits == ["reset-after-forward"]
    assert len([request for request in proxy.requests if commits(*request)]) == 2  # the retry met our own object
    assert storage.get(KEY_NAME) == data


def test_a_block_upload_is_create_only(storage, proxy):
    storage.put(KEY_NAME, b"the other writer's segment")
    with pytest.raises(ObjectExists):
        storage.put(KEY_NAME, os.urandom(BLOCK_SIZE + 1))
    assert storage.get(KEY_NAME) == b"the other writer's segment"
    assert any(commits(*request) for request in proxy.requests)  # refused at the commit


def test_a_copy_that_landed_but_lost_its_answer_is_a_success_when_azurite_refuses_the_retry(storage, proxy):
    # Azurite enforces If-None-Match: * on Copy Blob: the retry meets its 409, not an injected 412.
    data = os.urandom(100_000)
    storage.put(KEY_NAME, data)
    proxy.inject("reset-after-forward", copies)
    storage.copy(KEY_NAME, "copy")
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get("copy") == data


def test_a_retried_copy_that_meets_other_bytes_azurite_refuses_is_object_exists(storage, proxy):
    storage.put(KEY_NAME, b"our segment")
    storage.put("copy", b"another writer's")
    proxy.inject("status", copies, status=503)
    with pytest.raises(ObjectExists):
        storage.copy(KEY_NAME, "copy")
    assert storage.get("copy") == b"another writer's"


def test_a_412_on_a_copy_is_object_exists(storage, proxy):
    # What a service or proxy that answers the condition itself says.
    storage.put(KEY_NAME, b"segment")
    proxy.inject("status", copies, status=412)
    with pytest.raises(ObjectExists):
        storage.copy(KEY_NAME, "copy")

"""AzureStorage through a loopback proxy that injects faults: transient faults are retried
by the SDK's bounded retry, lasting ones become a StorageError, a create-only write whose
answer was lost is recognised as ours, and no fault ever leaves a partial or corrupted
object that a read accepts."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azurite import ACCOUNT, KEY
from faulty_azure_proxy import COMMITS, COPIES, DOWNLOADS, UPLOADS, FaultyProxy
from pitrkit_azure.storage import BLOCK_SIZE, AzureStorage

from pitrkit.config import load
from pitrkit.hookspecs import ObjectExists, ObjectNotFound, StorageError
from pitrkit.storage.archive import Archive

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "unit"))
from segments import init_archive, long_header  # noqa: E402  (the project's synthetic WAL)

KEY_NAME = "wal/0000000100000000/000000010000000000000001"


@pytest.fixture
def proxy(emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(emulator.endpoint)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                       f"BlobEndpoint={proxy.endpoint}/{ACCOUNT};")
    yield proxy
    proxy.close()


@pytest.fixture
def storage(container, proxy) -> AzureStorage:
    return AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=5)


def test_503s_are_retried(storage, proxy):
    data = os.urandom(300_000)
    proxy.inject("status", UPLOADS, times=2, status=503)
    proxy.inject("status", DOWNLOADS, times=2, status=503)
    storage.put(KEY_NAME, data)
    assert storage.get(KEY_NAME) == data
    assert proxy.hits == ["status"] * 4


def test_a_reset_mid_upload_is_retried_and_stores_the_whole_object(storage, proxy):
    data = os.urandom(2_000_000)
    proxy.inject("reset-mid-body", UPLOADS, times=2)
    storage.put(KEY_NAME, data)
    assert proxy.hits == ["reset-mid-body"] * 2
    assert storage.get(KEY_NAME) == data


def test_an_upload_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    # The retry meets the object its first attempt stored (409): same size and MD5, ours.
    data = os.urandom(100_000)
    proxy.inject("reset-after-forward", UPLOADS)
    storage.put(KEY_NAME, data)
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get(KEY_NAME) == data


def test_a_block_upload_whose_commit_landed_but_lost_its_answer_is_a_success(storage, proxy):
    data = os.urandom(BLOCK_SIZE * 2 + 1000)  # three blocks, then Put Block List
    proxy.inject("reset-after-forward", COMMITS)
    storage.put(KEY_NAME, data)
    assert proxy.hits == ["reset-after-forward"]
    commits = [path for method, path in proxy.requests if COMMITS(method, path, {})]
    assert len(commits) == 2  # the retried commit met our own object: success
    assert storage.get(KEY_NAME) == data


def test_a_block_upload_is_create_only(storage, proxy):
    storage.put(KEY_NAME, b"the other writer's segment")
    with pytest.raises(ObjectExists):
        storage.put(KEY_NAME, os.urandom(BLOCK_SIZE + 1))
    assert storage.get(KEY_NAME) == b"the other writer's segment"
    assert any(COMMITS(method, path, {}) for method, path in proxy.requests)  # refused at the commit


def test_a_retry_that_meets_another_writers_object_is_object_exists(storage, proxy):
    storage.put(KEY_NAME, b"the other writer's segment")
    proxy.inject("status", UPLOADS, status=503)
    with pytest.raises(ObjectExists):
        storage.put(KEY_NAME, b"our different segment")
    assert storage.get(KEY_NAME) == b"the other writer's segment"


def test_lasting_resets_fail_with_a_storage_error_and_leave_no_object(container, proxy):
    storage = AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=1)
    proxy.inject("reset-mid-body", UPLOADS, times=math.inf)
    with pytest.raises(StorageError, match="storing"):
        storage.put(KEY_NAME, os.urandom(1_000_000))
    with pytest.raises(ObjectNotFound):
        storage.get(KEY_NAME)


@pytest.mark.parametrize("size", [100_000, BLOCK_SIZE + 1000], ids=["one request", "blocks"])
def test_a_corrupted_download_is_refused(storage, proxy, size):
    storage.put(KEY_NAME, os.urandom(size))
    proxy.inject("corrupt-body", DOWNLOADS, times=math.inf)
    with pytest.raises(StorageError, match="reading .* do not match its MD5"):
        storage.get(KEY_NAME)
    assert proxy.hits  # the corruption was injected, and refused


def test_latency_within_the_timeout_is_only_slower(storage, proxy):
    proxy.inject("delay", times=math.inf, delay=0.3)
    storage.put(KEY_NAME, b"slow")
    assert storage.get(KEY_NAME) == b"slow"


def test_latency_beyond_the_timeout_is_a_storage_error(container, proxy):
    storage = AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=0.5)
    proxy.inject("delay", DOWNLOADS, times=math.inf, delay=3)
    storage.put(KEY_NAME, b"x")
    with pytest.raises(StorageError, match="reading"):
        storage.get(KEY_NAME)


def test_a_range_answered_short_is_never_taken_for_the_range(storage, proxy):
    # The body and its Content-Length agree, so HTTP sees nothing wrong; Content-Range
    # still claims every byte asked for. The SDK asks again or the plugin refuses it:
    # either way no short range is returned.
    data = os.urandom(100_000)
    storage.put(KEY_NAME, data)
    proxy.inject("short-body", DOWNLOADS, times=math.inf)
    with pytest.raises(StorageError, match="reading"):
        storage.get_range(KEY_NAME, 1000, 5000)
    assert proxy.hits


# -- server-side copy: create-only through If-None-Match: * on the target ----------------


def test_a_copy_is_one_create_only_request_inside_the_account(storage, proxy):
    data = os.urandom(100_000)
    storage.put(KEY_NAME, data)
    proxy.requests.clear()
    storage.copy(KEY_NAME, "backups/B/data/0")
    assert storage.get("backups/B/data/0") == data
    assert not any(UPLOADS(method, path, {}) for method, path in proxy.requests if method == "PUT"
                   and "backups/B/data/0" not in path)


def test_a_copy_that_landed_but_lost_its_answer_is_a_success(storage, proxy):
    data = os.urandom(100_000)
    storage.put(KEY_NAME, data)
    proxy.inject("reset-after-forward", COPIES)
    storage.copy(KEY_NAME, "copy")
    assert proxy.hits == ["reset-after-forward"]
    assert storage.get("copy") == data


def test_a_retried_copy_that_meets_other_bytes_is_object_exists(storage, proxy):
    storage.put(KEY_NAME, b"our segment")
    storage.put("copy", b"another writer's")
    proxy.inject("status", COPIES, status=503)
    with pytest.raises(ObjectExists):
        storage.copy(KEY_NAME, "copy")
    assert storage.get("copy") == b"another writer's"


def test_a_412_on_a_copy_is_object_exists(storage, proxy):
    # What a service or proxy that answers the condition itself says.
    storage.put(KEY_NAME, b"segment")
    proxy.inject("status", COPIES, status=412)
    with pytest.raises(ObjectExists):
        storage.copy(KEY_NAME, "copy")


def test_wal_push_into_a_failing_store_fails_clearly(container, proxy, tmp_path):
    # The whole command: the plugin loaded by its entry point, pitrkit's retries on top of
    # the SDK's, then one `pitrkit: ...` line and a non-zero exit, with nothing stored and
    # no secret of the connection string in what is printed.
    config = tmp_path / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "az://{ACCOUNT}/{container}/archive"\ntimeout = 1\nretries = 1\n'
                      "[agent]\nenabled = false\n")
    init_archive(Archive(load(config)))
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(long_header(pageaddr=16 << 20).ljust(16 << 20, b"\0"))
    proxy.inject("status", UPLOADS, times=math.inf, status=503)
    result = subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), "wal-push", str(segment)],
                            capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and KEY not in result.stderr and "AccountKey" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("pitrkit: ") and "503" in error, result.stderr
    assert [info.key for info in AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=5).list("")] == \
        ["archive.json"]

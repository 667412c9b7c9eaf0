"""The fault suite of the plugin author's kit (docs/plugins.md, "Fault tests"): what a
storage plugin for an HTTP store must do when the network and the server misbehave,
tested through pitrkit.storage.faults.FaultyProxy. It imports pytest, so only test code
imports it.

Transient faults are retried within the timeout, lasting ones become a StorageError, a
create-only write (or copy) whose answer was lost is recognised as the plugin's own, and
no fault ever leaves a partial or corrupted object that a read accepts. A plugin's test
module subclasses `StorageFaults`, says what its API's requests look like (the class
attributes `uploads`, `downloads`, `copies` and `create_only_copy`: `Matcher`s on a
request's method, path and headers) and provides the fixtures:

* `proxy`: a FaultyProxy in front of the plugin's test server, worded as the store words
  its errors;
* `proxied_url`: the URL of a fresh archive on that server, reached through the proxy
  (with the environment the test runs in, which the commands inherit);
* `proxied` (optional): a function of a timeout (seconds) that opens the plugin's backend
  on that archive; by default the plugin manager opens `proxied_url` through the
  plugin's entry point, as pitrkit does;
* `secrets` (optional): strings of the credentials in use, which no output may show.

A backend without `get_range` or `copy` has those tests skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pitrkit.hookspecs import ObjectExists, ObjectNotFound, RangedReads, ServerSideCopy, Storage, StorageError
from pitrkit.storage.faults import FaultyProxy, Matcher, Request
from pitrkit.storage.harness import create_archive, run_pitrkit, stored_keys, write_config, write_segment
from pitrkit.storage.plugins import Plugins

KEY = "wal/0000000100000000/000000010000000000000001"


def _nothing(method: str, path: str, headers: object) -> bool:
    return False


class StorageFaults:
    """The fault tests; see the module's docstring for what a subclass provides."""

    uploads: Matcher = _nothing  # the requests that store an object's bytes (not a copy)
    downloads: Matcher = _nothing  # the requests that read an object's bytes
    copies: Matcher = _nothing  # a server-side copy's request
    create_only_copy: Matcher = _nothing  # whether a copy's request carries the create-only condition
    # What a StorageError's message says (regular expressions): for a corrupted download;
    # for a whole object answered to a ranged read that does not match the object's
    # checksum (None: the backend does not check it, and the test is skipped: ranges are
    # the caller's to verify); after "copying <source> to <target>: " for a lasting fault.
    corrupted_download: str = "reading"
    checksum_mismatch: str | None = "reading"
    lasting_fault: str = ""

    @pytest.fixture
    def proxy(self) -> FaultyProxy:
        raise NotImplementedError("provide the fixture proxy: a FaultyProxy in front of the test server")

    @pytest.fixture
    def proxied_url(self) -> str:
        raise NotImplementedError("provide the fixture proxied_url: the URL of a fresh archive, through the proxy")

    @pytest.fixture
    def proxied(self, proxied_url: str) -> Callable[[float], Storage]:
        plugins = Plugins()
        return lambda timeout: plugins.storage(proxied_url, timeout)

    @pytest.fixture
    def secrets(self) -> list[str]:
        return []

    @pytest.fixture
    def storage(self, proxied: Callable[[float], Storage]) -> Storage:
        return proxied(5)

    def _is(self, matcher: str, request: Request) -> bool:
        # Looked up on the class: a plain function there is a method of an instance.
        return bool(getattr(type(self), matcher)(*request))

    def _matcher(self, name: str) -> Matcher:
        return lambda method, path, headers: self._is(name, Request(method, path, headers))

    # The skips are raised rather than called: where pytest's types are not installed
    # (the lint environment), `pytest.skip()` does not narrow the storage's type.
    def _ranged(self, storage: Storage) -> RangedReads:
        if isinstance(storage, RangedReads):
            return storage
        raise pytest.skip.Exception(f"{type(storage).__name__} has no get_range")

    def _copying(self, storage: Storage) -> ServerSideCopy:
        if isinstance(storage, ServerSideCopy):
            return storage
        raise pytest.skip.Exception(f"{type(storage).__name__} has no copy")

    def _copying_onto(self, storage: Storage, source: bytes, target: bytes) -> ServerSideCopy:
        """`storage`, holding `source` at KEY and `target` at "copy"."""
        copying = self._copying(storage)
        storage.put(KEY, source)
        storage.put("copy", target)
        return copying

    # -- writes and reads -----------------------------------------------------------------

    def test_503s_are_retried(self, storage: Storage, proxy: FaultyProxy) -> None:
        data = os.urandom(300_000)
        proxy.inject("status", self._matcher("uploads"), times=2, status=503)
        proxy.inject("status", self._matcher("downloads"), times=2, status=503)
        storage.put(KEY, data)
        assert storage.get(KEY) == data
        assert proxy.hits == ["status"] * 4

    def test_a_reset_mid_upload_is_retried_and_stores_the_whole_object(self, storage: Storage,
                                                                        proxy: FaultyProxy) -> None:
        data = os.urandom(2_000_000)
        proxy.inject("reset-mid-body", self._matcher("uploads"), times=2)
        storage.put(KEY, data)
        assert proxy.hits == ["reset-mid-body"] * 2
        assert storage.get(KEY) == data

    def test_an_upload_that_landed_but_lost_its_answer_is_a_success(self, storage: Storage,
                                                                     proxy: FaultyProxy) -> None:
        # The retry meets the object its first attempt stored: the same bytes, ours.
        data = os.urandom(100_000)
        proxy.inject("reset-after-forward", self._matcher("uploads"))
        storage.put(KEY, data)
        assert proxy.hits == ["reset-after-forward"]
        assert storage.get(KEY) == data

    def test_a_retry_that_meets_another_writers_object_is_object_exists(self, storage: Storage,
                                                                         proxy: FaultyProxy) -> None:
        storage.put(KEY, b"the other writer's segment")
        proxy.inject("status", self._matcher("uploads"), status=503)
        with pytest.raises(ObjectExists):
            storage.put(KEY, b"our different segment")
        assert storage.get(KEY) == b"the other writer's segment"

    def test_lasting_resets_fail_with_a_storage_error_and_leave_no_object(
            self, proxied: Callable[[float], Storage], proxy: FaultyProxy) -> None:
        storage = proxied(1)
        proxy.inject("reset-mid-body", self._matcher("uploads"), times=math.inf)
        with pytest.raises(StorageError, match="storing"):
            storage.put(KEY, os.urandom(1_000_000))
        with pytest.raises(ObjectNotFound):
            storage.get(KEY)

    def test_a_corrupted_download_is_refused(self, storage: Storage, proxy: FaultyProxy) -> None:
        storage.put(KEY, os.urandom(100_000))
        proxy.inject("corrupt-body", self._matcher("downloads"), times=math.inf)
        with pytest.raises(StorageError, match=self.corrupted_download):
            storage.get(KEY)
        assert proxy.hits  # the corruption was injected, and refused

    def test_latency_within_the_timeout_is_only_slower(self, storage: Storage, proxy: FaultyProxy) -> None:
        proxy.inject("delay", times=math.inf, delay=0.3)
        storage.put(KEY, b"slow")
        assert storage.get(KEY) == b"slow"

    def test_latency_beyond_the_timeout_is_a_storage_error(self, proxied: Callable[[float], Storage],
                                                           proxy: FaultyProxy) -> None:
        storage = proxied(0.5)
        proxy.inject("delay", self._matcher("downloads"), times=math.inf, delay=3)
        storage.put(KEY, b"x")
        with pytest.raises(StorageError, match="reading"):
            storage.get(KEY)

    # -- ranged reads: no checksum covers part of an object, so the answer's shape is checked

    def test_a_ranged_read_asks_for_the_range_and_is_retried(self, storage: Storage, proxy: FaultyProxy) -> None:
        ranged = self._ranged(storage)
        data = os.urandom(300_000)
        storage.put(KEY, data)
        proxy.inject("status", self._matcher("downloads"), times=2, status=503)
        assert ranged.get_range(KEY, 1000, 5000) == data[1000:6000]
        assert proxy.hits == ["status"] * 2

    def test_a_ranged_read_answered_with_the_whole_object_is_sliced(self, storage: Storage,
                                                                     proxy: FaultyProxy) -> None:
        # A server or proxy that ignores the Range header answers 200 and the whole object.
        ranged = self._ranged(storage)
        data = os.urandom(300_000)
        storage.put(KEY, data)
        proxy.inject("ignore-range", self._matcher("downloads"), times=math.inf)
        for offset, length in [(1000, 5000), (299_990, 100), (0, 300_000)]:
            assert ranged.get_range(KEY, offset, length) == data[offset:offset + length]
        assert proxy.hits == ["ignore-range"] * 3

    def test_a_whole_object_answer_that_does_not_match_its_checksum_is_refused(self, storage: Storage,
                                                                                proxy: FaultyProxy) -> None:
        ranged = self._ranged(storage)
        if self.checksum_mismatch is None:
            pytest.skip(f"{type(storage).__name__} does not check a whole object answered to a ranged read")
        storage.put(KEY, os.urandom(100_000))
        proxy.inject("ignore-range-corrupt-body", self._matcher("downloads"), times=math.inf)
        with pytest.raises(StorageError, match=self.checksum_mismatch):
            ranged.get_range(KEY, 10, 20)

    def test_a_range_answered_short_is_refused(self, storage: Storage, proxy: FaultyProxy) -> None:
        # The body and its Content-Length agree, so HTTP sees nothing wrong; Content-Range
        # still claims every byte asked for.
        ranged = self._ranged(storage)
        storage.put(KEY, os.urandom(100_000))
        proxy.inject("short-body", self._matcher("downloads"))
        with pytest.raises(StorageError, match=r"reading .* answered 4999 bytes as bytes 1000 to 6000 of 100000"):
            ranged.get_range(KEY, 1000, 5000)

    def test_latency_beyond_the_timeout_is_a_storage_error_for_a_range_too(
            self, proxied: Callable[[float], Storage], proxy: FaultyProxy) -> None:
        storage = proxied(0.5)
        ranged = self._ranged(storage)
        storage.put(KEY, b"0123456789")
        proxy.inject("delay", self._matcher("downloads"), times=math.inf, delay=3)
        with pytest.raises(StorageError, match="reading"):
            ranged.get_range(KEY, 2, 3)

    # -- server-side copy: create-only, as a put ------------------------------------------

    def test_a_copy_is_one_create_only_request_inside_the_store(self, storage: Storage, proxy: FaultyProxy) -> None:
        copying = self._copying(storage)
        data = os.urandom(100_000)
        storage.put(KEY, data)
        proxy.requests.clear()
        copying.copy(KEY, "backups/B/data/0")
        assert storage.get("backups/B/data/0") == data
        copies = [request for request in proxy.requests if self._is("copies", request)]
        assert len(copies) == 1 and self._is("create_only_copy", copies[0]), copies
        assert not any(self._is("uploads", request) for request in proxy.requests)  # the bytes never came here

    def test_a_copy_refused_by_its_precondition_is_object_exists(self, storage: Storage,
                                                                 proxy: FaultyProxy) -> None:
        # What the store answers for a target that exists, even one that holds the same
        # bytes: as for put.
        copying = self._copying_onto(storage, b"segment", b"segment")
        proxy.inject("status", self._matcher("copies"), status=412)
        with pytest.raises(ObjectExists):
            copying.copy(KEY, "copy")

    def test_a_copy_that_landed_but_lost_its_answer_is_a_success(self, storage: Storage,
                                                                 proxy: FaultyProxy) -> None:
        # The first attempt copied, its answer was lost; the retry meets that copy (412,
        # injected: not every emulator enforces the condition on a copy): the same bytes
        # as the source's, ours.
        copying = self._copying(storage)
        data = os.urandom(100_000)
        storage.put(KEY, data)
        proxy.inject("reset-after-forward", self._matcher("copies"))
        proxy.inject("status", self._matcher("copies"), status=412)
        copying.copy(KEY, "copy")
        assert proxy.hits == ["reset-after-forward", "status"]
        assert storage.get("copy") == data

    def test_a_retried_copy_that_meets_other_bytes_is_object_exists(self, storage: Storage,
                                                                    proxy: FaultyProxy) -> None:
        copying = self._copying_onto(storage, b"our segment", b"another writer's")
        proxy.inject("status", self._matcher("copies"), status=503)
        proxy.inject("status", self._matcher("copies"), status=412)
        with pytest.raises(ObjectExists):
            copying.copy(KEY, "copy")
        assert proxy.hits == ["status", "status"]
        assert storage.get("copy") == b"another writer's"

    def test_lasting_faults_fail_a_copy_with_a_storage_error(self, proxied: Callable[[float], Storage],
                                                             proxy: FaultyProxy) -> None:
        storage = proxied(1)
        copying = self._copying(storage)
        storage.put(KEY, b"x")
        proxy.inject("status", self._matcher("copies"), times=math.inf, status=503)
        with pytest.raises(StorageError, match=f"copying {KEY} to copy: {self.lasting_fault}"):
            copying.copy(KEY, "copy")
        with pytest.raises(ObjectNotFound):
            storage.get("copy")

    # -- the whole command ------------------------------------------------------------------

    def test_wal_push_into_a_failing_store_fails_clearly(self, proxied_url: str, proxy: FaultyProxy,
                                                         secrets: list[str], tmp_path: Path) -> None:
        # The plugin loaded by its entry point, pitrkit's retries on top of the plugin's,
        # then one `pitrkit: ...` line and a non-zero exit, with nothing stored and no
        # credential in the output.
        config = write_config(tmp_path / "pitrkit.toml", proxied_url, timeout=1, retries=1)
        create_archive(config)
        segment = write_segment(tmp_path)
        proxy.inject("status", self._matcher("uploads"), times=math.inf, status=503)
        result = run_pitrkit(config, "wal-push", str(segment))
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("pitrkit: ") and "503" in error, result.stderr
        for secret in secrets:
            assert secret not in result.stderr + result.stdout
        assert stored_keys(proxied_url) == ["archive.json"]

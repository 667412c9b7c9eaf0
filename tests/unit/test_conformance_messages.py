"""The conformance suite tells a plugin author what is wrong: a backend that breaks one
rule on purpose fails the tests of that rule with a message naming the call, what was
expected and what came back, without pytest's assertion rewriting (the suite is an
installed module) and without a traceback to read.

The backend is a small, real in-memory store, run through the suite by pytest itself
(pytester), once per broken rule.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

BACKEND = '''
import threading
import time

import pytest

from pitrkit.hookspecs import Folder, ObjectExists, ObjectInfo, ObjectNotFound
from pitrkit.storage.conformance import StorageConformance

BROKEN = {broken!r}


class MemoryStorage:
    def __init__(self):
        self.url = "memory://test"
        self.objects = {{}}
        self.lock = threading.Lock()

    def put(self, key, data, *, overwrite=False):
        with self.lock:
            if key in self.objects and not overwrite and BROKEN != "overwriting put":
                raise ObjectExists(key)
            if overwrite and BROKEN == "torn overwrite":  # written in place: readers see half of it a while
                self.objects[key] = bytes(data[:len(data) // 2])
                time.sleep(0.005)
            self.objects[key] = bytes(data)

    def get(self, key):
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    def stat(self, key):
        return ObjectInfo(key, len(self.get(key)))

    def list(self, prefix=""):
        keys = [key for key in self.objects if key.startswith(prefix)]
        if BROKEN != "unordered list":
            keys.sort(key=str.encode)
        return iter([ObjectInfo(key, len(self.objects[key])) for key in keys])

    def list_folder(self, prefix):
        objects, folders = [], []
        for info in self.list(prefix):
            name = info.key[len(prefix):]
            if "/" not in name:
                objects.append(info)
            elif prefix + name.partition("/")[0] + "/" not in folders:
                folders.append(prefix + name.partition("/")[0] + "/")
        return Folder(objects, folders)

    if BROKEN != "missing delete":
        def delete(self, key):
            self.objects.pop(key, None)


class TestMemory(StorageConformance):
    @pytest.fixture
    def storage(self):
        return MemoryStorage()
'''


def run_suite(pytester: pytest.Pytester, broken: str, tests: str) -> str:
    pytester.makepyfile(test_memory=BACKEND.format(broken=broken))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "--tb=line", "-k", tests)
    return result.stdout.str()


def test_an_overwriting_put_is_named(pytester):
    output = run_suite(pytester, "overwriting put", "test_put_is_create_only")
    assert ("AssertionError: put('doc', b'second') over an existing key (create-only): expected ObjectExists, but "
            "it returned without one") in output
    assert "1 failed" in output


def test_an_unordered_list_is_named(pytester):
    output = run_suite(pytester, "unordered list", "test_list_order_is_utf8_byte_order")
    assert ("AssertionError: list('') order (UTF-8 bytes of the key: 'A' < 'B' < 'a-b' < 'a.b' < 'a/b' < 'a0'): "
            "expected ['0', 'A', 'B', 'Z/z', '_x', 'a-b', 'a.b', 'a/b', 'a0', 'aB', 'a_b', 'ab', 'x.1a2b3c.tmp', "
            "'x.tmp'], got ['x.1a2b3c.tmp', 'x.tmp', '0', '_x', 'Z/z', 'B'") in output


def test_a_torn_overwrite_is_named(pytester):
    output = run_suite(pytester, "torn overwrite", "test_reads_during_overwrites_see_whole_objects")
    assert ("AssertionError: get('doc') while it is overwritten must return one version whole, got 10" in output
            and "(a torn or partial object)" in output), output


def test_a_missing_method_is_named(pytester):
    output = run_suite(pytester, "missing delete", "test_the_backend_has_every_required_method or test_delete")
    assert ("AssertionError: members of pitrkit.hookspecs.Storage that MemoryStorage lacks: expected [], got "
            "['delete']") in output
    assert "AttributeError: 'MemoryStorage' object has no attribute 'delete'" in output


def test_the_rules_pass_when_kept(pytester):
    output = run_suite(pytester, "", "not hook and not unreachable and not durab")
    assert " failed" not in output and " passed" in output

"""Fixtures for the GCS plugin's tests: the emulator, a fresh bucket per test, the
emulator's address in the environment the SDK reads it from, and, for the end-to-end
tests (tests/plugin_end_to_end.py), the project's PostgreSQL fixtures (tests/conftest.py)
with a pitrkit install that has this plugin too."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PLUGIN_ROOT.parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fake_gcs`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from fake_gcs import FakeGcs  # noqa: E402

from tests import conftest as project  # noqa: E402
from tests import plugin_end_to_end as end_to_end  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)

# The project's PostgreSQL fixtures (and the hook that runs `pg_major` tests once per
# major), re-used under their own names.
cluster, harness_tmp, server_tmp = project.cluster, project.harness_tmp, project.server_tmp
pg_major, pg_install = project.pg_major, project.pg_install
pytest_generate_tests = project.pytest_generate_tests


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGcs]:
    server = FakeGcs.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulator(fake_gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch) -> FakeGcs:
    """The emulator, named in STORAGE_EMULATOR_HOST for this test only."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.endpoint)
    return fake_gcs


@pytest.fixture
def bucket(emulator: FakeGcs) -> str:
    name = f"pitrkit-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def gcs_runnable_install(harness_tmp: Path) -> pgharness.RunnableInstall:
    return end_to_end.runnable_install(harness_tmp, PLUGIN_ROOT)


@pytest.fixture
def plugin_setup(gcs_runnable_install, server_tmp: Path, bucket: str, emulator):
    # STORAGE_EMULATOR_HOST for every pitrkit the test and PostgreSQL run.
    with end_to_end.plugin_setup(gcs_runnable_install, server_tmp, f"gs://{bucket}/pitrkit/main",
                                 {"STORAGE_EMULATOR_HOST": emulator.endpoint}) as setup:
        yield setup

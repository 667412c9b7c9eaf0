"""Fixtures for the GCS plugin's tests: the emulator, a fresh bucket per test, the
emulator's address in the environment the SDK reads it from, and, for the end-to-end
tests, the project's PostgreSQL fixtures (tests/conftest.py) with a pitrkit install that
has this plugin too."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PLUGIN_ROOT.parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fake_gcs`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from fake_gcs import FakeGcs  # noqa: E402

from tests import conftest as project  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)
from pitrkit_setup import PitrkitSetup  # noqa: E402

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
    """pitrkit and this plugin, installed where the server user can run them."""
    return pgharness.RunnableInstall.create(PROJECT_ROOT, harness_tmp / "pitrkit-gcs",
                                            extra_packages=[PLUGIN_ROOT])


@dataclass
class GcsSetup(PitrkitSetup):
    bucket: str = ""
    emulator: str = ""  # STORAGE_EMULATOR_HOST for every pitrkit the test and PostgreSQL run

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/pitrkit/main"

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "STORAGE_EMULATOR_HOST": self.emulator}


@pytest.fixture
def gcs_setup(gcs_runnable_install, server_tmp: Path, bucket: str, emulator):
    setup = GcsSetup(pitrkit=gcs_runnable_install.pitrkit, archive=server_tmp / "unused",
                     config=server_tmp / "pitrkit.toml",
                     runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                     bucket=bucket, emulator=emulator.endpoint)
    setup.write_config()
    yield setup
    setup.stop_agents()

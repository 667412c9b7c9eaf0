"""Fixtures for the S3 plugin's tests: moto's server, a fresh bucket per test, test
credentials in the environment botocore reads them from, and, for the end-to-end tests,
the project's PostgreSQL fixtures (tests/conftest.py) with a pitrkit install that has
this plugin too. The endpoint travels in the URL (`?endpoint=...&path_style=true`), as a
MinIO user's would."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PLUGIN_ROOT.parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import moto_server`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from moto_server import CREDENTIALS, MotoServer, s3_url  # noqa: E402

from tests import conftest as project  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)
from pitrkit_setup import PitrkitSetup  # noqa: E402

cluster, harness_tmp, server_tmp = project.cluster, project.harness_tmp, project.server_tmp
pg_major, pg_install = project.pg_major, project.pg_install
pytest_generate_tests = project.pytest_generate_tests


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials in the environment (botocore's chain looks there first), and no
    shared config file of the host's to get in the way."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(moto: MotoServer, credentials) -> str:
    name = f"pitrkit-{uuid.uuid4().hex[:12]}"
    moto.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def s3_runnable_install(harness_tmp: Path) -> pgharness.RunnableInstall:
    """pitrkit and this plugin, installed where the server user can run them."""
    return pgharness.RunnableInstall.create(PROJECT_ROOT, harness_tmp / "pitrkit-s3",
                                            extra_packages=[PLUGIN_ROOT])


@dataclass
class S3Setup(PitrkitSetup):
    bucket: str = ""
    endpoint: str = ""

    @property
    def url(self) -> str:
        return s3_url(self.bucket, "pitrkit/main", self.endpoint)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **CREDENTIALS, "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3_setup(s3_runnable_install, server_tmp: Path, bucket: str, moto: MotoServer):
    setup = S3Setup(pitrkit=s3_runnable_install.pitrkit, archive=server_tmp / "unused",
                    config=server_tmp / "pitrkit.toml",
                    runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                    bucket=bucket, endpoint=moto.endpoint)
    setup.write_config()
    yield setup
    setup.stop_agents()

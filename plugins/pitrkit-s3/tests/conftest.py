"""Fixtures for the S3 plugin's tests: moto's server, a fresh bucket per test, test
credentials in the environment botocore reads them from, and, for the end-to-end tests,
the project's PostgreSQL fixtures (tests/conftest.py, tests/plugin_end_to_end.py) with a pitrkit install that has
this plugin too. The endpoint travels in the URL (`?endpoint=...&path_style=true`), as a
MinIO user's would."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PLUGIN_ROOT.parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import moto_server`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from moto_server import CREDENTIALS, MotoServer, s3_url  # noqa: E402

from tests import conftest as project  # noqa: E402
from tests import plugin_end_to_end as end_to_end  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)

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
    return end_to_end.runnable_install(harness_tmp, PLUGIN_ROOT)


@pytest.fixture
def plugin_setup(s3_runnable_install, server_tmp: Path, bucket: str, moto: MotoServer):
    with end_to_end.plugin_setup(s3_runnable_install, server_tmp, s3_url(bucket, "pitrkit/main", moto.endpoint),
                                 {**CREDENTIALS, "AWS_CONFIG_FILE": "/nonexistent",
                                  "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                                  "AWS_EC2_METADATA_DISABLED": "true"}) as setup:
        yield setup

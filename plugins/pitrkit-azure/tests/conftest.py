"""Fixtures for the Azure plugin's tests: Azurite, a fresh container per test, Azurite's
connection string in the environment the plugin reads it from, and, for the end-to-end
tests, the project's PostgreSQL fixtures (tests/conftest.py, tests/plugin_end_to_end.py) with a pitrkit install that
has this plugin too."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = PLUGIN_ROOT.parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import azurite`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from azurite import ACCOUNT, Azurite  # noqa: E402

from tests import conftest as project  # noqa: E402
from tests import plugin_end_to_end as end_to_end  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)

# The project's PostgreSQL fixtures (and the hook that runs `pg_major` tests once per
# major), re-used under their own names.
cluster, harness_tmp, server_tmp = project.cluster, project.harness_tmp, project.server_tmp
pg_major, pg_install = project.pg_major, project.pg_install
pytest_generate_tests = project.pytest_generate_tests

CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def emulator(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Azurite, its connection string in AZURE_STORAGE_CONNECTION_STRING for this test only."""
    monkeypatch.delenv("PITRKIT_AZURE_CONNECTION_STRING_FILE", raising=False)
    monkeypatch.setenv(CONNECTION_STRING, azurite.connection_string)
    return azurite


def create_container(connection_string: str) -> str:
    from azure.storage.blob import BlobServiceClient

    name = f"pitrkit-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(connection_string).create_container(name)
    return name


@pytest.fixture
def container(emulator: Azurite) -> str:
    return create_container(emulator.connection_string)


@pytest.fixture(scope="session")
def azure_runnable_install(harness_tmp: Path) -> pgharness.RunnableInstall:
    return end_to_end.runnable_install(harness_tmp, PLUGIN_ROOT)


@pytest.fixture
def plugin_setup(azure_runnable_install, server_tmp: Path, container: str, emulator: Azurite):
    # The connection string in a file only the server user reads, as a DBA keeps it,
    # named by PITRKIT_AZURE_CONNECTION_STRING_FILE for every pitrkit the test runs.
    secret = server_tmp / "azure.connection"
    secret.write_text(emulator.connection_string)
    secret.chmod(0o600)
    pgharness.give_to_server_user(secret)
    with end_to_end.plugin_setup(azure_runnable_install, server_tmp, f"az://{ACCOUNT}/{container}/pitrkit/main",
                                 {"PITRKIT_AZURE_CONNECTION_STRING_FILE": str(secret)}) as setup:
        yield setup

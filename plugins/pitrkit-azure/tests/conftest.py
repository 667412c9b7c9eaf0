"""Fixtures for the Azure plugin's tests: Azurite, a fresh container per test, Azurite's
connection string in the environment the plugin reads it from, and, for the end-to-end
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
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import azurite`
sys.path.insert(0, str(PROJECT_ROOT))  # so the project's fixtures can be reused
from azurite import ACCOUNT, Azurite  # noqa: E402

from tests import conftest as project  # noqa: E402

import pgharness  # noqa: E402  (on sys.path once tests.conftest is imported)
from pitrkit_setup import PitrkitSetup  # noqa: E402

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
    """pitrkit and this plugin, installed where the server user can run them."""
    return pgharness.RunnableInstall.create(PROJECT_ROOT, harness_tmp / "pitrkit-azure",
                                            extra_packages=[PLUGIN_ROOT])


@dataclass
class AzureSetup(PitrkitSetup):
    container: str = ""
    connection_string_file: str = ""  # PITRKIT_AZURE_CONNECTION_STRING_FILE for every pitrkit run

    @property
    def url(self) -> str:
        return f"az://{ACCOUNT}/{self.container}/pitrkit/main"

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "PITRKIT_AZURE_CONNECTION_STRING_FILE": self.connection_string_file}


@pytest.fixture
def azure_setup(azure_runnable_install, server_tmp: Path, container: str, emulator: Azurite):
    # The connection string in a file only the server user reads, as a DBA keeps it.
    secret = server_tmp / "azure.connection"
    secret.write_text(emulator.connection_string)
    secret.chmod(0o600)
    pgharness.give_to_server_user(secret)
    setup = AzureSetup(pitrkit=azure_runnable_install.pitrkit, archive=server_tmp / "unused",
                       config=server_tmp / "pitrkit.toml",
                       runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700),
                       container=container, connection_string_file=str(secret))
    setup.write_config()
    yield setup
    setup.stop_agents()

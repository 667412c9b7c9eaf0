"""Fixtures for the GCS plugin's tests: the emulator, a fresh bucket per test, and the
emulator's address in the environment the SDK reads it from."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fake_gcs`
from fake_gcs import FakeGcs  # noqa: E402


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

import pytest
from pitrkit_sqlite import SqliteStorage

from pitrkit.storage.conformance import StorageConformance


class TestSqliteStorage(StorageConformance):
    @pytest.fixture
    def storage(self, tmp_path):
        (tmp_path / "archive.db").touch()
        return SqliteStorage(f"sqlite://{tmp_path}/archive.db", timeout=5)

    @pytest.fixture
    def unreachable_storage(self, tmp_path):
        return SqliteStorage(f"sqlite://{tmp_path}/missing.db", timeout=5)

    @pytest.fixture
    def malformed_url(self):
        return "sqlite://host/archive.db"  # a host: the hook must refuse it

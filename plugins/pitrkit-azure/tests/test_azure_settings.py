"""Where the plugin finds its connection string, and that no part of it ever reaches a
message: an error names where the string came from, never what it says."""

from __future__ import annotations

import pytest
from azurite import ACCOUNT, KEY
from pitrkit_azure.storage import AzureStorage

from pitrkit.hookspecs import StorageError


@pytest.fixture
def file_only(emulator, tmp_path, monkeypatch):
    """The connection string in a file named by PITRKIT_AZURE_CONNECTION_STRING_FILE, and
    none in the environment."""
    path = tmp_path / "azure.connection"
    path.write_text(emulator.connection_string + "\n")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("PITRKIT_AZURE_CONNECTION_STRING_FILE", str(path))
    return path


def test_a_connection_string_file_is_read(file_only, container):
    storage = AzureStorage(f"az://{ACCOUNT}/{container}/archive", timeout=5)
    storage.put("archive.json", b"{}")
    assert [info.key for info in storage.list("")] == ["archive.json"]


def test_an_unreadable_file_is_named(file_only):
    file_only.unlink()
    with pytest.raises(ValueError, match=f"cannot read the connection string file {file_only}"):
        AzureStorage(f"az://{ACCOUNT}/container/archive", timeout=5)


@pytest.mark.parametrize("text", [f"AccountName=someoneelse;AccountKey={KEY}", f"AccountKey={KEY};Nonsense"])
def test_a_wrong_connection_string_is_refused_without_showing_it(file_only, text):
    file_only.write_text(text)
    with pytest.raises(ValueError) as refused:
        AzureStorage(f"az://{ACCOUNT}/container/archive", timeout=5)
    assert str(file_only) in str(refused.value)
    assert KEY not in str(refused.value) and KEY[:20] not in str(refused.value)


def test_without_a_connection_string_the_identity_chain_is_asked_and_its_failure_is_one_line(monkeypatch, capfd):
    # No connection string and no identity here (a managed identity's endpoint does not
    # answer on this machine): one StorageError line, and nothing of the SDK's own
    # many-line warnings on stderr.
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "PITRKIT_AZURE_CONNECTION_STRING_FILE", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    storage = AzureStorage("az://pitrkitnosuchaccount/container/archive", timeout=2)
    with pytest.raises(StorageError) as failed:
        storage.get("archive.json")
    assert "\n" not in str(failed.value) and str(failed.value).startswith("az://pitrkitnosuchaccount/container/archive:")
    assert capfd.readouterr().err == ""

"""What importing the plugin costs: the `az` entry point's module imports nothing of the
SDK, and the storage module nothing of azure-identity (msal, cryptography), which only an
archive opened without a connection string needs."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    shown = subprocess.run([sys.executable, "-c", f"{statement}; import sys; print('\\n'.join(sys.modules))"],
                           capture_output=True, text=True, check=True, timeout=60)
    return set(shown.stdout.split())


def test_the_entry_point_imports_no_sdk():
    loaded = _modules_after("import pitrkit_azure")
    assert not {name for name in loaded if name == "azure" or name.startswith(("azure.", "requests"))}


def test_the_storage_module_imports_no_identity_library():
    loaded = _modules_after("import pitrkit_azure.storage")
    assert "azure.storage.blob" in loaded
    assert not {name for name in loaded if name.startswith(("azure.identity", "msal"))}


def test_a_connection_string_opens_an_archive_without_the_identity_library(emulator):
    loaded = _modules_after("from pitrkit_azure.storage import AzureStorage; "
                            "AzureStorage('az://devstoreaccount1/somewhere/archive', timeout=5)")
    assert not {name for name in loaded if name.startswith(("azure.identity", "msal"))}

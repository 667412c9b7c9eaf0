"""pitrkit storage plugin for Azure Blob Storage: `repository.url = "az://account/container/prefix"`.

This module is what the `az` entry point loads, and it stays cheap to import: the Azure
SDK (azure-storage-blob, azure-core, requests; see docs/plugins.md for the figures) is
loaded only when an `az://` archive is actually opened, by `pitrkit_azure.storage`. The
agent opens it once and keeps it; see docs/plugins.md.
"""

from __future__ import annotations

from pitrkit.hookspecs import Storage, hookimpl


@hookimpl
def pitrkit_storage(url: str, timeout: float) -> Storage | None:
    if not url.startswith("az://"):
        return None  # not ours
    # Only when an az:// archive is opened: the SDK is most of this plugin's import time.
    from pitrkit_azure.storage import AzureStorage

    return AzureStorage(url, timeout)

"""pitrkit storage plugin for Google Cloud Storage: `repository.url = "gs://bucket/prefix"`.

This module is what the `gs` entry point loads, and it stays cheap to import: the Google
SDK (about 0.2 s of imports; see benchmarks/README.md) is loaded only when a `gs://` archive is actually opened,
by `pitrkit_gcs.storage`. The agent opens it once and keeps it; see docs/plugins.md.
"""

from __future__ import annotations

from pitrkit.hookspecs import Storage, hookimpl


@hookimpl
def pitrkit_storage(url: str, timeout: float) -> Storage | None:
    if not url.startswith("gs://"):
        return None  # not ours
    from pitrkit_gcs.storage import GcsStorage

    return GcsStorage(url, timeout)

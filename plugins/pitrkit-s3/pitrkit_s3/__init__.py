"""pitrkit storage plugin for Amazon S3 and S3-compatible stores: `repository.url = "s3://bucket/prefix"`.

This module is what the `s3` entry point loads, and it stays cheap to import: botocore
(see docs/plugins.md for its import cost) is loaded only when an `s3://` archive is
actually opened, by `pitrkit_s3.storage`. The agent opens it once and keeps it.
"""

from __future__ import annotations

from pitrkit.hookspecs import Storage, hookimpl


@hookimpl
def pitrkit_storage(url: str, timeout: float) -> Storage | None:
    if not url.startswith("s3://"):
        return None  # not ours
    from pitrkit_s3.storage import S3Storage

    return S3Storage(url, timeout)

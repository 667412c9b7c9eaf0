"""The storage conformance suite's first import path, kept for plugins written against it:
`from pitrkit.storage_conformance import StorageConformance` goes on working. The suite
itself lives in pitrkit/storage/conformance.py."""

from pitrkit.storage.conformance import StorageConformance

__all__ = ["StorageConformance"]

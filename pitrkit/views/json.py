"""Reports as JSON: what `--json` prints, and the daemon's /status.json.

Both go through the stored documents' encoder (storage/codec.py), so that LSNs, times
and every other value are written exactly as in the stored documents.
"""

from __future__ import annotations

import msgspec

from pitrkit.ops.daemon_facts import DaemonFacts
from pitrkit.ops.status import StatusReport
from pitrkit.storage import codec


class StatusDocument(msgspec.Struct, kw_only=True, frozen=True):
    """`/status.json`: what `pitrkit status --json` prints, beside the daemon's facts."""

    status: StatusReport
    daemon: DaemonFacts


def render(report: msgspec.Struct) -> str:
    """What `--json` prints: the report indented, ending in a newline."""
    return codec.encode(report).decode()


def status_document(report: StatusReport, daemon: DaemonFacts) -> str:
    """`/status.json`: the report and the daemon's facts on one line."""
    document = StatusDocument(status=report, daemon=daemon)
    return msgspec.json.encode(codec.to_builtins(document)).decode() + "\n"

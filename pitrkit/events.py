"""Events of the long-running commands (`wal-receive`, `daemon`): one logfmt line per
event on stderr, `time=... level=info event=archived file=... detail="..."`, for
journald and log shippers. The daemon's children write to the same stderr, so the
sidecar's events and the daemon's share one stream and one format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


def emit(log: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log event `name` with its fields (None fields are left out)."""
    log.log(level, name, extra={"fields": fields})


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info event=archived file=... detail="..."`: one line per event,
    for journald and log shippers. Records from elsewhere in pitrkit (storage retries)
    become `event=message`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
        }
        if fields is None:
            line.update(event="message", logger=record.name, message=record.getMessage())
        else:
            line.update(event=record.getMessage(), **fields)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_logfmt(value)}" for key, value in line.items() if value is not None)


def _logfmt(value: object) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    # Quoted (JSON escapes every control character, and with ensure_ascii every non-ASCII
    # one) whenever the text is not plain: a value relayed from a child or a client must
    # not end the line, rewrite it on a terminal (\r, escape sequences) or look like
    # more fields.
    if not text or not text.isprintable() or any(c in text for c in ' "=\\'):
        return json.dumps(text)
    return text


def log_to_stderr(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("pitrkit")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False

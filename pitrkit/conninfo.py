"""`[postgres] conninfo`, parsed before pitrkit connects with it.

libpq's parse errors quote the text they could not read, and in a connection string that
text can be a password: `password=s3cr3t h1dden` fails with `missing "=" after "h1dden"`,
`postgresql://dba:s3cr3t%zz@db/` with `invalid percent-encoded token: "s3cr3t%zz"`. So
every command that connects parses the string here first, and a bad one is reported
without libpq's words: no error, log line, status page or metric may carry a piece of a
password (docs/architecture.md, guarantee 9).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pitrkit.errors import ConfigError


def conninfo_parameters(conninfo: str | None) -> dict[str, Any]:
    """The connection string's parameters; None or "" is libpq's defaults (PGHOST,
    PGPORT, the default socket ...), as for psql."""
    try:
        return conninfo_to_dict(conninfo or "")
    except psycopg.Error:
        raise ConfigError("[postgres] conninfo is not a valid connection string (libpq's message is not shown: "
                          "it may quote a password)") from None

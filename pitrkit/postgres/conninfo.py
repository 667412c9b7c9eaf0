"""`[postgres] conninfo`, parsed before pitrkit connects with it.

libpq's parse errors quote the text they could not read, and in a connection string that
text can be a password: `password=s3cr3t h1dden` fails with `missing "=" after "h1dden"`,
`postgresql://dba:s3cr3t%zz@db/` with `invalid percent-encoded token: "s3cr3t%zz"`. So
every command that connects parses the string here first, and a bad one is reported
without libpq's words: no error, log line, status page or metric may carry a piece of a
password (docs/architecture.md, guarantee 9).

A connection that fails is reported in one line, and where libpq's words do not say what
to do, in words that do: peer authentication (Debian's default for the unix socket) lets
a role in only from the OS user of the same name, and "Peer authentication failed" does
not tell a DBA who ran backup-push as root to run it as the postgres OS user.
"""

from __future__ import annotations

import os
import pwd
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pitrkit.errors import ConfigError

_PEER_FAILED = re.compile(r'Peer authentication failed for user "(?P<role>[^"]*)"')


def conninfo_parameters(conninfo: str | None, setting: str = "[postgres] conninfo") -> dict[str, Any]:
    """The connection string's parameters; None or "" is libpq's defaults (PGHOST,
    PGPORT, the default socket ...), as for psql. `setting` names it in the error."""
    try:
        return conninfo_to_dict(conninfo or "")
    except psycopg.Error:
        raise ConfigError(f"{setting} is not a valid connection string (libpq's message is not shown: "
                          "it may quote a password)") from None


# The parameters whose values are secrets: a password, and the passphrase of the client's key.
SECRET_PARAMETERS = ("password", "sslpassword")


def without_secrets(conninfo: str) -> tuple[str, list[str]] | None:
    """`conninfo` rebuilt without its secret parameters, and the names of those removed
    (none: `conninfo` unchanged); None when libpq cannot parse it, so that the caller
    can drop it whole (where the secret is in it cannot be told)."""
    try:
        parameters = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return None
    removed = [name for name in SECRET_PARAMETERS if name in parameters]
    if not removed:
        return conninfo, []
    kept = {name: value for name, value in parameters.items() if name not in SECRET_PARAMETERS}
    return make_conninfo("", **kept), removed


def connection_failure(message: str) -> str:
    """libpq's (or pg_receivewal's) message for a failed connection, in one line; a
    peer authentication failure rephrased as what to do. The message names the socket and
    the role, never a password: libpq does not repeat one in these errors."""
    said = " ".join(message.split())
    peer = _PEER_FAILED.search(said)
    if peer is None:
        return said
    role = peer["role"]
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    return (f"the server uses peer authentication for role \"{role}\" on this socket: it lets in only the OS "
            f"user \"{role}\", and this runs as \"{user}\"; run as the {role} OS user (sudo -u {role} pitrkit ...), "
            f"or set [postgres] conninfo to a role and a method this user may use (libpq: {said})")

"""PostgreSQL's configuration files as the server reads them: `name = value` lines
(postgresql.conf and its includes, with the guc-file lexer's quoting), include lines of
postgresql.conf and, on PostgreSQL 16+, of pg_hba.conf and pg_ident.conf, and the files an
include_dir reads. backup-push follows them to capture a configuration kept outside the
data directory (backup/config_capture.py); restore rewrites them (restore/server_config.py).
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import NamedTuple

# PostgreSQL's CONF_FILE_MAX_DEPTH: deeper nesting is an error for the server too.
MAX_DEPTH = 10

# One `name [=] value [# comment]` line, as the server's guc-file lexer reads it.
_SETTING = re.compile(r"""\s*(?P<name>[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*)\s*=?\s*
                          (?P<value>'(?:[^'\\\n]|''|\\.)*'|[^\s#']+)\s*(?:\#.*)?$""", re.VERBOSE)
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class Setting(NamedTuple):
    name: str  # lower case
    value: str  # unquoted


def parse_setting(line: str) -> Setting | None:
    match = _SETTING.match(line)
    if match is None:
        return None
    value = match["value"]
    if value.startswith("'"):
        value = re.sub(r"''|\\([0-7]{1,3}|.)", _unescape, value[1:-1])
    return Setting(match["name"].lower(), value)


def _unescape(match: re.Match[str]) -> str:
    if match[0] == "''":
        return "'"
    escaped = match[1]
    if escaped[0] in "01234567":
        return chr(int(escaped, 8))
    return _ESCAPES.get(escaped, escaped)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal, quoted as ALTER SYSTEM writes one: the parser
    reads backslash escapes inside quotes, so backslashes are doubled along with quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# pg_hba.conf / pg_ident.conf include lines (PostgreSQL 16+): keyword, then one token.
_HBA_INCLUDE = re.compile(r'\s*(?P<kind>include|include_if_exists|include_dir)\s+(?P<path>"(?:[^"]|"")*"|[^\s#]+)'
                          r"\s*(?:#.*)?$")


def _hba_include(line: str) -> tuple[str, str] | None:
    match = _HBA_INCLUDE.match(line)
    if match is None:
        return None
    path = match["path"]
    if path.startswith('"'):
        path = path[1:-1].replace('""', '"')
    return match["kind"], path


def include_line(line: str, hba: bool) -> tuple[str, str] | None:
    """(include, include_if_exists or include_dir, the path as written) for an include line."""
    if hba:
        return _hba_include(line)
    setting = parse_setting(line)
    if setting is not None and setting.name in ("include", "include_if_exists", "include_dir"):
        return setting.name, setting.value
    return None


def included_files(directory: str) -> list[str]:
    """The files include_dir reads: *.conf not starting with a dot, in byte order."""
    try:
        names = sorted(os.listdir(directory), key=os.fsencode)
    except OSError:
        return []
    return [os.path.join(directory, name) for name in names
            if fnmatch.fnmatchcase(name, "*.conf") and not name.startswith(".")
            and os.path.isfile(os.path.join(directory, name))]


def inside(path: str, directory: str) -> bool:
    """Whether the normal absolute `path` is `directory` or under it."""
    return os.path.commonpath([path, directory]) == directory

"""backup-push's copy of the server's configuration files kept outside the data directory
(Debian's /etc/postgresql/<major>/<cluster>/, any config_file, hba_file or ident_file set
elsewhere, and what they include): found by following the server's own include lines from
config_file, hba_file and ident_file, plus whatever pg_file_settings (and, on PostgreSQL
16+, pg_hba_file_rules and pg_ident_file_mappings) say the server read. Each is stored in
the backup stream as `.pitrkit-config/<name>` (catalog.documents.CAPTURED_DIR) and
recorded in the manifest (ServerConfiguration): its original path, role, mode, size and
SHA-256. restore/server_config.py writes them back.

It also keeps secrets out of what is stored: a standby's `primary_conninfo` (written by
`pg_basebackup -R` into postgresql.auto.conf, or set in postgresql.conf or a file it
includes) may carry a password, which `scrubbed` removes from every configuration file
backup-push stores, inside the data directory (`Captured.inside` names them) or not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

from pitrkit.catalog.documents import MAX_CONFIG_FILE, ConfigFile, ServerConfiguration
from pitrkit.postgres.config_files import MAX_DEPTH, conf_quote, include_line, included_files, inside, parse_setting
from pitrkit.postgres.conninfo import without_secrets

log = logging.getLogger(__name__)


class Captured(NamedTuple):
    record: ConfigFile
    content: bytes  # as stored: scrubbed


# The file ALTER SYSTEM (and pg_basebackup -R) writes, always in the data directory.
AUTO_CONF = "postgresql.auto.conf"
_CONNINFO_SETTING = "primary_conninfo"
# Roles of files holding `name = value` settings (not pg_hba.conf or pg_ident.conf lines).
_SETTINGS_ROLES = ("config_file", "include")


def scrubbed(content: bytes) -> bytes:
    """`content`, a postgresql.conf-style file, with every `primary_conninfo` stripped of
    its password and sslpassword (the rest of the connection kept, for a restore that
    becomes a standby again); the file unchanged when it holds none. A line naming
    primary_conninfo that is not a setting libpq can read (a comment, a malformed value)
    but mentions a password is replaced whole: where the secret is in it cannot be told."""
    if _CONNINFO_SETTING.encode() not in content.lower():
        return content
    lines = content.split(b"\n")
    for number, line in enumerate(lines):
        if _CONNINFO_SETTING.encode() not in line.lower():
            continue
        text = line.decode("utf-8", errors="surrogateescape")
        ending = "\r" if text.endswith("\r") else ""
        setting = parse_setting(text.rstrip("\r"))
        cleaned = without_secrets(setting.value) if setting and setting.name == _CONNINFO_SETTING else None
        if cleaned is not None:
            value, removed = cleaned
            if removed:
                text = (f"{_CONNINFO_SETTING} = {conf_quote(value)}\t# {' and '.join(removed)} removed by pitrkit "
                        f"backup-push{ending}")
        elif "password" in text.lower():
            text = f"# a line setting {_CONNINFO_SETTING} with a password, removed by pitrkit backup-push{ending}"
        lines[number] = text.encode("utf-8", errors="surrogateescape")
    return b"\n".join(lines)


def capture(data_directory: str, config_file: str, hba_file: str, ident_file: str,
            server_read: dict[str, list[str]]) -> tuple[ServerConfiguration, list[Captured], list[str]]:
    """The configuration files outside `data_directory`, read now (and scrubbed), and the
    data-directory-relative paths of the settings files inside it (postgresql.auto.conf
    always), which the caller scrubs as it copies them. `server_read` has, by role, the
    files the server says it read (pg_file_settings, pg_hba_file_rules ...); the include
    lines are followed from the three main files as well."""
    data_directory = os.path.normpath(data_directory)
    found: dict[str, str] = {}  # path -> role, in the order found

    def visit(path: str, role: str, include_role: str, hba: bool, depth: int) -> None:
        path = os.path.normpath(path)
        if path in found or depth > MAX_DEPTH:
            return
        found[path] = role
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            include = include_line(line, hba)
            if include is None:
                continue
            kind, written = include
            resolved = os.path.join(os.path.dirname(path), written)
            for each in included_files(resolved) if kind == "include_dir" else [resolved]:
                visit(each, include_role, include_role, hba, depth + 1)

    visit(config_file, "config_file", "include", False, 0)
    visit(hba_file, "hba_file", "hba_include", True, 0)
    visit(ident_file, "ident_file", "ident_include", True, 0)
    for role, paths in server_read.items():
        for path in paths:
            if os.path.isabs(path):
                found.setdefault(os.path.normpath(path), role)

    records: list[Captured] = []
    settings_inside = [AUTO_CONF]
    for path, role in found.items():
        if inside(path, data_directory):
            relative = os.path.relpath(path, data_directory)
            if role in _SETTINGS_ROLES and relative not in settings_inside:
                settings_inside.append(relative)
            continue  # copied with the data directory
        if "\n" in path:
            log.warning("not copying %r: a newline in its name (restore shows these paths, one per line)", path)
            continue
        try:
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                content = file.read(MAX_CONFIG_FILE + 1)
        except OSError as exc:
            if role in ("config_file", "hba_file", "ident_file") or os.path.exists(path):
                log.warning("cannot copy the server's %s %s (%s): a restore of this backup writes a "
                            "minimal one", role, path, exc.strerror)
            continue
        if len(content) <= MAX_CONFIG_FILE and role in _SETTINGS_ROLES:
            content = scrubbed(content)  # read whole (not cut at the limit): scrubbed whole
        if len(content) > MAX_CONFIG_FILE:
            log.warning("not copying %s: over %d bytes, not a configuration file", path, MAX_CONFIG_FILE)
            continue
        base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(path)).lstrip("._-") or "file"
        name = f"{len(records):02d}-{base}"[:100]
        records.append(Captured(ConfigFile(name=name, path=path, role=role, mode=status.st_mode & 0o7777,
                                           size=len(content), sha256=hashlib.sha256(content).hexdigest()),
                                content))
    configuration = ServerConfiguration(data_directory=data_directory, config_file=os.path.normpath(config_file),
                                        hba_file=os.path.normpath(hba_file), ident_file=os.path.normpath(ident_file),
                                        files=[each.record for each in records])
    return configuration, records, settings_inside

"""backup-push's copy of the server's configuration files kept outside the data directory
(Debian's /etc/postgresql/<major>/<cluster>/, any config_file, hba_file or ident_file set
elsewhere, and what they include): found by following the server's own include lines from
config_file, hba_file and ident_file, plus whatever pg_file_settings (and, on PostgreSQL
16+, pg_hba_file_rules and pg_ident_file_mappings) say the server read. Each is stored in
the backup stream as `.pitrkit-config/<name>` (catalog.documents.CAPTURED_DIR) and
recorded in the manifest (ServerConfiguration): its original path, role, mode, size and
SHA-256. restore/server_config.py writes them back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

from pitrkit.catalog.documents import MAX_CONFIG_FILE, ConfigFile, ServerConfiguration
from pitrkit.postgres.config_files import MAX_DEPTH, include_line, included_files, inside

log = logging.getLogger(__name__)


class Captured(NamedTuple):
    record: ConfigFile
    content: bytes


def capture(data_directory: str, config_file: str, hba_file: str, ident_file: str,
            server_read: dict[str, list[str]]) -> tuple[ServerConfiguration, list[Captured]]:
    """The configuration files outside `data_directory`, read now. `server_read` has, by
    role, the files the server says it read (pg_file_settings, pg_hba_file_rules ...);
    the include lines are followed from the three main files as well."""
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
    for path, role in found.items():
        if inside(path, data_directory):
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
    return configuration, records

"""The settings in a backup's configuration files that make the restored server run code
as its OS user, for `restore-plan` and `restore` to list.

Whoever can write to an archive without `[encryption]` writes the restored
`postgresql.conf` and `postgresql.auto.conf` (docs/encryption.md), and with them settings
that load a library or run a command when the server starts, archives, or ends recovery.
Nothing here decides anything: it reads the files the way PostgreSQL does, enough to show
the operator what starting the restored server would run.

The syntax is PostgreSQL's (guc-file.l): `name = value` or `name value`, a value quoted
with '...' (a quote doubled or backslash-escaped inside), `#` to the end of the line, and
the directives `include`, `include_if_exists` and `include_dir`, followed in place, to
PostgreSQL's depth of 10. `postgresql.conf` is read first, `postgresql.auto.conf` last;
the last value of a setting is the one that counts. Only files inside the backup are
read: an include that leaves the data directory is named in a note, not followed.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec

from pitrkit.catalog.documents import BackupFile, BackupManifest, shown
from pitrkit.errors import PitrkitError
from pitrkit.postgres.config_files import MAX_DEPTH
from pitrkit.restore.unpack import read_part
from pitrkit.storage.archive import Archive, manifest_key

# Settings whose value is code the server runs or loads as its OS user. restore_command
# is not among them: restore writes its own, which wins.
CODE_SETTINGS = frozenset({
    "archive_command", "archive_library", "archive_cleanup_command", "recovery_end_command",
    "ssl_passphrase_command", "shared_preload_libraries", "session_preload_libraries", "local_preload_libraries",
    "dynamic_library_path", "jit_provider", "oauth_validator_libraries",
})
FILES = ("postgresql.conf", "postgresql.auto.conf")
MAX_FILE_SIZE = 1 << 20  # a configuration file larger than this is named, not read
# restore-plan reads a backup's configuration files from its parts: at most this many
# parts (32 MiB each) per plan. The files sit together in the data directory's root, so
# one or two parts hold them.
MAX_PARTS = 4

# Not postgres/config_files.py's parse_setting, on purpose. This reader lists what a
# backup's configuration would run, and each value it finds goes into one warning line:
# backslash escapes keep the escaped character here (`\n` gives n), where parse_setting
# decodes `\n` and octal as the server does and would put a line break written by whoever
# wrote the archive into restore's warning; and a line with text after its value, which
# the server refuses, is still listed here rather than skipped.
_LINE = re.compile(r"""\s*([A-Za-z_][\w.\-]*)\s*=?\s*('(?:[^'\\]|''|\\.)*'|[^\s#']*)""")


class CodeSetting(msgspec.Struct, kw_only=True, frozen=True):
    file: str  # relative to the data directory
    name: str
    value: str


class Found(msgspec.Struct, kw_only=True, frozen=True):
    settings: list[CodeSetting] = []
    # What could not be read: an include outside the backup, a file too large, a bound.
    notes: list[str] = []


class Files:
    """A data directory's files as the reader sees them: `read` gives a file's text or
    None when it is absent, `list` the names in a directory ([] when absent)."""

    def __init__(self, read: Callable[[str], str | None], names: Callable[[str], list[str]]) -> None:
        self.read = read
        self.list = names


def code_settings(files: Files) -> Found:
    """The effective code-running settings of the configuration in `files`."""
    values: dict[str, CodeSetting] = {}
    notes: list[str] = []

    def parse(path: str, depth: int, required: bool) -> None:
        if depth > MAX_DEPTH:
            notes.append(f"{path}: includes nested deeper than {MAX_DEPTH}, not followed")
            return
        try:
            text = files.read(path)
        except _NotRead as exc:
            notes.append(f"{path}: {exc}")
            return
        if text is None:
            if required and depth:
                notes.append(f"{path}: included but not in the backup")
            return
        for line in text.splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            name, value = match[1].lower(), _unquote(match[2])
            if name in ("include", "include_if_exists", "include_dir"):
                target = _inside(path, value)
                if target is None:
                    notes.append(f"{shown(path)}: {name} {quoted(value)} is outside the data directory, not checked")
                elif name == "include_dir":
                    for entry in sorted(files.list(target)):
                        if entry.endswith(".conf") and not entry.startswith("."):
                            parse(posixpath.join(target, entry), depth + 1, True)
                else:
                    parse(target, depth + 1, name == "include")
            elif name in CODE_SETTINGS:
                values.pop(name, None)  # the last value counts, and is listed in its place
                values[name] = CodeSetting(file=path, name=name, value=value)

    for top in FILES:
        parse(top, 0, False)
    return Found(settings=[setting for setting in values.values() if setting.value.strip()], notes=notes)


class _NotRead(Exception):
    """A file that is there but is not read (too large, not a regular file, a bound)."""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith("'") and value.endswith("'"):
        inner = value[1:-1]
        return re.sub(r"\\(.)|''", lambda m: m[1] if m[1] is not None else "'", inner)
    return value


def _inside(including: str, target: str) -> str | None:
    """`target` relative to the data directory, as PostgreSQL resolves an include (from
    the including file's directory); None when it leaves the data directory."""
    if not target or target.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(including), target))
    return None if joined == ".." or joined.startswith("../") else joined


def quoted(value: str) -> str:
    """A value from a backup's configuration as a warning shows it: in quotes, as the file
    has it, when every character prints, else with Python's escapes, so that a terminal
    escape sequence or a line break written by whoever wrote the archive can neither
    rewrite the reader's screen nor fake a line."""
    return f"'{value}'" if value.isprintable() else repr(value)


def describe(found: Found) -> list[str]:
    """The warning block: what starting the restored server would run."""
    if not found.settings:
        return []
    lines = ["the backup's configuration runs code as the server's OS user when the restored server starts, "
             "archives or ends recovery:"]
    lines += [f"  {shown(setting.file)}: {setting.name} = {quoted(setting.value)}" for setting in found.settings]
    lines.append("anyone who can write to an unencrypted archive can set these (docs/encryption.md): check them "
                 "before starting the restored server")
    return lines


# --- where the files are read -------------------------------------------------------------


def restored(root: Path) -> Files:
    """The files of a restored data directory (restore writes regular files only; a link
    or anything else is not read)."""

    def read(path: str) -> str | None:
        try:
            fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _NotRead(exc.strerror) from None
        with os.fdopen(fd, "rb") as file:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise _NotRead("not a regular file")
            if status.st_size > MAX_FILE_SIZE:
                raise _NotRead(f"{status.st_size} bytes, not read")
            return file.read().decode(errors="replace")

    def names(path: str) -> list[str]:
        try:
            return os.listdir(root / path) if not (root / path).is_symlink() else []
        except OSError:
            return []

    return Files(read, names)


def in_backup(archive: Archive, backup_id: str) -> Files:
    """The files of a stored backup, read from its parts: the manifest, then only the
    parts that hold the files asked for, at most `MAX_PARTS` of them."""
    manifest = archive.get_document(manifest_key(backup_id), BackupManifest)
    by_path = {file.path: file for file in manifest.files}
    last: dict[int, bytes] = {}  # only the part read last: neighbouring files share it
    reads = 0

    def part(number: int) -> bytes:
        nonlocal reads
        if number not in last:
            if reads == MAX_PARTS:
                raise _NotRead(f"not read: restore-plan reads at most {MAX_PARTS} backup parts")
            reads += 1
            last.clear()
            last[number] = read_part(archive, manifest.parts[number])
        return last[number]

    def read(path: str) -> str | None:
        file = by_path.get(path)
        if file is None:
            return None
        if file.size > MAX_FILE_SIZE:
            raise _NotRead(f"{file.size} bytes, not read")
        return _contents(file, manifest, part).decode(errors="replace")

    def names(path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [name[len(prefix):] for name in by_path if name.startswith(prefix) and "/" not in name[len(prefix):]]

    return Files(read, names)


def _contents(file: BackupFile, manifest: BackupManifest, part: Callable[[int], bytes]) -> bytes:
    """A file's bytes from the backup stream: from `offset` in its part, on into the next."""
    pieces, number, offset, left = [], file.part, file.offset, file.size
    while left > 0:
        if number >= len(manifest.parts):
            raise PitrkitError(f"manifest: {file.path} runs past the last part")
        data = part(number)
        piece = data[offset : offset + left]
        pieces.append(piece)
        left -= len(piece)
        number, offset = number + 1, 0
    return b"".join(pieces)

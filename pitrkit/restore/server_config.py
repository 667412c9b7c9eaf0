"""The backed-up server's configuration written back as a configuration of the restored
data directory alone: the files backup-push captured from outside the data directory
(backup/config_capture.py: Debian's /etc/postgresql/<major>/<cluster>/, any config_file,
hba_file or ident_file set elsewhere, include and include_dir), and the data directory's
own postgresql.conf and postgresql.auto.conf.

restore (`--config-files backup`, the default) puts them back as postgresql.conf,
pg_hba.conf, pg_ident.conf and `pitrkit.conf.d/<name>` in the new data directory and
rewrites what would reach outside it, in them and in the data directory's own
postgresql.auto.conf: data_directory, config_file, hba_file, ident_file,
external_pid_file, stats_temp_directory, promote_trigger_file and an absolute
log_directory are commented out;
include lines point at the restored copies (include_dir becomes one include per file it
read), and an include of anything else outside the new data directory is commented out.
Only regular files inside it are read or rewritten, never through a link (a tablespace's
pg_tblspc/<oid> leads out of it). A block at the end of postgresql.conf then sets what
must differ on the restored copy: the port (--port), a socket directory the restoring
user can write, cluster_name with "-restored", and ssl = off when the certificate files
are not on this host. With `--config-files none` a minimal configuration is written
instead. Every change is said.

The manifest is data from storage: its records are checked as they are decoded
(catalog/documents.ConfigFile: names plain, paths absolute and normal, roles known), and original
paths are only ever compared, never opened or written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pitrkit import durable
from pitrkit.catalog.documents import CAPTURED_DIR, ServerConfiguration
from pitrkit.errors import PitrkitError
from pitrkit.postgres.config_files import MAX_DEPTH, Setting, include_line, included_files, inside, parse_setting
from pitrkit.restore.recovery_conf import AUTO_CONF, conf_quote

# Where restore puts the included files.
INCLUDE_DIR = "pitrkit.conf.d"
CONFIG = "postgresql.conf"
HBA = "pg_hba.conf"
IDENT = "pg_ident.conf"

# Settings that name a file or directory of the backed-up server's own: restored, they
# would make the copy use (or overwrite) the primary's, or (promote_trigger_file,
# PostgreSQL 15 and older) promote from recovery when a file appears at a path the
# primary chose.
_FOREIGN_PATHS = ("data_directory", "config_file", "hba_file", "ident_file", "external_pid_file",
                  "stats_temp_directory", "promote_trigger_file")
_SSL_FILES = {"ssl_cert_file": "server.crt", "ssl_key_file": "server.key", "ssl_ca_file": "",
              "ssl_crl_file": "", "ssl_crl_dir": "", "ssl_dh_params_file": ""}
_TRUE = ("on", "true", "yes", "1", "tru", "tr", "t", "ye", "y")

def _own(target: Path, path: Path) -> bytes | None:
    """The content of `path` if it is a regular file in the restored directory `target`,
    else None: restore reads and rewrites nothing else. The path is taken as the server
    takes it, links resolved (a backup's pg_tblspc/<oid> links lead out of the target),
    and the file itself must be no link (nor a FIFO, which is not waited on)."""
    if not inside(os.path.realpath(path), os.path.realpath(target)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        return file.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


class Choices(NamedTuple):
    """What the restored configuration must say, whatever the backup's said."""

    keep_backed_up: bool  # --config-files backup; False: none
    port: int | None  # --port, or the port --start chose
    socket_dir: Path | None  # where --start puts the socket; None: decide here


class _Rewriter:
    def __init__(self, target: Path, configuration: ServerConfiguration | None, say: Callable[[str], None]):
        self.target = target
        self.configuration = configuration
        self.say = say
        self.originals: dict[str, Path] = {}  # original path -> restored path
        self.seen: set[Path] = set()  # rewritten already

    def restored_of(self, original: str) -> Path | None:
        """Where the file or directory at `original` on the backed-up host is now; None
        when not in the target."""
        if original in self.originals:
            return self.originals[original]
        # Without a record of the backed-up server's paths (an older backup), the lines
        # are read relative to the target (see rewrite).
        home = self.configuration.data_directory if self.configuration is not None else str(self.target)
        if not inside(original, home):
            return None
        restored = self.target / os.path.relpath(original, home)
        return restored if inside(os.path.realpath(restored), os.path.realpath(self.target)) else None

    def rewrite(self, restored: Path, original: str | None, hba: bool) -> bool:
        """Rewrite `restored` (read from `original` on the backed-up host) and the files it
        includes, so that nothing in them points outside the new data directory. False,
        and nothing read or written, when it is not a regular file of the target."""
        if restored in self.seen:
            return True
        content = _own(self.target, restored)
        if content is None:
            return False
        self.seen.add(restored)
        here = os.path.dirname(original) if original else str(restored.parent)
        lines = []
        changed = False
        for line in content.decode(errors="replace").splitlines():
            new = self._line(line, restored, here, hba)
            changed |= new != [line]
            lines.extend(new)
        if changed:
            durable.replace_file(restored, "\n".join(lines) + "\n")
        return True

    def _line(self, line: str, restored: Path, here: str, hba: bool) -> list[str]:
        shown = os.path.relpath(restored, self.target)
        include = include_line(line, hba)
        if include is not None:
            kind, written = include
            original = os.path.normpath(os.path.join(here, written))
            where = self.restored_of(original)
            if kind == "include_dir":
                files = included_files(str(where)) if where is not None and where.is_dir() else []
                files = files or [str(path) for path in self._captured_in(original)]
                files = [each for each in files
                         if self.rewrite(Path(each), self._original_of(Path(each), original), hba)]
                if not files:
                    self.say(f"  {shown}: {kind} {written!r} commented out: nothing of it is in the backup")
                    return [_commented(line, "nothing of it was in the backup")]
                includes = [self._include_line(Path(each), restored, hba) for each in files]
                self.say(f"  {shown}: {kind} {written!r} now includes the {len(files)} restored file(s) it read")
                return [_commented(line, "replaced by the restored files below"), *includes]
            if where is None or not self.rewrite(where, original, hba):
                self.say(f"  {shown}: {kind} {written!r} commented out: the file is not in the backup")
                return [_commented(line, "the file was not in the backup")]
            if os.path.relpath(where, restored.parent) == written:
                return [line]
            self.say(f"  {shown}: {kind} {written!r} now includes {os.path.relpath(where, self.target)}")
            return [self._include_line(where, restored, hba, kind)]
        if hba:
            return [line]
        setting = parse_setting(line)
        if setting is None:
            return [line]
        if setting.name in _FOREIGN_PATHS:
            self.say(f"  {shown}: {setting.name} = {setting.value!r} commented out (the backed-up server's)")
            return [_commented(line, "the backed-up server's; the restored copy uses its own")]
        if setting.name == "log_directory" and os.path.isabs(setting.value) and not inside(
                os.path.normpath(setting.value), str(self.target)):
            self.say(f"  {shown}: log_directory = {setting.value!r} commented out (the backed-up server's "
                     "logs; the restored copy logs into log/)")
            return [_commented(line, "the backed-up server's logs")]
        return [line]

    def _captured_in(self, directory: str) -> list[Path]:
        return [restored for original, restored in self.originals.items()
                if os.path.dirname(original) == directory and original.endswith(".conf")]

    def _original_of(self, restored: Path, directory_original: str) -> str:
        for original, path in self.originals.items():
            if path == restored:
                return original
        return os.path.join(directory_original, restored.name)

    def _include_line(self, included: Path, restored: Path, hba: bool, kind: str = "include") -> str:
        relative = os.path.relpath(included, restored.parent)
        if hba:
            return f'{kind} "{relative.replace(chr(34), chr(34) * 2)}"'
        return f"{kind} = {conf_quote(relative)}"


def _commented(line: str, why: str) -> str:
    return f"#{line}  # pitrkit restore: {why}"



_MINIMAL_CONF = """\
# Written by pitrkit restore --config-files none: PostgreSQL's defaults, and the
# settings the restored copy needs below. The backed-up configuration was left out.
"""
_MINIMAL_HBA = """\
# Written by pitrkit restore: local connections as the same-named database role only.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 peer
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def _effective(target: Path) -> tuple[dict[str, Setting], list[Path]]:
    """The settings postgresql.conf (with its includes, now all inside `target`) and then
    postgresql.auto.conf give, the last of each name winning, as the server reads them;
    and the files read (_override rewrites them: only the target's own, see _own)."""
    values: dict[str, Setting] = {}
    files: list[Path] = []

    def read(path: Path, depth: int) -> None:
        content = _own(target, path)
        if content is None:
            return
        files.append(path)
        for line in content.decode(errors="replace").splitlines():
            setting = parse_setting(line)
            if setting is None:
                continue
            if setting.name in ("include", "include_if_exists") and depth < MAX_DEPTH:
                read(path.parent / setting.value, depth + 1)
            elif setting.name == "include_dir" and depth < MAX_DEPTH:
                for each in included_files(str(path.parent / setting.value)):
                    read(Path(each), depth + 1)
            else:
                values[setting.name] = setting
    read(target / CONFIG, 0)
    read(target / AUTO_CONF, 0)
    return values, files


def _writable(directory: str) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def write(target: Path, configuration: ServerConfiguration | None, choices: Choices,
          say: Callable[[str], None]) -> None:
    """Turn what the backup left in `target` into the restored copy's configuration."""
    captured = target / CAPTURED_DIR
    try:
        _write(target, captured, configuration, choices, say)
    except OSError as exc:
        raise PitrkitError(f"cannot write the restored configuration in {target}: "
                           f"{exc.strerror} ({exc.filename})") from None


def _write(target: Path, captured: Path, configuration: ServerConfiguration | None, choices: Choices,
           say: Callable[[str], None]) -> None:
    files = configuration.files if configuration is not None else []
    for file in files:
        content = (captured / file.name).read_bytes()
        if len(content) != file.size or hashlib.sha256(content).hexdigest() != file.sha256:
            raise PitrkitError(f"the backup's copy of {file.path} ({CAPTURED_DIR}/{file.name}) does not match "
                               "its size and checksum in the manifest")
    rewriter = _Rewriter(target, configuration, say)
    if not choices.keep_backed_up:
        shutil.rmtree(captured, ignore_errors=True)
        durable.replace_file(target / CONFIG, _MINIMAL_CONF)
        durable.replace_file(target / HBA, _MINIMAL_HBA)
        durable.replace_file(target / IDENT, "")
        say(f"--config-files none: wrote a minimal {CONFIG}, {HBA} (local peer, localhost scram-sha-256) "
            f"and an empty {IDENT}" + (f"; left out the backed-up {', '.join(f.path for f in files)}" if files else ""))
    else:
        _place(target, captured, configuration, rewriter, say)
    # The data directory's own, restored as it was: ALTER SYSTEM can set
    # external_pid_file and friends, and a hand edit can add an include of any file.
    auto_conf = os.path.join(configuration.data_directory, AUTO_CONF) if configuration is not None else None
    rewriter.rewrite(target / AUTO_CONF, auto_conf, False)
    _override(target, configuration, choices, say)
    durable.fsync_directory(target)


def _place(target: Path, captured: Path, configuration: ServerConfiguration | None, rewriter: _Rewriter,
           say: Callable[[str], None]) -> None:
    placed = {CONFIG: False, HBA: False, IDENT: False}
    main = {"config_file": CONFIG, "hba_file": HBA, "ident_file": IDENT}
    for file in configuration.files if configuration is not None else []:
        source = captured / file.name
        if file.role in main:
            destination = target / main[file.role]
            placed[main[file.role]] = True
            if destination.exists():
                say(f"  {main[file.role]}: replaced the data directory's own (not the file the server read)")
        else:
            (target / INCLUDE_DIR).mkdir(mode=0o700, exist_ok=True)
            destination = target / INCLUDE_DIR / file.name
        os.replace(source, destination)
        os.chmod(destination, 0o600)
        rewriter.originals[file.path] = destination
        say(f"  {os.path.relpath(destination, target)} <- {file.path} ({file.role})")
    shutil.rmtree(captured, ignore_errors=True)
    if configuration is not None:
        # An hba_file or ident_file inside the data directory under another name: the
        # restored copy reads the default name, because the settings are commented out.
        for role, name in (("hba_file", HBA), ("ident_file", IDENT)):
            path = getattr(configuration, role)
            if not placed[name] and inside(path, configuration.data_directory):
                restored = target / os.path.relpath(path, configuration.data_directory)
                if restored != target / name and _own(target, restored) is not None:
                    shutil.copy2(restored, target / name)
                    say(f"  {name} <- {os.path.relpath(restored, target)} (the server's {role})")
    if not (target / CONFIG).exists():
        durable.replace_file(target / CONFIG, _MINIMAL_CONF)
        say(f"  {CONFIG}: the backup has none; wrote a minimal one")
    if not (target / HBA).exists():
        durable.replace_file(target / HBA, _MINIMAL_HBA)
        say(f"  {HBA}: the backup has none; wrote a minimal one (local peer, localhost scram-sha-256)")
    if not (target / IDENT).exists():
        durable.replace_file(target / IDENT, "")
    originals = (configuration.config_file, configuration.hba_file, configuration.ident_file) \
        if configuration is not None else (None, None, None)
    rewriter.rewrite(target / CONFIG, originals[0], False)
    rewriter.rewrite(target / HBA, originals[1], True)
    rewriter.rewrite(target / IDENT, originals[2], True)


BLOCK_BEGIN = "# pitrkit restore: settings of the restored copy (begin)"
BLOCK_END = "# pitrkit restore: settings of the restored copy (end)"


def _override(target: Path, configuration: ServerConfiguration | None, choices: Choices,
              say: Callable[[str], None]) -> None:
    """The block at the end of postgresql.conf; settings of the same names in
    postgresql.auto.conf, which is read after it, are commented out."""
    effective, files = _effective(target)
    settings: list[tuple[str, str, str]] = []  # name, value, why
    if choices.port is not None:
        settings.append(("port", str(choices.port), "--port" if "port" not in effective else
                         f"was {effective['port'].value}"))
    sockets = effective.get("unix_socket_directories")
    if choices.socket_dir is not None:
        settings.append(("unix_socket_directories", str(choices.socket_dir), "where --start puts the socket"))
    elif sockets is not None and sockets.value.strip() and not all(
            _writable(os.path.join(target, each.strip())) for each in sockets.value.split(",") if each.strip()):
        settings.append(("unix_socket_directories", str(target), f"{sockets.value!r} is not writable here"))
    cluster = effective.get("cluster_name")
    if cluster is not None and cluster.value and not cluster.value.endswith("-restored"):
        settings.append(("cluster_name", f"{cluster.value}-restored"[:63], f"was {cluster.value!r}"))
    ssl = effective.get("ssl")
    dropped: dict[str, str] = {}  # settings only commented out: the SSL files not on this host
    if ssl is not None and ssl.value.lower() in _TRUE:
        for key, default in _SSL_FILES.items():
            value = effective[key].value if key in effective else default
            if value and not os.access(target / value, os.R_OK):
                dropped[key] = value
        if dropped:
            missing = ", ".join(f"{key} {value}" for key, value in dropped.items())
            settings.append(("ssl", "off", f"{missing} not readable here"))
    if not settings:
        return
    # One line sets each: the block's. Elsewhere they are commented out (in
    # postgresql.auto.conf, read after the block, they would even win).
    names = {name for name, _, _ in settings} | dropped.keys()
    for path in files:
        lines = path.read_text(errors="replace").splitlines()
        kept = [_commented(line, "set at the end of postgresql.conf for the restored copy")
                if (setting := parse_setting(line)) is not None and setting.name in names else line for line in lines]
        if kept != lines:
            durable.replace_file(path, "\n".join(kept) + "\n")
    config = target / CONFIG
    text = config.read_text(errors="replace")
    if BLOCK_BEGIN in text:
        text = text[: text.index(BLOCK_BEGIN)]
    block = [BLOCK_BEGIN, *(f"{name} = {conf_quote(value)}\t# {why}" for name, value, why in settings), BLOCK_END]
    durable.replace_file(config, text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n")
    for name, value, why in settings:
        say(f"  {CONFIG}: {name} = {value!r} ({why})")



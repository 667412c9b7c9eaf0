"""The recovery settings of a restored data directory: `recovery.signal`, and one block
of settings at the end of `postgresql.auto.conf` (PostgreSQL reads that file last, so
its settings win over `postgresql.conf`).

A backup of a server that was itself restored carries the old recovery settings, and a
backup of a standby carries `standby.signal`; both would silently change where recovery
stops, so they are removed before the new block is written.

A copy restored with archiving off is a temporary one (a test restore, a look at old
data), and must not act on the world: besides `archive_mode = off`, its block sets
`max_logical_replication_workers = 0`, so that the subscriptions it was backed up with
never connect to their publishers and advance the real subscriber's slots.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path

import msgspec

from pitrkit.errors import PitrkitError
from pitrkit.wal import Lsn

AUTO_CONF = "postgresql.auto.conf"
RECOVERY_SIGNAL = "recovery.signal"
STANDBY_SIGNAL = "standby.signal"
BLOCK_BEGIN = "# pitrkit restore: begin"
BLOCK_END = "# pitrkit restore: end"
# Set to 0 with archiving off: no subscription of the copy runs (the setting needs a restart).
NO_SUBSCRIPTIONS = "max_logical_replication_workers"

# Lines setting any recovery target or restore_command; GUC names are case-insensitive.
_RECOVERY_SETTING = re.compile(r"\s*(recovery_target\w*|restore_command)\s*(=|\s)", re.IGNORECASE)
_SETTING = re.compile(r"\s*(\w+)\s*=?\s*('(?:[^'\\]|''|\\.)*'|[^\s#]+)")
_ARCHIVING_MODES = {"on", "always", "true", "yes", "1"}


class RecoverySettings(msgspec.Struct, kw_only=True, frozen=True):
    restore_command: str
    target_time: datetime | None = None  # aware
    target_lsn: Lsn | None = None
    timeline: int
    action: str | None  # recovery_target_action; None without a target (--latest)
    # False: archive_mode = off and no logical replication workers, for a restored copy
    # that must not archive nor apply its subscriptions.
    archiving: bool = True

    def lines(self) -> list[str]:
        settings: list[tuple[str, str]] = [("restore_command", self.restore_command)]
        if self.target_time is not None:
            settings.append(("recovery_target_time", self.target_time.isoformat(sep=" ")))
        if self.target_lsn is not None:
            settings.append(("recovery_target_lsn", str(self.target_lsn)))
        settings.append(("recovery_target_timeline", str(self.timeline)))
        if self.action is not None:
            settings.append(("recovery_target_action", self.action))
        if not self.archiving:
            settings.append(("archive_mode", "off"))
            settings.append((NO_SUBSCRIPTIONS, "0"))
        return [f"{name} = {conf_quote(value)}" for name, value in settings]


def pitrkit_executable() -> list[str]:
    """This pitrkit: the console script beside the running interpreter (a venv's bin/),
    else `<python> -m pitrkit`, which goes through the same front door."""
    script = Path(sys.executable).parent / "pitrkit"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pitrkit"]


def restore_command(config_path: Path) -> str:
    """restore_command calling this pitrkit with this configuration, by absolute paths
    (the server runs it from the data directory, with its own environment). `%` in the
    paths is doubled: PostgreSQL substitutes only the %f and %p we append."""
    argv = [*pitrkit_executable(), "--config", str(config_path.absolute())]
    return shlex.join(argv).replace("%", "%%") + " wal-fetch %f %p"


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal, quoted as ALTER SYSTEM writes one: the parser
    reads backslash escapes inside quotes, so backslashes are doubled along with quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def rewrite_auto_conf(text: str, settings: RecoverySettings, header: str) -> str:
    """`text` without any recovery target, restore_command or earlier pitrkit block,
    then the new block. `header` is a comment line saying who wrote it and when."""
    kept: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.strip() == BLOCK_BEGIN:
            in_block = True
        elif in_block:
            in_block = line.strip() != BLOCK_END
        elif not _RECOVERY_SETTING.match(line):
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = [BLOCK_BEGIN, f"# {header}", *settings.lines(), BLOCK_END]
    return "\n".join([*kept, *block]) + "\n"


def write(data_dir: Path, settings: RecoverySettings, header: str) -> None:
    """Make `data_dir` start in targeted archive recovery with `settings`, durably."""
    auto_conf = data_dir / AUTO_CONF
    try:
        try:
            text = auto_conf.read_text()
            mode = auto_conf.stat().st_mode & 0o777
        except FileNotFoundError:
            text, mode = "", 0o600
        # Write aside and rename: a crash leaves the old file or the new one, never half.
        temporary = auto_conf.with_name(AUTO_CONF + ".pitrkit.tmp")
        _write_durably(temporary, rewrite_auto_conf(text, settings, header), mode)
        os.replace(temporary, auto_conf)
        (data_dir / STANDBY_SIGNAL).unlink(missing_ok=True)
        _write_durably(data_dir / RECOVERY_SIGNAL, "", 0o600)
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PitrkitError(f"cannot write the recovery settings into {data_dir}: {exc.strerror}") from None


def _write_durably(path: Path, content: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, content.encode())
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def archiving_setting(data_dir: Path) -> tuple[str, str] | None:
    """(archive_mode, archive_command) when the restored configuration in `data_dir`
    turns archiving on, else None. A plain reading of postgresql.conf then
    postgresql.auto.conf (later settings win; include files are not followed): enough to
    warn, not to decide anything."""
    values: dict[str, str] = {}
    for name in ("postgresql.conf", AUTO_CONF):
        try:
            text = (data_dir / name).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            match = _SETTING.match(line)
            if match and match[1].lower() in ("archive_mode", "archive_command"):
                value = match[2]
                if value.startswith("'"):
                    value = value[1:-1].replace("''", "'")
                values[match[1].lower()] = value
    mode = values.get("archive_mode", "off")
    if mode.lower() in _ARCHIVING_MODES:
        return mode, values.get("archive_command", "")
    return None

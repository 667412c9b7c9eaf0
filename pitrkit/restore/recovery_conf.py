"""The recovery settings of a restored data directory: `recovery.signal`, and one block
of settings at the end of `postgresql.auto.conf` (PostgreSQL reads that file last, so
its settings win over `postgresql.conf`).

A backup of a server that was itself restored carries the old recovery settings, and a
backup of a standby carries `standby.signal`; both would silently change where recovery
stops, so they are removed before the new block is written. Settings left in
`postgresql.conf` or the files it includes (a standby's `recovery_min_apply_delay`, an
old `recovery_target_time`, an `archive_cleanup_command` that deletes archived WAL)
cannot be removed from files that are not ours: the block sets every one of them, to its
neutral value where pitrkit wants none, and PostgreSQL ignores all but the last setting
of a name. `leftovers` finds them, so that restore can say what it overrode.

A copy restored with archiving off is a temporary one (a test restore, a look at old
data), and must not act on the world: besides `archive_mode = off`, its block sets
`max_logical_replication_workers = 0`, so that the subscriptions it was backed up with
never connect to their publishers and advance the real subscriber's slots.
"""

from __future__ import annotations

import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from pitrkit import durable
from pitrkit.catalog.documents import shown
from pitrkit.errors import PitrkitError
from pitrkit.postgres.config_files import conf_quote
from pitrkit.postgres.wal import Lsn

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
# The recovery target kinds: PostgreSQL refuses two of them set to non-empty values, and
# checks as it assigns each, so every one not wanted is reset before the one wanted.
_TARGET_KINDS = ("recovery_target", "recovery_target_name", "recovery_target_xid", "recovery_target_time",
                 "recovery_target_lsn")
# Their neutral values, for the other recovery settings a leftover could set.
_NEUTRAL = {"recovery_target_inclusive": "on", "recovery_min_apply_delay": "0", "archive_cleanup_command": "",
            "recovery_end_command": ""}
# PostgreSQL's own limit on nested include files.
_INCLUDE_DEPTH = 10


class RecoverySettings(msgspec.Struct, kw_only=True, frozen=True):
    restore_command: str
    # The target: at most one of these (restore/targets.py's kinds; none for --latest).
    target_time: datetime | None = None  # aware
    target_lsn: Lsn | None = None
    target_xid: int | None = None  # as typed: 64-bit with the epoch, or 32-bit
    target_name: str | None = None
    immediate: bool = False  # recovery_target = 'immediate'
    inclusive: bool = True  # recovery_target_inclusive; off for --exclusive
    timeline: int
    action: str | None  # recovery_target_action; None without a target (--latest)
    # False: archive_mode = off and no logical replication workers, for a restored copy
    # that must not archive nor apply its subscriptions.
    archiving: bool = True

    def lines(self) -> list[str]:
        return [f"{name} = {conf_quote(value)}" for name, value in self.settings()]

    def settings(self) -> list[tuple[str, str]]:
        """(name, value) in the order they must be written: every recovery setting, so
        that none set elsewhere applies, the unwanted target kinds reset before the
        wanted one is set."""
        targets: dict[str, str] = {}
        if self.target_time is not None:
            targets["recovery_target_time"] = self.target_time.isoformat(sep=" ")
        if self.target_lsn is not None:
            targets["recovery_target_lsn"] = str(self.target_lsn)
        if self.target_xid is not None:
            targets["recovery_target_xid"] = str(self.target_xid)
        if self.target_name is not None:
            targets["recovery_target_name"] = self.target_name
        if self.immediate:
            targets["recovery_target"] = "immediate"
        assert len(targets) <= 1, targets  # PostgreSQL refuses two: restore/engine.py sets one from the plan
        settings = [("restore_command", self.restore_command),
                    *((kind, "") for kind in _TARGET_KINDS if kind not in targets),
                    *targets.items(),
                    ("recovery_target_timeline", str(self.timeline)),
                    # Without a target (--latest) the action is never used; reset all the same.
                    ("recovery_target_action", self.action or "pause"),
                    ("recovery_target_inclusive", "on" if self.inclusive else "off"),
                    *((name, value) for name, value in _NEUTRAL.items() if name != "recovery_target_inclusive")]
        if not self.archiving:
            settings.append(("archive_mode", "off"))
            settings.append((NO_SUBSCRIPTIONS, "0"))
        return settings


class Leftover(NamedTuple):
    """A recovery setting in the restored configuration that pitrkit's block overrides."""

    name: str
    value: str  # as written, quotes included
    source: str  # the file, relative to the data directory when inside it

    def __str__(self) -> str:
        # The value and the file come from the backup: shown escaped when they hold
        # characters that do not print (one line stays one line).
        return f"{self.name} = {shown(self.value)} from {shown(self.source)}"


def pitrkit_executable() -> list[str]:
    """This pitrkit, as recovery runs it once per segment: the running interpreter,
    calling the front door (entry.py) directly. Not the console script, whose wrapper
    imports `re` (a third of a call the agent serves), nor `-m pitrkit` (runpy, about
    as much). `-P`: the server's working directory, the data directory, is not put on
    the module path."""
    return [sys.executable, "-P", "-c", "from pitrkit.entry import run; run()"]


def restore_command(config_path: Path, until: str | None = None, era: int = 1) -> str:
    """restore_command calling this pitrkit with this configuration, by absolute paths
    (the server runs it from the data directory, with its own environment). `%` in the
    paths is doubled: PostgreSQL substitutes only the %f and %p we append. `until`: the
    plan's last segment (RestorePlan.fetch_until), past which wal-fetch serves nothing.
    `era`: the archive's era the backup is of (RestorePlan.era), written after the first."""
    argv = [*pitrkit_executable(), "--config", str(config_path.absolute())]
    bound = "" if until is None else f" --until {until}"
    namespace = "" if era == 1 else f" --era {era}"
    return shlex.join(argv).replace("%", "%%") + " wal-fetch %f %p" + bound + namespace


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


def leftovers(data_dir: Path, settings: RecoverySettings) -> list[Leftover]:
    """The recovery settings the restored configuration sets to something else than
    pitrkit's block will: those PostgreSQL would have used, i.e. the last setting of
    each name in `postgresql.conf` (following include, include_if_exists, include_dir
    as PostgreSQL does), then the `postgresql.auto.conf` the backup carried. Read before
    `write` replaces the latter."""
    ours = {name: value.lower() for name, value in settings.settings()
            if name.startswith("recovery_target") or name in _NEUTRAL}
    found: dict[str, Leftover] = {}
    for name, value, source in [*_conf_settings(data_dir / "postgresql.conf", data_dir, 0),
                                *_conf_settings(data_dir / AUTO_CONF, data_dir, _INCLUDE_DEPTH)]:
        if name in ours:
            found[name] = Leftover(name, value, source)
    return [each for name, each in found.items() if _unquote(each.value).lower() not in ("", ours[name])]


def _conf_settings(path: Path, data_dir: Path, depth: int) -> list[tuple[str, str, str]]:
    """(lower-cased name, value as written, file) of every setting in the configuration
    file `path`, include directives followed in place. A file that cannot be read adds
    nothing: this is for reporting, and PostgreSQL itself says what it cannot read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    source = str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)
    found = []
    for line in text.splitlines():
        match = _SETTING.match(line)
        if not match:
            continue
        name, value = match[1].lower(), match[2]
        if name in ("include", "include_if_exists", "include_dir"):
            if depth < _INCLUDE_DEPTH and (target := _unquote(value)):
                included = path.parent / target  # relative to the including file; absolute stays
                if name == "include_dir":
                    files = sorted(_conf_files(included))
                else:
                    files = [included]
                for each in files:
                    found += _conf_settings(each, data_dir, depth + 1)
        else:
            found.append((name, value, source))
    return found


def _conf_files(directory: Path) -> list[Path]:
    """What PostgreSQL reads of an include_dir: its `*.conf` files not starting with "."."""
    try:
        return [path for path in directory.iterdir()
                if path.name.endswith(".conf") and not path.name.startswith(".") and path.is_file()]
    except OSError:
        return []


def _unquote(value: str) -> str:
    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        return value[1:-1].replace("''", "'").replace("\\\\", "\\")
    return value


def write(data_dir: Path, settings: RecoverySettings, header: str) -> None:
    """Make `data_dir` start in targeted archive recovery with `settings`, durably."""
    auto_conf = data_dir / AUTO_CONF
    try:
        try:
            text = auto_conf.read_text()
        except FileNotFoundError:
            text = ""
        durable.replace_file(auto_conf, rewrite_auto_conf(text, settings, header))
        (data_dir / STANDBY_SIGNAL).unlink(missing_ok=True)
        durable.write_file(data_dir / RECOVERY_SIGNAL, "", 0o600)
        durable.fsync_directory(data_dir)
    except OSError as exc:
        raise PitrkitError(f"cannot write the recovery settings into {data_dir}: {exc.strerror}") from None



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
                values[match[1].lower()] = _unquote(match[2])
    mode = values.get("archive_mode", "off")
    if mode.lower() in _ARCHIVING_MODES:
        return mode, values.get("archive_command", "")
    return None

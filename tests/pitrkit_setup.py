"""A pitrkit archive and configuration for integration tests, wired the way a DBA wires
them: a TOML file, `archive_command` / `restore_command` calling the installed `pitrkit`
executable as the server user; and pitrkit's long-running commands (wal-receive, daemon)
run as the server user the way systemd runs them."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pgharness


@dataclass
class PitrkitSetup:
    pitrkit: Path
    archive: Path
    config: Path
    # Private runtime directory for this test's agents, so tests never share one.
    runtime_dir: Path
    # With a key file, every configuration written has `[encryption] mode = "key"`.
    key_file: Path | None = None
    # Otherwise, the body of an [encryption] section to write (recipient mode).
    encryption: str | None = None
    # What the configuration says; write_config changes only what it is given.
    agent: bool = True
    compression: str = "zstd"
    retries: int = 1
    # Short: agents of finished tests go away by themselves (they are stopped anyway).
    idle_timeout: int = 5
    postgres: pgharness.Cluster | None = None

    @classmethod
    def create(cls, runnable: pgharness.RunnableInstall, directory: Path, agent: bool = True,
               compression: str = "zstd") -> PitrkitSetup:
        setup = cls(
            pitrkit=runnable.pitrkit,
            archive=pgharness.make_server_dir(directory / "archive", mode=0o700),
            config=directory / "pitrkit.toml",
            runtime_dir=pgharness.make_server_dir(directory / "run", mode=0o700),
        )
        setup.write_config(agent=agent, compression=compression)
        return setup

    def write_config(self, agent: bool | None = None, compression: str | None = None, retries: int | None = None,
                     postgres: pgharness.Cluster | None = None, idle_timeout: int | None = None) -> None:
        """Write the configuration, changing what is given and keeping the rest; with
        `postgres`, a [postgres] section naming that cluster (for init and backup-push),
        reached over its unix socket as the superuser."""
        self.agent = self.agent if agent is None else agent
        self.compression = compression or self.compression
        self.retries = self.retries if retries is None else retries
        self.idle_timeout = self.idle_timeout if idle_timeout is None else idle_timeout
        self.postgres = postgres or self.postgres
        text = (
            f'[repository]\nurl = "{self.url}"\nretries = {self.retries}\ntimeout = 10\n'
            f'[compression]\nalgorithm = "{self.compression}"\n'
            f"[agent]\nenabled = {'true' if self.agent else 'false'}\nidle_timeout = {self.idle_timeout}\n"
        )
        if (postgres := self.postgres) is not None:
            conninfo = (f"host={postgres.socket_dir} port={postgres.port} "
                        f"user={pgharness.SUPERUSER} dbname=postgres")
            text += (f'[postgres]\npgdata = "{postgres.pgdata}"\nbindir = "{postgres.install.bindir}"\n'
                     f'conninfo = "{conninfo}"\n')
        if self.key_file is not None:
            text += f'[encryption]\nmode = "key"\nkey_file = "{self.key_file}"\n'
        elif self.encryption is not None:
            text += f"[encryption]\n{self.encryption}"
        # Replaced whole, as an editor that saves safely does: an agent that reads the file
        # while it is half written takes it for an invalid configuration and stops.
        written = self.config.with_name(f".{self.config.name}.new")
        written.write_text(text)
        pgharness.give_to_server_user(written)
        os.replace(written, self.config)

    def init(self, cluster: pgharness.Cluster) -> str:
        """Create the archive for `cluster` as a DBA does before archiving starts: name it
        in [postgres], then `pitrkit init` as the server user (the facts come from the
        server if it runs, else from pg_controldata). Returns what init printed."""
        self.write_config(postgres=cluster)
        done = self.run("init")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def init_for_synthetic_wal(self, system_identifier: int, segment_size: int, major: int = 15) -> None:
        """archive.json for tests whose WAL is made up (tests/unit/segments.py), so that
        no cluster exists to run `pitrkit init` on: init's own code, with the facts those
        segments carry (as root, the archive's owner gets the file, as with backup-push)."""
        from pitrkit.config import load
        from pitrkit.ops.init import ClusterFacts, initialise
        from pitrkit.storage.archive import Archive

        initialise(Archive(load(self.config)), ClusterFacts(system_identifier, segment_size, major, "the test"))

    def unmount(self) -> Path:
        """Move the archive aside and leave an empty directory at its path: a mount point
        whose file system went away (or never mounted). Returns where the archive is."""
        moved = self.archive.with_name(self.archive.name + ".unmounted")
        self.archive.rename(moved)
        pgharness.make_server_dir(self.archive, mode=0o700)
        return moved

    def encrypt_with_a_new_key(self) -> None:
        """`pitrkit keygen` a key file beside the configuration, as the server user, and
        rewrite the configuration to use it (before anything is archived)."""
        self.key_file = self.config.with_name("archive.key")
        made = pgharness.run_as_server_user([self.pitrkit, "keygen", "--key-file", self.key_file], check=False)
        assert made.returncode == 0, made.stderr
        self.write_config()

    def encrypt_for_a_recipient(self) -> None:
        """`pitrkit keygen --recipient` and `--signing` beside the configuration, as the
        server user, and the configuration of a database host: the recipient's public
        key and the signing key (before anything is archived)."""
        keys = {name: self.config.with_name(name) for name in ("recipient.key", "recipient.pub", "signing.key",
                                                               "signing.pub")}
        for option, private, public in (("--recipient", "recipient.key", "recipient.pub"),
                                        ("--signing", "signing.key", "signing.pub")):
            made = pgharness.run_as_server_user([self.pitrkit, "keygen", option, keys[private], keys[public]],
                                                check=False)
            assert made.returncode == 0, made.stderr
        self.encryption = (f'mode = "recipient"\npublic_key_file = "{keys["recipient.pub"]}"\n'
                           f'signing_key_file = "{keys["signing.key"]}"\n')
        self.write_config()

    def as_restore_host(self, postgres: pgharness.Cluster | None = None) -> None:
        """Rewrite the recipient-mode configuration as a restore host's: the private key
        and the verify key only."""
        self.encryption = (f'mode = "recipient"\nprivate_key_file = "{self.config.with_name("recipient.key")}"\n'
                           f'verify_key_file = "{self.config.with_name("signing.pub")}"\n')
        self.write_config(postgres=postgres)

    @property
    def url(self) -> str:
        """repository.url: the archive directory (a subclass may store elsewhere)."""
        return f"file://{self.archive}"

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_RUNTIME_DIR": str(self.runtime_dir)}

    def command(self, *args: str) -> str:
        return " ".join([shlex.quote(str(self.pitrkit)), "--config", shlex.quote(str(self.config)), *args])

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`pitrkit --config CONFIG ARGS` as the server user, the way a DBA runs it with
        `sudo -u postgres`; the caller judges the exit code."""
        return pgharness.run_as_server_user([self.pitrkit, "--config", self.config, *args],
                                            env=self.env, timeout=timeout, check=False)

    @property
    def archive_command(self) -> str:
        return self.command("wal-push", "%p")

    @property
    def restore_command(self) -> str:
        return self.command("wal-fetch", "%f", "%p")

    def stored(self, name: str) -> Path:
        """The archive file of a WAL file name (the layout of docs/archive-format.md)."""
        if name.endswith(".history"):
            return self.archive / "wal" / name
        return self.archive / "wal" / name[:16] / name

    def pids(self, command: str) -> list[int]:
        """Running `pitrkit --config CONFIG COMMAND` processes of this configuration."""
        wanted = [b"--config", os.fsencode(str(self.config)), command.encode()]
        return [pid for pid, argv in running_processes()
                if any(argv[i : i + 3] == wanted for i in range(len(argv)))]

    def agent_pids(self) -> list[int]:
        """Running `pitrkit agent` processes for this configuration."""
        return self.pids("agent")

    def stop_agents(self) -> None:
        for pid in self.agent_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def running_processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process running now, as /proc shows them; one that exits
    while being read is left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
        except OSError:
            continue
        yield int(entry), argv


def parse_logfmt(line: str) -> dict[str, str]:
    """key=value pairs; values with spaces are JSON-quoted (see events.LogfmtFormatter)."""
    fields, rest = {}, line
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)
            rest = rest[end:]
        else:
            value, _, rest = rest.partition(" ")
        fields[key.strip()] = value
        rest = rest.lstrip()
    return fields


@dataclass
class PitrkitService:
    """A long-running `pitrkit COMMAND` (wal-receive, daemon) as the server user, started
    the way systemd starts it: from /, no stdin, stdout and stderr (its logfmt event log,
    see pitrkit/events.py) appended to `log_path`. A subclass names the command."""

    command: ClassVar[str]
    # How long an event, and a stop, may take by default.
    event_timeout: ClassVar[float] = 60
    stop_timeout: ClassVar[float] = 120
    setup: PitrkitSetup
    log_path: Path
    process: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        user = pgharness.server_user()
        drop = ({"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
                if user.switch else {})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.setup.pitrkit, "--config", self.setup.config, self.command], cwd="/",
                env=pgharness.server_env(self.setup.env), stdin=subprocess.DEVNULL, stdout=log, stderr=log, **drop)

    def log(self) -> str:
        return self.log_path.read_text()

    def events(self, name: str) -> list[dict[str, str]]:
        """The fields of every `event=NAME` line logged so far."""
        return [parse_logfmt(line) for line in self.log().splitlines() if f" event={name} " in f"{line} "]

    def wait_for_event(self, name: str, count: int = 1, timeout: float | None = None) -> list[dict[str, str]]:
        """The events NAME once there are at least `count`; the process must keep running."""
        def seen() -> list[dict[str, str]]:
            assert self.process.poll() is None, f"{self.command} exited {self.process.returncode}:\n{self.log()}"
            found = self.events(name)
            return found if len(found) >= count else []
        return pgharness.wait_for(seen, timeout or self.event_timeout, interval=0.1,
                                  what=f"{count} event={name} in {self.log_path}")

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        """`how` (SIGTERM: systemd's stop); the exit code."""
        self.process.send_signal(how)
        return self.process.wait(self.stop_timeout)

    def assert_no_traceback(self) -> str:
        """The log, printed (pytest shows it for failing tests), which has no traceback."""
        log = self.log()
        print(f"===== {self.log_path.name} =====\n{log}")
        assert "Traceback" not in log, log
        return log

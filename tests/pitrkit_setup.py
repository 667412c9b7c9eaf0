"""A pitrkit archive and configuration for integration tests, wired the way a DBA wires
them: a TOML file, `archive_command` / `restore_command` calling the installed `pitrkit`
executable as the server user."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

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

    def write_config(self, agent: bool = True, compression: str = "zstd", retries: int = 1,
                     postgres: pgharness.Cluster | None = None) -> None:
        """Write the configuration; with `postgres`, a [postgres] section naming that
        cluster (for backup-push), reached over its unix socket as the superuser."""
        text = (
            f'[repository]\nurl = "{self.url}"\nretries = {retries}\ntimeout = 10\n'
            f'[compression]\nalgorithm = "{compression}"\n'
            # A short idle timeout: agents of finished tests go away by themselves.
            f"[agent]\nenabled = {'true' if agent else 'false'}\nidle_timeout = 5\n"
        )
        if postgres is not None:
            conninfo = (f"host={postgres.socket_dir} port={postgres.port} "
                        f"user={pgharness.SUPERUSER} dbname=postgres")
            text += (f'[postgres]\npgdata = "{postgres.pgdata}"\nbindir = "{postgres.install.bindir}"\n'
                     f'conninfo = "{conninfo}"\n')
        if self.key_file is not None:
            text += f'[encryption]\nmode = "key"\nkey_file = "{self.key_file}"\n'
        self.config.write_text(text)
        pgharness.give_to_server_user(self.config)

    def encrypt_with_a_new_key(self) -> None:
        """`pitrkit keygen` a key file beside the configuration, as the server user, and
        rewrite the configuration to use it (before anything is archived)."""
        self.key_file = self.config.with_name("archive.key")
        made = pgharness.run_as_server_user([self.pitrkit, "keygen", "--key-file", self.key_file], check=False)
        assert made.returncode == 0, made.stderr
        self.write_config()

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

    def agent_pids(self) -> list[int]:
        """Running `pitrkit agent` processes for this configuration."""
        wanted = [b"--config", os.fsencode(str(self.config)), b"agent"]
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    argv = file.read().split(b"\0")
            except OSError:
                continue
            if any(argv[i : i + 3] == wanted for i in range(len(argv))):
                pids.append(int(entry))
        return pids

    def stop_agents(self) -> None:
        for pid in self.agent_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

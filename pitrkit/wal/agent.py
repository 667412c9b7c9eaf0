"""`pitrkit agent`: the long-lived process that serves wal-push and wal-fetch for one
configuration file, so that each call PostgreSQL makes skips Python's imports and the
archive's set-up (wal/agent_client.py explains the why, and holds the client side).
`restore --start` also asks it, with `wal-prefetch`, to spool the first segments
recovery will need before the server starts; that request only schedules reading ahead.

Safety rests on three rules. The agent answers only after the work is done exactly as
in-process (same functions, same exit codes), so "exit 0" still means durable. It serves
only its own user: over a socket in a directory private to that user, created under its
own umask (0077, whatever umask PostgreSQL or a shell passed on), and only to a peer
whose uid the kernel reports (SO_PEERCRED) as its own. And any doubt (another agent holds
the lock, the request is for another configuration, the agent was disabled) is answered
by declining, which makes the client do the work itself.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from pitrkit.config import Config, load
from pitrkit.errors import PitrkitError, UsageError, outcome
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import WalFileKind, WalFileName
from pitrkit.storage.archive import Archive, wal_key
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.repositories import Repository, open_all
from pitrkit.wal import agent_client
from pitrkit.wal.catch_up import CatchUp
from pitrkit.wal.fetch import (
    read_from_first,
    refuse_past,
    remove_spooled,
    remove_stale_spool,
    restore,
    restore_spooled,
    spool,
)
from pitrkit.wal.lookahead import Ahead, file_stamp, ready_after, segments_after
from pitrkit.wal.push import push_to_every, stored_era
from pitrkit.wal.time_indexer import TimeIndexer, indexes_here

log = logging.getLogger(__name__)

_MAX_REQUEST = 64 << 10
# The `--NAME=VALUE` options each request may carry (wal/agent_client.py).
_OPTIONS = {b"wal-fetch": ("until", "era"), b"wal-prefetch": ("era",)}
# The most segments one wal-prefetch names (the look-ahead is at most 64, see config.py).
_MAX_PREFETCH = 64
_REQUEST_TIMEOUT = 10.0
# Marks a log record that is about the agent's own work, not the request being served.
_NOT_THE_REQUESTS = "pitrkit_not_the_requests"


class _RequestLog(logging.Handler):
    """Collects the log lines of the request being served on this thread, so that they
    reach PostgreSQL's log through the client's stderr, as they would in-process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("pitrkit: %(levelname)s: %(message)s"))
        self.lines = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.lines, "value", None)
        if lines is not None and not getattr(record, _NOT_THE_REQUESTS, False):
            lines.append(self.format(record))


class _Serving(NamedTuple):
    """What one configuration needs to serve requests; replaced whole on reload."""

    repositories: list[Repository]
    pushes: Ahead
    fetches: Ahead
    # Directories segments have been spooled into (see fetch.spool).
    spool_directories: set[Path]
    # Indexes what was pushed, after the answer, in a process of its own (wal/time_indexer.py);
    # None: no indexing.
    indexer: TimeIndexer | None = None
    # Drains the optional repositories' spools (wal/catch_up.py); None: no optional one.
    catching_up: CatchUp | None = None

    @property
    def archive(self) -> Archive:
        """The first repository's archive: what settings the agent reads come from."""
        return self.repositories[0].archive

    def close(self, wait: bool) -> None:
        if self.catching_up is not None:
            self.catching_up.close(wait)
        self.pushes.close(wait)
        self.fetches.close(wait)
        if self.indexer is not None:
            self.indexer.close()


class Agent:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.encoded_path = os.fsencode(str(config_path))
        self.socket_path = agent_client.socket_path(self.encoded_path)
        self._stamp: tuple[int, ...] | None = None
        self._serving: _Serving | None = None
        self._config_error: PitrkitError | None = None
        self._reload_lock = threading.Lock()
        self._active = 0
        self._active_lock = threading.Lock()
        self._request_log = _RequestLog()
        logging.getLogger("pitrkit").addHandler(self._request_log)

    # -- configuration ---------------------------------------------------------------------

    def _current(self) -> _Serving:
        """What serves the configuration as it is on disk now: a changed file is
        reloaded before the next request is served, never in the middle of one."""
        stamp = file_stamp(self.config_path)
        with self._reload_lock:
            if stamp is None or stamp != self._stamp:
                self._stamp = stamp
                self._close(wait=False)
                self._config_error = None
                try:
                    # Pushes ahead one at a time, as zstd already uses every core; fetches
                    # two at a time, so that storage latency and decompression overlap.
                    repositories = open_all(load(self.config_path))
                    self._serving = _Serving(repositories, Ahead(1, "push-ahead"),
                                             Ahead(2, "fetch-ahead", discard=remove_spooled), set(),
                                             TimeIndexer(self.config_path), CatchUp(repositories))
                except PitrkitError as exc:
                    self._config_error = exc
            if self._config_error is not None:
                raise self._config_error
            assert self._serving is not None
            return self._serving

    def _close(self, wait: bool) -> None:
        if self._serving is not None:
            self._serving.close(wait)
            self._serving = None

    def _config(self) -> Config | None:
        try:
            return self._current().archive.config
        except PitrkitError:
            return None

    # -- serving -----------------------------------------------------------------------

    def serve(self) -> str:
        # Everything the agent creates (directory, lock, socket, spooled segments) is
        # its user's alone; the socket's mode, above all, is what bind() leaves it.
        os.umask(0o077)
        directory = os.path.dirname(self.socket_path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not agent_client.private_directory(directory):
            raise PitrkitError(f"agent socket directory {directory} is not private to this user; not serving")
        lock = os.open(self.socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "another agent serves this configuration"
        config = self._config()
        if config is None or not config.agent.enabled:
            return "the agent is disabled or the configuration is invalid; not serving"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(self.socket_path)  # a stale socket: its agent is gone, we hold the lock
            except FileNotFoundError:
                pass
            listener.bind(self.socket_path)
            listener.listen(16)
            self._accept_until_idle(listener)
        finally:
            self._close(wait=True)
            # Unlink before closing: a client must never connect to a socket nobody serves.
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            listener.close()
            os.close(lock)
        return "agent stopped"

    def _accept_until_idle(self, listener: socket.socket) -> None:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            config = self._config()
            if config is None or not config.agent.enabled:
                return
            listener.settimeout(config.agent.idle_timeout)
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                if self._active == 0 and not self._busy_ahead():
                    return
                continue
            threading.Thread(target=self._serve_connection, args=(connection,), daemon=True).start()

    def _busy_ahead(self) -> bool:
        serving = self._serving
        return serving is not None and bool(serving.pushes.pending() or serving.fetches.pending() or (
            serving.catching_up is not None and serving.catching_up.pending()))

    def _serve_connection(self, connection: socket.socket) -> None:
        with self._active_lock:
            self._active += 1
        try:
            with connection:
                peer = _peer_uid(connection)
                if peer != os.geteuid():
                    # Only reachable if someone opened up the directory or the socket:
                    # the reply to another user is no reply (its client works in-process).
                    log.warning("agent: refused a connection from uid %s: it serves uid %d only", peer, os.geteuid())
                    return
                connection.settimeout(_REQUEST_TIMEOUT)
                request = _receive(connection)
                later: _Later = []
                reply = self._answer(request, later) if request is not None else b""
                connection.settimeout(None)
                connection.sendall(reply)
            # Work ahead is scheduled once the caller has its answer: a job started
            # before the reply would compete with it for the interpreter (and a core),
            # and recovery waits for every fetch.
            for job in later:
                job()
        except OSError as exc:
            log.debug("agent: connection failed: %s", exc)
        finally:
            with self._active_lock:
                self._active -= 1

    def _answer(self, request: list[bytes], later: _Later | None = None) -> bytes:
        """The reply to one request; b"" declines it (the client then works in-process).
        Work ahead that the request calls for goes into `later`, to run once the reply
        is sent; without `later`, it is scheduled before this returns."""
        if len(request) < 3 or request[0] != agent_client.PROTOCOL or request[1] != self.encoded_path:
            return b""
        command = request[2]
        split = _options([os.fsdecode(arg) for arg in request[3:]], _OPTIONS.get(command, ()))
        if split is None:
            return b""
        args, named = split
        if (command, len(args)) not in ((b"wal-push", 1), (b"wal-fetch", 2)) and not (
                command == b"wal-prefetch" and 2 <= len(args) <= 1 + _MAX_PREFETCH):
            return b""
        era = named.get("era", "1")
        if not era.isdigit() or int(era) < 1:
            return b""
        config = self._config()
        if config is not None and not config.agent.enabled:
            return b""

        def work() -> str:
            serving = self._current()  # raises the configuration's error, if any
            if command == b"wal-push":
                return _push(serving, Path(args[0]), later)
            if command == b"wal-prefetch":
                return _prefetch(serving, Path(args[0]), args[1:], int(era))
            return _fetch(serving, args[0], Path(args[1]), later, named.get("until"), int(era))

        lines: list[str] = []
        self._request_log.lines.value = lines
        try:
            code, message = outcome(work, fetching=command == b"wal-fetch")
        finally:
            self._request_log.lines.value = None
        text = "".join(f"{line}\n" for line in [*lines, message] if line)
        return f"{code}\0{text}".encode()


def _options(args: list[str], allowed: tuple[str, ...]) -> tuple[list[str], dict[str, str]] | None:
    """A request's arguments split into the positional ones and its `--NAME=VALUE`
    options (each of `allowed`, at most once); None if it has any other."""
    positional = [arg for arg in args if not arg.startswith("--")]
    found: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--"):
            name, separator, value = arg[2:].partition("=")
            if name not in allowed or not separator or not value or name in found:
                return None
            found[name] = value
    return positional, found


_Later = list[Callable[[], None]]


def _then(later: _Later | None, what: str, job: Callable[[], None]) -> None:
    """Run `job`, work ahead that follows a request, once the request is answered (into
    `later`), or now without `later`; its failure is the agent's own (see
    _beside_the_request)."""
    def guarded() -> None:
        with _beside_the_request(what):
            job()

    if later is None:
        guarded()
    else:
        later.append(guarded)


def _push(serving: _Serving, path: Path, later: _Later | None = None) -> str:
    repositories = serving.repositories
    ahead = _done_ahead(serving.pushes, path, file_stamp(path))
    if ahead is None or not _still_stored(repositories, path, ahead[1]):
        summary = push_to_every(repositories, path)
    else:
        summary = ahead[0]

    def push_ahead() -> None:
        for ready in ready_after(path, serving.archive.config.agent.lookahead):
            serving.pushes.schedule(ready, file_stamp(ready), functools.partial(_push_ahead, repositories, ready))

    _then(later, f"pushing ahead after {path.name}", push_ahead)
    indexer = serving.indexer
    if indexer is not None and any(indexes_here(each.archive.config) for each in repositories):
        _then(later, f"asking for {path.name}'s time index", functools.partial(indexer.notify, path.name))
    return summary


def _push_ahead(repositories: list[Repository], path: Path) -> tuple[str, dict[str, ArchiveIdentity]]:
    """A push done ahead, and the archive.json each required repository began with."""
    identities = {each.name: each.archive.identity(fresh=True) for each in repositories if each.required}
    return push_to_every(repositories, path), identities


def _still_stored(repositories: list[Repository], path: Path, pushed_into: dict[str, ArchiveIdentity]) -> bool:
    """A push done ahead can be up to a minute old, and an archive may have been wiped,
    re-created, unmounted or swapped for another since, or the object removed;
    PostgreSQL recycles the segment once we say 0. So in every required repository,
    archive.json is read again (gone: ArchiveMissing, the push is refused) and must be
    the one the push went into, and the object must be there. (An optional repository
    that lost it since is caught up like any that missed a file.)"""
    for repository in repositories:
        if not repository.required:
            continue
        archive = repository.archive
        if archive.identity(fresh=True) != pushed_into.get(repository.name):
            return False
        try:
            stored_era(archive, path).stat(wal_key(WalFileName.parse(path.name)))
        except ObjectNotFound:
            return False
    return True


def _fetch(serving: _Serving, name: str, destination: Path, later: _Later | None = None,
           until: str | None = None, era: int = 1) -> str:
    """`until`: the restore plan's last segment; nothing past it is served or read ahead.
    `era`: the archive's era the WAL is of (wal-fetch --era)."""
    archive = serving.archive
    directory = destination.parent
    refuse_past(name, until)
    spooled = _done_ahead(serving.fetches, (name, directory, era), None)
    summary = restore_spooled(spooled, name, destination) if spooled is not None else None
    if summary is None:
        summary = restore(read_from_first(serving.repositories, name, era), name, destination)

    def read_ahead() -> None:
        segment_size = _segment_size(serving.repositories)
        if segment_size is None:
            return
        _spool_ahead(serving, directory, segments_after(name, segment_size, archive.config.agent.lookahead, until),
                     era)

    if archive.config.agent.lookahead:
        _then(later, f"reading ahead after {name}", read_ahead)
    return summary


def _segment_size(repositories: list[Repository]) -> int | None:
    """The WAL segment size, from the first repository that answers."""
    for repository in repositories:
        try:
            return repository.archive.identity().wal_segment_size
        except PitrkitError:
            continue
    return None


def _prefetch(serving: _Serving, directory: Path, names: list[str], era: int = 1) -> str:
    """`wal-prefetch DIRECTORY NAME...`, from `restore` before it starts the server: read
    the first segments recovery will ask for into the spool in `directory` (the restored
    pg_wal) while the server starts up, so that even the first wal-fetch is a rename.
    The spool serves a segment only to a wal-fetch of that very name into that directory,
    on the rules of every segment read ahead (wal/lookahead.py)."""
    lookahead = serving.archive.config.agent.lookahead
    segments = [name for name in names if _is_segment(name)][:lookahead]
    if not directory.is_absolute() or not segments:
        return "nothing to read ahead"
    _spool_ahead(serving, directory, segments, era)
    return f"reading ahead {segments[0]} and {len(segments) - 1} more into {directory}"


def _is_segment(name: str) -> bool:
    try:
        return WalFileName.parse(name).kind == WalFileKind.SEGMENT
    except UsageError:
        return False


def _spool_ahead(serving: _Serving, directory: Path, names: list[str], era: int) -> None:
    if directory not in serving.spool_directories:
        serving.spool_directories.add(directory)
        remove_stale_spool(directory)
    for upcoming in names:
        job = functools.partial(spool, serving.repositories, upcoming, directory, era)
        serving.fetches.schedule((upcoming, directory, era), None, job)


@contextmanager
def _beside_the_request(what: str) -> Iterator[None]:
    """Scheduling work ahead once the request's own work is done. It can fail (the pool
    shut down by a reload while this request ran, a fault while choosing what to do)
    without changing the request's answer: its exit code and stderr are the request's,
    and the failure goes to the agent's log only."""
    try:
        yield
    except Exception as exc:
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc, extra={_NOT_THE_REQUESTS: True})


def _done_ahead(ahead: Ahead, key: object, stamp: object):
    """The result of work done ahead for `key`, or None if there is none to trust (none
    was done, it is stale, or it failed: the caller then does the work itself, so that a
    failure is reported exactly as without look-ahead)."""
    future = ahead.take(key, stamp)
    if future is None:
        return None
    try:
        return future.result()
    except Exception as exc:
        log.debug("work done ahead for %s failed (%s); doing it again", key, exc)
        return None


_PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel recorded it at connect()."""
    _, uid, _ = _PEER_CREDENTIALS.unpack(
        connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size))
    return uid


def _receive(connection: socket.socket) -> list[bytes] | None:
    chunks, size = [], 0
    while chunk := connection.recv(65536):
        size += len(chunk)
        if size > _MAX_REQUEST:
            return None
        chunks.append(chunk)
    return b"".join(chunks).split(b"\0")


def serve(config_path: Path) -> str:
    return Agent(config_path).serve()


def start(config_path: Path) -> None:
    """Start an agent for `config_path` in the background, fully detached (its own
    session, no terminal, stdio on /dev/null), and return at once. If another agent
    wins the race, the newcomer sees the lock and exits.

    Not when the socket directory exists but is not private to this user (another user
    made it first, it is a symlink, or it is open to others): no agent could serve from
    it, and the caller keeps working in-process, with this one warning per call."""
    directory = os.path.dirname(agent_client.socket_path(os.fsencode(str(config_path))))
    if os.path.lexists(directory) and not agent_client.private_directory(directory):
        log.warning("agent socket directory %s is not a directory private to uid %d (another user's, a symlink, or "
                    "open to others): working without the agent; remove it or set XDG_RUNTIME_DIR",
                    directory, os.geteuid())
        return
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:  # the intermediate child: detach, fork the agent, exit
        os.setsid()
        os.chdir("/")  # hold no directory busy (an unmount of the caller's cwd must work)
        if os.fork() == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            for descriptor in (0, 1, 2):
                os.dup2(devnull, descriptor)
            os.execv(sys.executable, [sys.executable, "-m", "pitrkit", "--config", str(config_path), "agent"])
    finally:
        os._exit(0)

"""Catch-up of the optional repositories: what waits in a repository's spool
(wal/spool.py) is pushed to it in WAL order, each spooled file removed only once the
repository holds it durably; when the spool overflowed, the WAL the repository lacks is
copied from a required repository (read with that repository's keys, stored with the
optional one's, through the same checks as wal-push), found by comparing their WAL
folders from the first name it lacks on.

The agent (while it runs) and `pitrkit daemon` run it in a background thread
(`CatchUp`), never on PostgreSQL's path. A round is bounded (`ROUND_FILES` files per
repository), logged, and stops at the repository's first failure: it is still down,
and the next round tries again. One process at a time works on a spool (a lock file in
it); another finding it locked leaves it alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Sequence

from pitrkit.errors import PitrkitError, UsageError
from pitrkit.hookspecs import ObjectNotFound
from pitrkit.postgres.wal import WalFileKind, WalFileName
from pitrkit.storage.archive import WAL_PREFIX, Archive, wal_key
from pitrkit.storage.repositories import Repository
from pitrkit.wal import spool
from pitrkit.wal.push import push_data, stored_era

log = logging.getLogger(__name__)

# Files one round pushes or copies to one repository: 64 segments are a gigabyte.
ROUND_FILES = 64
# Seconds between rounds in the agent and the daemon.
EVERY = 10.0
_LOCK = ".lock"


def catch_up(repositories: Sequence[Repository], limit: int = ROUND_FILES) -> list[str]:
    """One round for every optional repository with a spool; returns what it did, a
    line per repository that had anything waiting."""
    done = []
    for repository in repositories:
        if repository.required or spool.directory(repository.settings) is None:
            continue
        try:
            line = _round(repositories, repository, limit)
        except PitrkitError as exc:
            line = f"repository {repository.name!r}: catching up: {exc}"
            log.warning("%s", line)
        if line:
            done.append(line)
    return done


def _round(repositories: Sequence[Repository], repository: Repository, limit: int) -> str:
    folder = spool.directory(repository.settings)
    assert folder is not None
    try:
        lock = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return ""  # nothing was ever spooled for it
    except OSError as exc:
        raise PitrkitError(f"cannot open {folder / _LOCK}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return ""  # another process is catching it up
        pushed, drained = _drain(repository, limit)
        copied = _copy_behind(repositories, repository, limit - pushed) if drained else 0
    finally:
        os.close(lock)
    if not pushed and not copied:
        return ""
    line = (f"repository {repository.name!r}: caught up {pushed} spooled WAL file(s) and copied {copied} from a "
            "required repository")
    log.info("%s", line)
    return line


def _drain(repository: Repository, limit: int) -> tuple[int, bool]:
    """Push the spool's files in order; (how many, whether the spool is now empty)."""
    waiting = spool.waiting(repository.settings)
    pushed = 0
    for path in waiting[:limit]:
        try:
            file = WalFileName.parse(path.name)
        except UsageError:
            log.warning("repository %r: %s in its spool is not a WAL file name; leaving it", repository.name, path)
            return pushed, False
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PitrkitError(f"cannot read {path}: {exc.strerror}") from None
        try:
            # The era the push stores it in (`pitrkit upgrade`): its partial is there too.
            era = stored_era(repository.archive, path)
            if not _overtaken(era, file):
                push_data(repository.archive, file, data)
            if file.kind == WalFileKind.SEGMENT:
                _remove_partial(era, file)
        except PitrkitError as exc:
            log.warning("repository %r: %s is still spooled: %s", repository.name, file.name, exc)
            return pushed, False
        spool.remove(path)
        pushed += 1
    return pushed, len(waiting) <= limit


def _overtaken(archive: Archive, file: WalFileName) -> bool:
    """A spooled partial whose full segment the repository has since stored: pushing it
    would only leave a leftover partial beside the segment."""
    if file.kind != WalFileKind.PARTIAL:
        return False
    try:
        archive.stat(wal_key(WalFileName.parse(file.segment)))
    except ObjectNotFound:
        return False
    return True


def _remove_partial(archive: Archive, file: WalFileName) -> None:
    """The segment's partial, if the repository holds one, as wal-receive removes it:
    the full segment is durable there now, and wins anyway."""
    try:
        archive.delete(wal_key(WalFileName.parse(f"{file.name}.partial")))
    except ObjectNotFound:
        pass


def _copy_behind(repositories: Sequence[Repository], repository: Repository, limit: int) -> int:
    """When the spool overflowed: copy what `repository` lacks from the first required
    repository that answers, from the first name it lacks on. The marker is removed
    only once everything is copied."""
    claimed = spool.claim_behind(repository.settings)
    if not claimed:
        return 0
    since = spool.behind_since(repository.settings) or ""
    faults = []
    for source in repositories:
        if not source.required:
            continue
        try:
            # Era by era (`pitrkit upgrade`): each era's WAL into the same era.
            missing = [(era, name) for era in source.archive.eras()
                       for name in _missing(era, repository.archive.era(era.era_number), since)]
        except PitrkitError as exc:
            faults.append(f"{source.name}: {exc}")
            continue
        copied = 0
        for era, name in missing[:limit]:
            # A history file has no page header to say its cluster: its era's does.
            push_data(repository.archive, WalFileName.parse(name), era.read_wal(name),
                      origin=era.era_record.system_identifier)
            copied += 1
        if len(missing) <= limit:
            spool.release(claimed)
        return copied
    raise PitrkitError(f"no required repository could list its WAL ({'; '.join(faults)})")


def _missing(source: Archive, target: Archive, since: str) -> list[str]:
    """The WAL file names `source` holds from `since` on (in WAL order) that `target`
    does not. Raises for a `target` that cannot answer: its listing must be complete."""
    source.identity(fresh=True)
    target.identity(fresh=True)  # an unmounted target lists nothing: everything would look missing
    top = source.list_folder(WAL_PREFIX)
    names = [_last(info.key) for info in top.objects]
    stored = {_last(info.key) for info in target.list_folder(WAL_PREFIX).objects}
    for folder in top.folders:
        # A folder is one timeline's log, "<TLI><LOG>": names from `since` on are in
        # the folders that sort at or after its first 16 characters.
        if _last(folder.rstrip("/")) < since[:16]:
            continue
        names += [_last(info.key) for info in source.list_folder(folder).objects]
        stored |= {_last(info.key) for info in target.list_folder(folder).objects}
    missing = []
    for name in sorted(names):
        if name < since or name in stored:
            continue
        try:
            WalFileName.parse(name)
        except UsageError:
            continue  # not WAL (a stray object): not ours to copy
        missing.append(name)
    return missing


def _last(key: str) -> str:
    return key.rpartition("/")[2]


class CatchUp:
    """Rounds of `catch_up` every `EVERY` seconds in a thread of their own, until
    `close`. Nothing to do (no optional repository): no thread."""

    def __init__(self, repositories: Sequence[Repository], every: float = EVERY) -> None:
        self._repositories = repositories
        self._every = every
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        if any(not each.required for each in repositories):
            self._thread = threading.Thread(target=self._run, name="pitrkit-catch-up", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                catch_up(self._repositories)
            except Exception as exc:  # the thread's end would end catch-up for good
                log.warning("catching up failed: %s: %s", type(exc).__name__, exc)

    def pending(self) -> bool:
        """Whether an optional repository has WAL waiting or is behind: the agent keeps
        running for it rather than leave the spool to the next agent."""
        for repository in self._repositories:
            if repository.required:
                continue
            try:
                if spool.waiting(repository.settings) or spool.behind_since(repository.settings) is not None:
                    return True
            except PitrkitError:
                return True
        return False

    def close(self, wait: bool = True) -> None:
        self._stopped.set()
        if wait and self._thread is not None:
            self._thread.join()

"""The agent's background time indexer: after a push is acknowledged, the agent tells a
child process the segment's name, and the child indexes it (catalog/time_index.py) by
reading it back from the archive, at idle CPU priority (SCHED_IDLE where Linux offers
it, else nice 19), so that it runs only on CPU time the push path leaves unused.

Telling is one non-blocking write of a line to the child's stdin: the push never waits
for the index. A notice the pipe cannot take (the child lagging far behind) is dropped;
the next notice for the same folder indexes every segment of it still missing, and
`pitrkit catalog rebuild` indexes whatever remains. The child ends when the agent
closes its stdin (the agent stopping or reloading its configuration).

With several repositories, each keeps its own index (`catalog/times`, `catalog/xids`):
the child indexes the segment in every repository that holds it and can be read here.
An optional repository with WAL waiting in its spool is left out until it has caught
up; the next notice for the same folder, or `catalog rebuild`, indexes what it then holds.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

from pitrkit.config import Config
from pitrkit.postgres.wal import WalFileKind, WalFileName

log = logging.getLogger(__name__)

_KEEP_CARRIED = 16


def indexes_here(config: Config) -> bool:
    """Whether this host indexes what it pushes: `[agent] time_index`, and the archive
    readable here (in recipient mode a host with only the public key cannot read the WAL
    back; `catalog rebuild` indexes it where the private key is)."""
    encryption = config.encryption
    return config.agent.time_index and not (encryption.mode == "recipient" and encryption.private_key_file is None)


class TimeIndexer:
    """The agent's side: starts the child on the first notice, restarts it if it died."""

    def __init__(self, config_path: Path) -> None:
        self._config_path = config_path
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def notify(self, name: str) -> None:
        """Ask for `name` (a segment just archived) to be indexed; never blocks."""
        if WalFileName.parse(name).kind != WalFileKind.SEGMENT:
            return
        with self._lock:
            if self._child is None or self._child.poll() is not None:
                self._child = subprocess.Popen(
                    [sys.executable, "-m", "pitrkit.wal.time_indexer", str(self._config_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                )
                assert self._child.stdin is not None
                os.set_blocking(self._child.stdin.fileno(), False)
            assert self._child.stdin is not None
            try:
                os.write(self._child.stdin.fileno(), f"{name}\n".encode())
            except BlockingIOError:
                log.debug("time indexer busy: %s left for the next notice or catalog rebuild", name)
            except BrokenPipeError:
                self._child = None  # restarted at the next notice

    def close(self) -> None:
        with self._lock:
            if self._child is not None and self._child.stdin is not None:
                self._child.stdin.close()
            self._child = None


def _idle_priority() -> None:
    """Set by the child on itself, not by a preexec_fn: the agent has threads, and a
    preexec_fn runs Python between fork and exec, where a lock another thread held at the
    fork can deadlock the child (and for that long the child shows the agent's command
    line, which process listings then count as a second agent)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _batches(stream: int) -> list[str]:
    """The names waiting on `stream`: blocks for the first, then takes what is there."""
    data = b""
    while True:
        chunk = os.read(stream, 1 << 16)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n") and not select.select([stream], [], [], 0)[0]:
            break
    return data.decode(errors="replace").split()


def main(config_path: str) -> None:
    # Imported only when run as the child process, off the push path.
    from pitrkit.catalog.archived_wal import ArchivedWal
    from pitrkit.catalog.time_index import Carried, index_wal
    from pitrkit.config import load
    from pitrkit.errors import PitrkitError
    from pitrkit.storage.repositories import open_all
    from pitrkit.wal import spool

    _idle_priority()
    logging.basicConfig(format="pitrkit time indexer: %(levelname)s: %(message)s", level=logging.WARNING)
    repositories = [each for each in open_all(load(Path(config_path))) if indexes_here(each.archive.config)]
    several = len(repositories) > 1
    carried: dict[str, Carried] = {each.name: {} for each in repositories}
    stdin = sys.stdin.fileno()
    while names := _batches(stdin):
        for repository in repositories:
            archive = repository.archive
            try:
                if not repository.required and (spool.waiting(repository.settings)
                                                or spool.behind_since(repository.settings) is not None):
                    continue  # catching up: indexed once it holds the WAL
                # The newest era's: the cluster that runs now pushes there (`pitrkit upgrade`);
                # a late push of an earlier era's cluster is indexed by `catalog rebuild`.
                archive = archive.era(archive.identity().current_era.era)
                wal = ArchivedWal(archive)
                folders = set()
                for name in names:
                    file = WalFileName.parse(name)
                    folders.add((file.timeline, wal.segno(name) // wal.per_log))
                index_wal(archive, wal, folders=folders, carried=carried[repository.name])
            except (PitrkitError, ValueError, OSError) as exc:
                where = f" in repository {repository.name!r}" if several else ""
                log.warning("indexing %s%s: %s", ", ".join(names[:3]), where, exc)
            own = carried[repository.name]
            for stale in list(own)[:-_KEEP_CARRIED]:
                del own[stale]


if __name__ == "__main__":
    main(sys.argv[1])

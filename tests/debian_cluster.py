"""Clusters of Debian's postgresql-common, the most common PostgreSQL installation there
is: made with `pg_createcluster` (configuration in /etc/postgresql/<major>/<cluster>/,
sockets in /var/run/postgresql), run with `pg_ctlcluster`, removed with `pg_dropcluster`.
Each gets a unique name and a private PG_CLUSTER_CONF_ROOT, so the machine's own
clusters (15/main) are never touched."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

import pgharness

DEBIAN_MAJOR = 15
DEBIAN_BINDIR = Path(f"/usr/lib/postgresql/{DEBIAN_MAJOR}/bin")
DEBIAN_SOCKETS = Path("/var/run/postgresql")


def debian_install(pg_installs: list[pgharness.PgInstall]) -> pgharness.PgInstall:
    """Debian's PostgreSQL 15 with postgresql-common; skipped without them, failed under CI."""
    install = next((each for each in pg_installs if each.bindir == DEBIAN_BINDIR), None)
    if install is None or shutil.which("pg_createcluster") is None:
        message = f"Debian's postgresql-common and postgresql-{DEBIAN_MAJOR} (apt-get install postgresql-15)"
        if os.environ.get("CI"):
            pytest.fail(f"required under CI: {message}", pytrace=False)
        pytest.skip(f"needs {message}")
    return install


class DebianCluster:
    """A cluster of Debian's postgresql-common: pg_createcluster, pg_ctlcluster, pg_dropcluster
    with PG_CLUSTER_CONF_ROOT under `root`; `sql` through a pgharness.Cluster on its socket."""

    def __init__(self, install: pgharness.PgInstall, root: Path) -> None:
        self.root = root
        self.name = f"pitrkit-{os.getpid()}-{secrets.token_hex(3)}"
        self.conf_root = pgharness.make_server_dir(root / "etc")
        self.env = {**os.environ, "PG_CLUSTER_CONF_ROOT": str(self.conf_root)}
        self.cluster = pgharness.Cluster(install, root)
        self.cluster.socket_dir = DEBIAN_SOCKETS
        self.etc = self.conf_root / str(DEBIAN_MAJOR) / self.name

    def tool(self, *argv: str | Path) -> None:
        done = subprocess.run([str(each) for each in argv], env=self.env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"

    def create(self, *initdb_options: str) -> None:
        self.tool("pg_createcluster", str(DEBIAN_MAJOR), self.name, "-u", pgharness.server_user().name,
                  "-d", self.cluster.pgdata, "-l", self.cluster.logfile, "-p", str(self.cluster.port),
                  "--", *initdb_options)

    def start(self) -> None:
        self.tool("pg_ctlcluster", str(DEBIAN_MAJOR), self.name, "start")

    def drop(self) -> None:
        subprocess.run(["pg_ctlcluster", str(DEBIAN_MAJOR), self.name, "stop", "-m", "immediate"], env=self.env,
                       capture_output=True, timeout=120, check=False)
        subprocess.run(["pg_dropcluster", str(DEBIAN_MAJOR), self.name], env=self.env, capture_output=True,
                       timeout=120, check=False)

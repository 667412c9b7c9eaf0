"""docs/quickstart.md as written: every command block of the page, in order, run in one
shell on a stock Debian cluster, so that the page cannot drift from the code again.

The only liberties taken are the ones a test machine forces, each made by substituting
text, never by editing a step: the page's absolute paths (/opt/pitrkit, /etc/pitrkit,
/var/lib/pitrkit, /srv/pg-restored, /usr/local/bin, /etc/systemd/system) move under a
temporary root; the cluster `15/main` on port 5432 becomes a cluster of a unique name on
a free port (made with `pg_createcluster`, Debian's defaults: peer authentication on the
socket, the configuration in a private PG_CLUSTER_CONF_ROOT); the restore's port 5499 and
the status page's port 9187 become free ports (the latter by a `listen` line in the
page's `[daemon]` section). These machines have no sudo and no systemd as PID 1, so a
`sudo` on the PATH runs `sudo -u USER ...` through runuser and anything else as is, and a
`systemctl` maps `restart postgresql@V-C` to `pg_ctlcluster V C restart` and
`enable --now pitrkit` to the unit's ExecStart run in the background as its User.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgharness
from debian_cluster import DEBIAN_MAJOR, DebianCluster, debian_install

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
QUICKSTART = CHECKOUT / "docs" / "quickstart.md"


def command_blocks(markdown: str) -> list[str]:
    """The page's indented code blocks (four spaces, after a blank line, outside lists),
    dedented, in order."""
    blocks: list[list[str]] = []
    previous_blank = True
    current: list[str] | None = None
    for line in markdown.splitlines():
        if current is not None and (line.startswith("    ") or not line.strip()):
            current.append(line)
            continue
        if current is not None:
            blocks.append(current)
            current = None
        if line.startswith("    ") and previous_blank:
            current = [line]
        previous_blank = not line.strip()
    if current is not None:
        blocks.append(current)
    return [textwrap.dedent("\n".join(block)).strip("\n") + "\n" for block in blocks]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SUDO = """#!/bin/sh
# sudo for a test machine without it: `sudo -u USER cmd...` through runuser, keeping the
# environment as sudo's env_keep would keep the variables the test set; else run as is.
if [ "$1" = "-u" ]; then user="$2"; shift 2; exec runuser -u "$user" -- "$@"; fi
exec "$@"
"""

SYSTEMCTL = """#!/bin/sh
# systemctl for a machine without systemd as PID 1: what the quickstart asks of it.
set -e
case "$1" in
  daemon-reload) exit 0 ;;
  restart)
    unit="${{2#postgresql@}}"; version="${{unit%%-*}}"; cluster="${{unit#*-}}"
    exec pg_ctlcluster "$version" "$cluster" restart ;;
  enable)
    [ "$2" = "--now" ] && [ "$3" = "pitrkit" ] || {{ echo "systemctl shim: $*" >&2; exit 1; }}
    unit={unit_dir}/pitrkit.service
    user=$(sed -n 's/^User=//p' "$unit")
    command=$(sed -n 's/^ExecStart=//p' "$unit" | sed {substitutions})
    runuser -u "$user" -- sh -c "exec $command" >{root}/daemon.log 2>&1 &
    echo $! >{root}/daemon.pid
    exit 0 ;;
esac
echo "systemctl shim: $*" >&2; exit 1
"""


class Quickstart:
    """The page turned into one shell script for a temporary root and a given cluster."""

    def __init__(self, root: Path, cluster: DebianCluster, restore_port: int, status_port: int) -> None:
        self.root = root
        self.paths = {
            "/opt/pitrkit": root / "opt" / "pitrkit",
            "/etc/pitrkit": root / "etc" / "pitrkit",
            "/var/lib/pitrkit": root / "var" / "lib" / "pitrkit",
            "/srv/pg-restored": root / "srv" / "pg-restored",
            "/usr/local/bin": root / "usr" / "local" / "bin",
            "/etc/systemd/system": root / "etc" / "systemd" / "system",
            f"/var/lib/postgresql/{DEBIAN_MAJOR}/main": cluster.cluster.pgdata,
        }
        self.words = {
            f"postgresql@{DEBIAN_MAJOR}-main": f"postgresql@{DEBIAN_MAJOR}-{cluster.name}",
            "--port 5499": f"--port {restore_port}",
            "-p 5499": f"-p {restore_port}",
            "127.0.0.1:9187": f"127.0.0.1:{status_port}",
            "\n[daemon]\n": f'\n[daemon]\nlisten = "127.0.0.1:{status_port}"\n',
        }

    def substitute(self, text: str) -> str:
        for old, new in self.paths.items():
            text = re.sub(re.escape(old) + r"(?=[/\s'\"]|$)", str(new), text, flags=re.MULTILINE)
        for old, new in self.words.items():
            text = text.replace(old, new)
        return text

    def sed_program(self) -> str:
        """The path substitutions as sed arguments, for the unit's ExecStart."""
        return " ".join(f"-e 's|{old}/|{new}/|g'" for old, new in self.paths.items())


@pytest.fixture
def stock_cluster(pg_installs, harness_tmp: Path) -> Iterator[DebianCluster]:
    """A cluster as `pg_createcluster` makes it, Debian's defaults untouched (peer
    authentication on the socket), started."""
    if os.geteuid() != 0:
        pytest.skip("runs the quickstart's sudo steps, which need root")
    root = pgharness.make_server_dir(Path(tempfile.mkdtemp(prefix="qs", dir=harness_tmp)))
    made = DebianCluster(debian_install(pg_installs), pgharness.make_server_dir(root / "cluster"))
    made.create()
    made.start()
    yield made
    print(f"===== {made.name} server log =====\n{made.cluster.log()}")
    made.drop()


def stop_everything_under(root: Path) -> None:
    """The daemon the systemctl shim started, a restored server the page did not stop, and
    the agents archive_command started for this configuration."""
    pid_file = root / "daemon.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
    restored = root / "srv" / "pg-restored"
    if (restored / "postmaster.pid").exists():
        pgharness.run_as_server_user([f"/usr/lib/postgresql/{DEBIAN_MAJOR}/bin/pg_ctl", "stop", "-m", "immediate",
                                      "-D", restored], check=False)
    subprocess.run(["pkill", "-TERM", "-f", f"{root}/etc/pitrkit/pitrkit.toml"], check=False)


def test_the_quickstart_as_written_reaches_a_verified_restore(stock_cluster, harness_tmp):
    root = stock_cluster.root.parent
    page = Quickstart(root, stock_cluster, restore_port=free_port(), status_port=free_port())
    blocks = command_blocks(QUICKSTART.read_text())
    assert len(blocks) >= 10, "the quickstart's command blocks were not found"
    script = "set -euo pipefail\n" + "".join(f"echo '>>> block {n}' >&2\n{page.substitute(block)}"
                                             for n, block in enumerate(blocks, 1))
    # What a stock server has and the test root lacks: its /etc/systemd/system, sudo's
    # /usr/local/bin on the PATH; and the shims for what these machines lack.
    pgharness.make_server_dir(root / "etc")
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    local_bin = root / "usr" / "local" / "bin"
    local_bin.mkdir(parents=True)
    shims = root / "shims"
    shims.mkdir()
    (shims / "sudo").write_text(SUDO)
    (shims / "systemctl").write_text(SYSTEMCTL.format(unit_dir=page.paths["/etc/systemd/system"], root=root,
                                                      substitutions=page.sed_program()))
    for shim in shims.iterdir():
        shim.chmod(0o755)
    # The page runs in the directory of a source checkout ("the commands below run in that
    # directory"), with the cluster Debian's tools and libpq choose by default.
    source = root / "src"
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".tox", ".venv", ".pytest_cache", ".hypothesis"))
    environment = {
        **stock_cluster.env,
        "PATH": f"{shims}:{local_bin}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PGCLUSTER": f"{DEBIAN_MAJOR}/{stock_cluster.name}",
        "PGPORT": str(stock_cluster.cluster.port),
        "HOME": str(root),
    }
    environment.pop("PITRKIT_CONFIG", None)
    started = time.monotonic()
    try:
        done = subprocess.run(["bash", "-c", script], cwd=source, env=environment, capture_output=True,
                              text=True, timeout=1200, check=False)
        took = time.monotonic() - started
        print(f"quickstart as written: {took:.0f} s\n===== stdout =====\n{done.stdout}\n===== stderr =====\n"
              f"{done.stderr}")
        daemon_log = root / "daemon.log"
        if daemon_log.exists():
            print(f"===== daemon =====\n{daemon_log.read_text()}")
        assert done.returncode == 0, done.stderr[-3000:]
        # Step 6: the table dropped "by accident" is back, as it was at the target.
        assert re.search(r"^\s*created\s*$", done.stdout, re.MULTILINE) and "(1 row)" in done.stdout
        # Step 7: the daemon served its metrics and status judged the archive.
        assert "pitrkit_status" in done.stdout
    finally:
        stop_everything_under(root)

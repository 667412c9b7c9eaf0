"""The plugin guide's worked example and the plugin template, as a plugin author meets
them (docs/plugins.md): docs/examples/pitrkit-sqlite installed with pip into a venv
beside pitrkit, its conformance tests run there, and the guide's installation check
(init, wal-push, wal-fetch, an absent segment, a missing database) run as the server user
against a real PostgreSQL cluster's WAL; then `pitrkit plugin-template` writes a new
plugin, installed the same way, whose first pytest run names every method left to write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import pgharness
from pitrkit_setup import PitrkitSetup

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = PROJECT_ROOT / "docs" / "examples" / "pitrkit-sqlite"
SEGMENT = "000000010000000000000001"  # initdb's first WAL segment


@pytest.fixture(scope="module")
def venv(harness_tmp: Path) -> pgharness.RunnableInstall:
    """pitrkit and pitrkit-sqlite installed from their sources, as the guide says, with
    pytest for their tests."""
    made = pgharness.RunnableInstall.create(PROJECT_ROOT, harness_tmp / "pitrkit-sqlite", extra_packages=[EXAMPLE])
    subprocess.run([made.python, "-m", "pip", "install", "--quiet", "pytest>=8"], check=True, timeout=600,
                   umask=0o022)
    return made


def outside_env() -> dict[str, str]:
    """This environment without what points Python or pytest at the checkout: the venv's
    own installs must be what runs."""
    return {name: value for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}


def run_pytest(venv: pgharness.RunnableInstall, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv.python, "-m", "pytest", "-p", "no:cacheprovider"],
                          cwd=directory, env=outside_env(), capture_output=True, text=True, timeout=600)


def test_the_example_passes_the_conformance_suite(venv, tmp_path):
    tests = shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")
    done = run_pytest(venv, tests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and " failed" not in done.stdout


@dataclass
class SqliteSetup(PitrkitSetup):
    @property
    def url(self) -> str:
        return f"sqlite://{self.archive}/archive.db"


def test_the_guides_installation_check(venv, cluster, server_tmp):
    setup = SqliteSetup(pitrkit=venv.pitrkit, archive=pgharness.make_server_dir(server_tmp / "srv", mode=0o750),
                        config=server_tmp / "pitrkit.toml",
                        runtime_dir=pgharness.make_server_dir(server_tmp / "run", mode=0o700))
    try:
        pgharness.run_as_server_user(["touch", setup.archive / "archive.db"])
        primary = cluster()
        setup.init(primary)
        segment = primary.pgdata / "pg_wal" / SEGMENT

        pushed = setup.run("-v", "wal-push", str(segment))
        assert pushed.returncode == 0, pushed.stderr
        assert f"pitrkit: INFO: archived {SEGMENT}: {segment.stat().st_size} bytes, stored " in pushed.stderr

        fetched = setup.run("-v", "wal-fetch", SEGMENT, str(server_tmp / "seg"))
        assert fetched.returncode == 0, fetched.stderr
        assert f"pitrkit: INFO: restored {SEGMENT}: {segment.stat().st_size} bytes" in fetched.stderr
        assert (server_tmp / "seg").read_bytes() == segment.read_bytes()

        absent = setup.run("wal-fetch", "000000010000000000000002", str(server_tmp / "seg2"))
        assert (absent.returncode, absent.stderr) == (
            1, f"pitrkit: 000000010000000000000002 is not in the archive {setup.url}\n")

        setup.stop_agents()  # the last fetch may have started one: the next runs in its own process
        (setup.archive / "archive.db").rename(setup.archive / "moved.db")
        fault = setup.run("wal-fetch", SEGMENT, str(server_tmp / "seg3"))
        assert fault.returncode == 126, fault.stderr
        assert fault.stderr.endswith(f"{setup.url}: unable to open database file\n"), fault.stderr
    finally:
        setup.stop_agents()


def test_a_new_plugins_first_pytest_run_names_what_is_left(venv, tmp_path):
    written = subprocess.run([venv.pitrkit, "plugin-template", "s3", "--dir", tmp_path / "pitrkit-s3"],
                             env=outside_env(), capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    subprocess.run([venv.python, "-m", "pip", "install", "--quiet", "--no-deps", tmp_path / "pitrkit-s3"],
                   check=True, timeout=600, umask=0o022)
    try:
        done = run_pytest(venv, tmp_path / "pitrkit-s3")
        print(done.stdout)
        assert done.returncode == 1, done.stdout + done.stderr
        left = done.stdout.partition(" left to implement ")[2].splitlines()[1:7]
        assert left == [f"S3Storage.{method} is not written yet (pitrkit_s3/storage.py)"
                        for method in ("put", "get", "stat", "list", "list_folder", "delete")], done.stdout
        assert ("E           get('absent'): expected ObjectNotFound, got NotImplementedError: S3Storage.get is not "
                "written yet (pitrkit_s3/storage.py)") in done.stdout
    finally:
        subprocess.run([venv.python, "-m", "pip", "uninstall", "--quiet", "--yes", "pitrkit-s3"], check=True,
                       timeout=120)

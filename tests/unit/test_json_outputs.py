"""Golden files for the `--json` output of the read commands: what they print for one
fixed archive, pinned byte for byte, so that a restructuring of the package (modules
moved, renderers split from collection) is seen to change nothing a script reads.

Each case runs `python -m pitrkit --config <file> <command> --json` as a subprocess and
compares its standard output, byte for byte, with `tests/unit/golden/<case>.json`, and
its exit code with the case's. Only the command line is used: this file imports nothing
from pitrkit, because module paths are about to change. The archive is built by
synthetic_archive.py (which may use pitrkit's internals, and moves with them). A
subprocess rather than `cli.main` in-process: the time zone and working directory the
commands need (below) are then theirs alone, not the test process's.

A golden changes only with a deliberate change of output, committed together with that
change and saying why. A restructuring that changes a golden has changed pitrkit's output.

Regenerating (after a deliberate change; review `git diff tests/unit/golden/` before
committing):

    PITRKIT_REGENERATE_GOLDEN=1 python -m pytest tests/unit/test_json_outputs.py

writes every golden from the current code; those cases then skip, saying so.

The archive (`build_archive`; 1 GiB segments, 4 per WAL folder, segment n stored at
T0 + n minutes, T0 = 2026-11-23 12:00 UTC):

* timeline 1: segments 1..12, segment 6 missing (a gap); backups A (segments 2..3),
  E (4..5) and B (8..9); D (11..12) is unfinished: no manifest, its part stored at
  T0 + 12 min;
* `catalog/backups.json` and the indexes of timeline 1's sealed folders, as `catalog
  rebuild` writes them, made before timeline 2 and backup C existed: C is not in the
  catalog (a verify warning), timeline 2's sealed folder has no index;
* `catalog/retention.json` names E: an interrupted retention run was removing it;
* timeline 2 branches off timeline 1 in segment 10 (`00000002.history`): segments 10..14
  and a `.partial` of segment 15 (three pages of WAL); backup C (12..13);
* `[retention]` keep_last = 2, daily = 1 in the configuration: a dry run would remove
  A, the interrupted E, the unfinished D and timeline 1's WAL before B (segments 1..5
  and 7).

A second archive (`build_chain_archive`), for chains of incremental backups, same
segments and times, `[retention]` the same:

* timeline 1: segments 1..16; a full backup F (segments 2..3), incrementals I1 on F
  (5..6) and I2 on I1 (8..9), a full X (11..12), and an incremental Y (13..14) on XA, a
  backup the archive does not hold: Y's chain is broken;
* `catalog/backups.json` and the sealed folders' indexes as `catalog rebuild` writes them;
* restore-plan --latest passes over Y (a note says why) and plans from X; an LSN in
  segment 10 plans from I2 with its chain F, I1; verify fails Y naming XA; a dry run keeps
  I2 and X (last 2) and their ancestors F and I1, and removes Y and segment 1.

What makes the output the same on every run:

* every store time (the mtimes of the stored files) and every time in a manifest is
  fixed, and in the past: the one judgement against "now" in the covered output, D's
  age against retention's unfinished_grace (6h), has had one answer since
  2026-11-23 18:12 UTC;
* TZ is a fixed offset, +05:30 with no daylight saving time (needing no time zone
  database): messages show local times, and retention counts calendar days, in it;
* the archive's URL is in verify's output, so the configuration reaches the archive as
  `file:///proc/self/cwd/archive` and the commands run in the test's directory: the
  same URL on every run, wherever tmp_path is (Linux: /proc);
* no [postgres] conninfo: `restore-plan --latest` asks no server;
* each case runs on its own copy of the archive, so the order of the cases is free.

The wall clock, and what is left out for it. pitrkit reads "now" with
datetime.now(UTC) where it needs it, with no way to set it from outside, and this test
neither adds one nor mocks the clock:

* `retention apply --dry-run --json` states `decided_at`, the moment it decided, to the
  microsecond. That one value is checked rather than compared: a UTC time between the
  start and the end of the command, in msgspec's form; the golden holds `<decided_at>` in
  its place, and everything else (kept, removed, why, bytes) is compared byte for byte.
* `status --json` is left out: it is mostly "now" seen from the archive. `generated_at`
  (to the microsecond), `age_seconds` of the last backup, the last WAL and the newest
  partial (to the millisecond), and the checks' messages ("12d21h ago") change on every
  run or every hour, and no archive makes them stable. (Its server part would be: no
  conninfo is reported as "server not asked: [postgres] conninfo is not set".)
* `verify --json` reports no timings (only counts), so it is covered, with and without
  --deep. synthetic_archive.py stores WAL segments as fake bytes and its `.partial`
  names another system in its page header, so --deep reports each as damaged (and the
  backups that need them as not restorable): the golden pins that report as well.

`backup-push --json` writes a backup, and is no read command: not covered here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.synthetic_archive import SyntheticArchive, lsn, stored_at

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "PITRKIT_REGENERATE_GOLDEN"
# A fixed offset in POSIX form: no DST and no tz database. Not UTC, so that a local time
# shown as UTC (or the reverse) changes the output.
TIMEZONE = "<+0530>-05:30"
ARCHIVE_URL = "file:///proc/self/cwd/archive"  # the commands run in tmp_path
CONFIG = f"""\
[repository]
url = "{ARCHIVE_URL}"
retries = 0

[retention]
keep_last = 2
daily = 1
"""

# (golden file name, arguments after --config, exit code); the chains archive's cases,
# whose names end in "-chain", run on build_chain_archive's.
CASES = [
    ("backup-list", ["backup-list", "--json"], 0),
    ("wal-list", ["wal-list", "--json"], 0),
    ("wal-list-timeline-2", ["wal-list", "--timeline", "2", "--json"], 0),
    # T0 + 4:30 in the same offset as TZ: on timeline 1 only, before the gap.
    ("restore-plan-time", ["restore-plan", "--to", "2026-11-23 17:34:30+05:30", "--json"], 0),
    # lsn(11, 0x2000), on timelines 1 and 2: --timeline decides.
    ("restore-plan-lsn", ["restore-plan", "--lsn", "2/C0002000", "--timeline", "2", "--json"], 0),
    ("restore-plan-latest", ["restore-plan", "--latest", "--json"], 0),
    # Epoch 1, xid 1000; placed by nothing in the archive: to the end of timeline 1's unbroken WAL.
    ("restore-plan-xid", ["restore-plan", "--xid", "4294968296", "--exclusive", "--timeline", "1", "--json"], 0),
    ("restore-plan-immediate", ["restore-plan", "--immediate", "--json"], 0),
    ("verify", ["verify", "--json"], 1),  # the gap is an error
    ("verify-deep", ["verify", "--deep", "--json"], 1),
    ("retention-dry-run", ["retention", "apply", "--dry-run", "--json"], 0),
    ("backup-list-chain", ["backup-list", "--json"], 0),
    ("restore-plan-latest-chain", ["restore-plan", "--latest", "--json"], 0),
    # lsn(10, 0x2000): after I2 is consistent, before X is.
    ("restore-plan-lsn-chain", ["restore-plan", "--lsn", "2/80002000", "--json"], 0),
    ("verify-chain", ["verify", "--json"], 1),  # Y's chain is broken
    ("retention-dry-run-chain", ["retention", "apply", "--dry-run", "--json"], 0),
]

# The only value compared by shape rather than bytes (see the module docstring).
_DECIDED_AT = re.compile(rb'^  "decided_at": "(?P<value>[^"]*)",$', re.MULTILINE)
_DECIDED_AT_GOLDEN = b'  "decided_at": "<decided_at>",'


def build_archive(root: Path) -> None:
    """The archive of the module's docstring, at `root`."""
    store = SyntheticArchive(root)
    store.segments(1, 1, 12)
    store.drop_segment(1, 6)
    store.backup("A", 1, 2, 3, at=stored_at(3))
    store.backup("E", 1, 4, 5, at=stored_at(5))
    store.backup("B", 1, 8, 9, at=stored_at(9))
    store.backup("D", 1, 11, 12, manifest=False, at=stored_at(12))
    store.rebuild_catalog()
    store.being_removed(["E"], decided_at=stored_at(20))
    store.history(2, [(1, lsn(10, 0x1000))], at=stored_at(10) - timedelta(seconds=15))
    store.segments(2, 10, 14)
    store.partial(2, 15, pages=3, at=stored_at(15))
    store.backup("C", 2, 12, 13, at=stored_at(13))


def build_chain_archive(root: Path) -> None:
    """The chains archive of the module's docstring, at `root`."""
    store = SyntheticArchive(root)
    store.segments(1, 1, 16)
    store.backup("F", 1, 2, 3, at=stored_at(3))
    store.backup("I1", 1, 5, 6, at=stored_at(6), parent="F")
    store.backup("I2", 1, 8, 9, at=stored_at(9), parent="I1")
    store.backup("X", 1, 11, 12, at=stored_at(12))
    store.backup("Y", 1, 13, 14, at=stored_at(14), parent="XA", chain=["X", "XA"])
    store.rebuild_catalog()


@pytest.fixture(scope="module")
def built_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    roots = {}
    for kind, build in (("standard", build_archive), ("chains", build_chain_archive)):
        roots[kind] = tmp_path_factory.mktemp("golden") / "archive"
        build(roots[kind])
    return roots


@pytest.fixture
def workdir(tmp_path: Path, built_archives: dict[str, Path], request: pytest.FixtureRequest) -> Path:
    """tmp_path holding the case's archive (`archive/`, as ARCHIVE_URL names it from
    here) and the configuration (`pitrkit.toml`). Each case gets its own copy of the
    archive, store times included, so that no case can see what another one did to it."""
    built = built_archives["chains" if request.node.callspec.params["case"].endswith("-chain") else "standard"]
    shutil.copytree(built, tmp_path / "archive", copy_function=shutil.copy2)
    (tmp_path / "pitrkit.toml").write_text(CONFIG)
    return tmp_path


def environment() -> dict[str, str]:
    """The commands' environment: pitrkit imported from this checkout, TIMEZONE, UTF-8
    output, and no PITRKIT_* variable of the caller's."""
    variables = {name: value for name, value in os.environ.items() if not name.startswith("PITRKIT_")}
    variables.update(
        TZ=TIMEZONE,
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUTF8="1",
    )
    return variables


def run_pitrkit(workdir: Path, arguments: list[str]) -> subprocess.CompletedProcess[bytes]:
    """`python -m pitrkit --config pitrkit.toml ...`, run in `workdir`."""
    return subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(workdir / "pitrkit.toml"), *arguments],
                          cwd=workdir, env=environment(), capture_output=True, timeout=120, check=False)


def without_decided_at(output: bytes, started: datetime, ended: datetime) -> bytes:
    """`output` with its one `decided_at` replaced by the golden's placeholder, after
    checking it is the time the command ran."""
    [match] = list(_DECIDED_AT.finditer(output))
    value = match["value"].decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", value), value
    decided = datetime.fromisoformat(value)
    assert started <= decided <= ended, (started, value, ended)
    return output[: match.start()] + _DECIDED_AT_GOLDEN + output[match.end():]


@pytest.mark.parametrize(("case", "arguments", "exit_code"), CASES, ids=[case for case, _, _ in CASES])
def test_json_output_is_the_golden(workdir: Path, case: str, arguments: list[str], exit_code: int) -> None:
    started = datetime.now(UTC)
    ran = run_pitrkit(workdir, arguments)
    ended = datetime.now(UTC)
    assert ran.returncode == exit_code, ran.stderr.decode(errors="replace")
    output = ran.stdout
    if case.startswith("retention-dry-run"):
        output = without_decided_at(output, started, ended)
    golden = GOLDEN / f"{case}.json"
    if os.environ.get(REGENERATE) == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(output)
        pytest.skip(f"{REGENERATE}=1: wrote {golden.relative_to(PROJECT_ROOT)}; review the diff before committing")
    assert golden.exists(), f"no golden {golden}: create it with {REGENERATE}=1 (see the module docstring)"
    expected = golden.read_bytes()
    if output != expected:
        # The text diff pytest shows; the bytes are what must match.
        assert output.decode(errors="replace") == expected.decode(errors="replace")
    assert output == expected


def test_every_golden_belongs_to_a_case() -> None:
    """A golden whose case was removed or renamed would otherwise pin nothing, silently."""
    assert sorted(path.name for path in GOLDEN.glob("*")) == sorted(f"{case}.json" for case, _, _ in CASES)


def test_the_commands_run_this_checkout(tmp_path: Path) -> None:
    """Another checkout's pitrkit (an editable install elsewhere) would make every golden
    compare that code's output instead."""
    ran = subprocess.run([sys.executable, "-c", "import pitrkit; print(pitrkit.__file__)"], cwd=tmp_path,
                         env=environment(), capture_output=True, timeout=60, check=True)
    assert Path(ran.stdout.decode().strip()).resolve().is_relative_to(PROJECT_ROOT), ran.stdout

"""wal_runs -- the timing loop benchmarks/gcs.py and benchmarks/s3.py share: synthetic
WAL segments, `pitrkit wal-push` / `wal-fetch` per segment as PostgreSQL runs them, with
and without the agent, and a module's import time from `python -X importtime`.

Run on its own, it measures what several repositories cost (issue 16: two repositories
≤ 1.3x one on wal-push through the agent), on local file:// repositories in a scratch
directory, one repository and N alternating in the same invocation:

    python3 benchmarks/wal_runs.py --repositories 2 [--segments 20] [--rounds 3] [--optional]

It prints, per round and as medians, ms per wal-push and the agent's CPU ms per push
(less sensitive to a loaded host than wall time), and the ratio N / one.
`--optional`: the added repositories are `required = false` with a spool (the "fast
local + cloud DR" recipe), else required.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit"))  # synthetic segment headers
from segments import long_header  # noqa: E402

SEGMENT = 16 << 20


def make_segments(directory: Path, count: int) -> list[Path]:
    text = b"INSERT INTO events VALUES (42, 'a row of an OLTP workload');\n"
    paths = []
    for segno in range(1, count + 1):
        body = long_header(pageaddr=segno * SEGMENT) + os.urandom(2 << 20)
        body += text * ((SEGMENT - len(body)) // len(text) + 1)
        path = directory / f"00000001000000000000{segno:04X}"
        path.write_bytes(body[:SEGMENT])
        paths.append(path)
    return paths


def pitrkit(config: Path, runtime: Path, *args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), *args], check=True,
                   env={**env, "XDG_RUNTIME_DIR": str(runtime)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_variant(name: str, url: str, agent: bool, segments: list[Path], work: Path,
                env: dict[str, str], also: Sequence[str] = (), optional: bool = False) -> tuple[float, float]:
    """Median ms per segment of wal-push, then of wal-fetch (the first call, which starts
    the agent, is left out). `also`: more repositories' URLs, written to as well
    (`optional`: as `required = false` ones)."""
    pushes, fetches, _ = measure(name, [url, *also], agent, segments, work, env, optional)
    return statistics.median(pushes[1:]) * 1000, statistics.median(fetches[1:]) * 1000


def measure(name: str, urls: Sequence[str], agent: bool, segments: list[Path], work: Path, env: dict[str, str],
            optional: bool = False) -> tuple[list[float], list[float], float | None]:
    """Seconds of each wal-push and wal-fetch, and the agent's CPU seconds over the
    pushes after the first (None without the agent)."""
    variant = work / name
    runtime = variant / "run"
    runtime.mkdir(parents=True, mode=0o700)
    config = variant / "pitrkit.toml"
    if len(urls) == 1:
        repositories = f'[repository]\nurl = "{urls[0]}"\n'
    else:
        repositories = "".join(
            f'[[repository]]\nurl = "{url}"\n'
            + (f'required = false\nspool = "{variant / "spool"}"\n' if optional and number else "")
            for number, url in enumerate(urls))
    config.write_text(f'{repositories}[compression]\nalgorithm = "zstd"\n'
                      f"[agent]\nenabled = {'true' if agent else 'false'}\nidle_timeout = 30\n")
    # No cluster behind the synthetic segments to run `pitrkit init` on: init's own code.
    subprocess.run([sys.executable, "-c", "import sys; from pitrkit.storage.repositories import open_all; "
                    "from pitrkit.config import load; from segments import init_archive; "
                    "[init_archive(each.archive) for each in open_all(load(sys.argv[1]))]", str(config)],
                   check=True, env={**env, "PYTHONPATH": str(HERE.parent / "tests" / "unit")})
    pushes = [pitrkit(config, runtime, "wal-push", str(segments[0]), env=env)]
    agent_cpu = _cpu_seconds(config)
    pushes += [pitrkit(config, runtime, "wal-push", str(path), env=env) for path in segments[1:]]
    cpu = None if agent_cpu is None or (after := _cpu_seconds(config)) is None else after - agent_cpu
    fetches = [pitrkit(config, runtime, "wal-fetch", path.name, str(variant / "fetched"), env=env)
               for path in segments]
    stop_agent(config)
    return pushes, fetches, cpu


def _agent_pids(config: Path) -> list[int]:
    wanted = [b"--config", os.fsencode(config), b"agent"]
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            pids.append(int(entry))
    return pids


def _cpu_seconds(config: Path) -> float | None:
    """User + system CPU time of this configuration's agent (its threads included)."""
    for pid in _agent_pids(config):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def stop_agent(config: Path) -> None:
    """Stop the agent of this configuration (found by its exact command line), if any."""
    for pid in _agent_pids(config):
        os.kill(pid, signal.SIGTERM)


def import_ms(module: str) -> float:
    """Cumulative import time of `module` (median of 5 runs), in ms."""
    runs = []
    for _ in range(5):
        report = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                capture_output=True, text=True, check=True).stderr
        line = [ln for ln in report.splitlines() if re.search(rf"\|\s+{re.escape(module)}$", ln)][-1]
        runs.append(int(line.split("|")[1]) / 1000)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="wal-push through the agent: one local repository against several")
    parser.add_argument("--repositories", type=int, default=2, help="how many repositories to compare one with")
    parser.add_argument("--segments", type=int, default=20, help="segments pushed per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--optional", action="store_true", help="the added repositories are required = false")
    args = parser.parse_args()
    if not 2 <= args.repositories <= 8 or not 2 <= args.segments <= 1000 or not 1 <= args.rounds <= 20:
        parser.error("--repositories 2-8, --segments 2-1000, --rounds 1-20")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="pitrkit-wal-runs-") as scratch:
        work = Path(scratch)
        (work / "segments").mkdir()
        segments = make_segments(work / "segments", args.segments)
        rows: dict[int, list[tuple[float, float]]] = {1: [], args.repositories: []}
        for round_ in range(args.rounds):
            for count in rows:
                urls = []
                for number in range(count):
                    root = work / f"r{round_}-{count}" / f"repo{number}"
                    root.mkdir(parents=True)
                    urls.append(f"file://{root}")
                pushes, _, cpu = measure(f"v{round_}-{count}", urls, True, segments, work, env, args.optional)
                wall, cpu_ms = statistics.median(pushes[1:]) * 1000, (cpu or 0) * 1000 / (len(pushes) - 1)
                rows[count].append((wall, cpu_ms))
                print(f"round {round_ + 1}: {count} repositor{'y' if count == 1 else 'ies'}: {wall:.1f} ms per "
                      f"wal-push, agent CPU {cpu_ms:.1f} ms per push", flush=True)
    one, several = rows[1], rows[args.repositories]
    wall = [b[0] / a[0] for a, b in zip(one, several, strict=True)]
    cpu = [b[1] / a[1] for a, b in zip(one, several, strict=True) if a[1]]
    print(f"{args.repositories} repositories / 1 ({'optional' if args.optional else 'required'} added): "
          f"wall {statistics.median(wall):.2f}x, agent CPU {statistics.median(cpu) if cpu else float('nan'):.2f}x "
          f"(median of {args.rounds} rounds of {args.segments} segments)")


if __name__ == "__main__":
    main()

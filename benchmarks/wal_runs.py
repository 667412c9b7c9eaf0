"""wal_runs -- the timing loop benchmarks/gcs.py and benchmarks/s3.py share: synthetic
WAL segments, `pitrkit wal-push` / `wal-fetch` per segment as PostgreSQL runs them, with
and without the agent, and a module's import time from `python -X importtime`."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
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
                env: dict[str, str]) -> tuple[float, float]:
    """Median ms per segment of wal-push, then of wal-fetch (the first call, which starts
    the agent, is left out)."""
    variant = work / name
    runtime = variant / "run"
    runtime.mkdir(parents=True, mode=0o700)
    config = variant / "pitrkit.toml"
    config.write_text(f'[repository]\nurl = "{url}"\n[compression]\nalgorithm = "zstd"\n'
                      f"[agent]\nenabled = {'true' if agent else 'false'}\nidle_timeout = 30\n")
    # No cluster behind the synthetic segments to run `pitrkit init` on: init's own code.
    subprocess.run([sys.executable, "-c", "import sys; from pitrkit.storage.archive import Archive; "
                    "from pitrkit.config import load; from segments import init_archive; "
                    "init_archive(Archive(load(sys.argv[1])))", str(config)],
                   check=True, env={**env, "PYTHONPATH": str(HERE.parent / "tests" / "unit")})
    pushes = [pitrkit(config, runtime, "wal-push", str(path), env=env) for path in segments]
    fetches = [pitrkit(config, runtime, "wal-fetch", path.name, str(variant / "fetched"), env=env)
               for path in segments]
    stop_agent(config)
    return statistics.median(pushes[1:]) * 1000, statistics.median(fetches[1:]) * 1000


def stop_agent(config: Path) -> None:
    """Stop the agent of this configuration (found by its exact command line), if any."""
    wanted = [b"--config", os.fsencode(config), b"agent"]
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            os.kill(int(entry), signal.SIGTERM)


def import_ms(module: str) -> float:
    """Cumulative import time of `module` (median of 5 runs), in ms."""
    runs = []
    for _ in range(5):
        report = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                capture_output=True, text=True, check=True).stderr
        line = [ln for ln in report.splitlines() if re.search(rf"\|\s+{re.escape(module)}$", ln)][-1]
        runs.append(int(line.split("|")[1]) / 1000)
    return statistics.median(runs)

#!/usr/bin/env python3
"""fetch_calls -- what one restore_command call costs when the agent has the segment
ready, for ways of starting pitrkit, side by side in one invocation.

On the rig `backup_restore.py --keep` leaves (its archive holds the WAL it archived),
as the server user, with only the standard library:

    runuser -u postgres -- python3 benchmarks/fetch_calls.py --root /srv/pitrkit-bench-br

For each segment of the rig's archive (after the first few), every variant runs one
`wal-fetch` of it through `/bin/sh -c`, as PostgreSQL's startup process does, into its own
scratch `pg_wal` (so each variant has its own agent spool there), after removing the
previous `RECOVERYXLOG` (PostgreSQL does that before each call), then waits `--replay`
seconds (the segment's replay, during which the agent reads the next ones ahead).
Variants interleave segment by segment. Prints the median and the fastest call of each:
the fastest is close to the call alone, the median includes the machine's load.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import time
from pathlib import Path

FRONT_DOOR = "from pitrkit.entry import run; run()"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/srv/pitrkit-bench-br", help="backup_restore.py's --root")
    ap.add_argument("--skip", type=int, default=2, help="segments of the archive not used")
    ap.add_argument("--segments", type=int, default=30)
    ap.add_argument("--replay", type=float, default=0.15, help="seconds between two calls")
    ap.add_argument("--scratch", default="/tmp/fetch-calls")
    a = ap.parse_args()
    root = Path(a.root)
    config = root / "pitrkit.toml"
    bindir = root / "venv" / "bin"
    variants = {
        "console script (pitrkit)": [str(bindir / "pitrkit")],
        "python -P -c (restore_command)": [str(bindir / "python3"), "-P", "-c", FRONT_DOOR],
    }
    folder = next((root / "pitrkit-archive" / "wal").glob("0000000100000000"))
    names = sorted(path.name for path in folder.iterdir() if len(path.name) == 24)[a.skip:a.skip + a.segments]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(root / "run")}
    scratch = Path(a.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for number in range(len(variants)):
        (scratch / str(number) / "pg_wal").mkdir(parents=True)
    for position, name in enumerate(names):
        for number, (variant, argv) in enumerate(variants.items()):
            data_dir = scratch / str(number)
            (data_dir / "pg_wal" / "RECOVERYXLOG").unlink(missing_ok=True)
            command = shlex.join([*argv, "--config", str(config), "wal-fetch", name, "pg_wal/RECOVERYXLOG"])
            started = time.perf_counter()
            done = subprocess.run(["/bin/sh", "-c", command], cwd=data_dir, env=env, capture_output=True, text=True)
            elapsed = (time.perf_counter() - started) * 1000
            if done.returncode != 0:
                raise SystemExit(f"{variant}: wal-fetch {name} exited {done.returncode}: {done.stderr.strip()}")
            if position:  # the first call of each variant starts its read-ahead
                times[variant].append(elapsed)
        time.sleep(a.replay)
    print(f"{len(names) - 1} calls each, {a.replay} s apart, load {os.getloadavg()[0]:.1f}")
    for variant, each in times.items():
        print(f"{variant}: median {statistics.median(each):.1f} ms, fastest {min(each):.1f} ms")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

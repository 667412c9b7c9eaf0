#!/usr/bin/env python3
"""repositories -- what several repositories cost on wal-push through the agent (issue 16:
two repositories <= 1.3x one), on local file:// repositories in a scratch directory, one
repository and N alternating in the same invocation:

    python3 benchmarks/repositories.py --repositories 2 [--segments 20] [--rounds 3] [--optional]

It prints, per round and as medians, ms per wal-push and the agent's CPU ms per push
(less sensitive to a loaded host than wall time), and the ratio N / one.
`--optional`: the added repositories are `required = false` with a spool (the "fast
local + cloud DR" recipe), else required. The timing loop is wal_runs.py's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wal_runs import make_segments, measure  # noqa: E402


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

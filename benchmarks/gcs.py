#!/usr/bin/env python3
"""gcs -- what a WAL segment costs to push to and fetch from a gs:// archive.

    /opt/pkdev/bin/python benchmarks/gcs.py [--segments 20]

Run with an interpreter that has pitrkit and plugins/pitrkit-gcs installed (and the
plugin's `test` extra, for the emulator). It starts fake-gcs-server on 127.0.0.1, makes
--segments synthetic 16 MiB segments (a real long page header, then 2 MiB of random
bytes and 14 MiB of repetitive text: about 2 MiB once compressed, roughly what a busy
OLTP segment gives), and times, per segment (median of the segments, in ms):

  * `pitrkit wal-push` / `wal-fetch` as separate processes, agent disabled: every call
    starts Python and imports pitrkit and the Google SDK (the cost issue 5 is about);
  * the same with the agent: the first call starts it, later ones hand over to it, and
    the SDK is imported once per agent;
  * the same two variants against a file:// archive, for comparison.

It also reports the import time of `pitrkit_gcs` (the entry point) and of the SDK path
(`pitrkit_gcs.storage`), from `python -X importtime`. Nothing is written into the work
tree; the figures are printed for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins" / "pitrkit-gcs" / "tests"))  # the emulator launcher
from fake_gcs import FakeGcs  # noqa: E402
from wal_runs import import_ms, make_segments, run_variant  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=20)
    args = parser.parse_args()
    print(f"import pitrkit_gcs: {import_ms('pitrkit_gcs'):.0f} ms; "
          f"import pitrkit_gcs.storage (the SDK): {import_ms('pitrkit_gcs.storage'):.0f} ms")
    server = FakeGcs.start()
    try:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": server.endpoint}
        with tempfile.TemporaryDirectory(prefix="pitrkit-gcs-bench-") as scratch:
            work = Path(scratch)
            (work / "segments").mkdir()
            segments = make_segments(work / "segments", args.segments)
            print(f"{'variant':<28} {'wal-push ms':>12} {'wal-fetch ms':>13}")
            for name, agent in [("in-process", False), ("agent", True)]:
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                server.create_bucket(bucket)
                for store, url in [("gs", f"gs://{bucket}/archive"), ("file", f"file://{work / name}-archive")]:
                    if store == "file":
                        (work / f"{name}-archive").mkdir()
                    push, fetch = run_variant(f"{store}-{name}", url, agent, segments, work, env)
                    print(f"{store + ' ' + name:<28} {push:>12.0f} {fetch:>13.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""s3 -- what a WAL segment costs to push to and fetch from an s3:// archive.

    /opt/pkdev/bin/python benchmarks/s3.py [--segments 20]

Run with an interpreter that has pitrkit and plugins/pitrkit-s3 installed (and the
plugin's `test` extra, for moto's server). It starts moto's S3 server on 127.0.0.1 and
times, per synthetic 16 MiB segment (median of the segments, in ms), `pitrkit wal-push`
and `wal-fetch` as separate processes with the agent disabled (every call imports
botocore and makes its client) and through the agent (once per agent), beside a file://
archive; the same loop as benchmarks/gcs.py (benchmarks/wal_runs.py), so the two runs
compare. It also reports the import time of `pitrkit_s3` (the entry point) and of
`pitrkit_s3.storage` (botocore). moto answers from memory on loopback, in Python: its
own cost per request is part of the figures, more than a real S3's CPU would be.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "plugins" / "pitrkit-s3" / "tests"))  # the server launcher
from moto_server import CREDENTIALS, MotoServer, s3_url  # noqa: E402
from wal_runs import import_ms, make_segments, run_variant  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=20)
    args = parser.parse_args()
    print(f"import pitrkit_s3: {import_ms('pitrkit_s3'):.0f} ms; "
          f"import pitrkit_s3.storage (botocore): {import_ms('pitrkit_s3.storage'):.0f} ms")
    server = MotoServer.start()
    try:
        env = {**os.environ, **CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
        with tempfile.TemporaryDirectory(prefix="pitrkit-s3-bench-") as scratch:
            work = Path(scratch)
            (work / "segments").mkdir()
            segments = make_segments(work / "segments", args.segments)
            print(f"{'variant':<28} {'wal-push ms':>12} {'wal-fetch ms':>13}")
            for name, agent in [("in-process", False), ("agent", True)]:
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                server.create_bucket(bucket)
                for store, url in [("s3", s3_url(bucket, "archive", server.endpoint)),
                                   ("file", f"file://{work / name}-archive")]:
                    if store == "file":
                        (work / f"{name}-archive").mkdir()
                    push, fetch = run_variant(f"{store}-{name}", url, agent, segments, work, env)
                    print(f"{store + ' ' + name:<28} {push:>12.0f} {fetch:>13.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

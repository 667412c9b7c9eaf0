#!/usr/bin/env python3
"""time_index -- how fast the WAL time index is built (issue 15: >= 200 MiB/s of WAL per core).

    PYTHONPATH=. /opt/pkdev/bin/python benchmarks/time_index.py [--wal DIR] [--segments N]

Segments: real 16 MiB WAL segments in --wal DIR (e.g. walbench's /srv/walbench/d, or a
copy of a pg_wal); without --wal, a throwaway PostgreSQL 15 cluster runs pgbench
(scale 5, 4 clients) and its segments are used (~1 minute). The segments are pushed
into a fresh file:// archive (zstd level 3, as by default), then, in this one process,
CPU time (time.process_time) is measured for:

* the record reader alone (postgres/walrecords.read_segment) over the segments in memory;
* `index_wal` as `pitrkit catalog rebuild` runs it: each segment read back from the
  archive (decompressed, its digest checked), read, and the folder's index written.

Both are printed as MiB of WAL per CPU second, with the commits found.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pitrkit.catalog.archived_wal import ArchivedWal  # noqa: E402
from pitrkit.catalog.time_index import index_wal  # noqa: E402
from pitrkit.config import CompressionConfig, Config, RepositoryConfig  # noqa: E402
from pitrkit.ops.init import ClusterFacts, initialise  # noqa: E402
from pitrkit.postgres.wal import read_page_header  # noqa: E402
from pitrkit.postgres.walrecords import read_segment  # noqa: E402
from pitrkit.storage.archive import Archive  # noqa: E402
from pitrkit.wal.push import push  # noqa: E402

MIB = 1 << 20


def pgbench_segments(workdir: Path) -> Path:
    """Segments of a pgbench run on a throwaway PostgreSQL 15 cluster, copied to workdir/wal."""
    from pitrkit.demo import localpg

    import pgharness

    install = next(i for i in pgharness.find_installations() if i.major == 15)
    cluster = localpg.Cluster(install, localpg.make_server_dir(workdir / "cluster"))
    try:
        cluster.initdb()
        cluster.conf(wal_keep_size="1GB", max_wal_size="2GB")
        cluster.start()
        connect = ["-h", cluster.socket_dir, "-p", str(cluster.port), "-U", "postgres", "postgres"]
        cluster.run("pgbench", "-i", "-s", "5", *connect, timeout=300)
        cluster.run("pgbench", "-T", "30", "-c", "4", *connect, timeout=300)
        cluster.switch_wal()
        cluster.stop()
        target = localpg.make_server_dir(workdir / "wal")
        cluster.shell(f"cp pg_wal/0* {target}/ && chmod -R a+rX {target}")
    finally:
        cluster.cleanup()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--wal", type=Path)
    parser.add_argument("--segments", type=int, default=16, help="at most this many (the newest)")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="time-index-bench-"))
    source = options.wal or pgbench_segments(workdir)
    paths = sorted(p for p in source.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))[-options.segments:]
    datas = [p.read_bytes() for p in paths]
    header = read_page_header(datas[0])

    started = time.process_time()
    commits = 0
    pending = None
    for data in datas:
        records = read_segment(data, pending)
        pending = records.pending
        commits += len(records.transactions)
    reader = time.process_time() - started

    (workdir / "archive").mkdir(mode=0o700)
    config = Config(repository=RepositoryConfig(url=f"file://{workdir / 'archive'}", retries=0),
                    compression=CompressionConfig(algorithm="zstd", level=3))
    archive = Archive(config)
    initialise(archive, ClusterFacts(header.system_identifier, header.segment_size, header.major, "the benchmark"))
    for path in paths:
        push(archive, path)
    started = time.process_time()
    index_wal(archive, ArchivedWal(archive))
    indexing = time.process_time() - started

    size = sum(map(len, datas)) / MIB
    print(f"{len(datas)} segments, {size:.0f} MiB of WAL, {commits} commit/abort records (PostgreSQL {header.major})")
    print("| step | CPU s | MiB/s per core |\n|---|---:|---:|")
    print(f"| read_segment (records only) | {reader:.2f} | {size / reader:.0f} |")
    print(f"| index_wal (catalog rebuild: read back, decompress, verify, read, write) | {indexing:.2f} "
          f"| {size / indexing:.0f} |")


if __name__ == "__main__":
    main()

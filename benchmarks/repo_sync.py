#!/usr/bin/env python3
"""repo_sync -- `pitrkit repo sync` in this process: CPU and wall seconds to fill an empty
file:// repository from one holding N WAL segments, copied as stored (both unencrypted)
and re-encoded (into a repository with its own key), interleaved round by round, with
the ratio of the two. The segments carry real page headers and compressible filler, as
WAL does (a third of each random, the rest repeated rows).

    PYTHONPATH=CHECKOUT /opt/pkdev/bin/python benchmarks/repo_sync.py --segments 32 --rounds 3

Everything lives in a temporary directory (--dir to choose where), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pitrkit.config import Config, EncryptionConfig, RepositoryConfig
from pitrkit.ops.init import ClusterFacts, initialise
from pitrkit.ops.repo_sync import sync
from pitrkit.postgres.wal import WalFileName
from pitrkit.storage import keys
from pitrkit.storage.archive import Archive
from pitrkit.storage.repositories import Repository
from pitrkit.wal.push import push_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.unit.segments import SEG_16MIB, SYSID, segment  # noqa: E402  (page headers as PostgreSQL writes them)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def repository(root: Path, name: str, encryption: EncryptionConfig | None = None) -> Repository:
    root.mkdir()
    settings = RepositoryConfig(url=f"file://{root}", name=name)
    archive = Archive(Config(repository=settings, encryption=encryption or EncryptionConfig()))
    initialise(archive, ClusterFacts(SYSID, SEG_16MIB, 15, "the benchmark"))
    return Repository(settings, archive)


def wal_like(segno: int, rng: random.Random) -> bytes:
    row = rng.randbytes(200)
    body = b"".join(rng.randbytes(100) + row for _ in range(SEG_16MIB // 300 + 1))
    return segment(segno, filler=body[:SEG_16MIB - 64])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--segments", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="repo-sync-bench-", dir=args.dir))
    try:
        rng = random.Random(1)
        source = repository(work / "source", "source")
        for segno in range(1, args.segments + 1):
            push_data(source.archive, WalFileName.parse(f"00000001{segno >> 8:08X}{segno & 0xFF:08X}"),
                      wal_like(segno, rng))
        key = work / "target.key"
        keys.generate_key_file(key)
        results: dict[str, list[tuple[float, float]]] = {"as stored": [], "re-encoded": []}
        for number in range(args.rounds):
            for copying, encryption in (("as stored", None),
                                        ("re-encoded", EncryptionConfig(mode="key", key_file=str(key)))):
                target = repository(work / f"{number}-{copying.replace(' ', '-')}", "target", encryption)
                cpu, wall = cpu_seconds(), time.monotonic()
                report = sync(source, target)
                results[copying].append((cpu_seconds() - cpu, time.monotonic() - wall))
                assert report.copying == copying and len(report.wal) == args.segments and not report.problems
                shutil.rmtree(work / f"{number}-{copying.replace(' ', '-')}")
        print(f"repo sync of {args.segments} WAL segments, {args.rounds} rounds, {os.cpu_count()} cores (medians)")
        medians = {copying: (statistics.median(cpu for cpu, _ in runs), statistics.median(wall for _, wall in runs))
                   for copying, runs in results.items()}
        for copying, (cpu, wall) in medians.items():
            print(f"  {copying:11} CPU {cpu:7.2f} s  wall {wall:7.2f} s  ({wall / args.segments * 1000:6.1f} ms per "
                  "segment)")
        stored, encoded = medians["as stored"], medians["re-encoded"]
        print(f"  re-encoded / as stored: CPU {encoded[0] / stored[0]:.2f} x, wall {encoded[1] / stored[1]:.2f} x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

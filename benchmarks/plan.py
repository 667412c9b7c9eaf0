#!/usr/bin/env python3
"""plan -- how long `restore-plan` takes on an archive of 1,000,000 WAL segments.

    /opt/pkdev/bin/python benchmarks/plan.py [--dir D] [--segments N] [--repeat R]

It builds (once; reused while D/bench.json matches) a synthetic archive in D (default
/srv/plan-bench/archive) on local disk, as pitrkit's `file://` storage lays it out:

* timeline 1 with segments 1 .. 90 % of N, timeline 2 branched off it 5 % of N before
  its end and running on to segment N (so N segments in all), `00000002.history`;
* 16 MiB segments, so 256 per WAL folder: N = 1,000,000 makes ~3,900 folders;
* a finished backup (manifest with an empty file list) every 5 % of N on the path, and
  one unfinished backup (no manifest);
* the time index of every folder (`catalog/times/<TLI><LOG>`, catalog/time_index.py), each
  segment's commits spread over the 30 s before it was stored, so that a time plan stops
  at the segment holding its target (the segment's own WAL, which a plan reads for the
  transactions either side, is absent: the plan says so and goes on);
* sealed folders are represented only by their catalog index `catalog/wal/<TLI><LOG>.json`
  (as `refresh` writes it, with sizes and store times) and an empty `wal/<TLI><LOG>/`
  directory: writing a million real segment files would take far longer than the plan
  it measures, and the planner never lists a sealed folder whose index it has (it
  would list one only to confirm a segment the index says is absent). Each holds one
  stand-in file, as file:// lists no directory that holds no object. The newest folder
  of each timeline holds real files, which the planner lists.

Then it times, in one process (fresh `Archive` per plan, warm OS cache), `make_plan`
for targets that make the planner read little and much of the archive, and the whole
command `pitrkit restore-plan` as a new process (interpreter start, imports, config,
plan, printing), and `pitrkit status` the same way. Median and max of --repeat runs are
printed as markdown tables. The targets: under 1 s; a time plan (through the time
index) under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pitrkit.catalog.documents import (
    BackupManifest,
    IndexedTransaction,
    SegmentTimes,
    TimeIndexFolder,
    WalFolderIndex,
    WalIndexEntry,
)
from pitrkit.config import Config, RepositoryConfig  # noqa: E402
from pitrkit.postgres.wal import Lsn, SegmentName  # noqa: E402
from pitrkit.restore.plan import make_plan  # noqa: E402
from pitrkit.restore.targets import Target, TimelineChoice  # noqa: E402
from pitrkit.storage import codec, objects
from pitrkit.storage.archive import Archive  # noqa: E402
from pitrkit.storage.identity import ArchiveIdentity
from pitrkit.storage.plugins import Plugins  # noqa: E402

SEGMENT_SIZE = 16 << 20
PER_LOG = 256
STORED_SIZE = 3 << 20  # what a 16 MiB segment compresses to, roughly
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVERY = 30.0  # seconds between segments reaching the archive


def stored_at(segno: int, timeline: int) -> float:
    # Timeline 2 is created later than the segment it branched from was archived.
    return (T0 + timedelta(seconds=segno * EVERY + (86400 if timeline == 2 else 0))).timestamp()


def _us(segno: int, timeline: int) -> int:
    return round(stored_at(segno, timeline) * 1_000_000)


class Layout:
    def __init__(self, segments: int) -> None:
        self.segments = segments
        self.tl1_last = segments * 9 // 10
        self.branch_segno = self.tl1_last - segments // 20
        self.switch = Lsn(self.branch_segno * SEGMENT_SIZE + 0x5000)
        self.tl2_first = self.branch_segno
        self.tl2_last = self.tl2_first + (segments - self.tl1_last) - 1
        self.backup_every = segments // 20

    def ranges(self) -> list[tuple[int, int, int]]:
        return [(1, 1, self.tl1_last), (2, self.tl2_first, self.tl2_last)]

    def backup_starts(self) -> list[tuple[int, int]]:
        """(timeline, segno) of every finished backup, oldest first."""
        starts = [(1, segno) for segno in range(self.backup_every, self.branch_segno, self.backup_every)]
        return starts + [(2, segno) for segno in range(self.tl2_first + 10, self.tl2_last - 100, self.backup_every)]


def put(root: Path, key: str, data: bytes, modified: float | None = None) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if modified is not None:
        os.utime(path, (modified, modified))


def build(root: Path, layout: Layout) -> None:
    started = time.monotonic()
    identity = ArchiveIdentity(system_identifier=1, wal_segment_size=SEGMENT_SIZE, pg_versions=[15], created_at=T0)
    put(root, "archive.json", codec.encode(identity))
    history, _ = objects.encode(f"1\t{layout.switch}\tno recovery target specified\n".encode(),
                                Plugins().compressor("none"))
    put(root, "wal/00000002.history", history, stored_at(layout.branch_segno, 2))
    indexed_at = datetime.now(UTC).replace(microsecond=0)
    for timeline, first, last in layout.ranges():
        for log in range(first // PER_LOG, last // PER_LOG + 1):
            segnos = range(max(first, log * PER_LOG), min(last, log * PER_LOG + PER_LOG - 1) + 1)
            folder = f"wal/{timeline:08X}{log:08X}/"
            (root / folder).mkdir(parents=True, exist_ok=True)
            times = [SegmentTimes(SegmentName(timeline, segno).name, _us(segno, timeline) - 29_000_000,
                                  _us(segno, timeline) - 1_000_000, [],
                                  IndexedTransaction(segno, _us(segno, timeline) - 1_000_000), True, segno + 10)
                     for segno in segnos]
            document, _ = objects.encode(
                codec.encode(TimeIndexFolder(folder=folder, segments=times, indexed_at=indexed_at), pretty=False),
                Plugins().compressor("none"))
            put(root, f"catalog/times/{timeline:08X}{log:08X}", document)
            if log < last // PER_LOG:  # sealed: its index stands for its files
                entries = [WalIndexEntry(SegmentName(timeline, segno).name, STORED_SIZE, stored_at(segno, timeline))
                           for segno in segnos]
                index = WalFolderIndex(folder=folder, entries=entries, indexed_at=indexed_at)
                put(root, f"catalog/wal/{timeline:08X}{log:08X}.json", codec.encode(index, pretty=False))
                # One stand-in object: file:// lists no directory that holds none.
                put(root, folder + SegmentName(timeline, segnos[0]).name, b"x" * 64, stored_at(segnos[0], timeline))
            else:
                for segno in segnos:
                    put(root, folder + SegmentName(timeline, segno).name, b"x" * 64, stored_at(segno, timeline))
    for timeline, segno in layout.backup_starts():
        backup_id = datetime.fromtimestamp(stored_at(segno, timeline), UTC).strftime("%Y%m%dT%H%M%SZ")
        manifest = BackupManifest(
            backup_id=backup_id, label=f"bench {backup_id}", system_identifier=1, pg_version=150014,
            timeline=timeline, start_lsn=Lsn(segno * SEGMENT_SIZE + 0x28),
            start_time=datetime.fromtimestamp(stored_at(segno, timeline) - 20, UTC),
            stop_lsn=Lsn((segno + 2) * SEGMENT_SIZE + 0x100),
            stop_time=datetime.fromtimestamp(stored_at(segno + 2, timeline) - 20, UTC),
            first_segment=SegmentName(timeline, segno).name, last_segment=SegmentName(timeline, segno + 2).name,
            size=50 << 30, stored_size=12 << 30, file_count=0, compression="zstd", pitrkit_version="0.1.0",
            backup_label="", parts=[], directories=[], files=[],
        )
        put(root, f"backups/{backup_id}/manifest.json", codec.encode(manifest, pretty=False))
    put(root, "backups/99990101T000000Z/data/0", b"an interrupted backup")
    print(f"built {root} in {time.monotonic() - started:.1f} s", file=sys.stderr)


def cases(layout: Layout) -> list[tuple[str, list[str], Target, TimelineChoice]]:
    """(what, CLI arguments, target, timeline) for each measured plan."""
    def lsn(segno: int) -> Lsn:
        return Lsn(segno * SEGMENT_SIZE + 0x1234)

    early_time = datetime.fromtimestamp(stored_at(layout.backup_every * 2 + 500, 1), UTC)
    recent = lsn(layout.tl1_last - 1000)
    on_branch = lsn(layout.tl1_last + (layout.tl2_last - layout.tl1_last) // 2)
    return [
        ("--latest (timeline 2, newest backup)", ["--latest"], Target(kind="latest"), None),
        ("--lsn on timeline 2 only", ["--lsn", str(on_branch)], Target(kind="lsn", lsn=on_branch), None),
        ("--lsn on both timelines, --timeline 1", ["--lsn", str(recent), "--timeline", "1"],
         Target(kind="lsn", lsn=recent), 1),
        ("--time early on timeline 1 (the time index stops ~500 segments on; without it: walks ~85 %)",
         ["--time", early_time.isoformat(), "--timeline", "1"], Target(kind="time", time=early_time), 1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dir", type=Path, default=Path("/srv/plan-bench/archive"))
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    layout = Layout(options.segments)
    stamp = options.dir / "bench.json"
    description = {"segments": options.segments, "format": 3}
    if not stamp.exists() or json.loads(stamp.read_text()) != description:
        if options.dir.exists():
            sys.exit(f"{options.dir} exists and is not this benchmark's archive; remove it or pick --dir")
        build(options.dir, layout)
        stamp.write_text(json.dumps(description))

    config = Config(repository=RepositoryConfig(url=f"file://{options.dir}", retries=0))
    config_path = options.dir.parent / "pitrkit.toml"
    config_path.write_text(f'[repository]\nurl = "file://{options.dir}"\n')
    sealed = sum(1 for _ in (options.dir / "catalog/wal").iterdir())
    print(f"archive: {options.segments:,} segments on 2 timelines, {sealed:,} folder indexes, "
          f"{len(layout.backup_starts())} backups\n")
    print("| plan | segments in plan | make_plan median s | max s | `pitrkit restore-plan` median s | max s |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, arguments, target, timeline in cases(layout):
        in_process = []
        for _ in range(options.repeat):
            began = time.perf_counter()
            plan = make_plan(Archive(config), target, timeline)
            in_process.append(time.perf_counter() - began)
        command = []
        for _ in range(options.repeat):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config_path), "restore-plan", *arguments],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            command.append(time.perf_counter() - began)
        print(f"| {what} | {len(plan.segments):,} | {statistics.median(in_process):.3f} | {max(in_process):.3f} "
              f"| {statistics.median(command):.3f} | {max(command):.3f} |", flush=True)

    # `pitrkit status` reads the catalog the way the planner does, once per timeline and
    # for every check, so it is timed on the same archive. It says FAIL here (exit 2):
    # the synthetic backups are months old, which is what its check is for.
    print("\n| command | median s | max s |\n|---|---:|---:|")
    for arguments in (["status"], ["status", "--json"]):
        command = []
        for _ in range(options.repeat):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config_path), *arguments],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            command.append(time.perf_counter() - began)
        print(f"| `pitrkit {' '.join(arguments)}` | {statistics.median(command):.3f} | {max(command):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()

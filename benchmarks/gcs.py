#!/usr/bin/env python3
"""gcs -- what a WAL segment costs to push to and fetch from a gs:// archive on
fake-gcs-server, beside a file:// archive: benchmarks/wal_runs.py's driver for gs.

    /opt/pkdev/bin/python benchmarks/gcs.py [--segments 20]

Run with an interpreter that has pitrkit and plugins/pitrkit-gcs installed (and the
plugin's `test` extra, for the emulator); wal_runs.py says what is measured.
"""

from wal_runs import main

if __name__ == "__main__":
    main(["gs"])

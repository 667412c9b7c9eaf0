#!/usr/bin/env python3
"""s3 -- what a WAL segment costs to push to and fetch from an s3:// archive on moto's
server, beside a file:// archive: benchmarks/wal_runs.py's driver for s3.

    /opt/pkdev/bin/python benchmarks/s3.py [--segments 20]

Run with an interpreter that has pitrkit and plugins/pitrkit-s3 installed (and the
plugin's `test` extra, for moto's server); wal_runs.py says what is measured. moto
answers from memory on loopback, in Python: its own cost per request is part of the
figures, more than a real S3's CPU would be.
"""

from wal_runs import main

if __name__ == "__main__":
    main(["s3"])

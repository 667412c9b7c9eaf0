"""Restore: from a recovery target to a fresh data directory that recovers to it.

`targets` parses what a person types (--to, --lsn, --latest, --timeline); `plan`
decides what a restore fetches: the timeline to end on, the backup, the timeline path
and the unbroken run of WAL segments, or a refusal naming the missing piece (the same
plan `restore-plan` prints). `engine` runs a restore in its safe order: everything that
can refuse before touching the disk, a lease (catalog/lease.py), then `unpack` writes
the backup back, `server_config` makes the backed-up configuration the new directory's
own, `recovery_conf` writes the recovery settings, `pgconf` lists the settings that
would run code, and `pgstart` starts PostgreSQL and waits for the target. `durable`
writes the small files a data directory needs to survive a crash.
"""

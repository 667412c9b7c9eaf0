"""Restore: from a recovery target to a fresh data directory that recovers to it.

`targets` parses what a person types (--to, --lsn, --latest, --timeline); `plan`
picks the timeline to end on, its path and the backup, and checks that the unbroken run
of WAL segments recovery will replay from that backup is archived, or refuses naming the
missing piece (the same plan `restore-plan` prints). A restore fetches the backup, every
part of it (`unpack`); the WAL is fetched on demand by recovery itself, through
`restore_command` (wal/fetch.py, with wal/lookahead.py reading ahead). `engine` runs a
restore in its safe order: everything that can refuse before touching the disk, a lease
(catalog/lease.py), then `unpack` writes the backup back, `server_config` makes the
backed-up configuration the new directory's own, `recovery_conf` writes the recovery
settings, `pgconf` lists the settings that would run code, and `pgstart` starts
PostgreSQL and waits for the target. `durable` writes the small files a data directory
needs to survive a crash.
"""

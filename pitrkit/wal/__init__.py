"""The WAL path: segments into the archive and back out, one at a time, as PostgreSQL
asks.

On push, PostgreSQL's archive_command runs `pitrkit wal-push %p`; pitrkit/entry.py hands
the request to the `agent` for this configuration through `agent_client`, or, when no
agent serves it, cli.py does the work in-process and then (unless `[agent] enabled =
false`) starts one for the next call. `push` validates the file against its name and the archive's system identifier,
frames it (storage/objects.py) and stores it create-only under
`wal/<TLI><LOG>/<segment>` through storage/archive.py's `Archive.put`, which calls the
storage plugin the repository URL chooses (storage/plugins/local.py for file://),
answering 0 only once it is durable; `lookahead` pushes the segments already marked
`.ready` ahead of the archiver. `receive` (the `pg_receivewal` sidecar, with
`receiver_health` watching its slot) streams WAL and stores it through the same `push`.

On fetch, recovery's restore_command runs `pitrkit wal-fetch %f %p`; `fetch` writes the
verified segment atomically and exits 1 only for a definite "not archived", never for a
fault, so a fault stops recovery instead of promoting it early; `lookahead` reads ahead
into a spool.
"""

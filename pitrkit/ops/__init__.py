"""Operations: commands that set up, keep and check the archive as a whole.

`init` creates the archive (`archive.json`) for one cluster. `policy` holds the pure
retention rules (which backups a policy keeps and the WAL they need); `retention`
decides from them what to delete and removes it in an order that keeps every reader
safe. `status` collects one judged look at the archive and the server it serves
(`daemon_facts` types what the daemon shows beside it, which daemon/service.py fills
in); `verify` checks the catalog against
storage; `listing` is `backup-list`, `wal-list` and `catalog rebuild`. Each read command
returns a report (a msgspec Struct) and prints nothing: pitrkit/views/ renders it.
"""

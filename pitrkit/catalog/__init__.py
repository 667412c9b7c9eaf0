"""The catalog: what the archive holds and the documents that describe it.

`documents` types every JSON document the backups and the catalog store (manifests, the
backup catalog, WAL folder indexes, retention's intent, leases, the lock) as msgspec
Structs checked as they are decoded, since anything read from storage may have been
written by a stranger. `backups` reads which backups exist, `chains` which of them are
usable (an incremental only with its whole chain); `archived_wal` is the
archived WAL as timelines, folders and unbroken runs, read through the catalog's
indexes, which are caches reconciled with the manifests and the stored WAL;
`maintenance` writes the catalog as the archive grows (a new backup, sealed folders'
indexes) and recreates it from the stored objects alone (`catalog rebuild`); its other
writer is retention (ops/retention.py), which rewrites `catalog/backups.json`,
`catalog/retention.json` and the indexes of the folders it removes WAL from.
`contents` collects what `backup-list` and `wal-list` show. `lock` lets one writer change catalog documents at a
time; `lease` is a restore's claim on what it reads, which retention honours.
"""

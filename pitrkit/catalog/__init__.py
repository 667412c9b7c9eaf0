"""The catalog: what the archive holds and the documents that describe it.

`documents` types every JSON document pitrkit stores (manifests, the backup catalog,
WAL folder indexes, retention's intent, leases, locks) as msgspec Structs validated at
decode, since anything read from storage may have been written by a stranger.
`inventory` reads the archive's backups and its WAL (timelines, folders, unbroken runs)
through the catalog's indexes, which are caches reconciled with the manifests and the
stored WAL, and recreated from them alone by `catalog rebuild`. `lock` lets one writer
change catalog documents at a time; `lease` is a restore's claim on what it reads,
which retention honours.
"""

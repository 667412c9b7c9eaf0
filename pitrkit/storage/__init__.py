"""The archive and what it is stored on: the bottom of the pipeline.

`archive.Archive` is one repository opened from the configuration: the key layout
(`wal/<TLI><LOG>/<segment>`, `backups/<id>/...`, `catalog/...`), `archive.json` (the
archive's identity, `identity`, which only `pitrkit init` creates), bounded storage
calls, the verified read of an archived WAL file, and the reading and writing of JSON documents
(`codec`), authenticated when `[encryption]` is on (`envelope`). `objects` is the format
of every stored object (frame, header, compressed and possibly encrypted body); `keys`
reads and makes key material. `plugins/` holds the plugin manager and the built-in
plugins (file:// storage, zstd, encryption), registered through the same hooks
(pitrkit/hookspecs.py) as third-party ones; `capabilities` uses a storage's optional
methods or falls back to its required ones; `conformance` is the test suite every
storage plugin must pass.

Nothing here knows what backups, restores or retention mean: storage knows their keys
(the layout above), not what the objects under them are for; commands and the catalog
call down into storage, never the other way.
"""

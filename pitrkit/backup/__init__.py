"""Base backups: `pitrkit backup-push` (`push`). One session starts a non-exclusive
backup (postgres/server.py), the data directory and tablespaces are read file by file
into parts stored in parallel under `backups/<id>/`, the configuration files kept
outside the data directory are captured with them (`config_capture`), and
`manifest.json`, the commit marker, is stored only after every WAL segment the backup
needs is archived. The backup is then recorded in the catalog (pitrkit/catalog/). Of a
standby, a second session with its primary checks it and switches the primary's WAL
segment at the end (`standby`).
"""

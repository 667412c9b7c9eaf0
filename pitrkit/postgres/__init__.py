"""What pitrkit knows of PostgreSQL itself, apart from any archive: the WAL format
(`wal`: LSNs, timelines, segment and history file names, page headers), connection
strings (`conninfo`, parsed before connecting so that an error never quotes a password)
and the SQL session with a server (`server`: the facts a backup checks and the
non-exclusive backup API). Everything above builds on these; they import nothing of
pitrkit but its errors.
"""

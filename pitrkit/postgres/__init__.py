"""What pitrkit knows of PostgreSQL itself, apart from any archive: the WAL format
(`wal`: LSNs, timelines, segment and history file names, page headers), connection
strings (`conninfo`, parsed before connecting so that an error never quotes a password),
the SQL session with a server (`server`: the facts a backup checks and the non-exclusive
backup API) and the configuration file syntax (`config_files`: settings, include lines
and include_dir). Everything above builds on these; they import nothing of pitrkit but
the foundation's errors and config (tests/unit/test_import_graph.py holds it).
"""

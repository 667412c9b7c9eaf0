#!/bin/sh
# Writes $PITRKIT_CONFIG, the pitrkit configuration of the compose dev setup
# (compose.yaml), from the service's environment: every service that runs pitrkit
# (the primary's archive_command, the daemon) writes the same file from the same
# variables, so that no file with host names or paths is committed.
#
#   PITRKIT_CONFIG      where to write it
#   PITRKIT_REPOSITORY  the archive's URL (gs://bucket/prefix)
#   PGDATA              the primary's data directory (the daemon reads it through a shared volume)
#   PRIMARY_HOST, PRIMARY_PORT   how the daemon reaches the primary
#   PITRKIT_SPOOL       the sidecar's spool (wal-receive)
#   PITRKIT_LISTEN      host:port of the daemon's status page
#   PITRKIT_BACKUP_EVERY, PITRKIT_PARTIAL_INTERVAL, PITRKIT_STATUS_INTERVAL
#
# The PostgreSQL binaries are the ones on PATH. Authentication is the dev setup's
# trust on its own network: no password is ever written here.
set -eu

bindir=$(dirname "$(command -v postgres)")
mkdir -p "$(dirname "$PITRKIT_CONFIG")"
# Written aside and moved into place: a running pitrkit never reads half a file.
cat > "$PITRKIT_CONFIG.new" <<TOML
[repository]
url = "$PITRKIT_REPOSITORY"
timeout = 30
retries = 4

[postgres]
pgdata = "$PGDATA"
bindir = "$bindir"
conninfo = "host=$PRIMARY_HOST port=$PRIMARY_PORT user=postgres dbname=postgres"

[receive]
spool = "$PITRKIT_SPOOL"
partial_interval = $PITRKIT_PARTIAL_INTERVAL

[daemon]
every = "$PITRKIT_BACKUP_EVERY"
listen = "$PITRKIT_LISTEN"
status_interval = $PITRKIT_STATUS_INTERVAL
TOML
mv "$PITRKIT_CONFIG.new" "$PITRKIT_CONFIG"

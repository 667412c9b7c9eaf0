#!/bin/sh
# The compose dev setup's primary (compose.yaml, service `primary`): on first start an
# initdb and the settings to archive through pitrkit; every start, the bucket made if
# missing and `pitrkit init` (a no-op for the same cluster, a refusal for another's
# archive); then PostgreSQL in the foreground.
#
#   PGDATA, PGPORT, LISTEN_ADDRESSES, PG_SOCKET_DIR   where the server lives and listens
#   PITRKIT_CONFIG and what dev/write-config.sh reads; STORAGE_EMULATOR_HOST
#
# Runs as the postgres user, in the container or (tests/integration/test_compose.py) on
# the host with the paths and host names mapped.
set -eu
here=$(dirname "$0")

"$here/write-config.sh"
python3 "$here/make-bucket.py"
mkdir -p "$PG_SOCKET_DIR"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C --data-checksums
    # Trust on the dev setup's own network, for the standby's and the sidecar's
    # replication connections and the daemon's backups: a development setup only.
    cat >> "$PGDATA/pg_hba.conf" <<HBA
host all all all trust
host replication all all trust
HBA
    # The port, addresses and socket are given on the command line below, so that the
    # standby's copy of this file (pg_basebackup) keeps none of them.
    cat >> "$PGDATA/postgresql.conf" <<CONF
wal_level = replica
archive_mode = on
archive_command = '$(command -v pitrkit) --config $PITRKIT_CONFIG wal-push %p'
# Incremental backups (the daemon's full_every) read the WAL summaries.
summarize_wal = on
CONF
fi

pitrkit --config "$PITRKIT_CONFIG" init
exec postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses="$LISTEN_ADDRESSES" \
    -c unix_socket_directories="$PG_SOCKET_DIR"

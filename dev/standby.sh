#!/bin/sh
# The compose dev setup's streaming standby (compose.yaml, service `standby`): on first
# start a copy of the primary by pg_basebackup on the physical slot `standby` (made on
# the primary if missing, so the primary keeps the WAL the standby has not received),
# with standby.signal and primary_conninfo (-R); then PostgreSQL in the foreground.
#
#   PGDATA, PGPORT, LISTEN_ADDRESSES, PG_SOCKET_DIR   where the server lives and listens
#   PRIMARY_HOST, PRIMARY_PORT                       the primary to stream from
set -eu

mkdir -p "$PG_SOCKET_DIR"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    psql "host=$PRIMARY_HOST port=$PRIMARY_PORT user=postgres dbname=postgres" -v ON_ERROR_STOP=1 -qAt -c \
        "SELECT pg_create_physical_replication_slot('standby') WHERE NOT EXISTS
             (SELECT FROM pg_replication_slots WHERE slot_name = 'standby')" >/dev/null
    pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -D "$PGDATA" -S standby -R \
        -X stream --checkpoint=fast
fi

exec postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses="$LISTEN_ADDRESSES" \
    -c unix_socket_directories="$PG_SOCKET_DIR"

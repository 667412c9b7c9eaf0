#!/bin/sh
# The compose dev setup's `pitrkit daemon` (compose.yaml, service `daemon`): the
# streaming sidecar (wal-receive into the spool, then the bucket), scheduled backups of
# the primary (its data directory is shared with this service, read-only), and the
# status page. The primary's start made the bucket and the archive.
#
#   PITRKIT_CONFIG and what dev/write-config.sh reads; STORAGE_EMULATOR_HOST
set -eu
here=$(dirname "$0")

"$here/write-config.sh"
mkdir -p "$PITRKIT_SPOOL"
chmod 0700 "$PITRKIT_SPOOL"
exec pitrkit --config "$PITRKIT_CONFIG" daemon

# The image of the compose dev setup (compose.yaml; docs/development.md): the official
# PostgreSQL 18 image with pitrkit and its GCS plugin (plugins/pitrkit-gcs) installed from
# this checkout, and the dev setup's service scripts (dev/). The primary, the standby and
# the daemon all run it, each with its own command.
#
# PostgreSQL 18, the newest major the tests run (15 and 18): incremental backups from WAL
# summaries, data checksums on by default. tests/integration/test_compose.py runs the
# same topology on the host with the major named on the FROM line.
FROM postgres:18-trixie

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# pitrkit and the plugin in one pip call, so that the plugin's dependency on pitrkit is
# this checkout's, never a download.
COPY pyproject.toml README.md /src/pitrkit/
COPY pitrkit /src/pitrkit/pitrkit
COPY plugins/pitrkit-gcs /src/pitrkit-gcs
RUN python3 -m venv /opt/pitrkit/venv \
    && /opt/pitrkit/venv/bin/pip install --no-cache-dir /src/pitrkit /src/pitrkit-gcs \
    && rm -rf /src

COPY dev /opt/pitrkit/dev
# Where dev/write-config.sh writes the configuration, and the sidecar's spool (a named
# volume in compose.yaml starts as a copy of this directory, ownership included).
RUN install -d -o postgres -g postgres -m 0755 /etc/pitrkit \
    && install -d -o postgres -g postgres -m 0700 /var/lib/pitrkit

ENV PATH=/opt/pitrkit/venv/bin:$PATH
USER postgres
# The services' commands are the scripts in dev/, not the image's docker-entrypoint.sh
# (whose initdb and settings the primary's script does itself).
ENTRYPOINT []
CMD ["/opt/pitrkit/dev/primary.sh"]

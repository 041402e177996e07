#!/bin/sh
# The postgis service's first start (mounted in /docker-entrypoint-initdb.d, run once by the image's entrypoint
# on an empty data directory): a role that streaming replicas connect as, allowed to replicate from any host of
# the compose network. Without REPLICATION_PASSWORD nothing is made (one host, no replica).
# A database made before this script was mounted: run it once by hand (docker/README.md, "Several nodes").
set -eu
if [ -z "${REPLICATION_PASSWORD:-}" ]; then
    exit 0
fi
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v password="$REPLICATION_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD %L', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'replicator') \gexec
SQL
if ! grep -q '^host replication replicator' "$PGDATA/pg_hba.conf"; then
    echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -c "SELECT pg_reload_conf()" > /dev/null

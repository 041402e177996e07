#!/bin/sh
# The postgis-replica service's entrypoint: the first time (empty data directory) a copy of the primary made with
# pg_basebackup, which also writes how to follow it (-R: standby.signal and primary_conninfo); then PostgreSQL,
# streaming and replaying the primary's log, answering reads (hot standby). Arguments go to postgres.
# Runs as the image's postgres user (compose: `user: postgres`).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:=postgis}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:=replicator}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${REPLICATION_PASSWORD:-}" ]; then
        echo "replica: set REPLICATION_PASSWORD (docker/.env), the same the primary was first started with" >&2
        exit 1
    fi
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do
        echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
        sleep 2
    done
    rm -rf "${PGDATA:?}"/* 2>/dev/null || true  # a copy that failed half way
    PGPASSWORD="${REPLICATION_PASSWORD:-}" pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" \
        -U "$REPLICATION_USER" -D "$PGDATA" -R -X stream --checkpoint=fast --no-password
    chmod 700 "$PGDATA"
fi
exec postgres "$@"

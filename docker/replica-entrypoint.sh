#!/bin/bash
# Entrypoint of the streaming replica (official postgres image, started as root).
#
# On first start (empty data directory) it clones the primary with pg_basebackup and configures streaming
# replication; then it hands over to the image's own entrypoint, which finds an initialised data directory,
# skips initdb and runs postgres as the `postgres` user.
#
# Environment: PRIMARY_HOST, PRIMARY_PORT (default 5432), REPLICATION_USER, REPLICATION_PASSWORD,
# REPLICA_NAME (application_name on the primary), PGDATA.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:?set PRIMARY_HOST}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_USER:?set REPLICATION_USER}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}"
: "${REPLICA_NAME:=replica}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"

    echo "replica: waiting for the primary at $PRIMARY_HOST:$PRIMARY_PORT"
    until gosu postgres pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do
        sleep 1
    done

    echo "replica: cloning the primary with pg_basebackup"
    # Clear anything a failed earlier attempt left behind (pg_basebackup needs an empty directory).
    find "$PGDATA" -mindepth 1 -delete
    # --write-recovery-conf writes standby.signal and a primary_conninfo (quoted and escaped by pg_basebackup)
    # holding these connection settings, the password and application_name (from PGAPPNAME) included, so the
    # server starts as a hot standby streaming from the primary.
    PGPASSWORD="$REPLICATION_PASSWORD" PGAPPNAME="$REPLICA_NAME" gosu postgres pg_basebackup \
        --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$REPLICATION_USER" --no-password \
        --pgdata="$PGDATA" --wal-method=stream --checkpoint=fast --write-recovery-conf
    echo "replica: base backup done; starting as a streaming replica"
fi

exec docker-entrypoint.sh "$@"

#!/bin/bash
# Runs once, when the primary's data directory is first initialised (mounted into the official postgres image's
# /docker-entrypoint-initdb.d). Creates the role the replica streams WAL with and lets it connect for
# replication from other containers.
set -eo pipefail

: "${REPLICATION_USER:?set REPLICATION_USER}"
: "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=role="$REPLICATION_USER" --set=pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"role" WITH REPLICATION LOGIN PASSWORD :'pw';
SQL

# The image's pg_hba.conf lets every role reach every database from anywhere (scram-sha-256), but replication
# connections only match lines that name the `replication` pseudo-database.
echo "host replication $REPLICATION_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"

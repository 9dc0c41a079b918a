#!/usr/bin/env bash
# Server-side cost per job of claiming and completing, with no client and no concurrency:
# durable-jobs' own statements on its real schema (migrations rendered from
# storage-postgres/migrations), the same pattern on the raw yardstick's bare table,
# graphile_worker's claim and delete on a copy of its jobs
# table, and two storage designs sketched for a later attempt (costs/move.sql,
# costs/split.sql). Each variant fills its table with 100,000 jobs and runs ROUNDS
# claims of 1000 jobs, each followed by that batch's completion, committing after each
# statement; it reports microseconds per job for the fill (one INSERT ... SELECT of all
# jobs) and for each half (costs/measure.sql).
#
#   bash bench/sql/statement_costs.sh [URL] [VARIANT ...]
#
# URL defaults to DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres;
# VARIANT is any of current bare graphile move split (all by default). Each variant runs in a
# database of its own, dj_statement_costs_<pid>, dropped when it ends.
set -euo pipefail
url=${1:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(current bare graphile move split)
rounds=${ROUNDS:-100}
here=$(cd "$(dirname "$0")" && pwd)
migrations="$here/../../storage-postgres/migrations"
db="dj_statement_costs_$$"
dburl="${url%/*}/$db"
drop() { psql -q "$url" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; }
trap drop EXIT
for v in "${variants[@]}"; do
    [ -f "$here/costs/$v.sql" ] || { echo "unknown variant $v (see $here/costs)" >&2; exit 2; }
    drop
    psql -q "$url" -c "CREATE DATABASE $db"
    {
        echo "CREATE SCHEMA dj;"
        for f in "$migrations"/*.sql; do
            sed -e "s/{graphile_schema}/dj_graphile/g" -e "s/{schema_lit}/'dj'/g" -e "s/{schema}/dj/g" -e "s/{channel}/'dj_jobs'/g" "$f"
        done
    } | psql -q -v ON_ERROR_STOP=1 "$dburl"
    psql -q -X -v ON_ERROR_STOP=1 -v rounds="$rounds" "$dburl" -f "$here/costs/$v.sql" 2>&1 \
        | sed -n "s/.*NOTICE:  //p; /ERROR/p"
done

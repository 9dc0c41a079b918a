#!/usr/bin/env bash
# Server-side cost per job of the claim and completion statements, with no client and no
# concurrency: durable-jobs' own statements on its real schema (migrations rendered from
# storage-postgres/migrations), next to graphile_worker's claim and delete on a copy of its
# jobs table. One psql session runs ROUNDS claims of 1000 jobs, each followed by that
# batch's completion, and reports microseconds per job for each half.
#
#   bash bench/sql/statement_costs.sh [postgres://postgres@127.0.0.1:5432/postgres]
#
# It creates the database dj_statement_costs_<pid> and drops it at the end. All rounds run
# in one transaction (a DO block), so commit and fsync costs are not in the figures.
set -euo pipefail
url=${1:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
here=$(cd "$(dirname "$0")" && pwd)
migrations="$here/../../storage-postgres/migrations"
db="dj_statement_costs_$$"
psql -q "$url" -c "CREATE DATABASE $db"
trap 'psql -q "$url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
dburl="${url%/*}/$db"
{
    echo "CREATE SCHEMA dj;"
    for f in "$migrations"/*.sql; do
        sed -e "s/{schema_lit}/'dj'/g" -e "s/{schema}/dj/g" -e "s/{channel}/'dj_jobs'/g" "$f"
    done
} | psql -q -v ON_ERROR_STOP=1 "$dburl"
psql -q -v ON_ERROR_STOP=1 "$dburl" -f "$here/statement_costs.sql"

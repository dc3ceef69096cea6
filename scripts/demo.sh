#!/usr/bin/env bash
# Demo on a throwaway cluster: installs what is missing, builds and installs
# usage_guard, starts PostgreSQL on loopback in a temporary directory, runs
# scripts/demo.sql, and removes the cluster.  Usage: bash scripts/demo.sh
source "$(dirname "$0")/common.sh"

ensure_prereqs
build_install
make_workdir
trap 'stop_cluster "$WORKDIR"; rm -rf "$WORKDIR"' EXIT

log "starting a throwaway cluster in $WORKDIR"
start_cluster "$WORKDIR" "${DEMO_PORT:-54329}"
as_owner createdb -h "$PGHOST" -p "$PGPORT" -U postgres demo
cp "$ROOT/scripts/demo.sql" "$WORKDIR/demo.sql"
[ "$(id -u)" = 0 ] && chown postgres: "$WORKDIR/demo.sql"
as_owner psql -X -h "$PGHOST" -p "$PGPORT" -U postgres -d demo -f "$WORKDIR/demo.sql"
log "demo finished; the cluster is removed"

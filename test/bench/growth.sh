#!/usr/bin/env bash
# usage_guard growth benchmark: how a decision and a window load cost as the
# ledger grows and as a feature has more period limits (windows).  On a
# throwaway cluster it starts itself; prints one table.  Not a test.
#
#   bash test/bench/growth.sh            ledgers of 1M and 10M rows
#   bash test/bench/growth.sh --smoke    tiny ledgers, to show the machinery works
#
# For each ledger size and each feature (1, 2 and 4 period limits):
#   - usage_check and usage_consume TPS (pgbench, random tenants, after every
#     tenant's windows were loaded);
#   - a window load after restart: the server is restarted (shared memory
#     empty) and LOADS tenants are checked once each in one statement; the
#     time per tenant is its windows' load (two index scans per period);
#   - rows a load reads: EXPLAIN ANALYZE of the loader's window sum for one
#     tenant's current day, against the rows that window holds.
# Knobs (environment): GROWTH_SIZES, GROWTH_TENANTS, GROWTH_SECONDS, GROWTH_LOADS.
source "$(dirname "$0")/../../scripts/common.sh"

if [ "${1:-}" = "--smoke" ]; then
    : "${GROWTH_SIZES:=20000 100000}" "${GROWTH_TENANTS:=200}" "${GROWTH_SECONDS:=2}" "${GROWTH_LOADS:=100}"
fi
SIZES=${GROWTH_SIZES:-1000000 10000000}
TENANTS=${GROWTH_TENANTS:-10000}
SECS=${GROWTH_SECONDS:-10}
LOADS=${GROWTH_LOADS:-2000}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}

ensure_prereqs
[ "${BENCH_NO_BUILD:-}" = 1 ] || build_install
make_workdir
trap 'stop_cluster "$WORKDIR"; rm -rf "$WORKDIR"' EXIT

CLUSTER_CONF="shared_buffers = '1GB'
autovacuum = off
max_connections = 50
usage_guard.max_counters = $((TENANTS * 4 + 1000))
usage_guard.max_counter_extensions = $((TENANTS * 2 + 1000))
max_wal_size = '4GB'
checkpoint_timeout = '30min'"
start_cluster "$WORKDIR" 55442
psql_g() { as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U postgres -d growth "$@"; }
as_owner createdb -h "$PGHOST" -p "$PGPORT" -U postgres growth

# three features with 1, 2 and 4 period limits; limits high enough that
# nothing is refused
psql_g <<SQL
CREATE EXTENSION usage_guard;
INSERT INTO usage_guard.features (feature_key) VALUES ('w1'), ('w2'), ('w4');
INSERT INTO usage_guard.plans (plan_code) VALUES ('pro');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('pro', 'w1', 'month', 1e14),
    ('pro', 'w2', 'month', 1e14), ('pro', 'w2', 'day', 1e13),
    ('pro', 'w4', 'month', 1e14), ('pro', 'w4', 'week', 1e14), ('pro', 'w4', 'day', 1e13),
    ('pro', 'w4', 'hour', 1e12);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
SELECT 't' || i, 'pro', now() - interval '3 days' FROM generate_series(1, $TENANTS) AS i;
SQL

S=$WORKDIR/scripts
mkdir -p "$S"
for f in w1 w2 w4; do
    printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_check(%s, %s, 1);\n' "$TENANTS" "'t' || :t" "'$f'" >"$S/check_$f.sql"
    printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_consume(%s, %s, 1);\n' "$TENANTS" "'t' || :t" "'$f'" >"$S/consume_$f.sql"
done
[ "$(id -u)" = 0 ] && chown -R postgres: "$S"
tps() {
    as_owner pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$SECS" -f "$S/$1" \
        -h "$PGHOST" -p "$PGPORT" -U postgres growth 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -n 1
}

ROWS_TABLE=""
have=0
for size in $SIZES; do
    log "ledger of $size rows"
    # rows over the last 60 days, spread over tenants and the three features
    # (loaded without the row trigger: reset_counters reloads afterwards)
    psql_g <<SQL
SET session_replication_role = replica;
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, occurred_at, amount, kind)
SELECT 't' || (1 + i % $TENANTS), (ARRAY['w1', 'w2', 'w4'])[1 + (i / $TENANTS) % 3],
       now() - ((i::bigint * 7919) % (60 * 86400)) * interval '1 second', 1, 'record'
  FROM generate_series($have + 1, $size) AS i;
RESET session_replication_role;
VACUUM ANALYZE usage_guard.usage_events;
CHECKPOINT;
SQL
    have=$size
    for f in w1 w2 w4; do
        windows=${f#w}
        # a window load after restart: shared memory starts empty
        as_owner pg_ctl -D "$WORKDIR/data" -l "$WORKDIR/server.log" -w restart >/dev/null
        start=$(date +%s%N)
        psql_g -c "SELECT count(*) FROM generate_series(1, $LOADS) AS i, LATERAL usage_guard.usage_check('t' || i, '$f', 1) c" >/dev/null
        end=$(date +%s%N)
        load_us=$(( (end - start) / 1000 / LOADS ))
        # then every tenant's windows, so that the rates below are warm
        psql_g -c "SELECT count(*) FROM generate_series(1, $TENANTS) AS i, LATERAL usage_guard.usage_check('t' || i, '$f', 1) c" >/dev/null
        check=$(tps "check_$f.sql")
        consume=$(tps "consume_$f.sql")
        # the loader's window sum for t1's current day: rows read vs rows in the window
        explain=$(psql_g -At -c "EXPLAIN (ANALYZE, FORMAT JSON) SELECT pg_catalog.sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 't1' AND feature_key = '$f' AND occurred_at >= date_trunc('day', now()) AND occurred_at < date_trunc('day', now()) + interval '1 day'")
        window_rows=$(psql_g -At -c "SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 't1' AND feature_key = '$f' AND occurred_at >= date_trunc('day', now()) AND occurred_at < date_trunc('day', now()) + interval '1 day'")
        scanned=$(grep -o '"Actual Rows": [0-9]*' <<<"$explain" | sed -n '2p' | grep -o '[0-9]*$')
        node=$(grep -o '"Node Type": "[^"]*"' <<<"$explain" | sed -n '2p' | cut -d'"' -f4)
        ROWS_TABLE+="| $size | $windows | $(printf '%.0f' "${check:-0}") | $(printf '%.0f' "${consume:-0}") | $(awk -v u="$load_us" 'BEGIN { printf "%.2f", u / 1000 }') | $window_rows | ${scanned:-?} ($node) |
"
    done
done

cat <<REPORT

usage_guard growth benchmark: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)
$(as_owner psql -X -At -h "$PGHOST" -p "$PGPORT" -U postgres -d growth -c 'SELECT version()' | cut -d, -f1)
$TENANTS tenants; pgbench -M prepared -c $CLIENTS -j $THREADS, ${SECS}s per run; window load: $LOADS tenants checked once each right after a restart

| ledger rows | period limits (windows) | usage_check TPS | usage_consume TPS | window load after restart (ms per tenant) | rows in t1's day window | rows the day's sum reads (plan node) |
|---:|---:|---:|---:|---:|---:|---|
$ROWS_TABLE
REPORT

#!/usr/bin/env bash
# usage_guard benchmark: pgbench side by side, in one run, on a throwaway
# cluster it starts itself.  Prints one table of TPS and ratios, and the
# shared memory per tracked counter.  Not a test: nothing here fails on a
# slow machine.  CI runs `--smoke` (tiny data, seconds per step).
#
#   bash test/bench/run.sh            full run (10k tenants, 1M ledger rows, then 10M)
#   bash test/bench/run.sh --smoke    a quick run that only shows the machinery works
#
# Knobs (environment): BENCH_TENANTS, BENCH_ROWS, BENCH_SECONDS, BENCH_ROUNDS,
# BENCH_CLIENTS, BENCH_THREADS, BENCH_GROWTH (ledger multiplier for the last step),
# BENCH_BULK_ROWS (rows per bulk-ingest run), BENCH_SCALE_TENANTS (the scale step).
source "$(dirname "$0")/../../scripts/common.sh"

if [ "${1:-}" = "--smoke" ]; then
    : "${BENCH_TENANTS:=200}" "${BENCH_ROWS:=20000}" "${BENCH_SECONDS:=2}" "${BENCH_ROUNDS:=1}"
    : "${BENCH_BULK_ROWS:=5000}" "${BENCH_SCALE_TENANTS:=2000}"
fi
TENANTS=${BENCH_TENANTS:-10000}
ROWS=${BENCH_ROWS:-1000000}
SECONDS_PER_RUN=${BENCH_SECONDS:-15}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=${BENCH_CLIENTS:-8}
THREADS=${BENCH_THREADS:-2}
GROWTH=${BENCH_GROWTH:-10}
BULK_ROWS=${BENCH_BULK_ROWS:-200000}
SCALE=${BENCH_SCALE_TENANTS:-1000000}
[ "$SCALE" -gt "$TENANTS" ] || SCALE=$((TENANTS * 10))

ensure_prereqs
[ "${BENCH_NO_BUILD:-}" = 1 ] || build_install
make_workdir
trap 'stop_cluster "$WORKDIR"; rm -rf "$WORKDIR"' EXIT

# autovacuum off: the script vacuums itself, and a background vacuum of the
# freshly grown ledger would land in whichever run happens to be next
CLUSTER_CONF="shared_buffers = '1GB'
autovacuum = off
max_connections = 50
usage_guard.max_counters = $((TENANTS * 10 + SCALE + 1000))
usage_guard.max_counter_extensions = $((TENANTS * 6 + 1000))
usage_guard.max_tenants = $((SCALE + TENANTS + 1000))
max_wal_size = '4GB'
checkpoint_timeout = '30min'"
start_cluster "$WORKDIR" 55432
psql_bench() { as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U postgres -d bench "$@"; }
as_owner createdb -h "$PGHOST" -p "$PGPORT" -U postgres bench

log "loading $TENANTS tenants and $ROWS ledger rows"
psql_bench <<SQL
CREATE EXTENSION usage_guard;
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('pro');
-- limits high enough that nothing is refused: every run measures the full path
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('pro', 'tokens', 'month', 1e13, 1e14), ('pro', 'tokens', 'day', NULL, 1e13);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
SELECT 't' || i, 'pro', now() - interval '3 days' FROM generate_series(1, $TENANTS) AS i;

-- history in earlier months; loaded without the ledger's row trigger, so
-- the live counters are reset afterwards and reload from the ledger
SET session_replication_role = replica;
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, occurred_at, amount, kind)
SELECT 't' || (1 + i % $TENANTS), 'tokens',
       date_trunc('month', now()) - interval '1 second' - (i % 5000000) * interval '1 second', 1 + i % 7, 'record'
  FROM generate_series(1, $ROWS) AS i;
RESET session_replication_role;
DO \$\$ BEGIN PERFORM usage_guard.reset_counters(); END \$\$;

-- baseline 1: a plain single-row INSERT
CREATE TABLE plain_insert (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                           tenant_id text NOT NULL, amount numeric NOT NULL,
                           created_at timestamptz NOT NULL DEFAULT now());
-- baseline 2: the hand-written quota of application code: a safe ON CONFLICT
-- check-and-increment of a counter row, plus a ledger insert
CREATE TABLE hand_counters (tenant_id text, feature_key text, window_start timestamptz,
                            usage numeric NOT NULL, PRIMARY KEY (tenant_id, feature_key, window_start));
CREATE TABLE hand_ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id text NOT NULL,
                          feature_key text NOT NULL, amount numeric NOT NULL,
                          occurred_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION hand_consume(p_tenant text, p_feature text, p_amount numeric, p_limit numeric)
RETURNS boolean LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO hand_counters AS c VALUES (p_tenant, p_feature, date_trunc('month', now()), p_amount)
    ON CONFLICT (tenant_id, feature_key, window_start)
    DO UPDATE SET usage = c.usage + excluded.usage WHERE c.usage + excluded.usage <= p_limit;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO hand_ledger (tenant_id, feature_key, amount) VALUES (p_tenant, p_feature, p_amount);
    RETURN true;
END
\$\$;
-- gateway limits: every tenant has key k -> user u -> team g; limits at
-- every level (quota, request and token rates, concurrency) high enough
-- that nothing is refused, and a rate-only key r
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id)
SELECT 't' || i, s.id, s.level, s.parent FROM generate_series(1, $TENANTS) AS i,
       (VALUES (1, 'g', 'team', NULL), (2, 'u', 'user', 'g'), (3, 'k', 'api_key', 'u'),
               (4, 'r', 'api_key', NULL)) AS s(ord, id, level, parent)
 ORDER BY i, s.ord;
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, per, hard_limit) VALUES
    ('pro', 'api_key', 'quota', 'tokens', 'day', NULL, 1e13),
    ('pro', 'api_key', 'rate', NULL, NULL, '1 second', 1e9),
    ('pro', 'api_key', 'rate', 'tokens', NULL, '1 minute', 1e12),
    ('pro', 'user', 'quota', 'tokens', 'day', NULL, 1e13),
    ('pro', 'user', 'rate', NULL, NULL, '1 minute', 1e9),
    ('pro', 'team', 'quota', 'tokens', 'month', NULL, 1e14),
    ('pro', 'tenant', 'rate', NULL, NULL, '1 second', 1e9);
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, hard_limit) VALUES
    ('pro', 'api_key', 'concurrency', 1000000);
-- gateway II: a priced model and USD budgets on the key (rolling hour, day)
-- and the team (month), high enough that nothing is refused
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('cost_usd', 'USD');
INSERT INTO usage_guard.models (model, provider) VALUES ('bench-model', 'bench');
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million)
VALUES ('bench-model', '2020-01-01', 3, 15);
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, rolling, hard_limit) VALUES
    ('pro', 'api_key', 'quota', 'cost_usd', NULL, '1 hour', 1e12),
    ('pro', 'api_key', 'quota', 'cost_usd', 'day', NULL, 1e12),
    ('pro', 'team', 'quota', 'cost_usd', 'month', NULL, 1e13);
-- reference for the ledger write: a table of the ledger's shape and indexes
-- (no trigger), written the row usage_consume writes
CREATE TABLE ledger_shape (LIKE usage_guard.usage_events INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE ledger_shape ADD PRIMARY KEY (tenant_id, feature_key, occurred_at, event_id) INCLUDE (amount);
CREATE UNIQUE INDEX ON ledger_shape (tenant_id, feature_key, idempotency_key) WHERE idempotency_key IS NOT NULL;
VACUUM ANALYZE;
SQL

S=$WORKDIR/scripts
mkdir -p "$S"
echo 'SELECT 1;' >"$S/select1.sql"
printf '\\set t random(1, %d)\nINSERT INTO plain_insert (tenant_id, amount) VALUES (%s, 1);\n' "$TENANTS" "'t' || :t" >"$S/insert.sql"
printf '\\set t random(1, %d)\nSELECT hand_consume(%s, %s, 1, 1e14);\n' "$TENANTS" "'t' || :t" "'tokens'" >"$S/hand.sql"
printf 'SELECT hand_consume(%s, %s, 1, 1e14);\n' "'t1'" "'tokens'" >"$S/hand_one.sql"
printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_check(%s, %s, 1);\n' "$TENANTS" "'t' || :t" "'tokens'" >"$S/check.sql"
printf '\\set t random(1, %d)\nSELECT usage_guard.usage_allowed(%s, %s, 1);\n' "$TENANTS" "'t' || :t" "'tokens'" >"$S/allowed.sql"
printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_consume(%s, %s, 1);\n' "$TENANTS" "'t' || :t" "'tokens'" >"$S/consume.sql"
printf '\\set t random(1, %d)\nINSERT INTO ledger_shape (tenant_id, feature_key, amount, kind) VALUES (%s, %s, 1, %s);\n' "$TENANTS" "'t' || :t" "'tokens'" "'consume'" >"$S/ledger_insert.sql"
printf 'SELECT * FROM usage_guard.usage_consume(%s, %s, 1);\n' "'t1'" "'tokens'" >"$S/consume_one.sql"
# reference: what SELECT * FROM a composite-returning function costs by
# itself (a built-in one returning 15 columns from shared memory)
echo 'SELECT * FROM pg_catalog.pg_stat_get_wal_receiver();' >"$S/composite.sql"
# gateway: a request decision over key + user + team + tenant (quota + rates),
# the same with a lease taken and released (two statements), rate limits only
printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.request_consume(%s, %s, %s, 1);\n' "$TENANTS" "'t' || :t" "'k'" "'tokens'" >"$S/gw_request.sql"
printf '\\set t random(1, %d)\nSELECT lease_id FROM usage_guard.request_consume(%s, %s, %s, 1, lease_ttl => %s) \\gset\nSELECT usage_guard.lease_release(%s, :%s);\n' "$TENANTS" "'t' || :t" "'k'" "'tokens'" "'1 minute'" "'t' || :t" "lease_id" >"$S/gw_lease.sql"
printf '\\set t random(1, %d)\nSELECT allowed FROM usage_guard.request_throttle(%s, %s);\n' "$TENANTS" "'t' || :t" "'r'" >"$S/gw_throttle.sql"
# gateway II: admit then settle (two round trips, as a gateway does), vs two plain INSERTs
printf '\\set t random(1, %d)\nSELECT reservation_id FROM usage_guard.admit(%s, %s, %s, 100, 100) \\gset\nSELECT settled FROM usage_guard.settle(%s, :%s, 80, 90);\n' "$TENANTS" "'t' || :t" "'k'" "'bench-model'" "'t' || :t" "reservation_id" >"$S/gw_admit.sql"
printf '\\set t random(1, %d)\nINSERT INTO plain_insert (tenant_id, amount) VALUES (%s, 1);\nINSERT INTO plain_insert (tenant_id, amount) VALUES (%s, 1);\n' "$TENANTS" "'t' || :t" "'t' || :t" >"$S/insert2.sql"
[ "$(id -u)" = 0 ] && chown -R postgres: "$S"

declare -A TPS
# run NAME SCRIPT SECONDS: one pgbench run; appends its TPS to TPS[NAME]
# (further arguments go to pgbench: -C for a new connection per transaction)
run() {
    local tps name=$1 script=$2 secs=$3
    shift 3
    tps=$(as_owner pgbench -n -M prepared -c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$S/$script" "$@" \
            -h "$PGHOST" -p "$PGPORT" -U postgres bench 2>&1 |
          sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -n 1)
    TPS[$name]="${TPS[$name]:-} ${tps:-0}"
}
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print a[int((NR + 1) / 2)]}'; }

log "warming up caches and live counters"
run warm check.sql 2; run warm consume.sql 2; run warm gw_request.sql 2; run warm gw_throttle.sql 2
run warm gw_admit.sql 2; run warm allowed.sql 2

TESTS=(select1 composite insert ledger_insert insert2 hand hand_one check allowed consume consume_one gw_request gw_lease gw_throttle gw_admit)
# fresh connections: a new backend for every transaction (pgbench -C), as a
# pooler that recycles server connections or a restarted application gives
FRESH=(select1 composite check allowed)
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS (${SECONDS_PER_RUN}s per run)"
    for t in "${TESTS[@]}"; do run "$t" "$t.sql" "$SECONDS_PER_RUN"; done
    for t in "${FRESH[@]}"; do run "${t}_fresh" "$t.sql" "$SECONDS_PER_RUN" -C; done
done

# bulk ingest: the same rows by COPY into a table of the ledger's shape (no
# usage_guard), by COPY into the ledger (its row trigger checks and counts
# them) and by usage_record_batch in calls of 1,000 rows; times in ms
log "bulk ingest: $BULK_ROWS rows per run"
psql_bench <<SQL
\\copy (SELECT 't' || (1 + i % $TENANTS), 'tokens', 1 + i % 3, 'record', now() - (i % 3600) * interval '1 second' FROM generate_series(1, $BULK_ROWS) AS i) TO '$S/bulk.csv' WITH (FORMAT csv)
CREATE TABLE bulk_rows (tenant_id text, feature_key text, amount numeric, kind text, occurred_at timestamptz);
\\copy bulk_rows FROM '$S/bulk.csv' WITH (FORMAT csv)
CREATE TABLE bulk_calls AS
SELECT c, array_agg(tenant_id) AS t, array_agg(feature_key) AS f, array_agg(amount) AS a, array_agg(occurred_at) AS o
  FROM (SELECT (row_number() OVER ()) / 1000 AS c, * FROM bulk_rows) x GROUP BY c;
CHECKPOINT;
SQL
declare -A MS
timed() {
    local name=$1 start end
    shift
    start=$(date +%s%N)
    psql_bench -c "$*" >/dev/null
    end=$(date +%s%N)
    MS[$name]="${MS[$name]:-} $(( (end - start) / 1000000 ))"
}
for r in $(seq 1 "$ROUNDS"); do
    timed copy_shape "\\copy ledger_shape (tenant_id, feature_key, amount, kind, occurred_at) FROM '$S/bulk.csv' WITH (FORMAT csv)"
    timed copy_ledger "\\copy usage_guard.usage_events (tenant_id, feature_key, amount, kind, occurred_at) FROM '$S/bulk.csv' WITH (FORMAT csv)"
    timed batch "SELECT sum(usage_guard.usage_record_batch(t, f, a, o)) FROM bulk_calls"
done
bulk_exact=$(psql_bench -At -c "
    SELECT count(*) FILTER (WHERE c.usage + c.reserved <> (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                                          WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                                            AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end))
           || ' of ' || count(*)
      FROM usage_guard.live_counters() c WHERE c.subject_id IS NULL AND c.window_end - c.window_start <= interval '1 day'")

# scale: $SCALE tenants, each with a live counter, against the $TENANTS-tenant rows above
log "scale: $SCALE tenants"
psql_bench <<SQL
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
SELECT 't' || i, 'pro', now() - interval '3 days' FROM generate_series($TENANTS + 1, $SCALE) AS i;
VACUUM ANALYZE usage_guard.tenant_subscriptions;
SELECT count(*) FROM generate_series(1, $SCALE) AS i,
       LATERAL usage_guard.usage_check('t' || i, 'tokens', 1) c WHERE c.allowed;
SQL
printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_check(%s, %s, 1);\n' "$SCALE" "'t' || :t" "'tokens'" >"$S/check_scale.sql"
printf '\\set t random(1, %d)\nSELECT * FROM usage_guard.usage_consume(%s, %s, 1);\n' "$SCALE" "'t' || :t" "'tokens'" >"$S/consume_scale.sql"
printf '\\set t random(1, %d)\nINSERT INTO ledger_shape (tenant_id, feature_key, amount, kind) VALUES (%s, %s, 1, %s);\n' "$SCALE" "'t' || :t" "'tokens'" "'consume'" >"$S/ledger_insert_scale.sql"
run warm check_scale.sql 2
for r in $(seq 1 "$ROUNDS"); do
    run check_scale check_scale.sql "$SECONDS_PER_RUN"
    run consume_scale consume_scale.sql "$SECONDS_PER_RUN"
    run ledger_insert_scale ledger_insert_scale.sql "$SECONDS_PER_RUN"
done
scale_info=$(psql_bench -At -c "SELECT counters_used || ' counters, ' || pg_size_pretty(shmem_bytes) || ' in all (' || bytes_per_counter || ' bytes per tenant/feature with up to two windows; '
                                       || counter_extensions_used || ' of ' || max_counter_extensions || ' extension slots in use)' FROM usage_guard.shmem_info()")

# the history comparison: equal blocks right before and right after growth,
# each after a checkpoint, so background writes do not favour either side
psql_bench -c 'CHECKPOINT'
for r in $(seq 1 "$ROUNDS"); do run check_before check.sql "$SECONDS_PER_RUN"; done

log "growing the ledger ${GROWTH}x"
psql_bench <<SQL
SET session_replication_role = replica;
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, occurred_at, amount, kind)
SELECT 't' || (1 + i % $TENANTS), 'tokens',
       date_trunc('month', now()) - interval '1 second' - (i % 50000000) * interval '1 second', 1, 'record'
  FROM generate_series(1, $((ROWS * (GROWTH - 1)))) AS i;
RESET session_replication_role;
DO \$\$ BEGIN PERFORM usage_guard.reset_counters(); END \$\$;
VACUUM ANALYZE usage_guard.usage_events;
CHECKPOINT;
SQL
run warm check.sql 2
for r in $(seq 1 "$ROUNDS"); do run check_grown check.sql "$SECONDS_PER_RUN"; done

info=$(psql_bench -At -c "SELECT bytes_per_counter, counters_used, max_counters FROM usage_guard.shmem_info()")
policy_info=$(psql_bench -At -c "SELECT format('%s tenants cached of %s, %s bytes, %s hits, %s loads', tenants_cached, max_tenants, policy_shmem_bytes, policy_hits, policy_loads) FROM usage_guard.shmem_info()")

# counters that do not fit: max_counters at a tenth of the $SCALE tenants
# (shared memory is sized at start: restart with the new setting)
log "eviction: max_counters = $((SCALE / 10)) for $SCALE tenants"
psql_bench -c "ALTER SYSTEM SET usage_guard.max_counters = $((SCALE / 10))" -c "ALTER SYSTEM SET usage_guard.max_counter_extensions = $((SCALE / 40))"
as_owner pg_ctl -D "$WORKDIR/data" -l "$WORKDIR/server.log" -w restart >/dev/null
run warm check_scale.sql 2
for r in $(seq 1 "$ROUNDS"); do
    run check_evict check_scale.sql "$SECONDS_PER_RUN"
    run consume_evict consume_scale.sql "$SECONDS_PER_RUN"
done
evict_exact=$(psql_bench -At -c "
    SELECT count(*) FILTER (WHERE c.usage + c.reserved <> (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                                          WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                                            AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end))
           || ' of ' || count(*) FROM usage_guard.live_counters() c WHERE c.subject_id IS NULL")
evict_full=$(grep -c 'shared memory for counters is full' "$WORKDIR/server.log" || true)

declare -A M
for t in "${TESTS[@]}" check_before check_grown check_scale consume_scale ledger_insert_scale check_evict consume_evict; do M[$t]=$(median "${TPS[$t]}"); done
for t in copy_shape copy_ledger batch; do M[$t]=$(median "${MS[$t]}"); done
for t in "${FRESH[@]}"; do M[${t}_fresh]=$(median "${TPS[${t}_fresh]}"); done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ledger_rows=$(psql_bench -At -c "SELECT count(*) FROM usage_guard.usage_events")

cat <<REPORT

usage_guard benchmark: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)
$(as_owner psql -X -At -h "$PGHOST" -p "$PGPORT" -U postgres -d bench -c 'SELECT version()' | cut -d, -f1)
pgbench -M prepared -c $CLIENTS -j $THREADS, ${SECONDS_PER_RUN}s per run, median of $ROUNDS rounds run in turn;
$TENANTS tenants, $ROWS ledger rows ($ledger_rows after growth), synchronous_commit = on, autovacuum off (explicit VACUUM)

| workload                                        |        TPS | ratio                    | target |
|-------------------------------------------------|-----------:|--------------------------|--------|
| SELECT 1                                        | $(printf '%10.0f' "${M[select1]}") | 1.00                     |        |
| reference: SELECT * FROM a built-in 15-column composite function | $(printf '%10.0f' "${M[composite]}") | $(ratio "${M[composite]}" "${M[select1]}") x SELECT 1            |        |
| plain single-row INSERT                         | $(printf '%10.0f' "${M[insert]}") | $(ratio "${M[insert]}" "${M[select1]}") x SELECT 1            |        |
| hand-written ON CONFLICT check + ledger insert  | $(printf '%10.0f' "${M[hand]}") | $(ratio "${M[hand]}" "${M[insert]}") x INSERT              |        |
| same, all clients on one tenant                 | $(printf '%10.0f' "${M[hand_one]}") | $(ratio "${M[hand_one]}" "${M[insert]}") x INSERT              |        |
| usage_check, random tenants                     | $(printf '%10.0f' "${M[check]}") | $(ratio "${M[check]}" "${M[composite]}") x composite ref       | >= 0.95 |
| usage_allowed (boolean), random tenants         | $(printf '%10.0f' "${M[allowed]}") | $(ratio "${M[allowed]}" "${M[select1]}") x SELECT 1            | >= 0.90 |
| fresh connections (-C): SELECT 1                | $(printf '%10.0f' "${M[select1_fresh]}") | 1.00                     |        |
| fresh connections: composite reference          | $(printf '%10.0f' "${M[composite_fresh]}") | $(ratio "${M[composite_fresh]}" "${M[select1_fresh]}") x fresh SELECT 1      |        |
| fresh connections: usage_check                  | $(printf '%10.0f' "${M[check_fresh]}") | $(ratio "${M[check_fresh]}" "${M[composite_fresh]}") x fresh composite    | >= 0.95 |
| fresh connections: usage_allowed                | $(printf '%10.0f' "${M[allowed_fresh]}") | $(ratio "${M[allowed_fresh]}" "${M[select1_fresh]}") x fresh SELECT 1      | >= 0.90 |
| reference: INSERT of the ledger row into a table of its shape and indexes | $(printf '%10.0f' "${M[ledger_insert]}") | $(ratio "${M[ledger_insert]}" "${M[insert]}") x INSERT              |        |
| usage_consume, random tenants                   | $(printf '%10.0f' "${M[consume]}") | $(ratio "${M[consume]}" "${M[ledger_insert]}") x ledger-shaped INSERT | >= 0.90 |
| usage_consume, random tenants (same row)        |            | $(ratio "${M[consume]}" "${M[insert]}") x plain INSERT        |        |
| usage_consume, all clients on one tenant        | $(printf '%10.0f' "${M[consume_one]}") | $(ratio "${M[consume_one]}" "${M[consume]}") x random consume      | >= 0.80 |
| gateway: request_consume, key+user+team+tenant (quotas + rates) | $(printf '%10.0f' "${M[gw_request]}") | $(ratio "${M[gw_request]}" "${M[consume]}") x usage_consume       | >= 0.60 |
| gateway: same + lease taken and released (2 statements) | $(printf '%10.0f' "${M[gw_lease]}") | $(ratio "${M[gw_lease]}" "${M[consume]}") x usage_consume       | >= 0.60 |
| gateway: request_throttle, rate limits only     | $(printf '%10.0f' "${M[gw_throttle]}") | $(ratio "${M[gw_throttle]}" "${M[select1]}") x SELECT 1            | >= 0.70 |
| two plain single-row INSERTs (2 statements)     | $(printf '%10.0f' "${M[insert2]}") | $(ratio "${M[insert2]}" "${M[insert]}") x INSERT              |        |
| gateway: admit + settle (tokens, USD budgets, 2 statements) | $(printf '%10.0f' "${M[gw_admit]}") | $(ratio "${M[gw_admit]}" "${M[insert2]}") x two INSERTs         | >= 0.60 |
| bulk: COPY of $BULK_ROWS rows into a table of the ledger's shape (ms) | $(printf '%10.0f' "${M[copy_shape]}") | 1.00                     |        |
| bulk: COPY of the same rows into usage_events (ms) | $(printf '%10.0f' "${M[copy_ledger]}") | $(ratio "${M[copy_shape]}" "${M[copy_ledger]}") x COPY speed         | >= 0.80 |
| bulk: usage_record_batch, calls of 1,000 rows (ms) | $(printf '%10.0f' "${M[batch]}") | $(ratio "${M[copy_shape]}" "${M[batch]}") x COPY speed         | >= 0.80 |
| scale: usage_check, $SCALE tenants, each with a live counter | $(printf '%10.0f' "${M[check_scale]}") | $(ratio "${M[check_scale]}" "${M[check]}") x $TENANTS-tenant check | >= 0.90 |
| scale: usage_consume, $SCALE tenants            | $(printf '%10.0f' "${M[consume_scale]}") | $(ratio "${M[consume_scale]}" "${M[consume]}") x $TENANTS-tenant consume | >= 0.90 |
| scale: ledger-shaped INSERT, $SCALE tenants     | $(printf '%10.0f' "${M[ledger_insert_scale]}") | $(ratio "${M[ledger_insert_scale]}" "${M[ledger_insert]}") x $TENANTS-tenant INSERT |        |
| scale: usage_consume against that INSERT        |            | $(ratio "${M[consume_scale]}" "${M[ledger_insert_scale]}") x ledger-shaped INSERT |        |
| eviction: usage_check, max_counters = $((SCALE / 10)) for $SCALE tenants | $(printf '%10.0f' "${M[check_evict]}") | $(ratio "${M[check_evict]}" "${M[check_scale]}") x all fitting       |        |
| eviction: usage_consume, same                   | $(printf '%10.0f' "${M[consume_evict]}") | $(ratio "${M[consume_evict]}" "${M[consume_scale]}") x all fitting       |        |
| usage_check just before growing the ledger      | $(printf '%10.0f' "${M[check_before]}") |                          |        |
| usage_check after ${GROWTH}x more ledger history       | $(printf '%10.0f' "${M[check_grown]}") | $(ratio "${M[check_grown]}" "${M[check_before]}") x check before        | >= 0.95 |

shared memory per tracked tenant/feature: ${info%%|*} bytes with up to two live windows (more, and rate state, in extension slots; $(echo "$info" | cut -d'|' -f2) of $(echo "$info" | cut -d'|' -f3) in use before the eviction step)
scale step: $scale_info
live windows that differ from the ledger: after bulk ingest $bulk_exact; after the eviction runs $evict_exact; "counters full" log lines during the eviction runs: $evict_full
bulk runs (ms): $(for t in copy_shape copy_ledger batch; do printf '%s:%s; ' "$t" "${MS[$t]}"; done)
all runs (TPS): $(for t in "${TESTS[@]}" check_before check_grown check_scale consume_scale ledger_insert_scale check_evict consume_evict; do printf '%s:%s; ' "$t" "${TPS[$t]}"; done)
$(for t in "${FRESH[@]}"; do printf '%s_fresh:%s; ' "$t" "${TPS[${t}_fresh]}"; done)
shared policy cache (before the eviction step): $policy_info
REPORT

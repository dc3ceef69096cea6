#!/usr/bin/env bash
# scripts/citus.sh: a throwaway Citus cluster (a coordinator and two workers on
# loopback) with usage_guard, for the scale-out work (docs/citus.md).
#
#   bash scripts/citus.sh test    build, start, distribute, check exactness under load, a shard move and a restart, stop
#   bash scripts/citus.sh bench   build, start, distribute, print the benchmark row, stop
#   bash scripts/citus.sh up      build and start; prints how to connect
#   bash scripts/citus.sh down    stop the nodes and remove their directory
#
# CITUS_ASAN=1 builds usage_guard with AddressSanitizer for the nodes (the
# ASan runtime preloaded into their postmasters, as scripts/sanitize.sh
# does) and makes a report in usage_guard's code a failed check: the Citus
# paths (src/citus.c, two-phase commit) run nowhere else.
#
# Citus is not a Debian package: it is built from the release tarball in
# ../shared/deps (CITUS_TARBALL), never copied into this repository.  The
# build is cached per tarball and PostgreSQL major version (CITUS_CACHE) and
# patched at build time for Debian's PostgreSQL 15.20 headers, which export
# have_createdb_privilege() that Citus 13.2.2 also defines as a static
# inline for PostgreSQL < 16.  Citus and usage_guard are installed with
# DESTDIR into a private copy of the PostgreSQL installation (stage_postgres),
# so the system-wide installation is never touched.
source "$(dirname "$0")/common.sh"

CITUS_TARBALL=${CITUS_TARBALL:-$ROOT/../shared/deps/citus-13.2.2.tar.gz}
CITUS_CACHE=${CITUS_CACHE:-/var/cache/usage_guard/citus}
CITUS_DIR=${CITUS_DIR:-/tmp/usage_guard-citus}
STAGE=$CITUS_DIR/stage
EXTVERSION=$(sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" "$ROOT/usage_guard.control")
NODES=$CITUS_DIR/nodes
# The Debian packages Citus's build needs (configured --without-libcurl)
CITUS_BUILD_DEPS="liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libpam0g-dev libxslt1-dev libreadline-dev"

usage() { sed -n '4,13p' "$0" | sed 's/^# \{0,1\}//'; }

# The built Citus tree for this tarball and PostgreSQL major (cached)
build_citus() {
    local sum src missing=()
    [ -f "$CITUS_TARBALL" ] || { log "no Citus source at $CITUS_TARBALL (set CITUS_TARBALL)"; exit 1; }
    sum=$(sha256sum "$CITUS_TARBALL" | cut -c1-16)
    src=$CITUS_CACHE/$sum-pg$PG_MAJOR
    if [ -f "$src/.built" ]; then
        echo "$src"
        return
    fi
    for p in $CITUS_BUILD_DEPS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { log "missing build packages: ${missing[*]} (sudo apt-get install -y ...)"; exit 1; }
        log "installing Citus's build packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    log "building Citus from $(basename "$CITUS_TARBALL") for PostgreSQL $PG_MAJOR (about 2 minutes, once)"
    rm -rf "$src"
    mkdir -p "$src"
    tar -C "$src" --strip-components=1 -xzf "$CITUS_TARBALL"
    # Debian's 15.20 exports have_createdb_privilege(): rename Citus's own copy
    python3 - "$src/src/include/pg_version_compat.h" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = "static inline bool\nhave_createdb_privilege(void)\n{"
if s.count(old) == 1:
    s = s.replace(old, "#define have_createdb_privilege citus_compat_have_createdb_privilege\n" + old)
    open(p, "w").write(s)
PY
    (cd "$src" && ./configure --without-libcurl PG_CONFIG="$(command -v pg_config)" >"$src/configure.out" 2>&1 &&
        make -j"$(nproc)" -s >"$src/make.out" 2>&1) || {
        log "the Citus build failed; its output:"
        tail -n 40 "$src/configure.out" "$src/make.out" >&2
        exit 1
    }
    touch "$src/.built"
    echo "$src"
}

node_port() { cat "$NODES/n$1.port"; }
# pg_ctl for node N (the ASan runtime in its environment under CITUS_ASAN)
node_ctl() {
    local n=$1
    shift
    as_owner env $(cat "$CITUS_DIR/node.env" 2>/dev/null) "$(cat "$CITUS_DIR/bindir")/pg_ctl" \
        -D "$NODES/n$n" -l "$NODES/n$n.log" -w "$@" >/dev/null
}
psql_node() {
    local n=$1
    shift
    as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$NODES" -p "$(node_port "$n")" -U postgres "$@"
}

# usage_guard built with AddressSanitizer into the stage (a copy of the
# tree, the Makefile's own flags plus ASan's; no JIT bitcode, so JIT cannot
# inline uninstrumented code), and the nodes' environment preloading the
# runtime, logging to $CITUS_DIR/asan.
build_asan() {
    mkdir -p "$CITUS_DIR/asan"
    build_variant "$CITUS_DIR/build-asan" "$STAGE" \
        "$(makefile_cflags) -fsanitize=address -fno-omit-frame-pointer -g -O1" "-fsanitize=address"
    chown -R postgres: "$CITUS_DIR/asan" 2>/dev/null || true
    echo "LD_PRELOAD=$(asan_preload "$CITUS_DIR/asan-preload" | tr ' ' ':') ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:log_path=$CITUS_DIR/asan/asan" >"$CITUS_DIR/node.env"
}

up() {
    local src bindir
    ensure_prereqs
    src=$(build_citus)
    down_quiet
    mkdir -p "$CITUS_DIR"
    chmod 755 "$CITUS_DIR"
    stage_postgres "$STAGE"
    make -C "$src" -s install DESTDIR="$STAGE" >/dev/null
    if [ -n "${CITUS_ASAN:-}" ]; then
        build_asan
    else
        make -C "$ROOT" -s install DESTDIR="$STAGE" >/dev/null
    fi
    chmod -R a+rX "$STAGE"
    bindir=$STAGE$(pg_config --bindir)
    echo "$bindir" >"$CITUS_DIR/bindir"
    mkdir -p "$NODES"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$NODES"
    for n in 0 1 2; do
        local port
        port=$(free_port $((57640 + n * 10)))
        echo "$port" >"$NODES/n$n.port"
        as_owner "$bindir/initdb" -D "$NODES/n$n" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
        cat >>"$NODES/n$n/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$NODES'
shared_preload_libraries = 'citus,usage_guard'
wal_level = logical
max_prepared_transactions = 20
max_connections = 100
CONF
        node_ctl "$n" start
        psql_node "$n" -d postgres -c 'CREATE EXTENSION citus'
    done
    psql_node 0 -d postgres -c "SELECT citus_set_coordinator_host('127.0.0.1', $(node_port 0))" \
        -c "SELECT citus_add_node('127.0.0.1', $(node_port 1))" \
        -c "SELECT citus_add_node('127.0.0.1', $(node_port 2))" >/dev/null
    log "Citus cluster up: coordinator psql -h $NODES -p $(node_port 0) -U postgres; workers on $(node_port 1), $(node_port 2)"
}

down_quiet() {
    local bindir
    [ -d "$NODES" ] || { rm -rf "$CITUS_DIR"; return 0; }
    bindir=$(cat "$CITUS_DIR/bindir" 2>/dev/null || echo "$STAGE$(pg_config --bindir)")
    for n in 0 1 2; do
        [ -f "$NODES/n$n/postmaster.pid" ] &&
            as_owner "$bindir/pg_ctl" -D "$NODES/n$n" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$CITUS_DIR"
}

# TAP-style checks: "ok N - what" / "not ok N - what" (scripts/test.sh counts them)
ntests=0
nfailed=0
check() {
    ntests=$((ntests + 1))
    if [ "$2" = "$3" ]; then
        echo "ok $ntests - $1"
    else
        echo "not ok $ntests - $1 (expected '$3', got '$2')"
        nfailed=$((nfailed + 1))
    fi
}
q() { psql_node "$1" -d postgres -At -c "$2"; }
q_as() { as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$NODES" -p "$(node_port "$2")" -U "$1" -d postgres -At -c "$3"; }

# pgbench through the coordinator (its exit status ignored: a worker's
# restart aborts clients, which is the point of one phase)
pgbench_coordinator() {
    as_owner "$(cat "$CITUS_DIR/bindir")/pgbench" -n -h "$NODES" -p "$(node_port 0)" -U postgres -j 2 "$@" postgres
}
load() {
    local seconds=$1
    shift
    pgbench_coordinator -c 6 -T "$seconds" "$@" >>"$CITUS_DIR/pgbench.log" 2>&1 || true
}

# The hot tenant's usage today (through the coordinator) and the live
# counters of every worker that differ from the ledger
hot_usage() {
    q 0 "SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events WHERE tenant_id = 'hot' AND feature_key = 'calls' AND occurred_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
}
counters_off_ledger() {
    local out
    out=$(psql_node 0 -d postgres -At -q <<'SQL'
SET client_min_messages = error;
-- the counters of the worker that holds each tenant's shard (a worker a
-- shard moved away from keeps its unused counters until Citus drops the
-- old shard: src/citus.c)
CREATE TEMP TABLE live AS
SELECT c.* FROM run_command_on_workers($$SELECT coalesce(json_agg(c), '[]') FROM usage_guard.live_counters() c$$) w,
       json_populate_recordset(NULL::usage_guard.usage_counters, w.result::json) c
 WHERE w.nodeport = (SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                      WHERE p.shardid = get_shard_id_for_distribution_column('usage_guard.usage_events', c.tenant_id));
CREATE TEMP TABLE ledger AS SELECT tenant_id, feature_key, occurred_at, amount FROM usage_guard.usage_events;
CREATE TEMP TABLE resets AS SELECT tenant_id, feature_key, window_start, window_end, amount FROM usage_guard.usage_resets;
CREATE TEMP TABLE compared AS
SELECT live.*, (SELECT coalesce(sum(amount), 0) FROM ledger l
                 WHERE l.tenant_id = live.tenant_id AND l.feature_key = live.feature_key
                   AND l.occurred_at >= live.window_start AND l.occurred_at < live.window_end)
             + (SELECT coalesce(sum(amount), 0) FROM resets r
                 WHERE r.tenant_id = live.tenant_id AND r.feature_key = live.feature_key
                   AND r.window_start = live.window_start AND r.window_end = live.window_end) AS ledger
  FROM live WHERE subject_id IS NULL;
SELECT 'mismatch: ' || row_to_json(c) FROM compared c WHERE usage <> ledger;
SELECT count(*) FILTER (WHERE usage <> ledger) || '/' || (count(*) > 0) FROM compared;
SQL
)
    grep '^mismatch' <<<"$out" >&2 || true
    tail -n 1 <<<"$out"
}
hot_port() {
    q 0 "SELECT nodeport FROM pg_dist_placement JOIN pg_dist_node USING (groupid) WHERE shardid = get_shard_id_for_distribution_column('usage_guard.usage_events', 'hot')"
}
# the node number (1 or 2) of the hot tenant's worker
hot_node() {
    local n port
    port=$(hot_port)
    for n in 1 2; do [ "$(node_port "$n")" = "$port" ] && echo "$n"; done
}

test_cluster() {
    local got before other moved_to ports n
    up
    [ -n "${CITUS_KEEP:-}" ] || trap down_quiet EXIT
    : >"$CITUS_DIR/pgbench.log"
    # the last release before distribute(), then ALTER EXTENSION UPDATE: the
    # coordinator's CREATE and ALTER EXTENSION run on every worker too
    psql_node 0 -d postgres -c "CREATE EXTENSION usage_guard VERSION '0.8.0'" -c 'ALTER EXTENSION usage_guard UPDATE'
    for n in 1 2; do
        check "usage_guard 0.8.0 created and updated on the coordinator is at $EXTVERSION on worker $n" \
            "$(q "$n" "SELECT extversion FROM pg_extension WHERE extname = 'usage_guard'")" "$EXTVERSION"
    done

    # refusals, each changing nothing: a unique index without tenant_id, and
    # a worker that does not preload usage_guard
    q 0 "CREATE UNIQUE INDEX not_by_tenant ON usage_guard.usage_events (event_id)" >/dev/null
    got=$(psql_node 0 -d postgres -At -c "SELECT * FROM usage_guard.distribute()" 2>&1 || true)
    check "distribute() refuses a unique index without tenant_id" \
        "$(grep -c 'not_by_tenant does not include tenant_id' <<<"$got")" 1
    q 0 "DROP INDEX usage_guard.not_by_tenant" >/dev/null
    q 2 "ALTER SYSTEM SET shared_preload_libraries = 'citus'" >/dev/null
    node_ctl 2 -m fast restart
    got=$(psql_node 0 -d postgres -At -c "SELECT * FROM usage_guard.distribute()" 2>&1 || true)
    check "distribute() refuses a worker that does not preload usage_guard, naming it" \
        "$(grep -c "not loaded by shared_preload_libraries on 127.0.0.1:$(node_port 2)" <<<"$got")" 1
    q 2 "ALTER SYSTEM RESET shared_preload_libraries" >/dev/null
    node_ctl 2 -m fast restart
    check "the refused distribute() calls distributed nothing" \
        "$(q 0 "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'usage_guard.%'")" 0
    check "distribute() makes 9 reference tables, 4 distributed tables, delegates 14 functions and gives each node its id range" \
        "$(q 0 "SELECT string_agg(n::text, ',' ORDER BY k) FROM (SELECT left(distributed_as, 9) k, count(*) n FROM usage_guard.distribute() WHERE action = 'created' GROUP BY 1) s")" \
        "14,4,1,9"
    check "distribute() again changes nothing" \
        "$(q 0 "SELECT count(*) FILTER (WHERE action <> 'already') || '/' || count(*) FROM usage_guard.distribute()")" "0/28"
    check "the ledger has 32 shards, on both workers" \
        "$(q 0 "SELECT count(DISTINCT shardid) || '/' || count(DISTINCT nodeport) FROM pg_dist_shard JOIN pg_dist_placement USING (shardid) JOIN pg_dist_node USING (groupid) WHERE logicalrelid = 'usage_guard.usage_events'::regclass")" \
        "32/2"
    got=$(psql_node 1 -d postgres -At -c "SELECT * FROM usage_guard.distribute()" 2>&1 || true)
    check "distribute() on a worker is refused" "$(echo "$got" | grep -c 'must run on the Citus coordinator')" 1
    # the catalog, written on the coordinator (two-phase commit to every node)
    psql_node 0 -d postgres <<'SQL' >/dev/null
INSERT INTO usage_guard.features (feature_key) VALUES ('calls'), ('tokens');
INSERT INTO usage_guard.plans (plan_code) VALUES ('p');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('p', 'calls', 'day', 200), ('p', 'tokens', 'month', 1e12);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code)
SELECT 't' || i, 'p' FROM generate_series(1, 20) i UNION ALL SELECT 'hot', 'p' UNION ALL SELECT repeat('t', 255), 'p';
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id)
VALUES ('hot', 'team-a', 'team', NULL), ('hot', 'key-1', 'api_key', 'team-a');
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit)
VALUES ('p', 'api_key', 'quota', 'tokens', 'day', 1000);
SQL
    check "the catalog's foreign keys hold on the reference tables" \
        "$(psql_node 0 -d postgres -At -c "INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('nope', 'calls', 'day', 1)" 2>&1 | grep -c 'violates foreign key')" 1
    # the application's grants only (README, Security): roles and grants on
    # the coordinator reach the workers, where the delegated calls run as it
    q 0 "CREATE ROLE app LOGIN; GRANT usage_guard_application TO app" >/dev/null
    check "the application role's consume through the coordinator is delegated and allowed" \
        "$(q_as app 0 "SELECT allowed FROM usage_guard.usage_consume('t1', 'calls', 1)")" t
    got=$(q_as app 0 "SELECT count(*) FROM usage_guard.usage_events" 2>&1 || true)
    got+=$'\n'$(q_as app 0 "DELETE FROM usage_guard.usage_events" 2>&1 || true)
    check "the application role can neither read nor delete the distributed ledger" \
        "$(grep -c 'permission denied for table usage_events' <<<"$got")" 2
    # names at the 255-byte limit through delegation, and one byte past it
    check "a 255-byte tenant id is decided on its worker through the coordinator" \
        "$(q_as app 0 "SELECT allowed FROM usage_guard.usage_consume(repeat('t', 255), 'calls', 1)")/$(q 0 "SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = repeat('t', 255)")" "t/1"
    got=$(q_as app 0 "SELECT usage_guard.usage_consume(repeat('t', 256), 'calls', 1)" 2>&1 || true)
    check "a 256-byte tenant id is refused through the coordinator, nothing written" \
        "$(grep -c 'tenant_id is too long' <<<"$got")/$(q 0 "SELECT count(*) FROM usage_guard.usage_events WHERE length(tenant_id) > 255")" "1/0"
    # row-level security on the distributed ledger: a tenant's reader sees
    # its own rows; decisions (and the counters the restart below reloads)
    # still count every row
    psql_node 0 -d postgres -q <<'SQL'
CREATE ROLE t1 LOGIN;
GRANT usage_guard_reader TO t1;
ALTER TABLE usage_guard.usage_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON usage_guard.usage_events TO t1 USING (tenant_id = current_user);
SQL
    got=$(q_as app 0 "SELECT usage_guard.usage_consume('t2', 'calls', 1)" 2>&1 || true)
    check "row-level security on the distributed ledger without a policy for the application refuses its consume, nothing written" \
        "$(grep -c 'row-level security on usage_guard.usage_events does not let role "app"' <<<"$got")/$(q 0 "SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 't2'")" "1/0"
    check "row-level security on the distributed ledger: a tenant's reader sees only its own usage (own/other)" \
        "$(q_as t1 0 "SELECT (SELECT total FROM usage_guard.get_usage_totals('t1', now() - interval '1 day', now() + interval '1 day', '{calls}')) || '/' || (SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id <> 't1')")" "1/0"
    check "tenants live on both workers" \
        "$(q 0 "SELECT count(DISTINCT nodeport) FROM usage_guard.tenant_subscriptions s, pg_dist_placement p JOIN pg_dist_node USING (groupid) WHERE p.shardid = get_shard_id_for_distribution_column('usage_guard.usage_events', s.tenant_id)")" 2
    # delegation: one task, on the tenant's worker, and nothing decided here
    got=$(q 0 "EXPLAIN (VERBOSE) SELECT * FROM usage_guard.usage_consume('hot', 'calls', 1)")
    check "a consume through the coordinator is one task on the hot tenant's worker" \
        "$(echo "$got" | grep -c "Task Count: 1")/$(echo "$got" | grep -c "port=$(hot_port) ")" "1/1"
    check "a consume through the coordinator is allowed" \
        "$(q 0 "SELECT allowed FROM usage_guard.usage_consume('hot', 'calls', 1)")" t
    check "the coordinator holds no live counter (the worker decided)" \
        "$(q 0 "SELECT count(*) FROM usage_guard.live_counters()")" 0
    got=$(psql_node 0 -d postgres -At -c "SELECT usage_guard.usage_consume(tenant_id, 'calls', 1) FROM usage_guard.tenant_subscriptions WHERE tenant_id = 'hot'" 2>&1 || true)
    check "a consume Citus cannot delegate (inside another query) is refused on the coordinator" \
        "$(echo "$got" | grep -c 'on a node that does not hold its shard')" 1
    check "a check Citus cannot delegate reads the ledger through Citus" \
        "$(q 0 "SELECT (usage_guard.usage_check(tenant_id, 'calls', 1)).usage FROM usage_guard.tenant_subscriptions WHERE tenant_id = 'hot'")" 1

    cat >"$CITUS_DIR/hot.sql" <<'SQL'
SELECT allowed FROM usage_guard.usage_consume('hot', 'calls', 1);
SQL
    cat >"$CITUS_DIR/any.sql" <<'SQL'
\set r random(1, 20)
SELECT allowed FROM usage_guard.usage_consume('t' || :r, 'calls', 1);
SQL
    cat >"$CITUS_DIR/txn.sql" <<'SQL'
\set r random(1, 20)
BEGIN;
SELECT allowed FROM usage_guard.usage_consume('t' || :r, 'calls', 1);
SELECT allowed FROM usage_guard.usage_enforce('t' || :r, 'tokens', 1);
END;
SQL
    # rows for tenants on both workers in one statement: two-phase commit
    cat >"$CITUS_DIR/batch.sql" <<'SQL'
SELECT usage_guard.usage_record_batch(array_agg('t' || i), array_fill('tokens'::text, ARRAY[20]), array_fill(1::numeric, ARRAY[20])) FROM generate_series(1, 20) i;
SQL
    local scripts=(-f "$CITUS_DIR/hot.sql@4" -f "$CITUS_DIR/any.sql@3" -f "$CITUS_DIR/txn.sql@2" -f "$CITUS_DIR/batch.sql@1")

    load 6 "${scripts[@]}"
    check "concurrent consumes from 6 coordinator sessions stop the hot tenant exactly at its hard limit" "$(hot_usage)" 200
    check "no tenant passed its hard limit" \
        "$(q 0 "SELECT count(*) FROM (SELECT tenant_id FROM usage_guard.usage_events WHERE feature_key = 'calls' GROUP BY tenant_id, date_trunc('day', occurred_at AT TIME ZONE 'UTC') HAVING sum(amount) > 200) s")" 0
    check "every worker's live counters equal the ledger (mismatches/any)" "$(counters_off_ledger)" "0/true"
    check "two-phase batches were recorded (rows through the coordinator)" \
        "$(q 0 "SELECT count(*) > 0 AND count(*) % 20 = 0 FROM usage_guard.usage_events WHERE feature_key = 'tokens' AND kind = 'record'")" t
    check "ledger ids are unique across the nodes that wrote them (rows/distinct ids, events and resets)" \
        "$(q 0 "SELECT (SELECT count(*) = count(DISTINCT event_id) FROM usage_guard.usage_events) AND (SELECT count(*) FILTER (WHERE event_id > 1::bigint << 48) > 0 FROM usage_guard.usage_events)")" t
    check "nothing was written into the coordinator's shell relations" \
        "$(q 0 "SELECT pg_relation_size('usage_guard.usage_events') + pg_relation_size('usage_guard.usage_resets')")" 0

    # move the hot tenant's shard to the other worker under load, with a
    # higher limit: its counters there are loaded from the moved rows
    before=$(hot_port)
    other=$(q 0 "SELECT nodeport FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0 AND nodeport <> $before")
    psql_node 0 -d postgres -q -c "INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit) VALUES ('hot', 'calls', 'day', 400)"
    load 8 "${scripts[@]}" &
    sleep 2
    q 0 "SELECT citus_move_shard_placement(get_shard_id_for_distribution_column('usage_guard.usage_events', 'hot'), '127.0.0.1', $before, '127.0.0.1', $other)" >/dev/null
    wait
    moved_to=$(hot_port)
    check "the hot tenant's shard moved to the other worker" "$moved_to" "$other"
    load 3 "${scripts[@]}"
    check "after the move the hot tenant stops exactly at its new limit" "$(hot_usage)" 400
    check "every worker's live counters equal the ledger after the move" "$(counters_off_ledger)" "0/true"

    # an immediate restart of the hot tenant's worker under load
    psql_node 0 -d postgres -q -c "UPDATE usage_guard.tenant_overrides SET hard_limit = 600 WHERE tenant_id = 'hot'"
    for n in 1 2; do [ "$(node_port $n)" = "$moved_to" ] && break; done
    load 6 "${scripts[@]}" &
    sleep 2
    node_ctl "$n" -m immediate restart
    wait
    # two-phase batches the restart left prepared are committed by Citus's
    # recovery (every minute): now, so that the ledger is settled
    q 0 "SELECT recover_prepared_transactions()" >/dev/null
    load 4 "${scripts[@]}"
    check "after the worker's immediate restart the hot tenant stops exactly at its new limit" "$(hot_usage)" 600
    check "every worker's live counters equal the ledger after the restart" "$(counters_off_ledger)" "0/true"

    # and back: the first worker's counters of the hot tenant from before
    # the first move were dropped with its old shard, never used again
    q 0 "CALL citus_cleanup_orphaned_resources()" >/dev/null
    psql_node 0 -d postgres -q -c "UPDATE usage_guard.tenant_overrides SET hard_limit = 800 WHERE tenant_id = 'hot'"
    q 0 "SELECT citus_move_shard_placement(get_shard_id_for_distribution_column('usage_guard.usage_events', 'hot'), '127.0.0.1', $moved_to, '127.0.0.1', $before)" >/dev/null
    check "the hot tenant's shard moved back to its first worker" "$(hot_port)" "$before"
    load 4 "${scripts[@]}"
    check "back on its first worker the hot tenant stops exactly at its new limit" "$(hot_usage)" 800
    check "every worker's live counters equal the ledger after the move back" "$(counters_off_ledger)" "0/true"

    # reports, rollups and metrics on the coordinator, over the distributed ledger
    check "get_usage_totals on the coordinator counts the hot tenant's usage" \
        "$(q 0 "SELECT total FROM usage_guard.get_usage_totals('hot', now() - interval '1 day', now() + interval '1 day', '{calls}')")" 800
    check "a gateway consume (request_consume) is delegated and allowed" \
        "$(q 0 "SELECT allowed FROM usage_guard.request_consume('hot', 'key-1', 'tokens', 5)")" t
    check "top_consumers on the coordinator ranks the hot tenant first" \
        "$(q 0 "SELECT tenant_id FROM usage_guard.top_consumers('calls') LIMIT 1")" hot
    check "refresh_rollups on the coordinator rolls up the distributed ledger" \
        "$(q 0 "SELECT usage_guard.refresh_rollups(false)" >/dev/null &&
           q 0 "SELECT (SELECT sum(total) FROM usage_guard.usage_daily) = (SELECT sum(amount) FROM usage_guard.usage_events)")" t
    check "metrics() answers per node (a worker's counters)" \
        "$(q "$n" "SELECT count(*) > 0 FROM usage_guard.metrics()")" t
    # a reservation left open past its ttl, expired from the coordinator
    # (a pg_cron job there): each worker gives back its own tenants'
    # estimates, in its own counters
    psql_node 0 -d postgres -q <<'SQL'
INSERT INTO usage_guard.features (feature_key) VALUES ('cost_usd');
INSERT INTO usage_guard.models (model, provider) VALUES ('haiku', 'anthropic');
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million)
VALUES ('haiku', '2025-01-01 00:00+00', 1, 5);
SQL
    n=$(hot_node)
    local tokens_now="SELECT usage FROM usage_guard.live_counters() WHERE tenant_id = 'hot' AND feature_key = 'tokens' AND subject_id IS NULL AND now() >= window_start AND now() < window_end"
    before=$(q "$n" "$tokens_now")
    check "admit through the coordinator counts its estimate on the hot tenant's worker" \
        "$(q 0 "SELECT allowed FROM usage_guard.admit('hot', 'key-1', 'haiku', 100, 100, ttl => '1 second')")/$(q "$n" "SELECT ($tokens_now) - $before")" "t/200"
    sleep 1.2
    check "expire_reservations() on the coordinator gives it back on the worker (expired/state/tokens)" \
        "$(q 0 "SELECT usage_guard.expire_reservations()")/$(q 0 "SELECT string_agg(state, ',') FROM usage_guard.reservations")/$(q "$n" "SELECT ($tokens_now) - $before")" "1/expired/0"
    # lease rows that ended are purged from the coordinator (pg_cron there)
    q 0 "SELECT lease_id FROM usage_guard.lease_acquire('hot', 'key-1', '1 second')" >/dev/null
    sleep 1.2
    check "purge_leases() on the coordinator deletes the ended lease rows on the workers (ended/purged/left)" \
        "$(q 0 "SELECT count(*) FROM usage_guard.leases WHERE coalesce(least(released_at, expires_at), expires_at) < now()")/$(q 0 "SELECT usage_guard.purge_leases('0 seconds')")/$(q 0 "SELECT count(*) FROM usage_guard.leases")" "3/3/0"
    check "every worker's live counters equal the ledger after the expiry" "$(counters_off_ledger)" "0/true"
    # the limit reports: limits from the reference tables on the
    # coordinator, ledger sums pushed down to the workers
    check "usage_status on the coordinator shows the hot tenant at its hard limit" \
        "$(q 0 "SELECT usage || '/' || status FROM usage_guard.usage_status('hot') WHERE feature_key = 'calls'")" "800/hard_limit"
    check "subscription_usage on the coordinator shows every tenant's limits with the ledger's usage (rows/differing)" \
        "$(q 0 "WITH v AS (SELECT * FROM usage_guard.subscription_usage),
                     l AS (SELECT tenant_id, feature_key, sum(amount) s FROM usage_guard.usage_events
                            WHERE occurred_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' GROUP BY 1, 2)
                SELECT count(*) || '/' || count(*) FILTER (WHERE v.period = 'day' AND v.usage <> coalesce(l.s, 0))
                  FROM v LEFT JOIN l USING (tenant_id, feature_key)")" "44/0"
    check "usage_report on the coordinator equals the ledger for every tenant and feature (rows/differing)" \
        "$(q 0 "WITH r AS (SELECT * FROM usage_guard.usage_report(period_start => now() - interval '1 day', period_end => now() + interval '1 day')),
                     l AS (SELECT tenant_id, feature_key, sum(amount) s, count(*) n FROM usage_guard.usage_events GROUP BY 1, 2)
                SELECT count(*) || '/' || count(*) FILTER (WHERE r.usage <> coalesce(l.s, 0) OR r.events <> coalesce(l.n, 0))
                  FROM r LEFT JOIN l USING (tenant_id, feature_key)")" "44/0"
    check "usage_report for one tenant on the coordinator judges its day window at the hard limit" \
        "$(q 0 "SELECT peak_usage || '/' || windows_at_hard || '/' || status FROM usage_guard.usage_report('hot', period_start => now() - interval '1 hour', period_end => now() + interval '1 hour') WHERE feature_key = 'calls'")" "800/1/hard_limit"
    check "usage_report_json on the coordinator has a row per tenant and limit" \
        "$(q 0 "SELECT jsonb_array_length(usage_guard.usage_report_json(period_start => now() - interval '1 day', period_end => now() + interval '1 day') -> 'rows')")" 44
    # an admin reset through the coordinator: a row of usage_resets on the
    # tenant's worker, which its counters count
    check "reset_usage on the coordinator gives back the hot tenant's day" \
        "$(q 0 "SELECT usage_before || '/' || adjustment FROM usage_guard.reset_usage('hot', 'calls', 'support ticket')")" "800/-800"
    load 4 -f "$CITUS_DIR/hot.sql"
    check "after the reset 6 sessions on the hot tenant alone stop it exactly at its limit again" \
        "$(q 0 "SELECT usage FROM usage_guard.usage_status('hot') WHERE feature_key = 'calls'")" 800
    check "every worker's live counters equal the ledger with its resets" "$(counters_off_ledger)" "0/true"
    check "ledger ids are still unique across the nodes at the end (events, resets)" \
        "$(q 0 "SELECT (SELECT count(*) = count(DISTINCT event_id) FROM usage_guard.usage_events) AND (SELECT count(*) = count(DISTINCT reset_id) FROM usage_guard.usage_resets)")" t
    log "pgbench output: $CITUS_DIR/pgbench.log ($(grep -c '^number of transactions actually processed' "$CITUS_DIR/pgbench.log") runs)"
    if [ -n "${CITUS_BENCH:-}" ]; then
        bench_cluster "$CITUS_BENCH"
    fi
    if [ -n "${CITUS_ASAN:-}" ]; then
        check "the nodes run usage_guard under AddressSanitizer" \
            "$(grep -c libasan "/proc/$(head -n1 "$NODES/n1/postmaster.pid")/maps" | sed 's/^0$/no/; s/^[1-9][0-9]*$/yes/')" yes
        check "no AddressSanitizer report in usage_guard's code (reports: $CITUS_DIR/asan)" \
            "$(cat "$CITUS_DIR"/asan/asan.* 2>/dev/null | grep -cE "usage_guard\.so|(^|[ /(])src/[a-z_]+\.c:" || true)" 0
    fi
    echo "1..$ntests"
    [ "$nfailed" = 0 ] || { log "$nfailed of $ntests Citus checks failed"; exit 1; }
    log "all $ntests Citus checks passed"
}

# The benchmark row: a delegated consume through the coordinator against a
# plain INSERT of the same row through the coordinator into a distributed
# table of the ledger's shape (no trigger), in the same run.
bench_cluster() {
    local seconds=$1 rounds=${CITUS_BENCH_ROUNDS:-3} consume insert r tps
    psql_node 0 -d postgres -q <<'SQL'
CREATE TABLE IF NOT EXISTS bench_shape (LIKE usage_guard.usage_events INCLUDING DEFAULTS INCLUDING IDENTITY);
ALTER TABLE bench_shape ADD PRIMARY KEY (tenant_id, feature_key, occurred_at, event_id);
SELECT create_distributed_table('bench_shape', 'tenant_id', colocate_with => 'usage_guard.usage_events');
SQL
    psql_node 0 -d postgres -q -c "INSERT INTO usage_guard.features (feature_key) VALUES ('bench') ON CONFLICT DO NOTHING" \
        -c "INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('p', 'bench', 'day', 1e12) ON CONFLICT DO NOTHING" \
        -c "INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) SELECT 'b' || i, 'p' FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING"
    cat >"$CITUS_DIR/bench_consume.sql" <<'SQL'
\set r random(1, 1000)
SELECT allowed FROM usage_guard.usage_consume('b' || :r, 'bench', 1);
SQL
    cat >"$CITUS_DIR/bench_insert.sql" <<'SQL'
\set r random(1, 1000)
INSERT INTO bench_shape (tenant_id, feature_key, amount, kind) VALUES ('b' || :r, 'bench', 1, 'consume');
SQL
    consume=() insert=()
    for r in $(seq "$rounds"); do
        for kind in insert consume; do
            tps=$(pgbench_coordinator -c 4 -T "$seconds" -f "$CITUS_DIR/bench_$kind.sql" 2>"$CITUS_DIR/bench.err" |
                sed -n 's/^tps = \([0-9.]*\).*/\1/p') || true
            [ -n "$tps" ] || { log "the benchmark's pgbench run ($kind) failed:"; cat "$CITUS_DIR/bench.err" >&2; exit 1; }
            [ "$kind" = consume ] && consume+=("$tps") || insert+=("$tps")
        done
    done
    median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
    echo "usage_guard Citus benchmark: ${rounds} rounds of ${seconds} s, 4 clients through the coordinator, 2 workers"
    printf '%-58s %10s\n' "plain INSERT into a distributed table (TPS, median)" "$(median "${insert[@]}")"
    printf '%-58s %10s\n' "usage_consume delegated to the tenant's worker (TPS)" "$(median "${consume[@]}")"
    printf '%-58s %10s\n' "ratio consume / INSERT" \
        "$(awk -v a="$(median "${consume[@]}")" -v b="$(median "${insert[@]}")" 'BEGIN {printf "%.2fx", a / b}')"
}

bench() {
    up
    trap down_quiet EXIT
    psql_node 0 -d postgres -q -c 'CREATE EXTENSION usage_guard' -c 'SELECT count(*) FROM usage_guard.distribute()' >/dev/null
    psql_node 0 -d postgres -q -c "INSERT INTO usage_guard.plans (plan_code) VALUES ('p')"
    bench_cluster "${CITUS_BENCH_SECONDS:-10}"
}

case "${1:-}" in
    up) up ;;
    down) down_quiet ;;
    test) test_cluster ;;
    bench) bench ;;
    -h|--help|"") usage ;;
    *) usage >&2; exit 2 ;;
esac

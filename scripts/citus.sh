#!/usr/bin/env bash
# scripts/citus.sh: a throwaway Citus cluster (a coordinator and two workers on
# loopback) with usage_guard, for the scale-out work (docs/citus.md).
#
#   bash scripts/citus.sh smoke   build, start, check what works today, stop
#   bash scripts/citus.sh up      build and start; prints how to connect
#   bash scripts/citus.sh down    stop the nodes and remove their directory
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
NODES=$CITUS_DIR/nodes
# The Debian packages Citus's build needs (configured --without-libcurl)
CITUS_BUILD_DEPS="liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libpam0g-dev libxslt1-dev libreadline-dev"

usage() { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//'; }

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
psql_node() {
    local n=$1
    shift
    as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$NODES" -p "$(node_port "$n")" -U postgres "$@"
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
    make -C "$ROOT" -s install DESTDIR="$STAGE" >/dev/null
    chmod -R a+rX "$STAGE"
    bindir=$STAGE$(pg_config --bindir)
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
        as_owner "$bindir/pg_ctl" -D "$NODES/n$n" -l "$NODES/n$n.log" -w start >/dev/null
        psql_node "$n" -d postgres -c 'CREATE EXTENSION citus'
    done
    psql_node 0 -d postgres -c "SELECT citus_set_coordinator_host('127.0.0.1', $(node_port 0))" \
        -c "SELECT citus_add_node('127.0.0.1', $(node_port 1))" \
        -c "SELECT citus_add_node('127.0.0.1', $(node_port 2))" >/dev/null
    echo "$bindir" >"$CITUS_DIR/bindir"
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

# What works today, each a check that can fail; the rest is docs/citus.md's list
smoke() {
    local fails=0 got
    check() {
        if [ "$2" = "$3" ]; then
            log "ok: $1"
        else
            log "FAILED: $1 (expected '$3', got '$2')"
            fails=$((fails + 1))
        fi
    }
    up
    trap down_quiet EXIT
    psql_node 0 -d postgres -c 'CREATE EXTENSION usage_guard'
    # CREATE EXTENSION on the coordinator runs on every worker too
    for n in 1 2; do
        got=$(psql_node "$n" -d postgres -At -c "SELECT extversion FROM pg_extension WHERE extname = 'usage_guard'")
        check "usage_guard is installed on worker $n by the coordinator's CREATE EXTENSION" "$got" \
            "$(psql_node 0 -d postgres -At -c "SELECT extversion FROM pg_extension WHERE extname = 'usage_guard'")"
    done
    # the ledger distributes by tenant_id (its keys are tenant first)
    got=$(psql_node 0 -d postgres -At -c 'SET citus.enable_unsafe_triggers = on' \
        -c "SELECT create_distributed_table('usage_guard.usage_events', 'tenant_id')" \
        -c "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'usage_guard.usage_events'::regclass" | tail -n 1)
    check "usage_events is distributed by tenant_id into 32 shards" "$got" 32
    got=$(psql_node 0 -d postgres -At -c "SELECT count(DISTINCT nodeport) FROM pg_dist_shard JOIN pg_dist_placement USING (shardid) JOIN pg_dist_node USING (groupid) WHERE logicalrelid = 'usage_guard.usage_events'::regclass")
    check "its shards are on both workers" "$got" 2
    # a consume's ledger row goes through Citus (SQL), never into the
    # coordinator's empty shell relation: an allowed consume's row is visible
    # through the coordinator, or the consume fails; it is never lost.  (Today
    # it fails: the shard's trigger on the worker checks the feature against
    # the worker's own, empty, catalog; docs/citus.md)
    psql_node 0 -d postgres \
        -c "INSERT INTO usage_guard.features (feature_key) VALUES ('calls')" \
        -c "INSERT INTO usage_guard.plans (plan_code) VALUES ('p')" \
        -c "INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('p', 'calls', 'day', 5)" \
        -c "INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('a', 'p')"
    if allowed=$(psql_node 0 -d postgres -At -c "SELECT allowed FROM usage_guard.usage_consume('a', 'calls', 1)" 2>"$CITUS_DIR/consume.err"); then
        got=$(psql_node 0 -d postgres -At -c "SELECT count(*) FROM usage_guard.usage_events")
        check "an allowed consume's row is in the distributed ledger" "$allowed/$got" "t/1"
    else
        log "ok: the consume failed rather than lose its row: $(head -n 1 "$CITUS_DIR/consume.err")"
    fi
    got=$(psql_node 0 -d postgres -At -c "SELECT pg_catalog.pg_relation_size('usage_guard.usage_events')")
    check "nothing was written into the coordinator's shell relation (its size)" "$got" 0
    [ "$fails" = 0 ] || { log "$fails Citus smoke check(s) failed"; exit 1; }
    log "Citus smoke checks passed"
}

case "${1:-}" in
    up) up ;;
    down) down_quiet ;;
    smoke) smoke ;;
    -h|--help|"") usage ;;
    *) usage >&2; exit 2 ;;
esac

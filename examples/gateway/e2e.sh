#!/usr/bin/env bash
# examples/gateway/e2e.sh: the gateway example end to end.  Starts a
# throwaway PostgreSQL (usage_guard preloaded) in a temporary directory,
# loads setup.sql, puts pgbouncer (transaction pooling) in front of it,
# and runs e2e.py: it starts the service (app.py, uvicorn), drives it with
# concurrent HTTP requests, kills and restarts it, and checks the results
# in PostgreSQL.  Everything is stopped and removed on exit.
#
#   bash examples/gateway/e2e.sh
#
# One line per test ("test <name> ... ok" or "... FAILED"), then
# "gateway e2e: N passed, M failed"; the exit status is non-zero when any
# test failed.  As root it installs what is missing (Debian packages, the
# extension) and runs PostgreSQL and pgbouncer as the user postgres; as
# another user it says what is missing.  PG_MAJOR (default 15) picks the
# PostgreSQL version.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../scripts/common.sh"	# set -euo pipefail; as_owner, stop_cluster, log

PY=/usr/bin/python3
BIN=/usr/lib/postgresql/$PG_MAJOR/bin
export PATH="$BIN:$PATH" PYTHONDONTWRITEBYTECODE=1
t0=$SECONDS
passed=0 failed=0
E2E_DIR=

logs() {
    [ -n "$E2E_DIR" ] || return 0
    local f
    for f in service.log pgbouncer.log server.log; do
        [ -s "$E2E_DIR/$f" ] || continue
        echo "----- $f (last 60 lines) -----"
        tail -n 60 "$E2E_DIR/$f" | sed 's/^/| /'
    done
}

# setup_failed STEP MESSAGE: a failed step before the tests
setup_failed() {
    echo "test $1 ... FAILED"
    echo "    $2"
    failed=$((failed + 1))
    logs
    echo "gateway e2e: $passed passed, $failed failed"
    exit 1
}

# is_ours PID NAME: PID is a live process whose command line mentions NAME
is_ours() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"
}

cleanup() {
    local pid
    [ -n "$E2E_DIR" ] && [ -d "$E2E_DIR" ] || return 0
    pid=$(cat "$E2E_DIR/driver.pid" 2>/dev/null || true)
    if is_ours "$pid" e2e.py; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do is_ours "$pid" e2e.py || break; sleep 0.1; done
    fi
    pid=$(cat "$E2E_DIR/service.pid" 2>/dev/null || true)
    is_ours "$pid" uvicorn && kill -9 "$pid" 2>/dev/null || true
    pid=$(cat "$E2E_DIR/pgbouncer.pid" 2>/dev/null || true)
    if is_ours "$pid" pgbouncer; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do is_ours "$pid" pgbouncer || break; sleep 0.1; done
    fi
    stop_cluster "$E2E_DIR"
    rm -rf "$E2E_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# What the test needs: Debian packages, the extension
# ---------------------------------------------------------------------------
install_packages() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

mapfile -t missing < <(missing_gateway_packages)
[ -x "$BIN/postgres" ] || missing+=("postgresql-$PG_MAJOR")
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        setup_failed prerequisites "missing Debian packages: ${missing[*]} (as root: apt-get install -y ${missing[*]})"
    fi
    install_packages "${missing[@]}" || setup_failed prerequisites "apt-get install ${missing[*]} failed"
fi
if [ ! -f "/usr/share/postgresql/$PG_MAJOR/extension/usage_guard.control" ]; then
    [ "$(id -u)" = 0 ] || setup_failed prerequisites \
        "usage_guard is not installed for PostgreSQL $PG_MAJOR (make PG_CONFIG=$BIN/pg_config install, as root)"
    need=()
    [ -f "/usr/include/postgresql/$PG_MAJOR/server/postgres.h" ] || need+=("postgresql-server-dev-$PG_MAJOR")
    command -v make >/dev/null 2>&1 || need+=(make)
    command -v gcc >/dev/null 2>&1 || need+=(gcc)
    if [ ${#need[@]} -gt 0 ]; then
        install_packages "${need[@]}" || setup_failed prerequisites "apt-get install ${need[*]} failed"
    fi
    log "building and installing usage_guard"
    make -s -C "$ROOT" PG_CONFIG="$BIN/pg_config" install >/dev/null ||
        setup_failed prerequisites "make install of usage_guard failed"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

# ---------------------------------------------------------------------------
# PostgreSQL and pgbouncer, on loopback, in a temporary directory
# ---------------------------------------------------------------------------
E2E_DIR=$(mktemp -d /tmp/usage_guard-gateway.XXXXXX)
chmod 755 "$E2E_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$E2E_DIR"

# pick_port: a loopback port nothing is bound to, below Linux's ephemeral
# range (32768-60999: the local ports of outgoing connections come from it)
pick_port() {
    "$PY" -c '
import random, socket
for _ in range(500):
    p = random.randrange(10000, 30000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
'
}

# PostgreSQL; a port taken between pick_port and the start: another one
as_owner initdb -D "$E2E_DIR/data" -U postgres --auth=trust --no-sync -E UTF8 >"$E2E_DIR/initdb.log" 2>&1 ||
    setup_failed postgres "initdb failed: $(tail -n 20 "$E2E_DIR/initdb.log")"
cat >>"$E2E_DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$E2E_DIR'
shared_preload_libraries = 'usage_guard'
fsync = off
max_connections = 60
CONF
PGPORT=
for attempt in 1 2 3 4 5; do
    port=$(pick_port)
    if [ -n "$port" ] &&
        as_owner pg_ctl -D "$E2E_DIR/data" -l "$E2E_DIR/server.log" -o "-p $port" -w -t 60 start >/dev/null 2>&1; then
        PGPORT=$port
        break
    fi
done
[ -n "$PGPORT" ] || setup_failed postgres "the server did not start"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -d postgres -c 'CREATE DATABASE gateway' >/dev/null 2>"$E2E_DIR/setup.err" &&
    "${PSQL[@]}" -d gateway -c 'CREATE EXTENSION usage_guard' -f "$HERE/setup.sql" >/dev/null 2>>"$E2E_DIR/setup.err" ||
    setup_failed setup_sql "$(cat "$E2E_DIR/setup.err")"

# pgbouncer in transaction pooling, as the cluster's owner
printf '"gateway" ""\n"postgres" ""\n' >"$E2E_DIR/userlist.txt"
[ "$(id -u)" = 0 ] && chown postgres: "$E2E_DIR/userlist.txt"
BPORT=
for attempt in 1 2 3 4 5; do
    port=$(pick_port)
    [ -n "$port" ] || continue
    cat >"$E2E_DIR/pgbouncer.ini" <<INI
[databases]
gateway = host=127.0.0.1 port=$PGPORT dbname=gateway

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $E2E_DIR/userlist.txt
pool_mode = transaction
default_pool_size = 10
max_client_conn = 200
server_login_retry = 1
log_connections = 0
log_disconnections = 0
logfile = $E2E_DIR/pgbouncer.log
pidfile = $E2E_DIR/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options
INI
    [ "$(id -u)" = 0 ] && chown postgres: "$E2E_DIR/pgbouncer.ini"
    if as_owner /usr/sbin/pgbouncer -d -q "$E2E_DIR/pgbouncer.ini"; then
        for _ in $(seq 100); do
            if psql -X -At -h 127.0.0.1 -p "$port" -U gateway -d gateway -c 'SELECT 1' >/dev/null 2>&1; then
                BPORT=$port
                break
            fi
            is_ours "$(cat "$E2E_DIR/pgbouncer.pid" 2>/dev/null)" pgbouncer || break	# it gave up
            sleep 0.1
        done
    fi
    [ -n "$BPORT" ] && break
    pid=$(cat "$E2E_DIR/pgbouncer.pid" 2>/dev/null || true)
    if is_ours "$pid" pgbouncer; then kill "$pid"; sleep 0.2; fi
done
[ -n "$BPORT" ] || setup_failed pgbouncer "pgbouncer did not accept connections"
log "PostgreSQL on 127.0.0.1:$PGPORT, pgbouncer (transaction pooling) on 127.0.0.1:$BPORT, in $E2E_DIR"

# ---------------------------------------------------------------------------
# The tests (e2e.py starts the service)
# ---------------------------------------------------------------------------
# In the background, so that a signal to this script is handled at once
# (cleanup stops the driver by its pid file)
rc=0
export E2E_DIR E2E_APP_DIR=$HERE E2E_HTTP_PORT=$(pick_port) \
    E2E_ADMIN_DSN="host=127.0.0.1 port=$PGPORT dbname=gateway user=postgres" \
    E2E_BOUNCER_DSN="host=127.0.0.1 port=$BPORT dbname=gateway user=gateway"
(timeout --foreground -k 5 150 "$PY" -u "$HERE/e2e.py" 2>&1 | tee "$E2E_DIR/e2e.out") &
wait $! || rc=$?
passed=$(grep -c '^test .* \.\.\. ok' "$E2E_DIR/e2e.out" || true)
failed=$(grep -c '^test .* \.\.\. FAILED' "$E2E_DIR/e2e.out" || true)
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
    echo "test e2e_driver ... FAILED"
    echo "    e2e.py exited with status $rc$([ "$rc" = 124 ] && echo ' (timed out after 150 s)')"
    failed=1
fi
[ "$failed" = 0 ] || logs
log "gateway e2e took $((SECONDS - t0)) s"
echo "gateway e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]

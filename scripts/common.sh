# scripts/common.sh: shared by demo.sh and test.sh.  Installs what is
# missing, builds and installs the extension, and runs throwaway clusters
# as an unprivileged user (initdb and postgres refuse to run as root).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The PostgreSQL major version to build, test or demo with: 15, the one
# this machine's Debian (12) carries, unless the caller says otherwise
# (scripts/test.sh --pg runs each version with PG_MAJOR set, newer ones in a
# chroot of the Debian release that carries them: scripts/pgchroot.sh).
export PG_MAJOR=${PG_MAJOR:-15}

log() { printf '==> %s\n' "$*" >&2; }

# Run a command as the cluster owner: postgres when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Debian packages the gateway example's end-to-end test needs
# (examples/gateway/e2e.sh), one per line: those missing here.
missing_gateway_packages() {
    local m
    for m in fastapi:python3-fastapi uvicorn:python3-uvicorn psycopg:python3-psycopg \
             psycopg_pool:python3-psycopg-pool; do
        /usr/bin/python3 -c "import ${m%%:*}" >/dev/null 2>&1 || echo "${m#*:}"
    done
    [ -x /usr/sbin/pgbouncer ] || echo pgbouncer
}

# Debian packages this project needs to build, test and demo;
# `ensure_prereqs gateway`: and those of the gateway example's test.
ensure_prereqs() {
    local need=() v=$PG_MAJOR
    if [ "${1:-}" = gateway ]; then
        mapfile -t need < <(missing_gateway_packages)
    fi
    # pg_config and pgxs.mk ship with the client and server packages; only
    # the server headers prove that postgresql-server-dev-$v is installed.
    [ -f "$(pg_config_major --includedir-server 2>/dev/null)/postgres.h" ] || need+=("postgresql-server-dev-$v")
    [ -x "/usr/lib/postgresql/$v/bin/postgres" ] || need+=("postgresql-$v")
    [ -f "/usr/share/postgresql/$v/extension/pg_cron.control" ] || need+=("postgresql-$v-cron")
    perl -MIPC::Run -e1 >/dev/null 2>&1 || need+=(libipc-run-perl)
    /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
    /usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || need+=(python3-yaml)
    command -v make >/dev/null 2>&1 || need+=(make)
    command -v gcc >/dev/null 2>&1 || need+=(gcc)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            log "missing packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})"
            exit 1
        fi
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q "${need[@]}" >/dev/null
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
    fi
    export PATH="$(pg_config_major --bindir):$PATH"
    export PG_CONFIG=/usr/lib/postgresql/$v/bin/pg_config
}

# PostgreSQL $PG_MAJOR's own pg_config (Debian's /usr/bin/pg_config follows
# the newest installed server, or libpq-dev's when there is none).
pg_config_major() {
    if [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ]; then
        "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" "$@"
    else
        pg_config "$@"
    fi
}

# build_install [MAKE VARIABLES...]: e.g. WERROR=1 (the test build)
build_install() {
    log "building and installing usage_guard for $("$PG_CONFIG" --version) ($PG_CONFIG)"
    make -C "$ROOT" -s clean PG_CONFIG="$PG_CONFIG" >/dev/null
    make -C "$ROOT" -s PG_CONFIG="$PG_CONFIG" "$@"
    if [ "$(id -u)" = 0 ]; then
        make -C "$ROOT" -s install PG_CONFIG="$PG_CONFIG" >/dev/null
    else
        sudo make -C "$ROOT" -s install PG_CONFIG="$PG_CONFIG" >/dev/null
    fi
}

# A work directory the cluster owner can write to, removed on exit.
# stage_postgres STAGE: a private copy of the PostgreSQL installation,
# relocated under STAGE (Debian's binaries find their lib and share
# directories relative to themselves), into which builds are installed with
# DESTDIR=STAGE, so the system-wide installation is never replaced.
stage_postgres() {
    local stage=$1 d got
    log "staging a private copy of PostgreSQL under $stage"
    for d in "$(pg_config --bindir)" "$(pg_config --pkglibdir)" "$(pg_config --sharedir)"; do
        mkdir -p "$stage$(dirname "$d")"
        cp -a "$d" "$stage$(dirname "$d")/"
    done
    got=$("$stage$(pg_config --bindir)/pg_config" --pkglibdir)
    if [ "$got" != "$stage$(pg_config --pkglibdir)" ]; then
        log "the staged PostgreSQL is not relocatable (libdir $got)"; exit 1
    fi
    chmod -R a+rX "$stage"
}

make_workdir() {
    WORKDIR=$(mktemp -d /tmp/usage_guard.XXXXXX)
    chmod 755 "$WORKDIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$WORKDIR"
    return 0
}

# A TCP port on loopback that nothing listens on, from $1 upwards.
free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}

# start_cluster DIR PORT: initdb + start on loopback, socket in DIR;
# $CLUSTER_CONF is appended to postgresql.conf
start_cluster() {
    local dir=$1 port
    port=$(free_port "$2")
    as_owner initdb -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
shared_preload_libraries = 'usage_guard'
${CLUSTER_CONF:-}
CONF
    if ! as_owner pg_ctl -D "$dir/data" -l "$dir/server.log" -w start >/dev/null; then
        log "the server did not start; its log:"
        cat "$dir/server.log" >&2
        return 1
    fi
    export PGHOST=$dir PGPORT=$port PGUSER=postgres
}

stop_cluster() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] && as_owner pg_ctl -D "$dir/data" -m fast -w stop >/dev/null || true
}

# asan_preload DIR: the LD_PRELOAD list for the servers, printed.
# libasan must come first.  The second library works around a start-up hang
# of an uninstrumented postgres under a preloaded ASan runtime: the runtime
# initialises lazily, on the first malloc, which here happens inside
# bindtextdomain() called by libgpg-error's constructor (postgres ->
# libsystemd -> libgcrypt -> libgpg-error) while glibc holds _nl_state_lock
# for writing; the runtime then looks up swift_demangle with dlsym, and the
# dlerror() after the failed lookup translates its message with dcgettext,
# which takes the same lock, releases it, and leaves it corrupted: the next
# bindtextdomain (postgres' own) waits forever.  A stub swift_demangle makes
# the lookup succeed, so nothing is translated.  The stub returns NULL: the
# runtime then demangles as if it were absent.
asan_preload() {
    local dir=$1 libasan
    libasan=$(readlink -f "$(gcc -print-file-name=libasan.so)")
    [ -f "$libasan" ] || { log "libasan not found (gcc -print-file-name=libasan.so)"; return 1; }
    mkdir -p "$dir"
    cat >"$dir/swift_demangle_stub.c" <<'C'
#include <stddef.h>
char *swift_demangle(const char *name, size_t len, char *out, size_t *outlen, unsigned flags);
char *
swift_demangle(const char *name, size_t len, char *out, size_t *outlen, unsigned flags)
{
	return NULL;
}
C
    gcc -shared -fPIC -nostdlib -o "$dir/libswift_demangle_stub.so" "$dir/swift_demangle_stub.c"
    chmod -R a+rX "$dir"
    echo "$libasan $dir/libswift_demangle_stub.so"
}

# The Makefile's PG_CFLAGS (its warning flags), printed: what an
# instrumented build adds its own flags to.
makefile_cflags() {
    printf 'ug-print-%%:\n\t@echo $($*)\n' |
        make -s --no-print-directory -C "$ROOT" -f Makefile -f - ug-print-PG_CFLAGS
}

# build_variant DIR STAGE CFLAGS LDFLAGS_SL: build a copy of the tree in DIR
# with these flags (scripts/sanitize.sh, CITUS_ASAN in scripts/citus.sh) and
# install it into STAGE.  with_llvm=no: no JIT bitcode, and the staged
# bitcode of usage_guard is removed so JIT cannot inline uninstrumented code.
build_variant() {
    local dir=$1 stage=$2 cflags=$3 ldflags=$4 pkglibdir
    pkglibdir=$(pg_config --pkglibdir)
    log "building usage_guard in $dir: PG_CFLAGS=\"$cflags\" LDFLAGS_SL=\"$ldflags\""
    rm -rf "$dir"; mkdir -p "$dir"
    tar -C "$ROOT" --exclude=.git --exclude='./results' --exclude='./tmp_*' \
        --exclude='./output_iso' --exclude='./log' --exclude='*.o' --exclude='*.so' \
        --exclude='*.bc' -cf - . | tar -C "$dir" -xf -
    make -C "$dir" -s clean >/dev/null
    make -C "$dir" -s with_llvm=no PG_CFLAGS="$cflags" LDFLAGS_SL="$ldflags"
    make -C "$dir" -s with_llvm=no install DESTDIR="$stage" >/dev/null
    rm -rf "$stage$pkglibdir/bitcode/usage_guard" "$stage$pkglibdir/bitcode/usage_guard.index.bc"
}

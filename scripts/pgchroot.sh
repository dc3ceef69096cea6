#!/usr/bin/env bash
# scripts/pgchroot.sh: PostgreSQL major versions this machine's Debian
# release does not carry, each in a Debian chroot made on demand and kept
# between runs.  scripts/test.sh --pg uses it; it can be used by hand too.
#
#   bash scripts/pgchroot.sh create VERSION      make the chroot (or add missing packages)
#   bash scripts/pgchroot.sh run VERSION CMD...  run CMD in it, as root, with a clean environment
#   bash scripts/pgchroot.sh path VERSION        print its directory
#   bash scripts/pgchroot.sh list                the chroots there are, with their PostgreSQL
#   bash scripts/pgchroot.sh remove [VERSION]    remove one chroot, or all of them
#
# VERSION: 15 (Debian bookworm), 17 (trixie) or 18 (sid).  Each chroot is a
# debootstrap --variant=minbase of that release from the mirror of this
# machine's own apt sources (UG_DEBIAN_MIRROR overrides it), with
# postgresql-VERSION, its server headers and pg_cron, and what the tests
# need (make, gcc, IPC::Run, the Prometheus client and YAML for Python).
# Cache: UG_CHROOT_DIR, default /var/cache/usage_guard/chroots, one
# directory per version (about 600 MB each).  Needs root.
#
# Mounts: `run` (and the apt steps of `create`) run in private mount and
# PID namespaces (unshare).  /proc, /dev and a tmpfs /dev/shm are mounted
# into the chroot there, for that command only: the host never sees them,
# they go away with the command, and every process the command leaves
# behind (a server it did not stop) is killed when it ends.  So nothing is
# ever left mounted, and `remove` deletes plain directories.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${UG_CHROOT_DIR:-/var/cache/usage_guard/chroots}
READY=.usage_guard-ready	# in a chroot: its package list, once complete

log() { printf '==> %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '2,11p' "$SELF" | sed 's/^# \{0,1\}//'; }

# The Debian release that carries PostgreSQL $1
suite_of() {
    case $1 in
        15) echo bookworm ;;
        17) echo trixie ;;
        18) echo sid ;;
        16) die "no Debian release carries PostgreSQL 16: src/compat.h covers its API, but it is not built or tested here (README, Supported versions)" ;;
        *) die "no chroot for PostgreSQL '$1' (versions: 15, 17, 18)" ;;
    esac
}

chroot_dir() { echo "$CACHE/pg$1"; }

packages_of() {
    echo "postgresql-$1 postgresql-server-dev-$1 postgresql-$1-cron libpq-dev make gcc libc6-dev" \
         "libipc-run-perl python3-prometheus-client python3-yaml"
}

# The mirror this machine's apt uses for Debian itself
mirror() {
    if [ -n "${UG_DEBIAN_MIRROR:-}" ]; then
        echo "$UG_DEBIAN_MIRROR"
        return
    fi
    local codename uri
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    uri=$(apt-get indextargets --format '$(LABEL) $(CODENAME) $(REPO_URI)' 2>/dev/null |
          awk -v c="$codename" '$1 == "Debian" && $2 == c { print $3; exit }')
    [ -n "$uri" ] || uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}

need_root() { [ "$(id -u)" = 0 ] || die "scripts/pgchroot.sh needs root (debootstrap, chroot, mounts)"; }

# in_ns DIR CMD...: CMD chrooted into DIR, in private mount and PID namespaces
in_ns() {
    unshare --mount --pid --fork --propagation private -- bash "$SELF" __enter "$@"
}

# __enter DIR CMD...: PID 1 of the namespaces.  The mounts are private to
# them; they are also unmounted on the way out, as good manners.
enter() {
    local dir=$1; shift
    trap 'exit 143' TERM INT HUP
    mount -t proc proc "$dir/proc"
    mount --bind /dev "$dir/dev"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$dir/dev/shm"
    local rc=0
    chroot "$dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
    umount "$dir/dev/shm" "$dir/dev" "$dir/proc" 2>/dev/null || true
    return $rc
}

create() {
    local v=$1 suite dir pkgs
    suite=$(suite_of "$v")
    dir=$(chroot_dir "$v")
    pkgs=$(packages_of "$v")
    need_root
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock-pg$v"
    flock 9
    if [ -f "$dir/$READY" ] && [ "$(cat "$dir/$READY")" = "$pkgs" ]; then
        log "PostgreSQL $v chroot: $dir (made $(date -r "$dir/$READY" '+%Y-%m-%d %H:%M'); bash scripts/pgchroot.sh remove $v deletes it)"
        return 0
    fi
    if [ ! -f "$dir/$READY" ]; then
        # a chroot that never finished: start again
        [ -e "$dir" ] && remove_dir "$dir"
        if ! command -v debootstrap >/dev/null 2>&1; then
            log "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null 2>&1 ||
                { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
        fi
        local m t0=$SECONDS
        m=$(mirror)
        log "creating the PostgreSQL $v chroot: Debian $suite from $m in $dir"
        mkdir -p "$dir"
        touch "$dir/.usage_guard-chroot"
        if ! debootstrap --variant=minbase "$suite" "$dir" "$m" >"$CACHE/debootstrap-pg$v.log" 2>&1; then
            tail -n 20 "$CACHE/debootstrap-pg$v.log" >&2
            die "debootstrap failed (log: $CACHE/debootstrap-pg$v.log)"
        fi
        touch "$dir/.usage_guard-chroot"	# debootstrap may have emptied the directory
        # no documentation, no recommends, no services, no default cluster
        cat >"$dir/etc/dpkg/dpkg.cfg.d/01usage_guard" <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CFG
        printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Install-Suggests "false";' \
            'Dpkg::Options { "--force-confold"; };' >"$dir/etc/apt/apt.conf.d/90usage_guard"
        # sid's Release file in the registry may be past its Valid-Until
        [ "$suite" = sid ] && echo 'Acquire::Check-Valid-Until "false";' >>"$dir/etc/apt/apt.conf.d/90usage_guard"
        printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
        chmod 755 "$dir/usr/sbin/policy-rc.d"
        mkdir -p "$dir/etc/postgresql-common"
        echo 'create_main_cluster = false' >"$dir/etc/postgresql-common/createcluster.conf"
        log "debootstrap done in $((SECONDS - t0)) s"
    fi
    local t1=$SECONDS
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    log "installing into the PostgreSQL $v chroot: $pkgs"
    # shellcheck disable=SC2086
    if ! in_ns "$dir" sh -c "apt-get update -q && apt-get install -y -q $pkgs" >"$CACHE/apt-pg$v.log" 2>&1; then
        tail -n 20 "$CACHE/apt-pg$v.log" >&2
        die "apt-get in the chroot failed (log: $CACHE/apt-pg$v.log)"
    fi
    in_ns "$dir" apt-get clean
    [ -x "$dir/usr/lib/postgresql/$v/bin/pg_config" ] || die "postgresql-server-dev-$v did not install pg_config"
    echo "$pkgs" >"$dir/$READY"
    log "PostgreSQL $v chroot ready in $((SECONDS - t1)) s: $(in_ns "$dir" "/usr/lib/postgresql/$v/bin/postgres" --version)"
}

run() {
    local v=$1; shift
    local dir
    suite_of "$v" >/dev/null
    dir=$(chroot_dir "$v")
    need_root
    [ -f "$dir/$READY" ] || die "no PostgreSQL $v chroot (bash scripts/pgchroot.sh create $v)"
    [ $# -gt 0 ] || set -- bash
    in_ns "$dir" "$@"
}

# remove_dir DIR: a chroot directory of ours, never through a mount point
remove_dir() {
    local dir=$1
    [ -f "$dir/.usage_guard-chroot" ] || [ ! -e "$dir/etc/debian_version" ] ||
        die "$dir does not look like a chroot of this script; not removing it"
    if findmnt -rn -o TARGET | grep -q "^$dir/"; then
        die "something is mounted under $dir (not by this script): not removing it"
    fi
    rm -rf --one-file-system "$dir"
}

remove() {
    need_root
    local dirs=() d
    if [ $# -gt 0 ]; then
        suite_of "$1" >/dev/null
        dirs=("$(chroot_dir "$1")")
    else
        for d in "$CACHE"/pg*; do [ -d "$d" ] && dirs+=("$d"); done
    fi
    for d in "${dirs[@]}"; do
        [ -e "$d" ] || { log "no chroot $d"; continue; }
        log "removing $d"
        remove_dir "$d"
    done
    rm -f "$CACHE"/.lock-pg* "$CACHE"/*-pg*.log 2>/dev/null || true
    rmdir "$CACHE" 2>/dev/null || true
}

list() {
    local d v
    for d in "$CACHE"/pg*; do
        [ -d "$d" ] || continue
        v=${d##*/pg}
        if [ -f "$d/$READY" ]; then
            echo "$v $d $(du -sh --one-file-system "$d" | cut -f1) $(cat "$d/etc/debian_version") ready"
        else
            echo "$v $d incomplete"
        fi
    done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    create) [ $# -eq 1 ] || { usage >&2; exit 2; }; create "$1" ;;
    run) [ $# -ge 1 ] || { usage >&2; exit 2; }; run "$@" ;;
    path) [ $# -eq 1 ] || { usage >&2; exit 2; }; suite_of "$1" >/dev/null; chroot_dir "$1" ;;
    list) list ;;
    remove) [ $# -le 1 ] || { usage >&2; exit 2; }; remove "$@" ;;
    __enter) enter "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac

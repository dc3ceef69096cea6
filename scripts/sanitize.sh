#!/usr/bin/env bash
# scripts/sanitize.sh: runs the regression and isolation suites against a
# memory-checked usage_guard and fails when a checker reports a problem in
# usage_guard's C code (src/*.c).
#
#   bash scripts/sanitize.sh              AddressSanitizer (default)
#   bash scripts/sanitize.sh --valgrind   valgrind memcheck on the postmaster
#   bash scripts/sanitize.sh --all        both, one after the other
#   add --keep to keep the work directory (logs, builds) after a clean run
#
# How: the tree is copied to a work directory, built there with extra flags
# given on the make command line (the Makefile is not edited), and installed
# with DESTDIR into a private copy of the PostgreSQL installation (the
# Debian binaries are relocatable: a copied postgres takes its lib and share
# directories relative to its own path).  The suites run as the cluster
# owner with pg_regress --bindir pointing at that copy, so the system-wide
# installation is never replaced by an instrumented build while other work
# may be using it.
#   ASan:     -fsanitize=address -fno-omit-frame-pointer -g -O1; the servers
#             get LD_PRELOAD=libasan (plus a stub, see asan_preload) and
#             ASAN_OPTIONS=...:log_path=<dir>/asan from the environment of
#             make (pg_regress starts the postmaster with its own environment).
#   valgrind: -g -O1; --bindir is a directory whose postgres runs the real one
#             under valgrind --trace-children=yes (every backend is a fork of
#             the postmaster, so all of them are checked); other programs are
#             symlinks, so initdb runs unchecked and fast.
# Each mode first proves its checker is live: a canary module with a
# deliberate one-byte heap overread must be reported, and the postmaster of
# the regression suite must carry the checker (/proc/<pid>/environ, maps).
# Reports whose stack mentions usage_guard code fail the run; others are
# listed.  Finally the normal build is rebuilt and installed
# (make clean && make && make install in the source tree).
#
# Limits: PostgreSQL is not built with ASan or USE_VALGRIND, so overruns
# inside a palloc block or the shared memory segment, and reads of pfree'd
# chunks, are invisible to both checkers; what they see is stack, globals,
# malloc-level heap, libc calls (strlen, memcpy, ...) and, for valgrind,
# uses of uninitialised values.  The TAP suite is not run.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

MODES=(asan)
KEEP=0
SUITE_TIMEOUT=${SUITE_TIMEOUT:-1800}	# seconds per suite before it is killed
for arg in "$@"; do
    case $arg in
        --asan) MODES=(asan) ;;
        --valgrind) MODES=(valgrind) ;;
        --all) MODES=(asan valgrind) ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

ensure_prereqs
for mode in "${MODES[@]}"; do
    if [ "$mode" = valgrind ] && ! command -v valgrind >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            log "installing valgrind"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
        else
            log "valgrind is missing (sudo apt-get install -y valgrind)"; exit 1
        fi
    fi
done

BINDIR=$(pg_config --bindir)
PKGLIBDIR=$(pg_config --pkglibdir)
SHAREDIR=$(pg_config --sharedir)

# The Makefile's own warning flags, so the instrumented build sees the same.
BASE_CFLAGS=$(makefile_cflags)

# Stack frames of usage_guard code: the library, or one of its sources
# (valgrind runs with --fullpath-after=, so a bare api.c never shows up).
# ASan prints the path as compiled (src/api.c:12), valgrind the full path.
code_re() { printf '%s\\.so|(^|[ /(])src/(%s)\\.c:' "$1" "$2"; }
UG_RE=$(code_re usage_guard "$(cd "$ROOT/src" && ls *.c | sed 's/\.c$//' | paste -sd'|')")
CANARY_RE=$(code_re ug_canary ug_canary)	# same shape: checks the classifier

# Not /tmp/usage_guard.*: every staged path would then match "usage_guard".
WORKDIR=$(mktemp -d /tmp/ug-sanitize.XXXXXX)
chmod 755 "$WORKDIR"
STAGE=$WORKDIR/stage
POLLER=
STATUS=0
SUMMARY=()

# Stop whatever cluster a suite left running in the work directory.
stop_leftovers() {
    local pidfile
    while IFS= read -r pidfile; do
        log "stopping leftover cluster ${pidfile%/postmaster.pid}"
        as_owner "$STAGE$BINDIR/pg_ctl" -D "$(dirname "$pidfile")" -m immediate -w stop >/dev/null 2>&1 ||
            kill "$(head -n1 "$pidfile")" 2>/dev/null || true
    done < <(find "$WORKDIR" -name postmaster.pid -path '*/data/*' 2>/dev/null)
}

cleanup() {
    local rc=$?
    set +e
    # a trap can run inside a redirected command: back to the script's output
    exec 1>&3 2>&4
    [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null
    stop_leftovers
    log "restoring the normal build"
    if build_install; then
        log "normal build reinstalled: $PKGLIBDIR/usage_guard.so"
    else
        log "could not rebuild the normal build: run make clean && make && make install in $ROOT"
        [ $rc -eq 0 ] && rc=1
    fi
    if [ $rc -eq 0 ] && [ $KEEP -eq 0 ]; then
        rm -rf "$WORKDIR"
    else
        log "work directory kept: $WORKDIR"
    fi
    exit $rc
}
exec 3>&1 4>&2
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_canary DIR CFLAGS LDFLAGS_SL: a module whose function reads one byte
# past a malloc'd block, and a one-test suite calling it, built like the
# extension.  A checker that is really active must report it.
make_canary() {
    local dir=$1 cflags=$2 ldflags=$3
    rm -rf "$dir"; mkdir -p "$dir/src" "$dir/sql" "$dir/expected"
    cat >"$dir/src/ug_canary.c" <<'C'
#include "postgres.h"
#include <stdlib.h>
#include "fmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(ug_canary_overread);
Datum
ug_canary_overread(PG_FUNCTION_ARGS)
{
	char	   *volatile p = malloc(8);
	volatile char c;

	c = p[8];					/* one past the end: must be reported */
	free(p);
	PG_RETURN_INT32(c);
}
C
    cat >"$dir/Makefile" <<'MK'
MODULE_big = ug_canary
OBJS = src/ug_canary.o
REGRESS = ug_canary
REGRESS_OPTS = --temp-instance=./tmp_canary
PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
MK
    cat >"$dir/sql/ug_canary.sql" <<'SQL'
CREATE FUNCTION ug_canary_overread() RETURNS int
    AS '$libdir/ug_canary' LANGUAGE C;
SELECT ug_canary_overread() IS NOT NULL AS survived;
SQL
    : >"$dir/expected/ug_canary.out"
    make -C "$dir" -s with_llvm=no PG_CFLAGS="$cflags" LDFLAGS_SL="$ldflags"
    make -C "$dir" -s with_llvm=no install DESTDIR="$STAGE" >/dev/null
}

# watch_postmaster DATADIR OUT: once the cluster is ready, record how its
# postmaster and backends were started (environment, checker mapped or not).
watch_postmaster() {
    local data=$1 out=$2 pid i child
    for i in $(seq 1 3000); do
        if [ -f "$data/postmaster.pid" ] && grep -qx 'ready *' "$data/postmaster.pid" 2>/dev/null; then
            pid=$(head -n1 "$data/postmaster.pid")
            sleep 0.5
            {
                echo "postmaster pid $pid"
                echo "exe: $(readlink "/proc/$pid/exe")"
                echo "command: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-400)"
                echo "environment:"
                tr '\0' '\n' <"/proc/$pid/environ" | grep -E '^(LD_PRELOAD|ASAN_OPTIONS)=' | sed 's/^/  /' || true
                echo "mapped:"
                awk '{print $6}' "/proc/$pid/maps" | grep -E 'libasan|vgpreload_memcheck|usage_guard\.so' |
                    sort -u | sed 's/^/  /' || true
                for child in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do
                    echo "child $child ($(tr '\0' ' ' <"/proc/$child/cmdline" 2>/dev/null | cut -c1-60)):" \
                        "$(awk '{print $6}' "/proc/$child/maps" 2>/dev/null |
                           grep -oE 'libasan[^/]*$|vgpreload_memcheck[^/]*$' | sort -u | paste -sd' ')"
                done
            } >"$out" 2>&1
            return 0
        fi
        sleep 0.1
    done
    echo "postmaster of $data never became ready" >"$out"
}

# the watcher is done once the suite is: a cluster that never came up
stop_poller() {
    [ -n "$POLLER" ] || return 0
    kill "$POLLER" 2>/dev/null || true
    wait "$POLLER" 2>/dev/null || true
    POLLER=
}

# run_suite NAME DIR TARGET BINDIR ENV...: one pg_regress suite as the owner
run_suite() {
    local name=$1 dir=$2 target=$3 bin=$4; shift 4
    local rc=0 ok bad start=$SECONDS
    log "$name: make $target (bindir $bin)"
    # fds 3 and 4 (the script's own output) are not for the servers
    (exec 3>&- 4>&-; as_owner timeout "$SUITE_TIMEOUT" env "$@" make -C "$dir" -s "$target" bindir="$bin") \
        >"$dir/$name.log" 2>&1 || rc=$?
    [ $rc -eq 124 ] && log "$name: timed out after $SUITE_TIMEOUT s"
    ok=$(grep -cE '\.\.\. ok|^ok [0-9]' "$dir/$name.log" || true)
    bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]' "$dir/$name.log" || true)
    [ $rc -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
    SUITE_OK=$((SUITE_OK + ok)); SUITE_BAD=$((SUITE_BAD + bad))
    log "$name: $ok ok, $bad failed, $((SECONDS - start)) s"
    if [ $rc -ne 0 ]; then
        grep -E 'FAILED|tests? failed|^make: \*\*\*' "$dir/$name.log" | head -n 20 >&2 || true
        local diffs
        for diffs in "$dir/regression.diffs" "$dir/output_iso/regression.diffs"; do
            [ -s "$diffs" ] && { log "$name: ${diffs#$dir/} (head)"; head -n 60 "$diffs" >&2; }
        done
    fi
    return 0
}

# run_canary DIR BINDIR ENV...: its test result does not matter, its report does
run_canary() {
    local dir=$1 bin=$2; shift 2
    log "canary: make installcheck (bindir $bin)"
    (exec 3>&- 4>&-; as_owner timeout "$SUITE_TIMEOUT" env "$@" make -C "$dir" -s installcheck bindir="$bin") \
        >"$dir/canary.log" 2>&1 || true
}

# Crashes and checker exits as the postmaster saw them
server_incidents() {
    local f
    for f in "$@"; do
        [ -f "$f" ] || continue
        # the logical replication launcher exits with code 1 at every shutdown
        grep -E 'terminated by signal|exited with exit code|was terminated by' "$f" |
            grep -v 'logical replication launcher.*exited with exit code 1' |
            sed "s|^|  ${f#$WORKDIR/}: |" || true
    done
}

# Evidence that the regression postmaster ran with the checker
check_evidence() {
    local mode=$1 file=$2
    [ -f "$file" ] || { log "$mode: no evidence file"; return 1; }
    if [ "$mode" = asan ]; then
        grep -q '^  LD_PRELOAD=.*libasan' "$file" && grep -q '^  ASAN_OPTIONS=' "$file" &&
            grep -q 'libasan' <(sed -n '/^mapped:/,/^child/p' "$file") &&
            grep -q "^  $STAGE$PKGLIBDIR/usage_guard.so" "$file"
    else
        grep -q 'vgpreload_memcheck' "$file" && grep -q "^  $STAGE$PKGLIBDIR/usage_guard.so" "$file"
    fi
}

run_asan() {
    SUITE_OK=0 SUITE_BAD=0
    local t0=$SECONDS logs=$WORKDIR/asan-logs build=$WORKDIR/build-asan canary=$WORKDIR/canary-asan
    local san="-fsanitize=address -fno-omit-frame-pointer -g -O1"
    local preload
    preload=$(asan_preload "$WORKDIR/asan-preload")
    mkdir -p "$logs/canary" "$logs/suites"

    build_variant "$build" "$STAGE" "$BASE_CFLAGS $san" "-fsanitize=address"
    readelf -d "$build/usage_guard.so" | grep -q 'NEEDED.*libasan' ||
        { log "usage_guard.so is not linked with libasan"; exit 1; }
    local checks
    checks=$(objdump -d "$build/usage_guard.so" | grep -cE 'call.*<__asan_report_' || true)
    log "asan: usage_guard.so needs $(readelf -d "$build/usage_guard.so" | grep -o 'libasan[^]]*') and has $checks inline ASan checks (calls to __asan_report_*)"
    make_canary "$canary" "$san" "-fsanitize=address"
    chown -R postgres: "$build" "$canary" "$logs" 2>/dev/null || true

    # positive control: the canary must be reported, with its source line
    run_canary "$canary" "$STAGE$BINDIR" \
        LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$logs/canary/asan"
    local canary_ok=0
    if grep -l 'heap-buffer-overflow' "$logs"/canary/asan.* 2>/dev/null | xargs -r grep -lE "$CANARY_RE" |
            xargs -r grep -lE '(^|[ /(])src/ug_canary\.c:[0-9]+' >/dev/null; then
        canary_ok=1
        log "asan canary reported: $(grep -h '^SUMMARY' "$logs"/canary/asan.* | head -n1)"
    else
        log "asan canary NOT reported: ASan is not active in the backends"; STATUS=1
    fi

    watch_postmaster "$build/tmp_regress/data" "$logs/evidence-regress.txt" &
    POLLER=$!
    run_suite regress "$build" regress "$STAGE$BINDIR" \
        LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$logs/suites/asan"
    stop_poller
    watch_postmaster "$build/tmp_isolation/data" "$logs/evidence-isolation.txt" &
    POLLER=$!
    run_suite isolation "$build" isolation "$STAGE$BINDIR" \
        LD_PRELOAD="$preload" ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$logs/suites/asan"
    stop_poller
    stop_leftovers

    log "asan: postmaster of the regression suite:"
    sed 's/^/    /' "$logs/evidence-regress.txt" >&2
    local evidence_ok=1
    check_evidence asan "$logs/evidence-regress.txt" || { evidence_ok=0; log "asan: runtime NOT seen in the postmaster"; STATUS=1; }
    check_evidence asan "$logs/evidence-isolation.txt" || { evidence_ok=0; log "asan: runtime NOT seen in the isolation postmaster"; STATUS=1; }

    local reports=() ug=() f
    for f in "$logs"/suites/asan.*; do [ -f "$f" ] && reports+=("$f"); done
    for f in "${reports[@]}"; do grep -qE "$UG_RE" "$f" && ug+=("$f"); done
    for f in "${ug[@]}"; do
        log "ASan report in usage_guard code: ${f#$WORKDIR/}"
        cat "$f" >&2
    done
    for f in "${reports[@]}"; do
        grep -qE "$UG_RE" "$f" && continue
        log "ASan report outside usage_guard code: ${f#$WORKDIR/}: $(grep -m1 '^SUMMARY' "$f")"
    done
    local incidents
    incidents=$(server_incidents "$build/log/postmaster.log" "$build/output_iso/log/postmaster.log")
    [ -n "$incidents" ] && { log "asan: server incidents:"; echo "$incidents" >&2; }

    [ ${#ug[@]} -gt 0 ] && STATUS=1
    [ $SUITE_BAD -gt 0 ] && STATUS=1
    [ -n "$incidents" ] && STATUS=1
    SUMMARY+=("asan: suites $SUITE_OK ok / $SUITE_BAD failed; ${#reports[@]} ASan report(s), ${#ug[@]} in usage_guard code; canary $([ $canary_ok = 1 ] && echo detected || echo MISSED); runtime in postmaster $([ $evidence_ok = 1 ] && echo yes || echo NO); $((SECONDS - t0)) s")
}

# Known-harmless reports of an unmodified PostgreSQL (after the project's
# src/tools/valgrind.supp): padding bytes written to disk or sockets.
write_suppressions() {
    cat >"$1" <<'SUPP'
{
   uninitialized_atomic_init_u64
   Memcheck:Cond
   fun:pg_atomic_exchange_u64_impl
}
SUPP
}

run_valgrind() {
    SUITE_OK=0 SUITE_BAD=0
    local t0=$SECONDS logs=$WORKDIR/valgrind-logs build=$WORKDIR/build-valgrind canary=$WORKDIR/canary-valgrind
    local vgbin=$WORKDIR/valgrind-bin dbg="-fno-omit-frame-pointer -g -O1"
    mkdir -p "$logs/canary" "$logs/suites" "$vgbin"

    build_variant "$build" "$STAGE" "$BASE_CFLAGS $dbg" ""
    make_canary "$canary" "$dbg" ""
    write_suppressions "$logs/postgres.supp"

    # bindir for pg_regress: postgres under valgrind, the rest symlinked.
    # initdb resolves its symlink and runs the staged postgres directly.
    local f
    for f in "$STAGE$BINDIR"/*; do
        [ "$(basename "$f")" = postgres ] || ln -s "$f" "$vgbin/"
    done
    cat >"$vgbin/postgres" <<SH
#!/bin/sh
# postgres under valgrind memcheck; VG_LOG_DIR chooses where the logs go
exec valgrind --quiet --trace-children=yes --leak-check=no --track-origins=yes \\
    --num-callers=40 --error-limit=no --error-markers=VGERROR-BEGIN,VGERROR-END --fullpath-after= \\
    --suppressions=$logs/postgres.supp \\
    --log-file="\${VG_LOG_DIR:-$logs/suites}/vg.%p.log" \\
    "$STAGE$BINDIR/postgres" "\$@"
SH
    chmod 755 "$vgbin/postgres"
    chown -R postgres: "$build" "$canary" "$logs" 2>/dev/null || true

    run_canary "$canary" "$vgbin" VG_LOG_DIR="$logs/canary" PGCTLTIMEOUT=600
    local canary_ok=0
    if grep -l 'Invalid read of size 1' "$logs"/canary/vg.*.log 2>/dev/null | xargs -r grep -lE "$CANARY_RE" |
            xargs -r grep -lE '(^|[ /(])src/ug_canary\.c:[0-9]+' >/dev/null; then
        canary_ok=1
        log "valgrind canary reported: $(grep -h -A1 'Invalid read of size 1' "$logs"/canary/vg.*.log | sed -n 2p | sed 's/^==[0-9]*== *//')"
    else
        log "valgrind canary NOT reported: memcheck is not running the backends"; STATUS=1
    fi

    watch_postmaster "$build/tmp_regress/data" "$logs/evidence-regress.txt" &
    POLLER=$!
    run_suite regress "$build" regress "$vgbin" VG_LOG_DIR="$logs/suites" PGCTLTIMEOUT=600
    stop_poller
    watch_postmaster "$build/tmp_isolation/data" "$logs/evidence-isolation.txt" &
    POLLER=$!
    run_suite isolation "$build" isolation "$vgbin" VG_LOG_DIR="$logs/suites" PGCTLTIMEOUT=600
    stop_poller
    stop_leftovers

    log "valgrind: postmaster of the regression suite:"
    sed 's/^/    /' "$logs/evidence-regress.txt" >&2
    local evidence_ok=1
    check_evidence valgrind "$logs/evidence-regress.txt" || { evidence_ok=0; log "valgrind: memcheck NOT seen in the postmaster"; STATUS=1; }
    check_evidence valgrind "$logs/evidence-isolation.txt" || { evidence_ok=0; log "valgrind: memcheck NOT seen in the isolation postmaster"; STATUS=1; }

    # one error per VGERROR-BEGIN..END block; split them into files
    local blocks=$logs/blocks nlogs
    mkdir -p "$blocks"
    nlogs=$(ls "$logs"/suites/vg.*.log 2>/dev/null | wc -l)
    awk -v dir="$blocks" '
        /VGERROR-BEGIN/ { n++; out = sprintf("%s/error.%04d", dir, n); inb = 1; next }
        /VGERROR-END/   { inb = 0; close(out); next }
        inb             { sub(/^==[0-9]+== ?/, ""); print > out }
    ' "$logs"/suites/vg.*.log 2>/dev/null || true
    local total=0 ug=0
    for f in "$blocks"/*; do
        [ -f "$f" ] || continue
        total=$((total + 1))
        if grep -qE "$UG_RE" "$f"; then
            ug=$((ug + 1))
            log "valgrind error in usage_guard code (${f#$WORKDIR/}):"
            cat "$f" >&2
        fi
    done
    if [ $total -gt $ug ]; then
        log "valgrind errors outside usage_guard code, by kind and first frame:"
        for f in "$blocks"/*; do
            grep -qE "$UG_RE" "$f" && continue
            # kind | the first frame, then named frames of PostgreSQL code
            printf '%s | %s\n' "$(head -n1 "$f")" "$(awk -v stage="$STAGE" '
                /^ +(at|by) 0x/ {
                    if (done) next
                    fn = $3
                    if (n == 0 || (fn != "???" && index($0, stage) > 0)) out = out (n++ ? " < " : "") fn
                    if (n == 4) done = 1
                    next
                }
                /^ [A-Z]/ && NR > 1 { done = 1 }
                END { print out }' "$f")"
        done | sort | uniq -c | sort -rn | head -n 20 >&2
    fi
    local incidents
    incidents=$(server_incidents "$build/log/postmaster.log" "$build/output_iso/log/postmaster.log")
    [ -n "$incidents" ] && { log "valgrind: server incidents:"; echo "$incidents" >&2; }

    [ $ug -gt 0 ] && STATUS=1
    [ $SUITE_BAD -gt 0 ] && STATUS=1
    [ -n "$incidents" ] && STATUS=1
    SUMMARY+=("valgrind: suites $SUITE_OK ok / $SUITE_BAD failed; $nlogs process logs, $total error(s), $ug in usage_guard code; canary $([ $canary_ok = 1 ] && echo detected || echo MISSED); memcheck in postmaster $([ $evidence_ok = 1 ] && echo yes || echo NO); $((SECONDS - t0)) s")
}

[ "$(id -u)" = 0 ] && chown postgres: "$WORKDIR"
log "a report is usage_guard's when it matches: $UG_RE"
stage_postgres "$STAGE"
for mode in "${MODES[@]}"; do
    "run_$mode"
done

echo "usage_guard sanitize summary:"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
if [ $STATUS -eq 0 ]; then
    echo "usage_guard sanitize: clean"
else
    echo "usage_guard sanitize: FAILED (logs in $WORKDIR)"
fi
exit $STATUS

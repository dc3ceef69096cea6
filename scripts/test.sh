#!/usr/bin/env bash
# Runs the whole test suite on throwaway clusters: pg_regress, isolation,
# TAP tests and a benchmark smoke run.  Installs missing Debian packages,
# builds (warnings are errors) and installs the extension first.
#
#   bash scripts/test.sh                  PostgreSQL 15, on this machine
#   bash scripts/test.sh --pg 15,17,18    each version in turn; a line per version and a total
#   PG_VERSIONS="15 17 18" bash scripts/test.sh     the same
#
# A version is tested on this machine when it is installed here or this
# machine's Debian carries it (15 on Debian 12); any other (17, 18) in a
# Debian chroot of the release that does, made on first use and kept
# between runs (scripts/pgchroot.sh; `bash scripts/pgchroot.sh remove`
# deletes them).  The exit status is non-zero when any version fails.
source "$(dirname "$0")/common.sh"

VERSIONS=${PG_VERSIONS:-}
while [ $# -gt 0 ]; do
    case $1 in
        --pg) [ $# -ge 2 ] || { log "--pg needs a list of versions, e.g. --pg 15,17,18"; exit 2; }
              VERSIONS=$2; shift 2 ;;
        --pg=*) VERSIONS=${1#--pg=}; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) log "unknown argument: $1 (see bash scripts/test.sh --help)"; exit 2 ;;
    esac
done

# Can PostgreSQL $1 be tested on this machine: installed, or in its apt sources?
native_version() {
    [ -x "/usr/lib/postgresql/$1/bin/postgres" ] ||
        apt-cache policy "postgresql-$1" 2>/dev/null | grep -q 'Candidate: [0-9]'
}

# test_version V LOG: this script for PostgreSQL V, here or in its chroot;
# output to stdout and LOG.  A chroot run tests a copy of this tree and
# brings its diffs back to results/pgV/.
test_version() {
    local v=$1 out=$2 rc=0 dir
    if native_version "$v"; then
        PG_VERSIONS= PG_MAJOR=$v bash "$ROOT/scripts/test.sh" 2>&1 | tee "$out" || rc=$?
        return $rc
    fi
    bash "$ROOT/scripts/pgchroot.sh" create "$v" 2>&1 | tee "$out" || return 1
    dir=$(bash "$ROOT/scripts/pgchroot.sh" path "$v")
    rm -rf "$dir/build/usage_guard"
    mkdir -p "$dir/build/usage_guard"
    # the sources, not this machine's build outputs (made for another version)
    tar -C "$ROOT" --exclude=.git --exclude=./results --exclude='*.o' --exclude='*.bc' --exclude='*.so' \
        --exclude=./usage_guard_ctl -cf - . | tar -C "$dir/build/usage_guard" -xf -
    bash "$ROOT/scripts/pgchroot.sh" run "$v" env PG_MAJOR="$v" bash /build/usage_guard/scripts/test.sh 2>&1 |
        tee -a "$out" || rc=$?
    if [ -d "$dir/build/usage_guard/results" ]; then
        mkdir -p "$ROOT/results/pg$v"
        cp -r "$dir/build/usage_guard/results/." "$ROOT/results/pg$v/"
        log "PostgreSQL $v: differences copied to results/pg$v/"
    fi
    return $rc
}

if [ -n "$VERSIONS" ]; then
    LOGDIR=$(mktemp -d /tmp/usage_guard-versions.XXXXXX)
    trap 'rm -rf "$LOGDIR"' EXIT
    total_ok=0 total_bad=0 status=0 lines=()
    for v in ${VERSIONS//,/ }; do
        t0=$SECONDS rc=0
        if native_version "$v"; then where="on this machine"; else where="in chroot pg$v"; fi
        log "PostgreSQL $v: the whole suite, $where"
        test_version "$v" "$LOGDIR/$v.log" || rc=$?
        result=$(sed -n 's/^usage_guard tests: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$LOGDIR/$v.log" | tail -n 1)
        ok=${result% *} bad=${result#* }
        [ -n "$result" ] || { ok=0 bad=1; }
        [ $rc -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
        [ "$bad" -gt 0 ] && status=1
        total_ok=$((total_ok + ok)) total_bad=$((total_bad + bad))
        server=$(sed -n 's/^==> testing on PostgreSQL \([^ ]*\).*/\1/p' "$LOGDIR/$v.log" | tail -n 1)
        lines+=("PostgreSQL ${server:-$v} ($where): $ok passed, $bad failed, $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s")
    done
    echo "usage_guard tests by PostgreSQL version:"
    printf '  %s\n' "${lines[@]}"
    echo "usage_guard tests: $total_ok passed, $total_bad failed"
    exit $status
fi

# The gateway example's end-to-end test (examples/gateway/e2e.sh) runs on
# this machine's PostgreSQL 15, not in the chroots of other versions.
gateway_e2e=
if [ "$PG_MAJOR" = 15 ] && [ ! -e /.usage_guard-chroot ]; then
    gateway_e2e=gateway
fi
ensure_prereqs $gateway_e2e
log "testing on $("$PG_CONFIG" --version)"
build_install WERROR=1
make_workdir
trap 'rm -rf "$WORKDIR"' EXIT

# The suites write results next to the sources: run them on a copy the
# unprivileged cluster owner can write to.
tar -C "$ROOT" --exclude=.git -cf - . | tar -C "$WORKDIR" -xf -
[ "$(id -u)" = 0 ] && chown -R postgres: "$WORKDIR"

passed=0 failed=0 status=0
run_suite() {
    local name=$1; shift
    log "$name"
    local ok bad rc=0
    as_owner "$@" >"$WORKDIR/$name.log" 2>&1 || rc=$?
    cat "$WORKDIR/$name.log"
    if [ "$name" = tap ]; then
        # prove: "Files=1, Tests=13, ..." and "Failed 1/13 subtests"
        local total
        total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$WORKDIR/$name.log" | tail -n 1)
        bad=$(sed -n 's/.*Failed \([0-9]*\)\/[0-9]* subtests.*/\1/p' "$WORKDIR/$name.log" | awk '{s += $1} END {print s + 0}')
        ok=$(( ${total:-0} - bad ))
    else
        # pg_regress 15: "test foo ... ok"; 16 and later: "ok 1 - foo"
        ok=$(grep -cE '\.\.\. ok|^ok [0-9]' "$WORKDIR/$name.log" || true)
        bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]' "$WORKDIR/$name.log" || true)
    fi
    # a suite that failed without a failing test (did not start) counts too
    [ $rc -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
    [ $rc -ne 0 ] && status=1
    passed=$((passed + ok)); failed=$((failed + bad))
}

run_suite regress make -C "$WORKDIR" -s regress
run_suite isolation make -C "$WORKDIR" -s isolation
if ls "$WORKDIR"/test/t/*.pl >/dev/null 2>&1; then
    run_suite tap make -C "$WORKDIR" -s tap
fi

if [ -n "$gateway_e2e" ]; then
    run_suite gateway_e2e bash "$WORKDIR/examples/gateway/e2e.sh"
fi

# Citus (issue 13): a coordinator and two workers built from ../shared/deps,
# on this machine's PostgreSQL 15 (Citus 13.2.2 is built for it here).  Run
# as root or the invoking user (it builds Citus and stages PostgreSQL), with
# a short smoke run of its benchmark row at the end.
if [ "$PG_MAJOR" = 15 ] && [ ! -e /.usage_guard-chroot ]; then
    log "citus"
    rc=0
    CITUS_BENCH=2 CITUS_BENCH_ROUNDS=1 bash "$ROOT/scripts/citus.sh" test >"$WORKDIR/citus.log" 2>&1 || rc=$?
    cat "$WORKDIR/citus.log"
    ok=$(grep -c '^ok [0-9]' "$WORKDIR/citus.log" || true)
    bad=$(grep -c '^not ok [0-9]' "$WORKDIR/citus.log" || true)
    [ $rc -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
    [ $rc -ne 0 ] && status=1
    passed=$((passed + ok)); failed=$((failed + bad))
fi

# The benchmarks are not tests: a short smoke run shows each still works.
for bench in run growth; do
    log "benchmark smoke run: test/bench/$bench.sh"
    if ! BENCH_NO_BUILD=1 bash "$ROOT/test/bench/$bench.sh" --smoke >"$WORKDIR/bench-$bench.log" 2>&1; then
        cat "$WORKDIR/bench-$bench.log"
        log "the benchmark smoke run of test/bench/$bench.sh failed"
        status=1
        failed=$((failed + 1))
    else
        sed -n '/^usage_guard .*benchmark/,$p' "$WORKDIR/bench-$bench.log"
    fi
done

for pair in regress:regression.diffs isolation:output_iso/regression.diffs; do
    f="$WORKDIR/${pair#*:}"
    if [ -s "$f" ]; then
        log "differences in ${pair%%:*}:"
        cat "$f"
        mkdir -p "$ROOT/results"
        cp "$f" "$ROOT/results/${pair%%:*}.diffs"
    fi
done
for f in "$WORKDIR"/tmp_check/log/*; do
    [ -f "$f" ] && [ $status -ne 0 ] && { log "TAP log ${f#$WORKDIR/}:"; tail -n 50 "$f"; }
done

[ $failed -gt 0 ] && status=1
echo "usage_guard tests: $passed passed, $failed failed"
exit $status

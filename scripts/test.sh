#!/usr/bin/env bash
# Runs the whole test suite on throwaway clusters: pg_regress, isolation
# and (when present) TAP tests.  Installs missing Debian packages, builds and
# installs the extension first.  Usage: bash scripts/test.sh
source "$(dirname "$0")/common.sh"

ensure_prereqs
build_install
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
        ok=$(grep -cE '\.\.\. ok' "$WORKDIR/$name.log" || true)
        bad=$(grep -cE '\.\.\. FAILED' "$WORKDIR/$name.log" || true)
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

# The benchmark is not a test: a short smoke run shows it still works.
log "benchmark smoke run"
if ! BENCH_NO_BUILD=1 bash "$ROOT/test/bench/run.sh" --smoke >"$WORKDIR/bench.log" 2>&1; then
    cat "$WORKDIR/bench.log"
    log "the benchmark smoke run failed"
    status=1
    failed=$((failed + 1))
else
    sed -n '/^usage_guard benchmark/,$p' "$WORKDIR/bench.log"
fi

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

# The table path: decisions made from the ledger under the key lock in
# ExclusiveLock (docs/architecture.md, "The table path") stay exact
#   A. without shared_preload_libraries (no shared memory at all): limits,
#      usage_check, usage_record, idempotency keys, the LOG line once per
#      backend, and consumers of a key serialized until commit/rollback;
#   B. with the library preloaded but shared memory full (max_counters = 100
#      and one transaction holding reservations for 150 tenants): the keys
#      that do not fit take the table path inside the same transaction and
#      still decide exactly; after the commit, idle entries are evicted and
#      the fast path works again;
#   C. with no extension slots (max_counter_extensions = 0): two windows per
#      key stay exact, and a rate limit refuses to run without room for its
#      state (53400) rather than let every request through.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $started = time;

# Every decision uses this instant, so that the day window cannot roll over
# while the test runs.
my $at = '2026-03-10 12:00:00+00';

my $msg_not_loaded =
  qr/LOG:  usage_guard: not loaded by shared_preload_libraries; decisions use the table path$/;
my $msg_full = qr/LOG:  usage_guard: shared memory for counters is full; using the table path$/;

# PIDs (from log_line_prefix '%m [%p] ...') of the server log lines matching
# $re, from byte $offset on
sub log_pids
{
	my ($node, $re, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset // 0);
	return map { /^\S+ \S+ \S+ \[(\d+)\]/ ? $1 : '?' } grep { /$re/ } split /\n/, $log;
}

# Poll $sql until it returns $expected or $seconds pass; the last result
sub poll_value
{
	my ($node, $db, $sql, $expected, $seconds) = @_;
	my $deadline = time + $seconds;
	my $got;
	while (1)
	{
		$got = $node->safe_psql($db, $sql);
		last if $got eq $expected || time > $deadline;
		usleep(50_000);
	}
	return $got;
}

sub session
{
	my ($node, $db) = @_;
	my $s = $node->background_psql($db, timeout => 30);
	$s->set_query_timer_restart;
	return $s;
}

# =========================================================================
# A. Not preloaded
# =========================================================================

my $db = 'billing';
my $na = PostgreSQL::Test::Cluster->new('no_preload');
$na->init;
$na->append_conf('postgresql.conf', "log_statement = none\n");
$na->start;
$na->safe_psql('postgres', "CREATE DATABASE $db");

is($na->safe_psql($db, 'SHOW shared_preload_libraries'), '', 'A: usage_guard is not preloaded');

$na->safe_psql($db, q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('calls', 'call'), ('tokens', 'token');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('basic');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
        ('basic', 'calls', 'day', 5), ('basic', 'tokens', 'month', 1000);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
    SELECT t, 'basic', '2026-01-01' FROM unnest(ARRAY['acme', 'r1', 'r2']) AS t;
});
is($na->safe_psql($db, q{SELECT count(*) FROM pg_extension WHERE extname = 'usage_guard'}), '1',
	'A: CREATE EXTENSION works without shared_preload_libraries');

is($na->safe_psql($db, 'SELECT enabled FROM usage_guard.shmem_info()'), 'f', 'A: shmem_info reports enabled = false');

# One session, many decisions: the last consume over the limit is refused
my $off = -s $na->logfile;
my @a1 = split /\n/, $na->safe_psql($db,
	join("\n",
		'SELECT pg_backend_pid();',
		map({ qq{SELECT allowed, decision, usage, recorded FROM usage_guard.usage_consume('acme', 'calls', 1, at => '$at');} } 1 .. 6),
		qq{SELECT allowed, decision, usage, limit_value FROM usage_guard.usage_check('acme', 'calls', 1, '$at');},
		qq{SELECT allowed, decision, usage FROM usage_guard.usage_check('acme', 'calls', 0, '$at');}));
my $a1_pid = shift @a1;
is_deeply(
	\@a1,
	[
		't|allow|0|t', 't|allow|1|t', 't|allow|2|t', 't|allow|3|t', 't|allow|4|t',
		'f|hard_limit|5|f', 'f|hard_limit|5|5', 't|allow|5'
	],
	'A: consumes up to the hard limit (5) are allowed, the next is refused; usage_check agrees');

my @pids = log_pids($na, $msg_not_loaded, $off);
is_deeply(\@pids, [$a1_pid], 'A: a session making 8 decisions logs "not loaded ... table path" exactly once');

is($na->safe_psql($db, qq{
    SELECT (SELECT sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'acme' AND feature_key = 'calls')
           || '|' || (SELECT usage FROM usage_guard.usage_check('acme', 'calls', 1, '$at'))}),
	'5|5', "A: the ledger holds exactly the limit and usage_check's usage equals the ledger sum");

is($na->safe_psql($db, 'SELECT count(*) FROM usage_guard.usage_counters'), '0',
	'A: usage_counters is empty without shared memory');

# usage_record and idempotency keys
my @a2 = split /\n/, $na->safe_psql($db, qq{
    SELECT allowed, recorded FROM usage_guard.usage_consume('acme', 'tokens', 10, 'req-1', at => '$at');
    SELECT allowed, recorded FROM usage_guard.usage_consume('acme', 'tokens', 10, 'req-1', at => '$at');
    SELECT usage_guard.usage_record('acme', 'tokens', 5, '$at', 'rec-1');
    SELECT usage_guard.usage_record('acme', 'tokens', 5, '$at', 'rec-1');
    SELECT usage_guard.usage_record('acme', 'tokens', 2.5, '$at');
    SELECT usage FROM usage_guard.usage_check('acme', 'tokens', 1, '$at');
    SELECT count(*) || '|' || sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'acme' AND feature_key = 'tokens';
});
is_deeply(\@a2, [ 't|t', 't|f', 't', 'f', 't', '17.5', '3|17.5' ],
	'A: usage_record and idempotency keys: a duplicate key records nothing (false), usage_check equals the ledger');

# --- concurrency on the table path -----------------------------------------

my $s1 = session($na, $db);
my $s2 = session($na, $db);
my $pid1 = $s1->query_safe('SELECT pg_backend_pid()');
my $pid2 = $s2->query_safe('SELECT pg_backend_pid()');

# session 1 holds the last unit of $tenant in an open transaction; session 2
# asks for a unit of the same key and must wait for session 1's key lock
sub contend
{
	my ($tenant, $end, $expect_s2) = @_;
	my $when = "A, $end round";

	$na->safe_psql($db, qq{SELECT usage_guard.usage_record('$tenant', 'calls', 4, '$at')});
	is($s1->query_safe(qq{BEGIN; SELECT allowed FROM usage_guard.usage_consume('$tenant', 'calls', 1, at => '$at');}),
		't', "$when: session 1 consumes the last unit in an open transaction");

	$s2->query_until(qr/waiting\n/, qq{\\echo waiting
SELECT 'r2:' || allowed || ':' || decision FROM usage_guard.usage_consume('$tenant', 'calls', 1, at => '$at');
});
	is( poll_value(
			$na, $db, qq{
            SELECT string_agg(w.mode || ':' || w.granted || ':' || h.mode || ':' || h.granted, ',')
              FROM pg_locks w
              JOIN pg_locks h ON h.locktype = w.locktype AND h.database = w.database AND h.classid = w.classid
                             AND h.objid = w.objid AND h.objsubid = w.objsubid AND h.pid = $pid1
             WHERE w.pid = $pid2 AND w.locktype = 'advisory' AND w.objsubid = 21831 AND NOT w.granted},
			'ExclusiveLock:false:ExclusiveLock:true', 10),
		'ExclusiveLock:false:ExclusiveLock:true',
		"$when: session 2 waits for the key lock (advisory, objsubid 21831) session 1 holds in ExclusiveLock");
	is($na->safe_psql($db, "SELECT pg_blocking_pids($pid2)"), "{$pid1}", "$when: session 2 is blocked by session 1");
	my (undef, $check, $check_err) = $na->psql($db, qq{SET statement_timeout = '5s';
        SELECT usage FROM usage_guard.usage_check('$tenant', 'calls', 1, '$at')});
	is($check, '4', "$when: usage_check does not wait and counts committed usage only") or diag $check_err;

	$s1->query_safe($end);
	my $r = eval { $s2->query_until(qr/^r2:\w+:\w+$/m, '') } // 'timed out';
	chomp $r;
	is($r, $expect_s2, "$when: after session 1's $end, session 2 gets $expect_s2");
	is($na->safe_psql($db, qq{SELECT sum(amount) FROM usage_guard.usage_events WHERE tenant_id = '$tenant' AND feature_key = 'calls'}),
		'5', "$when: the ledger holds exactly the hard limit");
	return;
}

contend('r1', 'COMMIT', 'r2:false:hard_limit');
contend('r2', 'ROLLBACK', 'r2:true:allow');

# both sessions made decisions: each says so once
$s1->query_safe(qq{SELECT usage_guard.usage_check('r1', 'calls', 1, '$at')});
$s2->query_safe(qq{SELECT usage_guard.usage_check('r1', 'calls', 1, '$at')});
$s1->quit;
$s2->quit;

is($na->safe_psql($db, qq{
    SELECT count(*) FILTER (WHERE s > 5) || ' over, ' || count(*) || ' tenants'
      FROM (SELECT tenant_id, sum(amount) AS s FROM usage_guard.usage_events
             WHERE feature_key = 'calls' AND occurred_at >= '2026-03-10 00:00+00' AND occurred_at < '2026-03-11 00:00+00'
             GROUP BY tenant_id) x}),
	'0 over, 3 tenants', 'A: no ledger total exceeds the hard limit');

@pids = log_pids($na, $msg_not_loaded);
my %per_pid;
$per_pid{$_}++ for @pids;
is(scalar(grep { $per_pid{$_} } $a1_pid, $pid1, $pid2), 3, 'A: the LOG line is present for every deciding session');
is_deeply([ grep { $per_pid{$_} > 1 } sort keys %per_pid ], [], 'A: no backend logs it more than once')
  or diag explain \%per_pid;

$na->stop;

# =========================================================================
# B. Preloaded, shared memory full
# =========================================================================

# A node with usage_guard preloaded and one more setting; database $db with
# feature calls and plan tiny (a daily hard limit of $limit calls)
sub preloaded_node
{
	my ($name, $setting, $limit) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard'
$setting
log_statement = none
});
	$node->start;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('calls', 'call');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('tiny');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('tiny', 'calls', 'day', $limit);
});
	return $node;
}

my $nb = preloaded_node('full', 'usage_guard.max_counters = 100', 2);
$nb->safe_psql($db, q{
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
    SELECT t, 'tiny', '2026-01-01'
      FROM (SELECT 't' || i FROM generate_series(1, 150) AS i
            UNION ALL SELECT 'fresh' || i FROM generate_series(0, 5) AS i) AS x(t);
});
is($nb->safe_psql($db, 'SELECT enabled, max_counters, counters_used FROM usage_guard.shmem_info()'),
	't|100|0', 'B: shared memory enabled with max_counters = 100, empty');

my $boff = -s $nb->logfile;
my $tx = session($nb, $db);
my $txpid = $tx->query_safe('SELECT pg_backend_pid()');
$tx->query_safe('BEGIN');

# $amount for each of the 150 tenants, in one statement; a summary
sub round
{
	my ($amount) = @_;
	return $tx->query_safe(qq{
        SELECT count(*) FILTER (WHERE allowed AND recorded) || ' allowed, '
               || count(*) FILTER (WHERE NOT allowed AND NOT recorded AND decision = 'hard_limit') || ' refused, usage '
               || string_agg(DISTINCT usage::text, ',')
          FROM generate_series(1, 150) AS i,
               LATERAL usage_guard.usage_consume('t' || i, 'calls', $amount, at => '$at')});
}

is(round(1), '150 allowed, 0 refused, usage 0', 'B: 1 unit for each of 150 tenants in one transaction: all allowed');

# while the transaction is open: shared memory holds at most 100 keys, all
# with a reservation; the other keys took the table path (their key lock is
# held in ExclusiveLock until commit)
my ($used, $live, $excl) = split /\|/, $nb->safe_psql($db, qq{
    SELECT (SELECT counters_used FROM usage_guard.shmem_info()),
           (SELECT count(DISTINCT tenant_id) FROM usage_guard.usage_counters WHERE reserved = 1),
           (SELECT count(*) FROM pg_locks WHERE pid = $txpid AND locktype = 'advisory' AND objsubid = 21831
                                           AND mode = 'ExclusiveLock' AND granted)});
cmp_ok($used, '<=', 100, "B: in the open transaction, counters_used ($used) <= max_counters");
is($live, $used, 'B: every key in shared memory has the in-flight unit reserved (none can be evicted)');
is($excl + $live, 150, "B: the other $excl tenants took the table path (key lock held in ExclusiveLock)");
cmp_ok($excl, '>=', 50, 'B: at least 50 tenants took the table path');

is(round(2), '0 allowed, 150 refused, usage 1', 'B: 2 more units for each: all refused (1 + 2 > 2), own uncommitted unit counted');
is(round(1), '150 allowed, 0 refused, usage 1', 'B: 1 more unit for each: all allowed (1 + 1 = 2)');
$tx->query_safe('COMMIT');
$tx->quit;

my @full = log_pids($nb, $msg_full, $boff);
is_deeply(\@full, [$txpid], 'B: "shared memory for counters is full" is logged, once, by the transaction\'s backend');

is($nb->safe_psql($db, q{
    SELECT count(*) FILTER (WHERE s = 2) || '/' || count(*)
      FROM (SELECT tenant_id, sum(amount) AS s FROM usage_guard.usage_events
             WHERE feature_key = 'calls' GROUP BY tenant_id) x}),
	'150/150', 'B: the ledger sum is 2 for every tenant');

is($nb->safe_psql($db, qq{
    SELECT count(*) FILTER (WHERE d.usage = 2 AND NOT d.allowed AND d.decision = 'hard_limit') || '/' || count(*)
      FROM generate_series(1, 150) AS i, LATERAL usage_guard.usage_check('t' || i, 'calls', 1, '$at') d}),
	'150/150', 'B: usage_check reports usage 2 and allowed = false for every tenant');

cmp_ok($nb->safe_psql($db, 'SELECT counters_used FROM usage_guard.shmem_info()'), '<=', 100,
	'B: counters_used <= 100 after the checks');
is($nb->safe_psql($db, q{
    SELECT count(*) FILTER (WHERE c.reserved <> 0 OR c.credit <> 0) || ' in flight, '
           || count(*) FILTER (WHERE c.usage <> (
                  SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                   WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                     AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end)) || ' mismatches'
      FROM usage_guard.usage_counters c}),
	'0 in flight, 0 mismatches', 'B: live counters equal the ledger, nothing reserved');

# new decisions work again on the fast path: idle entries are evicted
$boff = -s $nb->logfile;
my @fresh = split /\n/, $nb->safe_psql($db, qq{
    SELECT pg_backend_pid();
    SELECT allowed, recorded, usage FROM usage_guard.usage_consume('fresh0', 'calls', 1, at => '$at');
    SELECT usage || '|' || reserved FROM usage_guard.usage_counters
     WHERE tenant_id = 'fresh0' AND window_start = '2026-03-10 00:00+00';
    SELECT counters_used <= 100 FROM usage_guard.shmem_info();
});
shift @fresh;    # the backend's pid
is_deeply(\@fresh, [ 't|t|0', '1|0', 't' ],
	'B: after the commit a new tenant\'s consume is allowed and is in usage_counters (idle entries evicted)');
is_deeply([ log_pids($nb, $msg_full, $boff) ], [], 'B: that decision did not need the table path')
  or diag 'shmem_info: ' . $nb->safe_psql($db, 'SELECT * FROM usage_guard.shmem_info()');

# The same, repeatedly: one transaction (one statement) reads 100 tenants, so
# shared memory is full of idle entries last used at the same moment; a new
# tenant's decision in the next transaction must evict them and be served
# from shared memory, not from the table path
my @rounds;
for my $k (1 .. 5)
{
	$nb->safe_psql($db, qq{SELECT count(*) FROM generate_series(1, 100) AS i,
                             LATERAL usage_guard.usage_check('t' || i, 'calls', 1, '$at')});
	my $roff = -s $nb->logfile;
	my ($pid, @res) = split /\n/, $nb->safe_psql($db, qq{
        SELECT pg_backend_pid();
        SELECT allowed FROM usage_guard.usage_consume('fresh$k', 'calls', 1, at => '$at');
        SELECT count(*) FROM usage_guard.usage_counters
         WHERE tenant_id = 'fresh$k' AND usage = 1 AND reserved = 0;});
	my $res = join('|', @res) . '|' . scalar(grep { $_ eq $pid } log_pids($nb, $msg_full, $roff)) . ' full';
	push @rounds, "round $k: $res";
}
is_deeply(\@rounds, [ map { "round $_: t|1|0 full" } 1 .. 5 ],
	'B: 5 rounds: after a transaction touched every entry, a new tenant is loaded into shared memory (eviction works)')
  or diag explain \@rounds;

$nb->stop;

# =========================================================================
# C. Preloaded, no extension slots (usage_guard.max_counter_extensions = 0):
#    an entry holds two windows and no rate state
# =========================================================================

my $nc = preloaded_node('noext', 'usage_guard.max_counter_extensions = 0', 3);
$nc->safe_psql($db, q{
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
    VALUES ('back', 'tiny', '2026-01-01'), ('gw', 'tiny', '2026-01-01');
    INSERT INTO usage_guard.subjects (tenant_id, subject_id, level) VALUES ('gw', 'key-1', 'api_key');
    INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, per, hard_limit)
    VALUES ('gw', 'key-1', 'api_key', 'rate', '1 second', 2);
});
is($nc->safe_psql($db, 'SELECT max_counter_extensions, counter_extensions_used FROM usage_guard.shmem_info()'),
	'0|0', 'C: no extension slots');

# one tenant consumes on five days going back in time (each decision needs
# its day while the later days are still live): two windows fit, the rest
# take the table path or reuse an idle slot; every day ends exactly at 3
my $days = $nc->safe_psql($db, q{
    SELECT string_agg(CASE WHEN allowed THEN 't' ELSE 'f' END, ',' ORDER BY d, k)
      FROM generate_series(0, 4) AS d, generate_series(1, 4) AS k,
           LATERAL usage_guard.usage_consume('back', 'calls', 1,
                       at => timestamptz '2026-03-10 12:00+00' - d * interval '1 day' + k * interval '1 s') c});
is($days, join(',', ('t,t,t,f') x 5), 'C: on each of 5 days 3 units pass and the 4th is refused');
is($nc->safe_psql($db, q{
    SELECT count(*) FILTER (WHERE s = 3) || '/' || count(*)
      FROM (SELECT date_trunc('day', occurred_at), sum(amount) AS s FROM usage_guard.usage_events
             WHERE tenant_id = 'back' GROUP BY 1) x}),
	'5/5', 'C: the ledger holds exactly 3 for each day');
is($nc->safe_psql($db, q{
    SELECT (max(nwindows) <= 2) || '|' || count(*) FILTER (WHERE c.usage <> (
               SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                  AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end))
      FROM usage_guard.live_counters() c,
           LATERAL (SELECT count(*) AS nwindows FROM usage_guard.live_counters() x
                     WHERE x.tenant_id = c.tenant_id AND x.feature_key = c.feature_key) n}),
	'true|0', 'C: at most two live windows per key, each equal to the ledger');

# a feature with a monthly and a daily quota has four windows to keep (each
# period's current and next): the two current ones fit, the next ones are
# not loaded ahead and never displace them, so decisions stay on the fast
# path (no "full" line) and exact
$nc->safe_psql($db, q{
    INSERT INTO usage_guard.features (feature_key) VALUES ('two');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('both');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
    VALUES ('both', 'two', 'month', 1000), ('both', 'two', 'day', 5);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
    VALUES ('md', 'both', '2026-03-01');
});
my $coff = -s $nc->logfile;
is($nc->safe_psql($db, qq{
    SELECT string_agg(CASE WHEN allowed THEN 't' ELSE 'f' END, '' ORDER BY k)
      FROM generate_series(1, 7) AS k,
           LATERAL usage_guard.usage_consume('md', 'two', 1, at => '$at'::timestamptz + k * interval '1 s') c}),
	'tttttff', 'C: month + day quotas with no extension slots: 5 pass, then the day refuses');
is($nc->safe_psql($db, q{
    SELECT string_agg(to_char(window_start, 'MM-DD') || '=' || usage, ',' ORDER BY window_start)
      FROM usage_guard.live_counters() WHERE tenant_id = 'md'}),
	'03-01=5,03-10=5', 'C: the two current windows are live, with the right usage');
is_deeply([ log_pids($nc, $msg_full, $coff) ], [], 'C: no decision took the table path for lack of room');

# a rate limit needs state: with no slot for it the request fails (53400)
# rather than passing unlimited, and writes nothing
my ($ret, $out, $err) = $nc->psql($db, q{
    SELECT allowed FROM usage_guard.request_consume('gw', 'key-1', 'calls', 1, at => '2026-03-10 12:00+00')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/53400: no room in shared memory for the rate-limit state of tenant "gw"/,
	'C: a rate-limited request without room for its state fails with 53400');
like($err, qr/HINT:  Raise usage_guard.max_counter_extensions/, 'C: the hint names the setting');
is($nc->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 'gw'}),
	'0', 'C: the failed request wrote no ledger row');

$nc->stop;

note sprintf('runtime %.1f s', time - $started);
done_testing();

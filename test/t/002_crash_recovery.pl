# Crash recovery under concurrent load: the live counters in shared memory
# are rebuilt from the ledger after an immediate shutdown and after a backend
# is killed with SIGKILL (the postmaster reinitializes shared memory).  After
# each recovery: every consume acknowledged before the crash is in the
# ledger, usage_check and the live counters equal the ledger in every window,
# nothing is left reserved, and no window is over its hard limit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $started = time;
my $db = 'billing';
my @features = qw(calls tokens jobs msgs);
my $ntenants = 20;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
# restart_after_crash: the SIGKILL below must lead to a crash restart, not a
# shutdown (Cluster.pm turns it off).  log_statement: keep the log readable.
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard'
restart_after_crash = on
log_statement = none
});
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");

# One plan limits `calls` per day, month and billing period; the other
# features have one window each, so that usage_check reports that window.
# Tenants t1..t10 get overrides low enough for the load to reach them, at
# different moments (tightest window rotating between day, month and billing
# period); t11..t20 stay far below the plan's limits.  Billing periods: t4,
# t8, ... in a 14-day trial around now, the others monthly from anchors 10
# or 45 days ago or an anchor on the 31st.
$node->safe_psql($db, q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES
        ('calls', 'call'), ('tokens', 'token'), ('jobs', 'job'), ('msgs', 'message');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('pro');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
        ('pro', 'calls', 'day', 100000), ('pro', 'calls', 'month', 200000),
        ('pro', 'calls', 'billing_period', 150000),
        ('pro', 'tokens', 'month', 100000), ('pro', 'jobs', 'billing_period', 100000),
        ('pro', 'msgs', 'day', 100000);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status, current_period_start, current_period_end)
    SELECT 't' || i, 'pro', CASE WHEN i % 4 = 0 THEN 'trialing' ELSE 'active' END,
           CASE i % 4 WHEN 0 THEN now() - interval '3 days'
                      WHEN 1 THEN now() - interval '10 days'
                      WHEN 2 THEN now() - interval '45 days 7 hours'
                      ELSE '2024-01-31 13:30+00' END,
           CASE WHEN i % 4 = 0 THEN now() + interval '11 days' END
      FROM generate_series(1, 20) AS i;
    INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit, reason)
    SELECT 't' || i, f, p, l, 'low limit for the crash test'
      FROM generate_series(1, 10) AS i,
           LATERAL (VALUES
               ('calls', 'day', 40 * i * i + CASE WHEN i % 3 = 0 THEN 0 ELSE 25 END),
               ('calls', 'month', 40 * i * i + CASE WHEN i % 3 = 1 THEN 0 ELSE 25 END),
               ('calls', 'billing_period', 40 * i * i + CASE WHEN i % 3 = 2 THEN 0 ELSE 25 END),
               ('tokens', 'month', 50 * i * i), ('jobs', 'billing_period', 50 * i * i),
               ('msgs', 'day', 50 * i * i)) AS v(f, p, l);
});

# The windows every limit applies to at a time, with the effective hard
# limit, computed here from the catalog without the extension's C code: UTC
# calendar windows, and billing periods as documented (the first period, or
# months from the anchor, day of month clamped).
$node->safe_psql($db, q{
    CREATE SCHEMA chk;
    CREATE FUNCTION chk.windows(p_at timestamptz)
    RETURNS TABLE (tenant_id text, feature_key text, period text, hard_limit numeric,
                   window_start timestamptz, window_end timestamptz)
    LANGUAGE sql STABLE SET timezone = 'UTC'
    AS $$
      WITH lim AS (
        SELECT s.tenant_id, pf.feature_key, pf.period::text AS period, pf.hard_limit::numeric AS hard_limit
          FROM usage_guard.tenant_subscriptions s
          JOIN usage_guard.plan_features pf ON pf.plan_code = s.plan_code
         WHERE NOT EXISTS (SELECT 1 FROM usage_guard.tenant_overrides o
                            WHERE o.tenant_id = s.tenant_id AND o.feature_key = pf.feature_key
                              AND o.period = pf.period AND (o.expires_at IS NULL OR p_at < o.expires_at))
        UNION ALL
        SELECT o.tenant_id, o.feature_key, o.period::text, o.hard_limit::numeric
          FROM usage_guard.tenant_overrides o
         WHERE o.expires_at IS NULL OR p_at < o.expires_at
      )
      SELECT l.tenant_id, l.feature_key, l.period, l.hard_limit, w.ws, w.we
        FROM lim l
        JOIN usage_guard.tenant_subscriptions s ON s.tenant_id = l.tenant_id
        CROSS JOIN LATERAL (
            SELECT date_trunc('day', p_at), date_trunc('day', p_at) + interval '1 day'
             WHERE l.period = 'day'
            UNION ALL
            SELECT date_trunc('month', p_at), date_trunc('month', p_at) + interval '1 month'
             WHERE l.period = 'month'
            UNION ALL
            SELECT s.current_period_start, s.current_period_end
             WHERE l.period = 'billing_period' AND s.current_period_end IS NOT NULL
               AND p_at >= s.current_period_start AND p_at < s.current_period_end
            UNION ALL
            SELECT s.current_period_start + k * interval '1 month',
                   s.current_period_start + (k + 1) * interval '1 month'
              FROM generate_series(0, 1200) AS k
             WHERE l.period = 'billing_period' AND s.current_period_end IS NULL
               AND p_at >= s.current_period_start + k * interval '1 month'
               AND p_at < s.current_period_start + (k + 1) * interval '1 month'
        ) AS w(ws, we)
    $$;
});
is($node->safe_psql($db, q{SELECT count(*) || ' windows, ' || count(DISTINCT (tenant_id, feature_key)) || ' keys'
                             FROM chk.windows(now())}),
    '120 windows, 80 keys', 'every tenant has 6 limited windows over 4 features');

# pgbench load: single consumes, two consumes in one transaction (sometimes
# rolled back), and post-paid records (unconditional, kind 'record').
my $tenant_expr = q{'t' || :t};
my $scripts = $node->basedir . '/load';
mkdir $scripts;
append_to_file("$scripts/consume.sql", qq{\\set t random(1, $ntenants)
\\set f random(1, 4)
\\set a random(1, 5)
\\set r random(1, 1000000000000)
SELECT allowed FROM usage_guard.usage_consume($tenant_expr, (ARRAY['calls', 'tokens', 'jobs', 'msgs'])[:f], :a, idempotency_key => 'load-' || :client_id || '-' || :r);
});
append_to_file("$scripts/multi.sql", qq{\\set t random(1, $ntenants)
\\set a random(1, 5)
\\set r random(1, 1000000000000)
\\set rb random(0, 2)
BEGIN;
SELECT allowed FROM usage_guard.usage_consume($tenant_expr, 'calls', :a, idempotency_key => 'multi-' || :client_id || '-' || :r || '-a');
SELECT allowed FROM usage_guard.usage_consume($tenant_expr, 'msgs', :a, idempotency_key => 'multi-' || :client_id || '-' || :r || '-b');
\\if :rb = 0
ROLLBACK;
\\else
COMMIT;
\\endif
});
append_to_file("$scripts/record.sql", qq{\\set t random(1, $ntenants)
\\set f random(1, 4)
\\set r random(1, 1000000000000)
SELECT usage_guard.usage_record($tenant_expr, (ARRAY['calls', 'tokens', 'jobs', 'msgs'])[:f], 1, idempotency_key => 'rec-' || :client_id || '-' || :r);
});

my $load_seq = 0;

sub start_load
{
	my ($seconds) = @_;
	my $out = $node->basedir . '/pgbench_' . ++$load_seq;
	# the test framework sets PGAPPNAME; name the load's sessions
	local $ENV{PGAPPNAME} = 'ug_load';
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '6', '-j', '2', '-T', $seconds,
			'-f', "$scripts/consume.sql\@8", '-f', "$scripts/multi.sql\@2",
			'-f', "$scripts/record.sql\@1",
			'-h', $node->host, '-p', $node->port, $db
		],
		'<', '/dev/null', '>', "$out.stdout", '2>', "$out.stderr");
	return { h => $h, out => $out };
}

# Wait (bounded) for pgbench to end; its exit status and output
sub finish_load
{
	my ($load, $limit) = @_;
	my $deadline = time + $limit;
	usleep(50_000) while ($load->{h}->pumpable && time < $deadline);
	if (time >= $deadline)
	{
		diag('pgbench did not end in time: killed');
		$load->{h}->kill_kill;
	}
	$load->{h}->finish;
	my $status = $load->{h}->result(0);
	return ($status, slurp_file("$load->{out}.stdout"), slurp_file("$load->{out}.stderr"));
}

# psql sessions fed one statement at a time (autocommit unless the caller
# opens a transaction), read back as results arrive.
sub open_session
{
	my %s = (in => '', out => '', seen => '', err => '', n => 0, timer => IPC::Run::timer(30));
	$s{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr($db) ],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{err}, $s{timer});
	return \%s;
}

sub send_sql
{
	my ($s, $sql) = @_;
	my $marker = '__done_' . ++$s->{n};
	$s->{in} .= "$sql\n\\echo $marker\n";
	return $marker;
}

# Pump until the marker came back (the output so far then moves to
# {seen}); false if psql ended (the server went away) or 20 seconds passed
sub wait_marker
{
	my ($s, $marker) = @_;
	$s->{timer}->start(20);
	while ($s->{out} !~ /^\Q$marker\E$/m)
	{
		return 0 if $s->{timer}->is_expired || !$s->{h}->pumpable;
		return 0 unless eval { $s->{h}->pump; 1 };
	}
	$s->{seen} .= $s->{out};
	$s->{out} = '';
	return 1;
}

sub close_session
{
	my ($s) = @_;
	$s->{in} .= "\\q\n" if $s->{h}->pumpable;
	$s->{timer}->start(20);
	eval { $s->{h}->finish; 1 } or eval { $s->{h}->kill_kill; 1 };
	return;
}

# The acknowledging client: autocommit consumes with a unique key each; a
# consume is acknowledged when its result row came back (after its commit).
my (%sent, %acked, %refused);
my $ack_seq = 0;
my $ack_errors = '';

sub send_ack
{
	my ($s) = @_;
	my $k = 'ack-' . ++$ack_seq;
	my $t = 't' . (1 + int(rand($ntenants)));
	my $f = $features[ int(rand(@features)) ];
	my $a = 1 + int(rand(5));
	$sent{$k} = [ $t, $f, $a ];
	return send_sql($s,
		"SELECT '$k', allowed, recorded FROM usage_guard.usage_consume('$t', '$f', $a, idempotency_key => '$k');");
}

# Run acknowledged consumes until the deadline; returns how many round trips
sub ack_loop
{
	my ($s, $seconds) = @_;
	my $deadline = time + $seconds;
	my $n = 0;
	while (time < $deadline && $n < 50_000)
	{
		last unless wait_marker($s, send_ack($s));
		$n++;
	}
	return $n;
}

# Sort what a closed acknowledging session printed
sub collect_acks
{
	my ($s) = @_;
	for my $line (split /\n/, $s->{seen} . $s->{out})
	{
		next unless $line =~ /^(ack-\d+)\|([tf])\|([tf])$/;
		if ($2 eq 't' && $3 eq 't') { $acked{$1} = $sent{$1}; }
		elsif ($2 eq 'f' && $3 eq 'f') { $refused{$1} = $sent{$1}; }
		else { die "unexpected consume result: $line"; }
	}
	$ack_errors .= $s->{err};
	return;
}

# A session holding an allowed, uncommitted consume across the crash
sub open_in_flight
{
	my ($key) = @_;
	my $s = open_session();
	wait_marker($s, send_sql($s, 'BEGIN;'));
	my $m = send_sql($s,
		"SELECT allowed, recorded FROM usage_guard.usage_consume('t15', 'calls', 7, idempotency_key => '$key');");
	ok(wait_marker($s, $m) && $s->{seen} =~ /^t\|t$/m, "$key: allowed and uncommitted when the crash comes");
	return $s;
}

sub ledger_rows
{
	return $node->safe_psql($db, 'SELECT count(*) FROM usage_guard.usage_events');
}

# (a) and (c): the ledger alone, right after recovery
sub check_ledger
{
	my ($when) = @_;

	# every acknowledged consume is in the ledger, as acknowledged
	my @keys = sort keys %acked;
	cmp_ok(scalar(@keys), '>', 0, "$when: some consumes were acknowledged");
	my $values = join(",\n", map { "('$_', '$acked{$_}[0]', '$acked{$_}[1]', $acked{$_}[2])" } @keys);
	is( $node->safe_psql(
			$db, qq{
        WITH acked (k, t, f, a) AS (VALUES $values)
        SELECT count(*) || ' acknowledged, ' || count(*) FILTER (WHERE e.event_id IS NULL) || ' missing'
          FROM acked
          LEFT JOIN usage_guard.usage_events e
            ON e.tenant_id = acked.t AND e.idempotency_key = acked.k AND e.feature_key = acked.f
           AND e.amount = acked.a AND e.kind = 'consume'}),
		scalar(@keys) . ' acknowledged, 0 missing',
		"$when: every acknowledged consume is in the ledger");

	# a refused consume left no row (and did not take its key)
	my @no = sort keys %refused;
	is( $node->safe_psql(
			$db,
			'SELECT count(*) FROM usage_guard.usage_events WHERE idempotency_key = ANY (ARRAY['
			  . join(',', map { "'$_'" } @no, 'none') . '])'),
		'0',
		"$when: none of the " . scalar(@no) . ' refused consumes is in the ledger');

	# (c) consumes are exact: no window's consumed total is over its hard limit
	my $q = q{
        SELECT count(*) || ' windows, ' || count(*) FILTER (WHERE consumed > hard_limit) || ' over'
          FROM (SELECT w.*, (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                              WHERE e.tenant_id = w.tenant_id AND e.feature_key = w.feature_key
                                AND e.kind = 'consume'
                                AND e.occurred_at >= w.window_start AND e.occurred_at < w.window_end) AS consumed
                  FROM chk.windows(now()) w WHERE w.hard_limit IS NOT NULL) x};
	my $res = $node->safe_psql($db, $q);
	is($res, '120 windows, 0 over', "$when: no window is over its hard limit");
	diag_over() unless $res eq '120 windows, 0 over';
	return;
}

sub diag_over
{
	diag $node->safe_psql($db, q{
        SELECT string_agg(concat_ws(' ', tenant_id, feature_key, period, window_start, 'limit', hard_limit, 'consumed', consumed), E'\n')
          FROM (SELECT w.*, (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                              WHERE e.tenant_id = w.tenant_id AND e.feature_key = w.feature_key
                                AND e.kind = 'consume'
                                AND e.occurred_at >= w.window_start AND e.occurred_at < w.window_end) AS consumed
                  FROM chk.windows(now()) w WHERE w.hard_limit IS NOT NULL) x
         WHERE consumed > hard_limit});
	return;
}

# (b) and (d): usage_check and the live counters against the ledger (no load)
sub check_counters
{
	my ($when) = @_;

	# usage_check at one instant for every tenant/feature: its window is the
	# one computed from the catalog, its usage the ledger's sum in it
	my $res = $node->safe_psql(
		$db, q{
        WITH d AS (
            SELECT k.tenant_id, k.feature_key, c.period, c.usage, c.window_start, c.window_end,
                   (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                     WHERE e.tenant_id = k.tenant_id AND e.feature_key = k.feature_key
                       AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS ledger
              FROM (SELECT DISTINCT tenant_id, feature_key FROM chk.windows(now())) k
             CROSS JOIN LATERAL usage_guard.usage_check(k.tenant_id, k.feature_key, 0, now()) c)
        SELECT count(*) || ' windows (' || string_agg(DISTINCT d.period, ',' ORDER BY d.period) || '), '
               || count(*) FILTER (WHERE d.usage IS DISTINCT FROM d.ledger) || ' usage mismatches, '
               || count(*) FILTER (WHERE NOT EXISTS (
                      SELECT 1 FROM chk.windows(now()) w
                       WHERE w.tenant_id = d.tenant_id AND w.feature_key = d.feature_key
                         AND w.period = d.period AND w.window_start = d.window_start
                         AND w.window_end = d.window_end)) || ' window mismatches'
          FROM d});
	is($res, '80 windows (billing_period,day,month), 0 usage mismatches, 0 window mismatches',
		"$when: usage_check equals the ledger for every tenant and feature");

	# (d) every live counter: nothing in flight, usage equal to the ledger;
	# every limited window is live (usage_check loaded the current ones)
	$res = $node->safe_psql(
		$db, q{
        WITH c AS (
            SELECT c.*, (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                          WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                            AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS ledger
              FROM usage_guard.usage_counters c)
        SELECT (SELECT count(*) FROM c) || ' counters, '
               || (SELECT count(*) FROM c WHERE reserved <> 0 OR credit <> 0) || ' in flight, '
               || (SELECT count(*) FROM c WHERE usage <> ledger) || ' usage mismatches, '
               || (SELECT count(*) FROM chk.windows(now()) w
                    WHERE NOT EXISTS (SELECT 1 FROM c WHERE c.tenant_id = w.tenant_id
                                         AND c.feature_key = w.feature_key
                                         AND c.window_start = w.window_start
                                         AND c.window_end = w.window_end)) || ' windows not live'});
	like($res, qr/^[1-9]\d* counters, 0 in flight, 0 usage mismatches, 0 windows not live$/,
		"$when: live counters equal the ledger, nothing reserved");
	if ($res !~ /, 0 in flight, 0 usage mismatches,/)
	{
		diag $node->safe_psql(
			$db, q{
            SELECT string_agg(concat_ws(' ', c.tenant_id, c.feature_key, c.window_start, c.window_end,
                                        'usage', c.usage, 'reserved', c.reserved, 'credit', c.credit,
                                        'ledger', l.sum), E'\n')
              FROM usage_guard.usage_counters c,
                   LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                             WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                               AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l
             WHERE c.usage <> l.sum OR c.reserved <> 0 OR c.credit <> 0});
	}
	return;
}

# A load phase without a crash: pgbench plus the acknowledging client,
# then both end normally
sub load_burst
{
	my ($when, $seconds) = @_;
	my $before = ledger_rows();
	my $load = start_load($seconds);
	my $ack = open_session();
	ack_loop($ack, $seconds);
	close_session($ack);
	collect_acks($ack);
	my ($status, $out, $err) = finish_load($load, $seconds + 30);
	is($status, 0, "$when: pgbench ran without errors") or diag "pgbench: $out\n$err";
	like($out, qr/^number of failed transactions: 0 /m, "$when: no transaction failed (deadlock, serialization)");
	note "pgbench $when:\n$out";
	cmp_ok(ledger_rows(), '>', $before + 100, "$when: the load wrote to the ledger");
	return;
}

# Load with a crash in the middle: pgbench and the acknowledging client run,
# an uncommitted consume is held open; then $prepare is called, a batch of
# acknowledged consumes is queued, and $crash is called while psql works
# through it
sub load_and_crash
{
	my ($when, $seconds, $prepare, $crash) = @_;
	my $in_flight = open_in_flight("in-flight-$when");
	my $load = start_load(120);
	my $ack = open_session();
	my $n = ack_loop($ack, $seconds);
	cmp_ok($n, '>', 0, "$when: the acknowledging client ran before the crash");
	$prepare->();
	my $queued = $ack_seq;
	my @markers = map { send_ack($ack) } 1 .. 500;
	# crash once psql is under way through the batch
	ok(wait_marker($ack, $markers[4]), "$when: acknowledged consumes are running at the crash");
	$crash->();
	close_session($ack);
	collect_acks($ack);
	close_session($in_flight);
	my $answered = grep { $_ > $queued } map { /^ack-(\d+)$/ } keys %acked, keys %refused;
	note "$when: $answered of the 500 consumes queued at the crash were answered";
	my ($status, $out, $err) = finish_load($load, 60);
	isnt($status, 0, "$when: the crash interrupted pgbench");
	like($out, qr/^number of failed transactions: 0 /m, "$when: no transaction failed before the crash");
	note "pgbench $when:\n$out\n$err";
	return;
}

# --- crash #1: immediate shutdown under load -------------------------------

load_and_crash('immediate', 4, sub { }, sub { $node->stop('immediate'); });
$node->start;
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_counters}),
	'0', 'immediate: no live counter after the restart');
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_events WHERE idempotency_key = 'in-flight-immediate'}),
	'0', 'immediate: the uncommitted consume is not in the ledger');
check_ledger('immediate, after recovery');
# the windows are loaded again by concurrent consumers
load_burst('immediate, load after recovery', 3);
check_ledger('immediate, after reload');
check_counters('immediate, after reload');

# --- crash #2: one backend killed with SIGKILL under load -------------------

my $killed;
my $log_offset;
load_and_crash(
	'sigkill', 4,
	sub {
		for my $try (1 .. 100)
		{
			$killed = $node->safe_psql(
				$db, q{
                SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'ug_load'
                   AND state = 'active' AND query LIKE '%usage_consume%'
                 ORDER BY random() LIMIT 1});
			last if $killed ne '';
			usleep(20_000);
		}
		isnt($killed, '', 'sigkill: found a backend running a consume')
		  or die 'no backend to kill';
	},
	sub {
		$log_offset = -s $node->logfile;
		is(kill('KILL', $killed), 1, "sigkill: killed backend $killed");
		# PostgreSQL 18 names the process by its type ("client backend
		# (PID n)"), 15 to 17 say "server process (PID n)"
		$node->wait_for_log(qr/(?:server process|client backend) \(PID $killed\) was terminated by signal 9.*all server processes terminated; reinitializing.*database system is ready to accept connections/s,
			$log_offset);
	});
ok($node->poll_query_until($db, 'SELECT 1', '1'), 'sigkill: the server accepts connections after crash recovery');
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_counters}),
	'0', 'sigkill: shared memory was reinitialized (no live counter)');
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_events WHERE idempotency_key = 'in-flight-sigkill'}),
	'0', 'sigkill: the uncommitted consume is not in the ledger');
check_ledger('sigkill, after recovery');
load_burst('sigkill, load after recovery', 3);
check_ledger('sigkill, after reload');
check_counters('sigkill, after reload');

note scalar(keys %acked) . ' acknowledged, ' . scalar(keys %refused) . ' refused, '
  . (scalar(keys %sent) - scalar(keys %acked) - scalar(keys %refused)) . ' without an answer';
cmp_ok(scalar(keys %refused), '>', 0, 'the load reached hard limits (some consumes were refused)');
note "acknowledging client's errors:\n$ack_errors" if $ack_errors ne '';

$node->stop;

# the only crashes are the two caused above
# (a background worker's exit code 1 at shutdown is normal)
my @crashes = grep { /terminated by signal|terminated by exception|exited with exit code (?!1\b)|PANIC|TRAP:/ }
  split /\n/, slurp_file($node->logfile);
is_deeply([ map { /(?:server process|client backend) \(PID (\d+)\) was terminated by signal 9/ ? $1 : $_ } @crashes ],
	[$killed], 'no server process crashed except the one killed')
  or diag join("\n", @crashes);

note sprintf('runtime %.1f s', time - $started);
done_testing();

# reset_counters under load: it brings the live counters back in line with
# the ledger after rows were loaded behind usage_guard's back, without ever
# making a consumer wait for it or deadlock because of it.  It recomputes
# each live window in place, taking a key's lock only when no transaction
# has usage of that key in flight (conditionally, never queued), and retries
# busy keys until their writers end.
#   1. correctness: rows inserted with session_replication_role = replica
#      are not in the counters; reset_counters returns the number of keys,
#      keeps every live window and sets its usage to the ledger's sum, with
#      nothing reserved;
#   2. no stall: two transactions (A, B) hold uncommitted usage of t1/calls
#      while reset_counters (R) runs.  R waits (still running after 1 s,
#      NOTICE after 5 s naming one key), other keys are already recomputed,
#      50 autocommit consumes of t1..t4 complete at once, A and B consume t1
#      again without deadlocking (0.3.0: the removed window made them reload
#      it under the key lock, each waiting for the other), and R returns
#      shortly after A commits, with t1 recomputed;
#   3. no deadlock under load: pgbench transactions consuming two keys each
#      while reset_counters runs every 100 ms: no failed transaction, no
#      "deadlock detected" in the server log, counters equal to the ledger.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $started = time;
my $db = 'billing';
my $ntenants = 6;

my $node = PostgreSQL::Test::Cluster->new('reset');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard'
log_statement = none
deadlock_timeout = 1s
});
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");

# `calls`: a day and a month window, limits far above anything the test
# consumes, so that every consume is allowed and only waits can fail it.
$node->safe_psql($db, qq{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('calls', 'call');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('pro');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
        ('pro', 'calls', 'day', 1e9), ('pro', 'calls', 'month', 2e9);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status)
    SELECT 't' || i, 'pro', 'active' FROM generate_series(1, $ntenants) AS i;
});

# Every live window against the ledger's sum over [window_start, window_end):
# "N windows, M off, K in flight"
my $compare_sql = q{
    SELECT count(*) || ' windows, '
           || count(*) FILTER (WHERE c.usage <> l.sum) || ' off, '
           || count(*) FILTER (WHERE c.reserved <> 0 OR c.credit <> 0) || ' in flight'
      FROM usage_guard.usage_counters c,
           LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                     WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                       AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l};
my $detail_sql = q{
    SELECT string_agg(concat_ws(' ', c.tenant_id, c.feature_key, c.window_start, c.window_end,
                                'usage', c.usage, 'reserved', c.reserved, 'credit', c.credit,
                                'ledger', l.sum), E'\n' ORDER BY c.tenant_id, c.window_start, c.window_end)
      FROM usage_guard.usage_counters c,
           LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                     WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                       AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l};

sub compare
{
	return $node->safe_psql($db, $compare_sql);
}

# Every live window equals the ledger and nothing is in flight
sub counters_match_ledger
{
	my ($what) = @_;
	my $res = compare();
	like($res, qr/^[1-9]\d* windows, 0 off, 0 in flight$/,
		"$what: every live window's usage equals the ledger, nothing reserved")
	  or diag $node->safe_psql($db, $detail_sql);
	return;
}

sub live_windows
{
	return $node->safe_psql($db, q{
        SELECT string_agg(concat_ws(' ', tenant_id, feature_key, window_start, window_end), E'\n'
                          ORDER BY tenant_id, feature_key, window_start, window_end)
          FROM usage_guard.usage_counters});
}

# psql sessions fed one statement at a time, read back as results arrive
# (as in 002_crash_recovery.pl); a NOTICE or ERROR arrives on {err}.
sub open_session
{
	my ($appname) = @_;
	my %s = (in => '', out => '', seen => '', err => '', n => 0, timer => IPC::Run::timer(60));
	$s{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-d',
			$node->connstr($db) . " application_name=$appname"
		],
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

# Pump until the marker came back (what came before it is returned and
# moves to {seen}); undef if psql ended or $seconds passed
sub wait_marker
{
	my ($s, $marker, $seconds) = @_;
	$s->{timer}->start($seconds // 20);
	while ($s->{out} !~ /^\Q$marker\E$/m)
	{
		return undef if $s->{timer}->is_expired || !$s->{h}->pumpable;
		return undef unless eval { $s->{h}->pump; 1 };
	}
	my ($result) = $s->{out} =~ /^(.*?)^\Q$marker\E\n/ms;
	$s->{seen} .= $s->{out};
	$s->{out} = '';
	chomp $result;
	return $result;
}

# Has the marker come back yet (without waiting)?
sub marker_seen
{
	my ($s, $marker) = @_;
	eval { $s->{h}->pump_nb; 1 } if $s->{h}->pumpable;
	return $s->{out} =~ /^\Q$marker\E$/m;
}

sub close_session
{
	my ($s) = @_;
	$s->{in} .= "\\q\n" if $s->{h}->pumpable;
	$s->{timer}->start(20);
	eval { $s->{h}->finish; 1 } or eval { $s->{h}->kill_kill; 1 };
	return;
}

# One autocommit statement in its own session: (result, stderr)
sub run_sql
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql($db, $sql, stdout => \$out, stderr => \$err, on_error_stop => 1, timeout => 60);
	return ($out, $err);
}

# Rows the ledger's counting trigger does not see
sub insert_behind_back
{
	my ($values) = @_;
	$node->safe_psql($db, qq{
        SET session_replication_role = replica;
        INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at, kind)
        VALUES $values;});
	return;
}

# --- 1. correctness ---------------------------------------------------------

# load the windows of every tenant (day and month, and the next ones)
my $consumes = join("\n",
	map { "SELECT allowed FROM usage_guard.usage_consume('t$_', 'calls', $_);" } 1 .. $ntenants);
is($node->safe_psql($db, $consumes), join("\n", ('t') x $ntenants), "1: a consume for each of $ntenants tenants is allowed");
counters_match_ledger('1, after consuming');
my $keys = $node->safe_psql($db,
	q{SELECT count(DISTINCT (tenant_id, feature_key)) FROM usage_guard.usage_counters});
is($keys, $ntenants, "1: $ntenants tenant/feature keys are live");
my $windows_before = live_windows();

# rows loaded behind usage_guard's back: in the current day and month, only
# in the current month (the month's first instant, unless today is the 1st),
# a negative adjustment, and one outside every live window
insert_behind_back(q{
    ('t1', 'calls', 100, now(), 'record'),
    ('t2', 'calls', 250.5, now(), 'record'),
    ('t2', 'calls', -3, now(), 'adjustment'),
    ('t3', 'calls', 40, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 'record'),
    ('t4', 'calls', 7, now() - interval '40 days', 'record')});
like(compare(), qr/^\d+ windows, [1-9]\d* off, 0 in flight$/,
	'1: after the rows loaded with session_replication_role = replica, live counters differ from the ledger');

is($node->safe_psql($db, 'SELECT usage_guard.reset_counters()'), $keys, '1: reset_counters returns the number of keys');
is(live_windows(), $windows_before, '1: the same windows are live after reset_counters (recomputed in place, none removed)');
counters_match_ledger('1, after reset_counters');

# a decision after the reset counts the rows loaded behind its back
is( $node->safe_psql(
		$db, q{
        SELECT d.usage = (SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events e
                           WHERE e.tenant_id = 't2' AND e.feature_key = 'calls'
                             AND e.occurred_at >= d.window_start AND e.occurred_at < d.window_end)
          FROM usage_guard.usage_check('t2', 'calls', 1) d}),
	't', "1: usage_check's usage equals the ledger's sum in its window after the reset");
$node->safe_psql($db, "SELECT usage_guard.usage_consume('t$_', 'calls', 1)") for 1 .. $ntenants;
counters_match_ledger('1, consumes after reset_counters');

# --- 2. no stall behind an idle transaction ----------------------------------

# t1 and t2 get rows behind usage_guard's back again
insert_behind_back(q{('t1', 'calls', 1000, now(), 'record'), ('t2', 'calls', 1000, now(), 'record')});

# A and B: each holds uncommitted usage of t1/calls and stays idle
my %tx;
for my $name (qw(A B))
{
	my $s = $tx{$name} = open_session("ug_tx_$name");
	wait_marker($s, send_sql($s, "SET statement_timeout = '5s';"));
	wait_marker($s, send_sql($s, 'BEGIN;'));
	is(wait_marker($s, send_sql($s, q{SELECT allowed FROM usage_guard.usage_consume('t1', 'calls', 1);})),
		't', "2: session $name consumes t1/calls and stays idle in transaction");
}

# R: reset_counters in the background
my $r = open_session('ug_reset');
my $r_started = time;
my $r_marker = send_sql($r, q{SELECT 'reset ' || usage_guard.reset_counters();});
my $r_active_sql = q{
    SELECT count(*) FROM pg_stat_activity
     WHERE application_name = 'ug_reset' AND state = 'active' AND query LIKE '%reset_counters%'};
my $active = 0;
while (time < $r_started + 5 && !marker_seen($r, $r_marker))
{
	last if ($active = $node->safe_psql($db, $r_active_sql)) eq '1';
	usleep(20_000);
}
is($active, '1', '2: reset_counters is running');
usleep(1_000_000);
ok(!marker_seen($r, $r_marker), '2: reset_counters has not returned after 1 s while A and B are open');
is($node->safe_psql($db, $r_active_sql), '1', '2: ... and its query is still active in pg_stat_activity');
note 'reset_counters waits on: '
  . $node->safe_psql($db, q{SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity
                             WHERE application_name = 'ug_reset'});

# other sessions consume meanwhile, for t1 too: nothing waits for R or A
my $sql = "SET statement_timeout = '5s';\n"
  . join("\n", map { "SELECT allowed FROM usage_guard.usage_consume('t" . (1 + $_ % 4) . "', 'calls', 1);" } 0 .. 49);
my $t0 = time;
my ($out, $err) = run_sql($sql);
my $elapsed = time - $t0;
is($out, join("\n", ('t') x 50), '2: 50 consumes of t1..t4 during reset_counters are all allowed') or diag $err;
is($err, '', '2: ... without an error (no statement timeout)');
cmp_ok($elapsed, '<', 5, sprintf('2: ... and complete within 5 s (%.2f s)', $elapsed));

# R recomputed the keys without usage in flight, not t1: t2 is exact again
# (its 1000 loaded behind usage_guard's back counted), t1 still lacks its
# 1000.  (R retries a key it found busy every 10 ms: give it a moment.)
my $others_sql = q{
    SELECT count(*) FILTER (WHERE c.usage = l.sum AND c.reserved = 0) || '/' || count(*)
      FROM usage_guard.usage_counters c,
           LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                     WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                       AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l
     WHERE c.tenant_id <> 't1'};
my $others;
for (my $deadline = time + 3; time < $deadline; usleep(50_000))
{
	last if ($others = $node->safe_psql($db, $others_sql)) =~ m{^([1-9]\d*)/\1$};
}
like($others, qr{^([1-9]\d*)/\1$}, '2: meanwhile every other key was recomputed (equal to the ledger, t2 with its 1000)')
  or diag $node->safe_psql($db, $detail_sql);
is( $node->safe_psql(
		$db, q{
        SELECT string_agg((l.sum - c.usage) || ' missing, ' || c.reserved || ' reserved', ', ')
          FROM usage_guard.usage_counters c,
               LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                         WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                           AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l
         WHERE c.tenant_id = 't1' AND now() >= c.window_start AND now() < c.window_end}),
	'1000 missing, 2 reserved, 1000 missing, 2 reserved',
	"2: t1's current day and month windows are not recomputed while A and B hold usage of t1");

# A and B both consume t1 again, at the same time (both sessions pumped
# together): no deadlock, no wait
my %m = map { $_ => send_sql($tx{$_}, q{SELECT allowed FROM usage_guard.usage_consume('t1', 'calls', 1);}) } qw(A B);
$t0 = time;
my %took;
while (time < $t0 + 15 && keys %took < 2)
{
	for my $name (grep { !exists $took{$_} } qw(A B))
	{
		$took{$name} = time - $t0 if marker_seen($tx{$name}, $m{$name});
	}
	usleep(5_000);
}
for my $name (qw(A B))
{
	is(wait_marker($tx{$name}, $m{$name}, 1), 't', "2: $name consumes t1/calls again during reset_counters")
	  or diag "$name: " . $tx{$name}{err};
	cmp_ok($took{$name} // 15, '<', 1, sprintf('2: ... at once (%.2f s)', $took{$name} // 15));
}
like($tx{A}{err} . $tx{B}{err}, qr/^$/, '2: no error in A or B (no deadlock)');

# B ends; R keeps waiting for A, and says so after 5 s
is(wait_marker($tx{B}, send_sql($tx{B}, 'COMMIT;')), '', '2: B commits');
while (time < $r_started + 8 && $r->{err} !~ /NOTICE/ && !marker_seen($r, $r_marker))
{
	usleep(50_000);
	eval { $r->{h}->pump_nb; 1 };
}
like($r->{err}, qr/NOTICE:\s+reset_counters is waiting for 1 tenant\/feature keys? /,
	'2: after 5 s reset_counters says it is waiting for one key');
ok(!marker_seen($r, $r_marker), '2: reset_counters has not returned while A is open');

# A commits: R returns shortly after, with the number of keys
is(wait_marker($tx{A}, send_sql($tx{A}, 'COMMIT;')), '', '2: A commits');
$t0 = time;
my $r_res = wait_marker($r, $r_marker, 20);
my $r_wait = time - $t0;
is($r_res, "reset $ntenants", "2: reset_counters returns the number of keys ($ntenants) once A has committed");
cmp_ok($r_wait, '<', 3, sprintf('2: ... within 3 s of the commit (%.2f s)', $r_wait));
note sprintf('reset_counters ran %.1f s', time - $r_started);
unlike($r->{err}, qr/ERROR/, '2: reset_counters raised no error') or diag $r->{err};
close_session($_) for ($r, values %tx);
counters_match_ledger('2, after reset_counters');

# --- 3. no deadlock under load --------------------------------------------

my $scripts = $node->basedir . '/load';
mkdir $scripts;
append_to_file("$scripts/two_keys.sql", q{\set t1 random(1, 4)
\set t2 random(1, 4)
BEGIN;
SELECT allowed FROM usage_guard.usage_consume('t' || :t1, 'calls', 1);
SELECT allowed FROM usage_guard.usage_consume('t' || :t2, 'calls', 1);
END;
});
append_to_file("$scripts/reset.sql", q{SELECT usage_guard.reset_counters();
\sleep 100 ms
});

# a stall becomes an error rather than a hang
sub start_pgbench
{
	my ($name, @args) = @_;
	my $out = $node->basedir . "/pgbench_$name";
	local $ENV{PGAPPNAME} = "ug_$name";
	local $ENV{PGOPTIONS} = '-c statement_timeout=5s';
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', @args, '-h', $node->host, '-p', $node->port, $db ],
		'<', '/dev/null', '>', "$out.stdout", '2>', "$out.stderr");
	return { h => $h, out => $out, name => $name };
}

sub finish_pgbench
{
	my ($p, $limit) = @_;
	my $deadline = time + $limit;
	usleep(50_000) while ($p->{h}->pumpable && time < $deadline);
	if (time >= $deadline)
	{
		diag("pgbench $p->{name} did not end in time: killed");
		$p->{h}->kill_kill;
	}
	$p->{h}->finish;
	return ($p->{h}->result(0), slurp_file("$p->{out}.stdout") . slurp_file("$p->{out}.stderr"));
}

my $log_offset = -s $node->logfile;
my $ledger_before = $node->safe_psql($db, 'SELECT count(*) FROM usage_guard.usage_events');
my $load = start_pgbench('load', '-c', '8', '-j', '2', '-T', '5', '--failures-detailed', '-f', "$scripts/two_keys.sql");
my $resets = start_pgbench('resets', '-c', '1', '-T', '5', '-f', "$scripts/reset.sql");
my ($load_status, $load_out) = finish_pgbench($load, 30);
my ($resets_status, $resets_out) = finish_pgbench($resets, 30);
note "pgbench load:\n$load_out";
note "pgbench resets:\n$resets_out";

is($load_status, 0, '3: pgbench (two keys per transaction) exits 0');
my ($processed) = $load_out =~ /number of transactions actually processed: (\d+)/;
cmp_ok($processed // 0, '>', 0, '3: pgbench processed transactions');
like($load_out, qr/number of failed transactions: 0 \(/, '3: no failed transaction');
like($load_out, qr/number of deadlock failures: 0 \(/, '3: no deadlock failure');
unlike($load_out, qr/deadlock detected|ERROR/, '3: pgbench reported no error');
is($resets_status, 0, '3: the reset_counters loop exits 0');
my ($nresets) = $resets_out =~ /number of transactions actually processed: (\d+)/;
cmp_ok($nresets // 0, '>', 0, '3: reset_counters ran during the load (' . ($nresets // 0) . ' calls)');
like($resets_out, qr/number of failed transactions: 0 \(/, '3: no reset_counters call failed');

my $log = substr(slurp_file($node->logfile), $log_offset);
my @deadlocks = $log =~ /^.*deadlock detected.*$/mg;
is(scalar(@deadlocks), 0, '3: no "deadlock detected" in the server log during the load')
  or diag join("\n", @deadlocks[0 .. ($#deadlocks < 4 ? $#deadlocks : 4)]);
is( $node->safe_psql($db, 'SELECT count(*) FROM usage_guard.usage_events') - $ledger_before,
	2 * ($processed // 0),
	'3: two ledger rows per processed transaction');
counters_match_ledger('3, after the load');

# one final reset finds nothing to change
my $before = $node->safe_psql($db, q{SELECT string_agg(concat_ws(' ', tenant_id, window_start, usage), E'\n'
                                       ORDER BY tenant_id, window_start, window_end) FROM usage_guard.usage_counters});
is($node->safe_psql($db, 'SELECT usage_guard.reset_counters()'), $ntenants, '3: a final reset_counters returns the number of keys');
is( $node->safe_psql($db, q{SELECT string_agg(concat_ws(' ', tenant_id, window_start, usage), E'\n'
                                ORDER BY tenant_id, window_start, window_end) FROM usage_guard.usage_counters}),
	$before, '3: ... and changes nothing');

$node->stop;

my @crashes = grep { /terminated by signal|terminated by exception|PANIC|TRAP:/ }
  split /\n/, slurp_file($node->logfile);
is_deeply(\@crashes, [], 'no server process crashed') or diag join("\n", @crashes);

note sprintf('runtime %.1f s', time - $started);
done_testing();

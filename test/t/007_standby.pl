# A streaming hot standby and its promotion.  Shared memory is not updated
# by WAL replay, so a standby must not decide from live counters: on a
# standby usage_check answers from the replayed ledger, and usage_consume,
# usage_enforce, usage_record and usage_record_batch raise SQLSTATE 25006 (read-only) before
# doing anything, whatever the amount; after promotion, windows are loaded
# fresh from the ledger, so the promoted node keeps the hard limit against
# its own ledger.
#   1. primary consumes 50: the standby's usage_check says 50 (called several
#      times: 0.3.0 loaded the window into the standby's shared memory);
#   2. primary consumes 40 more: the standby's usage_check says 90, its
#      replayed ledger's sum (0.3.0 said 50, the window it had loaded);
#   3. consume, enforce and record on the standby fail with 25006 and leave
#      the ledger and the live counters as they were (none);
#   4. a bounded load on the primary (the total stays under the limit) while
#      the standby checks; the primary is stopped in immediate mode, the
#      standby promoted, and consumes on it run until refused: its ledger
#      stays within the hard limit of 100, reaches it exactly, and
#      usage_check and the live counters equal its ledger.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $started = time;
my $db = 'billing';

# Every call passes this instant (and the ledger sums use its windows), so
# that the day window cannot roll over at UTC midnight while the test runs.
my $at = '2026-03-10 12:00:00+00';
my $day_start = '2026-03-10 00:00:00+00';
my $day_end = '2026-03-11 00:00:00+00';
my $limit = 100;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard'
log_statement = none
});
$primary->start;
$primary->safe_psql('postgres', "CREATE DATABASE $db");

# `calls`: 100 per day (the deciding window) and 1000 per month.
$primary->safe_psql($db, q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('calls', 'call');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('pro');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
        ('pro', 'calls', 'day', 100), ('pro', 'calls', 'month', 1000);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status)
    VALUES ('t1', 'pro', 'active');
});

$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard'
hot_standby = on
log_statement = none
});
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql($db, 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

# The ledger's sum (and row count) for t1/calls in the day window of $at
my $ledger_sum_sql = qq{
    SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events
     WHERE tenant_id = 't1' AND feature_key = 'calls'
       AND occurred_at >= '$day_start' AND occurred_at < '$day_end'};
my $ledger_state_sql = qq{
    SELECT count(*) || ' rows, sum ' || coalesce(sum(amount), 0) FROM usage_guard.usage_events
     WHERE tenant_id = 't1' AND feature_key = 'calls'};

sub ledger_sum
{
	my ($node) = @_;
	return $node->safe_psql($db, $ledger_sum_sql) + 0;
}

# usage_check's usage, window and limit for one more unit at $at
sub check
{
	my ($node) = @_;
	my $res = $node->safe_psql($db, qq{
        SELECT usage || '|' || period || '|' || limit_value || '|' || window_start || '|' || window_end
          FROM usage_guard.usage_check('t1', 'calls', 1, '$at')});
	my ($usage, $period, $lim, $ws, $we) = split /\|/, $res;
	return { usage => $usage + 0, period => $period, limit => $lim, ws => $ws, we => $we, raw => $res };
}

sub consume_n
{
	my ($node, $n) = @_;
	my $sql = join("\n",
		map { "SELECT allowed FROM usage_guard.usage_consume('t1', 'calls', 1, at => '$at');" } 1 .. $n);
	return split /\n/, $node->safe_psql($db, $sql);
}

# --- 1. 50 on the primary ------------------------------------------------

my @r = consume_n($primary, 50);
is(scalar(grep { $_ eq 't' } @r), 50, 'primary: 50 consumes allowed');
$primary->wait_for_catchup($standby);
is(ledger_sum($standby), 50, 'standby: the replayed ledger holds 50');

# several sessions: in 0.3.0 the first of them loaded the window into the
# standby's shared memory
for my $i (1 .. 3)
{
	my $c = check($standby);
	is($c->{usage}, 50, "standby: usage_check reports 50 (call $i)") or diag $c->{raw};
}
my $c = check($standby);
is("$c->{period} $c->{limit}", 'day 100', 'standby: usage_check reports the day window and its limit of 100');
is($standby->safe_psql($db, qq{SELECT window_start = '$day_start' AND window_end = '$day_end'
                                 FROM usage_guard.usage_check('t1', 'calls', 1, '$at')}),
	't', 'standby: usage_check reports the UTC day of the test instant');

# --- 2. 40 more on the primary -------------------------------------------

@r = consume_n($primary, 40);
is(scalar(grep { $_ eq 't' } @r), 40, 'primary: 40 more consumes allowed');
is(check($primary)->{usage}, 90, 'primary: usage_check reports 90');
$primary->wait_for_catchup($standby);
is(ledger_sum($standby), 90, 'standby: the replayed ledger holds 90');
for my $i (1 .. 2)
{
	$c = check($standby);
	is($c->{usage}, ledger_sum($standby),
		"standby: usage_check equals the replayed ledger after more usage (call $i)") or diag $c->{raw};
}

# --- 3. writes on the standby are refused as read-only -------------------

my $ledger_before = $standby->safe_psql($db, $ledger_state_sql);
my @writes = (
	[ 'usage_consume of 1', qq{SELECT * FROM usage_guard.usage_consume('t1', 'calls', 1, at => '$at')} ],
	[ 'usage_consume of 1 with an idempotency key',
		qq{SELECT * FROM usage_guard.usage_consume('t1', 'calls', 1, idempotency_key => 'sb-1', at => '$at')} ],
	[ 'usage_consume over the hard limit', qq{SELECT * FROM usage_guard.usage_consume('t1', 'calls', 1000, at => '$at')} ],
	[ 'usage_enforce of 1', qq{SELECT * FROM usage_guard.usage_enforce('t1', 'calls', 1, at => '$at')} ],
	[ 'usage_enforce over the hard limit', qq{SELECT * FROM usage_guard.usage_enforce('t1', 'calls', 1000, at => '$at')} ],
	[ 'usage_record', qq{SELECT usage_guard.usage_record('t1', 'calls', 1, '$at')} ],
	[ 'usage_record with an idempotency key',
		qq{SELECT usage_guard.usage_record('t1', 'calls', 1, '$at', idempotency_key => 'sb-2')} ],
	[ 'usage_record_batch',
		qq{SELECT usage_guard.usage_record_batch(ARRAY['t1', 't1'], ARRAY['calls', 'calls'], ARRAY[1, 1]::numeric[], ARRAY['$at', '$at']::timestamptz[])} ]);
for my $w (@writes)
{
	my ($name, $sql) = @$w;
	my ($out, $err) = ('', '');
	my $ret = $standby->psql($db, "\\set VERBOSITY verbose\n$sql;", stdout => \$out, stderr => \$err);
	isnt($ret, 0, "standby: $name fails");
	like($err, qr/^(?:psql:[^\n]*)?ERROR:  25006: /m, "standby: $name raises SQLSTATE 25006 (read_only_sql_transaction)")
	  or diag "stdout: $out\nstderr: $err";
}
is($standby->safe_psql($db, $ledger_state_sql), $ledger_before, 'standby: the ledger is unchanged by the refused writes');
is($primary->safe_psql($db, $ledger_state_sql), $ledger_before, 'primary: nothing was written while the standby was refusing');
is($standby->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_counters}),
	'0', 'standby: no live counter was loaded in its shared memory');
is(check($standby)->{usage}, 90, 'standby: usage_check still reports 90 after the refused writes');

# --- 4. load on the primary, crash, promotion -----------------------------

# At most 8 more units (98 < 100), one per transaction, about 5 a second: the
# primary does not reach the limit; the promoted standby must refuse.
my $load_units = 8;
my $script = $primary->basedir . '/consume.sql';
append_to_file($script, qq{SELECT allowed FROM usage_guard.usage_consume('t1', 'calls', 1, at => '$at');
\\sleep 200 ms
});
my $load_log = $primary->basedir . '/pgbench';
my $load = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '1', '-t', $load_units, '-f', $script,
		'-h', $primary->host, '-p', $primary->port, $db
	],
	'<', '/dev/null', '>', "$load_log.stdout", '2>', "$load_log.stderr");

# the standby checks while the load runs (in 0.3.0 it said 50 throughout)
my @seen;
my $deadline = time + 1.0;
while (time < $deadline)
{
	push @seen, check($standby)->{usage};
}
note 'standby usage_check during the load: ' . join(' ', @seen);
cmp_ok(scalar(@seen), '>', 0, 'standby: usage_check ran during the load');
my @out_of_range = grep { $_ < 90 || $_ > 90 + $load_units } @seen;
is(scalar(@out_of_range), 0, 'standby: every usage_check during the load is between 90 and ' . (90 + $load_units))
  or diag "out of range: @out_of_range";
is(join(' ', @seen), join(' ', sort { $a <=> $b } @seen), 'standby: usage_check never went backwards during the load');

# the primary goes away, likely while the load is still running
$primary->stop('immediate');
my $load_deadline = time + 30;
usleep(50_000) while ($load->pumpable && time < $load_deadline);
if ($load->pumpable)
{
	diag('pgbench did not end in time: killed');
	$load->kill_kill;
}
$load->finish;
note "pgbench (interrupted by the primary's crash or finished):\n"
  . slurp_file("$load_log.stdout") . slurp_file("$load_log.stderr");

$standby->promote;
is($standby->safe_psql($db, 'SELECT pg_is_in_recovery()'), 'f', 'the standby was promoted');

# what the promoted node holds: 90 plus what of the load was replayed
# (acknowledged rows not yet replayed are lost, replication is asynchronous)
my $promoted_sum = ledger_sum($standby);
note "promoted node's ledger at promotion: $promoted_sum";
cmp_ok($promoted_sum, '>=', 90, 'promoted: the ledger holds at least the 90 replayed before the load');
cmp_ok($promoted_sum, '<', $limit, 'promoted: the ledger is under the hard limit at promotion');
is(check($standby)->{usage}, $promoted_sum, 'promoted: usage_check equals the ledger before any consume');

# consume one unit at a time until refused, each its own transaction
@r = consume_n($standby, 200);
my $allowed = grep { $_ eq 't' } @r;
my $refused = grep { $_ eq 'f' } @r;
is($allowed + $refused, 200, 'promoted: 200 consumes answered');
my $final = ledger_sum($standby);
note "promoted: $allowed allowed, $refused refused, ledger sum $final";
cmp_ok($final, '<=', $limit, "promoted: the ledger's day window is within the hard limit of $limit");
cmp_ok($refused, '>', 0, 'promoted: consumes were refused at the hard limit');
is($allowed, $limit - $promoted_sum, 'promoted: exactly the units left under the limit were allowed');
is($final, $promoted_sum + $allowed, 'promoted: every allowed consume is in the ledger');

$c = check($standby);
is($c->{usage}, $final, 'promoted: usage_check equals the ledger after the consumes') or diag $c->{raw};
# usage_allowed reads the same state (and the shared policy cache, filled
# only after promotion): no unit left at the limit, all of them at zero
is($standby->safe_psql($db, qq{
    SELECT usage_guard.usage_allowed('t1', 'calls', 1, '$at') || '|'
           || usage_guard.usage_allowed('t1', 'calls', 0, '$at')}),
	'false|true', 'promoted: usage_allowed refuses one more unit at the limit');

# the live counters of the promoted node: the day window is live, and every
# window's usage equals the ledger's sum in it, nothing in flight
is( $standby->safe_psql(
		$db, qq{
        SELECT usage || ' usage, ' || reserved || ' reserved, ' || credit || ' credit'
          FROM usage_guard.usage_counters
         WHERE tenant_id = 't1' AND feature_key = 'calls'
           AND window_start = '$day_start' AND window_end = '$day_end'}),
	"$final usage, 0 reserved, 0 credit",
	'promoted: the live counter of the day window equals the ledger, nothing reserved');
my $mismatches = $standby->safe_psql(
	$db, q{
    SELECT count(*) || ' counters, '
           || count(*) FILTER (WHERE c.usage <> l.sum OR c.reserved <> 0 OR c.credit <> 0) || ' mismatches'
      FROM usage_guard.usage_counters c,
           LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                     WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                       AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l});
like($mismatches, qr/^[1-9]\d* counters, 0 mismatches$/, 'promoted: every live counter equals the ledger');
if ($mismatches !~ / 0 mismatches$/)
{
	diag $standby->safe_psql($db, q{
        SELECT string_agg(concat_ws(' ', c.window_start, c.window_end, 'usage', c.usage,
                                    'reserved', c.reserved, 'credit', c.credit, 'ledger', l.sum), E'\n')
          FROM usage_guard.usage_counters c,
               LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                         WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                           AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l});
}

# --- 5. clean up ------------------------------------------------------------

$standby->stop;

# no server process crashed (the primary's immediate stop is not a crash)
for my $node ($primary, $standby)
{
	my @crashes = grep { /terminated by signal|terminated by exception|PANIC|TRAP:/ }
	  split /\n/, slurp_file($node->logfile);
	is_deeply(\@crashes, [], $node->name . ': no server process crashed') or diag join("\n", @crashes);
}

note sprintf('runtime %.1f s', time - $started);
done_testing();

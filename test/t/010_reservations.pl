# Gateway reservations across crashes: an admitted request's estimate is in
# the ledger (kind 'reserve') from admit on, so it survives a crash, and the
# live counters rebuilt from the ledger hold it until the reservation is
# settled, cancelled or expired.
#   1. immediate shutdown: keys -> users -> team -> tenant, cost budgets on
#      a rolling hour (keys), a day (users) and a month (tenant), token
#      quotas on a month (team, tenant).  Before the crash: open reservations (one
#      key's budget full with two of them), settled ones (below and above
#      the estimate), a cancelled one, and, in flight at the crash, an
#      uncommitted admit and an uncommitted settle of an open reservation.
#      After the restart: shared memory was reinitialized; the full budget
#      is still full (the first admit on that key is refused at the key's
#      rolling budget with the two estimates as its usage, and another
#      key's budget still counts its open estimate); the uncommitted admit
#      left nothing, the uncommitted settle left its reservation open;
#      every live counter equals the ledger (usage_counters against the sum
#      of usage_events over subject_path, in each window it lists), nothing
#      in flight.  Then a settle from a new connection gives the difference
#      back (the key fits exactly one more request of that difference, not
#      two), counters == ledger; expire_reservations releases every other
#      open reservation, after which the ledger of every subject equals the
#      real tokens and cost of its settled reservations, counters == ledger.
#      The same counter check after a second immediate restart.
#   2. SIGKILL: a backend admits two requests (committed) and is killed
#      while settling one of them (uncommitted); after the crash restart
#      both are open, still held, and a different connection settles them
#      (a repeat returns settled = f); counters == ledger.
# No server process crashes other than the backend killed in 2.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $started = time;
my $db = 'reservations';

my $node = PostgreSQL::Test::Cluster->new('reservations');
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

sub sql { return $node->safe_psql($db, $_[0]); }

# Every admit uses now() (a rolling window is shown against the wall
# clock): do not let the UTC day (or month) turn while this test runs
my $to_midnight = sql(q{SELECT extract(epoch FROM date_trunc('day', now(), 'UTC') + interval '24 hours' - now())});
if ($to_midnight < 150)
{
	note "waiting ${to_midnight} s for the UTC day to turn";
	usleep(int(($to_midnight + 1) * 1_000_000));
}

# Tenant acme (plan rv): team-a -> u-a -> k-a1, k-a2; team-a -> u-b -> k-b1,
# k-kill.  Model m1: $1 in, $4 out per 1M tokens: 100,000 + 100,000 tokens
# are $0.50, 50,000 + 50,000 are $0.25, 200,000 + 100,000 are $0.60.
# Budgets: each key $1 per rolling hour (two estimates of $0.50), each user
# $5 a day, the tenant $1000 a month (plan) and 10,000,000 tokens a month;
# the team 10,000,000 tokens a month.
sql(q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token'), ('cost_usd', 'USD');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('rv');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
    VALUES ('rv', 'cost_usd', 'month', 1000), ('rv', 'tokens', 'month', 10000000);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('acme', 'rv');
    INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES
        ('acme', 'team-a', 'team', NULL),
        ('acme', 'u-a', 'user', 'team-a'), ('acme', 'u-b', 'user', 'team-a'),
        ('acme', 'k-a1', 'api_key', 'u-a'), ('acme', 'k-a2', 'api_key', 'u-a'),
        ('acme', 'k-b1', 'api_key', 'u-b'), ('acme', 'k-kill', 'api_key', 'u-b');
    INSERT INTO usage_guard.models (model, provider) VALUES ('m1', 'acme');
    INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million)
    VALUES ('m1', '2025-01-01 00:00+00', 1, 4);
    INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, rolling, hard_limit)
    VALUES ('rv', 'api_key', 'quota', 'cost_usd', '1 hour', 1);
    INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit)
    VALUES ('rv', 'user', 'quota', 'cost_usd', 'day', 5),
           ('rv', 'team', 'quota', 'tokens', 'month', 10000000);
});

my $admit_cols = q{allowed, reservation_id, level, subject_id, feature_key, usage};

# admit: (allowed, reservation id, deciding level, subject, feature, usage)
sub admit
{
	my ($key, $in, $out, $conn) = @_;
	my $sql = "SELECT $admit_cols FROM usage_guard.admit('acme', '$key', 'm1', $in, $out)";
	return split /\|/, ($conn ? $conn->query_safe($sql) : sql($sql)), -1;
}

sub settle
{
	my ($id, $in, $out) = @_;
	return sql("SELECT settled, cost, cost_delta FROM usage_guard.settle('acme', '$id', $in, $out)");
}

sub state_of
{
	my ($id) = @_;
	return sql("SELECT state FROM usage_guard.reservations WHERE tenant_id = 'acme' AND reservation_id = '$id'");
}

# The live counters of the windows in force now, as "subject feature
# length", and how many of all live counters (the next windows too) differ
# from the ledger's sum for their subject (usage_events whose subject_path
# holds it; every row of the tenant for the tenant level) in their window,
# and how many have anything in flight.  A rolling window is listed as the
# last hour before now.
my @current_windows = (
	'(tenant) cost_usd month', '(tenant) tokens month',
	'k-a1 cost_usd hour', 'k-a2 cost_usd hour', 'k-b1 cost_usd hour', 'k-kill cost_usd hour',
	'team-a tokens month', 'u-a cost_usd day', 'u-b cost_usd day');

sub check_counters
{
	my ($when) = @_;
	my $res = sql(q{
        WITH c AS (
            SELECT c.*, (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                          WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                            AND (c.subject_id IS NULL OR c.subject_id = ANY (e.subject_path))
                            AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS ledger,
                   CASE WHEN c.window_end - c.window_start = interval '1 hour' THEN 'hour'
                        WHEN c.window_end - c.window_start = interval '1 day' THEN 'day'
                        WHEN c.window_end - c.window_start >= interval '28 days' THEN 'month'
                        ELSE (c.window_end - c.window_start)::text END AS length
              FROM usage_guard.usage_counters c WHERE c.tenant_id = 'acme')
        SELECT (SELECT string_agg(coalesce(subject_id, '(tenant)') || ' ' || feature_key || ' ' || length, ',' ORDER BY 1)
                  FROM c WHERE window_start <= now() AND window_end >= now())
               || '|' || (SELECT count(*) FROM c WHERE usage <> ledger)
               || '|' || (SELECT count(*) FROM c WHERE reserved <> 0 OR credit <> 0)});
	my ($list, $off, $in_flight) = split /\|/, $res, -1;
	is_deeply([ sort split /,/, $list ], [ sort @current_windows ],
		"$when: a live counter for every window in force (keys' rolling hours, users' days, team's and tenant's months)");
	is("$off off, $in_flight in flight", '0 off, 0 in flight',
		"$when: every live counter equals the ledger's sum for its subject and window, nothing in flight")
	  or diag sql(q{SELECT * FROM usage_guard.usage_counters WHERE tenant_id = 'acme' ORDER BY subject_id, feature_key, window_start});
	return;
}

# Load every counter of every key's chain without changing anything
sub touch_counters
{
	sql(join("\n", map { my $k = $_; map { "SELECT allowed FROM usage_guard.request_check('acme', '$k', '$_', 0);" } qw(tokens cost_usd) }
		  qw(k-a1 k-a2 k-b1 k-kill)));
	return;
}

# ===========================================================================
# 1. Reservations across an immediate shutdown
# ===========================================================================

my (%rid, @r);
# k-a1: two open reservations fill its rolling hour ($1.00); a third is refused
@r = admit('k-a1', 100000, 100000);
is("$r[0]", 't', 'k-a1: first request admitted ($0.50)');
$rid{A1} = $r[1];
@r = admit('k-a1', 100000, 100000);
is("$r[0]", 't', 'k-a1: second request admitted ($1.00 of $1.00)');
$rid{A2} = $r[1];
@r = admit('k-a1', 1, 1);
is("$r[0]|$r[2]|$r[3]|$r[4]|$r[5]", 'f|api_key|k-a1|cost_usd|1', 'k-a1: a third request is refused by its rolling budget, full');

# k-a2: one settled below its estimate ($0.25), one open ($0.50)
@r = admit('k-a2', 100000, 100000);
$rid{B1} = $r[1];
is("$r[0]", 't', 'k-a2: a request admitted ($0.50)');
is(settle($rid{B1}, 50000, 50000), 't|0.25|-0.25', 'k-a2: a request settled at $0.25 (estimate $0.50)');
@r = admit('k-a2', 100000, 100000);
$rid{B2} = $r[1];
is("$r[0]|$r[5]", 't|0.25', 'k-a2: a second request admitted and left open');

# k-b1: one settled above its estimate ($0.60), one cancelled, one open
@r = admit('k-b1', 100000, 100000);
$rid{C1} = $r[1];
is("$r[0]", 't', 'k-b1: a request admitted ($0.50)');
is(settle($rid{C1}, 200000, 100000), 't|0.6|0.1', 'k-b1: a request settled at $0.60 (estimate $0.50)');
@r = admit('k-b1', 50000, 50000);
$rid{C2} = $r[1];
is("$r[0]|" . sql("SELECT usage_guard.cancel('acme', '$rid{C2}')"), 't|t', 'k-b1: a request admitted ($0.25) and cancelled');
@r = admit('k-b1', 50000, 50000);
$rid{C3} = $r[1];
is("$r[0]|$r[5]", 't|0.6', 'k-b1: a request admitted and left open ($0.25; $0.60 used before it)');

touch_counters();
check_counters('before the crash');

my %ledger_before = map { my @f = split /\|/; ("$f[0] $f[1]" => $f[2]) } split /\n/, sql(q{
    SELECT s, feature_key, sum(amount) FROM usage_guard.usage_events, unnest(subject_path) s
     WHERE tenant_id = 'acme' GROUP BY 1, 2});
cmp_ok($ledger_before{'k-a1 cost_usd'}, '==', 1, "before the crash: k-a1's ledger holds its two estimates (\$1.00)");

# In flight at the crash: an uncommitted admit (k-b1) and an uncommitted
# settle of A1 (which holds A1's row lock)
my $in_admit = $node->background_psql($db, on_error_stop => 1);
$in_admit->query_safe('BEGIN');
is( $in_admit->query_safe(
		q{SELECT allowed FROM usage_guard.admit('acme', 'k-b1', 'm1', 10000, 10000, idempotency_key => 'in-flight')}),
	't', 'an admit is allowed and uncommitted when the crash comes');
my $in_settle = $node->background_psql($db, on_error_stop => 1);
$in_settle->query_safe('BEGIN');
is( $in_settle->query_safe(qq{SELECT settled FROM usage_guard.settle('acme', '$rid{A1}', 1, 1)}),
	't', "a settle of A1 is uncommitted when the crash comes");

$node->stop('immediate');
eval { $in_admit->quit; 1 };
eval { $in_settle->quit; 1 };
$node->start;

is(sql(q{SELECT count(*) FROM usage_guard.usage_counters}), '0', 'after the restart: no live counter (shared memory is new)');

# The first request after the restart: k-a1's budget is still full (its two
# open reservations), the rebuilt counter says so
@r = admit('k-a1', 1, 1);
is("$r[0]|$r[2]|$r[3]|$r[4]|$r[5]", 'f|api_key|k-a1|cost_usd|1',
	"after the restart: k-a1's budget is still full (the first admit is refused, usage \$1.00 = its two open estimates)");
# k-a2: $0.25 settled + $0.50 open: a request of $0.50 does not fit
@r = admit('k-a2', 100000, 100000);
is("$r[0]|$r[2]|$r[3]|$r[5]", 'f|api_key|k-a2|0.75', "after the restart: k-a2's open estimate still counts (\$0.75 used)");

is(sql(q{SELECT count(*) FROM usage_guard.reservations WHERE idempotency_key = 'in-flight'})
	  . '|' . sql(q{SELECT count(*) FROM usage_guard.usage_events WHERE attributes ? 'reservation_id'
                    AND NOT EXISTS (SELECT FROM usage_guard.reservations r
                                     WHERE r.reservation_id = (attributes->>'reservation_id')::uuid)}),
	'0|0', 'after the restart: the uncommitted admit left no reservation and no ledger row');
is(join(' ', map { state_of($rid{$_}) } qw(A1 A2 B1 B2 C1 C2 C3)),
	'open open settled open settled cancelled open',
	'after the restart: the uncommitted settle left A1 open; every other reservation as committed');
is(sql(q{SELECT count(*) FROM usage_guard.usage_events WHERE kind = 'settle' AND attributes->>'reservation_id' = }
	  . "'$rid{A1}'"), '0', "after the restart: no settle row of A1");

my %ledger_after = map { my @f = split /\|/; ("$f[0] $f[1]" => $f[2]) } split /\n/, sql(q{
    SELECT s, feature_key, sum(amount) FROM usage_guard.usage_events, unnest(subject_path) s
     WHERE tenant_id = 'acme' GROUP BY 1, 2});
is_deeply(\%ledger_after, \%ledger_before, 'after the restart: the ledger is what was committed before the crash');

touch_counters();
check_counters('after the restart');

# Settle A1 (another connection than the one that admitted it) at $0.25:
# $0.25 goes back, k-a1 has exactly $0.25 of room: one request of $0.25
# fits, the next does not
is(settle($rid{A1}, 50000, 50000), 't|0.25|-0.25', 'after the restart: A1 settles at $0.25 (estimate $0.50)');
check_counters('after the settle');
@r = admit('k-a1', 50000, 50000);
is("$r[0]|$r[5]", 't|0.75', "after the settle: k-a1 admits a \$0.25 request (usage \$0.75 before it)");
$rid{A3} = $r[1];
@r = admit('k-a1', 50000, 50000);
is("$r[0]|$r[2]|$r[3]|$r[5]", 'f|api_key|k-a1|1', 'after the settle: the next $0.25 request is refused (k-a1 full again)');
check_counters('after the admits');

# Expire the rest: A2, B2, C3 and A3 (a time past every ttl)
is(sql(q{SELECT usage_guard.expire_reservations(now() + interval '1 day')}), '4',
	'expire_reservations releases the 4 open reservations');
is(sql(q{SELECT count(*) FROM usage_guard.reservations WHERE tenant_id = 'acme' AND state = 'open'}), '0',
	'no reservation is open');
check_counters('after the expiry');

# The ledger of every subject is now the real usage of its settled
# reservations (A1, B1, C1), tokens and cost
my $real = sql(q{
    WITH s AS (SELECT DISTINCT unnest(subject_path) AS s FROM usage_guard.reservations WHERE tenant_id = 'acme')
    SELECT count(*) || ' subjects, '
           || count(*) FILTER (WHERE l.cost IS DISTINCT FROM r.cost OR l.tokens IS DISTINCT FROM r.tokens) || ' off'
      FROM s,
           LATERAL (SELECT sum(amount) FILTER (WHERE feature_key = 'cost_usd') AS cost,
                           sum(amount) FILTER (WHERE feature_key = 'tokens') AS tokens
                      FROM usage_guard.usage_events e WHERE e.tenant_id = 'acme' AND s.s = ANY (e.subject_path)) l,
           LATERAL (SELECT coalesce(sum(cost), 0) AS cost, coalesce(sum(input_tokens + output_tokens), 0) AS tokens
                      FROM usage_guard.reservations x
                     WHERE x.tenant_id = 'acme' AND x.state = 'settled' AND s.s = ANY (x.subject_path)) r});
is($real, '6 subjects, 0 off', "after the expiry: every subject's ledger equals its settled reservations' real tokens and cost");
is(sql(q{SELECT sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'acme' AND feature_key = 'cost_usd'}),
	'1.10', 'the tenant was charged $1.10 in all: A1 $0.25 + B1 $0.25 + C1 $0.60');
@r = admit('k-a1', 100000, 100000);
is("$r[0]|$r[5]", 't|0.25', "after the expiry: k-a1 has room again (only A1's \$0.25 used)");
sql("SELECT usage_guard.cancel('acme', '$r[1]')");

$node->stop('immediate');
$node->start;
touch_counters();
check_counters('after a second immediate restart');

# ===========================================================================
# 2. A backend killed with SIGKILL between admit and settle
# ===========================================================================

my $client = $node->background_psql($db, on_error_stop => 1);
my $client_pid = $client->query_safe('SELECT pg_backend_pid()');
like($client_pid, qr/^\d+$/, "the client's backend pid: $client_pid");
@r = admit('k-kill', 100000, 100000, $client);
is("$r[0]", 't', 'k-kill: the client admits a request ($0.50, committed)');
$rid{K1} = $r[1];
@r = admit('k-kill', 100000, 100000, $client);
is("$r[0]", 't', 'k-kill: and a second ($1.00 of $1.00, committed)');
$rid{K2} = $r[1];
$client->query_safe('BEGIN');
is($client->query_safe(qq{SELECT settled FROM usage_guard.settle('acme', '$rid{K1}', 1, 1)}),
	't', 'the client settles K1 in an open transaction');

my $log_offset = -s $node->logfile;
is(kill('KILL', $client_pid), 1, "killed the client's backend $client_pid with SIGKILL");
$node->wait_for_log(
	qr/(?:server process|client backend) \(PID $client_pid\) was terminated by signal 9.*all server processes terminated; reinitializing.*database system is ready to accept connections/s,
	$log_offset);
ok($node->poll_query_until($db, 'SELECT 1', '1'), 'the server accepts connections after crash recovery');
eval { $client->quit; 1 };

is(sql(q{SELECT count(*) FROM usage_guard.usage_counters}), '0', 'after recovery: no live counter');
is(join(' ', map { state_of($rid{$_}) } qw(K1 K2)), 'open open', 'after recovery: both reservations of the killed client are open');
@r = admit('k-kill', 1, 1);
is("$r[0]|$r[2]|$r[3]|$r[5]", 'f|api_key|k-kill|1', "after recovery: k-kill's budget is full of the two estimates");
touch_counters();
check_counters('after recovery');

# Another connection settles both
is(settle($rid{K1}, 50000, 50000), 't|0.25|-0.25', 'after recovery: another connection settles K1 at $0.25');
is(settle($rid{K2}, 100000, 100000), 't|0.5|0.0', 'after recovery: and K2 at its estimate');
is(settle($rid{K1}, 50000, 50000), 'f|0.25|-0.25', 'a repeated settle of K1 returns settled = f');
check_counters('after the settles');
is( sql(qq{SELECT sum(amount) FROM usage_guard.usage_events
          WHERE tenant_id = 'acme' AND feature_key = 'cost_usd' AND 'k-kill' = ANY (subject_path)}),
	'0.75', "k-kill's ledger: \$0.75, the real cost of K1 and K2");

$node->stop;

# the only crash is the one caused above
my @crashes = grep { /terminated by signal|terminated by exception|PANIC|TRAP:/ }
  split /\n/, slurp_file($node->logfile);
is_deeply([ map { /(?:server process|client backend) \(PID (\d+)\) was terminated by signal 9/ ? $1 : $_ } @crashes ],
	[$client_pid], 'no server process crashed except the one killed')
  or diag join("\n", @crashes);

note sprintf('runtime %.1f s', time - $started);
done_testing();

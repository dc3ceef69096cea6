# Gateway limits across crashes: concurrency leases are durable rows freed
# by their TTL only, and per-level quotas are rebuilt from the ledger.
#   1. leases after a crash: k-lease may hold 3 leases at once.  A session
#      takes 3 with a TTL of 10 s, commits and stays connected; a 4th
#      acquire is refused (api_key concurrency, retry_after = when the first
#      of them expires).  That session's backend is killed with SIGKILL (the
#      postmaster reinitializes shared memory).  Right after recovery the 3
#      leases are still live rows and a 4th acquire is still refused; polled
#      acquires are then refused exactly while all 3 are live and allowed
#      from the moment the first expires, and once all 3 expired, 3 new ones
#      fit again (and a 4th does not), none of the old ones ever released.
#   2. quotas after an immediate shutdown: keys -> users -> teams -> tenant
#      with day quotas at every level (attached to the plan, to a role and to
#      single subjects; one key directly under the tenant).  pgbench consumes
#      on every key (some transactions of two consumes rolled back) while a
#      session holds an allowed, uncommitted consume; the server is stopped
#      in immediate mode under that load and started again.  Then: no
#      subject's ledger sum in today's (UTC) window exceeds its hard limit,
#      the uncommitted consume is not in the ledger, request_check reports
#      for every subject (key, user, team) its own day window with a usage
#      equal to the ledger's sum for that subject (sum(amount) of the rows
#      whose subject_path holds it), the tenant's usage_check equals the
#      tenant's sum, every live counter (usage_counters, tenant and subject
#      keys) equals its subject's sum with nothing in flight, and, before any
#      other consume, each key's consumes are refused at the limit of the
#      level that is full (the rebuilt counters know the usage).  The same
#      request_check and counter checks after a second immediate restart.
# No server process crashes other than the backend killed in 1.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $started = time;
my $db = 'gateway';

my $node = PostgreSQL::Test::Cluster->new('gateway');
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

# The subjects of part 2: [subject, level, parent (undef: the tenant), role,
# own day limit].  Every subject's own limit is below those of all its
# ancestors (the tenant's is 1000000), so that a request_check of one unit
# more than its own limit is refused for ever by its own level only: that
# level is the one reported (the refusal to wait longest for).
my @subjects = (
	[ 'team-a', 'team', undef, undef, 350 ],        # plan
	[ 'team-b', 'team', undef, undef, 350 ],        # plan
	[ 'u-a1', 'user', 'team-a', undef, 200 ],       # plan
	[ 'u-a2', 'user', 'team-a', 'intern', 150 ],    # role
	[ 'u-b1', 'user', 'team-b', undef, 200 ],       # plan
	[ 'k-a1-1', 'api_key', 'u-a1', undef, 120 ],    # plan
	[ 'k-a1-2', 'api_key', 'u-a1', undef, 120 ],
	[ 'k-a2-1', 'api_key', 'u-a2', undef, 120 ],
	[ 'k-a2-2', 'api_key', 'u-a2', undef, 120 ],
	[ 'k-b1-1', 'api_key', 'u-b1', undef, 120 ],
	[ 'k-b1-2', 'api_key', 'u-b1', undef, 60 ],     # its own
	[ 'k-free', 'api_key', undef, undef, 500000 ],  # its own, under the tenant
);
my $tenant_limit = 1000000;
my %subj = map { $_->[0] => { level => $_->[1], parent => $_->[2], role => $_->[3], limit => $_->[4] } } @subjects;
my @keys = map { $_->[0] } grep { $_->[1] eq 'api_key' } @subjects;
my @limited_keys = grep { $_ ne 'k-free' } @keys;

sub sql_str { my ($v) = @_; return defined $v ? "'$v'" : 'NULL'; }

my $subject_rows = join(",\n", map { "('acme', '$_->[0]', '$_->[1]', " . sql_str($_->[2]) . ', ' . sql_str($_->[3]) . ')' } @subjects);
$node->safe_psql($db, qq{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('gw');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
    VALUES ('gw', 'tokens', 'day', $tenant_limit);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status) VALUES ('acme', 'gw', 'active');
    INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id, role) VALUES
        ('acme', 'k-lease', 'api_key', NULL, NULL),
        $subject_rows;
    -- part 1: 3 leases at once for k-lease
    INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, hard_limit)
    VALUES ('acme', 'k-lease', 'api_key', 'concurrency', 3);
    -- part 2: day quotas of the plan at each level, of a role, of single subjects
    INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit)
    VALUES ('gw', 'api_key', 'quota', 'tokens', 'day', 120),
           ('gw', 'user', 'quota', 'tokens', 'day', 200),
           ('gw', 'team', 'quota', 'tokens', 'day', 350);
    INSERT INTO usage_guard.subject_limits (role, level, limit_kind, feature_key, period, hard_limit)
    VALUES ('intern', 'user', 'quota', 'tokens', 'day', 150);
    INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, period, hard_limit)
    VALUES ('acme', 'k-b1-2', 'api_key', 'quota', 'tokens', 'day', 60),
           ('acme', 'k-free', 'api_key', 'quota', 'tokens', 'day', 500000);
});

# ===========================================================================
# 1. Lease TTL after a crash
# ===========================================================================

my $ttl = 10;    # seconds: long enough for crash recovery on a slow machine
my $holder = $node->background_psql($db, on_error_stop => 1);
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
like($holder_pid, qr/^\d+$/, "lease holder's backend pid: $holder_pid");

# three autocommit acquires: each committed when its row comes back
my @acq = split /\n/, $holder->query_safe(join("\n",
	map { "SELECT allowed, lease_id FROM usage_guard.lease_acquire('acme', 'k-lease', '$ttl seconds');" } 1 .. 3));
is(scalar(grep { /^t\|[0-9a-f-]{36}$/ } @acq), 3, 'the holder acquired 3 leases') or diag join("\n", @acq);
my @old = map { (split /\|/)[1] } @acq;
my $old_array = "ARRAY['" . join("', '", @old) . "']::uuid[]";

# the state of the 3 leases: rows per level, released, live now
my $lease_state_sql = qq{
    SELECT count(DISTINCT lease_id) || ' leases, '
           || count(*) FILTER (WHERE level = 'api_key') || ' api_key rows, '
           || count(*) FILTER (WHERE released_at IS NOT NULL) || ' released, '
           || count(*) FILTER (WHERE level = 'api_key' AND expires_at > now()) || ' live'
      FROM usage_guard.leases WHERE tenant_id = 'acme' AND lease_id = ANY ($old_array)};

# A 4th acquire, with whether it is within the TTL of all 3 and whether
# retry_after is the time until the first of them expires
my $fourth_sql = qq{
    SELECT a.allowed, a.decision, a.level, a.subject_id, a.limit_kind, a.usage, a.limit_value,
           a.lease_id IS NULL AS no_lease,
           now() < x.first_expiry AS within_ttl,
           abs(a.retry_after - extract(epoch FROM x.first_expiry - now())) < 0.01 AS retry_is_first_expiry,
           a.retry_after > 0 AND a.retry_after <= $ttl AS retry_within_ttl
      FROM (SELECT min(expires_at) AS first_expiry FROM usage_guard.leases
             WHERE tenant_id = 'acme' AND level = 'api_key' AND lease_id = ANY ($old_array)) x,
           usage_guard.lease_acquire('acme', 'k-lease', '$ttl seconds') a};
my $refused_4th = 'f|hard_limit|api_key|k-lease|concurrency|3|3|t|t|t|t';

is($node->safe_psql($db, $lease_state_sql), '3 leases, 3 api_key rows, 0 released, 3 live',
	'before the crash: 3 live leases of k-lease');
my $res = $node->safe_psql($db, $fourth_sql);
is($res, $refused_4th,
	'before the crash: a 4th acquire is refused by the api_key concurrency limit, retry_after = first expiry');

# SIGKILL the holder's (idle) backend: a crash restart of the server
my $log_offset = -s $node->logfile;
my $t_kill = time;
is(kill('KILL', $holder_pid), 1, "killed the lease holder's backend $holder_pid with SIGKILL");
$node->wait_for_log(
	qr/(?:server process|client backend) \(PID $holder_pid\) was terminated by signal 9.*all server processes terminated; reinitializing.*database system is ready to accept connections/s,
	$log_offset);
ok($node->poll_query_until($db, 'SELECT 1', '1'), 'the server accepts connections after crash recovery');
note sprintf('crash recovery took %.1f s', time - $t_kill);
eval { $holder->quit; 1 };    # its connection is gone

is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_counters}),
	'0', 'after recovery: shared memory was reinitialized (no live counter)');
is($node->safe_psql($db, $lease_state_sql), '3 leases, 3 api_key rows, 0 released, 3 live',
	'after recovery: the 3 leases are still there, live (not cleared by the crash)');
$res = $node->safe_psql($db, $fourth_sql);
is($res, $refused_4th, 'after recovery: a 4th acquire is still refused, retry_after = first expiry')
  or diag 'within_ttl f means recovery took longer than the TTL';

# Poll acquires until one is allowed: each is refused exactly while all 3
# old leases are live (allowed = now() >= the first expiry, judged in the
# same statement)
my $poll_sql = qq{
    SELECT a.allowed, now() >= x.first_expiry, a.lease_id
      FROM (SELECT min(expires_at) AS first_expiry FROM usage_guard.leases
             WHERE tenant_id = 'acme' AND level = 'api_key' AND lease_id = ANY ($old_array)) x,
           usage_guard.lease_acquire('acme', 'k-lease', '$ttl seconds') a};
my (@polls, $first_new);
my $poll_deadline = time + $ttl + 30;
while (time < $poll_deadline)
{
	my ($allowed, $expired, $id) = split /\|/, $node->safe_psql($db, $poll_sql);
	push @polls, "$allowed$expired";
	if ($allowed eq 't')
	{
		$first_new = $id;
		last;
	}
	usleep(200_000);
}
note scalar(@polls) . ' polled acquires: ' . join(' ', @polls);
ok(defined $first_new, 'an acquire was allowed again after the TTL, without any release');
is(scalar(grep { $_ ne 'ff' } @polls[ 0 .. $#polls - 1 ]), 0,
	'every refused acquire was made while all 3 leases were live');
is($polls[-1], 'tt', 'the allowed acquire was made after the first lease expired');

# once all 3 expired: 2 more fit (3 live, all new), a 4th does not
ok( $node->poll_query_until(
		$db, qq{SELECT now() >= max(expires_at) FROM usage_guard.leases
                 WHERE tenant_id = 'acme' AND lease_id = ANY ($old_array)}, 't'),
	'all 3 leases expired');
my @more = split /\n/, $node->safe_psql($db, join("\n",
	map { "SELECT allowed, lease_id IS NOT NULL FROM usage_guard.lease_acquire('acme', 'k-lease', '$ttl seconds');" } 1 .. 3));
is(join(' ', @more), 't|t t|t f|f', 'after the TTL of all 3: 2 more acquires are allowed (3 live), the next is refused');
is($node->safe_psql($db, $lease_state_sql), '3 leases, 3 api_key rows, 0 released, 0 live',
	'the 3 old leases expired without ever being released');
is( $node->safe_psql(
		$db, qq{SELECT count(*) FROM usage_guard.leases
                 WHERE tenant_id = 'acme' AND level = 'api_key' AND released_at IS NULL AND expires_at > now()}),
	'3', '3 live leases of k-lease, all taken after the crash');
note sprintf('part 1 done at %.1f s', time - $started);

# ===========================================================================
# 2. Per-level quotas after an immediate shutdown under load
# ===========================================================================

# Windows are UTC days: do not let today's end while this part runs
my $to_midnight = $node->safe_psql($db,
	q{SELECT extract(epoch FROM date_trunc('day', now(), 'UTC') + interval '24 hours' - now())});
if ($to_midnight < 45)
{
	note "waiting ${to_midnight} s for the UTC day to turn";
	usleep(int(($to_midnight + 1) * 1_000_000));
}

# pgbench load: single consumes on every key; two consumes in one
# transaction, a third of them rolled back
my $key_array = "ARRAY['" . join("', '", @keys) . "']";
my $nkeys = scalar(@keys);
my $scripts = $node->basedir . '/load';
mkdir $scripts;
append_to_file("$scripts/consume.sql", qq{\\set k random(1, $nkeys)
\\set a random(1, 5)
SELECT allowed FROM usage_guard.request_consume('acme', (${key_array})[:k], 'tokens', :a);
});
append_to_file("$scripts/multi.sql", qq{\\set k random(1, $nkeys)
\\set j random(1, $nkeys)
\\set a random(1, 5)
\\set rb random(0, 2)
BEGIN;
SELECT allowed FROM usage_guard.request_consume('acme', (${key_array})[:k], 'tokens', :a);
SELECT allowed FROM usage_guard.request_consume('acme', (${key_array})[:j], 'tokens', :a);
\\if :rb = 0
ROLLBACK;
\\else
COMMIT;
\\endif
});

# an allowed consume left uncommitted when the crash comes
my $in_flight = $node->background_psql($db, on_error_stop => 0);
$in_flight->query_safe('BEGIN');
is( $in_flight->query_safe(
		q{SELECT allowed, recorded FROM usage_guard.request_consume('acme', 'k-free', 'tokens', 7, idempotency_key => 'in-flight')}),
	't|t', 'an allowed consume is uncommitted when the crash comes');

my $out = $node->basedir . '/pgbench';
my $load = IPC::Run::start(
	[
		'pgbench', '-n', '-c', '4', '-j', '2', '-T', '60',
		'-f', "$scripts/consume.sql\@3", '-f', "$scripts/multi.sql\@1",
		'-h', $node->host, '-p', $node->port, $db
	],
	'<', '/dev/null', '>', "$out.stdout", '2>', "$out.stderr");

# let the load fill the levels and keep writing (k-free is never full)
my $load_start = time;
my $rows = 0;
while (time < $load_start + 30)
{
	$rows = $node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 'acme'});
	last if $rows >= 300 && time >= $load_start + 3;
	usleep(200_000);
}
ok($load->pumpable, 'pgbench is still running at the crash');
cmp_ok($rows, '>=', 300, "the load wrote $rows ledger rows before the crash");

$node->stop('immediate');
my $load_deadline = time + 30;
usleep(50_000) while ($load->pumpable && time < $load_deadline);
$load->kill_kill if $load->pumpable;
$load->finish;
my $pgbench_err = slurp_file("$out.stderr");
note "pgbench (interrupted by the immediate shutdown):\n" . slurp_file("$out.stdout") . $pgbench_err;
like(slurp_file("$out.stdout"), qr/^number of failed transactions: 0 /m,
	'pgbench: no transaction failed before the shutdown (deadlock, serialization)');
unlike($pgbench_err, qr/ERROR:|deadlock/, 'pgbench: no error other than the shutdown');
eval { $in_flight->quit; 1 };

$node->start;
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_counters}),
	'0', 'after the restart: no live counter');
is($node->safe_psql($db, q{SELECT count(*) FROM usage_guard.usage_events WHERE idempotency_key = 'in-flight'}),
	'0', 'after the restart: the uncommitted consume is not in the ledger');

# Ledger sums of every subject (and the tenant, '') in today's UTC window
my $day_sql = q{date_trunc('day', now(), 'UTC')};
sub ledger_sums
{
	my %sum;
	my $names = "ARRAY['" . join("', '", map { $_->[0] } @subjects) . "', '']";
	for my $line (split /\n/, $node->safe_psql($db, qq{
        SELECT s, coalesce(sum(e.amount), 0)
          FROM unnest($names) s
          LEFT JOIN usage_guard.usage_events e
            ON e.tenant_id = 'acme' AND e.feature_key = 'tokens'
           AND (s = '' OR s = ANY (e.subject_path))
           AND e.occurred_at >= $day_sql AND e.occurred_at < $day_sql + interval '24 hours'
         GROUP BY s}))
	{
		my ($s, $v) = split /\|/, $line;
		$sum{$s} = $v + 0;
	}
	return \%sum;
}

# A subject's chain: itself and its ancestors
sub chain
{
	my ($s) = @_;
	my @c;
	for (; defined $s; $s = $subj{$s}{parent}) { push @c, $s; }
	return @c;
}

sub check_within_limits
{
	my ($when) = @_;
	my $sum = ledger_sums();
	my @over = map { "$_->[0]: $sum->{$_->[0]} > $_->[4]" } grep { $sum->{ $_->[0] } > $_->[4] } @subjects;
	push @over, "tenant: $sum->{''}" if $sum->{''} > $tenant_limit;
	is(scalar(@over), 0, "$when: no subject's ledger sum is over its hard limit") or diag join("\n", @over);
	return $sum;
}

# request_check of one unit more than each subject's own limit: refused by
# its own level, which reports its day window and usage; the usage must be
# the ledger's sum for the subject in that window
sub check_request_usage
{
	my ($when) = @_;
	my $values = join(', ', map { "('$_->[0]', $_->[4])" } @subjects);
	my %got = map { my @f = split /\|/; $f[0] => join('|', @f[ 1 .. $#f ]) } split /\n/, $node->safe_psql($db, qq{
        SELECT v.s, c.allowed, c.level, c.subject_id, c.limit_kind, c.period, c.limit_value,
               c.window_start = $day_sql AND c.window_end = $day_sql + interval '24 hours',
               c.usage = l.sum, c.usage, l.sum
          FROM (VALUES $values) v(s, lim),
               LATERAL usage_guard.request_check('acme', v.s, 'tokens', v.lim + 1) c,
               LATERAL (SELECT coalesce(sum(e.amount), 0) AS sum FROM usage_guard.usage_events e
                         WHERE e.tenant_id = 'acme' AND e.feature_key = 'tokens' AND v.s = ANY (e.subject_path)
                           AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) l});
	for my $r (@subjects)
	{
		my ($s, $level, undef, undef, $lim) = @$r;
		my $g = $got{$s} // 'nothing';
		like($g, qr/^f\|\Q$level\E\|\Q$s\E\|quota\|day\|$lim\|t\|t\|/,
			"$when: request_check of $s reports its $level day window, usage equal to the ledger's sum");
	}

	# the tenant level: usage_check
	is( $node->safe_psql(
			$db, qq{
        SELECT c.usage = l.sum, c.period
          FROM usage_guard.usage_check('acme', 'tokens', 0) c,
               LATERAL (SELECT coalesce(sum(amount), 0) AS sum FROM usage_guard.usage_events
                         WHERE tenant_id = 'acme' AND feature_key = 'tokens'
                           AND occurred_at >= c.window_start AND occurred_at < c.window_end) l}),
		't|day', "$when: the tenant's usage_check equals the ledger's sum");

	# every live counter (subject_id NULL: the tenant level) equals the
	# ledger's sum for its subject, nothing in flight; today's window of the
	# tenant and of every subject is live
	my $res = $node->safe_psql(
		$db, qq{
        WITH c AS (
            SELECT c.*, (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
                          WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                            AND (c.subject_id IS NULL OR c.subject_id = ANY (e.subject_path))
                            AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS ledger
              FROM usage_guard.usage_counters c WHERE c.tenant_id = 'acme')
        SELECT (SELECT count(*) FROM c WHERE window_start = $day_sql) || ' live today, '
               || (SELECT count(*) FROM c WHERE usage <> ledger) || ' off, '
               || (SELECT count(*) FROM c WHERE reserved <> 0 OR credit <> 0) || ' in flight'});
	is($res, scalar(@subjects) + 1 . ' live today, 0 off, 0 in flight',
		"$when: the live counters of the tenant and every subject equal the ledger, nothing in flight");
	if ($res !~ / 0 off, 0 in flight$/)
	{
		diag $node->safe_psql($db, q{SELECT * FROM usage_guard.usage_counters ORDER BY subject_id, window_start});
	}
	return;
}

my $sum = check_within_limits('after the restart');
my @full = grep { $sum->{ $_->[0] } == $_->[4] } @subjects;
note 'levels full after the load: ' . join(' ', map { "$_->[0]=$_->[4]" } @full);
note 'ledger sums: ' . join(' ', map { "$_=$sum->{$_}" } sort keys %$sum);

# Before any other request after the restart (these consumes are the first
# to read the rebuilt counters): for each key, the room left on its chain
# (the least, from the ledger).  A key whose chain is not full yet: one unit
# more than the room is refused by a level with exactly that room, the room
# is allowed.  Then one unit is refused by a level of the chain that is full,
# reporting the ledger's sum as its usage.
my $consume_cols = q{allowed, recorded, level, subject_id, limit_value, usage};
for my $k (@limited_keys)
{
	$sum = ledger_sums();
	my @chain = chain($k);
	my $room = $tenant_limit - $sum->{''};
	for my $s (@chain) { $room = $subj{$s}{limit} - $sum->{$s} if $subj{$s}{limit} - $sum->{$s} < $room; }

	my ($allowed, $recorded, $level, $sid, $lim, $usage);
	if ($room > 0)
	{
		($allowed, $recorded, $level, $sid, $lim, $usage) = split /\|/, $node->safe_psql($db,
			"SELECT $consume_cols FROM usage_guard.request_consume('acme', '$k', 'tokens', $room + 1)");
		ok( $allowed eq 'f' && $recorded eq 'f' && (grep { $_ eq $sid } @chain)
			  && $lim - $usage == $room && $usage == $sum->{$sid},
			"$k: a consume of " . ($room + 1) . " is refused by $level $sid with $room left (usage $usage = ledger)");
		is($node->safe_psql($db, "SELECT allowed, recorded FROM usage_guard.request_consume('acme', '$k', 'tokens', $room)"),
			't|t', "$k: a consume of the $room left is allowed");
		$sum = ledger_sums();
	}
	($allowed, $recorded, $level, $sid, $lim, $usage) = split /\|/, $node->safe_psql($db,
		"SELECT $consume_cols FROM usage_guard.request_consume('acme', '$k', 'tokens', 1)");
	ok( $allowed eq 'f' && $recorded eq 'f' && (grep { $_ eq $sid } @chain)
		  && $usage == $lim && $usage == $sum->{$sid},
		"$k: at the limit, a consume of 1 is refused by $level $sid, full at $lim (ledger $sum->{$sid})")
	  or diag "decision: allowed $allowed, recorded $recorded, $level $sid, limit $lim, usage $usage";
}

check_request_usage('after the restart and the consumes at the limit');
check_within_limits('after the consumes at the limit');

# and once more from a fresh start, before any consume: request_check alone
$node->stop('immediate');
$node->start;
check_request_usage('after a second immediate restart');

$node->stop;

# the only crash is the one caused above
my @crashes = grep { /terminated by signal|terminated by exception|PANIC|TRAP:/ }
  split /\n/, slurp_file($node->logfile);
is_deeply([ map { /(?:server process|client backend) \(PID (\d+)\) was terminated by signal 9/ ? $1 : $_ } @crashes ],
	[$holder_pid], 'no server process crashed except the one killed')
  or diag join("\n", @crashes);

note sprintf('runtime %.1f s', time - $started);
done_testing();

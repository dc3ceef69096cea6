# pg_dump and restore keep the catalog and the ledger; the derived counters
# are rebuilt by the ledger's trigger during the restore, ids keep counting,
# idempotency keys and metered tables keep working.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'usage_guard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token'), ('deployments', 'deployment');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('starter');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
        ('starter', 'tokens', 'month', 800, 1000), ('starter', 'deployments', 'day', NULL, 3);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
        VALUES ('acme', 'starter', '2025-11-01'), ('beta', 'starter', '2025-11-05');
    INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit) VALUES ('beta', 'tokens', 'month', 5000);
    SELECT usage_guard.usage_consume(t, 'tokens', 10 + i, 'k' || i, '{"n": 1}', '2025-11-10'::timestamptz + i * interval '37 minutes')
      FROM generate_series(1, 40) AS i, unnest(ARRAY['acme', 'beta']) AS t;
    SELECT usage_guard.usage_record('acme', 'tokens', 3.5, '2025-11-12 10:15+00', 'post-1');
    CREATE TABLE deployments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id text NOT NULL);
    SELECT usage_guard.meter_table('deployments', 'deployments', 'tenant_id');
    INSERT INTO deployments (tenant_id) VALUES ('acme'), ('acme');
});

my $dump = $node->basedir . '/src.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('dst'), '-f', $dump ],
    'restore');

my $ledger = q{SELECT string_agg(concat_ws('|', tenant_id, event_id, feature_key, amount, occurred_at, kind, idempotency_key, attributes), ',' ORDER BY tenant_id, event_id) FROM usage_guard.usage_events};
is($node->safe_psql('dst', $ledger), $node->safe_psql('src', $ledger), 'ledger restored row for row');

for my $t (qw(features plans plan_features tenant_subscriptions tenant_overrides)) {
    my $q = "SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM usage_guard.$t x";
    is($node->safe_psql('dst', $q), $node->safe_psql('src', $q), "$t restored");
}

# the live counters are reloaded from the restored ledger
$node->safe_psql('dst', q{SELECT usage_guard.usage_check(t, 'tokens', 1, '2025-11-20') FROM unnest(ARRAY['acme', 'beta']) t});
is($node->safe_psql('dst', q{
    SELECT count(*) || ' windows, ' || count(*) FILTER (WHERE c.usage <> (
             SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events e
              WHERE e.tenant_id = c.tenant_id AND e.feature_key = c.feature_key
                AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end)) || ' mismatches'
      FROM usage_guard.usage_counters c}), '2 windows, 0 mismatches', 'live counters equal the restored ledger');

my $decisions = q{SELECT string_agg(concat_ws('|', d.allowed, d.decision, d.limit_value, d.usage, d.window_start), ',')
    FROM unnest(ARRAY['acme', 'beta']) AS t, LATERAL usage_guard.usage_check(t, 'tokens', 100, '2025-11-20') d};
is($node->safe_psql('dst', $decisions), $node->safe_psql('src', $decisions), 'same decisions after restore');

is($node->safe_psql('dst', q{SELECT usage_guard.usage_record('acme', 'tokens', 1, idempotency_key => 'post-1')}),
    'f', 'idempotency keys survive the restore');
my $max_id = $node->safe_psql('dst', 'SELECT max(event_id) FROM usage_guard.usage_events');
$node->safe_psql('dst', q{SELECT usage_guard.usage_record('acme', 'tokens', 1, '2025-11-10 00:00+00')});
cmp_ok($node->safe_psql('dst', 'SELECT max(event_id) FROM usage_guard.usage_events'), '>', $max_id,
    'new ledger rows get fresh ids after the restore');

$node->safe_psql('dst', q{INSERT INTO deployments (tenant_id) VALUES ('acme')});
my ($ret, $out, $err) = $node->psql('dst', q{INSERT INTO deployments (tenant_id) VALUES ('acme')});
like($err, qr/usage limit exceeded/, 'metered table still enforced after restore');

$node->stop;
done_testing();

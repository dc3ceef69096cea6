# usage_guard_ctl end to end: sync-entitlements from a file, export-report
# to JSON and CSV files, status; exit codes a script can rely on.
use strict;
use warnings;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cli');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'usage_guard'");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('messages', 'message'), ('input_tokens', 'token');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('starter'), ('pro');
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('acme', 'starter');
});

my $dir = $node->basedir;
# libpq environment of the test node
$ENV{PGHOST} = $node->host;
$ENV{PGPORT} = $node->port;
$ENV{PGDATABASE} = 'postgres';

sub ctl
{
    my ($stdout, $stderr);
    IPC::Run::run([ 'usage_guard_ctl', @_ ], '>', \$stdout, '2>', \$stderr);
    return ($? >> 8, $stdout, $stderr);
}

my $artifact = "$dir/usage-entitlements.json";
open(my $fh, '>', $artifact) or die;
print $fh encode_json({
    version => 1, guardrails_enabled => JSON::PP::true,
    plans => [
        { plan_code => 'starter', features => [
            { feature_key => 'messages', period => 'day', soft_limit => undef, hard_limit => 5 },
            { feature_key => 'input_tokens', period => 'month', soft_limit => 800, hard_limit => 1000 } ] },
        { plan_code => 'pro', features => [
            { feature_key => 'messages', period => 'day', soft_limit => 4000, hard_limit => 5000 } ] } ] });
close $fh;

my ($rc, $out, $err) = ctl('sync-entitlements', '--path', $artifact, '--dry-run');
is($rc, 0, 'dry-run sync exits 0');
like($out, qr/3 inserted, 0 updated, 0 deleted \(dry run: nothing changed\)/, 'dry run reports the changes');
is($node->safe_psql('postgres', 'SELECT count(*) FROM usage_guard.plan_features'), '0', 'dry run changed nothing');

($rc, $out, $err) = ctl('sync-entitlements', '--path', $artifact, '--plan', 'starter');
is($rc, 0, 'sync of one plan exits 0');
like($out, qr/^insert starter messages day: soft - -> -, hard - -> 5$/m, 'each change is printed');
like($out, qr/2 inserted, 0 updated, 0 deleted$/m, 'summary line');
($rc, $out, $err) = ctl('--dbname', $node->connstr('postgres'), 'sync-entitlements', '--path', $artifact, '--prune-missing');
is($rc, 0, 'sync with --dbname exits 0');
like($out, qr/1 inserted, 0 updated, 0 deleted/, 'the rest is inserted');

# a bad artifact: exit 3, the server's message with the JSON path
open($fh, '>', "$dir/bad.json") or die;
print $fh '{"plans": [{"plan_code": "starter", "features": [{"feature_key": "messages", "hard_limit": -1}]}]}';
close $fh;
($rc, $out, $err) = ctl('sync-entitlements', '--path', "$dir/bad.json");
is($rc, 3, 'an invalid artifact exits 3');
like($err, qr/plans\[0\]\.features\[0\]\.hard_limit/, 'the error names the JSON path');
like($err, qr/sqlstate: 22023/, 'and the SQLSTATE');
($rc, $out, $err) = ctl('sync-entitlements', '--path', "$dir/missing.json");
is($rc, 4, 'a missing file exits 4');

# usage, then the report files
$node->safe_psql('postgres', q{
    SELECT usage_guard.usage_record('acme', 'messages', 1, '2025-11-18 10:00+00') FROM generate_series(1, 4);
    SELECT usage_guard.usage_record('acme', 'input_tokens', 900, '2025-11-10 10:00+00');
});
my $json = "$dir/out/report.json";
my $csv = "$dir/out/report.csv";
($rc, $out, $err) = ctl('export-report', '--tenant', 'acme', '--plan', 'starter',
    '--period-start', '2025-11-01T00:00:00Z', '--period-end', '2025-12-01T00:00:00Z',
    '--output-json', $json, '--output-csv', $csv);
is($rc, 0, 'export-report exits 0') or diag($err);
my $report = decode_json(slurp_file($json));
is($report->{period_start}, '2025-11-01T00:00:00Z', 'JSON period');
is(scalar @{ $report->{rows} }, 2, 'one row per limited feature');
my ($tokens) = grep { $_->{feature_key} eq 'input_tokens' } @{ $report->{rows} };
is($tokens->{usage} . ' ' . $tokens->{status}, '900 soft_limit', 'usage and status in the JSON');
my @csv = split /\n/, slurp_file($csv);
like($csv[0], qr/^tenant_id,plan_code,feature_key,/, 'CSV header');
is(scalar @csv, 3, 'CSV has a header and two rows');
($rc, $out, $err) = ctl('export-report', '--period-start', '2025-11-01', '--period-end', '2025-12-01',
    '--feature', 'messages', '--no-csv', '--output-json', "$dir/out/m.json", '--warn-threshold', '0.5');
is($rc, 0, 'filtered JSON-only export exits 0');
is(scalar @{ decode_json(slurp_file("$dir/out/m.json"))->{rows} }, 1, 'only the requested feature');
ok(!-e "$dir/var", 'no default CSV written with --no-csv');
($rc, $out, $err) = ctl('export-report', '--period-start', '2025-12-01', '--period-end', '2025-11-01', '--no-csv',
    '--output-json', "$dir/out/x.json");
is($rc, 3, 'a reversed period exits 3');
($rc, $out, $err) = ctl('export-report', '--period-end', '2025-11-01');
is($rc, 1, 'a missing required option exits 1');

# status
($rc, $out, $err) = ctl('status', '--tenant', 'acme', '--at', '2025-11-18T12:00:00Z');
is($rc, 0, 'status exits 0');
like($out, qr/^messages\s+day\s+4\s+-\s+5\s+1\s+approaching\s+2025-11-19T00:00:00Z$/m, 'status line of messages');
($rc, $out, $err) = ctl('status', '--tenant', 'nobody');
is($rc, 3, 'an unknown tenant exits 3');
like($err, qr/usage_policy_configuration_error/, 'with the JSON detail');

# export-entitlements: database -> file -> another database (seed 000's
# setup step); the copy ends up with exactly the source's limits
my $exported = "$dir/exported/usage-entitlements.json";
($rc, $out, $err) = ctl('export-entitlements', '--path', $exported);
is($rc, 0, 'export-entitlements exits 0') or diag($err);
like($out, qr/^wrote 2 plan\(s\) to /m, 'it says how many plans it wrote');
my $doc = decode_json(slurp_file($exported));
is_deeply([ map { $_->{plan_code} } @{ $doc->{plans} } ], [ 'pro', 'starter' ], 'every plan, in order');
ok($doc->{guardrails_enabled}, 'marked as made with guardrails on');
$node->safe_psql('postgres', q{
    CREATE DATABASE copy;
});
$node->safe_psql('copy', q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key, unit) VALUES ('messages', 'message'), ('input_tokens', 'token');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('starter'), ('pro');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('pro', 'input_tokens', 'hour', 1);
});
($rc, $out, $err) = ctl('--dbname', $node->connstr('copy'), 'sync-entitlements', '--path', $exported, '--prune-missing');
is($rc, 0, 'the exported artifact syncs into another database') or diag($err);
my $limits = q{SELECT string_agg(format('%s/%s/%s/%s/%s', plan_code, feature_key, period, soft_limit, hard_limit), ' '
                                 ORDER BY plan_code, feature_key, period) FROM usage_guard.plan_features};
is($node->safe_psql('copy', $limits), $node->safe_psql('postgres', $limits), 'the copy has the same limits');
($rc, $out, $err) = ctl('export-entitlements', '--path', "$dir/one.json", '--plan', 'starter');
is(scalar @{ decode_json(slurp_file("$dir/one.json"))->{plans} }, 1, '--plan exports only that plan');
($rc, $out, $err) = ctl('export-entitlements', '--path', "$dir/none.json", '--plan', 'gold');
is($rc, 3, 'an unknown plan exits 3');
ok(!-e "$dir/none.json", 'and writes no file');

# usage errors and connection errors
($rc, $out, $err) = ctl('frobnicate');
is($rc, 1, 'an unknown command exits 1');
($rc, $out, $err) = ctl('--dbname', 'host=/nonexistent port=1', 'status', '--tenant', 'acme');
is($rc, 2, 'no server exits 2');
($rc, $out, $err) = ctl('--help');
is($rc, 0, '--help exits 0');
like($out, qr/export-report/, '--help shows the commands');

$node->stop;
done_testing();

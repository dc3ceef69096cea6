# The metrics as a real Prometheus parser reads them, and the JSON line a
# limit hit writes to the server log.
use strict;
use warnings;
use FindBin;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('metrics');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'usage_guard'");
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key) VALUES ('msgs');
    INSERT INTO usage_guard.plans (plan_code) VALUES ('free'), ('pro');
    INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
        ('free', 'msgs', 'day', 3, 5), ('pro', 'msgs', 'day', NULL, 100);
    INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('a', 'free'), ('b', 'pro');
});
# 3 allowed, 2 soft, 2 hard for free; 4 allowed for pro; 1 check
$node->safe_psql('postgres', q{
    SELECT usage_guard.usage_consume('a', 'msgs', 1, at => '2025-11-18 10:00+00') FROM generate_series(1, 7) i;
    SELECT usage_guard.usage_consume('b', 'msgs', 1, at => '2025-11-18 10:00+00') FROM generate_series(1, 4) i;
    SELECT usage_guard.usage_check('b', 'msgs', 1000, '2025-11-18 10:00+00');
});
# two refusals for lack of a subscription (UG003)
$node->psql('postgres', q{SELECT usage_guard.usage_consume('nobody', 'msgs')});
$node->psql('postgres', q{SELECT usage_guard.usage_check('nobody', 'msgs')});

my $text = $node->safe_psql('postgres', 'SELECT usage_guard.metrics_text()');
my $file = $node->basedir . '/metrics.prom';
open(my $fh, '>', $file) or die;
print $fh "$text\n";
close $fh;

# the Python client's parser is strict about the text format
my $parser = <<'PY';
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s|%s|%s|%s" % (family.type, s.name, labels, s.value))
PY
my ($stdout, $stderr);
my $ok = IPC::Run::run([ '/usr/bin/python3', '-c', $parser, $file ], '>', \$stdout, '2>', \$stderr);
ok($ok, 'the Prometheus parser accepts metrics_text()') or diag($stderr);
my %sample;
for my $line (split /\n/, $stdout)
{
    my ($type, $name, $labels, $value) = split /\|/, $line;
    $sample{"$name|$labels"} = $value;
    $sample{"type:$name"} = $type;
}
is($sample{'usage_guard_decisions_total|decision=allow,plan_code=free'}, '3.0', 'allowed decisions of free');
is($sample{'usage_guard_decisions_total|decision=soft_limit,plan_code=free'}, '2.0', 'soft-limit decisions of free');
is($sample{'usage_guard_decisions_total|decision=hard_limit,plan_code=free'}, '2.0', 'hard-limit decisions of free');
is($sample{'usage_guard_decisions_total|decision=allow,plan_code=pro'}, '4.0', 'allowed decisions of pro');
# a check is counted apart: read-only polling never looks like a limit hit
ok(!exists $sample{'usage_guard_decisions_total|decision=hard_limit,plan_code=pro'}, 'a check is not a decision');
is($sample{'usage_guard_checks_total|decision=hard_limit,plan_code=pro'}, '1.0', 'a blocked check counts as a check');
ok(!exists $sample{'usage_guard_limit_hits_total|feature_key=msgs,limit_type=hard_limit,plan_code=pro'},
    'a blocked check is not a limit hit');
is($sample{'usage_guard_limit_hits_total|feature_key=msgs,limit_type=hard_limit,plan_code=free'}, '2.0',
    'hard limit hits by plan and feature');
is($sample{'usage_guard_limit_hits_total|feature_key=msgs,limit_type=soft_limit,plan_code=free'}, '2.0',
    'soft limit hits by plan and feature');
is($sample{'usage_guard_policy_errors_total|plan_code=,reason=no_subscription'}, '2.0',
    'policy errors by reason');
is($sample{'type:usage_guard_decision_duration_seconds_count'}, 'histogram', 'latency is a histogram');
is($sample{'usage_guard_decision_duration_seconds_count|'}, '12.0', 'every decision was timed');
is($sample{'usage_guard_decision_duration_seconds_bucket|le=+Inf'}, '12.0', 'the +Inf bucket holds all');

# every query of docs/prometheus/queries.yaml runs and returns the columns
# its metrics name (histogram columns with _bucket, _sum, _count), as
# prometheus-postgres-exporter reads them
my $lister = <<'PY';
import sys, yaml
for key, q in yaml.safe_load(open(sys.argv[1])).items():
    cols = []
    for m in q["metrics"]:
        for name, spec in m.items():
            cols.append(name)
            if spec["usage"] == "HISTOGRAM":
                cols += [name + "_bucket", name + "_sum", name + "_count"]
    print("%s\t%s\t%s" % (key, ",".join(cols), q["query"]))
PY
# found from this file: PostgreSQL 17's PGXS no longer sets $ENV{TESTDIR}
my $queries_yaml = "$FindBin::RealBin/../../docs/prometheus/queries.yaml";
my $queries;
ok(IPC::Run::run([ '/usr/bin/python3', '-c', $lister, $queries_yaml ],
        '>', \$queries, '2>', \$stderr), 'queries.yaml parses') or diag($stderr);
my %keys;
for my $line (split /\n/, $queries)
{
    my ($key, $cols, $sql) = split /\t/, $line, 3;
    $keys{$key} = 1;
    my ($rc, $out, $err) = $node->psql('postgres', "\\pset tuples_only off\n\\pset footer off\n$sql");
    is($rc, 0, "queries.yaml $key runs") or diag($err);
    my ($header) = split /\n/, $out;
    is_deeply([ sort split /\|/, ($header // '') ], [ sort split /,/, $cols ], "queries.yaml $key returns its columns");
}
ok($keys{$_}, "queries.yaml exports $_") for qw(usage_guard_decisions usage_guard_checks usage_guard_limit_hits
    usage_guard_policy_errors usage_guard_decision usage_guard_metrics);
my $hist = $node->safe_psql('postgres', q{
    SELECT array_length(duration_seconds, 1) = array_length(duration_seconds_bucket, 1),
           duration_seconds_count = 12
      FROM (SELECT array_agg((labels->>'le')::float8 ORDER BY (labels->>'le')::float8) AS duration_seconds,
                   array_agg(value::bigint ORDER BY (labels->>'le')::float8) AS duration_seconds_bucket,
                   (SELECT value::bigint FROM usage_guard.metrics() WHERE metric = 'usage_guard_decision_duration_seconds_count') AS duration_seconds_count
              FROM usage_guard.metrics() WHERE metric = 'usage_guard_decision_duration_seconds_bucket' AND labels->>'le' <> '+Inf') h});
is($hist, 't|t', 'the histogram query gives one count per bound and the total count');

# one JSON line per limit hit of a consume (4 here), none for the check
my $log = slurp_file($node->logfile);
my @hits = map { decode_json($_) } ($log =~ /LOG:\s+(\{"code":"usage_(?:soft_)?limit_exceeded".*\})$/mg);
is(scalar @hits, 4, 'four limit hits logged');
is_deeply([ sort map { $_->{code} } @hits ],
    [ 'usage_limit_exceeded', 'usage_limit_exceeded', 'usage_soft_limit_exceeded', 'usage_soft_limit_exceeded' ],
    'codes of the logged hits');
for my $field (qw(code plan_code tenant_id feature_key limit_type limit_value usage window_start window_end))
{
    ok(exists $hits[0]{$field}, "the log line has $field");
}
is($hits[-1]{window_end}, '2025-11-19T00:00:00Z', 'window end in UTC ISO 8601');

$node->stop;
done_testing();

# Scheduled maintenance on a real pg_cron: the job is created once however
# often it is scheduled, it runs and refreshes the rollups, and it goes away.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'usage_guard,pg_cron'
cron.database_name = 'postgres'
# the test cluster listens on a Unix socket only: run jobs in background
# workers instead of connecting to localhost
cron.use_background_workers = on
max_worker_processes = 16
});
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION pg_cron;
    CREATE EXTENSION usage_guard;
    INSERT INTO usage_guard.features (feature_key) VALUES ('msgs');
    SELECT usage_guard.usage_record('acme', 'msgs', 3, '2025-11-18 10:00+00');
    SELECT usage_guard.usage_record('acme', 'msgs', 4, '2025-11-18 11:00+00');
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM usage_guard.usage_daily'), '0',
    'the rollup is empty before any refresh');

is($node->safe_psql('postgres', q{SELECT job_name || ' ' || schedule FROM usage_guard.schedule_maintenance('5 minutes')}),
    'usage_guard_refresh_rollups */5 * * * *', 'five minutes is */5');
is($node->safe_psql('postgres', q{SELECT schedule FROM usage_guard.schedule_maintenance('2 hours')}),
    '0 */2 * * *', 'two hours is 0 */2');
is($node->safe_psql('postgres', q{SELECT schedule FROM usage_guard.schedule_maintenance('1 minute')}),
    '* * * * *', 'one minute is * * * * *');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || min(schedule) FROM cron.job WHERE jobname = 'usage_guard_refresh_rollups'}),
    '1 * * * * *', 'scheduling again updates the one job');

my ($ret, $out, $err) = $node->psql('postgres', q{SELECT usage_guard.schedule_maintenance('90 seconds')});
like($err, qr/whole number of minutes/, 'seconds are refused');
($ret, $out, $err) = $node->psql('postgres', q{SELECT usage_guard.schedule_maintenance('7 minutes')});
like($err, qr/divide an hour or a day/, 'an uneven interval is refused');

# pg_cron runs jobs at minute boundaries: wait for one run (bounded)
my $ran = 0;
for (my $i = 0; $i < 150 && !$ran; $i++)
{
    $ran = $node->safe_psql('postgres', q{
        SELECT count(*) > 0 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
         WHERE j.jobname = 'usage_guard_refresh_rollups' AND d.status = 'succeeded'}) eq 't';
    sleep 1 unless $ran;
}
ok($ran, 'the job ran and succeeded');
is($node->safe_psql('postgres', q{SELECT day || ' ' || total || ' ' || events FROM usage_guard.usage_daily}),
    '2025-11-18 7 2', 'the job refreshed the rollup');

is($node->safe_psql('postgres', 'SELECT usage_guard.unschedule_maintenance()'), '1', 'one job removed');
is($node->safe_psql('postgres', q{SELECT count(*) FROM cron.job WHERE jobname LIKE 'usage_guard%'}), '0',
    'no usage_guard job left');

$node->stop;
done_testing();

-- Gateway limits: subjects (api_key -> user -> team -> tenant), limits at
-- every level in one decision, GCRA rate limits, concurrency leases,
-- retry_after and HTTP header values.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('gw_tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('gw_pro');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('gw_pro', 'gw_tokens', 'month', 1000000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('gw', 'gw_pro');

-- the hierarchy: key -> alice -> team-a -> tenant; key2 directly under the team
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id, role) VALUES
    ('gw', 'team-a', 'team', NULL, NULL),
    ('gw', 'alice', 'user', 'team-a', 'developer'),
    ('gw', 'key-1', 'api_key', 'alice', NULL),
    ('gw', 'key-2', 'api_key', 'team-a', NULL);

-- bad hierarchies: a clear error each, nothing changed
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES ('gw', 'x', 'team', 'alice');
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES ('gw', 'y', 'api_key', 'nobody');
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES ('other', 'team-a', 'team', NULL);
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES ('other', 'k', 'api_key', 'alice');
UPDATE usage_guard.subjects SET parent_id = 'key-1' WHERE tenant_id = 'gw' AND subject_id = 'alice';
UPDATE usage_guard.subjects SET parent_id = 'team-a' WHERE tenant_id = 'gw' AND subject_id = 'team-a';
UPDATE usage_guard.subjects SET level = 'api_key' WHERE tenant_id = 'gw' AND subject_id = 'alice';
SELECT try($$INSERT INTO usage_guard.subjects (tenant_id, subject_id, level) VALUES ('gw', 'z', 'tenant')$$);
SELECT count(*) FROM usage_guard.subjects;

-- limits: per-key quota and rates, a user quota (role), a team quota
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit)
VALUES ('gw_pro', 'api_key', 'quota', 'gw_tokens', 'day', 1000),
       ('gw_pro', 'team', 'quota', 'gw_tokens', 'day', 1500);
INSERT INTO usage_guard.subject_limits (role, level, limit_kind, feature_key, period, hard_limit)
VALUES ('developer', 'user', 'quota', 'gw_tokens', 'hour', 600);
-- an override for key-2: a bigger daily quota than the plan's
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, period, hard_limit)
VALUES ('gw', 'key-2', 'api_key', 'quota', 'gw_tokens', 'day', 5000);

-- bad limits
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit) VALUES ('gw_pro', 'api_key', 'rate', '1 second', 0)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit) VALUES ('gw_pro', 'api_key', 'rate', '1 second', -5)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit) VALUES ('gw_pro', 'api_key', 'rate', '2 hours', 5)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit) VALUES ('gw_pro', 'api_key', 'rate', '1.5 seconds', 5)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, hard_limit) VALUES ('gw_pro', 'api_key', 'concurrency', 2.5)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, role, level, limit_kind, hard_limit) VALUES ('gw_pro', 'x', 'api_key', 'concurrency', 2)$$);
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, hard_limit) VALUES ('gw', 'nobody', 'api_key', 'concurrency', 2);

-- every level charged in one step
SELECT allowed, decision, level, subject_id, period, limit_value, usage, remaining, recorded
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 400, at => '2025-11-18 10:00+00');
SELECT subject_id, subject_path, amount FROM usage_guard.usage_events WHERE tenant_id = 'gw';
-- the user's hourly quota (600, by role) refuses the next 400: nothing is charged anywhere
SELECT allowed, decision, level, subject_id, period, limit_value, usage, remaining, retry_after, recorded
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 400, at => '2025-11-18 10:30+00');
SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 'gw';
-- key-2 shares the team: the team's day (1500) counts key-1's 400
SELECT allowed, level, subject_id, period, usage, remaining
  FROM usage_guard.request_consume('gw', 'key-2', 'gw_tokens', 1000, at => '2025-11-18 10:40+00');
SELECT allowed, decision, level, subject_id, period, limit_value, usage, retry_after
  FROM usage_guard.request_consume('gw', 'key-2', 'gw_tokens', 200, at => '2025-11-18 10:41+00');
-- the tenant's plan limit counts every key (usage_check sees the tenant level)
SELECT usage FROM usage_guard.usage_check('gw', 'gw_tokens', 0, '2025-11-18 10:42+00');
-- a request larger than a limit itself: waiting cannot help
SELECT allowed, level, period, retry_after, headers ? 'Retry-After' AS has_retry_after
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 2000, at => '2025-11-18 10:43+00');
-- request_enforce raises with the JSON detail
SELECT try_detail($$SELECT usage_guard.request_enforce('gw', 'key-1', 'gw_tokens', 300, at => '2025-11-18 10:44+00')$$)
       - 'message' AS detail;
SELECT try($$SELECT usage_guard.request_enforce('gw', 'key-1', 'gw_tokens', 300, at => '2025-11-18 10:44+00')$$);
-- check has no side effects
SELECT allowed, level, period, usage FROM usage_guard.request_check('gw', 'key-1', 'gw_tokens', 100, '2025-11-18 10:45+00');

-- two refusing windows: the one to wait longest for decides, retry_after is its reset
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, period, hard_limit)
VALUES ('gw', 'key-1', 'api_key', 'quota', 'gw_tokens', 'hour', 500);
SELECT allowed, level, period, retry_after, reset_at
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 150, at => '2025-11-18 10:50+00');
SELECT allowed, level, period, retry_after, headers->>'Retry-After' AS retry_header
  FROM usage_guard.request_consume('gw', 'key-2', 'gw_tokens', 200, at => '2025-11-18 10:50+00');

-- rate limits (GCRA): 2 requests per second, burst 2, on key-1; 50 tokens per minute on alice
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, per, hard_limit)
VALUES ('gw', 'key-1', 'api_key', 'rate', '1 second', 2);
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, per, hard_limit)
VALUES ('gw', 'alice', 'user', 'rate', 'gw_tokens', '1 minute', 50);
SELECT allowed, level, limit_kind, period, remaining
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 1, at => '2025-11-18 12:00:00+00');
SELECT allowed, level, limit_kind, period, remaining
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 1, at => '2025-11-18 12:00:00.1+00');
-- the third request in the same second: refused, retry when one request's worth has drained
SELECT allowed, decision, level, limit_kind, period, retry_after, headers->>'Retry-After' AS retry_header
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 1, at => '2025-11-18 12:00:00.2+00');
SELECT allowed FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 1, at => '2025-11-18 12:00:00.5+00');
-- tokens per minute at the user level (one every 1.2 s): 48 more pass, the next 10 wait about 10 s
SELECT allowed FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 48, at => '2025-11-18 12:00:02+00');
SELECT allowed, level, limit_kind, period, retry_after
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 10, at => '2025-11-18 12:00:03+00');
-- more than the burst: never
SELECT allowed, level, limit_kind, retry_after
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 60, at => '2025-11-18 12:05:00+00');
-- rate limits only (no quota, no ledger row): key-1's 2 requests/second
SELECT allowed, limit_kind, level, remaining
  FROM usage_guard.request_throttle('gw', 'key-1', at => '2025-11-18 12:06:00+00');
SELECT allowed, limit_kind, level, remaining
  FROM usage_guard.request_throttle('gw', 'key-1', at => '2025-11-18 12:06:00+00');
SELECT allowed, limit_kind, level, retry_after
  FROM usage_guard.request_throttle('gw', 'key-1', at => '2025-11-18 12:06:00+00');
-- with a feature: its token rate at the user level too (50 per minute)
SELECT allowed, limit_kind, level, period, retry_after
  FROM usage_guard.request_throttle('gw', 'key-1', 'gw_tokens', 51, '2025-11-18 12:07:00+00');
SELECT count(*) AS ledger_rows_unchanged FROM usage_guard.usage_events
 WHERE tenant_id = 'gw' AND occurred_at >= '2025-11-18 12:06:00+00' AND occurred_at < '2025-11-18 12:08:00+00';

-- headers count each limit in its own unit: 5 tokens are one request of the 2 per second
SELECT allowed, level, limit_kind, period, usage, usage_after, headers->>'RateLimit' AS ratelimit,
       headers->>'X-RateLimit-Remaining' AS x_remaining
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 5, at => '2025-11-18 12:09:00+00');

-- the header values
SELECT jsonb_pretty(headers) FROM usage_guard.request_check('gw', 'key-1', 'gw_tokens', 1, '2025-11-18 12:10:00+00');

-- concurrency leases: 2 at a time for key-2
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, hard_limit)
VALUES ('gw', 'key-2', 'api_key', 'concurrency', 2);
CREATE TEMP TABLE held AS
SELECT lease_id FROM usage_guard.lease_acquire('gw', 'key-2', '1 minute', now());
INSERT INTO held SELECT lease_id FROM usage_guard.lease_acquire('gw', 'key-2', '1 minute', now());
SELECT count(*), count(lease_id) FROM held;
SELECT allowed, decision, level, limit_kind, usage, limit_value, lease_id IS NULL AS no_lease,
       retry_after BETWEEN 59 AND 60 AS retry_by_ttl
  FROM usage_guard.lease_acquire('gw', 'key-2', '1 minute', now());
-- release is idempotent; the slot comes back
SELECT usage_guard.lease_release('gw', lease_id) FROM held ORDER BY lease_id LIMIT 1;
SELECT usage_guard.lease_release('gw', lease_id) FROM held ORDER BY lease_id LIMIT 1;
SELECT allowed, lease_id IS NOT NULL AS has_lease FROM usage_guard.lease_acquire('gw', 'key-2', '1 minute', now());
-- an expired lease frees its slot: judged at a time after the TTL (admin may pass `at`)
SELECT allowed FROM usage_guard.lease_acquire('gw', 'key-2', '1 minute', now() + interval '61 seconds');
-- a lease with a request, in one call
SELECT allowed, lease_id IS NOT NULL AS has_lease, recorded
  FROM usage_guard.request_consume('gw', 'key-1', 'gw_tokens', 1, lease_ttl => '30 seconds', at => now());
SELECT level, count(*) FROM usage_guard.leases WHERE tenant_id = 'gw' GROUP BY level ORDER BY level;

-- ended leases are history: purge_leases removes those ended before now - keep
SELECT usage_guard.purge_leases('1 hour');
SELECT usage_guard.purge_leases('-2 minutes') >= 2 AS purged_expired;

-- bad input: a clear error, nothing changed
SELECT usage_guard.lease_release('gw', '00000000-0000-4000-8000-000000000000');
SELECT usage_guard.lease_acquire('gw', 'key-2', '0 seconds');
SELECT usage_guard.lease_acquire('gw', 'key-2', '2 days');
SELECT usage_guard.lease_acquire('gw', 'key-2', NULL);
SELECT usage_guard.request_consume('gw', 'nobody', 'gw_tokens', 1);
SELECT usage_guard.request_consume('gw', 'key-1', 'nothing', 1);
SELECT usage_guard.request_consume('nobody', 'key-1', 'gw_tokens', 1);
SELECT usage_guard.request_consume('gw', NULL, 'gw_tokens', 1);
SELECT usage_guard.request_consume('gw', repeat('k', 256), 'gw_tokens', 1);

-- rolling windows: 100 tokens per rolling hour on key-3, granularity 1 minute
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level) VALUES ('gw', 'key-3', 'api_key');
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit)
VALUES ('gw', 'key-3', 'api_key', 'quota', 'gw_tokens', '1 hour', 100);
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit)
VALUES ('gw', 'key-3', 'api_key', 'quota', 'gw_tokens', '90 seconds', 100);      -- not whole minutes
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit)
VALUES ('gw', 'key-3', 'api_key', 'quota', 'gw_tokens', '25 hours 30 minutes', 100); -- not whole hours
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit)
VALUES ('gw', 'key-3', 'api_key', 'quota', 'gw_tokens', '91 days', 100);
SELECT allowed, period, usage, recorded
  FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 60, at => '2025-11-21 12:00:30+00');
SELECT allowed, period, usage
  FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 30, at => '2025-11-21 12:20:00+00');
-- full: 20 more would pass once the 60 of 12:00 have left, at 13:01:00
-- (the bucket of 12:00:30 starts at 12:00, plus one hour, plus the bucket)
SELECT allowed, level, period, usage, retry_after, reset_at, window_start, window_end
  FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 20, at => '2025-11-21 12:30:00+00');
-- the boundary: still counted at 13:00:59, gone at 13:01:00
SELECT allowed, usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 20, '2025-11-21 13:00:59+00');
SELECT allowed, usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 20, '2025-11-21 13:01:00+00');
-- larger than the window's limit: waiting cannot help
SELECT allowed, retry_after FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 101, at => '2025-11-21 13:01:00+00');
-- units leave: at 13:01 the 60 are gone and 70 fit
SELECT allowed, usage FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 70, at => '2025-11-21 13:01:00+00');
-- the live counter and the ledger agree (the ledger's sum over the same buckets)
SELECT usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 0, '2025-11-21 13:05:00+00');
SELECT sum(amount) FROM usage_guard.usage_events
 WHERE tenant_id = 'gw' AND 'key-3' = ANY (subject_path) AND occurred_at >= '2025-11-21 12:05:00+00';
-- an aborted consume gives its units back to the rolling window
-- (at 13:21 the 30 of 12:20 have left)
BEGIN;
SELECT allowed, usage FROM usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 10, at => '2025-11-21 13:21:00+00');
SELECT allowed, usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 0, '2025-11-21 13:21:00+00');
ROLLBACK;
SELECT usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 0, '2025-11-21 13:21:00+00');
-- reloaded from the ledger (reset_counters drops rolling windows; the next decision loads them)
SELECT usage_guard.reset_counters() >= 1;
SELECT usage FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 0, '2025-11-21 13:21:00+00');
SELECT subject_id, feature_key, usage, reserved FROM usage_guard.usage_counters
 WHERE tenant_id = 'gw' AND subject_id = 'key-3';

-- a whole burst in the same microsecond passes: 3 per second (T = 1/3 s, not
-- exact in binary) admits 3, not 2, and refuses the 4th
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, per, hard_limit)
VALUES ('gw', 'key-3', 'api_key', 'rate', '1 second', 3);
SELECT i, d.allowed, d.usage, d.remaining, d.retry_after
  FROM generate_series(1, 4) AS i,
       LATERAL usage_guard.request_throttle('gw', 'key-3', NULL, i - i + 1, '2025-11-22 12:08:00.123457+00') AS d;

-- the tenant-only calls are unchanged, and report their level
SELECT allowed, level, subject_id, limit_kind, period
  FROM usage_guard.usage_consume('gw', 'gw_tokens', 1, at => '2025-11-20 10:00+00');

-- the live counters equal the ledger at every level
SELECT usage_guard.reset_counters() >= 0 AS recomputed;

-- usage_status names the plan (the tier)
SELECT DISTINCT plan_code FROM usage_guard.usage_status('gw', '2025-11-18 12:00+00');

-- metrics: limits judged and refusals by kind and level, live leases by level
SELECT metric, labels->>'limit_kind' AS kind, labels->>'level' AS level, value > 0 AS counted
  FROM usage_guard.metrics()
 WHERE metric IN ('usage_guard_limit_checks_total', 'usage_guard_limit_refusals_total')
   AND labels->>'plan_code' = 'gw_pro'
 ORDER BY 1, 2, 3;
SELECT labels->>'level' AS level, value >= 0 AS ok FROM usage_guard.metrics()
 WHERE metric = 'usage_guard_leases' ORDER BY 1;
SELECT usage_guard.metrics_text() LIKE '%# TYPE usage_guard_leases gauge%' AS has_leases_family;

-- Row-level security on the ledger scopes the gateway calls as it scopes
-- usage_consume: an application role kept away from tenant gw may neither
-- decide, throttle, take nor release for it, and nothing changes
CREATE ROLE gw_app;
GRANT usage_guard_application TO gw_app;
CREATE TEMP TABLE gw_lease AS
SELECT lease_id FROM usage_guard.lease_acquire('gw', 'key-3', '1 minute');
GRANT SELECT ON gw_lease TO gw_app;
ALTER TABLE usage_guard.usage_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY gw_scope ON usage_guard.usage_events TO gw_app
    USING (tenant_id <> 'gw') WITH CHECK (tenant_id <> 'gw');
SELECT count(*) AS rows_before FROM usage_guard.usage_events WHERE tenant_id = 'gw';
SET ROLE gw_app;
SELECT try($$SELECT usage_guard.request_check('gw', 'key-3', 'gw_tokens', 1)$$);
SELECT try($$SELECT usage_guard.request_consume('gw', 'key-3', 'gw_tokens', 1)$$);
SELECT try($$SELECT usage_guard.request_throttle('gw', 'key-3')$$);
SELECT try($$SELECT usage_guard.lease_acquire('gw', 'key-3', '1 minute')$$);
SELECT try(format('SELECT usage_guard.lease_release(%L, %L)', 'gw', (SELECT lease_id FROM gw_lease)));
-- the tables stay closed to the application level
SELECT try($$SELECT count(*) FROM usage_guard.subjects$$);
SELECT try($$DELETE FROM usage_guard.leases$$);
RESET ROLE;
-- a policy that lets gw_app act for gw: the same calls work
DROP POLICY gw_scope ON usage_guard.usage_events;
CREATE POLICY gw_scope ON usage_guard.usage_events TO gw_app
    USING (tenant_id = 'gw') WITH CHECK (tenant_id = 'gw');
SET ROLE gw_app;
SELECT allowed FROM usage_guard.request_check('gw', 'key-3', 'gw_tokens', 1);
SELECT usage_guard.lease_release('gw', (SELECT lease_id FROM gw_lease));
RESET ROLE;
SELECT count(*) AS rows_after FROM usage_guard.usage_events WHERE tenant_id = 'gw';
SELECT released_at IS NOT NULL AS released FROM usage_guard.leases
 WHERE lease_id = (SELECT lease_id FROM gw_lease) AND holder_id = 'key-3';
DROP POLICY gw_scope ON usage_guard.usage_events;
ALTER TABLE usage_guard.usage_events DISABLE ROW LEVEL SECURITY;
DROP TABLE gw_lease;
DROP ROLE gw_app;

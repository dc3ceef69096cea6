-- Rollups (daily, monthly), refresh_rollups(), window_of() and the
-- subscription_usage view.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('rol_tokens', 'token'), ('rol_msgs', 'message');
INSERT INTO usage_guard.plans (plan_code) VALUES ('rol_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('rol_plan', 'rol_tokens', 'month', 800, 1000), ('rol_plan', 'rol_msgs', 'day', NULL, 50),
    ('rol_plan', 'rol_msgs', 'billing_period', NULL, NULL);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('rol-a', 'rol_plan'), ('rol-b', 'rol_plan');
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status) VALUES ('rol-gone', 'rol_plan', 'canceled');
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit) VALUES ('rol-b', 'rol_msgs', 'day', 5);

-- history, across a month boundary
SELECT usage_guard.usage_record('rol-a', 'rol_tokens', 100, '2025-10-31 23:59:59+00');
SELECT usage_guard.usage_record('rol-a', 'rol_tokens', 50, '2025-11-01 00:00:00+00');
SELECT usage_guard.usage_record('rol-a', 'rol_tokens', 25, '2025-11-01 13:00:00+00');
-- and current usage
-- (terse: the WARNING's detail names the current month and seconds to its end)
\set VERBOSITY terse
SELECT allowed FROM usage_guard.usage_consume('rol-a', 'rol_tokens', 900);
\set VERBOSITY default
SELECT allowed FROM usage_guard.usage_consume('rol-b', 'rol_msgs', 4);

-- the rollups show what was there at the last refresh
SELECT count(*) FROM usage_guard.usage_daily WHERE tenant_id LIKE 'rol-%';
SELECT usage_guard.refresh_rollups();
SELECT tenant_id, feature_key, day, total, events FROM usage_guard.usage_daily
 WHERE tenant_id LIKE 'rol-%' AND day < '2026-01-01' ORDER BY 1, 2, 3;
SELECT tenant_id, feature_key, month, total, events FROM usage_guard.usage_monthly
 WHERE tenant_id LIKE 'rol-%' AND month < '2026-01-01' ORDER BY 1, 2, 3;
SELECT usage_guard.usage_record('rol-a', 'rol_tokens', 1, '2025-11-02 00:00:00+00');
SELECT usage_guard.refresh_rollups(false);
SELECT total, events FROM usage_guard.usage_monthly WHERE tenant_id = 'rol-a' AND month = '2025-11-01';
SELECT usage_guard.refresh_rollups(NULL);

-- window_of: the decisions' windows, in SQL
SELECT * FROM usage_guard.window_of('week', '2025-11-19 12:00+00');
SELECT * FROM usage_guard.window_of('billing_period', '2025-03-05+00', '2025-01-31+00', '2025-02-28+00');
SELECT * FROM usage_guard.window_of('fortnight', now());
SELECT * FROM usage_guard.window_of('billing_period', now());

-- subscription_usage: active subscriptions only, limits in force, current windows
SELECT tenant_id, plan_code, feature_key, unit, period, usage, soft_limit, hard_limit, remaining,
       percent_used, limit_source, window_start <= now() AND now() < window_end AS current
  FROM usage_guard.subscription_usage WHERE tenant_id LIKE 'rol-%' ORDER BY 1, 3, 5;
-- its usage agrees with usage_check
SELECT s.tenant_id, s.feature_key, s.period, s.usage = c.usage AS agrees
  FROM usage_guard.subscription_usage s,
       LATERAL usage_guard.usage_check(s.tenant_id, s.feature_key, 0) c
 WHERE s.tenant_id LIKE 'rol-%' AND s.hard_limit IS NOT NULL AND c.period = s.period
 ORDER BY 1, 2, 3;

-- usage_check: the decision without side effects; all windows are checked
-- and the deciding one is reported.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('chk_tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('chk_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('chk_plan', 'chk_tokens', 'day', 80, 100),
    ('chk_plan', 'chk_tokens', 'month', 900, 1000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('chk', 'chk_plan', '2025-11-01 00:00+00');

-- nothing used: the closest limit is the day's soft limit
SELECT * FROM usage_guard.usage_check('chk', 'chk_tokens', 10, '2025-11-18 12:00+00');
-- no side effects
SELECT count(*) AS events FROM usage_guard.usage_events WHERE tenant_id = 'chk';
SELECT count(*) AS in_flight FROM usage_guard.usage_counters WHERE tenant_id = 'chk' AND reserved <> 0;

-- usage from earlier in the month counts for the month, not for today
SELECT usage_guard.usage_record('chk', 'chk_tokens', 850, '2025-11-10 09:00+00');
SELECT decision, period, limit_type, limit_value, usage, remaining
  FROM usage_guard.usage_check('chk', 'chk_tokens', 10, '2025-11-18 12:00+00');
-- over the month's soft limit, under every hard limit
SELECT allowed, decision, period, limit_type, limit_value, usage, requested, remaining
  FROM usage_guard.usage_check('chk', 'chk_tokens', 60, '2025-11-18 12:00+00');
-- over the day's hard limit: a blocking window wins over a soft one
SELECT allowed, decision, period, limit_type, limit_value, usage, requested, window_start, window_end
  FROM usage_guard.usage_check('chk', 'chk_tokens', 101, '2025-11-18 12:00+00');
-- over both hard limits: the tighter one is reported
SELECT usage_guard.usage_record('chk', 'chk_tokens', 100, '2025-11-18 08:00+00');
SELECT allowed, decision, period, limit_value, usage, remaining
  FROM usage_guard.usage_check('chk', 'chk_tokens', 60, '2025-11-18 12:00+00');
-- exactly reaching a hard limit is allowed; one more unit is not
SELECT allowed, decision, period, usage, remaining
  FROM usage_guard.usage_check('chk', 'chk_tokens', 0, '2025-11-18 12:00+00');
SELECT allowed, decision, period FROM usage_guard.usage_check('chk', 'chk_tokens', 1, '2025-11-19 12:00+00');
SELECT allowed, decision, period FROM usage_guard.usage_check('chk', 'chk_tokens', 50, '2025-11-19 12:00+00');
SELECT allowed, decision, period FROM usage_guard.usage_check('chk', 'chk_tokens', 51, '2025-11-19 12:00+00');
-- the default amount is 1 and the default time is now()
SELECT requested, window_end > now() AS current_window FROM usage_guard.usage_check('chk', 'chk_tokens');
-- still no side effects
SELECT count(*) AS events FROM usage_guard.usage_events WHERE tenant_id = 'chk';

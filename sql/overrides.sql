-- Per-tenant overrides (custom contracts), unlimited plans, and features a
-- plan does not include.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('ovr_deploys'), ('ovr_api_calls'), ('ovr_gpu_hours');
INSERT INTO usage_guard.plans (plan_code) VALUES ('ovr_free'), ('ovr_enterprise');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('ovr_free', 'ovr_deploys', 'day', 10),
    ('ovr_free', 'ovr_api_calls', 'day', 5000),
    ('ovr_enterprise', 'ovr_deploys', 'day', NULL),
    ('ovr_enterprise', 'ovr_api_calls', 'day', NULL);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES
    ('ovr-a', 'ovr_free'), ('ovr-b', 'ovr_free'), ('ovr-ent', 'ovr_enterprise');

-- enterprise: unlimited everything it includes
SELECT allowed, decision, limit_type, limit_value, remaining
  FROM usage_guard.usage_check('ovr-ent', 'ovr_deploys', 1e15, '2025-11-18 12:00+00');
-- a feature the plan does not include is blocked with an implicit limit of 0
SELECT allowed, decision, period, limit_type, limit_value, usage, remaining, window_start
  FROM usage_guard.usage_check('ovr-a', 'ovr_gpu_hours', 1, '2025-11-18 12:00+00');
SELECT usage_guard.usage_enforce('ovr-a', 'ovr_gpu_hours', 1, at => '2025-11-18 12:00+00');

-- an override replaces the plan's limit for that tenant and period only
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit, reason)
VALUES ('ovr-a', 'ovr_deploys', 'day', 50, 'contract 2025-117');
SELECT tenant_id, limit_value FROM usage_guard.usage_check('ovr-a', 'ovr_deploys', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT tenant_id, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_deploys', 1, '2025-11-18 12:00+00');
-- an override can add a window the plan does not have
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, soft_limit, hard_limit)
VALUES ('ovr-a', 'ovr_deploys', 'hour', 2, 3);
SELECT usage_guard.usage_record('ovr-a', 'ovr_deploys', 3, '2025-11-18 12:10+00');
SELECT allowed, decision, period, limit_value, usage
  FROM usage_guard.usage_check('ovr-a', 'ovr_deploys', 1, '2025-11-18 12:20+00');
SELECT allowed, decision, period, limit_value, usage
  FROM usage_guard.usage_check('ovr-a', 'ovr_deploys', 1, '2025-11-18 13:20+00');
-- an override can grant a feature the plan lacks, or make it unlimited
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period) VALUES ('ovr-a', 'ovr_gpu_hours', 'month');
SELECT allowed, decision, period, limit_value FROM usage_guard.usage_check('ovr-a', 'ovr_gpu_hours', 100, '2025-11-18 12:00+00');
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period) VALUES ('ovr-b', 'ovr_api_calls', 'day');
SELECT allowed, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_api_calls', 1e9, '2025-11-18 12:00+00');
-- an expired override no longer applies
UPDATE usage_guard.tenant_overrides SET expires_at = '2025-11-18 12:00+00'
 WHERE tenant_id = 'ovr-b' AND feature_key = 'ovr_api_calls';
SELECT allowed, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_api_calls', 1e9, '2025-11-18 11:59:59+00');
SELECT allowed, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_api_calls', 1e9, '2025-11-18 12:00+00');

-- a plan change applies to the next check
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'ovr_enterprise' WHERE tenant_id = 'ovr-b';
SELECT plan_code, allowed, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_deploys', 1000, '2025-11-18 12:00+00');
-- and a limit change too
UPDATE usage_guard.plan_features SET hard_limit = 999 WHERE plan_code = 'ovr_enterprise' AND feature_key = 'ovr_deploys';
SELECT plan_code, allowed, limit_value FROM usage_guard.usage_check('ovr-b', 'ovr_deploys', 1000, '2025-11-18 12:00+00');

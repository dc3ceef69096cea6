-- Plan-wide defaults (seed 004): an enterprise tier on which every feature
-- is unlimited unless the plan limits it, and a default plan that decides
-- for tenants without a subscription row.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('pd_msgs'), ('pd_seats');
INSERT INTO usage_guard.plans (plan_code, unlimited_by_default) VALUES ('pd_enterprise', true);
INSERT INTO usage_guard.plans (plan_code) VALUES ('pd_free'), ('pd_pro');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('pd_enterprise', 'pd_seats', 'month', 500),
    ('pd_free', 'pd_msgs', 'day', 3),
    ('pd_pro', 'pd_msgs', 'day', 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('pd-ent', 'pd_enterprise'), ('pd-pro', 'pd_pro');

-- 1. Unlimited by default: a feature the plan does not list is unlimited
--    (elsewhere it is not included), one it lists keeps its limit
SELECT allowed, decision, period, limit_value, usage FROM usage_guard.usage_consume('pd-ent', 'pd_msgs', 1000000, at => '2025-11-18 10:00+00');
SELECT allowed, decision, limit_value FROM usage_guard.usage_check('pd-ent', 'pd_seats', 501, '2025-11-18 10:00+00');
SELECT allowed, decision, limit_value FROM usage_guard.usage_check('pd-pro', 'pd_seats', 1, '2025-11-18 10:00+00');
-- a feature added later is not refused either
INSERT INTO usage_guard.features (feature_key) VALUES ('pd_new');
SELECT allowed, decision FROM usage_guard.usage_consume('pd-ent', 'pd_new', 7, at => '2025-11-18 10:00+00');
-- an override still limits it for one tenant
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit) VALUES ('pd-ent', 'pd_new', 'day', 10);
SELECT allowed, decision, limit_value, usage FROM usage_guard.usage_check('pd-ent', 'pd_new', 5, '2025-11-18 10:00+00');
-- and an unknown feature is still unknown
SELECT try($$SELECT usage_guard.usage_check('pd-ent', 'pd_nope')$$);

-- 2. A default plan: without one, a tenant with no subscription row is
--    refused (UG003); with one, it is decided by that plan
SELECT try($$SELECT usage_guard.usage_consume('pd-newbie', 'pd_msgs', 1, at => '2025-11-18 10:00+00')$$);
UPDATE usage_guard.plans SET is_default = true WHERE plan_code = 'pd_free';
SELECT allowed, plan_code, period, limit_value, usage FROM usage_guard.usage_consume('pd-newbie', 'pd_msgs', 3, at => '2025-11-18 10:00+00');
SELECT allowed, decision, plan_code FROM usage_guard.usage_consume('pd-newbie', 'pd_msgs', 1, at => '2025-11-18 10:00+00');
SELECT feature_key, period, usage, hard_limit, status FROM usage_guard.usage_status('pd-newbie', '2025-11-18 12:00+00');
-- billing periods of default-plan tenants are calendar months
SELECT * FROM usage_guard.window_of('billing_period', '2025-11-18 10:00+00', '2000-01-01 00:00+00');
-- at most one default plan
SELECT try($$UPDATE usage_guard.plans SET is_default = true WHERE plan_code = 'pd_pro'$$);
-- a subscription row wins over the default plan
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('pd-newbie', 'pd_pro');
SELECT allowed, plan_code, limit_value FROM usage_guard.usage_check('pd-newbie', 'pd_msgs', 1, '2025-11-18 10:00+00');
-- no default any more: tenants without a row are refused again
UPDATE usage_guard.plans SET is_default = false WHERE plan_code = 'pd_free';
SELECT try($$SELECT usage_guard.usage_check('pd-other', 'pd_msgs')$$);

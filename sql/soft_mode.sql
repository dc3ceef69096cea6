-- usage_guard.soft_limit_mode: warn (allow with a WARNING) or block.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('soft_tokens');
INSERT INTO usage_guard.plans (plan_code) VALUES ('soft_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('soft_plan', 'soft_tokens', 'month', 100, 200);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('soft', 'soft_plan');
SELECT usage_guard.usage_record('soft', 'soft_tokens', 90, '2025-11-02 00:00+00');

SHOW usage_guard.soft_limit_mode;
-- check: the decision, no warning
SELECT allowed, decision, limit_type, limit_value FROM usage_guard.usage_check('soft', 'soft_tokens', 20, '2025-11-18 00:00+00');
-- consume: allowed, recorded, one WARNING with the JSON detail
SELECT allowed, decision, recorded FROM usage_guard.usage_consume('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00');
SELECT allowed, decision, recorded FROM usage_guard.usage_enforce('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00');

SET usage_guard.soft_limit_mode = 'block';
SELECT allowed, decision, limit_type FROM usage_guard.usage_check('soft', 'soft_tokens', 20, '2025-11-18 00:00+00');
SELECT allowed, decision, recorded FROM usage_guard.usage_consume('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00');
SELECT usage_guard.usage_enforce('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00');
SELECT try($$SELECT usage_guard.usage_enforce('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00')$$);
SELECT try_detail($$SELECT usage_guard.usage_enforce('soft', 'soft_tokens', 20, at => '2025-11-18 00:00+00')$$) ->> 'code' AS code;
-- under the soft limit nothing changes
SELECT allowed, decision FROM usage_guard.usage_check('soft', 'soft_tokens', 20, '2025-12-18 00:00+00');
-- a hard limit blocks in either mode
RESET usage_guard.soft_limit_mode;
SELECT allowed, decision FROM usage_guard.usage_check('soft', 'soft_tokens', 100, '2025-11-18 00:00+00');
SELECT sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'soft';
-- bad values are refused
SET usage_guard.soft_limit_mode = 'loud';

-- usage_consume: atomic check and record; only allowed usage is recorded.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('con_msgs', 'message');
INSERT INTO usage_guard.plans (plan_code) VALUES ('con_free');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('con_free', 'con_msgs', 'day', 3);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('con', 'con_free');

SELECT allowed, decision, usage, requested, remaining, recorded
  FROM usage_guard.usage_consume('con', 'con_msgs', 1, at => '2025-11-18 10:00+00');
SELECT allowed, decision, usage, requested, remaining, recorded
  FROM usage_guard.usage_consume('con', 'con_msgs', 2, at => '2025-11-18 11:00+00');
-- the limit is reached: blocked, and nothing is recorded
SELECT allowed, decision, limit_type, limit_value, usage, requested, remaining, recorded
  FROM usage_guard.usage_consume('con', 'con_msgs', 1, at => '2025-11-18 12:00+00');
SELECT count(*), sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'con';
-- a zero amount is allowed at the limit (nothing to add)
SELECT allowed, recorded FROM usage_guard.usage_consume('con', 'con_msgs', 0, at => '2025-11-18 12:00+00');
-- a new day is a new window
SELECT allowed, usage, window_start FROM usage_guard.usage_consume('con', 'con_msgs', 3, at => '2025-11-19 00:00+00');
-- the ledger rows say what happened
SELECT feature_key, amount, occurred_at, kind, attributes
  FROM usage_guard.usage_events WHERE tenant_id = 'con' ORDER BY occurred_at, amount;
-- attributes are kept
SELECT recorded FROM usage_guard.usage_consume('con', 'con_msgs', 0, NULL, '{"route": "/chat"}', '2025-11-20 00:00+00');
SELECT attributes FROM usage_guard.usage_events WHERE tenant_id = 'con' AND occurred_at = '2025-11-20 00:00+00';

-- usage_enforce: the same, but a block is an error with a JSON detail
SELECT allowed, recorded FROM usage_guard.usage_enforce('con', 'con_msgs', 1, at => '2025-11-21 00:00+00');
SELECT usage_guard.usage_enforce('con', 'con_msgs', 3, at => '2025-11-21 00:00+00');
SELECT try($$SELECT usage_guard.usage_enforce('con', 'con_msgs', 3, at => '2025-11-21 00:00+00')$$);
SELECT jsonb_pretty(try_detail($$SELECT usage_guard.usage_enforce('con', 'con_msgs', 3, at => '2025-11-21 00:00+00')$$));
SELECT sum(amount) FROM usage_guard.usage_events
 WHERE tenant_id = 'con' AND occurred_at >= '2025-11-21' AND occurred_at < '2025-11-22';

-- inside a transaction: an aborted consume leaves nothing behind
BEGIN;
SELECT allowed, recorded FROM usage_guard.usage_consume('con', 'con_msgs', 2, at => '2025-11-21 05:00+00');
SELECT allowed FROM usage_guard.usage_check('con', 'con_msgs', 1, '2025-11-21 05:00+00');
ROLLBACK;
SELECT allowed, usage FROM usage_guard.usage_check('con', 'con_msgs', 2, '2025-11-21 05:00+00');

-- unlimited (NULL limits) always allows and reports no limit
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period) VALUES ('con_free', 'con_msgs', 'week');
UPDATE usage_guard.plan_features SET hard_limit = NULL WHERE plan_code = 'con_free' AND period = 'day';
SELECT allowed, decision, period, limit_type, limit_value, remaining, recorded
  FROM usage_guard.usage_consume('con', 'con_msgs', 1000000, at => '2025-11-21 06:00+00');

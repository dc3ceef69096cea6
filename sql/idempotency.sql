-- Idempotency: a retried request is counted once, per tenant and feature.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('idem_msgs');
INSERT INTO usage_guard.plans (plan_code) VALUES ('idem_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('idem_plan', 'idem_msgs', 'day', 2);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('idem', 'idem_plan'), ('idem-2', 'idem_plan');

SELECT allowed, usage, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-1', at => '2025-11-18 10:00+00');
-- the retry is allowed, not counted again
SELECT allowed, decision, usage, requested, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-1', at => '2025-11-18 10:00+01');
SELECT allowed, usage, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-2', at => '2025-11-18 10:00+00');
-- at the limit, a retry of a counted request still succeeds, a new one does not
SELECT allowed, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-2', at => '2025-11-18 10:00+00');
SELECT allowed, recorded FROM usage_guard.usage_enforce('idem', 'idem_msgs', 1, 'req-2', at => '2025-11-18 10:00+00');
SELECT allowed, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-3', at => '2025-11-18 10:00+00');
-- a blocked request did not take its key: it can succeed later
SELECT allowed, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-3', at => '2025-11-19 10:00+00');
-- keys are per tenant
SELECT allowed, recorded FROM usage_guard.usage_consume('idem-2', 'idem_msgs', 1, 'req-1', at => '2025-11-18 10:00+00');
-- keys are shared by usage_record and usage_consume
SELECT usage_guard.usage_record('idem', 'idem_msgs', 1, '2025-11-18 10:00+00', 'req-1');
SELECT tenant_id, idempotency_key, amount, kind FROM usage_guard.usage_events
 WHERE feature_key = 'idem_msgs' ORDER BY tenant_id, idempotency_key;
-- a rolled-back consume frees its key
BEGIN;
SELECT recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-4', at => '2025-11-20 10:00+00');
ROLLBACK;
SELECT recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-4', at => '2025-11-20 10:00+00');

-- Keys are per tenant and feature: the natural key is the request id, and
-- one request records several features, each exactly once (seed 001).
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('idem_in', 'token'), ('idem_out', 'token');
SELECT usage_guard.usage_record('idem', 'idem_in', 1187, '2025-11-18 10:00+00', 'req-42');
SELECT usage_guard.usage_record('idem', 'idem_out', 311, '2025-11-18 10:00+00', 'req-42');
SELECT allowed, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-42', at => '2025-11-21 10:00+00');
-- and each feature of the request still counts once on a retry
SELECT usage_guard.usage_record('idem', 'idem_in', 1187, '2025-11-18 10:00+00', 'req-42');
SELECT usage_guard.usage_record('idem', 'idem_out', 311, '2025-11-18 10:00+00', 'req-42');
SELECT allowed, recorded FROM usage_guard.usage_consume('idem', 'idem_msgs', 1, 'req-42', at => '2025-11-21 10:00+00');
SELECT feature_key, sum(amount), count(*) FROM usage_guard.usage_events
 WHERE tenant_id = 'idem' AND idempotency_key = 'req-42' GROUP BY 1 ORDER BY 1;

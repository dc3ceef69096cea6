-- usage_record: post-paid usage, recorded unconditionally and idempotently.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('rec_tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('rec_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('rec_plan', 'rec_tokens', 'day', 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('rec', 'rec_plan');

SELECT usage_guard.usage_record('rec', 'rec_tokens', 60, '2025-11-18 10:00+00');
-- over the hard limit: still recorded (the work already happened)
SELECT usage_guard.usage_record('rec', 'rec_tokens', 60, '2025-11-18 10:30+00');
SELECT allowed, decision, usage, remaining FROM usage_guard.usage_check('rec', 'rec_tokens', 0, '2025-11-18 23:59:59+00');
-- no subscription is needed to record usage: the ledger takes it
SELECT usage_guard.usage_record('walk-in', 'rec_tokens', 5, '2025-11-18 10:00+00');
-- idempotency: the same key records once per tenant
SELECT usage_guard.usage_record('rec', 'rec_tokens', 1187, '2025-11-18 11:00+00', 'req-42');
SELECT usage_guard.usage_record('rec', 'rec_tokens', 1187, '2025-11-18 11:00+00', 'req-42');
SELECT usage_guard.usage_record('rec', 'rec_tokens', 9999, idempotency_key => 'req-42');
SELECT usage_guard.usage_record('walk-in', 'rec_tokens', 1, '2025-11-18 11:00+00', 'req-42');
SELECT tenant_id, amount, kind, idempotency_key FROM usage_guard.usage_events
 WHERE feature_key = 'rec_tokens' ORDER BY tenant_id, occurred_at;
-- fractional amounts are kept exactly
SELECT usage_guard.usage_record('rec', 'rec_tokens', 0.000001, '2025-11-18 12:00+00');
SELECT usage FROM usage_guard.usage_check('rec', 'rec_tokens', 0, '2025-11-18 13:00+00');
-- attributes are a JSON object
SELECT usage_guard.usage_record('rec', 'rec_tokens', 1, '2025-11-18 12:00+00', NULL, '{"model": "gpt-5.1"}');
SELECT attributes FROM usage_guard.usage_events WHERE tenant_id = 'rec' AND attributes <> '{}';
-- counters equal the ledger
SELECT (SELECT sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'rec') =
       (SELECT sum(usage) FROM usage_guard.usage_counters WHERE tenant_id = 'rec') AS counters_match;

-- Catalog constraints: bad plan data is refused with clear errors.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES
    ('input_tokens', 'token'), ('output_tokens', 'token'), ('messages', 'message');
INSERT INTO usage_guard.plans (plan_code, name) VALUES ('starter', 'Starter'), ('pro', 'Pro');

-- several periods per feature
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('starter', 'messages', 'day', NULL, 500),
    ('starter', 'messages', 'month', 8000, 10000);

-- unknown period name
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('starter', 'input_tokens', 'fortnight', 10);
-- soft above hard
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES ('starter', 'input_tokens', 'month', 20, 10)$$);
-- negative, NaN, infinite and too large limits
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'input_tokens', 'day', -1)$$);
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'input_tokens', 'day', 'NaN')$$);
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'input_tokens', 'day', 'Infinity')$$);
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'input_tokens', 'day', 1e16)$$);
-- unknown plan or feature
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('gold', 'input_tokens', 'day', 1)$$);
SELECT try($$INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'images', 'day', 1)$$);
-- bad keys
SELECT try($$INSERT INTO usage_guard.features (feature_key) VALUES ('')$$);
SELECT try($$INSERT INTO usage_guard.features (feature_key) VALUES ('has space')$$);
SELECT try($$INSERT INTO usage_guard.plans (plan_code) VALUES ('')$$);
-- subscriptions: status vocabulary, period order, unknown plan
SELECT try($$INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status) VALUES ('t', 'starter', 'on')$$);
SELECT try($$INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start, current_period_end) VALUES ('t', 'starter', '2025-02-01', '2025-01-01')$$);
SELECT try($$INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('t', 'gold')$$);
SELECT try($$INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('', 'starter')$$);
-- overrides follow the same rules
SELECT try($$INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, soft_limit, hard_limit) VALUES ('t', 'messages', 'day', 5, 4)$$);
SELECT try($$INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period) VALUES ('t', 'messages', 'year')$$);

-- nothing but the two valid rows went in
SELECT plan_code, feature_key, period, soft_limit, hard_limit
  FROM usage_guard.plan_features ORDER BY 1, 2, 3;
SELECT count(*) FROM usage_guard.tenant_subscriptions;
SELECT count(*) FROM usage_guard.tenant_overrides;

-- The ledger is append-only.
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at)
VALUES ('ledger-test', 'messages', 1, '2025-01-01 10:00+00');
UPDATE usage_guard.usage_events SET amount = 2 WHERE tenant_id = 'ledger-test';
DELETE FROM usage_guard.usage_events WHERE tenant_id = 'ledger-test';
TRUNCATE usage_guard.usage_events;
-- direct rows are checked like the functions' arguments
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('', 'messages', 1)$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('t', 'messages', 1, 'gift')$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, idempotency_key) VALUES ('t', 'messages', 1, '')$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('t', 'messages', 2e15)$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('t', 'messages', 'NaN')$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at) VALUES ('t', 'messages', 1, 'infinity')$$);
-- only adjustments may be negative
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('ledger-test', 'messages', -1)$$);
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at, kind)
VALUES ('ledger-test', 'messages', -1, '2025-01-01 10:30+00', 'adjustment');
-- the ledger refers to features by key: unknown ones are refused, used ones kept
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('ledger-test', 'nope', 1)$$);
SELECT try($$DELETE FROM usage_guard.features WHERE feature_key = 'messages'$$);
SELECT try($$UPDATE usage_guard.features SET feature_key = 'msgs' WHERE feature_key = 'messages'$$);
SELECT try($$UPDATE usage_guard.features SET unit = 'msg' WHERE feature_key = 'messages'$$);
SELECT try($$DELETE FROM usage_guard.features WHERE feature_key = 'output_tokens'$$);

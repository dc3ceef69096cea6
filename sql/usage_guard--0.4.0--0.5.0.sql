-- usage_guard 0.4.0 -> 0.5.0: seed parity (what replaying the source
-- runbooks found).  Every change here is also in sql/src, which holds the
-- current definition of every object; the upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.5.0'" to load this file. \quit

-- Idempotency keys are unique per tenant *and feature*: the natural key is
-- the request id, and one request records several features (input and
-- output tokens, messages).  Existing ledgers satisfy the narrower index.
DROP INDEX usage_guard.usage_events_idempotency_key;
CREATE UNIQUE INDEX usage_events_idempotency_key
    ON usage_guard.usage_events (tenant_id, feature_key, idempotency_key) WHERE idempotency_key IS NOT NULL;
COMMENT ON FUNCTION usage_guard.usage_record(text, text, numeric, timestamptz, text, jsonb) IS
    'Records actual usage unconditionally (post-paid); false when the idempotency key was already recorded for the tenant''s feature';

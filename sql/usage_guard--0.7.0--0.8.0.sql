-- usage_guard 0.7.0 -> 0.8.0: performance II: the shared policy cache
-- (row triggers on the tenant tables, cache triggers that fire also for
-- replicated rows), usage_allowed, usage_record_batch, and shmem_info's policy-cache and counter-pool
-- columns.
-- Every change here is also in sql/src, which holds the current definition
-- of every object; the upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.8.0'" to load this file. \quit

--------------------------------------------------------------------------
-- The shared policy cache (sql/src/catalog.sql)
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.tenant_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'usage_guard_tenant_changed'
LANGUAGE C;
COMMENT ON FUNCTION usage_guard.tenant_changed() IS
    'Row trigger: the changed tenants'' entries of the shared policy cache are stale once the transaction commits';
REVOKE ALL ON FUNCTION usage_guard.tenant_changed() FROM PUBLIC;
CREATE TRIGGER tenant_subscriptions_rows_changed AFTER INSERT OR UPDATE OR DELETE
    ON usage_guard.tenant_subscriptions FOR EACH ROW EXECUTE FUNCTION usage_guard.tenant_changed();
CREATE TRIGGER tenant_overrides_rows_changed AFTER INSERT OR UPDATE OR DELETE
    ON usage_guard.tenant_overrides FOR EACH ROW EXECUTE FUNCTION usage_guard.tenant_changed();

ALTER TABLE usage_guard.features ENABLE ALWAYS TRIGGER features_changed;
ALTER TABLE usage_guard.plans ENABLE ALWAYS TRIGGER plans_changed;
ALTER TABLE usage_guard.plan_features ENABLE ALWAYS TRIGGER plan_features_changed;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_changed;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_rows_changed;
ALTER TABLE usage_guard.tenant_overrides ENABLE ALWAYS TRIGGER tenant_overrides_changed;
ALTER TABLE usage_guard.tenant_overrides ENABLE ALWAYS TRIGGER tenant_overrides_rows_changed;

--------------------------------------------------------------------------
-- usage_allowed (sql/src/decisions.sql)
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.usage_allowed(
    tenant_id   text,
    feature_key text,
    amount      numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'usage_allowed'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_allowed(text, text, numeric, timestamptz) IS
    'usage_check''s allowed alone: would consuming amount be allowed? Same checks and errors, no side effects';
REVOKE ALL ON FUNCTION usage_guard.usage_allowed(text, text, numeric, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.usage_allowed(text, text, numeric, timestamptz)
    TO usage_guard_application;

--------------------------------------------------------------------------
-- usage_record_batch (sql/src/decisions.sql)
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.usage_record_batch(
    tenant_ids       text[],
    feature_keys     text[],
    amounts          numeric[],
    occurred_ats     timestamptz[] DEFAULT NULL,
    idempotency_keys text[] DEFAULT NULL,
    attributes       jsonb[] DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'usage_record_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_record_batch(text[], text[], numeric[], timestamptz[], text[], jsonb[]) IS
    'usage_record for every row of parallel arrays in one call (bulk ingest, written as COPY writes); NULL occurred_ats, idempotency_keys or attributes mean now(), none and ''{}'' for every row; returns the rows recorded (a taken idempotency key skips its row); any bad row fails the whole call';
REVOKE ALL ON FUNCTION usage_guard.usage_record_batch(text[], text[], numeric[], timestamptz[], text[], jsonb[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.usage_record_batch(text[], text[], numeric[], timestamptz[], text[], jsonb[])
    TO usage_guard_application;

--------------------------------------------------------------------------
-- shmem_info: the policy cache's and the counter pools' columns (sql/src/counters.sql)
--------------------------------------------------------------------------

DROP FUNCTION usage_guard.shmem_info();
CREATE FUNCTION usage_guard.shmem_info(
    OUT enabled boolean, OUT max_counters bigint, OUT counters_used bigint,
    OUT shmem_bytes bigint, OUT bytes_per_counter bigint,
    OUT max_tenants bigint, OUT tenants_cached bigint, OUT policy_shmem_bytes bigint,
    OUT policy_hits bigint, OUT policy_loads bigint,
    OUT max_counter_extensions bigint, OUT counter_extensions_used bigint,
    OUT long_names_used bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'usage_guard_shmem_info'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.shmem_info() IS
    'Shared-memory sizing: whether the fast path is on, usage_guard.max_counters, entries in use, bytes in all and per tenant/feature entry with up to two windows; the shared policy cache: usage_guard.max_tenants, tenants cached, its bytes, lookups served from it and loads from the catalog since start; the counters'' extension slots (windows beyond two, rate state): how many, how many in use; long-name slots in use';
REVOKE ALL ON FUNCTION usage_guard.shmem_info() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.shmem_info() TO usage_guard_reader;

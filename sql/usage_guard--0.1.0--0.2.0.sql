-- usage_guard 0.1.0 -> 0.2.0: the shared-memory fast path.
--
-- Live counters move from tables (usage_counters, consume_locks, kept by a
-- statement trigger) to shared memory, kept by the functions and by a row
-- trigger on the ledger, in the same transaction as the ledger row.  The
-- catalog tables get statement triggers that invalidate every backend's
-- policy cache.  CREATE EXTENSION runs 0.1.0 and then this script.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.2.0'" to load this file. \quit

-- Amounts are exact 128-bit fixed point with 12 decimal places in shared
-- memory: limits may not have more.
ALTER DOMAIN usage_guard.limit_amount
    ADD CONSTRAINT limit_amount_decimals CHECK (VALUE IS NULL OR VALUE = round(VALUE, 12));

-- The ledger's row checks move into its row trigger (below): CHECK
-- constraints are parsed and planned again for every INSERT statement, a
-- large share of the cost of a consume.  Rows written by the functions are
-- validated by them; every other row by the trigger, with SQLSTATE 23514.
ALTER TABLE usage_guard.usage_events
    DROP CONSTRAINT usage_events_tenant_not_empty,
    DROP CONSTRAINT usage_events_amount_range,
    DROP CONSTRAINT usage_events_kind_valid,
    DROP CONSTRAINT usage_events_idempotency_key_not_empty,
    DROP CONSTRAINT usage_events_only_adjustments_negative;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM usage_guard.usage_events WHERE amount <> round(amount, 12)) THEN
        RAISE WARNING 'usage_guard: the ledger has amounts with more than 12 decimal places'
            USING HINT = 'Windows containing them cannot be loaded into shared memory; record adjustments that round them.';
    END IF;
END
$$;

-- The derived tables of 0.1.0 go; their content lives in shared memory now.
DROP TRIGGER usage_events_count ON usage_guard.usage_events;
DROP FUNCTION usage_guard.usage_events_count();
DROP FUNCTION usage_guard.rebuild_counters();
DROP FUNCTION usage_guard.get_usage_totals(text, timestamptz, timestamptz, text[]);
DROP FUNCTION usage_guard.window_totals(text, timestamptz, timestamptz, text[]);
DROP FUNCTION usage_guard.hour_floor(timestamptz);
DROP TABLE usage_guard.usage_counters;
DROP TABLE usage_guard.consume_locks;

-- Rows inserted by anything but usage_guard's functions (direct INSERT,
-- COPY, a restore) are checked and counted by this trigger.
CREATE FUNCTION usage_guard.usage_events_count()
RETURNS trigger
AS 'MODULE_PATHNAME', 'usage_guard_ledger_insert'
LANGUAGE C;
COMMENT ON FUNCTION usage_guard.usage_events_count() IS
    'Trigger: checks a ledger row not written by usage_guard''s functions (feature, tenant, kind, amount) and counts it in the live counters';
CREATE TRIGGER usage_events_count
    AFTER INSERT ON usage_guard.usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_guard.usage_events_count();

-- Catalog changes reach every backend's policy cache at its next transaction.
CREATE FUNCTION usage_guard.catalog_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'usage_guard_catalog_changed'
LANGUAGE C;
COMMENT ON FUNCTION usage_guard.catalog_changed() IS
    'Trigger: invalidates the per-backend policy caches when the catalog changes';
CREATE TRIGGER features_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.features FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.plans FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER plan_features_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.plan_features FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER tenant_subscriptions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.tenant_subscriptions FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER tenant_overrides_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.tenant_overrides FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();

-- The live counters, for operators and tests.
CREATE FUNCTION usage_guard.live_counters(
    OUT tenant_id text, OUT feature_key text,
    OUT window_start timestamptz, OUT window_end timestamptz,
    OUT usage numeric, OUT reserved numeric, OUT credit numeric)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'usage_guard_counters'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.live_counters() IS
    'Every live window of this database in shared memory: committed usage, reserved (positive, in flight) and credit (negative, in flight)';

CREATE VIEW usage_guard.usage_counters AS
    SELECT tenant_id, feature_key, window_start, window_end, usage, reserved, credit
      FROM usage_guard.live_counters();
COMMENT ON VIEW usage_guard.usage_counters IS
    'Live counters per tenant, feature and window, kept in shared memory in step with the ledger (committed usage, in-flight reservations and credits); empty without shared_preload_libraries';

CREATE FUNCTION usage_guard.reset_counters()
RETURNS bigint
AS 'MODULE_PATHNAME', 'usage_guard_reset_counters'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.reset_counters() IS
    'Forgets this database''s live counters (they are reloaded from the ledger on next use); returns how many tenant/feature entries were dropped';

CREATE FUNCTION usage_guard.shmem_info(
    OUT enabled boolean, OUT max_counters bigint, OUT counters_used bigint,
    OUT shmem_bytes bigint, OUT bytes_per_counter bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'usage_guard_shmem_info'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.shmem_info() IS
    'Shared-memory sizing: whether the fast path is on, usage_guard.max_counters, entries in use, bytes in all and per tenant/feature entry';

-- Totals over any window straight from the ledger's primary key (an
-- index-only range scan per feature).
CREATE FUNCTION usage_guard.get_usage_totals(
    tenant_id    text,
    window_start timestamptz,
    window_end   timestamptz,
    features     text[] DEFAULT NULL)
RETURNS TABLE (feature_key text, unit text, total numeric, events bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant   ALIAS FOR $1;
    p_start    ALIAS FOR $2;
    p_end      ALIAS FOR $3;
    p_features ALIAS FOR $4;
    missing    text;
BEGIN
    IF p_tenant IS NULL OR p_start IS NULL OR p_end IS NULL THEN
        RAISE EXCEPTION 'tenant_id, window_start and window_end must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_tenant = '' THEN
        RAISE EXCEPTION 'tenant_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT isfinite(p_start) OR NOT isfinite(p_end) THEN
        RAISE EXCEPTION 'window bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_start >= p_end THEN
        RAISE EXCEPTION 'window_start must be before window_end'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The window [%s, %s) is empty or reversed.', p_start, p_end),
                  HINT = 'Windows are half-open: [window_start, window_end).';
    END IF;
    SELECT f INTO missing
      FROM unnest(p_features) AS f
     WHERE f IS NULL OR NOT EXISTS (SELECT 1 FROM usage_guard.features x WHERE x.feature_key = f)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown feature "%"', coalesce(missing, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'Features are rows of usage_guard.features.';
    END IF;

    RETURN QUERY
    SELECT f.feature_key, f.unit, coalesce(t.total, 0), coalesce(t.events, 0)
      FROM usage_guard.features f
      LEFT JOIN LATERAL (
            SELECT sum(e.amount) AS total, count(*) AS events
              FROM usage_guard.usage_events e
             WHERE e.tenant_id = p_tenant AND e.feature_key = f.feature_key
               AND e.occurred_at >= p_start AND e.occurred_at < p_end) t ON true
     WHERE p_features IS NULL OR f.feature_key = ANY (p_features)
     ORDER BY f.feature_key;
END
$$;
COMMENT ON FUNCTION usage_guard.get_usage_totals(text, timestamptz, timestamptz, text[]) IS
    'Per-feature usage totals and event counts of a tenant over [window_start, window_end); every requested feature (all when features is NULL), zero when unused';

-- Windows loaded under 0.1.0's definitions are dropped; they reload on use.
SELECT usage_guard.reset_counters();

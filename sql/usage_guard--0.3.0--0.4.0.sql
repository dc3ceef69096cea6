-- usage_guard 0.3.0 -> 0.4.0: trust.
--
-- The functions become the privilege boundary: three roles (application,
-- reader, admin) and nothing for PUBLIC; usage_guard reads and writes the
-- ledger and catalog as the ledger's owner (C), so the caller's table
-- privileges and row-level security no longer change what is counted.
-- Every SQL and PL/pgSQL function pins search_path.  One limit on names
-- (255 bytes) in the catalog as in the C code.  meter_table names its
-- triggers so that long feature keys sharing a prefix no longer collide,
-- and finds them by what they do.  The current definition of every object
-- is in sql/src; this script brings a 0.3.0 database to exactly that (the
-- upgrade test compares both).

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.4.0'" to load this file. \quit

-- One limit on names: 255 bytes, as in the functions' arguments, the ledger
-- trigger and the shared-memory keys (it was 128 for features and plans).
ALTER TABLE usage_guard.features
    DROP CONSTRAINT features_key_valid,
    ADD CONSTRAINT features_key_valid CHECK (feature_key ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}$');
ALTER TABLE usage_guard.plans
    DROP CONSTRAINT plans_code_valid,
    ADD CONSTRAINT plans_code_valid CHECK (plan_code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}$');
ALTER TABLE usage_guard.tenant_subscriptions
    DROP CONSTRAINT tenant_subscriptions_tenant_not_empty,
    ADD CONSTRAINT tenant_subscriptions_tenant_valid CHECK (tenant_id <> '' AND octet_length(tenant_id) <= 255);
ALTER TABLE usage_guard.tenant_overrides
    DROP CONSTRAINT tenant_overrides_tenant_not_empty,
    ADD CONSTRAINT tenant_overrides_tenant_valid CHECK (tenant_id <> '' AND octet_length(tenant_id) <= 255);

-- Every SQL and PL/pgSQL function pins search_path: objects in public must
-- never run with the privileges of whoever calls usage_guard.
ALTER FUNCTION usage_guard.usage_events_append_only() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.limit_windows(text, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.limit_status(numeric, numeric, numeric, numeric) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION usage_guard.reset_usage(text, text, text, text, timestamptz) SET search_path = pg_catalog, pg_temp;

-- Run as their owner: the used-feature guard searches the whole ledger
-- whatever policy hides rows from the admin; REFRESH needs the views'
-- owner; a metered INSERT is metered without the application level.
ALTER FUNCTION usage_guard.features_keep_used() SECURITY DEFINER;
ALTER FUNCTION usage_guard.refresh_rollups(boolean) SECURITY DEFINER;
ALTER FUNCTION usage_guard.meter_row() SECURITY DEFINER;

COMMENT ON FUNCTION usage_guard.reset_counters() IS
    'Recomputes this database''s live counters from the ledger, in place (after rows were loaded with triggers disabled); a key with usage in flight is recomputed once its writers end, without blocking consumers. Returns how many tenant/feature keys were recomputed';

-- meter_table: trigger names that cannot collide, triggers found by what
-- they do (0.3.0's names, cut at 63 bytes, are found too).
-- The metering trigger of a feature on a table, found by what it does (the
-- function and its first argument), not by its name: a name is cut at 63
-- bytes, so two long feature keys sharing a prefix once got the same one.
CREATE FUNCTION usage_guard.metering_trigger(tbl regclass, feature_key text)
RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT t.tgname FROM pg_trigger t
     WHERE t.tgrelid = $1
       AND t.tgfoid = 'usage_guard.meter_row()'::regprocedure
       AND t.tgnargs >= 1
       AND convert_from(substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1), 'UTF8') = $2;
END;
COMMENT ON FUNCTION usage_guard.metering_trigger(regclass, text) IS
    'Internal: the name of the trigger by which meter_table meters feature_key on tbl, NULL if none';

CREATE OR REPLACE FUNCTION usage_guard.meter_table(
    tbl           regclass,
    feature_key   text,
    tenant_column name,
    amount_column name DEFAULT NULL)
RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tbl     ALIAS FOR $1;
    p_feature ALIAS FOR $2;
    p_tenant  ALIAS FOR $3;
    p_amount  ALIAS FOR $4;
    trg       text;
    relkind   "char";
BEGIN
    IF p_tbl IS NULL OR p_feature IS NULL OR p_tenant IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_key and tenant_column must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = p_tbl;
    IF relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', p_tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = p_feature) THEN
        RAISE EXCEPTION 'unknown feature "%"', p_feature
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it first: INSERT INTO usage_guard.features(feature_key, unit) VALUES (...).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = p_tbl AND a.attname = p_tenant
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of "%" does not exist', p_tenant, p_tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    IF p_amount IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = p_tbl AND a.attname = p_amount
               AND a.attnum > 0 AND NOT a.attisdropped
               AND a.atttypid IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype,
                                  'numeric'::regtype, 'real'::regtype, 'double precision'::regtype)) THEN
        RAISE EXCEPTION 'column "%" of "%" does not exist or is not numeric', p_amount, p_tbl
            USING ERRCODE = 'undefined_column';
    END IF;

    -- a name per feature that fits in 63 bytes: long keys end in a hash of
    -- the whole key, so keys sharing a long prefix get different names
    trg := usage_guard.metering_trigger(p_tbl, p_feature);
    IF trg IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER %I ON %s', trg, p_tbl);
    END IF;
    trg := 'usage_guard_meter_' || p_feature;
    IF octet_length(trg) > 63 THEN
        trg := left(trg, 54) || '_' || left(md5(p_feature), 8);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_tbl AND t.tgname = trg) THEN
        RAISE EXCEPTION 'table "%" already has a trigger named "%"', p_tbl, trg
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Rename or drop that trigger; meter_table names its triggers usage_guard_meter_<feature>.';
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION usage_guard.meter_row(%L, %L, %L)',
                   trg, p_tbl, p_feature, p_tenant, coalesce(p_amount, ''));
    RETURN trg;
END
$$;

CREATE OR REPLACE FUNCTION usage_guard.unmeter_table(tbl regclass, feature_key text)
RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg name := usage_guard.metering_trigger($1, $2);
BEGIN
    IF trg IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TRIGGER %I ON %s', trg, $1);
    RETURN true;
END
$$;

-- The privilege model (sql/src/privileges.sql)
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['usage_guard_application', 'usage_guard_reader', 'usage_guard_admin']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('usage_guard_admin', 'usage_guard_application', 'MEMBER') THEN
        GRANT usage_guard_application TO usage_guard_admin;
    END IF;
    IF NOT pg_catalog.pg_has_role('usage_guard_admin', 'usage_guard_reader', 'MEMBER') THEN
        GRANT usage_guard_reader TO usage_guard_admin;
    END IF;
END
$$;
COMMENT ON ROLE usage_guard_application IS
    'usage_guard: decide and record usage (usage_check, usage_consume, usage_enforce, usage_record)';
COMMENT ON ROLE usage_guard_reader IS
    'usage_guard: reports, status and metrics; read access to the catalog and the ledger';
COMMENT ON ROLE usage_guard_admin IS
    'usage_guard: plans, limits, subscriptions, adjustments, resets, entitlement sync, metering, maintenance';

-- Nothing for PUBLIC (functions are executable by PUBLIC by default)
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA usage_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA usage_guard
    TO usage_guard_application, usage_guard_reader, usage_guard_admin;

-- Application: the decision functions, nothing else
GRANT EXECUTE ON FUNCTION
    usage_guard.usage_check(text, text, numeric, timestamptz),
    usage_guard.usage_consume(text, text, numeric, text, jsonb, timestamptz),
    usage_guard.usage_enforce(text, text, numeric, text, jsonb, timestamptz),
    usage_guard.usage_record(text, text, numeric, timestamptz, text, jsonb)
    TO usage_guard_application;

-- Reader: read the catalog and the ledger, and the functions that report
-- (they run as the reader, so a row-level policy on the ledger filters them)
GRANT SELECT ON
    usage_guard.features, usage_guard.plans, usage_guard.plan_features,
    usage_guard.tenant_subscriptions, usage_guard.tenant_overrides,
    usage_guard.usage_events, usage_guard.subscription_usage,
    usage_guard.usage_daily, usage_guard.usage_monthly
    TO usage_guard_reader;
GRANT EXECUTE ON FUNCTION
    usage_guard.get_usage_totals(text, timestamptz, timestamptz, text[]),
    usage_guard.usage_status(text, timestamptz),
    usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.top_consumers(text, interval, integer),
    usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz),
    usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz),
    usage_guard.limit_windows(text, timestamptz),
    usage_guard.limit_status(numeric, numeric, numeric, numeric),
    usage_guard.window_of(text, timestamptz, timestamptz, timestamptz),
    usage_guard.metrics(),
    usage_guard.metrics_text(),
    usage_guard.shmem_info()
    TO usage_guard_reader;

-- Admin: the catalog, corrections (ledger rows of kind adjustment; the
-- ledger stays append-only), the live counters, and every operation
GRANT SELECT, INSERT, UPDATE, DELETE ON
    usage_guard.features, usage_guard.plans, usage_guard.plan_features,
    usage_guard.tenant_subscriptions, usage_guard.tenant_overrides
    TO usage_guard_admin;
GRANT INSERT ON usage_guard.usage_events TO usage_guard_admin;
GRANT SELECT ON usage_guard.usage_counters TO usage_guard_admin;
GRANT EXECUTE ON FUNCTION
    usage_guard.live_counters(),
    usage_guard.reset_counters(),
    usage_guard.reset_usage(text, text, text, text, timestamptz),
    usage_guard.reset_usage_rows(text, text, text, text, timestamptz),
    usage_guard.sync_entitlements(jsonb, text[], boolean, boolean, boolean),
    usage_guard.refresh_rollups(boolean),
    usage_guard.require_pg_cron(),
    usage_guard.schedule_maintenance(interval),
    usage_guard.unschedule_maintenance(),
    usage_guard.meter_table(regclass, text, name, name),
    usage_guard.unmeter_table(regclass, text),
    usage_guard.metering_trigger(regclass, text),
    usage_guard.meter_row()
    TO usage_guard_admin;

-- usage_guard operations: what operators call to change things.
--
-- Owns the audited admin reset (reset_usage), entitlement sync from the
-- operators' JSON artifact (sync_entitlements), scheduled maintenance on
-- pg_cron (require_pg_cron, schedule_maintenance, unschedule_maintenance)
-- and data-layer metering (meter_row, meter_table, unmeter_table).
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql in the order
-- catalog, ledger, decisions, counters, reports, operations: every file
-- uses only objects of the files before it.

--------------------------------------------------------------------------
-- Admin reset
--------------------------------------------------------------------------

-- An admin reset is a row of usage_resets, never a deletion: it gives back
-- the usage of one window (default: the feature's shortest limited window)
-- and of no other; billable totals keep it (a reset is not a refund).
CREATE FUNCTION usage_guard.reset_usage_rows(
    in_tenant_id text, in_feature_key text, in_reason text, in_period text, in_at timestamptz)
RETURNS TABLE (feature_key text, period text, window_start timestamptz, window_end timestamptz,
               usage_before numeric, adjustment numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant  ALIAS FOR $1;
    p_feature ALIAS FOR $2;
    p_reason  ALIAS FOR $3;
    p_period  ALIAS FOR $4;
    p_at      ALIAS FOR $5;
    w record;
BEGIN
    IF p_tenant IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'tenant_id and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_reason IS NULL OR btrim(p_reason) = '' THEN
        RAISE EXCEPTION 'a reset needs a reason'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'It is kept in usage_guard.usage_resets, with who reset and which window.';
    END IF;
    IF p_period IS NOT NULL AND p_period NOT IN ('hour', 'day', 'week', 'month', 'billing_period', 'lifetime') THEN
        RAISE EXCEPTION 'unknown period "%"', p_period USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_feature IS NOT NULL AND NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = p_feature) THEN
        RAISE EXCEPTION 'unknown feature "%"', p_feature USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM usage_guard.tenant_subscriptions s WHERE s.tenant_id = p_tenant) THEN
        RAISE EXCEPTION 'tenant "%" has no subscription', p_tenant USING ERRCODE = 'undefined_object';
    END IF;
    FOR w IN
        SELECT DISTINCT ON (lw.feature_key) lw.feature_key, lw.period, lw.window_start, lw.window_end, lw.usage
          FROM usage_guard.limit_windows(p_tenant, p_at) lw
         WHERE (p_feature IS NULL OR lw.feature_key = p_feature)
           AND (p_period IS NULL OR lw.period = p_period)
         ORDER BY lw.feature_key, usage_guard.window_length(lw.window_start, lw.window_end)
    LOOP
        IF w.usage <> 0 THEN
            INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start,
                                                  window_end, amount, reason)
            VALUES (p_tenant, w.feature_key, w.period, w.window_start, w.window_end, -w.usage, p_reason);
        END IF;
        feature_key := w.feature_key; period := w.period;
        window_start := w.window_start; window_end := w.window_end;
        usage_before := w.usage; adjustment := -w.usage;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION usage_guard.reset_usage_rows(text, text, text, text, timestamptz) IS
    'Internal: the body of usage_guard.reset_usage';

CREATE FUNCTION usage_guard.reset_usage(
    tenant_id   text,
    feature_key text DEFAULT NULL,
    reason      text DEFAULT NULL,
    period      text DEFAULT NULL,
    at          timestamptz DEFAULT now())
RETURNS TABLE (feature_key text, period text, window_start timestamptz, window_end timestamptz,
               usage_before numeric, adjustment numeric)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM usage_guard.reset_usage_rows($1, $2, $3, $4, $5);
END;
COMMENT ON FUNCTION usage_guard.reset_usage(text, text, text, text, timestamptz) IS
    'Admin reset: gives back a tenant''s usage in the current window of a period (default: each feature''s shortest limited window) with a row of usage_resets recording reason, user and window; other windows and billable totals are unchanged; history is never deleted';

--------------------------------------------------------------------------
-- Entitlement sync
--------------------------------------------------------------------------

-- Entitlement sync from the operators' JSON artifact (format: README,
-- example: docs/usage-entitlements.example.json).  Validates everything
-- first (errors name the JSON path), then applies inserts, updates and,
-- with prune_missing, deletes of plan_features for the plans it covers.
CREATE FUNCTION usage_guard.sync_entitlements(
    artifact                jsonb,
    plans                   text[] DEFAULT NULL,
    dry_run                 boolean DEFAULT false,
    prune_missing           boolean DEFAULT false,
    allow_disabled_artifact boolean DEFAULT false)
RETURNS TABLE (action text, plan_code text, feature_key text, period text,
               old_soft_limit numeric, old_hard_limit numeric,
               new_soft_limit numeric, new_hard_limit numeric)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_artifact ALIAS FOR $1;
    p_plans    ALIAS FOR $2;
    p_dry_run  ALIAS FOR $3;
    p_prune    ALIAS FOR $4;
    p_allow    ALIAS FOR $5;
    desired    jsonb := '[]';
    plan_item  jsonb;
    feat       jsonb;
    i          bigint;
    j          bigint;
    path       text;
    v_plan     text;
    v_feature  text;
    v_period   text;
    v_soft     numeric;
    v_hard     numeric;
    seen       text[] := '{}';
    covered    text[] := '{}';
    missing    text;
BEGIN
    IF p_artifact IS NULL OR p_dry_run IS NULL OR p_prune IS NULL OR p_allow IS NULL THEN
        RAISE EXCEPTION 'artifact, dry_run, prune_missing and allow_disabled_artifact must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF jsonb_typeof(p_artifact) <> 'object' THEN
        RAISE EXCEPTION 'invalid entitlements artifact at $: must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_artifact ? 'guardrails_enabled' AND jsonb_typeof(p_artifact -> 'guardrails_enabled') <> 'boolean' THEN
        RAISE EXCEPTION 'invalid entitlements artifact at guardrails_enabled: must be true or false'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_artifact ->> 'guardrails_enabled') = 'false' AND NOT p_allow THEN
        RAISE EXCEPTION 'the entitlements artifact was generated with guardrails disabled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Pass allow_disabled_artifact => true to apply it anyway.';
    END IF;
    IF jsonb_typeof(p_artifact -> 'plans') IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'invalid entitlements artifact at plans: must be an array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR plan_item, i IN SELECT e, n - 1 FROM jsonb_array_elements(p_artifact -> 'plans') WITH ORDINALITY AS a(e, n)
    LOOP
        path := format('plans[%s]', i);
        IF jsonb_typeof(plan_item) <> 'object' THEN
            RAISE EXCEPTION 'invalid entitlements artifact at %: must be an object', path
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(plan_item -> 'plan_code') IS DISTINCT FROM 'string' OR plan_item ->> 'plan_code' = '' THEN
            RAISE EXCEPTION 'invalid entitlements artifact at %.plan_code: must be a non-empty string', path
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_plan := plan_item ->> 'plan_code';
        IF v_plan = ANY (covered) THEN
            RAISE EXCEPTION 'invalid entitlements artifact at %.plan_code: plan "%" appears twice', path, v_plan
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF p_plans IS NOT NULL AND NOT v_plan = ANY (p_plans) THEN
            CONTINUE;
        END IF;
        covered := covered || v_plan;
        IF NOT EXISTS (SELECT 1 FROM usage_guard.plans p WHERE p.plan_code = v_plan) THEN
            RAISE EXCEPTION 'plan "%" (at %.plan_code) does not exist', v_plan, path
                USING ERRCODE = 'undefined_object',
                      HINT = 'Create plans first (INSERT INTO usage_guard.plans); the artifact only carries their limits.';
        END IF;
        IF jsonb_typeof(plan_item -> 'features') IS DISTINCT FROM 'array' THEN
            RAISE EXCEPTION 'invalid entitlements artifact at %.features: must be an array', path
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR feat, j IN SELECT e, n - 1 FROM jsonb_array_elements(plan_item -> 'features') WITH ORDINALITY AS a(e, n)
        LOOP
            path := format('plans[%s].features[%s]', i, j);
            IF jsonb_typeof(feat) <> 'object' THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %: must be an object', path
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF jsonb_typeof(feat -> 'feature_key') IS DISTINCT FROM 'string' THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %.feature_key: must be a string', path
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_feature := feat ->> 'feature_key';
            IF NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = v_feature) THEN
                RAISE EXCEPTION 'feature "%" (at %.feature_key) does not exist', v_feature, path
                    USING ERRCODE = 'undefined_object',
                          HINT = 'Features are rows of usage_guard.features.';
            END IF;
            v_period := coalesce(feat ->> 'period', 'billing_period');
            IF (feat ? 'period' AND jsonb_typeof(feat -> 'period') <> 'string')
               OR v_period NOT IN ('hour', 'day', 'week', 'month', 'billing_period', 'lifetime') THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %.period: must be hour, day, week, month, billing_period or lifetime', path
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF format('%s/%s/%s', v_plan, v_feature, v_period) = ANY (seen) THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %: feature "%" with period "%" appears twice in plan "%"',
                                path, v_feature, v_period, v_plan
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            seen := seen || format('%s/%s/%s', v_plan, v_feature, v_period);
            FOREACH missing IN ARRAY ARRAY['soft_limit', 'hard_limit']
            LOOP
                IF coalesce(jsonb_typeof(feat -> missing), 'null') NOT IN ('null', 'number')
                   OR (feat ->> missing)::numeric < 0 OR (feat ->> missing)::numeric > 1e15
                   OR (feat ->> missing)::numeric <> round((feat ->> missing)::numeric, 12) THEN
                    RAISE EXCEPTION 'invalid entitlements artifact at %.%: must be null (unlimited) or a number from 0 to 1e15 with at most 12 decimals', path, missing
                        USING ERRCODE = 'invalid_parameter_value';
                END IF;
            END LOOP;
            v_soft := (feat ->> 'soft_limit')::numeric;
            v_hard := (feat ->> 'hard_limit')::numeric;
            IF v_soft > v_hard THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %.soft_limit: % is above hard_limit %', path, v_soft, v_hard
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            desired := desired || jsonb_build_array(jsonb_build_object(
                'plan_code', v_plan, 'feature_key', v_feature, 'period', v_period,
                'soft_limit', v_soft, 'hard_limit', v_hard));
        END LOOP;
    END LOOP;

    SELECT p INTO missing FROM unnest(p_plans) AS p WHERE NOT p = ANY (covered) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'plan "%" is not in the entitlements artifact', missing
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- the changes, computed once; applied unless this is a dry run
    CREATE TEMP TABLE IF NOT EXISTS usage_guard_sync_changes (
        action text, plan_code text, feature_key text, period text,
        old_soft_limit numeric, old_hard_limit numeric, new_soft_limit numeric, new_hard_limit numeric
    ) ON COMMIT DROP;
    TRUNCATE usage_guard_sync_changes;
    INSERT INTO usage_guard_sync_changes
    SELECT CASE WHEN pf.plan_code IS NULL THEN 'insert' ELSE 'update' END,
           d.plan_code, d.feature_key, d.period,
           pf.soft_limit, pf.hard_limit, d.soft_limit, d.hard_limit
      FROM jsonb_to_recordset(desired) AS d(plan_code text, feature_key text, period text,
                                            soft_limit numeric, hard_limit numeric)
      LEFT JOIN usage_guard.plan_features pf
             ON pf.plan_code = d.plan_code AND pf.feature_key = d.feature_key AND pf.period = d.period
     WHERE pf.plan_code IS NULL
        OR pf.soft_limit IS DISTINCT FROM d.soft_limit OR pf.hard_limit IS DISTINCT FROM d.hard_limit;
    IF p_prune THEN
        INSERT INTO usage_guard_sync_changes
        SELECT 'delete', pf.plan_code, pf.feature_key, pf.period, pf.soft_limit, pf.hard_limit, NULL, NULL
          FROM usage_guard.plan_features pf
         WHERE pf.plan_code = ANY (covered)
           AND NOT EXISTS (SELECT 1 FROM jsonb_to_recordset(desired) AS d(plan_code text, feature_key text, period text)
                            WHERE d.plan_code = pf.plan_code AND d.feature_key = pf.feature_key AND d.period = pf.period);
    END IF;

    IF NOT p_dry_run THEN
        INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
        SELECT c.plan_code, c.feature_key, c.period, c.new_soft_limit, c.new_hard_limit
          FROM usage_guard_sync_changes c WHERE c.action = 'insert';
        UPDATE usage_guard.plan_features pf
           SET soft_limit = c.new_soft_limit, hard_limit = c.new_hard_limit, updated_at = now()
          FROM usage_guard_sync_changes c
         WHERE c.action = 'update' AND pf.plan_code = c.plan_code
           AND pf.feature_key = c.feature_key AND pf.period = c.period;
        DELETE FROM usage_guard.plan_features pf
         USING usage_guard_sync_changes c
         WHERE c.action = 'delete' AND pf.plan_code = c.plan_code
           AND pf.feature_key = c.feature_key AND pf.period = c.period;
    END IF;

    RETURN QUERY SELECT c.action, c.plan_code, c.feature_key, c.period, c.old_soft_limit,
                        c.old_hard_limit, c.new_soft_limit, c.new_hard_limit
                   FROM usage_guard_sync_changes c
                  ORDER BY c.plan_code, c.feature_key, c.period;
    TRUNCATE usage_guard_sync_changes;
END
$$;
COMMENT ON FUNCTION usage_guard.sync_entitlements(jsonb, text[], boolean, boolean, boolean) IS
    'Upserts plan_features from the entitlements artifact (only the listed plans when plans is given); one row per insert/update/delete with old and new limits; dry_run changes nothing; prune_missing deletes features of the covered plans absent from the artifact';

-- The artifact sync_entitlements reads, written from the catalog (seed 000's
-- setup step): database -> file -> another database round-trips.  Every
-- listed plan is in it, those without features with an empty list, so a
-- sync with prune_missing reproduces the source exactly.
CREATE FUNCTION usage_guard.entitlements_artifact(plans text[] DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_plans ALIAS FOR $1;
    missing text;
BEGIN
    SELECT p INTO missing FROM unnest(p_plans) AS p
     WHERE p IS NULL OR NOT EXISTS (SELECT 1 FROM usage_guard.plans x WHERE x.plan_code = p)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'plan "%" does not exist', coalesce(missing, 'NULL')
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN jsonb_build_object(
        'version', 1,
        'generated_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'guardrails_enabled', true,
        'soft_limit_mode', current_setting('usage_guard.soft_limit_mode', true),
        'plans', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'plan_code', p.plan_code,
                       'features', coalesce((
                           SELECT jsonb_agg(jsonb_build_object(
                                      'feature_key', pf.feature_key, 'period', pf.period::text,
                                      'soft_limit', pf.soft_limit::numeric, 'hard_limit', pf.hard_limit::numeric)
                                  ORDER BY pf.feature_key, pf.period)
                             FROM usage_guard.plan_features pf WHERE pf.plan_code = p.plan_code), '[]'::jsonb))
                   ORDER BY p.plan_code)
              FROM usage_guard.plans p
             WHERE p_plans IS NULL OR p.plan_code = ANY (p_plans)), '[]'::jsonb));
END
$$;
COMMENT ON FUNCTION usage_guard.entitlements_artifact(text[]) IS
    'The entitlements artifact (the format sync_entitlements reads) of the listed plans (all when NULL), from plan_features: export with usage_guard_ctl export-entitlements, sync into another database';

--------------------------------------------------------------------------
-- Scheduled maintenance (pg_cron)
--------------------------------------------------------------------------

-- Periodic work on pg_cron.  Decisions need none (live counters are kept
-- in step by every write); the rollups do.  Called through EXECUTE so that
-- usage_guard installs and works without pg_cron.
CREATE FUNCTION usage_guard.require_pg_cron()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'usage_guard works without pg_cron; only its scheduled maintenance needs it.',
                  HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this database, restart, then CREATE EXTENSION pg_cron.';
    END IF;
END
$$;
COMMENT ON FUNCTION usage_guard.require_pg_cron() IS
    'Internal: raises 55000 with instructions when pg_cron is not installed in this database';

CREATE FUNCTION usage_guard.schedule_maintenance(refresh_every interval DEFAULT '5 minutes')
RETURNS TABLE (job_name text, schedule text, command text, jobid bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_every ALIAS FOR $1;
    v_seconds numeric;
    v_minutes bigint;
    v_schedule text;
    v_job text := 'usage_guard_refresh_rollups';
    v_command text := 'SELECT usage_guard.refresh_rollups()';
    v_id bigint;
BEGIN
    IF p_every IS NULL THEN
        RAISE EXCEPTION 'refresh_every must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM usage_guard.require_pg_cron();
    v_seconds := extract(epoch FROM p_every);
    v_minutes := floor(v_seconds / 60);
    IF v_seconds <> v_minutes * 60 OR v_minutes < 1 THEN
        RAISE EXCEPTION 'refresh_every must be a whole number of minutes, at least 1'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pg_cron runs a job at most once a minute: e.g. ''1 minute'', ''5 minutes'', ''1 hour''.';
    END IF;
    v_schedule := CASE
        WHEN v_minutes = 1 THEN '* * * * *'
        WHEN v_minutes < 60 AND 60 % v_minutes = 0 THEN format('*/%s * * * *', v_minutes)
        WHEN v_minutes = 60 THEN '0 * * * *'
        WHEN v_minutes < 1440 AND v_minutes % 60 = 0 AND 24 % (v_minutes / 60) = 0
            THEN format('0 */%s * * *', v_minutes / 60)
        WHEN v_minutes = 1440 THEN '0 0 * * *'
    END;
    IF v_schedule IS NULL THEN
        RAISE EXCEPTION 'refresh_every must divide an hour or a day evenly'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use e.g. ''5 minutes'', ''15 minutes'', ''2 hours'' or ''1 day''.';
    END IF;
    -- pg_cron updates a job of the same name: calling again just reschedules
    EXECUTE format('SELECT cron.schedule(%L, %L, %L)', v_job, v_schedule, v_command) INTO v_id;
    RETURN QUERY SELECT v_job, v_schedule, v_command, v_id;
END
$$;
COMMENT ON FUNCTION usage_guard.schedule_maintenance(interval) IS
    'Creates or updates the pg_cron job that refreshes the rollups every refresh_every (whole minutes dividing an hour or a day); needs pg_cron in this database';

CREATE FUNCTION usage_guard.unschedule_maintenance()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
    n integer := 0;
BEGIN
    PERFORM usage_guard.require_pg_cron();
    FOR v_id IN EXECUTE 'SELECT jobid FROM cron.job WHERE jobname LIKE ''usage\_guard\_%'''
    LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING v_id;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION usage_guard.unschedule_maintenance() IS
    'Removes usage_guard''s pg_cron jobs; returns how many';

--------------------------------------------------------------------------
-- Data-layer metering
--------------------------------------------------------------------------

-- Trigger body for meter_table: one usage_enforce per inserted row.
-- Arguments: feature_key, tenant column, amount column ('' = 1 per row).
-- SECURITY DEFINER: whoever may insert into a metered table is metered,
-- without being given the application level; only admins may attach it
-- (EXECUTE is theirs), and it charges only what the admin configured.
CREATE FUNCTION usage_guard.meter_row()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_json jsonb := to_jsonb(NEW);
    tenant   text := row_json ->> TG_ARGV[1];
    amount   numeric := 1;
BEGIN
    IF TG_ARGV[2] <> '' THEN
        amount := (row_json ->> TG_ARGV[2])::numeric;
        IF amount IS NULL THEN
            RAISE EXCEPTION 'metered column %.% must not be NULL', TG_TABLE_NAME, TG_ARGV[2]
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
    END IF;
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant column %.% must not be NULL', TG_TABLE_NAME, TG_ARGV[1]
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'usage_guard.meter_table meters every inserted row against its tenant.';
    END IF;
    PERFORM usage_guard.usage_enforce(tenant, TG_ARGV[0], amount, NULL,
                                      jsonb_build_object('table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)));
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION usage_guard.meter_row() IS
    'Trigger installed by meter_table: enforces and records usage for each inserted row';

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

CREATE FUNCTION usage_guard.meter_table(
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
COMMENT ON FUNCTION usage_guard.meter_table(regclass, text, name, name) IS
    'Meters a table: every inserted row consumes usage of feature_key (1, or amount_column) for the tenant in tenant_column; the INSERT fails with SQLSTATE UG001 over the hard limit. Returns the trigger name.';

CREATE FUNCTION usage_guard.unmeter_table(tbl regclass, feature_key text)
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
COMMENT ON FUNCTION usage_guard.unmeter_table(regclass, text) IS
    'Removes the metering trigger meter_table installed; false when there was none';

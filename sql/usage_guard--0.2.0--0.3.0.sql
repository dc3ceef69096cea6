-- usage_guard 0.2.0 -> 0.3.0: metrics and limit-hit logs.
--
-- Counters in shared memory (usage_guard_decisions_total by decision and
-- plan, usage_guard_limit_hits_total by plan, limit type and feature, a
-- histogram of decision latency), as rows and in the Prometheus text
-- format; the JSON log line of a limit hit is the GUC
-- usage_guard.log_limit_hits.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.3.0'" to load this file. \quit

CREATE FUNCTION usage_guard.metrics(
    OUT metric text, OUT labels jsonb, OUT value double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'usage_guard_metrics'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.metrics() IS
    'Metrics of this database as rows: usage_guard_decisions_total{decision,plan_code}, usage_guard_limit_hits_total{plan_code,limit_type,feature_key}, usage_guard_policy_errors_total{reason,plan_code}, usage_guard_decision_duration_seconds (histogram, whole server), usage_guard_metrics_dropped_total; empty without shared_preload_libraries';

CREATE FUNCTION usage_guard.metrics_text()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH m AS (
        SELECT metric, labels, value,
               regexp_replace(metric, '_(bucket|sum|count)$', '') AS family
          FROM usage_guard.metrics()
    ), families (family, kind, help) AS (
        VALUES ('usage_guard_decisions_total', 'counter',
                'Guardrail evaluations (usage_check, usage_consume, usage_enforce) by decision and plan.'),
               ('usage_guard_limit_hits_total', 'counter',
                'Soft and hard limit hits by plan, limit type and feature.'),
               ('usage_guard_policy_errors_total', 'counter',
                'Requests refused because the tenant has no active subscription (usage_policy_configuration_error), by reason.'),
               ('usage_guard_decision_duration_seconds', 'histogram',
                'Time to decide, measured inside the server (all databases).'),
               ('usage_guard_metrics_dropped_total', 'counter',
                'Increments lost because the series table was full.')
    ), lines AS (
        SELECT f.family, 0 AS part, 0::float8 AS sortnum, '' AS sortkey,
               format(E'# HELP %s %s\n# TYPE %s %s', f.family, f.help, f.family, f.kind) AS line
          FROM families f
        UNION ALL
        SELECT m.family, 1,
               CASE WHEN m.metric NOT LIKE '%\_bucket' THEN 0
                    WHEN m.labels ->> 'le' = '+Inf' THEN 'Infinity'::float8
                    ELSE (m.labels ->> 'le')::float8 END,
               m.metric || m.labels::text,
               m.metric
               || CASE WHEN m.labels = '{}'::jsonb THEN ''
                       ELSE '{' || (SELECT string_agg(format('%s="%s"', k,
                                          replace(replace(replace(v, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n')),
                                          ',' ORDER BY k)
                                      FROM jsonb_each_text(m.labels) AS l(k, v)) || '}' END
               || ' ' || CASE WHEN m.value = trunc(m.value) AND abs(m.value) < 1e15
                              THEN trunc(m.value)::bigint::text ELSE m.value::text END
          FROM m
    )
    SELECT string_agg(line, E'\n' ORDER BY family, part, sortnum, sortkey) || E'\n'
      FROM lines;
END;
COMMENT ON FUNCTION usage_guard.metrics_text() IS
    'The metrics in the Prometheus text exposition format (for prometheus-postgres-exporter or a scrape endpoint)';

-- Windows as SQL sees them: the same computation as the decisions'.
CREATE FUNCTION usage_guard.window_of(
    period       text,
    at           timestamptz,
    period_start timestamptz DEFAULT NULL,
    period_end   timestamptz DEFAULT NULL,
    OUT window_start timestamptz,
    OUT window_end   timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'usage_guard_window_of'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION usage_guard.window_of(text, timestamptz, timestamptz, timestamptz) IS
    'The [window_start, window_end) of a period kind containing at (UTC); billing_period needs the subscription''s current_period_start and current_period_end';

-- Rollups for dashboards and reports, refreshed by refresh_rollups() (the
-- unique indexes are what REFRESH ... CONCURRENTLY needs).  Derived: not
-- dumped, refresh after a restore.
CREATE MATERIALIZED VIEW usage_guard.usage_daily AS
SELECT tenant_id, feature_key, (occurred_at AT TIME ZONE 'UTC')::date AS day,
       sum(amount) AS total, count(*) AS events
  FROM usage_guard.usage_events
 GROUP BY 1, 2, 3;
CREATE UNIQUE INDEX usage_daily_key ON usage_guard.usage_daily (tenant_id, feature_key, day);
COMMENT ON MATERIALIZED VIEW usage_guard.usage_daily IS
    'Rollup: usage and event count per tenant, feature and UTC day; as of the last usage_guard.refresh_rollups()';

CREATE MATERIALIZED VIEW usage_guard.usage_monthly AS
SELECT tenant_id, feature_key, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
       sum(amount) AS total, count(*) AS events
  FROM usage_guard.usage_events
 GROUP BY 1, 2, 3;
CREATE UNIQUE INDEX usage_monthly_key ON usage_guard.usage_monthly (tenant_id, feature_key, month);
COMMENT ON MATERIALIZED VIEW usage_guard.usage_monthly IS
    'Rollup: usage and event count per tenant, feature and UTC calendar month; as of the last usage_guard.refresh_rollups()';

CREATE FUNCTION usage_guard.refresh_rollups(concurrently boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_concurrently ALIAS FOR $1;
BEGIN
    IF p_concurrently IS NULL THEN
        RAISE EXCEPTION 'concurrently must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_concurrently THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY usage_guard.usage_daily;
        REFRESH MATERIALIZED VIEW CONCURRENTLY usage_guard.usage_monthly;
    ELSE
        REFRESH MATERIALIZED VIEW usage_guard.usage_daily;
        REFRESH MATERIALIZED VIEW usage_guard.usage_monthly;
    END IF;
END
$$;
COMMENT ON FUNCTION usage_guard.refresh_rollups(boolean) IS
    'Refreshes usage_daily and usage_monthly from the ledger (CONCURRENTLY by default: readers are not blocked)';

-- Per active subscription and feature window: current usage against the
-- limits in force (plan, or an unexpired override), from the ledger.
CREATE VIEW usage_guard.subscription_usage AS
WITH limits AS (
    SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
           pf.feature_key, pf.period::text AS period, pf.soft_limit::numeric AS soft_limit,
           pf.hard_limit::numeric AS hard_limit, 'plan'::text AS limit_source
      FROM usage_guard.tenant_subscriptions s
      JOIN usage_guard.plan_features pf ON pf.plan_code = s.plan_code
     WHERE s.status IN ('active', 'trialing')
       AND NOT EXISTS (SELECT 1 FROM usage_guard.tenant_overrides o
                        WHERE o.tenant_id = s.tenant_id AND o.feature_key = pf.feature_key
                          AND o.period = pf.period AND (o.expires_at IS NULL OR o.expires_at > now()))
    UNION ALL
    SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
           o.feature_key, o.period::text, o.soft_limit::numeric, o.hard_limit::numeric, 'override'
      FROM usage_guard.tenant_subscriptions s
      JOIN usage_guard.tenant_overrides o ON o.tenant_id = s.tenant_id
     WHERE s.status IN ('active', 'trialing') AND (o.expires_at IS NULL OR o.expires_at > now())
)
SELECT l.tenant_id, l.plan_code, l.status, l.feature_key, f.unit, l.period,
       w.window_start, w.window_end, u.usage, l.soft_limit, l.hard_limit,
       CASE WHEN coalesce(l.hard_limit, l.soft_limit) IS NOT NULL
            THEN greatest(coalesce(l.hard_limit, l.soft_limit) - u.usage, 0) END AS remaining,
       round(100 * u.usage / nullif(coalesce(l.hard_limit, l.soft_limit), 0), 2) AS percent_used,
       l.limit_source
  FROM limits l
  JOIN usage_guard.features f ON f.feature_key = l.feature_key
 CROSS JOIN LATERAL usage_guard.window_of(l.period, now(), l.current_period_start, l.current_period_end) w
 CROSS JOIN LATERAL (SELECT coalesce(sum(e.amount), 0) AS usage
                       FROM usage_guard.usage_events e
                      WHERE e.tenant_id = l.tenant_id AND e.feature_key = l.feature_key
                        AND e.occurred_at >= w.window_start AND e.occurred_at < w.window_end) u;
COMMENT ON VIEW usage_guard.subscription_usage IS
    'Per active (or trialing) subscription, feature and limit window: committed usage in the current window, soft and hard limits in force (plan or unexpired override), remaining and percent used (of the hard limit, else the soft one)';

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
               OR v_period NOT IN ('hour', 'day', 'week', 'month', 'billing_period') THEN
                RAISE EXCEPTION 'invalid entitlements artifact at %.period: must be hour, day, week, month or billing_period', path
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

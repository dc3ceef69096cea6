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

-- A tenant's limit windows at an instant: the limits in force (plan, or an
-- unexpired override), the window of each, and committed usage in it.
CREATE FUNCTION usage_guard.limit_windows(tenant_id text, at timestamptz)
RETURNS TABLE (tenant_id text, plan_code text, status text, feature_key text, unit text,
               period text, window_start timestamptz, window_end timestamptz, usage numeric,
               soft_limit numeric, hard_limit numeric, remaining numeric, percent_used numeric,
               limit_source text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    WITH s AS (
        SELECT * FROM usage_guard.tenant_subscriptions t WHERE t.tenant_id = $1
    ), limits AS (
        SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
               pf.feature_key, pf.period::text AS period, pf.soft_limit::numeric AS soft_limit,
               pf.hard_limit::numeric AS hard_limit, 'plan'::text AS limit_source
          FROM s JOIN usage_guard.plan_features pf ON pf.plan_code = s.plan_code
         WHERE NOT EXISTS (SELECT 1 FROM usage_guard.tenant_overrides o
                            WHERE o.tenant_id = s.tenant_id AND o.feature_key = pf.feature_key
                              AND o.period = pf.period AND (o.expires_at IS NULL OR o.expires_at > $2))
        UNION ALL
        SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
               o.feature_key, o.period::text, o.soft_limit::numeric, o.hard_limit::numeric, 'override'
          FROM s JOIN usage_guard.tenant_overrides o ON o.tenant_id = s.tenant_id
         WHERE o.expires_at IS NULL OR o.expires_at > $2
    )
    SELECT l.tenant_id, l.plan_code, l.status, l.feature_key, f.unit, l.period,
           w.window_start, w.window_end, u.usage, l.soft_limit, l.hard_limit,
           CASE WHEN coalesce(l.hard_limit, l.soft_limit) IS NOT NULL
                THEN greatest(coalesce(l.hard_limit, l.soft_limit) - u.usage, 0) END,
           round(100 * u.usage / nullif(coalesce(l.hard_limit, l.soft_limit), 0), 2),
           l.limit_source
      FROM limits l
      JOIN usage_guard.features f ON f.feature_key = l.feature_key
     CROSS JOIN LATERAL usage_guard.window_of(l.period, $2, l.current_period_start, l.current_period_end) w
     CROSS JOIN LATERAL (SELECT coalesce(sum(e.amount), 0) AS usage
                           FROM usage_guard.usage_events e
                          WHERE e.tenant_id = l.tenant_id AND e.feature_key = l.feature_key
                            AND e.occurred_at >= w.window_start AND e.occurred_at < w.window_end) u;
END;
COMMENT ON FUNCTION usage_guard.limit_windows(text, timestamptz) IS
    'Internal: a tenant''s limits in force at an instant, with the window of each and its committed usage (any subscription status)';

CREATE VIEW usage_guard.subscription_usage AS
SELECT w.tenant_id, w.plan_code, w.status, w.feature_key, w.unit, w.period, w.window_start,
       w.window_end, w.usage, w.soft_limit, w.hard_limit, w.remaining, w.percent_used, w.limit_source
  FROM usage_guard.tenant_subscriptions s
 CROSS JOIN LATERAL usage_guard.limit_windows(s.tenant_id, now()) w
 WHERE s.status IN ('active', 'trialing');
COMMENT ON VIEW usage_guard.subscription_usage IS
    'Per active (or trialing) subscription, feature and limit window: committed usage in the current window, soft and hard limits in force (plan or unexpired override), remaining and percent used (of the hard limit, else the soft one)';

-- ok / approaching / soft_limit / hard_limit for a usage against its limits
CREATE FUNCTION usage_guard.limit_status(usage numeric, soft_limit numeric, hard_limit numeric,
                                         warn_threshold numeric DEFAULT 0.8)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN $3 IS NOT NULL AND $1 >= $3 THEN 'hard_limit'
    WHEN $2 IS NOT NULL AND $1 > $2 THEN 'soft_limit'
    WHEN coalesce($3, $2) IS NOT NULL AND $1 >= $4 * coalesce($3, $2) THEN 'approaching'
    ELSE 'ok' END;
COMMENT ON FUNCTION usage_guard.limit_status(numeric, numeric, numeric, numeric) IS
    'hard_limit (usage reached the hard limit), soft_limit (over the soft limit), approaching (at least warn_threshold of the limit) or ok';

CREATE FUNCTION usage_guard.usage_status(tenant_id text, at timestamptz DEFAULT now())
RETURNS TABLE (feature_key text, unit text, period text, usage numeric, soft_limit numeric,
               hard_limit numeric, remaining numeric, percent_used numeric, status text,
               window_start timestamptz, window_end timestamptz, resets_at timestamptz,
               limit_source text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
    v_status text;
    v_plan   text;
BEGIN
    IF p_tenant IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'tenant_id and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT s.status, s.plan_code INTO v_status, v_plan
      FROM usage_guard.tenant_subscriptions s WHERE s.tenant_id = p_tenant;
    IF NOT FOUND OR v_status NOT IN ('active', 'trialing') THEN
        RAISE EXCEPTION 'tenant "%" has no active subscription', p_tenant
            USING ERRCODE = 'UG003',
                  DETAIL = jsonb_build_object('code', 'usage_policy_configuration_error',
                                              'reason', CASE WHEN v_status IS NULL THEN 'no_subscription' ELSE 'subscription_inactive' END,
                                              'tenant_id', p_tenant, 'plan_code', v_plan, 'status', v_status)::text,
                  HINT = 'Only an active or trialing subscription has usage limits.';
    END IF;
    RETURN QUERY
    SELECT w.feature_key, w.unit, w.period, w.usage, w.soft_limit, w.hard_limit, w.remaining,
           w.percent_used, usage_guard.limit_status(w.usage, w.soft_limit, w.hard_limit),
           w.window_start, w.window_end, w.window_end, w.limit_source
      FROM usage_guard.limit_windows(p_tenant, p_at) w
     ORDER BY w.feature_key, w.window_end - w.window_start, w.period;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_status(text, timestamptz) IS
    'Every limited window of a tenant''s features at an instant: committed usage, limits, remaining, status and when the window resets; UG003 without an active subscription';

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

-- Reports over any period: per subscribed tenant and feature of its plan
-- (or overrides), the period's committed usage against the limit of the
-- feature's longest window.
CREATE FUNCTION usage_guard.usage_report_rows(
    in_tenant_id text, in_plan_code text, in_period_start timestamptz,
    in_period_end timestamptz, in_features text[], in_warn_threshold numeric)
RETURNS TABLE (tenant_id text, plan_code text, feature_key text, unit text,
               period_start timestamptz, period_end timestamptz, usage numeric, events bigint,
               limit_period text, soft_limit numeric, hard_limit numeric, remaining numeric,
               percent_used numeric, status text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant   ALIAS FOR $1;
    p_plan     ALIAS FOR $2;
    p_start    ALIAS FOR $3;
    p_end      ALIAS FOR $4;
    p_features ALIAS FOR $5;
    p_warn     ALIAS FOR $6;
BEGIN
    IF p_start IS NULL OR p_end IS NULL THEN
        RAISE EXCEPTION 'period_start and period_end are required'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'e.g. usage_report(period_start => ''2025-11-01'', period_end => ''2025-12-01'')';
    END IF;
    IF NOT isfinite(p_start) OR NOT isfinite(p_end) OR p_start >= p_end THEN
        RAISE EXCEPTION 'the report period must be finite with period_start before period_end'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_warn IS NULL OR p_warn <= 0 OR p_warn > 1 THEN
        RAISE EXCEPTION 'warn_threshold must be in (0, 1]' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM usage_guard.plans p WHERE p.plan_code = p_plan) THEN
        RAISE EXCEPTION 'plan "%" does not exist', p_plan USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY
    WITH subs AS (
        SELECT s.tenant_id, s.plan_code FROM usage_guard.tenant_subscriptions s
         WHERE (p_tenant IS NULL OR s.tenant_id = p_tenant)
           AND (p_plan IS NULL OR s.plan_code = p_plan)
    ), lim AS (
        -- the limits in force at the end of the period, longest window per feature
        SELECT DISTINCT ON (w.tenant_id, w.feature_key)
               w.tenant_id, w.feature_key, w.unit, w.period, w.soft_limit, w.hard_limit
          FROM subs, LATERAL usage_guard.limit_windows(subs.tenant_id, p_end - interval '1 microsecond') w
         WHERE p_features IS NULL OR w.feature_key = ANY (p_features)
         ORDER BY w.tenant_id, w.feature_key, w.window_end - w.window_start DESC
    )
    SELECT subs.tenant_id, subs.plan_code, lim.feature_key, lim.unit, p_start, p_end,
           u.usage, u.events, lim.period, lim.soft_limit, lim.hard_limit,
           CASE WHEN coalesce(lim.hard_limit, lim.soft_limit) IS NOT NULL
                THEN greatest(coalesce(lim.hard_limit, lim.soft_limit) - u.usage, 0) END,
           round(100 * u.usage / nullif(coalesce(lim.hard_limit, lim.soft_limit), 0), 2),
           usage_guard.limit_status(u.usage, lim.soft_limit, lim.hard_limit, p_warn)
      FROM subs
      JOIN lim ON lim.tenant_id = subs.tenant_id
     CROSS JOIN LATERAL (SELECT coalesce(sum(e.amount), 0) AS usage, count(*) AS events
                           FROM usage_guard.usage_events e
                          WHERE e.tenant_id = subs.tenant_id AND e.feature_key = lim.feature_key
                            AND e.occurred_at >= p_start AND e.occurred_at < p_end) u
     ORDER BY 1, 3;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric) IS
    'Internal: the body of usage_guard.usage_report';

CREATE FUNCTION usage_guard.usage_report(
    tenant_id      text DEFAULT NULL,
    plan_code      text DEFAULT NULL,
    period_start   timestamptz DEFAULT NULL,
    period_end     timestamptz DEFAULT NULL,
    features       text[] DEFAULT NULL,
    warn_threshold numeric DEFAULT 0.8)
RETURNS TABLE (tenant_id text, plan_code text, feature_key text, unit text,
               period_start timestamptz, period_end timestamptz, usage numeric, events bigint,
               limit_period text, soft_limit numeric, hard_limit numeric, remaining numeric,
               percent_used numeric, status text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM usage_guard.usage_report_rows($1, $2, $3, $4, $5, $6);
END;
COMMENT ON FUNCTION usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric) IS
    'Usage report over [period_start, period_end) per subscribed tenant and limited feature: usage, events, the limits of the feature''s longest window in force at the end of the period, remaining, percent and status (ok, approaching, soft_limit, hard_limit). CSV: COPY (SELECT * FROM usage_guard.usage_report(...)) TO STDOUT WITH CSV HEADER';

CREATE FUNCTION usage_guard.usage_report_json(
    tenant_id      text DEFAULT NULL,
    plan_code      text DEFAULT NULL,
    period_start   timestamptz DEFAULT NULL,
    period_end     timestamptz DEFAULT NULL,
    features       text[] DEFAULT NULL,
    warn_threshold numeric DEFAULT 0.8)
RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT jsonb_build_object(
               'generated_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'period_start', to_char($3 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'period_end', to_char($4 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'tenant_id', $1, 'plan_code', $2, 'features', to_jsonb($5),
               'warn_threshold', $6,
               'rows', coalesce(jsonb_agg(to_jsonb(r) - 'period_start' - 'period_end'
                                          ORDER BY r.tenant_id, r.feature_key), '[]'::jsonb))
      FROM usage_guard.usage_report($1, $2, $3, $4, $5, $6) r;
END;
COMMENT ON FUNCTION usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric) IS
    'usage_report as one JSON document (the dashboard artifact): period, filters and rows';

CREATE FUNCTION usage_guard.top_consumers(feature_key text, since interval DEFAULT '1 day', n integer DEFAULT 10)
RETURNS TABLE (rank bigint, tenant_id text, plan_code text, usage numeric, events bigint, share numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_feature ALIAS FOR $1;
    p_since   ALIAS FOR $2;
    p_n       ALIAS FOR $3;
BEGIN
    IF p_feature IS NULL OR p_since IS NULL OR p_n IS NULL THEN
        RAISE EXCEPTION 'feature_key, since and n must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = p_feature) THEN
        RAISE EXCEPTION 'unknown feature "%"', p_feature USING ERRCODE = 'undefined_object';
    END IF;
    IF p_since <= interval '0' OR p_n < 1 OR p_n > 10000 THEN
        RAISE EXCEPTION 'since must be positive and n between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH u AS (
        SELECT e.tenant_id, sum(e.amount) AS usage, count(*) AS events
          FROM usage_guard.usage_events e
         WHERE e.feature_key = p_feature AND e.occurred_at >= now() - p_since AND e.occurred_at < now()
         GROUP BY e.tenant_id
    )
    SELECT row_number() OVER (ORDER BY u.usage DESC, u.tenant_id), u.tenant_id, s.plan_code, u.usage, u.events,
           round(u.usage / nullif(sum(u.usage) OVER (), 0), 4)
      FROM u LEFT JOIN usage_guard.tenant_subscriptions s ON s.tenant_id = u.tenant_id
     ORDER BY u.usage DESC, u.tenant_id
     LIMIT p_n;
END
$$;
COMMENT ON FUNCTION usage_guard.top_consumers(text, interval, integer) IS
    'The n tenants that used the most of a feature in the last `since`, with their share of the total';

CREATE FUNCTION usage_guard.usage_anomalies_rows(
    in_feature_key text, in_recent interval, in_factor numeric, in_min_usage numeric, in_at timestamptz)
RETURNS TABLE (tenant_id text, feature_key text, recent_usage numeric, baseline_usage numeric, ratio numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_feature ALIAS FOR $1;
    p_recent  ALIAS FOR $2;
    p_factor  ALIAS FOR $3;
    p_min     ALIAS FOR $4;
    p_at      ALIAS FOR $5;
BEGIN
    IF p_recent IS NULL OR p_factor IS NULL OR p_min IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'recent, factor, min_usage and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_recent <= interval '0' OR p_recent > interval '1 day' OR p_factor <= 0 THEN
        RAISE EXCEPTION 'recent must be in (0, 1 day] and factor positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT e.tenant_id, e.feature_key, sum(e.amount) AS recent_usage
          FROM usage_guard.usage_events e
         WHERE (p_feature IS NULL OR e.feature_key = p_feature)
           AND e.occurred_at >= p_at - p_recent AND e.occurred_at < p_at
         GROUP BY 1, 2
    ), b AS (
        SELECT e.tenant_id, e.feature_key, sum(e.amount) AS baseline_usage
          FROM usage_guard.usage_events e
         WHERE (p_feature IS NULL OR e.feature_key = p_feature)
           AND e.occurred_at >= p_at - interval '1 day' - p_recent AND e.occurred_at < p_at - interval '1 day'
         GROUP BY 1, 2
    )
    SELECT r.tenant_id, r.feature_key, r.recent_usage, coalesce(b.baseline_usage, 0),
           round(r.recent_usage / nullif(b.baseline_usage, 0), 2)
      FROM r LEFT JOIN b USING (tenant_id, feature_key)
     WHERE r.recent_usage >= p_min
       AND r.recent_usage > p_factor * coalesce(b.baseline_usage, 0)
     ORDER BY r.recent_usage / nullif(b.baseline_usage, 0) DESC NULLS FIRST, r.recent_usage DESC;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz) IS
    'Internal: the body of usage_guard.usage_anomalies';

CREATE FUNCTION usage_guard.usage_anomalies(
    feature_key text DEFAULT NULL,
    recent      interval DEFAULT '1 hour',
    factor      numeric DEFAULT 3,
    min_usage   numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS TABLE (tenant_id text, feature_key text, recent_usage numeric, baseline_usage numeric, ratio numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM usage_guard.usage_anomalies_rows($1, $2, $3, $4, $5);
END;
COMMENT ON FUNCTION usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz) IS
    'Tenants whose usage in the last `recent` is more than factor times their usage in the same span a day earlier (and at least min_usage); ratio NULL = nothing a day earlier';

-- An admin reset is a ledger row, never a deletion: it cancels the usage of
-- the chosen window (default: the feature's shortest limited window).
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
                  HINT = 'It is kept in the ledger row''s attributes, with who reset and which window.';
    END IF;
    IF p_period IS NOT NULL AND p_period NOT IN ('hour', 'day', 'week', 'month', 'billing_period') THEN
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
         ORDER BY lw.feature_key, lw.window_end - lw.window_start
    LOOP
        IF w.usage <> 0 THEN
            INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at, kind, attributes)
            VALUES (p_tenant, w.feature_key, -w.usage, p_at, 'adjustment',
                    jsonb_build_object('reset', true, 'reason', p_reason, 'by', session_user,
                                       'period', w.period, 'window_start', w.window_start,
                                       'window_end', w.window_end));
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
BEGIN ATOMIC
    SELECT * FROM usage_guard.reset_usage_rows($1, $2, $3, $4, $5);
END;
COMMENT ON FUNCTION usage_guard.reset_usage(text, text, text, text, timestamptz) IS
    'Admin reset: cancels a tenant''s usage in the current window of a period (default: each feature''s shortest limited window) with an adjustment row in the ledger recording reason, user and window; history is never deleted';

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

-- usage_check (no side effects) is counted in usage_guard_checks_total, not
-- in decisions and limit hits: read-only polling must not fire the
-- hard-limit flood alert.
COMMENT ON FUNCTION usage_guard.metrics() IS
    'Metrics of this database as rows: usage_guard_decisions_total{decision,plan_code} (enforcing calls), usage_guard_checks_total{decision,plan_code} (usage_check), usage_guard_limit_hits_total{plan_code,limit_type,feature_key} (enforcing calls), usage_guard_policy_errors_total{reason,plan_code}, usage_guard_decision_duration_seconds (histogram, whole server), usage_guard_metrics_dropped_total; empty without shared_preload_libraries';
CREATE OR REPLACE FUNCTION usage_guard.metrics_text()
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
                'Enforcing evaluations (usage_consume, usage_enforce, metered INSERT) by decision and plan.'),
               ('usage_guard_checks_total', 'counter',
                'Side-effect-free checks (usage_check) by decision and plan; not in decisions or limit hits.'),
               ('usage_guard_limit_hits_total', 'counter',
                'Soft and hard limit hits of enforcing evaluations by plan, limit type and feature.'),
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

-- usage_anomalies takes the baseline span apart from the recent one (seed
-- 003: the last 5 minutes against the hourly rate a day earlier) and
-- compares rates; with the defaults it is the same as before.
DROP FUNCTION usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz);
DROP FUNCTION usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz);
CREATE FUNCTION usage_guard.usage_anomalies_rows(
    in_feature_key text, in_recent interval, in_factor numeric, in_min_usage numeric,
    in_at timestamptz, in_baseline interval, in_baseline_offset interval)
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
    p_base    interval := coalesce($6, $2);
    p_offset  ALIAS FOR $7;
    -- baseline usage scaled to the recent span: compares rates, not totals
    p_scale   numeric;
BEGIN
    IF p_recent IS NULL OR p_factor IS NULL OR p_min IS NULL OR p_at IS NULL OR p_offset IS NULL THEN
        RAISE EXCEPTION 'recent, factor, min_usage, at and baseline_offset must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_recent <= interval '0' OR p_base <= interval '0' OR p_factor <= 0 THEN
        RAISE EXCEPTION 'recent and baseline must be positive and factor positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_offset < p_recent THEN
        RAISE EXCEPTION 'baseline_offset must be at least recent'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The baseline ends baseline_offset before at; it must not overlap the recent span.';
    END IF;
    p_scale := extract(epoch FROM p_recent) / extract(epoch FROM p_base);
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
           AND e.occurred_at >= p_at - p_offset - p_base AND e.occurred_at < p_at - p_offset
         GROUP BY 1, 2
    )
    SELECT r.tenant_id, r.feature_key, r.recent_usage, coalesce(b.baseline_usage, 0),
           round(r.recent_usage / nullif(b.baseline_usage * p_scale, 0), 2)
      FROM r LEFT JOIN b USING (tenant_id, feature_key)
     WHERE r.recent_usage >= p_min
       AND r.recent_usage > p_factor * coalesce(b.baseline_usage * p_scale, 0)
     ORDER BY r.recent_usage / nullif(b.baseline_usage * p_scale, 0) DESC NULLS FIRST, r.recent_usage DESC;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz, interval, interval) IS
    'Internal: the body of usage_guard.usage_anomalies';

CREATE FUNCTION usage_guard.usage_anomalies(
    feature_key     text DEFAULT NULL,
    recent          interval DEFAULT '1 hour',
    factor          numeric DEFAULT 3,
    min_usage       numeric DEFAULT 1,
    at              timestamptz DEFAULT now(),
    baseline        interval DEFAULT NULL,
    baseline_offset interval DEFAULT '1 day')
RETURNS TABLE (tenant_id text, feature_key text, recent_usage numeric, baseline_usage numeric, ratio numeric)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM usage_guard.usage_anomalies_rows($1, $2, $3, $4, $5, $6, $7);
END;
COMMENT ON FUNCTION usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz, interval, interval) IS
    'Tenants whose usage rate in the last `recent` is more than factor times their rate over `baseline` (default: the same span) ending baseline_offset (default 1 day) before at, and at least min_usage; baseline_usage is the baseline span''s total, ratio the ratio of rates (NULL = no baseline usage)';
REVOKE ALL ON FUNCTION
    usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz, interval, interval),
    usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz, interval, interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz, interval, interval),
    usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz, interval, interval)
    TO usage_guard_reader;

-- Every UG003 has one shape: usage_status raises it through the same C code
-- as the decisions (its DETAIL had no feature_key and other spacing).
CREATE FUNCTION usage_guard.raise_policy_error(
    tenant_id   text,
    feature_key text,
    plan_code   text,
    status      text)
RETURNS void
AS 'MODULE_PATHNAME', 'usage_guard_raise_policy_error'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION usage_guard.raise_policy_error(text, text, text, text) IS
    'Internal: raises usage_policy_configuration_error (UG003) for a tenant as the decision functions do; plan_code NULL = no subscription';
CREATE OR REPLACE FUNCTION usage_guard.usage_status(tenant_id text, at timestamptz DEFAULT now())
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
        PERFORM usage_guard.raise_policy_error(p_tenant, NULL, v_plan, v_status);
    END IF;
    RETURN QUERY
    SELECT w.feature_key, w.unit, w.period, w.usage, w.soft_limit, w.hard_limit, w.remaining,
           w.percent_used, usage_guard.limit_status(w.usage, w.soft_limit, w.hard_limit),
           w.window_start, w.window_end, w.window_end, w.limit_source
      FROM usage_guard.limit_windows(p_tenant, p_at) w
     ORDER BY w.feature_key, w.window_end - w.window_start, w.period;
END
$$;
REVOKE ALL ON FUNCTION usage_guard.raise_policy_error(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.raise_policy_error(text, text, text, text) TO usage_guard_reader;

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
REVOKE ALL ON FUNCTION usage_guard.entitlements_artifact(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.entitlements_artifact(text[]) TO usage_guard_reader;

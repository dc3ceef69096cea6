-- usage_guard 0.4.0 -> 0.5.0: seed parity (what replaying the source
-- runbooks found).  Every change here is also in sql/src, which holds the
-- current definition of every object; the upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.5.0'" to load this file. \quit

-- Lifetime limits (seed 004's storage): a window that never resets.
ALTER DOMAIN usage_guard.period_kind DROP CONSTRAINT period_kind_valid;
ALTER DOMAIN usage_guard.period_kind ADD CONSTRAINT period_kind_valid
    CHECK (VALUE IN ('hour', 'day', 'week', 'month', 'billing_period', 'lifetime'));
COMMENT ON DOMAIN usage_guard.period_kind IS
    'Limit window: hour, day, week, month (UTC calendar, [start, end)), billing_period (the subscription''s own period) or lifetime (never resets; lowered only by adjustments)';
-- Windows sort by length; a lifetime window is (-infinity, infinity), whose
-- length PostgreSQL cannot subtract: it sorts last.
CREATE FUNCTION usage_guard.window_length(window_start timestamptz, window_end timestamptz)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN isfinite($1) AND isfinite($2) THEN $2 - $1 ELSE interval '1000000 years' END;
COMMENT ON FUNCTION usage_guard.window_length(timestamptz, timestamptz) IS
    'Internal: the length of a window for sorting; a lifetime window sorts after every other';
REVOKE ALL ON FUNCTION usage_guard.window_length(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.window_length(timestamptz, timestamptz) TO usage_guard_reader;

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
    IF NOT FOUND THEN
        SELECT 'active', p.plan_code INTO v_status, v_plan FROM usage_guard.plans p WHERE p.is_default;
    END IF;
    IF NOT FOUND OR v_status NOT IN ('active', 'trialing') THEN
        PERFORM usage_guard.raise_policy_error(p_tenant, NULL, v_plan, v_status);
    END IF;
    RETURN QUERY
    SELECT w.feature_key, w.unit, w.period, w.usage, w.soft_limit, w.hard_limit, w.remaining,
           w.percent_used, usage_guard.limit_status(w.usage, w.soft_limit, w.hard_limit),
           w.window_start, w.window_end, w.window_end, w.limit_source
      FROM usage_guard.limit_windows(p_tenant, p_at) w
     ORDER BY w.feature_key, usage_guard.window_length(w.window_start, w.window_end), w.period;
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

-- Reports judge each limit against its own windows (a daily limit day by
-- day, not against the month's total): one row per limit window kind, with
-- the peak window and how many windows passed the soft limit or reached the
-- hard one.  The row type changes, so the three functions are re-created.
DROP FUNCTION usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric);
DROP FUNCTION usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric);
DROP FUNCTION usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric);
-- Reports over any period: per subscribed tenant, feature and limit window
-- kind (plan or override, in force at the end of the period), the period's
-- committed usage, and the limit judged against its own windows: every
-- window of that kind overlapping the period, each with its whole usage (a
-- daily limit is judged day by day, never against the month's total).
CREATE FUNCTION usage_guard.usage_report_rows(
    in_tenant_id text, in_plan_code text, in_period_start timestamptz,
    in_period_end timestamptz, in_features text[], in_warn_threshold numeric)
RETURNS TABLE (tenant_id text, plan_code text, feature_key text, unit text,
               period_start timestamptz, period_end timestamptz, usage numeric, events bigint,
               limit_period text, soft_limit numeric, hard_limit numeric,
               peak_usage numeric, peak_window_start timestamptz, peak_window_end timestamptz,
               windows_over_soft bigint, windows_at_hard bigint,
               remaining numeric, percent_used numeric, status text)
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
        SELECT s.tenant_id, s.plan_code, s.current_period_start AS cps, s.current_period_end AS cpe
          FROM usage_guard.tenant_subscriptions s
         WHERE (p_tenant IS NULL OR s.tenant_id = p_tenant)
           AND (p_plan IS NULL OR s.plan_code = p_plan)
    ), lim AS (
        -- the limits in force at the end of the period, one row per window kind,
        -- and the span from the first window overlapping the period to the last
        SELECT w.tenant_id, subs.plan_code, subs.cps, subs.cpe, w.feature_key, w.unit, w.period,
               w.soft_limit, w.hard_limit, usage_guard.window_length(w.window_start, w.window_end) AS length,
               (usage_guard.window_of(w.period, p_start, subs.cps, subs.cpe)).window_start AS first_start,
               (usage_guard.window_of(w.period, p_end - interval '1 microsecond', subs.cps, subs.cpe)).window_end AS last_end
          FROM subs, LATERAL usage_guard.limit_windows(subs.tenant_id, p_end - interval '1 microsecond') w
         WHERE p_features IS NULL OR w.feature_key = ANY (p_features)
    )
    SELECT l.tenant_id, l.plan_code, l.feature_key, l.unit, p_start, p_end,
           t.usage, t.events, l.period, l.soft_limit, l.hard_limit,
           pk.peak_usage, pk.peak_start, pk.peak_end, pk.over_soft, pk.at_hard,
           CASE WHEN coalesce(l.hard_limit, l.soft_limit) IS NOT NULL
                THEN greatest(coalesce(l.hard_limit, l.soft_limit) - pk.peak_usage, 0) END,
           round(100 * pk.peak_usage / nullif(coalesce(l.hard_limit, l.soft_limit), 0), 2),
           usage_guard.limit_status(pk.peak_usage, l.soft_limit, l.hard_limit, p_warn)
      FROM lim l
     CROSS JOIN LATERAL (SELECT coalesce(sum(e.amount), 0) AS usage, count(*) AS events
                           FROM usage_guard.usage_events e
                          WHERE e.tenant_id = l.tenant_id AND e.feature_key = l.feature_key
                            AND e.occurred_at >= p_start AND e.occurred_at < p_end) t
     CROSS JOIN LATERAL (
            SELECT coalesce(max(wu.u), 0) AS peak_usage,
                   (array_agg(wu.ws ORDER BY wu.u DESC, wu.ws))[1] AS peak_start,
                   (array_agg(wu.we ORDER BY wu.u DESC, wu.ws))[1] AS peak_end,
                   count(*) FILTER (WHERE wu.u > l.soft_limit) AS over_soft,
                   count(*) FILTER (WHERE wu.u >= l.hard_limit) AS at_hard
              FROM (SELECT w.window_start AS ws, w.window_end AS we, sum(e.amount) AS u
                      FROM usage_guard.usage_events e
                     CROSS JOIN LATERAL usage_guard.window_of(l.period, e.occurred_at, l.cps, l.cpe) w
                     WHERE e.tenant_id = l.tenant_id AND e.feature_key = l.feature_key
                       AND e.occurred_at >= l.first_start AND e.occurred_at < l.last_end
                     GROUP BY 1, 2) wu) pk
     ORDER BY 1, 3, l.length, 9;
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
               limit_period text, soft_limit numeric, hard_limit numeric,
               peak_usage numeric, peak_window_start timestamptz, peak_window_end timestamptz,
               windows_over_soft bigint, windows_at_hard bigint,
               remaining numeric, percent_used numeric, status text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM usage_guard.usage_report_rows($1, $2, $3, $4, $5, $6);
END;
COMMENT ON FUNCTION usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric) IS
    'Usage report over [period_start, period_end), one row per subscribed tenant, feature and limit window kind in force at the end of the period: usage and events in the period; each limit judged against its own windows overlapping the period (each window''s whole usage): peak_usage and its window, windows_over_soft, windows_at_hard; remaining, percent_used and status (ok, approaching, soft_limit, hard_limit) of the peak window. CSV: COPY (SELECT * FROM usage_guard.usage_report(...)) TO STDOUT WITH CSV HEADER';

CREATE FUNCTION usage_guard.usage_report_json(
    tenant_id      text DEFAULT NULL,
    plan_code      text DEFAULT NULL,
    period_start   timestamptz DEFAULT NULL,
    period_end     timestamptz DEFAULT NULL,
    features       text[] DEFAULT NULL,
    warn_threshold numeric DEFAULT 0.8)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT jsonb_build_object(
               'generated_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'period_start', to_char($3 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'period_end', to_char($4 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'tenant_id', $1, 'plan_code', $2, 'features', to_jsonb($5),
               'warn_threshold', $6,
               'rows', coalesce(jsonb_agg(to_jsonb(r) - 'period_start' - 'period_end' - 'ordinality'
                                          || jsonb_build_object(
                                                 'peak_window_start', to_char(r.peak_window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                                                 'peak_window_end', to_char(r.peak_window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                                          ORDER BY r.ordinality), '[]'::jsonb))
      FROM usage_guard.usage_report($1, $2, $3, $4, $5, $6) WITH ORDINALITY AS r;
END;
COMMENT ON FUNCTION usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric) IS
    'usage_report as one JSON document (the dashboard artifact): period, filters and rows';

REVOKE ALL ON FUNCTION
    usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric)
    TO usage_guard_reader;

-- Lifetime is a period name sync_entitlements and reset_usage accept.
CREATE OR REPLACE FUNCTION usage_guard.reset_usage_rows(
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
CREATE OR REPLACE FUNCTION usage_guard.sync_entitlements(
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

-- Plans: unlimited_by_default (seed 004's enterprise tier: every feature
-- unlimited unless limited, so a feature added later is not refused) and
-- is_default (seed 004: new users start on free; tenants without a
-- subscription row are decided by it instead of UG003, when set).
ALTER TABLE usage_guard.plans
    ADD COLUMN unlimited_by_default boolean NOT NULL DEFAULT false,
    ADD COLUMN is_default boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN usage_guard.plans.unlimited_by_default IS
    'Features this plan does not list are unlimited (instead of not included): an enterprise tier where every feature, even one added later, is unlimited unless limited';
COMMENT ON COLUMN usage_guard.plans.is_default IS
    'The plan of tenants without a subscription row (at most one plan): decided as active, billing periods are calendar months; false everywhere = such tenants get usage_policy_configuration_error';
CREATE UNIQUE INDEX plans_one_default ON usage_guard.plans ((true)) WHERE is_default;
CREATE OR REPLACE FUNCTION usage_guard.limit_windows(tenant_id text, at timestamptz)
RETURNS TABLE (tenant_id text, plan_code text, status text, feature_key text, unit text,
               period text, window_start timestamptz, window_end timestamptz, usage numeric,
               soft_limit numeric, hard_limit numeric, remaining numeric, percent_used numeric,
               limit_source text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH s AS (
        SELECT t.tenant_id, t.plan_code, t.status, t.current_period_start, t.current_period_end
          FROM usage_guard.tenant_subscriptions t WHERE t.tenant_id = $1
        UNION ALL
        -- no subscription row: the default plan, if any (as the decisions do)
        SELECT $1, p.plan_code, 'active', '2000-01-01 00:00:00+00'::timestamptz, NULL
          FROM usage_guard.plans p
         WHERE p.is_default
           AND NOT EXISTS (SELECT 1 FROM usage_guard.tenant_subscriptions t WHERE t.tenant_id = $1)
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

-- usage_guard reports: the ledger read for people.
--
-- Owns totals over any window (get_usage_totals), the rollups (usage_daily,
-- usage_monthly, refresh_rollups), a tenant's limit windows (limit_windows,
-- the subscription_usage view, limit_status, usage_status) and the reports
-- (usage_report, usage_report_json, top_consumers, usage_anomalies and the
-- _rows functions that are their bodies).
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql in the order
-- catalog, ledger, decisions, counters, reports, operations: every file
-- uses only objects of the files before it.

--------------------------------------------------------------------------
-- Totals over any window
--------------------------------------------------------------------------

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

--------------------------------------------------------------------------
-- Rollups
--------------------------------------------------------------------------

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

-- SECURITY DEFINER: REFRESH needs the views' owner, and admins (and the
-- pg_cron job an admin schedules) are not it.
CREATE FUNCTION usage_guard.refresh_rollups(concurrently boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
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

--------------------------------------------------------------------------
-- Limit windows and status
--------------------------------------------------------------------------

-- A tenant's limits at an instant from the catalog alone: the limits in
-- force (plan, or an unexpired override) and the window of each.  Only
-- catalog tables, which are reference tables on Citus, so it runs on any
-- node; the ledger sums over these windows are the callers'.
CREATE FUNCTION usage_guard.limits_in_force(in_tenant_id text, in_at timestamptz)
RETURNS TABLE (tenant_id text, plan_code text, status text, feature_key text, unit text,
               period text, window_start timestamptz, window_end timestamptz,
               soft_limit numeric, hard_limit numeric, limit_source text,
               current_period_start timestamptz, current_period_end timestamptz)
LANGUAGE plpgsql STABLE ROWS 4
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
BEGIN
    RETURN QUERY
    WITH s AS (
        SELECT t.tenant_id, t.plan_code, t.status, t.current_period_start, t.current_period_end
          FROM usage_guard.tenant_subscriptions t WHERE t.tenant_id = p_tenant
        UNION ALL
        -- no subscription row: the default plan, if any (as the decisions do)
        SELECT p_tenant, p.plan_code, 'active', '2000-01-01 00:00:00+00'::timestamptz, NULL
          FROM usage_guard.plans p
         WHERE p.is_default
           AND NOT EXISTS (SELECT 1 FROM usage_guard.tenant_subscriptions t WHERE t.tenant_id = p_tenant)
    ), limits AS (
        SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
               pf.feature_key, pf.period::text AS period, pf.soft_limit::numeric AS soft_limit,
               pf.hard_limit::numeric AS hard_limit, 'plan'::text AS limit_source
          FROM s JOIN usage_guard.plan_features pf ON pf.plan_code = s.plan_code
         WHERE NOT EXISTS (SELECT 1 FROM usage_guard.tenant_overrides o
                            WHERE o.tenant_id = s.tenant_id AND o.feature_key = pf.feature_key
                              AND o.period = pf.period AND (o.expires_at IS NULL OR o.expires_at > p_at))
        UNION ALL
        SELECT s.tenant_id, s.plan_code, s.status, s.current_period_start, s.current_period_end,
               o.feature_key, o.period::text, o.soft_limit::numeric, o.hard_limit::numeric, 'override'
          FROM s JOIN usage_guard.tenant_overrides o ON o.tenant_id = s.tenant_id
         WHERE o.expires_at IS NULL OR o.expires_at > p_at
    )
    SELECT l.tenant_id, l.plan_code, l.status, l.feature_key, f.unit, l.period,
           w.window_start, w.window_end, l.soft_limit, l.hard_limit, l.limit_source,
           l.current_period_start, l.current_period_end
      FROM limits l
      JOIN usage_guard.features f ON f.feature_key = l.feature_key
     CROSS JOIN LATERAL usage_guard.window_of(l.period, p_at, l.current_period_start, l.current_period_end) w;
END
$$;
COMMENT ON FUNCTION usage_guard.limits_in_force(text, timestamptz) IS
    'Internal: a tenant''s limits in force at an instant and the window of each, from the catalog alone (any subscription status)';

-- The same limits with each window's committed usage.  PL/pgSQL, the limits
-- read first and then each window's sum by a query filtered by the tenant
-- argument itself: on Citus the limits come from the reference tables where
-- the call runs and each sum is one task on the tenant's worker (Citus can
-- plan neither a SQL function's parameters nor a ledger sum correlated with
-- catalog rows, and a worker may not call back into distributed tables).
CREATE FUNCTION usage_guard.limit_windows_rows(in_tenant_id text, in_at timestamptz)
RETURNS TABLE (tenant_id text, plan_code text, status text, feature_key text, unit text,
               period text, window_start timestamptz, window_end timestamptz, usage numeric,
               soft_limit numeric, hard_limit numeric, remaining numeric, percent_used numeric,
               limit_source text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
    l record;
BEGIN
    FOR l IN SELECT * FROM usage_guard.limits_in_force(p_tenant, p_at) LOOP
        SELECT coalesce((SELECT sum(e.amount)
                           FROM usage_guard.usage_events e
                          WHERE e.tenant_id = p_tenant AND e.feature_key = l.feature_key
                            AND e.occurred_at >= l.window_start AND e.occurred_at < l.window_end), 0)
               -- resets of exactly this window, as the decisions count them
               + coalesce((SELECT sum(r.amount)
                             FROM usage_guard.usage_resets r
                            WHERE r.tenant_id = p_tenant AND r.feature_key = l.feature_key
                              AND r.window_start = l.window_start AND r.window_end = l.window_end), 0)
          INTO usage;
        tenant_id := l.tenant_id; plan_code := l.plan_code; status := l.status;
        feature_key := l.feature_key; unit := l.unit; period := l.period;
        window_start := l.window_start; window_end := l.window_end;
        soft_limit := l.soft_limit; hard_limit := l.hard_limit; limit_source := l.limit_source;
        remaining := CASE WHEN coalesce(l.hard_limit, l.soft_limit) IS NOT NULL
                          THEN greatest(coalesce(l.hard_limit, l.soft_limit) - usage, 0) END;
        percent_used := round(100 * usage / nullif(coalesce(l.hard_limit, l.soft_limit), 0), 2);
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION usage_guard.limit_windows_rows(text, timestamptz) IS
    'Internal: the body of usage_guard.limit_windows';

-- A tenant's limit windows at an instant with their committed usage.
CREATE FUNCTION usage_guard.limit_windows(tenant_id text, at timestamptz)
RETURNS TABLE (tenant_id text, plan_code text, status text, feature_key text, unit text,
               period text, window_start timestamptz, window_end timestamptz, usage numeric,
               soft_limit numeric, hard_limit numeric, remaining numeric, percent_used numeric,
               limit_source text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM usage_guard.limit_windows_rows($1, $2);
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
SET search_path = pg_catalog, pg_temp
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
               limit_source text, plan_code text)
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
           w.window_start, w.window_end, w.window_end, w.limit_source, v_plan
      FROM usage_guard.limit_windows(p_tenant, p_at) w
     ORDER BY w.feature_key, usage_guard.window_length(w.window_start, w.window_end), w.period;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_status(text, timestamptz) IS
    'Every limited window of a tenant''s features at an instant: committed usage, limits, remaining, status, when the window resets, and the tenant''s plan (its tier); UG003 without an active subscription';

--------------------------------------------------------------------------
-- Reports
--------------------------------------------------------------------------

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
    -- Each part is one set query, and the ledger is read only joined to the
    -- limits (never per limit row): on Citus each part is planned as its own
    -- step, the limits from the reference tables where the call runs and the
    -- ledger sums pushed down to the workers.  The ledger reads are filtered
    -- by the join alone, never by the tenant argument: that would let Citus
    -- route the whole query to one worker, limits_in_force too, and a worker
    -- may not call back into distributed tables.
    RETURN QUERY
    WITH lim AS MATERIALIZED (
        -- the limits in force at the end of the period, one row per window kind,
        -- and the span from the first window overlapping the period to the last
        SELECT w.tenant_id, w.plan_code, w.current_period_start AS cps, w.current_period_end AS cpe,
               w.feature_key, w.unit, w.period, w.soft_limit, w.hard_limit,
               usage_guard.window_length(w.window_start, w.window_end) AS length,
               (usage_guard.window_of(w.period, p_start, w.current_period_start, w.current_period_end)).window_start AS first_start,
               (usage_guard.window_of(w.period, p_end - interval '1 microsecond', w.current_period_start, w.current_period_end)).window_end AS last_end
          FROM usage_guard.tenant_subscriptions s
         CROSS JOIN LATERAL usage_guard.limits_in_force(s.tenant_id, p_end - interval '1 microsecond') w
         WHERE (p_tenant IS NULL OR s.tenant_id = p_tenant)
           AND (p_plan IS NULL OR s.plan_code = p_plan)
           AND (p_features IS NULL OR w.feature_key = ANY (p_features))
    ), totals AS MATERIALIZED (
        -- the period's usage and events of each limited feature
        SELECT e.tenant_id, e.feature_key, sum(e.amount) AS usage, count(*) AS events
          FROM usage_guard.usage_events e
          JOIN (SELECT DISTINCT l.tenant_id, l.feature_key FROM lim l) k
            ON k.tenant_id = e.tenant_id AND k.feature_key = e.feature_key
         WHERE e.occurred_at >= p_start AND e.occurred_at < p_end
         GROUP BY e.tenant_id, e.feature_key
    ), peaks AS MATERIALIZED (
        -- each limit judged against every window of its kind overlapping the
        -- period, whole, with its resets (as the decisions saw it): the peak
        -- window, and how many were over the soft limit or at the hard one
        SELECT wu.tenant_id, wu.feature_key, wu.period, max(wu.u) AS peak_usage,
               (array_agg(wu.ws ORDER BY wu.u DESC, wu.ws))[1] AS peak_start,
               (array_agg(wu.we ORDER BY wu.u DESC, wu.ws))[1] AS peak_end,
               count(*) FILTER (WHERE wu.u > wu.soft_limit) AS over_soft,
               count(*) FILTER (WHERE wu.u >= wu.hard_limit) AS at_hard
          FROM (SELECT x.tenant_id, x.feature_key, x.period, x.soft_limit, x.hard_limit, x.ws, x.we,
                       sum(x.amount) AS u
                  FROM (SELECT l.tenant_id, l.feature_key, l.period, l.soft_limit, l.hard_limit,
                               w.window_start AS ws, w.window_end AS we, e.amount
                          FROM lim l
                          JOIN usage_guard.usage_events e
                            ON e.tenant_id = l.tenant_id AND e.feature_key = l.feature_key
                           AND e.occurred_at >= l.first_start AND e.occurred_at < l.last_end
                         CROSS JOIN LATERAL usage_guard.window_of(l.period, e.occurred_at, l.cps, l.cpe) w
                        UNION ALL
                        SELECT l.tenant_id, l.feature_key, l.period, l.soft_limit, l.hard_limit,
                               r.window_start, r.window_end, r.amount
                          FROM lim l
                          JOIN usage_guard.usage_resets r
                            ON r.tenant_id = l.tenant_id AND r.feature_key = l.feature_key AND r.period = l.period
                           AND r.window_start >= l.first_start AND r.window_end <= l.last_end) x
                 GROUP BY 1, 2, 3, 4, 5, 6, 7) wu
         GROUP BY 1, 2, 3
    )
    SELECT l.tenant_id, l.plan_code, l.feature_key, l.unit, p_start, p_end,
           coalesce(t.usage, 0), coalesce(t.events, 0), l.period, l.soft_limit, l.hard_limit,
           coalesce(pk.peak_usage, 0), pk.peak_start, pk.peak_end,
           coalesce(pk.over_soft, 0), coalesce(pk.at_hard, 0),
           CASE WHEN coalesce(l.hard_limit, l.soft_limit) IS NOT NULL
                THEN greatest(coalesce(l.hard_limit, l.soft_limit) - coalesce(pk.peak_usage, 0), 0) END,
           round(100 * coalesce(pk.peak_usage, 0) / nullif(coalesce(l.hard_limit, l.soft_limit), 0), 2),
           usage_guard.limit_status(coalesce(pk.peak_usage, 0), l.soft_limit, l.hard_limit, p_warn)
      FROM lim l
      LEFT JOIN totals t ON t.tenant_id = l.tenant_id AND t.feature_key = l.feature_key
      LEFT JOIN peaks pk ON pk.tenant_id = l.tenant_id AND pk.feature_key = l.feature_key
                        AND pk.period = l.period
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

--------------------------------------------------------------------------
-- Gateway reports (0.7.0)
--------------------------------------------------------------------------

-- Cost and tokens per tenant, subject and model over the last `since`, from
-- the reservations (one row per admitted request): seed 003's first
-- investigation step, "cost by consumer and model".  cost is what settled
-- requests cost; held_cost what open ones still hold; over_estimate what
-- settled past their estimate (charged even past a limit).  Runs as the
-- caller: a row-level policy on reservations filters it.
CREATE FUNCTION usage_guard.gateway_report(
    since  interval DEFAULT '1 day',
    tenant text DEFAULT NULL,
    at     timestamptz DEFAULT now())
RETURNS TABLE (tenant_id text, subject_id text, model text, requests bigint, settled bigint,
               open bigint, downgraded bigint, input_tokens numeric, output_tokens numeric,
               cost numeric, held_cost numeric, over_estimate numeric, cost_share numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_since  ALIAS FOR $1;
    p_tenant ALIAS FOR $2;
    p_at     ALIAS FOR $3;
BEGIN
    IF p_since IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'since and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_since <= interval '0' OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'since must be positive and at finite' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT res.tenant_id, res.subject_id, res.model,
               count(*) AS requests,
               count(*) FILTER (WHERE res.state = 'settled') AS settled,
               count(*) FILTER (WHERE res.state = 'open') AS open,
               count(*) FILTER (WHERE res.action = 'downgrade') AS downgraded,
               coalesce(sum(res.input_tokens), 0) AS input_tokens,
               coalesce(sum(res.output_tokens), 0) AS output_tokens,
               coalesce(sum(res.cost), 0) AS cost,
               coalesce(sum(res.estimated_cost) FILTER (WHERE res.state = 'open'), 0) AS held_cost,
               coalesce(sum(greatest(res.cost - res.estimated_cost, 0)), 0) AS over_estimate
          FROM usage_guard.reservations res
         WHERE res.reserved_at >= p_at - p_since AND res.reserved_at < p_at
           AND (p_tenant IS NULL OR res.tenant_id = p_tenant)
         GROUP BY res.tenant_id, res.subject_id, res.model)
    SELECT r.tenant_id, r.subject_id, r.model, r.requests, r.settled, r.open, r.downgraded,
           r.input_tokens, r.output_tokens, r.cost, r.held_cost, r.over_estimate,
           round(r.cost / nullif(sum(r.cost) OVER (), 0), 4)
      FROM r
     ORDER BY r.cost DESC, r.input_tokens + r.output_tokens DESC, r.tenant_id, r.subject_id, r.model;
END
$$;
COMMENT ON FUNCTION usage_guard.gateway_report(interval, text, timestamptz) IS
    'Cost and tokens per tenant (all, or `tenant`), subject and model of the requests admitted in [at - since, at): settled cost, estimates still held, cost past the estimate, downgrades, share of the cost';

-- Every USD budget (quota on cost_usd in subject_limits) of a tenant's
-- subjects and of the tenant, with its current window and how much of it
-- is used, from the ledger: seed 002's budget usage percentage.
CREATE FUNCTION usage_guard.budget_usage(tenant_id text, at timestamptz DEFAULT now())
RETURNS TABLE (subject_id text, level text, limit_id bigint, budget text, action text,
               hard_limit numeric, usage numeric, used_percent numeric,
               window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
BEGIN
    IF p_tenant IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'tenant_id and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'at must be finite' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH sub AS (
        SELECT ts.plan_code, ts.current_period_start AS cps, ts.current_period_end AS cpe
          FROM usage_guard.tenant_subscriptions ts WHERE ts.tenant_id = p_tenant),
    who AS (
        SELECT s.subject_id, s.level, s.role FROM usage_guard.subjects s WHERE s.tenant_id = p_tenant
        UNION ALL SELECT NULL, 'tenant', NULL),
    lim AS (
        SELECT DISTINCT ON (w.subject_id, coalesce(l.period::text, ''), coalesce(l.rolling, interval '0'))
               w.subject_id, w.level, l.limit_id, l.period::text AS period, l.rolling, l.action, l.hard_limit
          FROM who w
          JOIN usage_guard.subject_limits l ON l.level = w.level
               AND ((l.tenant_id = p_tenant AND l.subject_id IS NOT DISTINCT FROM w.subject_id)
                    OR (l.role IS NOT NULL AND l.role = w.role)
                    OR l.plan_code = (SELECT sub.plan_code FROM sub))
         WHERE l.limit_kind = 'quota' AND l.feature_key = 'cost_usd' AND l.hard_limit IS NOT NULL
         ORDER BY w.subject_id, coalesce(l.period::text, ''), coalesce(l.rolling, interval '0'),
                  CASE WHEN l.tenant_id IS NOT NULL THEN 0 WHEN l.role IS NOT NULL THEN 1 ELSE 2 END),
    win AS (
        SELECT lim.*,
               CASE WHEN lim.rolling IS NOT NULL THEN p_at - lim.rolling
                    ELSE (usage_guard.window_of(lim.period, p_at, (SELECT cps FROM sub), (SELECT cpe FROM sub))).window_start END AS ws,
               CASE WHEN lim.rolling IS NOT NULL THEN p_at
                    ELSE (usage_guard.window_of(lim.period, p_at, (SELECT cps FROM sub), (SELECT cpe FROM sub))).window_end END AS we
          FROM lim)
    SELECT win.subject_id, win.level, win.limit_id,
           coalesce(win.period, 'rolling ' || CASE
               WHEN extract(epoch FROM win.rolling)::bigint % 86400 = 0 THEN (extract(epoch FROM win.rolling)::bigint / 86400) || 'd'
               WHEN extract(epoch FROM win.rolling)::bigint % 3600 = 0 THEN (extract(epoch FROM win.rolling)::bigint / 3600) || 'h'
               ELSE (extract(epoch FROM win.rolling)::bigint / 60) || 'min' END),
           win.action, win.hard_limit, u.usage,
           round(100 * u.usage / nullif(win.hard_limit, 0), 2), win.ws, win.we
      FROM win
     CROSS JOIN LATERAL (
        SELECT coalesce(sum(e.amount), 0) AS usage
          FROM usage_guard.usage_events e
         WHERE e.tenant_id = p_tenant AND e.feature_key = 'cost_usd'
           AND e.occurred_at >= win.ws
           AND (CASE WHEN win.rolling IS NOT NULL THEN e.occurred_at <= win.we ELSE e.occurred_at < win.we END)
           AND (win.subject_id IS NULL OR e.subject_path @> ARRAY[win.subject_id])) u
     ORDER BY 8 DESC NULLS LAST, 1 NULLS LAST, 4;
END
$$;
COMMENT ON FUNCTION usage_guard.budget_usage(text, timestamptz) IS
    'Every USD budget (quota on cost_usd) of a tenant and its subjects: the current window at `at`, the usage from the ledger and the percentage used, most used first';

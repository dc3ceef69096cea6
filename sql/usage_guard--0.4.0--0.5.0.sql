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

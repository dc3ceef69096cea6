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

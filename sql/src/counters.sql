-- usage_guard counters and metrics: the state kept in shared memory.
--
-- Owns the live counters (live_counters, the usage_counters view,
-- reset_counters, shmem_info) and the metrics (metrics, metrics_text).
-- Both live in shared memory, so they need usage_guard in
-- shared_preload_libraries (without it they are empty).  The live counters
-- are kept by the decision functions and by the ledger's row trigger, in
-- the same transaction as the ledger row.
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql in the order
-- catalog, ledger, decisions, counters, reports, operations: every file
-- uses only objects of the files before it.

--------------------------------------------------------------------------
-- Live counters
--------------------------------------------------------------------------

-- The live counters, for operators and tests.
CREATE FUNCTION usage_guard.live_counters(
    OUT tenant_id text, OUT feature_key text,
    OUT window_start timestamptz, OUT window_end timestamptz,
    OUT usage numeric, OUT reserved numeric, OUT credit numeric,
    OUT subject_id text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'usage_guard_counters'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.live_counters() IS
    'Every live window of this database in shared memory: committed usage, reserved (positive, in flight) and credit (negative, in flight); subject_id NULL for the tenant level, a rolling window shown as the last interval before now';

CREATE VIEW usage_guard.usage_counters AS
    SELECT tenant_id, feature_key, window_start, window_end, usage, reserved, credit, subject_id
      FROM usage_guard.live_counters();
COMMENT ON VIEW usage_guard.usage_counters IS
    'Live counters per tenant (or subject), feature and window, kept in shared memory in step with the ledger (committed usage, in-flight reservations and credits); empty without shared_preload_libraries';

CREATE FUNCTION usage_guard.reset_counters()
RETURNS bigint
AS 'MODULE_PATHNAME', 'usage_guard_reset_counters'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.reset_counters() IS
    'Recomputes this database''s live counters from the ledger, in place (after rows were loaded with triggers disabled); a key with usage in flight is recomputed once its writers end, without blocking consumers. Returns how many tenant/feature keys were recomputed';

CREATE FUNCTION usage_guard.shmem_info(
    OUT enabled boolean, OUT max_counters bigint, OUT counters_used bigint,
    OUT shmem_bytes bigint, OUT bytes_per_counter bigint,
    OUT max_tenants bigint, OUT tenants_cached bigint, OUT policy_shmem_bytes bigint,
    OUT policy_hits bigint, OUT policy_loads bigint,
    OUT max_counter_extensions bigint, OUT counter_extensions_used bigint,
    OUT long_names_used bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'usage_guard_shmem_info'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.shmem_info() IS
    'Shared-memory sizing: whether the fast path is on, usage_guard.max_counters, entries in use, bytes in all and per tenant/feature entry with up to two windows; the shared policy cache: usage_guard.max_tenants, tenants cached, its bytes, lookups served from it and loads from the catalog since start; the counters'' extension slots (windows beyond two, rate state): how many, how many in use; long-name slots in use';

--------------------------------------------------------------------------
-- Metrics
--------------------------------------------------------------------------

-- Counters in shared memory (usage_guard_decisions_total by decision
-- and plan, usage_guard_limit_hits_total by plan, limit type and feature,
-- a histogram of decision latency), as rows and in the Prometheus text
-- format; the JSON log line of a limit hit is the GUC
-- usage_guard.log_limit_hits.
CREATE FUNCTION usage_guard.metrics(
    OUT metric text, OUT labels jsonb, OUT value double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'usage_guard_metrics'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.metrics() IS
    'Metrics of this database as rows: usage_guard_decisions_total{decision,plan_code} (enforcing calls), usage_guard_checks_total{decision,plan_code} (usage_check), usage_guard_limit_hits_total{plan_code,limit_type,feature_key} (enforcing calls), usage_guard_policy_errors_total{reason,plan_code}, usage_guard_decision_duration_seconds (histogram, whole server), usage_guard_metrics_dropped_total, usage_guard_limit_checks_total{limit_kind,level,plan_code}, usage_guard_limit_refusals_total{limit_kind,level,plan_code}, usage_guard_leases{level}; empty without shared_preload_libraries';

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
                'Enforcing evaluations (usage_consume, usage_enforce, metered INSERT) by decision and plan.'),
               ('usage_guard_checks_total', 'counter',
                'Side-effect-free checks (usage_check) by decision and plan; not in decisions or limit hits.'),
               ('usage_guard_limit_hits_total', 'counter',
                'Soft and hard limit hits of enforcing evaluations by plan, limit type and feature.'),
               ('usage_guard_policy_errors_total', 'counter',
                'Requests refused because the tenant has no active subscription (usage_policy_configuration_error), by reason.'),
               ('usage_guard_decision_duration_seconds', 'histogram',
                'Time to decide, measured inside the server (all databases).'),
               ('usage_guard_limit_checks_total', 'counter',
                'Limits judged by enforcing calls, once per call for each limit kind (quota, rate, concurrency) and subject level.'),
               ('usage_guard_limit_refusals_total', 'counter',
                'Refusals by the kind (quota, rate, concurrency) and subject level of the deciding limit.'),
               ('usage_guard_leases', 'gauge',
                'Live concurrency leases by subject level (a lease holds a slot at every level of its subject).'),
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

--------------------------------------------------------------------------
-- A new install starts with no live counters
--------------------------------------------------------------------------

-- A database that had usage_guard before may still hold the old ledger's
-- windows in shared memory (decisions ignore them: they are keyed by the
-- ledger's OID, but live_counters lists them): start from none.
SELECT usage_guard.reset_counters();

-- usage_guard 0.8.0 -> 0.9.0: scale-out on Citus: usage_guard.distribute(),
-- and reports and maintenance that work on a distributed ledger.
-- (Two-phase commit and the per-node counters of a distributed ledger are
-- in the library: no object changes for them.)
-- Every change here is also in sql/src, which holds the current definition
-- of every object; the upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.9.0'" to load this file. \quit

--------------------------------------------------------------------------
-- distribute() (sql/src/citus.sql)
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.distribute(shard_count integer DEFAULT NULL)
RETURNS TABLE (object text, distributed_as text, action text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reference_tables CONSTANT text[] := ARRAY['features', 'plans', 'plan_features',
        'tenant_subscriptions', 'tenant_overrides', 'models', 'model_prices', 'subjects',
        'subject_limits'];
    tenant_tables CONSTANT text[] := ARRAY['usage_events', 'usage_resets', 'leases', 'reservations'];
    -- (the reports stay on the coordinator: a delegated function may only
    -- query the ledger filtered by its own tenant argument)
    delegated CONSTANT text[] := ARRAY['usage_check', 'usage_allowed', 'usage_consume',
        'usage_enforce', 'usage_record', 'request_check', 'request_consume', 'request_enforce',
        'request_throttle', 'admit', 'settle', 'cancel', 'lease_acquire', 'lease_release'];
    t text;
    rel regclass;
    fn regprocedure;
    node record;
    missing text;
    keys text[] := '{}';
    fk record;
    changed bigint;
    -- how many of this node's two ledger sequences it moved to its range
    id_ranges CONSTANT text := $q$
        SELECT count(*) FILTER (WHERE pg_catalog.setval(s.seq, s.lo, false) IS NOT NULL)
          FROM (SELECT q.seq, q.next, (g.groupid::bigint << 48) + 1 AS lo
                  FROM (SELECT 'usage_guard.usage_events_event_id_seq'::pg_catalog.regclass AS seq,
                               CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS next
                          FROM usage_guard.usage_events_event_id_seq
                        UNION ALL
                        SELECT 'usage_guard.usage_resets_reset_id_seq'::pg_catalog.regclass,
                               CASE WHEN is_called THEN last_value + 1 ELSE last_value END
                          FROM usage_guard.usage_resets_reset_id_seq) q,
                       pg_catalog.pg_dist_local_group g) s
         WHERE s.next < s.lo$q$;
BEGIN
    IF shard_count IS NOT NULL AND shard_count NOT BETWEEN 1 AND 64000 THEN
        RAISE EXCEPTION 'shard_count must be between 1 and 64000'
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database'
            USING ERRCODE = '55000',
                  DETAIL = 'usage_guard.distribute() makes an installed usage_guard a distributed one with Citus.',
                  HINT = 'Put citus first in shared_preload_libraries on every node, CREATE EXTENSION citus, add the workers (citus_add_node), then call usage_guard.distribute() on the coordinator.';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'usage_guard.distribute() must run on the Citus coordinator'
            USING ERRCODE = '55000';
    END IF;
    -- every node must count its tenants' rows in shared memory
    SELECT string_agg(format('%s:%s', n.nodename, n.nodeport), ', ') INTO missing
      FROM run_command_on_workers($q$SELECT pg_catalog.current_setting('shared_preload_libraries')$q$) n
     WHERE NOT n.success OR NOT ('usage_guard' = ANY (string_to_array(replace(n.result, ' ', ''), ',')));
    IF missing IS NULL AND NOT ('usage_guard' = ANY (string_to_array(replace(
            current_setting('shared_preload_libraries'), ' ', ''), ','))) THEN
        missing := 'this coordinator';
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'usage_guard is not loaded by shared_preload_libraries on %', missing
            USING ERRCODE = '55000',
                  DETAIL = 'Each node decides for the tenants whose rows it holds, with counters in its shared memory.',
                  HINT = 'Set shared_preload_libraries = ''citus,usage_guard'' on every node and restart it.';
    END IF;
    -- Citus requires the distribution column in every unique index
    FOREACH t IN ARRAY tenant_tables LOOP
        rel := format('usage_guard.%I', t)::regclass;
        SELECT string_agg(i.indexrelid::regclass::text, ', ') INTO missing
          FROM pg_index i
         WHERE i.indrelid = rel AND i.indisunique
           AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = rel AND a.attname = 'tenant_id'
                              AND a.attnum = ANY (i.indkey::int2[]));
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'cannot distribute % by tenant_id: unique index % does not include tenant_id', rel, missing
                USING ERRCODE = '0A000',
                      HINT = 'Add tenant_id to the index (or drop it), then call usage_guard.distribute() again.';
        END IF;
    END LOOP;

    -- usage_guard's triggers are safe on shards: they read the row's own
    -- shard, reference tables and this node's shared memory
    SET LOCAL citus.enable_unsafe_triggers = on;

    -- Citus cannot make the catalog reference tables while their foreign
    -- keys tie them to local tables: it would create those on the workers,
    -- where CREATE EXTENSION already did.  So the keys are dropped on every
    -- node and added again once every table is a reference table.
    FOR fk IN
        SELECT k.conrelid::regclass AS tbl, k.conname, pg_get_constraintdef(k.oid) AS def
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE k.contype = 'f' AND c.relnamespace = 'usage_guard'::regnamespace
           AND c.relname = ANY (reference_tables)
           AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = k.conrelid)
         ORDER BY 1, 2
    LOOP
        keys := keys || format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tbl, fk.conname, fk.def);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
        PERFORM run_command_on_workers(
            format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', fk.tbl, fk.conname));
    END LOOP;
    FOREACH t IN ARRAY reference_tables LOOP
        rel := format('usage_guard.%I', t)::regclass;
        object := rel::text;
        distributed_as := 'reference table';
        IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = rel) THEN
            action := 'already';
        ELSE
            PERFORM create_reference_table(rel);
            action := 'created';
        END IF;
        RETURN NEXT;
    END LOOP;
    FOREACH t IN ARRAY keys LOOP
        EXECUTE t;
    END LOOP;

    FOREACH t IN ARRAY tenant_tables LOOP
        rel := format('usage_guard.%I', t)::regclass;
        object := rel::text;
        distributed_as := 'distributed by tenant_id, colocated with usage_guard.usage_events';
        IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = rel) THEN
            action := 'already';
        ELSIF t = 'usage_events' THEN
            PERFORM create_distributed_table(rel, 'tenant_id', shard_count => shard_count);
            action := 'created';
        ELSE
            PERFORM create_distributed_table(rel, 'tenant_id', colocate_with => 'usage_guard.usage_events');
            action := 'created';
        END IF;
        RETURN NEXT;
    END LOOP;

    -- The ledger's ids (event_id, reset_id) come from each node's own
    -- sequence: a worker writes the rows of the calls delegated to it.  As
    -- Citus does for sequences on workers, node group g takes ids from
    -- (g << 48) + 1 up (the coordinator, group 0, keeps its own), so ids are
    -- unique across the cluster; a node already past its start is left.
    object := 'usage_guard.usage_events_event_id_seq, usage_guard.usage_resets_reset_id_seq';
    distributed_as := 'ids from (node group << 48) + 1 on each node';
    EXECUTE id_ranges INTO changed;
    FOR node IN SELECT * FROM run_command_on_workers(id_ranges) LOOP
        IF NOT node.success THEN
            RAISE EXCEPTION 'could not set the ledger''s id range on %:%', node.nodename, node.nodeport
                USING ERRCODE = '55000', DETAIL = node.result;
        END IF;
        changed := changed + node.result::bigint;
    END LOOP;
    action := CASE WHEN changed > 0 THEN 'created' ELSE 'already' END;
    RETURN NEXT;

    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'usage_guard'::regnamespace AND p.proname = ANY (delegated)
         ORDER BY p.proname, p.oid
    LOOP
        object := fn::text;
        distributed_as := 'delegated by tenant_id';
        IF EXISTS (SELECT 1 FROM pg_dist_object o
                    WHERE o.classid = 'pg_proc'::regclass AND o.objid = fn
                      AND o.distribution_argument_index = 0 AND o.force_delegation) THEN
            action := 'already';
        ELSE
            PERFORM create_distributed_function(fn, '$1', colocate_with => 'usage_guard.usage_events',
                                                force_delegation => true);
            action := 'created';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION usage_guard.distribute(integer) IS
    'Citus: distribute usage_guard (tenant tables by tenant_id, catalog as reference tables, decision functions delegated by tenant); idempotent; run on the coordinator';
REVOKE ALL ON FUNCTION usage_guard.distribute(integer) FROM PUBLIC;

--------------------------------------------------------------------------
-- Maintenance on a distributed install (sql/src/gateway.sql): purge_leases
-- in PL/pgSQL (same result); expire_reservations changed in the library
-- only (each node expires its own tenants', the coordinator has every
-- worker do so).
--------------------------------------------------------------------------

-- Leases that ended (released or expired) more than `keep` ago are only
-- history; lease counting never reads them, but they take space.
-- PL/pgSQL: Citus cannot plan a SQL function's parameters, and on a
-- distributed install this runs on the coordinator (a pg_cron job there).
CREATE OR REPLACE FUNCTION usage_guard.purge_leases(keep interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_keep ALIAS FOR $1;
    n bigint;
BEGIN
    DELETE FROM usage_guard.leases l
     WHERE coalesce(least(l.released_at, l.expires_at), l.expires_at) < now() - p_keep;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

--------------------------------------------------------------------------
-- Reports over a distributed ledger (sql/src/reports.sql): the limits come
-- from the catalog alone (limits_in_force), a tenant's window sums are read
-- by a PL/pgSQL function filtering the ledger by its tenant argument
-- (limit_windows_rows, the body of limit_windows), and usage_report_rows
-- reads the ledger in set queries joined to the limits.  Same results.
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
CREATE OR REPLACE FUNCTION usage_guard.limit_windows(tenant_id text, at timestamptz)
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

CREATE OR REPLACE FUNCTION usage_guard.usage_report_rows(
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

REVOKE ALL ON FUNCTION usage_guard.limits_in_force(text, timestamptz),
    usage_guard.limit_windows_rows(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.limits_in_force(text, timestamptz),
    usage_guard.limit_windows_rows(text, timestamptz) TO usage_guard_reader;

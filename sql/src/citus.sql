-- usage_guard on Citus: distribute() (README, "Scaling out with Citus").
--
-- Tenant-keyed tables that grow with usage (the ledger, resets, leases,
-- reservations) are distributed by tenant_id and colocated, so a tenant's
-- rows are on one node.  The catalog (plans, features, their limits,
-- subscriptions, overrides, models and prices, subjects and their limits)
-- becomes reference tables: small, read by every decision, copied to every
-- node.  Subscriptions, overrides and subjects are tenant keyed but read
-- together with the plans in one query, which a delegated function may only
-- do with reference tables.  The decision functions are delegated by their
-- tenant argument, so each runs on the node that holds the tenant's rows
-- and counts them in that node's shared memory (src/citus.c).
--
-- Stays on the node it is on: usage_daily and usage_monthly (materialized
-- views, refreshed on the coordinator over the distributed ledger), alerts
-- (each node's own), shared-memory views and metrics (per node), pg_cron
-- maintenance (scheduled on the coordinator).

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

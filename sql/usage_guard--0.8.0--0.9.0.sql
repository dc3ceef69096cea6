-- usage_guard 0.8.0 -> 0.9.0: scale-out on Citus: usage_guard.distribute().
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

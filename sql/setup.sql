-- Install the extension and the helpers the other tests share.
CREATE EXTENSION usage_guard;

SELECT extname, extversion, nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'usage_guard';

-- Run a statement; report its SQLSTATE and message instead of failing.
CREATE FUNCTION try(cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN st || ': ' || msg;
END
$$;

-- Live windows (of tenants LIKE tenant_like, of one feature if given) and
-- how many of them differ from the ledger's sum over the same window.
CREATE FUNCTION windows_off_ledger(tenant_like text, feature text DEFAULT NULL,
                                   OUT windows bigint, OUT wrong bigint)
LANGUAGE sql AS $$
    SELECT count(*),
           count(*) FILTER (WHERE c.usage <> (SELECT coalesce(sum(e.amount), 0)
                                                FROM usage_guard.usage_events e
                                               WHERE e.tenant_id = c.tenant_id
                                                 AND e.feature_key = c.feature_key
                                                 AND e.occurred_at >= c.window_start
                                                 AND e.occurred_at < c.window_end))
      FROM usage_guard.live_counters() c
     WHERE c.tenant_id LIKE tenant_like AND (feature IS NULL OR c.feature_key = feature)
$$;

-- Run a statement expected to fail; return its DETAIL parsed as JSON.
CREATE FUNCTION try_detail(cmd text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    det text;
BEGIN
    EXECUTE cmd;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS det = PG_EXCEPTION_DETAIL;
    RETURN det::jsonb;
END
$$;

-- Every function has named arguments and a comment (\df shows the names).
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments,
       obj_description(p.oid, 'pg_proc') IS NOT NULL AS documented
  FROM pg_proc p
 WHERE p.pronamespace = 'usage_guard'::regnamespace
 ORDER BY 1, 2;

-- Every table is documented.
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS documented
  FROM pg_class c
 WHERE c.relnamespace = 'usage_guard'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;

-- Catalog and ledger survive pg_dump; derived tables are rebuilt instead.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'usage_guard' ORDER BY 1;

-- Every tenant-keyed table has tenant_id first in its primary key.
SELECT c.relname, a.attname AS first_pk_column
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid
  JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
 WHERE k.contype = 'p' AND c.relnamespace = 'usage_guard'::regnamespace
 ORDER BY 1;

SHOW usage_guard.soft_limit_mode;
-- the test cluster preloads the library: the shared-memory fast path is on
SELECT enabled, max_counters > 0 AS sized, bytes_per_counter > 0 AS measured FROM usage_guard.shmem_info();

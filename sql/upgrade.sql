-- The upgrade path: 0.1.0 with data, then ALTER EXTENSION UPDATE, gives
-- the same objects as a fresh install, defined the same way, and keeps
-- every row.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;

-- Every definition of the extension's objects, one row per object and
-- kind: what a script says (bodies, options, columns, constraints, indexes,
-- triggers, view queries, privileges, comments), never OIDs or creation
-- order.  Names are schema-qualified; sub-objects are named after their
-- table, domain or type.
CREATE TEMP VIEW ug_definitions (kind, object, definition) AS
WITH members AS (
    SELECT d.classid, d.objid
      FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'usage_guard' AND d.deptype = 'e'
), funcs AS (
    SELECT p.* FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
), rels AS (
    SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
), types AS (
    -- the types the scripts create, not those PostgreSQL makes for them
    -- (array types, row types of tables and views: internal dependents of
    -- their base object, defined by it).  PostgreSQL 17 lists those as
    -- extension members too (commit e5bc945, "Explicitly list dependent
    -- types as extension members"); 15 and 16 do not.
    SELECT t.* FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
     WHERE NOT EXISTS (SELECT 1 FROM pg_depend i
                        WHERE i.classid = 'pg_type'::regclass AND i.objid = t.oid AND i.deptype = 'i')
)
SELECT 'function', p.oid::regprocedure::text,
       -- name, argument names, types and defaults, result, language,
       -- volatility, STRICT, PARALLEL, SECURITY DEFINER, COST, ROWS, SET, body
       CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END
  FROM funcs p
UNION ALL
SELECT 'function owner, privileges, comment', p.oid::regprocedure::text,
       format('owner %s, acl %s, comment %s', pg_get_userbyid(p.proowner),
              coalesce(p.proacl::text, 'default'), quote_nullable(obj_description(p.oid, 'pg_proc')))
  FROM funcs p
UNION ALL
SELECT 'relation', c.oid::regclass::text,
       format('kind %s, access method %s, persistence %s, options %s, row security %s, forced %s, '
              'replica identity %s, populated %s, owner %s, acl %s, comment %s',
              c.relkind, coalesce((SELECT amname FROM pg_am WHERE oid = c.relam), 'none'),
              c.relpersistence, coalesce(c.reloptions::text, 'none'), c.relrowsecurity,
              c.relforcerowsecurity, c.relreplident, c.relispopulated, pg_get_userbyid(c.relowner),
              coalesce(c.relacl::text, 'default'), quote_nullable(obj_description(c.oid, 'pg_class')))
  FROM rels c
UNION ALL
SELECT 'column', format('%s.%s', a.attrelid::regclass, a.attname),
       -- the position among the live columns: a column dropped by an upgrade
       -- leaves a gap in attnum that is no difference
       -- PostgreSQL 18 catalogs NOT NULL as a named constraint (contype 'n'):
       -- compared here, with its column, so that every version lists the
       -- same constraints below (15 to 17 have none: 'none')
       format('position %s, type %s, not null %s (constraint %s), default %s, identity %s, generated %s, '
              'collation %s, storage %s, compression %s, acl %s, comment %s',
              row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
              format_type(a.atttypid, a.atttypmod), a.attnotnull,
              coalesce((SELECT n.conname || ' ' || pg_get_constraintdef(n.oid) FROM pg_constraint n
                         WHERE n.contype = 'n' AND n.conrelid = a.attrelid AND n.conkey = ARRAY[a.attnum]),
                       'none'),
              coalesce(pg_get_expr(ad.adbin, ad.adrelid), 'none'),
              coalesce(nullif(a.attidentity, ''), 'none'), coalesce(nullif(a.attgenerated, ''), 'none'),
              CASE WHEN a.attcollation = 0 THEN 'none' ELSE a.attcollation::regcollation::text END,
              a.attstorage, coalesce(nullif(a.attcompression, ''), 'default'),
              coalesce(a.attacl::text, 'default'), quote_nullable(col_description(a.attrelid, a.attnum)))
  FROM pg_attribute a
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
   AND a.attrelid IN (SELECT oid FROM rels UNION ALL SELECT typrelid FROM types WHERE typtype = 'c')
UNION ALL
SELECT 'constraint',
       format('%s.%s', CASE WHEN k.conrelid <> 0 THEN k.conrelid::regclass::text
                            ELSE k.contypid::regtype::text END, k.conname),
       format('%s, comment %s', pg_get_constraintdef(k.oid),
              quote_nullable(obj_description(k.oid, 'pg_constraint')))
  FROM pg_constraint k
 WHERE (k.conrelid IN (SELECT oid FROM rels) OR k.contypid IN (SELECT oid FROM types))
   AND k.contype <> 'n'
UNION ALL
SELECT 'index', i.indexrelid::regclass::text,
       format('%s, clustered %s, replica identity %s, comment %s', pg_get_indexdef(i.indexrelid),
              i.indisclustered, i.indisreplident, quote_nullable(obj_description(i.indexrelid, 'pg_class')))
  FROM pg_index i
 WHERE i.indrelid IN (SELECT oid FROM rels)
UNION ALL
SELECT 'trigger', format('%s.%s', t.tgrelid::regclass, t.tgname),
       format('%s, enabled %s, comment %s', pg_get_triggerdef(t.oid), t.tgenabled,
              quote_nullable(obj_description(t.oid, 'pg_trigger')))
  FROM pg_trigger t
 WHERE t.tgrelid IN (SELECT oid FROM rels) AND NOT t.tgisinternal
UNION ALL
SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
  FROM rels c
 WHERE c.relkind IN ('v', 'm')
UNION ALL
SELECT 'rule', format('%s.%s', r.ev_class::regclass, r.rulename), pg_get_ruledef(r.oid)
  FROM pg_rewrite r
 WHERE r.ev_class IN (SELECT oid FROM rels) AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'policy', format('%s.%s', p.polrelid::regclass, p.polname),
       format('command %s, permissive %s, roles %s, using %s, with check %s', p.polcmd, p.polpermissive,
              (SELECT string_agg(r.name, ',' ORDER BY r.name)
                 FROM (SELECT CASE WHEN o = 0 THEN 'public' ELSE pg_get_userbyid(o)::text END AS name
                         FROM unnest(p.polroles) AS o) r),
              coalesce(pg_get_expr(p.polqual, p.polrelid), 'none'),
              coalesce(pg_get_expr(p.polwithcheck, p.polrelid), 'none'))
  FROM pg_policy p
 WHERE p.polrelid IN (SELECT oid FROM rels)
UNION ALL
SELECT 'sequence', s.seqrelid::regclass::text,
       format('type %s, start %s, increment %s, min %s, max %s, cache %s, cycle %s', s.seqtypid::regtype,
              s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
  FROM pg_sequence s
 WHERE s.seqrelid IN (SELECT oid FROM rels)
UNION ALL
SELECT 'type', t.oid::regtype::text,
       format('type %s, base type %s, not null %s, default %s, collation %s, labels %s, owner %s, acl %s, comment %s',
              t.typtype, CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) ELSE 'none' END,
              t.typnotnull, coalesce(t.typdefault, 'none'),
              CASE WHEN t.typcollation = 0 THEN 'none' ELSE t.typcollation::regcollation::text END,
              coalesce((SELECT string_agg(quote_literal(l.enumlabel), ',' ORDER BY l.enumsortorder)
                          FROM pg_enum l WHERE l.enumtypid = t.oid), 'none'),
              pg_get_userbyid(t.typowner), coalesce(t.typacl::text, 'default'),
              quote_nullable(obj_description(t.oid, 'pg_type')))
  FROM types t
UNION ALL
SELECT 'pg_dump', cfg.rel::regclass::text, format('dumped where %s', quote_nullable(cfg.cond))
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS cfg(rel, cond)
 WHERE e.extname = 'usage_guard';

-- A fresh install of the default version: the one of setup has been
-- changed by the tests since (privileges, rows).
DROP EXTENSION usage_guard CASCADE;
CREATE EXTENSION usage_guard;
SELECT extversion FROM pg_extension WHERE extname = 'usage_guard';

-- its objects and their definitions
CREATE TEMP TABLE fresh AS
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'usage_guard')
   AND deptype = 'e';
CREATE TEMP TABLE fresh_definitions AS SELECT * FROM ug_definitions;
SELECT kind, count(*) FROM fresh_definitions GROUP BY kind ORDER BY kind;

-- The definitions of one kind that differ between the fresh install (kept
-- in fresh_definitions) and the installed one; no rows when they are equal.
CREATE FUNCTION pg_temp.differing(which text)
RETURNS TABLE (install text, object text, definition text)
LANGUAGE sql AS $$
    (SELECT 'fresh' AS install, object, definition FROM fresh_definitions WHERE kind = which
     EXCEPT
     SELECT 'fresh', object, definition FROM ug_definitions WHERE kind = which)
    UNION ALL
    (SELECT 'upgraded', object, definition FROM ug_definitions WHERE kind = which
     EXCEPT
     SELECT 'upgraded', object, definition FROM fresh_definitions WHERE kind = which)
    ORDER BY object, install
$$;

DROP EXTENSION usage_guard CASCADE;
CREATE EXTENSION usage_guard VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'usage_guard';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('upg_tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('upg_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('upg_plan', 'upg_tokens', 'month', 80, 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('upg', 'upg_plan');
SELECT usage_guard.usage_record('upg', 'upg_tokens', 30, '2025-11-03 10:00+00', 'u-1');
SELECT allowed, usage FROM usage_guard.usage_consume('upg', 'upg_tokens', 40, 'u-2', at => '2025-11-04 10:00+00');
SELECT count(*) FROM usage_guard.usage_counters;

ALTER EXTENSION usage_guard UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'usage_guard';

-- same objects as a fresh install
SELECT object AS missing_after_upgrade FROM fresh
EXCEPT
SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'usage_guard') AND deptype = 'e';
SELECT pg_describe_object(classid, objid, objsubid) AS extra_after_upgrade FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'usage_guard') AND deptype = 'e'
EXCEPT
SELECT object FROM fresh;

-- defined the same way as a fresh install
SELECT * FROM pg_temp.differing('function');
SELECT * FROM pg_temp.differing('function owner, privileges, comment');
SELECT * FROM pg_temp.differing('relation');
SELECT * FROM pg_temp.differing('column');
SELECT * FROM pg_temp.differing('constraint');
SELECT * FROM pg_temp.differing('index');
SELECT * FROM pg_temp.differing('trigger');
SELECT * FROM pg_temp.differing('view');
SELECT * FROM pg_temp.differing('rule');
SELECT * FROM pg_temp.differing('policy');
SELECT * FROM pg_temp.differing('sequence');
SELECT * FROM pg_temp.differing('type');
SELECT * FROM pg_temp.differing('pg_dump');
-- and no kind was left out above
SELECT DISTINCT kind AS not_compared FROM ug_definitions
 WHERE kind NOT IN ('function', 'function owner, privileges, comment', 'relation', 'column',
                    'constraint', 'index', 'trigger', 'view', 'rule', 'policy', 'sequence',
                    'type', 'pg_dump');

-- the data is all there and decisions continue from it
SELECT tenant_id, feature_key, amount, kind, idempotency_key FROM usage_guard.usage_events ORDER BY occurred_at;
SELECT allowed, decision, usage FROM usage_guard.usage_check('upg', 'upg_tokens', 20, '2025-11-20 00:00+00');
SELECT allowed, decision, usage FROM usage_guard.usage_consume('upg', 'upg_tokens', 31, at => '2025-11-20 00:00+00');
SELECT usage_guard.usage_record('upg', 'upg_tokens', 1, '2025-11-20 00:00+00', 'u-1');
SELECT window_start, usage, reserved FROM usage_guard.usage_counters WHERE tenant_id = 'upg';
SELECT * FROM usage_guard.get_usage_totals('upg', '2025-11-01', '2025-12-01');
-- the catalog triggers of 0.2.0 are in place: a limit change is seen at once
UPDATE usage_guard.plan_features SET hard_limit = 200 WHERE plan_code = 'upg_plan';
SELECT allowed, limit_value FROM usage_guard.usage_check('upg', 'upg_tokens', 31, '2025-11-20 00:00+00');

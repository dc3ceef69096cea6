-- The upgrade path: 0.1.0 with data, then ALTER EXTENSION UPDATE, gives
-- the same objects as a fresh install and keeps every row.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET client_min_messages = warning;

-- the objects of a fresh install (of the default version)
CREATE TEMP TABLE fresh AS
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'usage_guard')
   AND deptype = 'e';

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

-- The privilege model (README, "Security"): three levels, each granted with
-- one statement, exactly as the README says.  The functions are the
-- boundary: an application needs no table privilege, and what usage_guard
-- reads and writes on its behalf ignores the caller's privileges and
-- row-level security.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE ROLE ug_app LOGIN;
CREATE ROLE ug_reader LOGIN;
CREATE ROLE ug_admin LOGIN;
CREATE ROLE ug_nobody LOGIN;
-- the README's statements
GRANT usage_guard_application TO ug_app;
GRANT usage_guard_reader TO ug_reader;
GRANT usage_guard_admin TO ug_admin;

-- PUBLIC has nothing: no function, no table, no schema
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'usage_guard'::regnamespace
   AND has_function_privilege('ug_nobody', p.oid, 'EXECUTE')
 ORDER BY 1;
SELECT c.relname AS readable_by_public
  FROM pg_class c
 WHERE c.relnamespace = 'usage_guard'::regnamespace AND c.relkind IN ('r', 'v', 'm')
   AND has_table_privilege('ug_nobody', c.oid, 'SELECT');
SELECT has_schema_privilege('ug_nobody', 'usage_guard', 'USAGE') AS public_schema_usage;

-- What each level may execute (admin: everything, listed by exception)
SELECT p.proname, string_agg(DISTINCT lvl, ', ' ORDER BY lvl) AS levels
  FROM pg_proc p,
       unnest(ARRAY['usage_guard_application', 'usage_guard_reader', 'usage_guard_admin']) AS lvl
 WHERE p.pronamespace = 'usage_guard'::regnamespace
   AND has_function_privilege(lvl, p.oid, 'EXECUTE')
   AND (lvl <> 'usage_guard_admin' OR NOT has_function_privilege('usage_guard_reader', p.oid, 'EXECUTE'))
 GROUP BY p.proname
 ORDER BY 1;
SELECT p.proname AS not_executable_by_admin
  FROM pg_proc p
 WHERE p.pronamespace = 'usage_guard'::regnamespace
   AND NOT has_function_privilege('usage_guard_admin', p.oid, 'EXECUTE')
 ORDER BY 1;

INSERT INTO usage_guard.features (feature_key) VALUES ('pv_msgs');
INSERT INTO usage_guard.plans (plan_code) VALUES ('pv_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('pv_plan', 'pv_msgs', 'day', 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code)
VALUES ('pv-t1', 'pv_plan'), ('pv-victim', 'pv_plan'), ('pv-rls', 'pv_plan'), ('pv-force', 'pv_plan');

-- 1. The application level: decide and record with EXECUTE alone.  The first
--    use of a window loads it from the ledger, and idempotency keys are
--    looked up there: both as the ledger's owner, not as ug_app.
SET ROLE ug_app;
SELECT allowed, usage, recorded FROM usage_guard.usage_consume('pv-t1', 'pv_msgs', 60);
SELECT allowed, usage, recorded FROM usage_guard.usage_consume('pv-t1', 'pv_msgs', 30, 'pv-key-1');
SELECT allowed, usage, recorded FROM usage_guard.usage_consume('pv-t1', 'pv_msgs', 30, 'pv-key-1');
SELECT usage_guard.usage_record('pv-t1', 'pv_msgs', 5, idempotency_key => 'pv-key-2');
SELECT usage_guard.usage_record('pv-t1', 'pv_msgs', 5, idempotency_key => 'pv-key-2');
SELECT allowed, decision, usage FROM usage_guard.usage_check('pv-t1', 'pv_msgs', 10);
SELECT try($$SELECT usage_guard.usage_enforce('pv-t1', 'pv_msgs', 10)$$);
-- it cannot lower usage: no ledger row of its own, no reset, no adjustment
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('pv-t1', 'pv_msgs', -100, 'adjustment')$$);
SELECT try($$SELECT * FROM usage_guard.reset_usage('pv-t1', 'pv_msgs', reason => 'mine')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason) VALUES ('pv-t1', 'pv_msgs', 'day', date_trunc('day', now(), 'UTC'), date_trunc('day', now(), 'UTC') + interval '1 day', -100, 'mine')$$);
SELECT try($$SELECT usage_guard.reset_counters()$$);
-- nor read the ledger, other tenants' live counters, or reports
SELECT try($$SELECT count(*) FROM usage_guard.usage_events$$);
SELECT try($$SELECT * FROM usage_guard.live_counters()$$);
SELECT try($$SELECT * FROM usage_guard.usage_counters$$);
SELECT try($$SELECT * FROM usage_guard.usage_report(period_start => '2025-01-01', period_end => '2025-02-01')$$);
-- nor change plans, limits, subscriptions or settings that weaken enforcement
SELECT try($$UPDATE usage_guard.plan_features SET hard_limit = 1000000$$);
SELECT try($$INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit) VALUES ('pv-t1', 'pv_msgs', 'day', NULL)$$);
SELECT try($$UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pv_plan'$$);
SELECT try($$SELECT * FROM usage_guard.sync_entitlements('{"plans": []}')$$);
SELECT try($$SET usage_guard.soft_limit_mode = warn$$);
-- nor charge another time's windows (yesterday's, with room left)
SELECT try($$SELECT usage_guard.usage_consume('pv-t1', 'pv_msgs', 1, at => now() - interval '1 day')$$);
SELECT try($$SELECT usage_guard.usage_enforce('pv-t1', 'pv_msgs', 1, at => now() + interval '1 day')$$);
-- checking any time is harmless and allowed; so is recording post-paid usage late
SELECT allowed, usage FROM usage_guard.usage_check('pv-t1', 'pv_msgs', 1, now() - interval '1 day');
SELECT usage_guard.usage_record('pv-t1', 'pv_msgs', 1, '2020-01-01 12:00+00');
RESET ROLE;

-- 2. The reader level: reports, status, metrics; nothing that writes
SET ROLE ug_reader;
SELECT feature_key, period, usage, hard_limit, status FROM usage_guard.usage_status('pv-t1');
SELECT feature_key, total FROM usage_guard.get_usage_totals('pv-t1', now() - interval '1 day', now() + interval '1 day', '{pv_msgs}');
SELECT count(*) > 0 AS reads_ledger FROM usage_guard.usage_events WHERE tenant_id = 'pv-t1';
SELECT count(*) >= 0 AS reads_view FROM usage_guard.subscription_usage;
SELECT count(*) >= 0 AS reads_metrics FROM usage_guard.metrics();
SELECT try($$SELECT usage_guard.usage_consume('pv-t1', 'pv_msgs', 1)$$);
SELECT try($$SELECT usage_guard.usage_check('pv-t1', 'pv_msgs', 1)$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('pv-t1', 'pv_msgs', -1, 'adjustment')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason) VALUES ('pv-t1', 'pv_msgs', 'day', '2025-11-18', '2025-11-19', -1, 'x')$$);
SELECT count(*) >= 0 AS reads_resets FROM usage_guard.usage_resets;
SELECT try($$SELECT usage_guard.refresh_rollups()$$);
RESET ROLE;

-- 3. The admin level: catalog, adjustments, resets, maintenance
SET ROLE ug_admin;
UPDATE usage_guard.plan_features SET hard_limit = 100 WHERE plan_code = 'pv_plan';
SELECT feature_key, period, usage_before, adjustment
  FROM usage_guard.reset_usage('pv-t1', 'pv_msgs', reason => 'support ticket 7');
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind, attributes)
VALUES ('pv-t1', 'pv_msgs', 2, 'adjustment', '{"reason": "test"}');
SELECT usage_guard.reset_counters() >= 0 AS reset_ran;
SELECT usage_guard.refresh_rollups();
SELECT allowed, usage FROM usage_guard.usage_consume('pv-t1', 'pv_msgs', 1, at => now() - interval '1 day');
RESET ROLE;
-- the soft-limit mode stays the operators' setting; a superuser may delegate it
GRANT SET ON PARAMETER usage_guard.soft_limit_mode TO ug_admin;
SET ROLE ug_admin;
SET usage_guard.soft_limit_mode = block;
SHOW usage_guard.soft_limit_mode;
RESET usage_guard.soft_limit_mode;
RESET ROLE;
REVOKE SET ON PARAMETER usage_guard.soft_limit_mode FROM ug_admin;

-- 4. Row-level security on the ledger scopes who may act for a tenant, and
--    never changes what is counted.
SELECT usage_guard.usage_record('pv-victim', 'pv_msgs', 90);
ALTER TABLE usage_guard.usage_events ENABLE ROW LEVEL SECURITY;
-- (a) no policy for ug_app: it may act for no tenant (default deny)
SET ROLE ug_app;
SELECT try($$SELECT usage_guard.usage_check('pv-t1', 'pv_msgs', 1)$$);
SELECT try($$SELECT usage_guard.usage_allowed('pv-t1', 'pv_msgs', 1)$$);
RESET ROLE;
-- (b) a policy that keeps ug_app away from pv-victim: no decision, no
--     usage shown, no row written for it; other tenants as before
CREATE POLICY pv_scope ON usage_guard.usage_events TO ug_app
    USING (tenant_id <> 'pv-victim') WITH CHECK (tenant_id <> 'pv-victim');
SET ROLE ug_app;
SELECT try($$SELECT usage_guard.usage_check('pv-victim', 'pv_msgs', 10)$$);
SELECT try($$SELECT usage_guard.usage_allowed('pv-victim', 'pv_msgs', 10)$$);
SELECT usage_guard.usage_allowed('pv-t1', 'pv_msgs', 1) AS other_tenant_allowed;
SELECT try($$SELECT usage_guard.usage_consume('pv-victim', 'pv_msgs', 1)$$);
SELECT try($$SELECT usage_guard.usage_record('pv-victim', 'pv_msgs', 1)$$);
SELECT allowed, decision FROM usage_guard.usage_check('pv-t1', 'pv_msgs', 1);
RESET ROLE;
DROP POLICY pv_scope ON usage_guard.usage_events;
-- (c) a policy that hides rows but not the tenant: ug_app sees none of
--     pv-victim's 90 recorded units, yet its first consume loads the window
--     as the ledger's owner, counts all 90, and 20 more are refused
CREATE POLICY pv_hide_records ON usage_guard.usage_events TO ug_app
    USING (kind <> 'record') WITH CHECK (true);
GRANT SELECT ON usage_guard.usage_events TO ug_app;
SET ROLE ug_app;
SELECT count(*) AS victim_rows_visible_to_app FROM usage_guard.usage_events WHERE tenant_id = 'pv-victim';
SELECT allowed, decision, usage FROM usage_guard.usage_consume('pv-victim', 'pv_msgs', 20);
SELECT allowed, usage FROM usage_guard.usage_check('pv-victim', 'pv_msgs', 10);
RESET ROLE;
REVOKE SELECT ON usage_guard.usage_events FROM ug_app;
-- (d) a restrictive WITH CHECK binds the functions' writes for its roles
CREATE POLICY pv_small ON usage_guard.usage_events AS RESTRICTIVE FOR INSERT TO ug_app
    WITH CHECK (amount <= 5);
SET ROLE ug_app;
SELECT try($$SELECT usage_guard.usage_consume('pv-victim', 'pv_msgs', 6)$$);
SELECT allowed, usage FROM usage_guard.usage_consume('pv-victim', 'pv_msgs', 5);
SELECT allowed, usage FROM usage_guard.usage_check('pv-victim', 'pv_msgs', 6);
RESET ROLE;
DROP POLICY pv_small ON usage_guard.usage_events;
DROP POLICY pv_hide_records ON usage_guard.usage_events;
-- (e) superusers and BYPASSRLS roles are not scoped
SELECT allowed, usage FROM usage_guard.usage_check('pv-victim', 'pv_msgs', 1);
CREATE POLICY pv_hide_victim ON usage_guard.usage_events
    USING (tenant_id <> 'pv-victim') WITH CHECK (tenant_id <> 'pv-victim');
-- A policy that binds the ledger's owner (FORCE, owner not a superuser)
-- would make sums wrong: usage_guard refuses to load a window then.
SELECT current_user AS superuser_name \gset
ALTER TABLE usage_guard.usage_events OWNER TO ug_admin;
ALTER TABLE usage_guard.usage_events FORCE ROW LEVEL SECURITY;
SELECT try($$SELECT usage_guard.usage_check('pv-force', 'pv_msgs', 1)$$);
ALTER TABLE usage_guard.usage_events NO FORCE ROW LEVEL SECURITY;
SELECT allowed, usage FROM usage_guard.usage_check('pv-force', 'pv_msgs', 1);
ALTER TABLE usage_guard.usage_events OWNER TO :"superuser_name";
DROP POLICY pv_hide_victim ON usage_guard.usage_events;
ALTER TABLE usage_guard.usage_events DISABLE ROW LEVEL SECURITY;

-- 5. Catalog tables under RLS do not hide a plan from the policy loader
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ROW LEVEL SECURITY;
SET ROLE ug_app;
SELECT allowed, decision, usage FROM usage_guard.usage_check('pv-rls', 'pv_msgs', 10);
RESET ROLE;
ALTER TABLE usage_guard.tenant_subscriptions DISABLE ROW LEVEL SECURITY;

-- 6. A role without a level gets nothing
SET ROLE ug_nobody;
SELECT try($$SELECT usage_guard.usage_check('pv-t1', 'pv_msgs', 1)$$);
RESET ROLE;

REVOKE usage_guard_application FROM ug_app;
REVOKE usage_guard_reader FROM ug_reader;
REVOKE usage_guard_admin FROM ug_admin;
DROP ROLE ug_app, ug_reader, ug_admin, ug_nobody;

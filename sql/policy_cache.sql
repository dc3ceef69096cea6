-- The shared policy cache (0.8.0): every backend decides from one copy of
-- the tenants' subscriptions and the plans' limits in shared memory.  A
-- committed change is seen by the next decision of every session; what is
-- not shared (overrides, long names, a transaction's own changes) still
-- decides right through the per-backend path.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('pc_calls'), ('pc_other');
INSERT INTO usage_guard.plans (plan_code) VALUES ('pc_small'), ('pc_large');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('pc_small', 'pc_calls', 'day', 10), ('pc_large', 'pc_calls', 'day', 1000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('pc-a', 'pc_small', '2025-11-01'), ('pc-b', 'pc_small', '2025-11-01');

CREATE TEMP VIEW pc_stats AS
    SELECT tenants_cached, policy_hits, policy_loads FROM usage_guard.shmem_info();
CREATE TEMP TABLE pc_before AS SELECT * FROM pc_stats;

-- the first decision loads the tenant into shared memory, the next is a hit
SELECT allowed, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
SELECT allowed, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
SELECT s.policy_loads - b.policy_loads AS loads, s.policy_hits - b.policy_hits AS hits,
       s.tenants_cached > 0 AS cached
  FROM pc_stats s, pc_before b;

-- usage_allowed: usage_check's answer alone, with its errors
SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', 10, '2025-11-18 12:00+00') AS ten,
       usage_guard.usage_allowed('pc-a', 'pc_calls', 11, '2025-11-18 12:00+00') AS eleven,
       usage_guard.usage_allowed('pc-a', 'pc_calls') AS now;
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_nope')$$);
SELECT try($$SELECT usage_guard.usage_allowed('pc-nobody', 'pc_calls')$$);
SELECT try($$SELECT usage_guard.usage_allowed(NULL, 'pc_calls')$$);
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', -1)$$);
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', 1, NULL)$$);

-- a plan change is seen by the next decision
UPDATE usage_guard.plan_features SET hard_limit = 20 WHERE plan_code = 'pc_small';
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
-- a subscription change: the tenant moves plans; its neighbour does not
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_large' WHERE tenant_id = 'pc-a';
SELECT tenant_id, plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT tenant_id, plan_code, limit_value FROM usage_guard.usage_check('pc-b', 'pc_calls', 1, '2025-11-18 12:00+00');
-- a status change refuses at once
UPDATE usage_guard.tenant_subscriptions SET status = 'past_due' WHERE tenant_id = 'pc-a';
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00')$$);
UPDATE usage_guard.tenant_subscriptions SET status = 'incomplete_expired' WHERE tenant_id = 'pc-a';
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00')$$);
UPDATE usage_guard.tenant_subscriptions SET status = 'trialing' WHERE tenant_id = 'pc-a';
SELECT usage_guard.usage_allowed('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
-- a deleted subscription: no plan (no default plan here)
DELETE FROM usage_guard.tenant_subscriptions WHERE tenant_id = 'pc-b';
SELECT try($$SELECT usage_guard.usage_allowed('pc-b', 'pc_calls', 1, '2025-11-18 12:00+00')$$);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('pc-b', 'pc_small', '2025-11-01');
SELECT limit_value FROM usage_guard.usage_check('pc-b', 'pc_calls', 1, '2025-11-18 12:00+00');
-- renaming a tenant: both the old and the new name change
UPDATE usage_guard.tenant_subscriptions SET tenant_id = 'pc-b2' WHERE tenant_id = 'pc-b';
SELECT try($$SELECT usage_guard.usage_allowed('pc-b', 'pc_calls', 1, '2025-11-18 12:00+00')$$);
SELECT limit_value FROM usage_guard.usage_check('pc-b2', 'pc_calls', 1, '2025-11-18 12:00+00');
-- a feature added to the catalog is known at once
SELECT try($$SELECT usage_guard.usage_allowed('pc-a', 'pc_new', 1, '2025-11-18 12:00+00')$$);
INSERT INTO usage_guard.features (feature_key) VALUES ('pc_new');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('pc_large', 'pc_new', 'day', 5);
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');

-- a transaction sees its own uncommitted change, and only it does
BEGIN;
UPDATE usage_guard.plan_features SET hard_limit = 7 WHERE plan_code = 'pc_large' AND feature_key = 'pc_new';
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
ROLLBACK;
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
BEGIN;
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_small' WHERE tenant_id = 'pc-a';
SELECT plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
ROLLBACK;
SELECT plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');

-- a prepared catalog change (Citus changes reference tables with two-phase
-- commit) commits in another session: nothing loaded while it is in
-- progress is kept, and its commit is seen by the next decision
SELECT limit_value AS before_prepare FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
BEGIN;
UPDATE usage_guard.plan_features SET hard_limit = 8 WHERE plan_code = 'pc_large' AND feature_key = 'pc_new';
PREPARE TRANSACTION 'pc_prepared';
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'pc_prepared';
SELECT policy_loads AS loads_before FROM usage_guard.shmem_info() \gset
SELECT limit_value AS while_prepared FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
SELECT limit_value AS while_prepared FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
SELECT policy_loads - :loads_before AS loads_while_prepared_none_kept FROM usage_guard.shmem_info();
COMMIT PREPARED 'pc_prepared';
SELECT limit_value AS after_commit_prepared FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
BEGIN;
UPDATE usage_guard.plan_features SET hard_limit = 9 WHERE plan_code = 'pc_large' AND feature_key = 'pc_new';
PREPARE TRANSACTION 'pc_prepared2';
SELECT limit_value AS while_prepared FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
ROLLBACK PREPARED 'pc_prepared2';
SELECT limit_value AS after_rollback_prepared FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
UPDATE usage_guard.plan_features SET hard_limit = 5 WHERE plan_code = 'pc_large' AND feature_key = 'pc_new';
-- a transaction that only read it can
BEGIN;
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_new', 1, '2025-11-18 12:00+00');
PREPARE TRANSACTION 'pc_reader';
COMMIT PREPARED 'pc_reader';

-- overrides are decided per backend, and seen as soon as committed
INSERT INTO usage_guard.tenant_overrides (tenant_id, feature_key, period, hard_limit)
VALUES ('pc-a', 'pc_calls', 'day', 3);
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
DELETE FROM usage_guard.tenant_overrides WHERE tenant_id = 'pc-a';
SELECT limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');

-- tenant names past the shared cache's keys (55 bytes) and plan codes past
-- 31 bytes decide the same way through the per-backend path
INSERT INTO usage_guard.plans (plan_code) VALUES (repeat('p', 40));
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES (repeat('p', 40), 'pc_calls', 'day', 40);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start) VALUES
    (repeat('q', 55), 'pc_small', '2025-11-01'), (repeat('q', 56), 'pc_small', '2025-11-01'),
    (repeat('q', 255), 'pc_small', '2025-11-01'), ('pc-longplan', repeat('p', 40), '2025-11-01');
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check(repeat('q', 55), 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check(repeat('q', 56), 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check(repeat('q', 255), 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check('pc-longplan', 'pc_calls', 1, '2025-11-18 12:00+00');
UPDATE usage_guard.plan_features SET hard_limit = 41 WHERE plan_code = repeat('p', 40);
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_large' WHERE tenant_id IN (repeat('q', 55), repeat('q', 56));
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check(repeat('q', 55), 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check(repeat('q', 56), 'pc_calls', 1, '2025-11-18 12:00+00')
UNION ALL
SELECT length(tenant_id), limit_value FROM usage_guard.usage_check('pc-longplan', 'pc_calls', 1, '2025-11-18 12:00+00');

-- rows replicated in (session_replication_role = replica, as logical
-- replication applies them) fire the cache triggers too
SET session_replication_role = replica;
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_small' WHERE tenant_id = 'pc-a';
RESET session_replication_role;
SELECT plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
-- rows loaded with the triggers disabled are seen after reset_counters()
ALTER TABLE usage_guard.tenant_subscriptions DISABLE TRIGGER tenant_subscriptions_rows_changed;
-- (with a row trigger disabled the shared cache steps aside: still exact)
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_large' WHERE tenant_id = 'pc-a';
SELECT plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_rows_changed;
SET session_replication_role = replica;
ALTER TABLE usage_guard.tenant_subscriptions DISABLE TRIGGER ALL;
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'pc_small' WHERE tenant_id = 'pc-a';
ALTER TABLE usage_guard.tenant_subscriptions ENABLE TRIGGER ALL;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_changed;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_rows_changed;
RESET session_replication_role;
SELECT usage_guard.reset_counters() >= 0 AS reset;
SELECT plan_code, limit_value FROM usage_guard.usage_check('pc-a', 'pc_calls', 1, '2025-11-18 12:00+00');

-- the trigger function is a trigger only
SELECT try($$SELECT usage_guard.tenant_changed()$$);

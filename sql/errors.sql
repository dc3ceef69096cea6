-- Every bad input gets a clear error with a standard SQLSTATE and changes
-- nothing; a tenant without an active subscription gets UG003.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('err_msgs');
INSERT INTO usage_guard.plans (plan_code) VALUES ('err_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('err_plan', 'err_msgs', 'day', 10);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('err', 'err_plan');
CREATE TEMP TABLE before AS SELECT count(*) AS n FROM usage_guard.usage_events;

-- NULL and empty tenant or feature
SELECT try($$SELECT usage_guard.usage_check(NULL, 'err_msgs')$$);
SELECT try($$SELECT usage_guard.usage_consume('', 'err_msgs')$$);
SELECT try($$SELECT usage_guard.usage_enforce('err', NULL)$$);
SELECT try($$SELECT usage_guard.usage_record('err', '', 1)$$);
SELECT try($$SELECT usage_guard.usage_consume(repeat('x', 256), 'err_msgs')$$);
-- unknown feature
SELECT usage_guard.usage_check('err', 'no_such_feature');
SELECT try($$SELECT usage_guard.usage_record('err', 'no_such_feature', 1)$$);
-- amounts: NULL, negative, NaN, infinite, too large
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', NULL)$$);
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', -1)$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', -0.5)$$);
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', 'NaN')$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 'Infinity')$$);
SELECT try($$SELECT usage_guard.usage_check('err', 'err_msgs', '-Infinity')$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 1e15 + 1)$$);
SELECT try($$SELECT usage_guard.usage_check('err', 'err_msgs', 1e15)$$);
-- times: NULL or infinite
SELECT try($$SELECT usage_guard.usage_check('err', 'err_msgs', 1, NULL)$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 1, 'infinity')$$);
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', 1, at => '-infinity')$$);
-- idempotency key and attributes
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', 1, '')$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 1, now(), 'k', '[1, 2]')$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 1, now(), 'k', '"text"')$$);
-- reversed or empty windows
SELECT try($$SELECT * FROM usage_guard.get_usage_totals('err', '2025-02-01', '2025-01-01')$$);
SELECT try($$SELECT * FROM usage_guard.get_usage_totals('err', '2025-02-01', '2025-02-01')$$);
SELECT try($$SELECT * FROM usage_guard.get_usage_totals('err', NULL, '2025-02-01')$$);
SELECT try($$SELECT * FROM usage_guard.get_usage_totals('err', '2025-01-01', 'infinity')$$);
SELECT try($$SELECT * FROM usage_guard.get_usage_totals('err', '2025-01-01', '2025-02-01', ARRAY['nope'])$$);
-- nothing was written by any of the above
SELECT (SELECT count(*) FROM usage_guard.usage_events) - n AS new_events FROM before;

-- no subscription, or one that does not grant access: UG003 with JSON
SELECT usage_guard.usage_check('nobody', 'err_msgs');
SELECT try($$SELECT usage_guard.usage_consume('nobody', 'err_msgs')$$);
SELECT try_detail($$SELECT usage_guard.usage_consume('nobody', 'err_msgs')$$);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status) VALUES ('lapsed', 'err_plan', 'canceled');
SELECT usage_guard.usage_enforce('lapsed', 'err_msgs');
SELECT try_detail($$SELECT usage_guard.usage_enforce('lapsed', 'err_msgs')$$);
-- past_due does not grant access either; trialing does
UPDATE usage_guard.tenant_subscriptions SET status = 'past_due' WHERE tenant_id = 'lapsed';
SELECT try($$SELECT usage_guard.usage_check('lapsed', 'err_msgs')$$);
-- every UG003 has one shape, from the decisions and from usage_status
-- (the same JSON keys; the raw DETAIL text is the C one, see reports; feature_key null when the
-- call is not about one feature)
SELECT try($$SELECT usage_guard.usage_status('lapsed')$$);
SELECT try_detail($$SELECT usage_guard.usage_status('lapsed')$$);
SELECT try_detail($$SELECT usage_guard.usage_status('nobody')$$);
SELECT array(SELECT jsonb_object_keys(try_detail($$SELECT usage_guard.usage_check('nobody', 'err_msgs')$$)))
     = array(SELECT jsonb_object_keys(try_detail($$SELECT usage_guard.usage_status('nobody')$$))) AS same_keys;
UPDATE usage_guard.tenant_subscriptions SET status = 'trialing' WHERE tenant_id = 'lapsed';
SELECT try($$SELECT usage_guard.usage_check('lapsed', 'err_msgs')$$);
SELECT (SELECT count(*) FROM usage_guard.usage_events) - n AS new_events FROM before;

-- the hard-limit error: SQLSTATE UG001, message, JSON detail, hint
SELECT usage_guard.usage_record('err', 'err_msgs', 10, '2025-11-18 10:00+00');
SELECT usage_guard.usage_enforce('err', 'err_msgs', 1, at => '2025-11-18 10:00+00');
SELECT try($$SELECT usage_guard.usage_enforce('err', 'err_msgs', 1, at => '2025-11-18 10:00+00')$$);

-- table grants are not a level: without usage_guard_application's EXECUTE
-- a role that can read every table still cannot decide or record
CREATE ROLE ug_reader;
GRANT USAGE ON SCHEMA usage_guard TO ug_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA usage_guard TO ug_reader;
SET ROLE ug_reader;
SELECT try($$SELECT usage_guard.usage_consume('err', 'err_msgs', 1, at => '2025-12-01 10:00+00')$$);
SELECT try($$SELECT usage_guard.usage_record('err', 'err_msgs', 1, '2025-12-01 10:00+00')$$);
SELECT try($$SELECT usage_guard.usage_check('err', 'err_msgs', 1, '2025-12-01 10:00+00')$$);
RESET ROLE;
SELECT count(*) FROM usage_guard.usage_events WHERE tenant_id = 'err' AND occurred_at >= '2025-12-01';
REVOKE ALL ON ALL TABLES IN SCHEMA usage_guard FROM ug_reader;
REVOKE ALL ON SCHEMA usage_guard FROM ug_reader;
DROP ROLE ug_reader;

-- distribute() (Citus scale-out) says why it cannot run, and changes nothing
SELECT try($$SELECT * FROM usage_guard.distribute()$$);
SELECT try($$SELECT * FROM usage_guard.distribute(0)$$);
SELECT count(*) AS still_local_tables FROM pg_class
 WHERE relnamespace = 'usage_guard'::regnamespace AND relkind = 'r';

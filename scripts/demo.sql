-- usage_guard demo: a starter plan, one tenant, and its requests going
-- from allowed to the soft limit to the hard limit.
\set ON_ERROR_STOP on
\pset footer off
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE EXTENSION usage_guard;

\echo
\echo '== 1. Plans and limits are rows'
INSERT INTO usage_guard.features (feature_key, unit) VALUES
    ('input_tokens', 'token'), ('messages', 'message');
INSERT INTO usage_guard.plans (plan_code, name) VALUES ('starter', 'Starter');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('starter', 'input_tokens', 'month', 8000, 10000),
    ('starter', 'messages', 'day', NULL, 5);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('acme', 'starter');
SELECT plan_code, feature_key, period, soft_limit, hard_limit FROM usage_guard.plan_features;

\echo '== 2. A request well within the plan: allowed'
SELECT allowed, decision, period, limit_type, limit_value, usage, requested, remaining
  FROM usage_guard.usage_consume('acme', 'input_tokens', 1200, idempotency_key => 'req-1');

\echo '== 3. The client retries the same request: counted once'
SELECT allowed, usage, recorded FROM usage_guard.usage_consume('acme', 'input_tokens', 1200, idempotency_key => 'req-1');

\echo '== 4. Past the soft limit: allowed, with a WARNING (usage_guard.soft_limit_mode = warn)'
SELECT allowed, decision, limit_type, limit_value, usage, requested
  FROM usage_guard.usage_consume('acme', 'input_tokens', 7500, idempotency_key => 'req-2');

\echo '== 5. Past the hard limit: blocked, and nothing is recorded'
SELECT allowed, decision, limit_type, limit_value, usage, requested, remaining, recorded
  FROM usage_guard.usage_consume('acme', 'input_tokens', 2000, idempotency_key => 'req-3');

\echo '== 6. usage_enforce raises instead: SQLSTATE UG001 with a JSON detail for an HTTP 429'
\set ON_ERROR_STOP off
SELECT * FROM usage_guard.usage_enforce('acme', 'input_tokens', 2000);
\set ON_ERROR_STOP on

\echo '== 7. Messages: 5 per day, the 6th is refused'
SELECT i AS message, d.allowed, d.usage, d.remaining
  FROM generate_series(1, 6) AS i,
       LATERAL usage_guard.usage_consume('acme', 'messages', 1, idempotency_key => 'msg-' || i) AS d;

\echo '== 8. Post-paid usage with the real amount, after the work'
SELECT usage_guard.usage_record('acme', 'input_tokens', 187, idempotency_key => 'req-1-actual');

\echo '== 9. Totals for the month, from the ledger'
SELECT feature_key, unit, total, events
  FROM usage_guard.get_usage_totals('acme', date_trunc('month', now()), date_trunc('month', now()) + interval '1 month');

\echo '== 10. The application role decides and records with one GRANT, and cannot erase usage'
CREATE ROLE demo_app;
GRANT usage_guard_application TO demo_app;
SET ROLE demo_app;
SELECT allowed, decision, usage FROM usage_guard.usage_check('acme', 'messages');
\set ON_ERROR_STOP off
\set VERBOSITY terse
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('acme', 'messages', -5, 'adjustment');
SELECT * FROM usage_guard.reset_usage('acme', 'messages', reason => 'please');
\set VERBOSITY default
\set ON_ERROR_STOP on
RESET ROLE;

\echo '== 11. The database itself refuses the 6th deployment of the day'
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('deployments', 'deployment');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('starter', 'deployments', 'day', 5);
CREATE TABLE deployments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id text NOT NULL, name text);
SELECT usage_guard.meter_table('deployments', 'deployments', 'tenant_id');
INSERT INTO deployments (tenant_id, name) SELECT 'acme', 'app-' || i FROM generate_series(1, 5) AS i;
\set ON_ERROR_STOP off
\set VERBOSITY terse
INSERT INTO deployments (tenant_id, name) VALUES ('acme', 'app-6');
\set VERBOSITY default
\set ON_ERROR_STOP on
SELECT count(*) AS deployments FROM deployments;

-- examples/gateway/setup.sql: the catalog of the LLM gateway example
-- (app.py), loaded as a superuser or usage_guard_admin into a database
-- where CREATE EXTENSION usage_guard was run.  e2e.sh relies on every
-- number here; README.md explains them.
--
-- Money: the fake models are priced so that one request of e2e.sh's shape
-- (4,000 characters of prompt = 1,000 input tokens, max_tokens 200) costs
-- exactly $0.01 on gw-large and $0.002 on gw-small, and the fake model
-- answers max_tokens tokens when max_tokens <= 256: estimate == real cost.
\set ON_ERROR_STOP on

BEGIN;

-- admit needs these two features: a budget is a quota on cost_usd
INSERT INTO usage_guard.features (feature_key, unit) VALUES
    ('tokens', 'token'), ('cost_usd', 'USD');

-- Two fake models; a limit with action downgrade turns gw-large into gw-small
INSERT INTO usage_guard.models (model, provider) VALUES
    ('gw-small', 'fake'), ('gw-large', 'fake');
UPDATE usage_guard.models SET downgrade_to = 'gw-small' WHERE model = 'gw-large';
-- USD per 1M tokens
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million) VALUES
    ('gw-small', '2025-01-01 00:00+00', 1, 5),
    ('gw-large', '2025-01-01 00:00+00', 5, 25);

-- One plan, one tenant (acme).  Tenant "ghost" has no subscription: every
-- call for it is a policy error (HTTP 402).
INSERT INTO usage_guard.plans (plan_code) VALUES ('gw_demo');
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('acme', 'gw_demo');

-- Subjects: team eng -> users alice (role developer), bob (role guest) -> api keys
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id, role) VALUES
    ('acme', 'eng',       'team',    NULL,    NULL),
    ('acme', 'alice',     'user',    'eng',   'developer'),
    ('acme', 'bob',       'user',    'eng',   'guest'),
    ('acme', 'sk-demo',   'api_key', 'alice', NULL),   -- for trying it by hand
    ('acme', 'sk-budget', 'api_key', 'alice', NULL),   -- e2e: exactly 10 requests
    ('acme', 'sk-guest',  'api_key', 'bob',   NULL),   -- e2e: gw-small only
    ('acme', 'sk-crash',  'api_key', 'alice', NULL),   -- e2e: exactly 1 request
    ('acme', 'sk-alert',  'api_key', 'alice', NULL),   -- e2e: alert at 50%
    ('acme', 'sk-down',   'api_key', 'alice', NULL);   -- e2e: downgrade

-- Model access per role, at the user level
INSERT INTO usage_guard.subject_limits (role, level, limit_kind, models) VALUES
    ('developer', 'user', 'model', '{gw-large,gw-small}'),
    ('guest',     'user', 'model', '{gw-small}');

-- The plan's budgets: $5 a day per api key, $100 a month for the tenant
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit) VALUES
    ('gw_demo', 'api_key', 'quota', 'cost_usd', 'day',   5.00),
    ('gw_demo', 'tenant',  'quota', 'cost_usd', 'month', 100.00);

-- Budgets of single keys, over a rolling hour (no calendar boundary can
-- fall inside a test run)
INSERT INTO usage_guard.subject_limits
       (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit, action, alert_at) VALUES
    -- 10 requests of $0.01
    ('acme', 'sk-budget', 'api_key', 'quota', 'cost_usd', '1 hour', 0.10,  'block',     NULL),
    -- 1 request of $0.01
    ('acme', 'sk-crash',  'api_key', 'quota', 'cost_usd', '1 hour', 0.01,  'block',     NULL),
    -- 10 requests of $0.01; an alert when half is used
    ('acme', 'sk-alert',  'api_key', 'quota', 'cost_usd', '1 hour', 0.10,  'block',     '{0.5}'),
    -- gw-large ($0.01) once, then gw-small ($0.002) once, then nothing
    ('acme', 'sk-down',   'api_key', 'quota', 'cost_usd', '1 hour', 0.013, 'downgrade', NULL);

COMMIT;

-- The service's login role: it may only EXECUTE admit, settle and cancel
-- (and the other calls of the application level); it reads no table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gateway') THEN
        CREATE ROLE gateway LOGIN;
    END IF;
END
$$;
GRANT usage_guard_application TO gateway;

-- meter_table: the database itself refuses the 11th deployment of a free
-- tenant, inside the application's own INSERT.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('deployments', 'deployment'), ('storage_gb', 'GB');
INSERT INTO usage_guard.plans (plan_code) VALUES ('mt_free'), ('mt_pro');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('mt_free', 'deployments', 'day', 10), ('mt_pro', 'deployments', 'day', 50),
    ('mt_free', 'storage_gb', 'month', 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('mt-free', 'mt_free'), ('mt-pro', 'mt_pro');

CREATE TABLE deployments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL,
    name text NOT NULL
);
SELECT usage_guard.meter_table('deployments', 'deployments', 'tenant_id');

INSERT INTO deployments (tenant_id, name) SELECT 'mt-free', 'app-' || i FROM generate_series(1, 10) AS i;
-- the 11th fails, and the INSERT leaves no row (terse: the window is today's)
\set VERBOSITY terse
INSERT INTO deployments (tenant_id, name) VALUES ('mt-free', 'app-11');
\set VERBOSITY default
SELECT try($$INSERT INTO deployments (tenant_id, name) VALUES ('mt-free', 'app-11')$$);
SELECT count(*) FROM deployments WHERE tenant_id = 'mt-free';
-- a multi-row INSERT over the limit fails as a whole
SELECT try($$INSERT INTO deployments (tenant_id, name) SELECT 'mt-pro', 'x' || i FROM generate_series(1, 51) AS i$$);
SELECT count(*) FROM deployments WHERE tenant_id = 'mt-pro';
INSERT INTO deployments (tenant_id, name) SELECT 'mt-pro', 'x' || i FROM generate_series(1, 50) AS i;
-- the ledger knows which table the usage came from
SELECT tenant_id, sum(amount), min(attributes ->> 'table') AS source
  FROM usage_guard.usage_events WHERE feature_key = 'deployments' GROUP BY 1 ORDER BY 1;
-- a tenant without a subscription cannot insert
\set VERBOSITY terse
INSERT INTO deployments (tenant_id, name) VALUES ('mt-nobody', 'x');
\set VERBOSITY default

-- amounts from a column
CREATE TABLE volumes (tenant_id text, size_gb integer);
SELECT usage_guard.meter_table('volumes', 'storage_gb', 'tenant_id', 'size_gb');
INSERT INTO volumes VALUES ('mt-free', 60), ('mt-free', 40);
SELECT try($$INSERT INTO volumes VALUES ('mt-free', 1)$$);
SELECT try($$INSERT INTO volumes VALUES ('mt-free', NULL)$$);
SELECT try($$INSERT INTO volumes VALUES (NULL, 1)$$);
SELECT count(*), sum(size_gb) FROM volumes;
-- ON CONFLICT DO NOTHING rows that are skipped are not metered
CREATE TABLE seats (tenant_id text, email text PRIMARY KEY);
INSERT INTO usage_guard.features (feature_key) VALUES ('seats');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES ('mt_free', 'seats', 'month', 2);
SELECT usage_guard.meter_table('seats', 'seats', 'tenant_id');
INSERT INTO seats VALUES ('mt-free', 'a@x') ON CONFLICT DO NOTHING;
INSERT INTO seats VALUES ('mt-free', 'a@x') ON CONFLICT DO NOTHING;
INSERT INTO seats VALUES ('mt-free', 'b@x') ON CONFLICT DO NOTHING;
SELECT sum(amount) FROM usage_guard.usage_events WHERE feature_key = 'seats';

-- bad calls
SELECT try($$SELECT usage_guard.meter_table('deployments', 'nope', 'tenant_id')$$);
SELECT try($$SELECT usage_guard.meter_table('deployments', 'deployments', 'owner')$$);
SELECT try($$SELECT usage_guard.meter_table('deployments', 'deployments', 'tenant_id', 'name')$$);
SELECT try($$SELECT usage_guard.meter_table('no_such_table', 'deployments', 'tenant_id')$$);
SELECT try($$SELECT usage_guard.meter_table(NULL, 'deployments', 'tenant_id')$$);
CREATE VIEW deployments_v AS SELECT * FROM deployments;
SELECT try($$SELECT usage_guard.meter_table('deployments_v', 'deployments', 'tenant_id')$$);
-- metering twice replaces the trigger; unmeter removes it
SELECT usage_guard.meter_table('deployments', 'deployments', 'tenant_id');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'deployments'::regclass AND NOT tgisinternal;
SELECT usage_guard.unmeter_table('deployments', 'deployments');
SELECT usage_guard.unmeter_table('deployments', 'deployments');
INSERT INTO deployments (tenant_id, name) VALUES ('mt-free', 'unmetered');

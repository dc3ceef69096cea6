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

\echo '== 12. Gateway limits: an API key under a user and a team (seed 002)'
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES
    ('acme', 'team-research', 'team', NULL),
    ('acme', 'alice', 'user', 'team-research'),
    ('acme', 'key-7f3a', 'api_key', 'alice');
-- 3 requests per second (burst 3), 2 running at once, for every key of a starter tenant
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit)
VALUES ('starter', 'api_key', 'rate', '1 second', 3);
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, hard_limit)
VALUES ('starter', 'api_key', 'concurrency', 2);
-- alice: 3000 input tokens in any rolling hour
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, rolling, hard_limit)
VALUES ('acme', 'alice', 'user', 'quota', 'input_tokens', '1 hour', 3000);
SELECT level, limit_kind, coalesce(period::text, rolling::text, per::text) AS window, hard_limit
  FROM usage_guard.subject_limits ORDER BY limit_id;

\echo '== 13. Four requests of the key in the same second: the 4th hits the rate limit, with Retry-After'
\echo '   (the tenant is past its soft limit since step 4: its WARNINGs are silenced here)'
SET client_min_messages = error;
SELECT i AS request, d.allowed, d.level, d.limit_kind, d.period, d.retry_after,
       d.headers ->> 'Retry-After' AS "Retry-After", d.headers ->> 'RateLimit' AS "RateLimit"
  FROM generate_series(1, 4) AS i,
       LATERAL usage_guard.request_consume('acme', 'key-7f3a', 'input_tokens', 10,
                                           idempotency_key => 'gw-req-' || i,
                                           at => date_trunc('second', now())) AS d;
RESET client_min_messages;

\echo '== 14. Every level was charged by one call; the ledger row records the chain'
SELECT subject_id, subject_path, amount FROM usage_guard.usage_events
 WHERE subject_id IS NOT NULL ORDER BY event_id LIMIT 3;

\echo '== 15. Two requests running at once take both slots; a third is refused until a slot frees'
SELECT allowed, lease_id IS NOT NULL AS has_lease FROM usage_guard.lease_acquire('acme', 'key-7f3a', '3 seconds');
SELECT allowed, lease_id IS NOT NULL AS has_lease FROM usage_guard.lease_acquire('acme', 'key-7f3a', '3 seconds');
SELECT allowed, limit_kind, usage AS running, limit_value, ceil(retry_after) AS retry_after
  FROM usage_guard.lease_acquire('acme', 'key-7f3a', '3 seconds');

\echo '== 16. The gateway crashed and never released them: the TTL frees the slots'
SELECT pg_sleep(3.2);
SELECT allowed, lease_id IS NOT NULL AS has_lease FROM usage_guard.lease_acquire('acme', 'key-7f3a', '3 seconds');

\echo '== 17. An LLM gateway (seeds 002 and 003): priced models, a $1.00 daily budget per key with'
\echo '   alerts at 50% and 100%, and a team budget past which gpt-4 is downgraded to gpt-3.5-turbo'
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token'), ('cost_usd', 'USD')
ON CONFLICT DO NOTHING;
INSERT INTO usage_guard.plans (plan_code) VALUES ('llm');
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('globex', 'llm');
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES
    ('globex', 'research', 'team', NULL), ('globex', 'bob', 'user', 'research'),
    ('globex', 'key-bob', 'api_key', 'bob');
INSERT INTO usage_guard.models (model, provider) VALUES ('gpt-4', 'openai'), ('gpt-3.5-turbo', 'openai')
ON CONFLICT DO NOTHING;
UPDATE usage_guard.models SET downgrade_to = 'gpt-3.5-turbo' WHERE model = 'gpt-4';
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million) VALUES
    ('gpt-4', '2025-01-01', 30, 60), ('gpt-3.5-turbo', '2025-01-01', 0.5, 1.5)
ON CONFLICT DO NOTHING;
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, alert_at)
VALUES ('llm', 'api_key', 'quota', 'cost_usd', 'day', 1.00, '{0.5,1}');
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, action)
VALUES ('llm', 'team', 'quota', 'cost_usd', 'month', 0.70, 'downgrade');
SELECT model, input_per_million, output_per_million FROM usage_guard.model_prices ORDER BY model;

\echo '== 18. Admit before the call (estimate: 2000 in, at most 1000 out), settle after it with the real tokens'
LISTEN usage_guard_alerts;
SELECT reservation_id, allowed, model, estimated_cost, headers ->> 'X-Budget-Remaining' AS budget_remaining
  FROM usage_guard.admit('globex', 'key-bob', 'gpt-4', 2000, 1000) \gset
SELECT :'allowed' AS allowed, :'model' AS model, :'estimated_cost' AS estimated_cost,
       :'budget_remaining' AS "X-Budget-Remaining";
SELECT input_tokens, output_tokens, cost, estimated_cost, cost_delta AS given_back
  FROM usage_guard.settle('globex', :'reservation_id', 1500, 800);

\echo '== 19. A long answer costs more than its estimate: charged anyway, and the 50% budget alert fires once (NOTIFY)'
SELECT reservation_id FROM usage_guard.admit('globex', 'key-bob', 'gpt-4', 2000, 1000) \gset
SELECT cost, cost_delta AS charged_past_estimate FROM usage_guard.settle('globex', :'reservation_id', 2000, 8000);
SELECT level, subject_id, threshold, usage, limit_value FROM usage_guard.alerts WHERE tenant_id = 'globex';

\echo '== 20. The team is past its $0.70 budget for gpt-4: the next request is downgraded to gpt-3.5-turbo'
SELECT reservation_id, allowed, action, requested_model, model, estimated_cost
  FROM usage_guard.admit('globex', 'key-bob', 'gpt-4', 2000, 1000) \gset
SELECT :'allowed' AS allowed, :'action' AS action, :'requested_model' AS requested_model,
       :'model' AS model, :'estimated_cost' AS estimated_cost;
SELECT cost FROM usage_guard.settle('globex', :'reservation_id', 1800, 600);

\echo '== 21. A request the budget cannot hold: refused, with the HTTP headers and the JSON body of a 429'
SELECT allowed, action, code, level, limit_name, retry_after,
       headers ->> 'X-Budget-Limit' AS "X-Budget-Limit", headers ->> 'X-Budget-Used' AS "X-Budget-Used",
       headers ->> 'X-Budget-Remaining' AS "X-Budget-Remaining", headers ->> 'Retry-After' AS "Retry-After"
  FROM usage_guard.admit('globex', 'key-bob', 'gpt-3.5-turbo', 1000000, 0);
SELECT jsonb_pretty(detail - 'headers') AS body_of_the_429
  FROM usage_guard.admit('globex', 'key-bob', 'gpt-3.5-turbo', 1000000, 0);
SELECT subject_id, model, requests, cost, over_estimate FROM usage_guard.gateway_report('1 day', 'globex');

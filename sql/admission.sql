-- The gateway calls: admit (model access, budgets in USD, token quotas,
-- request rates, one decision) -> settle (real tokens) or cancel; alerts
-- once per window; downgrade to a cheaper model; bad input changes nothing.
-- Seed 003's roles and seed 002's budgets, as rows.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

-- admit needs its two features
INSERT INTO usage_guard.plans (plan_code) VALUES ('ai_pro');
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('ai', 'ai_pro');
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id, role) VALUES
    ('ai', 'platform', 'team', NULL, NULL),
    ('ai', 'dev-1', 'user', 'platform', 'developer'),
    ('ai', 'guest-1', 'user', 'platform', 'guest'),
    ('ai', 'k-dev', 'api_key', 'dev-1', NULL),
    ('ai', 'k-guest', 'api_key', 'guest-1', NULL),
    ('ai', 'ops-1', 'user', 'platform', NULL),
    ('ai', 'k-ops', 'api_key', 'ops-1', NULL);
INSERT INTO usage_guard.models (model, provider) VALUES
    ('haiku', 'anthropic'), ('sonnet', 'anthropic'), ('titan', 'amazon');
UPDATE usage_guard.models SET downgrade_to = 'haiku' WHERE model = 'sonnet';
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million) VALUES
    ('haiku',  '2025-01-01 00:00+00', 1,  5),
    ('sonnet', '2025-01-01 00:00+00', 3, 15),
    ('titan',  '2025-01-01 00:00+00', 2,  6);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 10, 10, at => '2025-11-18 10:00+00')$$);
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token'), ('cost_usd', 'USD');

-- 003's table: Developer 100,000 tokens/day, Sonnet and Haiku, $50/day;
-- Guest 1,000 tokens/day, Haiku, $1/day.  Rows per role, at the user level.
INSERT INTO usage_guard.subject_limits (role, level, limit_kind, feature_key, period, hard_limit) VALUES
    ('developer', 'user', 'quota', 'tokens',   'day', 100000),
    ('developer', 'user', 'quota', 'cost_usd', 'day', 50),
    ('guest',     'user', 'quota', 'tokens',   'day', 1000),
    ('guest',     'user', 'quota', 'cost_usd', 'day', 1);
INSERT INTO usage_guard.subject_limits (role, level, limit_kind, models) VALUES
    ('developer', 'user', 'model', '{sonnet,haiku}'),
    ('guest',     'user', 'model', '{haiku}');
-- 002's per-key budgets: hourly 10.00 (alerts at 80% and 100%), daily 20.00, monthly 5000.00
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, rolling, hard_limit, alert_at) VALUES
    ('ai_pro', 'api_key', 'quota', 'cost_usd', '1 hour', 10.00, '{0.8,1}');
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit) VALUES
    ('ai_pro', 'api_key', 'quota', 'cost_usd', 'day', 20.00),
    ('ai_pro', 'api_key', 'quota', 'cost_usd', 'month', 5000.00);

-- bad limits: a clear error each
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, models, hard_limit) VALUES ('ai_pro', 'user', 'model', '{haiku}', 5)$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, models) VALUES ('ai_pro', 'user', 'model', '{}')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, models) VALUES ('ai_pro', 'user', 'model', '{haiku,NULL}')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, action) VALUES ('ai_pro', 'team', 'quota', 'tokens', 'day', 5, 'queue')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit, action) VALUES ('ai_pro', 'team', 'rate', '1 minute', 5, 'downgrade')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, action) VALUES ('ai_pro', 'team', 'quota', 'tokens', 'day', 5, 'shout')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, alert_at) VALUES ('ai_pro', 'team', 'quota', 'tokens', 'day', 5, '{0.5,0,1}')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, alert_at) VALUES ('ai_pro', 'team', 'quota', 'tokens', 'day', 5, '{0.1,0.2,0.3,0.4,0.5}')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit, action, queue_timeout) VALUES ('ai_pro', 'team', 'rate', '1 minute', 5, 'queue', '2 minutes')$$);
SELECT try($$INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, per, hard_limit, queue_depth) VALUES ('ai_pro', 'team', 'rate', '1 minute', 5, 10)$$);
SELECT try($$INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million) VALUES ('haiku', '2026-01-01', 'NaN', 1)$$);
SELECT try($$INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million) VALUES ('haiku', '2026-01-01', 0.0000001, 1)$$);

-- a developer calls sonnet: 2,000 in, at most 1,000 out: $0.021
SELECT allowed, decision, action, model, estimated_tokens, estimated_cost, level, feature_key, limit_name,
       reservation_id IS NOT NULL AS reserved, expires_at
  FROM usage_guard.admit('ai', 'k-dev', 'sonnet', 2000, 1000, at => '2025-11-18 10:00+00');
SELECT reservation_id AS r1 FROM usage_guard.reservations WHERE tenant_id = 'ai' ORDER BY reserved_at DESC LIMIT 1 \gset
-- the estimate is in the ledger at every level, once per feature
SELECT kind, feature_key, amount, subject_id, subject_path, attributes->>'model' AS model
  FROM usage_guard.usage_events WHERE tenant_id = 'ai' ORDER BY event_id;
-- settle with the real tokens: 1,500 in, 200 out = $0.0075; the rest goes back
SELECT state, settled, model, input_tokens, output_tokens, cost, estimated_cost, cost_delta
  FROM usage_guard.settle('ai', :'r1', 1500, 200);
-- idempotent: the same settle again changes nothing
SELECT state, settled, cost, cost_delta FROM usage_guard.settle('ai', :'r1', 1500, 200);
SELECT regexp_replace(try(format($$SELECT usage_guard.settle('ai', %L, 1500, 201)$$, :'r1')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT regexp_replace(try(format($$SELECT usage_guard.cancel('ai', %L)$$, :'r1')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT feature_key, sum(amount) FROM usage_guard.usage_events WHERE tenant_id = 'ai' GROUP BY 1 ORDER BY 1;

-- model access: a guest may call haiku only (code model_not_allowed, level user)
SELECT allowed, decision, action, code, level, subject_id, limit_kind, detail->>'code' AS detail_code,
       detail->>'message' AS message
  FROM usage_guard.admit('ai', 'k-guest', 'sonnet', 10, 10, at => '2025-11-18 10:01+00');
SELECT allowed, code FROM usage_guard.admit('ai', 'k-dev', 'titan', 10, 10, at => '2025-11-18 10:01+00');
-- nothing was reserved for the refused calls
SELECT count(*) FROM usage_guard.reservations WHERE tenant_id = 'ai';

-- the guest's $1/day: haiku at $1 + $5 per 1M; 100 in, 100 out = $0.0006.
-- The token cap (1,000/day) refuses first: 600 + 600 > 1000
SELECT allowed, action, feature_key, limit_name, hard_limit, usage, remaining,
       headers->>'X-Budget-Limit' AS budget_limit, headers->>'X-Budget-Remaining' AS budget_remaining
  FROM usage_guard.admit('ai', 'k-guest', 'haiku', 300, 300, at => '2025-11-18 10:02+00');
SELECT reservation_id AS r2 FROM usage_guard.reservations WHERE tenant_id = 'ai' ORDER BY reserved_at DESC LIMIT 1 \gset
SELECT allowed, action, code, feature_key, level, limit_name, usage, remaining, retry_after, reset_at,
       detail->>'code' AS detail_code, detail->>'reset_at' AS detail_reset
  FROM usage_guard.admit('ai', 'k-guest', 'haiku', 300, 300, at => '2025-11-18 10:03+00');
-- cancel gives the estimate back; twice is fine; then the call fits
SELECT usage_guard.cancel('ai', :'r2') AS first, usage_guard.cancel('ai', :'r2') AS second;
SELECT regexp_replace(try(format($$SELECT usage_guard.settle('ai', %L, 1, 1)$$, :'r2')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT allowed FROM usage_guard.admit('ai', 'k-guest', 'haiku', 300, 300, at => '2025-11-18 10:04+00');

-- estimates never block a customer who has budget: k-ops has only the
-- plan's budgets.  30 requests estimated at $0.6 each ($18 held at once
-- would pass the $10 hourly budget) settle at $0.03 each: every one is
-- admitted.  (Each call commits: what a settle gives back counts from its
-- commit on, never while it could still roll back.)
DO $$
DECLARE
    a usage_guard.admission;
    s usage_guard.settlement;
    refused int := 0;
BEGIN
    FOR i IN 1..30 LOOP
        -- 200,000 in at $3/1M = 0.6; real: 10,000 in = 0.03
        a := usage_guard.admit('ai', 'k-ops', 'sonnet', 200000, 0, at => '2025-11-18 11:00+00'::timestamptz + i * interval '1 second');
        IF NOT a.allowed THEN refused := refused + 1; CONTINUE; END IF;
        COMMIT;
        s := usage_guard.settle('ai', a.reservation_id, 10000, 0);
        COMMIT;
    END LOOP;
    RAISE NOTICE 'refused: %', refused;
END
$$;
SELECT state, count(*), sum(cost) FROM usage_guard.reservations WHERE subject_id = 'k-ops' GROUP BY 1;

-- the hourly budget's alerts: none yet ($0.9 of $10 used)
SELECT count(*) FROM usage_guard.alerts WHERE tenant_id = 'ai';
-- a real cost above the estimate is charged past the limit, the alerts at
-- 80% and 100% fire, and the next request is refused
SELECT allowed, estimated_cost FROM usage_guard.admit('ai', 'k-ops', 'sonnet', 1000, 0, at => '2025-11-18 11:10+00');
SELECT reservation_id AS r3 FROM usage_guard.reservations WHERE tenant_id = 'ai' ORDER BY reserved_at DESC LIMIT 1 \gset
-- the call ran long: 3,000,000 in = $9: $9.9 of $10, then 200,000 more
SELECT cost, cost_delta FROM usage_guard.settle('ai', :'r3', 3000000, 0);
SELECT subject_id, level, threshold, usage, limit_value, action, window_end - window_start AS slot
  FROM usage_guard.alerts WHERE tenant_id = 'ai' ORDER BY threshold;
SELECT allowed, action, feature_key, limit_name, usage, remaining, retry_after,
       headers->>'X-Budget-Used' AS used, headers->>'X-Budget-Remaining' AS budget_remaining,
       headers->>'Retry-After' AS retry_header
  FROM usage_guard.admit('ai', 'k-ops', 'haiku', 10000, 20000, at => '2025-11-18 11:11+00');
SELECT allowed FROM usage_guard.admit('ai', 'k-ops', 'haiku', 10, 10, at => '2025-11-18 11:11+00');
SELECT reservation_id AS r4 FROM usage_guard.reservations WHERE tenant_id = 'ai' ORDER BY reserved_at DESC LIMIT 1 \gset
SELECT cost FROM usage_guard.settle('ai', :'r4', 100000, 0);
-- $9.90006 + $0.1: the 100% alert came with this settle, and each fired once
SELECT threshold, usage FROM usage_guard.alerts WHERE tenant_id = 'ai' ORDER BY threshold;
SELECT allowed FROM usage_guard.admit('ai', 'k-ops', 'haiku', 10, 10, at => '2025-11-18 11:12+00');

-- downgrade: the team's weekly budget downgrades sonnet to haiku
INSERT INTO usage_guard.subject_limits (plan_code, level, limit_kind, feature_key, period, hard_limit, action)
VALUES ('ai_pro', 'team', 'quota', 'cost_usd', 'week', 10.03, 'downgrade');
SELECT sum(amount) AS team_week FROM usage_guard.usage_events
 WHERE tenant_id = 'ai' AND feature_key = 'cost_usd' AND subject_path @> '{platform}';
SELECT allowed, action, model, requested_model, downgrade_to, estimated_cost, level, limit_name
  FROM usage_guard.admit('ai', 'k-dev', 'sonnet', 10000, 0, at => '2025-11-18 11:13+00');
SELECT model, requested_model, action, estimated_cost FROM usage_guard.reservations
 WHERE tenant_id = 'ai' ORDER BY reserved_at DESC LIMIT 1;
-- and when the cheaper model does not fit either, the refusal names the
-- budget and the model tried last
SELECT allowed, action, code, model, requested_model, level, feature_key, limit_name
  FROM usage_guard.admit('ai', 'k-dev', 'sonnet', 30000, 0, at => '2025-11-18 11:13+00');

-- action alert: allowed past the limit, reported as the action
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, feature_key, period, hard_limit, action)
VALUES ('ai', 'guest-1', 'user', 'quota', 'tokens', 'day', 1000, 'alert');
SELECT allowed, action, decision FROM usage_guard.admit('ai', 'k-guest', 'haiku', 500, 0, at => '2025-11-18 11:14+00');
SELECT level, subject_id, feature_key, threshold, usage, limit_value, action
  FROM usage_guard.alerts WHERE tenant_id = 'ai' AND feature_key = 'tokens';

-- action queue: a rate limit of 1 request per 2 seconds on k-queue; the
-- second call waits for its turn (no lock held) and passes, reporting the
-- action; a call that could not pass within queue_timeout is refused at once
INSERT INTO usage_guard.subjects (tenant_id, subject_id, level, parent_id) VALUES ('ai', 'k-queue', 'api_key', 'ops-1');
INSERT INTO usage_guard.subject_limits (tenant_id, subject_id, level, limit_kind, per, hard_limit, action, queue_timeout)
VALUES ('ai', 'k-queue', 'api_key', 'rate', '2 seconds', 1, 'queue', '5 seconds');
SELECT allowed, action FROM usage_guard.admit('ai', 'k-queue', 'haiku', 1, 1, at => '2025-11-18 11:20+00');
SELECT clock_timestamp() AS t0 \gset
SELECT allowed, action, limit_kind FROM usage_guard.admit('ai', 'k-queue', 'haiku', 1, 1, at => '2025-11-18 11:20+00');
SELECT clock_timestamp() - :'t0' >= interval '1.9 seconds' AS waited;
SELECT reserved_at - '2025-11-18 11:20+00' >= interval '1.9 seconds' AS judged_later
  FROM usage_guard.reservations WHERE subject_id = 'k-queue' ORDER BY reserved_at DESC LIMIT 1;
UPDATE usage_guard.subject_limits SET queue_timeout = '1 second' WHERE subject_id = 'k-queue';
SELECT allowed, action, code, retry_after > 0 AS retry FROM usage_guard.admit('ai', 'k-queue', 'haiku', 1, 1, at => '2025-11-18 11:20+00');
SELECT metric, labels, value FROM usage_guard.metrics()
 WHERE metric IN ('usage_guard_queued', 'usage_guard_enforcement_actions_total', 'usage_guard_reservations_total')
 ORDER BY metric, labels::text;

-- an idempotent admit: the retry reports the same reservation and counts nothing
SELECT allowed, estimated_cost FROM usage_guard.admit('ai', 'k-guest', 'haiku', 100, 100, idempotency_key => 'req-1', at => '2025-11-18 11:15+00');
SELECT sum(amount) AS before FROM usage_guard.usage_events WHERE tenant_id = 'ai' AND feature_key = 'tokens' \gset
SELECT allowed, estimated_cost, estimated_tokens,
       reservation_id = (SELECT reservation_id FROM usage_guard.reservations WHERE tenant_id = 'ai' AND idempotency_key = 'req-1') AS same
  FROM usage_guard.admit('ai', 'k-guest', 'haiku', 100, 100, idempotency_key => 'req-1', at => '2025-11-18 11:15+00');
SELECT sum(amount) = :before AS unchanged FROM usage_guard.usage_events WHERE tenant_id = 'ai' AND feature_key = 'tokens';

-- expiry gives back what was never settled or cancelled
SELECT count(*) AS open FROM usage_guard.reservations WHERE tenant_id = 'ai' AND state = 'open';
SELECT usage_guard.expire_reservations('2025-11-18 11:10+00');
SELECT usage_guard.expire_reservations('2025-11-18 12:00+00');
SELECT state, count(*) FROM usage_guard.reservations WHERE tenant_id = 'ai' GROUP BY 1 ORDER BY 1;
-- a late settle of an expired reservation still records the real usage
SELECT reservation_id AS r6 FROM usage_guard.reservations WHERE tenant_id = 'ai' AND idempotency_key = 'req-1' \gset
SELECT state, settled, cost, estimated_cost FROM usage_guard.settle('ai', :'r6', 50, 50);
SELECT kind, amount FROM usage_guard.usage_events WHERE tenant_id = 'ai' AND attributes->>'reservation_id' = :'r6' AND feature_key = 'tokens' ORDER BY event_id;

-- reports: cost by tenant, subject and model (003's first step), budgets used (002)
SELECT tenant_id, subject_id, model, requests, settled, open, downgraded, input_tokens, output_tokens,
       cost, held_cost, over_estimate, cost_share
  FROM usage_guard.gateway_report('1 day', 'ai', '2025-11-18 12:00+00');
SELECT subject_id, level, budget, action, hard_limit, usage, used_percent, window_start, window_end
  FROM usage_guard.budget_usage('ai', '2025-11-18 11:30+00');
SELECT try($$SELECT * FROM usage_guard.gateway_report('-1 day')$$);
SELECT try($$SELECT * FROM usage_guard.budget_usage(NULL)$$);
SELECT metric, labels, value FROM usage_guard.metrics() WHERE metric = 'usage_guard_alerts_total' ORDER BY labels::text;

-- bad input: a clear error each, nothing changed
SELECT count(*) AS ledger_rows FROM usage_guard.usage_events WHERE tenant_id = 'ai' \gset
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', -1, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 'NaN', 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 10, 'Infinity')$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 10.5, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 1e13, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', NULL, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', NULL, 1, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-ops', 'gpt-99', 1, 10)$$);
INSERT INTO usage_guard.models (model, provider) VALUES ('unpriced', 'nobody');
SELECT try($$SELECT usage_guard.admit('ai', 'k-ops', 'unpriced', 1, 10, at => '2025-11-18 12:00+00')$$);
SELECT try($$SELECT usage_guard.admit('ai', 'nobody', 'haiku', 1, 10)$$);
SELECT try($$SELECT usage_guard.admit('nobody', 'k-dev', 'haiku', 1, 10)$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 1, 10, ttl => '0 seconds')$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 1, 10, ttl => '2 days')$$);
SELECT try($$SELECT usage_guard.admit('ai', 'k-dev', 'haiku', 1, 10, at => 'infinity')$$);
SELECT try($$SELECT usage_guard.settle('ai', '00000000-0000-4000-8000-000000000000', 1, 1)$$);
SELECT try($$SELECT usage_guard.settle('ai', NULL, 1, 1)$$);
SELECT regexp_replace(try(format($$SELECT usage_guard.settle('ai', %L, -1, 1)$$, :'r1')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT regexp_replace(try(format($$SELECT usage_guard.settle('ai', %L, 10, 1, 11)$$, :'r1')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT regexp_replace(try(format($$SELECT usage_guard.settle('other', %L, 1500, 200)$$, :'r1')), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>');
SELECT try($$SELECT usage_guard.cancel('ai', '00000000-0000-4000-8000-000000000000')$$);
SELECT count(*) = :ledger_rows AS unchanged FROM usage_guard.usage_events WHERE tenant_id = 'ai';

-- the ledger is the truth: the live counters of every level equal its sums
SELECT c.subject_id, c.feature_key, c.window_start, c.usage,
       c.usage = (SELECT coalesce(sum(e.amount), 0) FROM usage_guard.usage_events e
         WHERE e.tenant_id = 'ai' AND e.feature_key = c.feature_key
           AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end
           AND (c.subject_id IS NULL OR e.subject_path @> ARRAY[c.subject_id])) AS equal
  FROM usage_guard.usage_counters c
 WHERE c.tenant_id = 'ai' AND c.window_end < 'infinity' AND c.window_start > '2025-01-01'
   AND c.window_start <= '2025-11-18 11:15+00'
 ORDER BY 1, 2, 3;

-- the application level calls the gateway functions and reads nothing
CREATE ROLE admission_app;
GRANT usage_guard_application TO admission_app;
SET ROLE admission_app;
SELECT allowed FROM usage_guard.admit('ai', 'k-ops', 'haiku', 1, 1);
SELECT reservation_id AS r5 FROM usage_guard.admit('ai', 'k-ops', 'haiku', 1, 1) \gset
SELECT settled FROM usage_guard.settle('ai', :'r5', 1, 1);
SELECT try($$SELECT count(*) FROM usage_guard.reservations$$);
SELECT try($$SELECT usage_guard.expire_reservations()$$);
RESET ROLE;
-- row-level security on the ledger scopes the gateway calls: a role kept
-- away from tenant ai may neither admit, settle nor cancel for it
CREATE TEMP TABLE adm_open AS
SELECT reservation_id FROM usage_guard.admit('ai', 'k-ops', 'haiku', 1, 1);
GRANT SELECT ON adm_open TO admission_app;
SELECT count(*) AS ledger_before FROM usage_guard.usage_events WHERE tenant_id = 'ai' \gset
ALTER TABLE usage_guard.usage_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY adm_scope ON usage_guard.usage_events TO admission_app
    USING (tenant_id <> 'ai') WITH CHECK (tenant_id <> 'ai');
SET ROLE admission_app;
SELECT try($$SELECT usage_guard.admit('ai', 'k-ops', 'haiku', 1, 1)$$);
SELECT try(format('SELECT usage_guard.settle(%L, %L, 1, 1)', 'ai', (SELECT reservation_id FROM adm_open)));
SELECT try(format('SELECT usage_guard.cancel(%L, %L)', 'ai', (SELECT reservation_id FROM adm_open)));
RESET ROLE;
SELECT count(*) = :ledger_before AS unchanged FROM usage_guard.usage_events WHERE tenant_id = 'ai';
SELECT state FROM usage_guard.reservations WHERE reservation_id = (SELECT reservation_id FROM adm_open);
-- a policy that lets the role act for ai: the same calls work
DROP POLICY adm_scope ON usage_guard.usage_events;
CREATE POLICY adm_scope ON usage_guard.usage_events TO admission_app
    USING (tenant_id = 'ai') WITH CHECK (tenant_id = 'ai');
SET ROLE admission_app;
SELECT usage_guard.cancel('ai', (SELECT reservation_id FROM adm_open));
RESET ROLE;
DROP POLICY adm_scope ON usage_guard.usage_events;
ALTER TABLE usage_guard.usage_events DISABLE ROW LEVEL SECURITY;
-- names past the length limit: a clear error
SELECT try(format($$SELECT usage_guard.admit(%L, 'k-ops', 'haiku', 1, 1)$$, repeat('t', 256)));
SELECT try(format($$SELECT usage_guard.admit('ai', 'k-ops', %L, 1, 1)$$, repeat('m', 256)));
SELECT try(format($$SELECT usage_guard.admit('ai', 'k-ops', 'haiku', 1, 1, idempotency_key => %L)$$, repeat('k', 256)));
DROP TABLE adm_open;
DROP OWNED BY admission_app;
DROP ROLE admission_app;

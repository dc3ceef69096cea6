-- usage_guard 0.6.0 -> 0.7.0: gateway limits II: models and their prices,
-- model access and limit actions in subject_limits, reservations, alerts,
-- and the gateway calls admit, settle, cancel and expire_reservations.  Every change here is also in sql/src, which holds the
-- current definition of every object; the upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.7.0'" to load this file. \quit

--------------------------------------------------------------------------
-- Models and prices
--------------------------------------------------------------------------

CREATE TABLE usage_guard.models (
    model        text NOT NULL,
    provider     text NOT NULL,
    downgrade_to text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_pkey PRIMARY KEY (model),
    CONSTRAINT models_downgrade_fkey FOREIGN KEY (downgrade_to)
        REFERENCES usage_guard.models (model) ON UPDATE CASCADE,
    CONSTRAINT models_names_check CHECK (
        octet_length(model) BETWEEN 1 AND 255 AND octet_length(provider) BETWEEN 1 AND 255),
    CONSTRAINT models_not_own_downgrade CHECK (downgrade_to IS DISTINCT FROM model)
);
COMMENT ON TABLE usage_guard.models IS
    'LLM models a gateway calls: provider, and the cheaper model a limit with action downgrade switches to';

-- Prices in USD per 1,000,000 tokens (per 1M: today's list prices have at
-- most a few decimals there; per 1K they would need more).  A row applies
-- from effective_from until the next row of the model; usage is priced at
-- the row in force at its time, so history keeps the price it was charged.
CREATE TABLE usage_guard.model_prices (
    model                    text NOT NULL,
    effective_from           timestamptz NOT NULL,
    input_per_million        numeric NOT NULL,
    output_per_million       numeric NOT NULL,
    cached_input_per_million numeric,
    CONSTRAINT model_prices_pkey PRIMARY KEY (model, effective_from),
    CONSTRAINT model_prices_model_fkey FOREIGN KEY (model)
        REFERENCES usage_guard.models (model) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT model_prices_values_check CHECK (
        input_per_million >= 0 AND input_per_million <= 1e6
        AND output_per_million >= 0 AND output_per_million <= 1e6
        AND (cached_input_per_million IS NULL
             OR (cached_input_per_million >= 0 AND cached_input_per_million <= 1e6))
        -- a million tokens' price to 6 places keeps a token's cost to 12, exact in the counters
        AND scale(input_per_million) <= 6 AND scale(output_per_million) <= 6
        AND coalesce(scale(cached_input_per_million), 0) <= 6
        AND isfinite(effective_from))
);
COMMENT ON TABLE usage_guard.model_prices IS
    'Model prices in USD per 1M tokens (input, output, cached input; NULL cached = the input price), each in force from effective_from until the model''s next row';

SELECT pg_catalog.pg_extension_config_dump('usage_guard.models', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.model_prices', '');

-- The exact cost of a request in USD: input tokens (of which cached_input
-- at the cached price) and output tokens at the model's prices in force at
-- `at`.  An unknown model, or one without a price at `at`, is an error
-- (42704): a gateway must not serve a model nobody priced.  SECURITY
-- DEFINER: the application level prices requests without reading the
-- price table.
CREATE FUNCTION usage_guard.model_cost(
    model               text,
    input_tokens        numeric,
    output_tokens       numeric,
    cached_input_tokens numeric DEFAULT 0,
    at                  timestamptz DEFAULT now())
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_model  ALIAS FOR $1;
    p_in     ALIAS FOR $2;
    p_out    ALIAS FOR $3;
    p_cached ALIAS FOR $4;
    p_at     ALIAS FOR $5;
    price    record;
BEGIN
    IF p_model IS NULL OR p_in IS NULL OR p_out IS NULL OR p_cached IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'model_cost arguments must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_in = 'NaN' OR p_out = 'NaN' OR p_cached = 'NaN'
       OR p_in < 0 OR p_out < 0 OR p_cached < 0
       OR p_in > 1e12 OR p_out > 1e12
       OR p_in <> trunc(p_in) OR p_out <> trunc(p_out) OR p_cached <> trunc(p_cached) THEN
        RAISE EXCEPTION 'token counts must be whole numbers from 0 to 1e12'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('input_tokens %s, output_tokens %s, cached_input_tokens %s', p_in, p_out, p_cached);
    END IF;
    IF p_cached > p_in THEN
        RAISE EXCEPTION 'cached_input_tokens (%) cannot exceed input_tokens (%)', p_cached, p_in
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT mp.input_per_million, mp.output_per_million,
           coalesce(mp.cached_input_per_million, mp.input_per_million) AS cached_per_million
      INTO price
      FROM usage_guard.model_prices mp
     WHERE mp.model = p_model AND mp.effective_from <= p_at
     ORDER BY mp.effective_from DESC
     LIMIT 1;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM usage_guard.models m WHERE m.model = p_model) THEN
            RAISE EXCEPTION 'unknown model "%"', p_model
                USING ERRCODE = 'undefined_object',
                      HINT = 'Models are rows of usage_guard.models, their prices rows of usage_guard.model_prices.';
        END IF;
        RAISE EXCEPTION 'model "%" has no price at %', p_model, p_at
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add a row to usage_guard.model_prices with an effective_from at or before that time.';
    END IF;
    RETURN trim_scale(((p_in - p_cached) * price.input_per_million
                       + p_cached * price.cached_per_million
                       + p_out * price.output_per_million) / 1000000);
END
$$;
COMMENT ON FUNCTION usage_guard.model_cost(text, numeric, numeric, numeric, timestamptz) IS
    'Exact cost in USD of input tokens (cached_input_tokens of them at the cached price) and output tokens at the model''s prices in force at `at`; an unknown or unpriced model is an error (42704)';

--------------------------------------------------------------------------
-- Model access and actions in subject_limits
--------------------------------------------------------------------------

ALTER TABLE usage_guard.subject_limits
    ADD COLUMN models        text[],
    ADD COLUMN action        text NOT NULL DEFAULT 'block',
    ADD COLUMN alert_at      numeric[],
    ADD COLUMN queue_timeout interval,
    ADD COLUMN queue_depth   integer,
    DROP CONSTRAINT subject_limits_kind_check,
    ADD CONSTRAINT subject_limits_kind_check CHECK (CASE limit_kind
        WHEN 'quota' THEN feature_key IS NOT NULL AND per IS NULL AND burst IS NULL
             AND (period IS NULL) <> (rolling IS NULL)
             AND (soft_limit IS NOT NULL OR hard_limit IS NOT NULL)
        WHEN 'rate' THEN period IS NULL AND rolling IS NULL AND soft_limit IS NULL
             AND hard_limit IS NOT NULL AND per IS NOT NULL
        WHEN 'concurrency' THEN feature_key IS NULL AND period IS NULL AND rolling IS NULL AND per IS NULL
             AND soft_limit IS NULL AND burst IS NULL AND hard_limit IS NOT NULL
        WHEN 'model' THEN feature_key IS NULL AND period IS NULL AND rolling IS NULL AND per IS NULL
             AND soft_limit IS NULL AND hard_limit IS NULL AND burst IS NULL
        ELSE false END),
    ADD CONSTRAINT subject_limits_models_check CHECK (
        (limit_kind = 'model') = (models IS NOT NULL)
        AND (models IS NULL OR (cardinality(models) BETWEEN 1 AND 1000
                                AND array_position(models, NULL) IS NULL))),
    ADD CONSTRAINT subject_limits_action_check CHECK (
        action IN ('block', 'alert', 'downgrade', 'queue')
        AND (action <> 'queue' OR limit_kind IN ('rate', 'concurrency'))
        AND (action NOT IN ('alert', 'downgrade') OR limit_kind = 'quota')),
    ADD CONSTRAINT subject_limits_alert_at_check CHECK (alert_at IS NULL OR (
        limit_kind = 'quota' AND cardinality(alert_at) BETWEEN 1 AND 4
        AND array_position(alert_at, NULL) IS NULL AND 0 < ALL (alert_at) AND 10 >= ALL (alert_at))),
    ADD CONSTRAINT subject_limits_queue_check CHECK (
        (action = 'queue' OR (queue_timeout IS NULL AND queue_depth IS NULL))
        AND (queue_timeout IS NULL OR (queue_timeout > interval '0' AND queue_timeout <= interval '60 seconds'))
        AND (queue_depth IS NULL OR queue_depth BETWEEN 1 AND 10000));

--------------------------------------------------------------------------
-- Reservations
--------------------------------------------------------------------------

-- One row per admitted request.  The estimate is in the ledger (rows of
-- kind 'reserve' for tokens and cost_usd) from admit on, so it counts
-- against every limit at once and survives a crash; settle adds rows of
-- kind 'settle' (real minus held), cancel and expiry rows of kind
-- 'release' (minus the estimate).  reserved_at is the time of every one of
-- those rows, so they all land in the windows the estimate was charged to.
CREATE TABLE usage_guard.reservations (
    tenant_id               text NOT NULL,
    reservation_id          uuid NOT NULL,
    subject_id              text NOT NULL,
    subject_path            text[] NOT NULL,
    model                   text NOT NULL,
    requested_model         text NOT NULL,
    action                  text NOT NULL,
    state                   text NOT NULL DEFAULT 'open',
    reserved_at             timestamptz NOT NULL,
    expires_at              timestamptz NOT NULL,
    estimated_input_tokens  numeric NOT NULL,
    estimated_output_tokens numeric NOT NULL,
    estimated_cost          numeric NOT NULL,
    input_tokens            numeric,
    output_tokens           numeric,
    cached_input_tokens     numeric,
    cost                    numeric,
    lease_id                uuid,
    idempotency_key         text,
    closed_at               timestamptz,
    CONSTRAINT reservations_pkey PRIMARY KEY (tenant_id, reservation_id),
    CONSTRAINT reservations_state_check CHECK (
        state IN ('open', 'settled', 'cancelled', 'expired')
        AND (state = 'open') = (closed_at IS NULL)
        AND (state = 'settled') = (cost IS NOT NULL)),
    CONSTRAINT reservations_action_check CHECK (action IN ('none', 'alert', 'downgrade', 'queue'))
);
CREATE UNIQUE INDEX reservations_idempotency_key ON usage_guard.reservations (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX reservations_open ON usage_guard.reservations (expires_at) WHERE state = 'open';
COMMENT ON TABLE usage_guard.reservations IS
    'Admitted gateway requests: the estimate held from admit until settle (real tokens and cost), cancel or expiry; the ledger carries the amounts (kinds reserve, settle, release)';

SELECT pg_catalog.pg_extension_config_dump('usage_guard.reservations', '');

--------------------------------------------------------------------------
-- Alerts
--------------------------------------------------------------------------

-- One row per (limit, subject, window, threshold) that was crossed: the
-- unique key makes an alert fire once even when concurrent requests cross
-- it together (INSERT ... ON CONFLICT DO NOTHING; the NOTIFY goes with the
-- row, at commit).  A rolling window's identity is its length's epoch-aligned
-- slot: a rolling limit alerts at most once per length.
CREATE TABLE usage_guard.alerts (
    alert_id     bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id    text NOT NULL,
    subject_id   text NOT NULL,
    level        text NOT NULL,
    limit_id     bigint NOT NULL,
    feature_key  text NOT NULL,
    threshold    numeric NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    usage        numeric NOT NULL,
    limit_value  numeric NOT NULL,
    action       text NOT NULL,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alerts_pkey PRIMARY KEY (alert_id),
    CONSTRAINT alerts_once UNIQUE (tenant_id, limit_id, subject_id, window_start, threshold)
);
COMMENT ON TABLE usage_guard.alerts IS
    'Alerts fired: a limit''s usage reached threshold x limit_value in a window, once per (limit, subject, window, threshold); each also sent as NOTIFY usage_guard_alerts with the row as JSON';
COMMENT ON COLUMN usage_guard.alerts.subject_id IS
    'The subject whose usage crossed the threshold; '''' for the tenant';

SELECT pg_catalog.pg_extension_config_dump('usage_guard.alerts', '');

--------------------------------------------------------------------------
-- Results
--------------------------------------------------------------------------

CREATE TYPE usage_guard.admission AS (
    allowed          boolean,
    decision         text,
    action           text,
    code             text,
    reservation_id   uuid,
    lease_id         uuid,
    expires_at       timestamptz,
    model            text,
    requested_model  text,
    downgrade_to     text,
    estimated_tokens numeric,
    estimated_cost   numeric,
    level            text,
    subject_id       text,
    feature_key      text,
    limit_kind       text,
    limit_name       text,
    hard_limit       numeric,
    usage            numeric,
    remaining        numeric,
    reset_at         timestamptz,
    retry_after      numeric,
    headers          jsonb,
    detail           jsonb
);
COMMENT ON TYPE usage_guard.admission IS
    'The outcome of admit: allowed, the reservation (id, lease, expiry), the model to call (downgrade_to when a limit downgraded it), the limit that decided, HTTP header values and, when refused, the JSON body of a 429/403';

CREATE TYPE usage_guard.settlement AS (
    reservation_id      uuid,
    state               text,
    settled             boolean,
    model               text,
    input_tokens        numeric,
    output_tokens       numeric,
    cached_input_tokens numeric,
    cost                numeric,
    estimated_tokens    numeric,
    estimated_cost      numeric,
    cost_delta          numeric
);
COMMENT ON TYPE usage_guard.settlement IS
    'The outcome of settle: the real tokens and cost recorded, the estimate held, and cost_delta = cost - estimated_cost (negative: given back; positive: charged past the estimate); settled is false for a repeated settle';

--------------------------------------------------------------------------
-- Calls
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.admit(
    tenant_id       text,
    subject_id      text,
    model           text,
    input_tokens    numeric,
    output_tokens   numeric,
    ttl             interval DEFAULT '5 minutes',
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}',
    at              timestamptz DEFAULT now())
RETURNS usage_guard.admission
AS 'MODULE_PATHNAME', 'usage_guard_admit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.admit(text, text, text, numeric, numeric, interval, text, jsonb, timestamptz) IS
    'Before an LLM call: model access, then every limit of every level of the subject on tokens, cost_usd and requests decided at once for the estimate (input_tokens, at most output_tokens); when allowed, the estimate is reserved (and a concurrency lease taken) until settle, cancel or ttl';

CREATE FUNCTION usage_guard.settle(
    tenant_id           text,
    reservation_id      uuid,
    input_tokens        numeric,
    output_tokens       numeric,
    cached_input_tokens numeric DEFAULT 0)
RETURNS usage_guard.settlement
AS 'MODULE_PATHNAME', 'usage_guard_settle'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.settle(text, uuid, numeric, numeric, numeric) IS
    'After an LLM call: records the real tokens and their cost (at the price in force when admitted) in place of the estimate, charged even past a limit; idempotent (a repeat returns settled = false); works from any session';

CREATE FUNCTION usage_guard.cancel(
    tenant_id      text,
    reservation_id uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'usage_guard_cancel'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.cancel(text, uuid) IS
    'Gives back an open reservation''s estimate and lease; true if it was open, false if already cancelled or expired (idempotent); a settled reservation cannot be cancelled';

CREATE FUNCTION usage_guard.expire_reservations(at timestamptz DEFAULT now())
RETURNS bigint
AS 'MODULE_PATHNAME', 'usage_guard_expire_reservations'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.expire_reservations(timestamptz) IS
    'Gives back the estimates of open reservations whose ttl ended before `at`; returns how many. Until swept, an expired reservation still holds its estimate (conservative): schedule it every minute with pg_cron';

--------------------------------------------------------------------------
-- Gateway reports (0.7.0)
--------------------------------------------------------------------------

-- Cost and tokens per tenant, subject and model over the last `since`, from
-- the reservations (one row per admitted request): seed 003's first
-- investigation step, "cost by consumer and model".  cost is what settled
-- requests cost; held_cost what open ones still hold; over_estimate what
-- settled past their estimate (charged even past a limit).  Runs as the
-- caller: a row-level policy on reservations filters it.
CREATE FUNCTION usage_guard.gateway_report(
    since  interval DEFAULT '1 day',
    tenant text DEFAULT NULL,
    at     timestamptz DEFAULT now())
RETURNS TABLE (tenant_id text, subject_id text, model text, requests bigint, settled bigint,
               open bigint, downgraded bigint, input_tokens numeric, output_tokens numeric,
               cost numeric, held_cost numeric, over_estimate numeric, cost_share numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_since  ALIAS FOR $1;
    p_tenant ALIAS FOR $2;
    p_at     ALIAS FOR $3;
BEGIN
    IF p_since IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'since and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_since <= interval '0' OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'since must be positive and at finite' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH r AS (
        SELECT res.tenant_id, res.subject_id, res.model,
               count(*) AS requests,
               count(*) FILTER (WHERE res.state = 'settled') AS settled,
               count(*) FILTER (WHERE res.state = 'open') AS open,
               count(*) FILTER (WHERE res.action = 'downgrade') AS downgraded,
               coalesce(sum(res.input_tokens), 0) AS input_tokens,
               coalesce(sum(res.output_tokens), 0) AS output_tokens,
               coalesce(sum(res.cost), 0) AS cost,
               coalesce(sum(res.estimated_cost) FILTER (WHERE res.state = 'open'), 0) AS held_cost,
               coalesce(sum(greatest(res.cost - res.estimated_cost, 0)), 0) AS over_estimate
          FROM usage_guard.reservations res
         WHERE res.reserved_at >= p_at - p_since AND res.reserved_at < p_at
           AND (p_tenant IS NULL OR res.tenant_id = p_tenant)
         GROUP BY res.tenant_id, res.subject_id, res.model)
    SELECT r.tenant_id, r.subject_id, r.model, r.requests, r.settled, r.open, r.downgraded,
           r.input_tokens, r.output_tokens, r.cost, r.held_cost, r.over_estimate,
           round(r.cost / nullif(sum(r.cost) OVER (), 0), 4)
      FROM r
     ORDER BY r.cost DESC, r.input_tokens + r.output_tokens DESC, r.tenant_id, r.subject_id, r.model;
END
$$;
COMMENT ON FUNCTION usage_guard.gateway_report(interval, text, timestamptz) IS
    'Cost and tokens per tenant (all, or `tenant`), subject and model of the requests admitted in [at - since, at): settled cost, estimates still held, cost past the estimate, downgrades, share of the cost';

-- Every USD budget (quota on cost_usd in subject_limits) of a tenant's
-- subjects and of the tenant, with its current window and how much of it
-- is used, from the ledger: seed 002's budget usage percentage.
CREATE FUNCTION usage_guard.budget_usage(tenant_id text, at timestamptz DEFAULT now())
RETURNS TABLE (subject_id text, level text, limit_id bigint, budget text, action text,
               hard_limit numeric, usage numeric, used_percent numeric,
               window_start timestamptz, window_end timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
BEGIN
    IF p_tenant IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'tenant_id and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'at must be finite' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH sub AS (
        SELECT ts.plan_code, ts.current_period_start AS cps, ts.current_period_end AS cpe
          FROM usage_guard.tenant_subscriptions ts WHERE ts.tenant_id = p_tenant),
    who AS (
        SELECT s.subject_id, s.level, s.role FROM usage_guard.subjects s WHERE s.tenant_id = p_tenant
        UNION ALL SELECT NULL, 'tenant', NULL),
    lim AS (
        SELECT DISTINCT ON (w.subject_id, coalesce(l.period::text, ''), coalesce(l.rolling, interval '0'))
               w.subject_id, w.level, l.limit_id, l.period::text AS period, l.rolling, l.action, l.hard_limit
          FROM who w
          JOIN usage_guard.subject_limits l ON l.level = w.level
               AND ((l.tenant_id = p_tenant AND l.subject_id IS NOT DISTINCT FROM w.subject_id)
                    OR (l.role IS NOT NULL AND l.role = w.role)
                    OR l.plan_code = (SELECT sub.plan_code FROM sub))
         WHERE l.limit_kind = 'quota' AND l.feature_key = 'cost_usd' AND l.hard_limit IS NOT NULL
         ORDER BY w.subject_id, coalesce(l.period::text, ''), coalesce(l.rolling, interval '0'),
                  CASE WHEN l.tenant_id IS NOT NULL THEN 0 WHEN l.role IS NOT NULL THEN 1 ELSE 2 END),
    win AS (
        SELECT lim.*,
               CASE WHEN lim.rolling IS NOT NULL THEN p_at - lim.rolling
                    ELSE (usage_guard.window_of(lim.period, p_at, (SELECT cps FROM sub), (SELECT cpe FROM sub))).window_start END AS ws,
               CASE WHEN lim.rolling IS NOT NULL THEN p_at
                    ELSE (usage_guard.window_of(lim.period, p_at, (SELECT cps FROM sub), (SELECT cpe FROM sub))).window_end END AS we
          FROM lim)
    SELECT win.subject_id, win.level, win.limit_id,
           coalesce(win.period, 'rolling ' || CASE
               WHEN extract(epoch FROM win.rolling)::bigint % 86400 = 0 THEN (extract(epoch FROM win.rolling)::bigint / 86400) || 'd'
               WHEN extract(epoch FROM win.rolling)::bigint % 3600 = 0 THEN (extract(epoch FROM win.rolling)::bigint / 3600) || 'h'
               ELSE (extract(epoch FROM win.rolling)::bigint / 60) || 'min' END),
           win.action, win.hard_limit, u.usage,
           round(100 * u.usage / nullif(win.hard_limit, 0), 2), win.ws, win.we
      FROM win
     CROSS JOIN LATERAL (
        SELECT coalesce(sum(e.amount), 0) AS usage
          FROM usage_guard.usage_events e
         WHERE e.tenant_id = p_tenant AND e.feature_key = 'cost_usd'
           AND e.occurred_at >= win.ws
           AND (CASE WHEN win.rolling IS NOT NULL THEN e.occurred_at <= win.we ELSE e.occurred_at < win.we END)
           AND (win.subject_id IS NULL OR e.subject_path @> ARRAY[win.subject_id])) u
     ORDER BY 8 DESC NULLS LAST, 1 NULLS LAST, 4;
END
$$;
COMMENT ON FUNCTION usage_guard.budget_usage(text, timestamptz) IS
    'Every USD budget (quota on cost_usd) of a tenant and its subjects: the current window at `at`, the usage from the ledger and the percentage used, most used first';

-- Privileges of the new objects (sql/src/privileges.sql)
REVOKE ALL ON FUNCTION usage_guard.model_cost(text, numeric, numeric, numeric, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.model_cost(text, numeric, numeric, numeric, timestamptz)
    TO usage_guard_application;
GRANT SELECT ON usage_guard.models, usage_guard.model_prices TO usage_guard_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_guard.models, usage_guard.model_prices
    TO usage_guard_admin;
REVOKE ALL ON FUNCTION
    usage_guard.admit(text, text, text, numeric, numeric, interval, text, jsonb, timestamptz),
    usage_guard.settle(text, uuid, numeric, numeric, numeric),
    usage_guard.cancel(text, uuid),
    usage_guard.expire_reservations(timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    usage_guard.admit(text, text, text, numeric, numeric, interval, text, jsonb, timestamptz),
    usage_guard.settle(text, uuid, numeric, numeric, numeric),
    usage_guard.cancel(text, uuid)
    TO usage_guard_application;
GRANT EXECUTE ON FUNCTION usage_guard.expire_reservations(timestamptz) TO usage_guard_admin;
GRANT SELECT ON usage_guard.reservations, usage_guard.alerts TO usage_guard_reader;
GRANT SELECT, DELETE ON usage_guard.alerts TO usage_guard_admin;
REVOKE ALL ON FUNCTION usage_guard.gateway_report(interval, text, timestamptz),
    usage_guard.budget_usage(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.gateway_report(interval, text, timestamptz),
    usage_guard.budget_usage(text, timestamptz) TO usage_guard_reader;

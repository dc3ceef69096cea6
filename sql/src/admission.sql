-- usage_guard admission: the per-request calls of an LLM gateway (since
-- 0.7.0).
--
-- Owns reservations (an admitted request's estimate, until it is settled
-- with the real tokens, cancelled or expired), alerts (a limit's usage
-- crossing one of its alert_at thresholds, once per window and subject),
-- the result types admission and settlement, and the calls admit, settle,
-- cancel and expire_reservations (src/gateway.c).  Tokens and cost are two
-- features, `tokens` and `cost_usd`; a budget is a quota on cost_usd in
-- subject_limits.  docs/architecture.md, "Gateway limits II".
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql after
-- models.sql: every file uses only objects of the files before it.

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

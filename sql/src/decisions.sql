-- usage_guard decisions: the calls an application makes, in C.
--
-- Owns the result type usage_decision, usage_check, usage_allowed, usage_consume,
-- usage_enforce, usage_record and usage_record_batch, and window_of (the decisions' window
-- computation, for SQL).
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql in the order
-- catalog, ledger, decisions, counters, reports, operations: every file
-- uses only objects of the files before it.

--------------------------------------------------------------------------
-- Decisions
--------------------------------------------------------------------------

CREATE TYPE usage_guard.usage_decision AS (
    allowed      boolean,
    decision     text,
    tenant_id    text,
    plan_code    text,
    feature_key  text,
    period       text,
    limit_type   text,
    limit_value  numeric,
    usage        numeric,
    requested    numeric,
    remaining    numeric,
    window_start timestamptz,
    window_end   timestamptz,
    recorded     boolean,
    level        text,
    subject_id   text,
    limit_kind   text,
    hard_limit   numeric,
    soft_limit   numeric,
    usage_after  numeric,
    reset_at     timestamptz,
    retry_after  numeric,
    lease_id     uuid,
    headers      jsonb
);
COMMENT ON TYPE usage_guard.usage_decision IS
    'Result of the decision calls: decision allow|soft_limit|hard_limit for the deciding limit (level, subject_id, limit_kind quota|rate|concurrency, period); usage is before this request, usage_after after it, remaining = limit_value - usage (never negative), recorded = this call wrote a ledger row; retry_after = seconds until the same request would pass every limit (NULL when allowed or when waiting cannot help); headers = RateLimit-Policy, RateLimit, Retry-After and X-RateLimit-* values for an HTTP response';

CREATE FUNCTION usage_guard.usage_check(
    tenant_id   text,
    feature_key text,
    amount      numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'usage_check'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_check(text, text, numeric, timestamptz) IS
    'Would consuming amount be allowed? Checks every window of the feature; no side effects';

CREATE FUNCTION usage_guard.usage_allowed(
    tenant_id   text,
    feature_key text,
    amount      numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS boolean
AS 'MODULE_PATHNAME', 'usage_allowed'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_allowed(text, text, numeric, timestamptz) IS
    'usage_check''s allowed alone: would consuming amount be allowed? Same checks and errors, no side effects';

CREATE FUNCTION usage_guard.usage_consume(
    tenant_id       text,
    feature_key     text,
    amount          numeric DEFAULT 1,
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}',
    at              timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'usage_consume'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_consume(text, text, numeric, text, jsonb, timestamptz) IS
    'Atomic check and record: writes the usage to the ledger only when allowed';

CREATE FUNCTION usage_guard.usage_enforce(
    tenant_id       text,
    feature_key     text,
    amount          numeric DEFAULT 1,
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}',
    at              timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'usage_enforce'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_enforce(text, text, numeric, text, jsonb, timestamptz) IS
    'Like usage_consume, but raises usage_limit_exceeded (SQLSTATE UG001) or usage_soft_limit_exceeded (UG002) when blocked';

CREATE FUNCTION usage_guard.usage_record(
    tenant_id       text,
    feature_key     text,
    amount          numeric,
    occurred_at     timestamptz DEFAULT now(),
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}')
RETURNS boolean
AS 'MODULE_PATHNAME', 'usage_record'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_record(text, text, numeric, timestamptz, text, jsonb) IS
    'Records actual usage unconditionally (post-paid); false when the idempotency key was already recorded for the tenant''s feature';

CREATE FUNCTION usage_guard.usage_record_batch(
    tenant_ids       text[],
    feature_keys     text[],
    amounts          numeric[],
    occurred_ats     timestamptz[] DEFAULT NULL,
    idempotency_keys text[] DEFAULT NULL,
    attributes       jsonb[] DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'usage_record_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.usage_record_batch(text[], text[], numeric[], timestamptz[], text[], jsonb[]) IS
    'usage_record for every row of parallel arrays in one call (bulk ingest, written as COPY writes); NULL occurred_ats, idempotency_keys or attributes mean now(), none and ''{}'' for every row; returns the rows recorded (a taken idempotency key skips its row); any bad row fails the whole call';

-- UG003 exactly as the decisions raise it, for SQL callers: every
-- usage_policy_configuration_error has one shape (message, hint, JSON).
CREATE FUNCTION usage_guard.raise_policy_error(
    tenant_id   text,
    feature_key text,
    plan_code   text,
    status      text)
RETURNS void
AS 'MODULE_PATHNAME', 'usage_guard_raise_policy_error'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION usage_guard.raise_policy_error(text, text, text, text) IS
    'Internal: raises usage_policy_configuration_error (UG003) for a tenant as the decision functions do; plan_code NULL = no subscription';

--------------------------------------------------------------------------
-- Windows
--------------------------------------------------------------------------

-- Windows as SQL sees them: the same computation as the decisions'.
CREATE FUNCTION usage_guard.window_of(
    period       text,
    at           timestamptz,
    period_start timestamptz DEFAULT NULL,
    period_end   timestamptz DEFAULT NULL,
    OUT window_start timestamptz,
    OUT window_end   timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'usage_guard_window_of'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION usage_guard.window_of(text, timestamptz, timestamptz, timestamptz) IS
    'The [window_start, window_end) of a period kind containing at (UTC); billing_period needs the subscription''s current_period_start and current_period_end';

-- Windows sort by length; a lifetime window is (-infinity, infinity), whose
-- length PostgreSQL cannot subtract: it sorts last.
CREATE FUNCTION usage_guard.window_length(window_start timestamptz, window_end timestamptz)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN isfinite($1) AND isfinite($2) THEN $2 - $1 ELSE interval '1000000 years' END;
COMMENT ON FUNCTION usage_guard.window_length(timestamptz, timestamptz) IS
    'Internal: the length of a window for sorting; a lifetime window sorts after every other';

-- usage_guard gateway limits: subjects inside a tenant, their limits, and
-- the per-request calls (since 0.6.0).
--
-- Owns subjects (api_key -> user -> team, under the tenant), subject_limits
-- (quotas, rate limits and concurrency limits attached to a plan, a role or
-- one subject), leases (concurrency slots, durable, with a TTL), and the
-- calls request_check, request_consume, request_enforce, lease_acquire and
-- lease_release.  The decisions are made by the same engine as usage_check
-- (src/engine.c); docs/architecture.md, "The decision engine".
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql after
-- decisions.sql: every file uses only objects of the files before it.

--------------------------------------------------------------------------
-- Subjects
--------------------------------------------------------------------------

-- A subject belongs to the subject above it, or (parent_id NULL) directly
-- to its tenant.  Levels only go up (api_key -> user -> team -> tenant), so
-- a hierarchy can skip levels but never loop.
CREATE TABLE usage_guard.subjects (
    tenant_id  text NOT NULL,
    subject_id text NOT NULL,
    level      text NOT NULL,
    parent_id  text,
    role       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subjects_pkey PRIMARY KEY (tenant_id, subject_id),
    CONSTRAINT subjects_parent_fkey FOREIGN KEY (tenant_id, parent_id)
        REFERENCES usage_guard.subjects (tenant_id, subject_id),
    CONSTRAINT subjects_level_check CHECK (level IN ('api_key', 'user', 'team')),
    CONSTRAINT subjects_names_check CHECK (
        octet_length(tenant_id) BETWEEN 1 AND 255 AND octet_length(subject_id) BETWEEN 1 AND 255
        AND (role IS NULL OR octet_length(role) BETWEEN 1 AND 255)),
    CONSTRAINT subjects_not_own_parent CHECK (parent_id IS DISTINCT FROM subject_id)
);
COMMENT ON TABLE usage_guard.subjects IS
    'Subjects inside a tenant: api_key -> user -> team -> tenant (levels may be skipped); a subject may carry a role that limits attach to';

-- Levels go up: a parent is of a higher level than its children
CREATE FUNCTION usage_guard.subjects_check_levels()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rank CONSTANT jsonb := '{"api_key": 1, "user": 2, "team": 3}';
    parent_level text;
    child record;
BEGIN
    IF NEW.parent_id IS NOT NULL THEN
        SELECT s.level INTO parent_level FROM usage_guard.subjects s
         WHERE s.tenant_id = NEW.tenant_id AND s.subject_id = NEW.parent_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'parent "%" is not a subject of tenant "%"', NEW.parent_id, NEW.tenant_id
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'A subject''s parent is a subject of the same tenant; NULL puts it directly under the tenant.';
        END IF;
        IF (rank ->> parent_level)::int <= (rank ->> NEW.level)::int THEN
            RAISE EXCEPTION 'a subject of level % cannot belong to one of level %', NEW.level, parent_level
                USING ERRCODE = 'check_violation',
                      DETAIL = pg_catalog.format('Subject "%s" of tenant "%s" would have parent "%s".',
                                                 NEW.subject_id, NEW.tenant_id, NEW.parent_id),
                      HINT = 'Levels go up: api_key -> user -> team -> tenant (levels may be skipped), so a hierarchy cannot loop.';
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.level <> OLD.level THEN
        SELECT s.subject_id, s.level INTO child FROM usage_guard.subjects s
         WHERE s.tenant_id = NEW.tenant_id AND s.parent_id = NEW.subject_id
           AND (rank ->> s.level)::int >= (rank ->> NEW.level)::int
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'a subject of level % cannot belong to one of level %', child.level, NEW.level
                USING ERRCODE = 'check_violation',
                      DETAIL = pg_catalog.format('Subject "%s" belongs to "%s".', child.subject_id, NEW.subject_id);
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION usage_guard.subjects_check_levels() IS
    'Trigger: a subject''s parent is a subject of the same tenant at a higher level (api_key -> user -> team)';
CREATE TRIGGER subjects_check_levels
    BEFORE INSERT OR UPDATE ON usage_guard.subjects
    FOR EACH ROW EXECUTE FUNCTION usage_guard.subjects_check_levels();
CREATE TRIGGER subjects_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.subjects FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();

--------------------------------------------------------------------------
-- Limits of subjects
--------------------------------------------------------------------------

-- One row per limit, attached to exactly one of: a plan (every subject at
-- `level` of the plan's tenants; level 'tenant' is the tenant itself), a
-- role (every subject at `level` with the role), or one subject (tenant_id
-- and subject_id; subject_id NULL with level 'tenant' for the tenant).  For
-- the same level, kind, feature and window, a subject's own row replaces
-- its role's, which replaces its plan's.
--   quota:       feature_key, a calendar period or a rolling interval (1 minute
--                to 90 days), soft_limit and/or hard_limit (units per window)
--   rate:        hard_limit units per `per` (1 second to 1 hour), optional burst;
--                feature_key NULL counts requests, else the feature's amount
--   concurrency: hard_limit leases held at once (feature_key NULL)
--   model:       the models a subject at `level` may call (models; admit
--                refuses any other with code model_not_allowed)
-- action (0.7.0) is what a limit does when a request would pass it:
--   block (default) refuses; alert (quotas) allows and raises alerts;
--   downgrade (quotas) lets admit retry with the model's downgrade_to;
--   queue (rate, concurrency) waits up to queue_timeout for room, with at
--   most queue_depth requests waiting, then decides.  alert_at: fractions
--   of the limit (up to 4, e.g. {0.8,1}) at which an alert fires, once per
--   window and subject (table alerts, NOTIFY usage_guard_alerts).
CREATE TABLE usage_guard.subject_limits (
    limit_id    bigint GENERATED ALWAYS AS IDENTITY,
    plan_code   text REFERENCES usage_guard.plans ON UPDATE CASCADE ON DELETE CASCADE,
    role        text,
    tenant_id   text,
    subject_id  text,
    level       text NOT NULL,
    limit_kind  text NOT NULL,
    feature_key text REFERENCES usage_guard.features ON UPDATE CASCADE ON DELETE CASCADE,
    period      usage_guard.period_kind,
    rolling     interval,
    per         interval,
    soft_limit  numeric,
    hard_limit  numeric,
    burst       numeric,
    -- 0.7.0: model access, actions
    models        text[],
    action        text NOT NULL DEFAULT 'block',
    alert_at      numeric[],
    queue_timeout interval,
    queue_depth   integer,
    CONSTRAINT subject_limits_pkey PRIMARY KEY (limit_id),
    CONSTRAINT subject_limits_subject_fkey FOREIGN KEY (tenant_id, subject_id)
        REFERENCES usage_guard.subjects (tenant_id, subject_id) ON DELETE CASCADE,
    CONSTRAINT subject_limits_attached_once CHECK (
        num_nonnulls(plan_code, role, tenant_id) = 1 AND (subject_id IS NULL OR tenant_id IS NOT NULL)),
    CONSTRAINT subject_limits_level_check CHECK (level IN ('api_key', 'user', 'team', 'tenant')
        AND (tenant_id IS NULL OR (subject_id IS NULL) = (level = 'tenant'))
        AND (role IS NULL OR level <> 'tenant')),
    CONSTRAINT subject_limits_kind_check CHECK (CASE limit_kind
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
    CONSTRAINT subject_limits_values_check CHECK (
        (soft_limit IS NULL OR soft_limit >= 0) AND (hard_limit IS NULL OR hard_limit >= 0)
        AND (limit_kind <> 'rate' OR (hard_limit > 0 AND (burst IS NULL OR burst >= 1)))
        AND (limit_kind <> 'concurrency' OR hard_limit = trunc(hard_limit))
        AND (soft_limit IS NULL OR hard_limit IS NULL OR soft_limit <= hard_limit)
        AND (hard_limit IS NULL OR hard_limit <= 1e15) AND (burst IS NULL OR burst <= 1e15)),
    CONSTRAINT subject_limits_per_check CHECK (per IS NULL OR (
        per >= interval '1 second' AND per <= interval '1 hour'
        AND extract(epoch FROM per) = trunc(extract(epoch FROM per))
        AND extract(day FROM per) = 0 AND extract(month FROM per) = 0)),
    -- whole minutes up to 24 hours, whole hours beyond, at most 90 days
    -- (the granularity of its buckets; docs/architecture.md, "Rolling windows")
    CONSTRAINT subject_limits_rolling_check CHECK (rolling IS NULL OR (
        rolling >= interval '1 minute' AND rolling <= interval '90 days'
        AND extract(month FROM rolling) = 0
        AND extract(epoch FROM rolling) = trunc(extract(epoch FROM rolling) / 60) * 60
        AND (rolling <= interval '24 hours'
             OR extract(epoch FROM rolling) = trunc(extract(epoch FROM rolling) / 3600) * 3600))),
    CONSTRAINT subject_limits_role_check CHECK (role IS NULL OR octet_length(role) BETWEEN 1 AND 255),
    CONSTRAINT subject_limits_models_check CHECK (
        (limit_kind = 'model') = (models IS NOT NULL)
        AND (models IS NULL OR (cardinality(models) BETWEEN 1 AND 1000
                                AND array_position(models, NULL) IS NULL))),
    CONSTRAINT subject_limits_action_check CHECK (
        action IN ('block', 'alert', 'downgrade', 'queue')
        AND (action <> 'queue' OR limit_kind IN ('rate', 'concurrency'))
        AND (action NOT IN ('alert', 'downgrade') OR limit_kind = 'quota')),
    CONSTRAINT subject_limits_alert_at_check CHECK (alert_at IS NULL OR (
        limit_kind = 'quota' AND cardinality(alert_at) BETWEEN 1 AND 4
        AND array_position(alert_at, NULL) IS NULL AND 0 < ALL (alert_at) AND 10 >= ALL (alert_at))),
    CONSTRAINT subject_limits_queue_check CHECK (
        (action = 'queue' OR (queue_timeout IS NULL AND queue_depth IS NULL))
        AND (queue_timeout IS NULL OR (queue_timeout > interval '0' AND queue_timeout <= interval '60 seconds'))
        AND (queue_depth IS NULL OR queue_depth BETWEEN 1 AND 10000))
);
CREATE UNIQUE INDEX subject_limits_one_per_window ON usage_guard.subject_limits (
    coalesce(plan_code, ''), coalesce(role, ''), coalesce(tenant_id, ''), coalesce(subject_id, ''),
    level, limit_kind, coalesce(feature_key, ''), coalesce(period, ''), coalesce(per, interval '0'),
    coalesce(rolling, interval '0'));
COMMENT ON TABLE usage_guard.subject_limits IS
    'Gateway limits: quotas, rate limits (GCRA) and concurrency limits per level (api_key, user, team, tenant), attached to a plan, a role or one subject; a subject''s own row replaces its role''s, which replaces its plan''s';
CREATE TRIGGER subject_limits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.subject_limits FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();

--------------------------------------------------------------------------
-- Leases
--------------------------------------------------------------------------

-- A lease holds one slot at each level of its subject until it is released
-- or expires: one row per level (holder_id '' is the tenant).  Rows are
-- durable, so a slot survives a crash or restart of the server and is freed
-- by its TTL; release and expiry work from any session (poolers).
CREATE TABLE usage_guard.leases (
    tenant_id   text NOT NULL,
    lease_id    uuid NOT NULL,
    holder_id   text NOT NULL,
    level       text NOT NULL,
    subject_id  text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    CONSTRAINT leases_pkey PRIMARY KEY (tenant_id, lease_id, holder_id)
);
CREATE INDEX leases_live ON usage_guard.leases (tenant_id, holder_id, expires_at)
    WHERE released_at IS NULL;
COMMENT ON TABLE usage_guard.leases IS
    'Concurrency leases: one row per level a lease holds a slot at; live while released_at IS NULL and expires_at is in the future';

-- Leases that ended (released or expired) more than `keep` ago are only
-- history; lease counting never reads them, but they take space.
-- PL/pgSQL: Citus cannot plan a SQL function's parameters, and on a
-- distributed install this runs on the coordinator (a pg_cron job there).
CREATE FUNCTION usage_guard.purge_leases(keep interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_keep ALIAS FOR $1;
    n bigint;
BEGIN
    DELETE FROM usage_guard.leases l
     WHERE coalesce(least(l.released_at, l.expires_at), l.expires_at) < now() - p_keep;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION usage_guard.purge_leases(interval) IS
    'Deletes lease rows that ended (released or expired) more than keep ago; returns how many rows went. Schedule it with pg_cron next to refresh_rollups';

SELECT pg_catalog.pg_extension_config_dump('usage_guard.subjects', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.subject_limits', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.leases', '');

--------------------------------------------------------------------------
-- Calls
--------------------------------------------------------------------------

CREATE FUNCTION usage_guard.request_check(
    tenant_id   text,
    subject_id  text,
    feature_key text,
    amount      numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'request_check'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.request_check(text, text, text, numeric, timestamptz) IS
    'Would this request of a subject pass every limit of the subject, its ancestors and its tenant? No side effects (rate limits are not spent)';

CREATE FUNCTION usage_guard.request_consume(
    tenant_id       text,
    subject_id      text,
    feature_key     text,
    amount          numeric DEFAULT 1,
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}',
    lease_ttl       interval DEFAULT NULL,
    at              timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'request_consume'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.request_consume(text, text, text, numeric, text, jsonb, interval, timestamptz) IS
    'One request of a subject: every quota, rate and concurrency limit of every level decided at once; when allowed, charged at every level (and a lease taken when lease_ttl is given), else nothing anywhere';

CREATE FUNCTION usage_guard.request_enforce(
    tenant_id       text,
    subject_id      text,
    feature_key     text,
    amount          numeric DEFAULT 1,
    idempotency_key text DEFAULT NULL,
    attributes      jsonb DEFAULT '{}',
    lease_ttl       interval DEFAULT NULL,
    at              timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'request_enforce'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.request_enforce(text, text, text, numeric, text, jsonb, interval, timestamptz) IS
    'Like request_consume, but raises usage_limit_exceeded (UG001) or usage_soft_limit_exceeded (UG002) when refused';

CREATE FUNCTION usage_guard.request_throttle(
    tenant_id   text,
    subject_id  text,
    feature_key text DEFAULT NULL,
    amount      numeric DEFAULT 1,
    at          timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'request_throttle'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.request_throttle(text, text, text, numeric, timestamptz) IS
    'Rate limits only (as redis-cell''s CL.THROTTLE): the request rates of every level of the subject, and the rates of feature_key''s amount when given, decided and spent at once; no quota, no ledger row';

CREATE FUNCTION usage_guard.lease_acquire(
    tenant_id  text,
    subject_id text,
    ttl        interval DEFAULT '5 minutes',
    at         timestamptz DEFAULT now())
RETURNS usage_guard.usage_decision
AS 'MODULE_PATHNAME', 'lease_acquire'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.lease_acquire(text, text, interval, timestamptz) IS
    'Takes a concurrency slot at every level of a subject (lease_id in the decision) if every concurrency limit has room; it frees itself after ttl (1 second to 1 day)';

CREATE FUNCTION usage_guard.lease_release(
    tenant_id text,
    lease_id  uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'lease_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION usage_guard.lease_release(text, uuid) IS
    'Frees a lease; true if it was live, false if already released or expired (idempotent); an unknown lease is an error';

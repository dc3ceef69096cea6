-- usage_guard 0.5.0 -> 0.6.0: gateway limits I (subjects, rate limits,
-- concurrency leases, decision output for HTTP).  Every change here is also
-- in sql/src, which holds the current definition of every object; the
-- upgrade test proves both equal.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.6.0'" to load this file. \quit

-- The ledger records the subject a row was charged to, and its chain
ALTER TABLE usage_guard.usage_events ADD COLUMN subject_id text, ADD COLUMN subject_path text[];
COMMENT ON COLUMN usage_guard.usage_events.subject_id IS
    'The subject a request_consume row was charged to (NULL: the tenant only)';
COMMENT ON COLUMN usage_guard.usage_events.subject_path IS
    'The subjects charged, most specific first (e.g. {key, user, team}), as resolved when the row was written';

-- Every decision says which limit decided, when to retry, and the headers
ALTER TYPE usage_guard.usage_decision
    ADD ATTRIBUTE level text,
    ADD ATTRIBUTE subject_id text,
    ADD ATTRIBUTE limit_kind text,
    ADD ATTRIBUTE hard_limit numeric,
    ADD ATTRIBUTE soft_limit numeric,
    ADD ATTRIBUTE usage_after numeric,
    ADD ATTRIBUTE reset_at timestamptz,
    ADD ATTRIBUTE retry_after numeric,
    ADD ATTRIBUTE lease_id uuid,
    ADD ATTRIBUTE headers jsonb;
COMMENT ON TYPE usage_guard.usage_decision IS
    'Result of the decision calls: decision allow|soft_limit|hard_limit for the deciding limit (level, subject_id, limit_kind quota|rate|concurrency, period); usage is before this request, usage_after after it, remaining = limit_value - usage (never negative), recorded = this call wrote a ledger row; retry_after = seconds until the same request would pass every limit (NULL when allowed or when waiting cannot help); headers = RateLimit-Policy, RateLimit, Retry-After and X-RateLimit-* values for an HTTP response';

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
    CONSTRAINT subject_limits_role_check CHECK (role IS NULL OR octet_length(role) BETWEEN 1 AND 255)
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
CREATE FUNCTION usage_guard.purge_leases(keep interval DEFAULT '1 day')
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (
        DELETE FROM usage_guard.leases
         WHERE coalesce(least(released_at, expires_at), expires_at) < now() - keep
        RETURNING 1)
    SELECT count(*) FROM gone;
END;
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

-- The live counters show each subject level's windows
DROP VIEW usage_guard.usage_counters;
DROP FUNCTION usage_guard.live_counters();
CREATE FUNCTION usage_guard.live_counters(
    OUT tenant_id text, OUT feature_key text,
    OUT window_start timestamptz, OUT window_end timestamptz,
    OUT usage numeric, OUT reserved numeric, OUT credit numeric,
    OUT subject_id text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'usage_guard_counters'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION usage_guard.live_counters() IS
    'Every live window of this database in shared memory: committed usage, reserved (positive, in flight) and credit (negative, in flight); subject_id NULL for the tenant level, a rolling window shown as the last interval before now';

CREATE VIEW usage_guard.usage_counters AS
    SELECT tenant_id, feature_key, window_start, window_end, usage, reserved, credit, subject_id
      FROM usage_guard.live_counters();
COMMENT ON VIEW usage_guard.usage_counters IS
    'Live counters per tenant (or subject), feature and window, kept in shared memory in step with the ledger (committed usage, in-flight reservations and credits); empty without shared_preload_libraries';
REVOKE ALL ON FUNCTION usage_guard.live_counters() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.live_counters() TO usage_guard_admin;
GRANT SELECT ON usage_guard.usage_counters TO usage_guard_admin;

-- Metrics: limits judged and refusals by kind and level, live leases
COMMENT ON FUNCTION usage_guard.metrics() IS
    'Metrics of this database as rows: usage_guard_decisions_total{decision,plan_code} (enforcing calls), usage_guard_checks_total{decision,plan_code} (usage_check), usage_guard_limit_hits_total{plan_code,limit_type,feature_key} (enforcing calls), usage_guard_policy_errors_total{reason,plan_code}, usage_guard_decision_duration_seconds (histogram, whole server), usage_guard_metrics_dropped_total, usage_guard_limit_checks_total{limit_kind,level,plan_code}, usage_guard_limit_refusals_total{limit_kind,level,plan_code}, usage_guard_leases{level}; empty without shared_preload_libraries';
CREATE OR REPLACE FUNCTION usage_guard.metrics_text()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH m AS (
        SELECT metric, labels, value,
               regexp_replace(metric, '_(bucket|sum|count)$', '') AS family
          FROM usage_guard.metrics()
    ), families (family, kind, help) AS (
        VALUES ('usage_guard_decisions_total', 'counter',
                'Enforcing evaluations (usage_consume, usage_enforce, metered INSERT) by decision and plan.'),
               ('usage_guard_checks_total', 'counter',
                'Side-effect-free checks (usage_check) by decision and plan; not in decisions or limit hits.'),
               ('usage_guard_limit_hits_total', 'counter',
                'Soft and hard limit hits of enforcing evaluations by plan, limit type and feature.'),
               ('usage_guard_policy_errors_total', 'counter',
                'Requests refused because the tenant has no active subscription (usage_policy_configuration_error), by reason.'),
               ('usage_guard_decision_duration_seconds', 'histogram',
                'Time to decide, measured inside the server (all databases).'),
               ('usage_guard_limit_checks_total', 'counter',
                'Limits judged by enforcing calls, once per call for each limit kind (quota, rate, concurrency) and subject level.'),
               ('usage_guard_limit_refusals_total', 'counter',
                'Refusals by the kind (quota, rate, concurrency) and subject level of the deciding limit.'),
               ('usage_guard_leases', 'gauge',
                'Live concurrency leases by subject level (a lease holds a slot at every level of its subject).'),
               ('usage_guard_metrics_dropped_total', 'counter',
                'Increments lost because the series table was full.')
    ), lines AS (
        SELECT f.family, 0 AS part, 0::float8 AS sortnum, '' AS sortkey,
               format(E'# HELP %s %s\n# TYPE %s %s', f.family, f.help, f.family, f.kind) AS line
          FROM families f
        UNION ALL
        SELECT m.family, 1,
               CASE WHEN m.metric NOT LIKE '%\_bucket' THEN 0
                    WHEN m.labels ->> 'le' = '+Inf' THEN 'Infinity'::float8
                    ELSE (m.labels ->> 'le')::float8 END,
               m.metric || m.labels::text,
               m.metric
               || CASE WHEN m.labels = '{}'::jsonb THEN ''
                       ELSE '{' || (SELECT string_agg(format('%s="%s"', k,
                                          replace(replace(replace(v, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n')),
                                          ',' ORDER BY k)
                                      FROM jsonb_each_text(m.labels) AS l(k, v)) || '}' END
               || ' ' || CASE WHEN m.value = trunc(m.value) AND abs(m.value) < 1e15
                              THEN trunc(m.value)::bigint::text ELSE m.value::text END
          FROM m
    )
    SELECT string_agg(line, E'\n' ORDER BY family, part, sortnum, sortkey) || E'\n'
      FROM lines;
END;

-- usage_status says the tenant's plan (seed 004's status shows the tier)
DROP FUNCTION usage_guard.usage_status(text, timestamptz);
CREATE FUNCTION usage_guard.usage_status(tenant_id text, at timestamptz DEFAULT now())
RETURNS TABLE (feature_key text, unit text, period text, usage numeric, soft_limit numeric,
               hard_limit numeric, remaining numeric, percent_used numeric, status text,
               window_start timestamptz, window_end timestamptz, resets_at timestamptz,
               limit_source text, plan_code text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant ALIAS FOR $1;
    p_at     ALIAS FOR $2;
    v_status text;
    v_plan   text;
BEGIN
    IF p_tenant IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'tenant_id and at must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT s.status, s.plan_code INTO v_status, v_plan
      FROM usage_guard.tenant_subscriptions s WHERE s.tenant_id = p_tenant;
    IF NOT FOUND THEN
        SELECT 'active', p.plan_code INTO v_status, v_plan FROM usage_guard.plans p WHERE p.is_default;
    END IF;
    IF NOT FOUND OR v_status NOT IN ('active', 'trialing') THEN
        PERFORM usage_guard.raise_policy_error(p_tenant, NULL, v_plan, v_status);
    END IF;
    RETURN QUERY
    SELECT w.feature_key, w.unit, w.period, w.usage, w.soft_limit, w.hard_limit, w.remaining,
           w.percent_used, usage_guard.limit_status(w.usage, w.soft_limit, w.hard_limit),
           w.window_start, w.window_end, w.window_end, w.limit_source, v_plan
      FROM usage_guard.limit_windows(p_tenant, p_at) w
     ORDER BY w.feature_key, usage_guard.window_length(w.window_start, w.window_end), w.period;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_status(text, timestamptz) IS
    'Every limited window of a tenant''s features at an instant: committed usage, limits, remaining, status, when the window resets, and the tenant''s plan (its tier); UG003 without an active subscription';
REVOKE ALL ON FUNCTION usage_guard.usage_status(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION usage_guard.usage_status(text, timestamptz) TO usage_guard_reader;

-- Privileges of the new objects (sql/src/privileges.sql)
REVOKE ALL ON FUNCTION
    usage_guard.subjects_check_levels(),
    usage_guard.request_check(text, text, text, numeric, timestamptz),
    usage_guard.request_consume(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_enforce(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_throttle(text, text, text, numeric, timestamptz),
    usage_guard.lease_acquire(text, text, interval, timestamptz),
    usage_guard.lease_release(text, uuid),
    usage_guard.purge_leases(interval)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    usage_guard.request_check(text, text, text, numeric, timestamptz),
    usage_guard.request_consume(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_enforce(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_throttle(text, text, text, numeric, timestamptz),
    usage_guard.lease_acquire(text, text, interval, timestamptz),
    usage_guard.lease_release(text, uuid)
    TO usage_guard_application;
GRANT SELECT ON usage_guard.subjects, usage_guard.subject_limits, usage_guard.leases
    TO usage_guard_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_guard.subjects, usage_guard.subject_limits
    TO usage_guard_admin;
GRANT SELECT, DELETE ON usage_guard.leases TO usage_guard_admin;
GRANT EXECUTE ON FUNCTION usage_guard.purge_leases(interval) TO usage_guard_admin;

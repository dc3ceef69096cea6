-- usage_guard 0.1.0 install script.
--
-- Owns the catalog (features, plans, plan_features, tenant_subscriptions,
-- tenant_overrides), the append-only ledger (usage_events), the derived
-- hourly counters the ledger's trigger maintains, and the SQL API.  The hot
-- functions (usage_check, usage_consume, usage_enforce, usage_record) are C;
-- everything an operator calls rarely is SQL or PL/pgSQL.

\echo Use "CREATE EXTENSION usage_guard" to load this file. \quit

--------------------------------------------------------------------------
-- Domains: one place for the vocabulary the tables and functions share.
--------------------------------------------------------------------------

-- A limit window.  hour/day/week/month are UTC calendar windows, half-open;
-- billing_period follows the subscription's anchor.
CREATE DOMAIN usage_guard.period_kind AS text
    CONSTRAINT period_kind_valid
    CHECK (VALUE IN ('hour', 'day', 'week', 'month', 'billing_period'));
COMMENT ON DOMAIN usage_guard.period_kind IS
    'Limit window: hour, day, week, month (UTC calendar, [start, end)) or billing_period (the subscription''s own period)';

-- A limit: NULL means unlimited; otherwise a finite amount in [0, 1e15].
-- NaN and Infinity sort above every number, so the upper bound excludes them.
CREATE DOMAIN usage_guard.limit_amount AS numeric
    CONSTRAINT limit_amount_range
    CHECK (VALUE IS NULL OR (VALUE >= 0 AND VALUE <= 1e15));
COMMENT ON DOMAIN usage_guard.limit_amount IS
    'A usage limit: NULL = unlimited, else a finite number between 0 and 1e15';

--------------------------------------------------------------------------
-- Catalog
--------------------------------------------------------------------------

CREATE TABLE usage_guard.features (
    feature_key text PRIMARY KEY
        CONSTRAINT features_key_valid CHECK (feature_key ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    unit        text NOT NULL DEFAULT 'unit'
        CONSTRAINT features_unit_not_empty CHECK (unit <> ''),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE usage_guard.features IS
    'Metered dimensions (messages, input_tokens, deployments, ...) and their unit';

CREATE TABLE usage_guard.plans (
    plan_code   text PRIMARY KEY
        CONSTRAINT plans_code_valid CHECK (plan_code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    name        text,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE usage_guard.plans IS 'Plans a tenant can subscribe to';

CREATE TABLE usage_guard.plan_features (
    plan_code   text NOT NULL REFERENCES usage_guard.plans ON UPDATE CASCADE ON DELETE CASCADE,
    feature_key text NOT NULL REFERENCES usage_guard.features ON UPDATE CASCADE,
    period      usage_guard.period_kind NOT NULL DEFAULT 'billing_period',
    soft_limit  usage_guard.limit_amount,
    hard_limit  usage_guard.limit_amount,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_code, feature_key, period),
    CONSTRAINT plan_features_soft_not_above_hard CHECK (soft_limit <= hard_limit)
);
COMMENT ON TABLE usage_guard.plan_features IS
    'Per plan, feature and window: soft and hard limits (NULL = unlimited). A feature absent from a plan is not included in it.';

CREATE TABLE usage_guard.tenant_subscriptions (
    tenant_id            text PRIMARY KEY
        CONSTRAINT tenant_subscriptions_tenant_not_empty CHECK (tenant_id <> ''),
    plan_code            text NOT NULL REFERENCES usage_guard.plans ON UPDATE CASCADE,
    status               text NOT NULL DEFAULT 'active'
        CONSTRAINT tenant_subscriptions_status_valid
        CHECK (status IN ('active', 'trialing', 'past_due', 'unpaid', 'paused',
                          'canceled', 'incomplete', 'incomplete_expired')),
    current_period_start timestamptz NOT NULL DEFAULT now(),
    current_period_end   timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_subscriptions_period_order
        CHECK (current_period_end > current_period_start)
);
COMMENT ON TABLE usage_guard.tenant_subscriptions IS
    'One subscription per tenant. Only active or trialing grant access. The billing period is [current_period_start, current_period_end) and then rolls forward monthly from the current_period_start anchor; current_period_end NULL means one month.';

CREATE TABLE usage_guard.tenant_overrides (
    tenant_id   text NOT NULL
        CONSTRAINT tenant_overrides_tenant_not_empty CHECK (tenant_id <> ''),
    feature_key text NOT NULL REFERENCES usage_guard.features ON UPDATE CASCADE ON DELETE CASCADE,
    period      usage_guard.period_kind NOT NULL DEFAULT 'billing_period',
    soft_limit  usage_guard.limit_amount,
    hard_limit  usage_guard.limit_amount,
    reason      text,
    expires_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_key, period),
    CONSTRAINT tenant_overrides_soft_not_above_hard CHECK (soft_limit <= hard_limit)
);
COMMENT ON TABLE usage_guard.tenant_overrides IS
    'Custom contracts: a row replaces the plan''s limits for that tenant, feature and period (or adds a period). NULL limits = unlimited. Ignored from expires_at on.';

--------------------------------------------------------------------------
-- Ledger: the truth.  Append-only; corrections are new rows.
--------------------------------------------------------------------------

-- The primary key is also the index every window sum uses (tenant, feature,
-- time range, covering amount), so a ledger row costs one index insert.  No
-- foreign key to features: its KEY SHARE row lock would make the feature row
-- a hot row for every writer; the functions and the trigger below check the
-- feature instead, and features with usage cannot be deleted.
CREATE TABLE usage_guard.usage_events (
    tenant_id       text NOT NULL
        CONSTRAINT usage_events_tenant_not_empty CHECK (tenant_id <> ''),
    feature_key     text NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    event_id        bigint GENERATED BY DEFAULT AS IDENTITY,
    amount          numeric NOT NULL
        CONSTRAINT usage_events_amount_range CHECK (amount >= -1e15 AND amount <= 1e15),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL DEFAULT 'record'
        CONSTRAINT usage_events_kind_valid CHECK (kind IN ('consume', 'record', 'adjustment')),
    idempotency_key text
        CONSTRAINT usage_events_idempotency_key_not_empty CHECK (idempotency_key <> ''),
    attributes      jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT usage_events_pkey PRIMARY KEY (tenant_id, feature_key, occurred_at, event_id) INCLUDE (amount),
    CONSTRAINT usage_events_only_adjustments_negative CHECK (amount >= 0 OR kind = 'adjustment')
);
CREATE UNIQUE INDEX usage_events_idempotency_key
    ON usage_guard.usage_events (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
COMMENT ON TABLE usage_guard.usage_events IS
    'The usage ledger: one row per unit of recorded usage; append-only. Totals, counters and caches are derived from it.';

--------------------------------------------------------------------------
-- Derived state (not dumped: rebuilt from the ledger on restore)
--------------------------------------------------------------------------

-- Hourly UTC buckets: every window kind is a union of whole hours plus at
-- most two partial hours at its edges (billing anchors need not be on the
-- hour), so one counter per event serves every period.  The shard column
-- spreads concurrent writers of one tenant over several rows so they do not
-- queue behind one row lock.
CREATE TABLE usage_guard.usage_counters (
    tenant_id    text NOT NULL,
    feature_key  text NOT NULL,
    bucket_start timestamptz NOT NULL,
    shard        smallint NOT NULL,
    usage        numeric NOT NULL,
    events       bigint NOT NULL,
    PRIMARY KEY (tenant_id, feature_key, bucket_start, shard)
);
COMMENT ON TABLE usage_guard.usage_counters IS
    'Derived: usage per tenant, feature and UTC hour, maintained by the ledger''s trigger in the same transaction. Rebuild with usage_guard.rebuild_counters().';

-- One row per tenant and feature that has been consumed against a limit.
-- usage_consume updates it before it reads usage: this is the serialization
-- point that makes check-then-record atomic (waiters re-read committed usage
-- under READ COMMITTED; REPEATABLE READ and SERIALIZABLE get 40001).
CREATE TABLE usage_guard.consume_locks (
    tenant_id       text NOT NULL,
    feature_key     text NOT NULL,
    consumes        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, feature_key)
);
COMMENT ON TABLE usage_guard.consume_locks IS
    'Derived: per tenant and feature serialization point of usage_consume; holds no usage.';

CREATE FUNCTION usage_guard.hour_floor(ts timestamptz)
RETURNS timestamptz LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN date_trunc('hour', ts, 'UTC');
COMMENT ON FUNCTION usage_guard.hour_floor(timestamptz) IS 'Start of the UTC hour containing ts';

-- Keep the hourly counters in step with the ledger, in the same transaction.
CREATE FUNCTION usage_guard.usage_events_count()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unknown text;
BEGIN
    SELECT n.feature_key INTO unknown FROM new_events n
     WHERE NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = n.feature_key)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown feature "%"', unknown
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Features are rows of usage_guard.features.';
    END IF;
    INSERT INTO usage_guard.usage_counters AS c
           (tenant_id, feature_key, bucket_start, shard, usage, events)
    SELECT n.tenant_id, n.feature_key, usage_guard.hour_floor(n.occurred_at),
           (pg_backend_pid() % 8)::smallint, sum(n.amount), count(*)
      FROM new_events n
     GROUP BY 1, 2, 3
    ON CONFLICT (tenant_id, feature_key, bucket_start, shard)
    DO UPDATE SET usage = c.usage + excluded.usage,
                  events = c.events + excluded.events;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION usage_guard.usage_events_count() IS
    'Trigger: checks the features of new ledger rows and adds them to the hourly counters';

CREATE TRIGGER usage_events_count
    AFTER INSERT ON usage_guard.usage_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.usage_events_count();

CREATE FUNCTION usage_guard.usage_events_append_only()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'usage_guard.usage_events is append-only'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = format('%s on the usage ledger is not allowed.', TG_OP),
              HINT = 'Record a correction as a new row (kind = ''adjustment'', negative amount) instead.';
END
$$;
COMMENT ON FUNCTION usage_guard.usage_events_append_only() IS
    'Trigger: refuses UPDATE, DELETE and TRUNCATE on the ledger';

CREATE TRIGGER usage_events_append_only
    BEFORE UPDATE OR DELETE ON usage_guard.usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_guard.usage_events_append_only();
CREATE TRIGGER usage_events_no_truncate
    BEFORE TRUNCATE ON usage_guard.usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.usage_events_append_only();

-- What the missing foreign key would have guarded: a feature with recorded
-- usage keeps its key and cannot be deleted.
CREATE FUNCTION usage_guard.features_keep_used()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.feature_key IS DISTINCT FROM OLD.feature_key)
       AND EXISTS (SELECT 1 FROM usage_guard.usage_events e WHERE e.feature_key = OLD.feature_key) THEN
        RAISE EXCEPTION 'feature "%" has recorded usage', OLD.feature_key
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = 'The ledger refers to features by key.',
                  HINT = 'Keep the feature; remove it from plans instead.';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
COMMENT ON FUNCTION usage_guard.features_keep_used() IS
    'Trigger: refuses deleting or renaming a feature the ledger refers to';
CREATE TRIGGER features_keep_used
    BEFORE UPDATE OF feature_key OR DELETE ON usage_guard.features
    FOR EACH ROW EXECUTE FUNCTION usage_guard.features_keep_used();

--------------------------------------------------------------------------
-- pg_dump keeps the catalog and the ledger (not the derived tables)
--------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('usage_guard.features', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.plans', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.plan_features', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.tenant_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.tenant_overrides', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.usage_events', '');
-- and the ledger's id sequence, so restored ledgers keep counting past their ids
SELECT pg_catalog.pg_extension_config_dump('usage_guard.usage_events_event_id_seq', '');

--------------------------------------------------------------------------
-- Decisions (C)
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
    recorded     boolean
);
COMMENT ON TYPE usage_guard.usage_decision IS
    'Result of usage_check/usage_consume/usage_enforce: decision allow|soft_limit|hard_limit for the deciding window; usage is before this request, remaining = limit_value - usage (never negative), recorded = this call wrote a ledger row';

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
    'Records actual usage unconditionally (post-paid); false when the idempotency key was already recorded for the tenant';

--------------------------------------------------------------------------
-- Totals over arbitrary windows
--------------------------------------------------------------------------

-- Whole hours come from the counters, the partial hours at the edges from
-- the ledger, so the cost depends on the window's length, not on history.
CREATE FUNCTION usage_guard.window_totals(
    tenant_id    text,
    window_start timestamptz,
    window_end   timestamptz,
    features     text[] DEFAULT NULL)
RETURNS TABLE (feature_key text, total numeric, events bigint)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH b AS (
        SELECT hs, greatest(hs, usage_guard.hour_floor($3)) AS he
          FROM (SELECT CASE WHEN usage_guard.hour_floor($2) = $2 THEN $2
                            ELSE usage_guard.hour_floor($2) + interval '1 hour' END AS hs) h
    ), parts AS (
        SELECT c.feature_key, c.usage AS amount, c.events
          FROM usage_guard.usage_counters c, b
         WHERE c.tenant_id = $1
           AND ($4 IS NULL OR c.feature_key = ANY ($4))
           AND c.bucket_start >= b.hs AND c.bucket_start < b.he
        UNION ALL
        SELECT e.feature_key, e.amount, 1
          FROM usage_guard.usage_events e, b
         WHERE e.tenant_id = $1
           AND ($4 IS NULL OR e.feature_key = ANY ($4))
           AND ((e.occurred_at >= $2 AND e.occurred_at < least(b.hs, $3))
             OR (e.occurred_at >= greatest(b.he, $2) AND e.occurred_at < $3))
    )
    SELECT p.feature_key, sum(p.amount), sum(p.events)::bigint
      FROM parts p
     GROUP BY p.feature_key;
END;
COMMENT ON FUNCTION usage_guard.window_totals(text, timestamptz, timestamptz, text[]) IS
    'Internal: per-feature usage and event count of a tenant in [window_start, window_end), features with usage only; no argument checks (use get_usage_totals)';

CREATE FUNCTION usage_guard.get_usage_totals(
    tenant_id    text,
    window_start timestamptz,
    window_end   timestamptz,
    features     text[] DEFAULT NULL)
RETURNS TABLE (feature_key text, unit text, total numeric, events bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tenant   ALIAS FOR $1;
    p_start    ALIAS FOR $2;
    p_end      ALIAS FOR $3;
    p_features ALIAS FOR $4;
    missing    text;
BEGIN
    IF p_tenant IS NULL OR p_start IS NULL OR p_end IS NULL THEN
        RAISE EXCEPTION 'tenant_id, window_start and window_end must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_tenant = '' THEN
        RAISE EXCEPTION 'tenant_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT isfinite(p_start) OR NOT isfinite(p_end) THEN
        RAISE EXCEPTION 'window bounds must be finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_start >= p_end THEN
        RAISE EXCEPTION 'window_start must be before window_end'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The window [%s, %s) is empty or reversed.', p_start, p_end),
                  HINT = 'Windows are half-open: [window_start, window_end).';
    END IF;
    SELECT f INTO missing
      FROM unnest(p_features) AS f
     WHERE f IS NULL OR NOT EXISTS (SELECT 1 FROM usage_guard.features x WHERE x.feature_key = f)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'unknown feature "%"', coalesce(missing, 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = 'Features are rows of usage_guard.features.';
    END IF;

    RETURN QUERY
    SELECT f.feature_key, f.unit, coalesce(t.total, 0), coalesce(t.events, 0)
      FROM usage_guard.features f
      LEFT JOIN usage_guard.window_totals(p_tenant, p_start, p_end, p_features) t
             ON t.feature_key = f.feature_key
     WHERE p_features IS NULL OR f.feature_key = ANY (p_features)
     ORDER BY f.feature_key;
END
$$;
COMMENT ON FUNCTION usage_guard.get_usage_totals(text, timestamptz, timestamptz, text[]) IS
    'Per-feature usage totals and event counts of a tenant over [window_start, window_end); every requested feature (all when features is NULL), zero when unused';

CREATE FUNCTION usage_guard.rebuild_counters()
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    -- Block concurrent writers so the rebuilt counters equal the ledger.
    LOCK TABLE usage_guard.usage_events IN SHARE MODE;
    LOCK TABLE usage_guard.usage_counters IN ACCESS EXCLUSIVE MODE;
    DELETE FROM usage_guard.usage_counters;
    INSERT INTO usage_guard.usage_counters (tenant_id, feature_key, bucket_start, shard, usage, events)
    SELECT e.tenant_id, e.feature_key, usage_guard.hour_floor(e.occurred_at), 0, sum(e.amount), count(*)
      FROM usage_guard.usage_events e
     GROUP BY 1, 2, 3;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION usage_guard.rebuild_counters() IS
    'Recomputes the derived hourly counters from the ledger; returns the number of counter rows';

--------------------------------------------------------------------------
-- Data-layer metering
--------------------------------------------------------------------------

-- Trigger body for meter_table: one usage_enforce per inserted row.
-- Arguments: feature_key, tenant column, amount column ('' = 1 per row).
CREATE FUNCTION usage_guard.meter_row()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_json jsonb := to_jsonb(NEW);
    tenant   text := row_json ->> TG_ARGV[1];
    amount   numeric := 1;
BEGIN
    IF TG_ARGV[2] <> '' THEN
        amount := (row_json ->> TG_ARGV[2])::numeric;
        IF amount IS NULL THEN
            RAISE EXCEPTION 'metered column %.% must not be NULL', TG_TABLE_NAME, TG_ARGV[2]
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
    END IF;
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'tenant column %.% must not be NULL', TG_TABLE_NAME, TG_ARGV[1]
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'usage_guard.meter_table meters every inserted row against its tenant.';
    END IF;
    PERFORM usage_guard.usage_enforce(tenant, TG_ARGV[0], amount, NULL,
                                      jsonb_build_object('table', format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)));
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION usage_guard.meter_row() IS
    'Trigger installed by meter_table: enforces and records usage for each inserted row';

CREATE FUNCTION usage_guard.meter_table(
    tbl           regclass,
    feature_key   text,
    tenant_column name,
    amount_column name DEFAULT NULL)
RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_tbl     ALIAS FOR $1;
    p_feature ALIAS FOR $2;
    p_tenant  ALIAS FOR $3;
    p_amount  ALIAS FOR $4;
    trg       text;
    relkind   "char";
BEGIN
    IF p_tbl IS NULL OR p_feature IS NULL OR p_tenant IS NULL THEN
        RAISE EXCEPTION 'tbl, feature_key and tenant_column must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = p_tbl;
    IF relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', p_tbl
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM usage_guard.features f WHERE f.feature_key = p_feature) THEN
        RAISE EXCEPTION 'unknown feature "%"', p_feature
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add it first: INSERT INTO usage_guard.features(feature_key, unit) VALUES (...).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = p_tbl AND a.attname = p_tenant
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of "%" does not exist', p_tenant, p_tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    IF p_amount IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = p_tbl AND a.attname = p_amount
               AND a.attnum > 0 AND NOT a.attisdropped
               AND a.atttypid IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype,
                                  'numeric'::regtype, 'real'::regtype, 'double precision'::regtype)) THEN
        RAISE EXCEPTION 'column "%" of "%" does not exist or is not numeric', p_amount, p_tbl
            USING ERRCODE = 'undefined_column';
    END IF;

    trg := left('usage_guard_meter_' || p_feature, 63);
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_tbl AND t.tgname = trg) THEN
        EXECUTE format('DROP TRIGGER %I ON %s', trg, p_tbl);
    END IF;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION usage_guard.meter_row(%L, %L, %L)',
                   trg, p_tbl, p_feature, p_tenant, coalesce(p_amount, ''));
    RETURN trg;
END
$$;
COMMENT ON FUNCTION usage_guard.meter_table(regclass, text, name, name) IS
    'Meters a table: every inserted row consumes usage of feature_key (1, or amount_column) for the tenant in tenant_column; the INSERT fails with SQLSTATE UG001 over the hard limit. Returns the trigger name.';

CREATE FUNCTION usage_guard.unmeter_table(tbl regclass, feature_key text)
RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trg text := left('usage_guard_meter_' || $2, 63);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = trg) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TRIGGER %I ON %s', trg, $1);
    RETURN true;
END
$$;
COMMENT ON FUNCTION usage_guard.unmeter_table(regclass, text) IS
    'Removes the metering trigger meter_table installed; false when there was none';

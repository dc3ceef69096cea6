-- usage_guard catalog: what tenants are entitled to.
--
-- Owns the domains the tables and functions share (period_kind,
-- limit_amount), the catalog tables (features, plans, plan_features,
-- tenant_subscriptions, tenant_overrides), the statement triggers that
-- invalidate every backend's policy cache when they change
-- (catalog_changed), and their pg_dump registration.
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql in the order
-- catalog, ledger, decisions, counters, reports, operations: every file
-- uses only objects of the files before it.

--------------------------------------------------------------------------
-- Domains: one place for the vocabulary the tables and functions share.
--------------------------------------------------------------------------

-- A limit window.  hour/day/week/month are UTC calendar windows, half-open;
-- billing_period follows the subscription's anchor.
CREATE DOMAIN usage_guard.period_kind AS text
    CONSTRAINT period_kind_valid
    CHECK (VALUE IN ('hour', 'day', 'week', 'month', 'billing_period', 'lifetime'));
COMMENT ON DOMAIN usage_guard.period_kind IS
    'Limit window: hour, day, week, month (UTC calendar, [start, end)), billing_period (the subscription''s own period) or lifetime (never resets; lowered only by adjustments)';

-- A limit: NULL means unlimited; otherwise a finite amount in [0, 1e15].
-- NaN and Infinity sort above every number, so the upper bound excludes them.
-- Amounts are exact 128-bit fixed point with 12 decimal places in shared
-- memory: limits may not have more.
CREATE DOMAIN usage_guard.limit_amount AS numeric
    CONSTRAINT limit_amount_range
    CHECK (VALUE IS NULL OR (VALUE >= 0 AND VALUE <= 1e15))
    CONSTRAINT limit_amount_decimals
    CHECK (VALUE IS NULL OR VALUE = round(VALUE, 12));
COMMENT ON DOMAIN usage_guard.limit_amount IS
    'A usage limit: NULL = unlimited, else a finite number between 0 and 1e15';

--------------------------------------------------------------------------
-- Catalog
--------------------------------------------------------------------------

CREATE TABLE usage_guard.features (
    feature_key text PRIMARY KEY
        CONSTRAINT features_key_valid CHECK (feature_key ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}$'),
    unit        text NOT NULL DEFAULT 'unit'
        CONSTRAINT features_unit_not_empty CHECK (unit <> ''),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE usage_guard.features IS
    'Metered dimensions (messages, input_tokens, deployments, ...) and their unit';

CREATE TABLE usage_guard.plans (
    plan_code   text PRIMARY KEY
        CONSTRAINT plans_code_valid CHECK (plan_code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,254}$'),
    name        text,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    unlimited_by_default boolean NOT NULL DEFAULT false,
    is_default  boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE usage_guard.plans IS 'Plans a tenant can subscribe to';
COMMENT ON COLUMN usage_guard.plans.unlimited_by_default IS
    'Features this plan does not list are unlimited (instead of not included): an enterprise tier where every feature, even one added later, is unlimited unless limited';
COMMENT ON COLUMN usage_guard.plans.is_default IS
    'The plan of tenants without a subscription row (at most one plan): decided as active, billing periods are calendar months; false everywhere = such tenants get usage_policy_configuration_error';
CREATE UNIQUE INDEX plans_one_default ON usage_guard.plans ((true)) WHERE is_default;

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
        CONSTRAINT tenant_subscriptions_tenant_valid CHECK (tenant_id <> '' AND octet_length(tenant_id) <= 255),
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
        CONSTRAINT tenant_overrides_tenant_valid CHECK (tenant_id <> '' AND octet_length(tenant_id) <= 255),
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
-- Policy caches: every backend's copy of the catalog
--------------------------------------------------------------------------

-- Catalog changes reach every backend's policy cache at its next transaction.
CREATE FUNCTION usage_guard.catalog_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'usage_guard_catalog_changed'
LANGUAGE C;
COMMENT ON FUNCTION usage_guard.catalog_changed() IS
    'Trigger: invalidates the per-backend policy caches when the catalog changes';
CREATE TRIGGER features_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.features FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.plans FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER plan_features_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.plan_features FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER tenant_subscriptions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.tenant_subscriptions FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();
CREATE TRIGGER tenant_overrides_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON usage_guard.tenant_overrides FOR EACH STATEMENT EXECUTE FUNCTION usage_guard.catalog_changed();

-- The shared policy cache (0.8.0) holds one entry per tenant for every
-- backend; a change to a tenant's subscription or overrides makes that
-- tenant's entry stale when the transaction commits, and nothing else.
CREATE FUNCTION usage_guard.tenant_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'usage_guard_tenant_changed'
LANGUAGE C;
COMMENT ON FUNCTION usage_guard.tenant_changed() IS
    'Row trigger: the changed tenants'' entries of the shared policy cache are stale once the transaction commits';
CREATE TRIGGER tenant_subscriptions_rows_changed AFTER INSERT OR UPDATE OR DELETE
    ON usage_guard.tenant_subscriptions FOR EACH ROW EXECUTE FUNCTION usage_guard.tenant_changed();
CREATE TRIGGER tenant_overrides_rows_changed AFTER INSERT OR UPDATE OR DELETE
    ON usage_guard.tenant_overrides FOR EACH ROW EXECUTE FUNCTION usage_guard.tenant_changed();

-- The cache triggers fire also under session_replication_role = replica
-- (logical replication's apply, a restore that keeps triggers on): a
-- subscription replicated in must be seen like one inserted here.
ALTER TABLE usage_guard.features ENABLE ALWAYS TRIGGER features_changed;
ALTER TABLE usage_guard.plans ENABLE ALWAYS TRIGGER plans_changed;
ALTER TABLE usage_guard.plan_features ENABLE ALWAYS TRIGGER plan_features_changed;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_changed;
ALTER TABLE usage_guard.tenant_subscriptions ENABLE ALWAYS TRIGGER tenant_subscriptions_rows_changed;
ALTER TABLE usage_guard.tenant_overrides ENABLE ALWAYS TRIGGER tenant_overrides_changed;
ALTER TABLE usage_guard.tenant_overrides ENABLE ALWAYS TRIGGER tenant_overrides_rows_changed;

--------------------------------------------------------------------------
-- pg_dump keeps the catalog's rows (and the ledger's: see ledger.sql)
--------------------------------------------------------------------------

SELECT pg_catalog.pg_extension_config_dump('usage_guard.features', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.plans', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.plan_features', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.tenant_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.tenant_overrides', '');

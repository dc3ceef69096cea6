-- usage_guard privileges: who may call what (README, "Security").
--
-- Three levels, each a NOLOGIN role that an operator grants with one
-- statement (GRANT usage_guard_application TO gateway):
--   usage_guard_application  decide and record usage for tenants
--   usage_guard_reader       reports, status, metrics; read the catalog and ledger
--   usage_guard_admin        everything: catalog, adjustments, resets, sync,
--                            metering, maintenance (and both levels above)
-- The functions are the boundary.  The application level has EXECUTE on
-- the decision, gateway and pricing functions and no table privilege; what usage_guard reads and writes
-- for it (policies, window sums, idempotency keys, ledger rows) runs as the
-- ledger's owner.  PUBLIC has nothing.
--
-- Roles are cluster-wide: the first database to install usage_guard creates
-- them, later ones reuse them, and DROP EXTENSION leaves them (drop them when
-- no database uses usage_guard any more).
--
-- Assembled by the Makefile last: it grants on every object of the files
-- before it.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['usage_guard_application', 'usage_guard_reader', 'usage_guard_admin']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('usage_guard_admin', 'usage_guard_application', 'MEMBER') THEN
        GRANT usage_guard_application TO usage_guard_admin;
    END IF;
    IF NOT pg_catalog.pg_has_role('usage_guard_admin', 'usage_guard_reader', 'MEMBER') THEN
        GRANT usage_guard_reader TO usage_guard_admin;
    END IF;
END
$$;
COMMENT ON ROLE usage_guard_application IS
    'usage_guard: decide and record usage (usage_check, usage_consume, usage_enforce, usage_record)';
COMMENT ON ROLE usage_guard_reader IS
    'usage_guard: reports, status and metrics; read access to the catalog and the ledger';
COMMENT ON ROLE usage_guard_admin IS
    'usage_guard: plans, limits, subscriptions, adjustments, resets, entitlement sync, metering, maintenance';

-- Nothing for PUBLIC (functions are executable by PUBLIC by default)
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA usage_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA usage_guard
    TO usage_guard_application, usage_guard_reader, usage_guard_admin;

-- Application: the decision functions, nothing else
GRANT EXECUTE ON FUNCTION
    usage_guard.usage_check(text, text, numeric, timestamptz),
    usage_guard.usage_allowed(text, text, numeric, timestamptz),
    usage_guard.usage_consume(text, text, numeric, text, jsonb, timestamptz),
    usage_guard.usage_enforce(text, text, numeric, text, jsonb, timestamptz),
    usage_guard.usage_record(text, text, numeric, timestamptz, text, jsonb),
    usage_guard.usage_record_batch(text[], text[], numeric[], timestamptz[], text[], jsonb[]),
    usage_guard.request_check(text, text, text, numeric, timestamptz),
    usage_guard.request_consume(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_enforce(text, text, text, numeric, text, jsonb, interval, timestamptz),
    usage_guard.request_throttle(text, text, text, numeric, timestamptz),
    usage_guard.lease_acquire(text, text, interval, timestamptz),
    usage_guard.lease_release(text, uuid),
    usage_guard.model_cost(text, numeric, numeric, numeric, timestamptz),
    usage_guard.admit(text, text, text, numeric, numeric, interval, text, jsonb, timestamptz),
    usage_guard.settle(text, uuid, numeric, numeric, numeric),
    usage_guard.cancel(text, uuid)
    TO usage_guard_application;

-- Reader: read the catalog and the ledger, and the functions that report
-- (they run as the reader, so a row-level policy on the ledger filters them)
GRANT SELECT ON
    usage_guard.features, usage_guard.plans, usage_guard.plan_features,
    usage_guard.tenant_subscriptions, usage_guard.tenant_overrides,
    usage_guard.usage_events, usage_guard.usage_resets, usage_guard.subscription_usage,
    usage_guard.usage_daily, usage_guard.usage_monthly,
    usage_guard.subjects, usage_guard.subject_limits, usage_guard.leases,
    usage_guard.models, usage_guard.model_prices,
    usage_guard.reservations, usage_guard.alerts
    TO usage_guard_reader;
GRANT EXECUTE ON FUNCTION
    usage_guard.get_usage_totals(text, timestamptz, timestamptz, text[]),
    usage_guard.usage_status(text, timestamptz),
    usage_guard.raise_policy_error(text, text, text, text),
    usage_guard.entitlements_artifact(text[]),
    usage_guard.usage_report(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_json(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.usage_report_rows(text, text, timestamptz, timestamptz, text[], numeric),
    usage_guard.top_consumers(text, interval, integer),
    usage_guard.usage_anomalies(text, interval, numeric, numeric, timestamptz, interval, interval),
    usage_guard.usage_anomalies_rows(text, interval, numeric, numeric, timestamptz, interval, interval),
    usage_guard.limit_windows(text, timestamptz),
    usage_guard.limit_windows_rows(text, timestamptz),
    usage_guard.limits_in_force(text, timestamptz),
    usage_guard.limit_status(numeric, numeric, numeric, numeric),
    usage_guard.window_of(text, timestamptz, timestamptz, timestamptz),
    usage_guard.window_length(timestamptz, timestamptz),
    usage_guard.metrics(),
    usage_guard.metrics_text(),
    usage_guard.shmem_info(),
    usage_guard.gateway_report(interval, text, timestamptz),
    usage_guard.budget_usage(text, timestamptz)
    TO usage_guard_reader;

-- Admin: the catalog, corrections (ledger rows of kind adjustment; the
-- ledger stays append-only), the live counters, and every operation
GRANT SELECT, INSERT, UPDATE, DELETE ON
    usage_guard.features, usage_guard.plans, usage_guard.plan_features,
    usage_guard.tenant_subscriptions, usage_guard.tenant_overrides,
    usage_guard.subjects, usage_guard.subject_limits,
    usage_guard.models, usage_guard.model_prices
    TO usage_guard_admin;
GRANT SELECT, DELETE ON usage_guard.leases TO usage_guard_admin;
GRANT INSERT ON usage_guard.usage_events, usage_guard.usage_resets TO usage_guard_admin;
GRANT SELECT ON usage_guard.usage_counters TO usage_guard_admin;
GRANT EXECUTE ON FUNCTION
    usage_guard.live_counters(),
    usage_guard.reset_counters(),
    usage_guard.reset_usage(text, text, text, text, timestamptz),
    usage_guard.reset_usage_rows(text, text, text, text, timestamptz),
    usage_guard.sync_entitlements(jsonb, text[], boolean, boolean, boolean),
    usage_guard.refresh_rollups(boolean),
    usage_guard.require_pg_cron(),
    usage_guard.schedule_maintenance(interval),
    usage_guard.unschedule_maintenance(),
    usage_guard.meter_table(regclass, text, name, name),
    usage_guard.unmeter_table(regclass, text),
    usage_guard.metering_trigger(regclass, text),
    usage_guard.meter_row(),
    usage_guard.purge_leases(interval),
    usage_guard.expire_reservations(timestamptz)
    TO usage_guard_admin;
GRANT SELECT, DELETE ON usage_guard.alerts TO usage_guard_admin;

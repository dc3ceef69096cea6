-- Calendar windows in UTC, half-open [start, end), whatever the session's
-- TimeZone; the boundaries are exact to the microsecond.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('per_h'), ('per_d'), ('per_w'), ('per_m');
INSERT INTO usage_guard.plans (plan_code) VALUES ('per_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('per_plan', 'per_h', 'hour', 10), ('per_plan', 'per_d', 'day', 10),
    ('per_plan', 'per_w', 'week', 10), ('per_plan', 'per_m', 'month', 10);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('per', 'per_plan');

-- one unit just before and one exactly at each boundary
SELECT usage_guard.usage_record('per', f, 1, t)
  FROM unnest(ARRAY['per_h', 'per_d', 'per_w', 'per_m']) AS f,
       unnest(ARRAY['2025-01-31 23:59:59.999999+00', '2025-02-01 00:00:00+00']::timestamptz[]) AS t;

-- the windows containing each instant, and the usage in them
SELECT f AS feature, t AS at, c.period, c.window_start, c.window_end, c.usage
  FROM unnest(ARRAY['per_h', 'per_d', 'per_w', 'per_m']) AS f,
       unnest(ARRAY['2025-01-31 23:59:59.999999+00', '2025-02-01 00:00:00+00',
                    '2025-02-01 00:59:59+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('per', f, 0, t) c
 ORDER BY f, t;

-- weeks start on Monday (2025-02-03 is a Monday)
SELECT window_start, to_char(window_start, 'Dy') AS starts_on, window_end
  FROM usage_guard.usage_check('per', 'per_w', 0, '2025-02-09 23:59:59+00');
SELECT window_start FROM usage_guard.usage_check('per', 'per_w', 0, '2025-02-10 00:00:00+00');
-- leap years and year ends
SELECT window_start, window_end FROM usage_guard.usage_check('per', 'per_m', 0, '2024-02-29 12:00+00');
SELECT window_start, window_end FROM usage_guard.usage_check('per', 'per_m', 0, '2025-12-31 23:59:59+00');
SELECT window_start, window_end FROM usage_guard.usage_check('per', 'per_w', 0, '2025-12-31 12:00+00');

-- the session's TimeZone changes how times print, not where windows fall
SET timezone = 'Asia/Kolkata';
SELECT window_start AT TIME ZONE 'UTC' AS start_utc, window_end AT TIME ZONE 'UTC' AS end_utc, usage
  FROM usage_guard.usage_check('per', 'per_d', 0, '2025-02-01 03:00+05:30');
SET timezone = 'America/New_York';
SELECT window_start AT TIME ZONE 'UTC' AS start_utc, window_end AT TIME ZONE 'UTC' AS end_utc, usage
  FROM usage_guard.usage_check('per', 'per_m', 0, '2025-01-31 20:00-05');
RESET timezone;

-- Lifetime limits (seed 004's storage): the window never resets; usage goes
-- down only by adjustments (a deleted file gives its space back).
INSERT INTO usage_guard.features (feature_key, unit) VALUES ('per_storage', 'GB');
INSERT INTO usage_guard.plans (plan_code) VALUES ('per_store');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('per_store', 'per_storage', 'lifetime', 80, 100);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('per-store', 'per_store');
SELECT allowed, period, usage, window_start, window_end
  FROM usage_guard.usage_consume('per-store', 'per_storage', 60, at => '2024-01-15 10:00+00');
-- nearly two years later the 60 still count
SELECT allowed, decision, usage FROM usage_guard.usage_consume('per-store', 'per_storage', 50, at => '2025-11-18 10:00+00');
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind, occurred_at, attributes)
VALUES ('per-store', 'per_storage', -20, 'adjustment', '2025-06-01 00:00+00', '{"reason": "file deleted"}');
SELECT allowed, decision, usage FROM usage_guard.usage_consume('per-store', 'per_storage', 50, at => '2025-11-18 10:00+00');
-- the JSON detail: a window that never resets has no end
SELECT try_detail($$SELECT usage_guard.usage_enforce('per-store', 'per_storage', 20, at => '2025-11-18 10:00+00')$$)
       - 'tenant_id' - 'plan_code' AS detail;
SELECT * FROM usage_guard.window_of('lifetime', '2025-11-18 10:00+00');
SELECT feature_key, period, usage, window_start, window_end, status FROM usage_guard.usage_status('per-store', '2025-11-18 12:00+00');
SELECT window_start, window_end, usage, reserved FROM usage_guard.usage_counters WHERE tenant_id = 'per-store';
SELECT limit_period, usage, peak_usage, peak_window_end, status
  FROM usage_guard.usage_report('per-store', period_start => '2025-11-01', period_end => '2025-12-01');

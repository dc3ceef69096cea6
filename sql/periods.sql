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

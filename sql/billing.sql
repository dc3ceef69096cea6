-- billing_period: the subscription's own period, rolling forward monthly
-- from its anchor when it has ended.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('bil_calls');
INSERT INTO usage_guard.plans (plan_code) VALUES ('bil_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('bil_plan', 'bil_calls', 'billing_period', 8, 10);

-- anchored mid-month at an arbitrary time; no explicit end: one month
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('bil-mid', 'bil_plan', '2025-01-15 13:27:45+00');
SELECT t AS at, window_start, window_end
  FROM unnest(ARRAY['2025-01-15 13:27:44+00', '2025-01-15 13:27:45+00', '2025-02-15 13:27:44.999999+00',
                    '2025-02-15 13:27:45+00', '2025-06-30 00:00+00', '2026-01-15 13:27:45+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('bil-mid', 'bil_calls', 0, t)
 ORDER BY t;

-- usage right before the rollover counts in the old period only; the
-- partial hours at both edges are counted exactly
SELECT usage_guard.usage_record('bil-mid', 'bil_calls', 7, '2025-02-15 13:27:44.999999+00');
SELECT usage_guard.usage_record('bil-mid', 'bil_calls', 2, '2025-02-15 13:27:45+00');
SELECT usage_guard.usage_record('bil-mid', 'bil_calls', 1, '2025-02-15 13:00:00+00');
SELECT at, usage, remaining
  FROM unnest(ARRAY['2025-02-15 13:27:44+00', '2025-02-15 13:27:45+00']::timestamptz[]) AS at,
       LATERAL usage_guard.usage_check('bil-mid', 'bil_calls', 0, at);
-- 8 used, 2 more reach the hard limit, 3 do not fit
SELECT allowed, decision, usage FROM usage_guard.usage_check('bil-mid', 'bil_calls', 2, '2025-02-01 00:00+00');
SELECT allowed, decision, usage FROM usage_guard.usage_check('bil-mid', 'bil_calls', 3, '2025-02-01 00:00+00');

-- anchored on the 31st: short months clamp, later months return to the 31st
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('bil-31', 'bil_plan', '2025-01-31 00:00+00');
SELECT t AS at, window_start, window_end
  FROM unnest(ARRAY['2025-02-10+00', '2025-03-01+00', '2025-04-15+00', '2025-05-31+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('bil-31', 'bil_calls', 0, t)
 ORDER BY t;

-- an explicit first period (a 14-day trial), then monthly from its end
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status, current_period_start, current_period_end)
VALUES ('bil-trial', 'bil_plan', 'trialing', '2025-03-01 00:00+00', '2025-03-15 00:00+00');
SELECT t AS at, window_start, window_end
  FROM unnest(ARRAY['2025-03-10+00', '2025-03-20+00', '2025-04-05+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('bil-trial', 'bil_calls', 0, t)
 ORDER BY t;
-- a long first period is not cut short
UPDATE usage_guard.tenant_subscriptions SET current_period_end = '2025-05-10 00:00+00' WHERE tenant_id = 'bil-trial';
SELECT t AS at, window_start, window_end
  FROM unnest(ARRAY['2025-04-20+00', '2025-05-20+00', '2025-06-05+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('bil-trial', 'bil_calls', 0, t)
 ORDER BY t;
-- an explicit whole-month period keeps the anchor's day (Stripe-style Jan 31)
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start, current_period_end)
VALUES ('bil-stripe', 'bil_plan', '2025-01-31 00:00+00', '2025-02-28 00:00+00');
SELECT t AS at, window_start, window_end
  FROM unnest(ARRAY['2025-02-27+00', '2025-03-05+00', '2025-04-05+00']::timestamptz[]) AS t,
       LATERAL usage_guard.usage_check('bil-stripe', 'bil_calls', 0, t)
 ORDER BY t;
-- a renewal moves the anchor: the next check uses the new period
UPDATE usage_guard.tenant_subscriptions
   SET current_period_start = '2025-06-07 00:00+00', current_period_end = '2025-07-07 00:00+00'
 WHERE tenant_id = 'bil-trial';
SELECT window_start, window_end FROM usage_guard.usage_check('bil-trial', 'bil_calls', 0, '2025-06-20+00');

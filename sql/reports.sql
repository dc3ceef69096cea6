-- usage_status, usage_report (rows, JSON, CSV), top_consumers,
-- usage_anomalies and reset_usage.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('rep_msgs', 'message'), ('rep_tokens', 'token');
INSERT INTO usage_guard.plans (plan_code) VALUES ('rep_free'), ('rep_pro');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('rep_free', 'rep_msgs', 'day', 8, 10), ('rep_free', 'rep_msgs', 'month', NULL, 100),
    ('rep_free', 'rep_tokens', 'month', 800, 1000),
    ('rep_pro', 'rep_msgs', 'day', NULL, 1000), ('rep_pro', 'rep_tokens', 'month', NULL, NULL);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES
    ('rep-a', 'rep_free'), ('rep-b', 'rep_free'), ('rep-c', 'rep_pro'), ('rep-idle', 'rep_free');
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, status) VALUES ('rep-gone', 'rep_free', 'canceled');
SELECT count(*) FROM (
    SELECT usage_guard.usage_record('rep-a', 'rep_msgs', 1, '2025-11-18 09:00+00'::timestamptz + i * interval '1 minute') FROM generate_series(1, 9) i
    UNION ALL SELECT usage_guard.usage_record('rep-a', 'rep_tokens', 850, '2025-11-10 12:00+00')
    UNION ALL SELECT usage_guard.usage_record('rep-b', 'rep_msgs', 3, '2025-11-17 12:00+00')
    UNION ALL SELECT usage_guard.usage_record('rep-b', 'rep_msgs', 10, '2025-11-18 08:00+00')
    UNION ALL SELECT usage_guard.usage_record('rep-c', 'rep_msgs', 40, '2025-11-18 09:30+00')
    UNION ALL SELECT usage_guard.usage_record('rep-c', 'rep_tokens', 5000, '2025-10-31 23:00+00')) x;

-- status: every limited window, with when it resets
SELECT * FROM usage_guard.usage_status('rep-a', '2025-11-18 12:00+00');
SELECT feature_key, period, usage, status FROM usage_guard.usage_status('rep-idle', '2025-11-18 12:00+00');
SELECT usage_guard.usage_status('rep-gone', '2025-11-18 12:00+00');
SELECT usage_guard.usage_status('nobody');

-- report over November: every subscribed tenant, zero usage included
SELECT tenant_id, plan_code, feature_key, usage, events, limit_period, soft_limit, hard_limit,
       peak_usage, windows_over_soft, windows_at_hard, remaining, percent_used, status
  FROM usage_guard.usage_report(period_start => '2025-11-01', period_end => '2025-12-01')
 WHERE tenant_id LIKE 'rep-%';
-- A daily limit is judged day by day (seed 004): 500 messages a day, 400
-- used on Nov 3 and 400 on Nov 4 is 800 in November, but no day passed 500:
-- approaching, not hard_limit.  A third tenant that did reach 500 on one
-- day of the two shows that hit, with its window.
INSERT INTO usage_guard.features (feature_key) VALUES ('rep_daily');
INSERT INTO usage_guard.plans (plan_code) VALUES ('rep_daily_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('rep_daily_plan', 'rep_daily', 'day', 450, 500), ('rep_daily_plan', 'rep_daily', 'month', NULL, 10000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('daily-ok', 'rep_daily_plan'), ('daily-hit', 'rep_daily_plan');
SELECT count(*) FROM (
    SELECT usage_guard.usage_record('daily-ok', 'rep_daily', 400, '2025-11-03 10:00+00')
    UNION ALL SELECT usage_guard.usage_record('daily-ok', 'rep_daily', 400, '2025-11-04 10:00+00')
    UNION ALL SELECT usage_guard.usage_record('daily-hit', 'rep_daily', 300, '2025-11-03 10:00+00')
    UNION ALL SELECT usage_guard.usage_record('daily-hit', 'rep_daily', 500, '2025-11-04 23:59:59.999999+00')
    UNION ALL SELECT usage_guard.usage_record('daily-hit', 'rep_daily', 460, '2025-11-05 00:00+00')) x;
SELECT tenant_id, limit_period, usage, events, hard_limit, peak_usage, peak_window_start, peak_window_end,
       windows_over_soft, windows_at_hard, remaining, percent_used, status
  FROM usage_guard.usage_report(plan_code => 'rep_daily_plan', period_start => '2025-11-01', period_end => '2025-12-01');
SELECT tenant_id, feature_key, usage, status
  FROM usage_guard.usage_report('rep-a', period_start => '2025-11-01', period_end => '2025-12-01',
                                features => ARRAY['rep_tokens'], warn_threshold => 0.5);
SELECT tenant_id, feature_key, usage FROM usage_guard.usage_report(plan_code => 'rep_pro', period_start => '2025-10-01', period_end => '2025-11-01');
-- a period that spans a plan change: usage of the whole period, limits in force at its end
UPDATE usage_guard.tenant_subscriptions SET plan_code = 'rep_pro' WHERE tenant_id = 'rep-b';
SELECT tenant_id, plan_code, feature_key, usage, hard_limit, status
  FROM usage_guard.usage_report('rep-b', period_start => '2025-11-17', period_end => '2025-11-19');
-- an empty period: every row, usage 0
SELECT tenant_id, feature_key, usage, events, status
  FROM usage_guard.usage_report(plan_code => 'rep_free', period_start => '2020-01-01', period_end => '2020-02-01');
-- JSON artifact and CSV
SELECT jsonb_pretty(usage_guard.usage_report_json('rep-c', period_start => '2025-11-01', period_end => '2025-12-01') - 'generated_at');
COPY (SELECT tenant_id, feature_key, usage, status FROM usage_guard.usage_report(plan_code => 'rep_free', period_start => '2025-11-01', period_end => '2025-12-01')) TO STDOUT WITH CSV HEADER;
-- bad calls
SELECT try($$SELECT * FROM usage_guard.usage_report()$$);
SELECT try($$SELECT * FROM usage_guard.usage_report(period_start => '2025-12-01', period_end => '2025-11-01')$$);
SELECT try($$SELECT * FROM usage_guard.usage_report(plan_code => 'gold', period_start => '2025-11-01', period_end => '2025-12-01')$$);
SELECT try($$SELECT * FROM usage_guard.usage_report(period_start => '2025-11-01', period_end => '2025-12-01', warn_threshold => 2)$$);

-- top consumers and anomalies (against the same hours a day earlier)
SELECT count(*) FROM (
    SELECT usage_guard.usage_record('rep-a', 'rep_msgs', 1, now() - interval '10 minutes')
    UNION ALL SELECT usage_guard.usage_record('rep-c', 'rep_msgs', 30, now() - interval '20 minutes')
    UNION ALL SELECT usage_guard.usage_record('rep-c', 'rep_msgs', 5, now() - interval '1 day 20 minutes')
    UNION ALL SELECT usage_guard.usage_record('rep-b', 'rep_msgs', 4, now() - interval '30 minutes')
    UNION ALL SELECT usage_guard.usage_record('rep-b', 'rep_msgs', 4, now() - interval '1 day 30 minutes')) x;
SELECT rank, tenant_id, plan_code, usage, events, share FROM usage_guard.top_consumers('rep_msgs', '1 hour', 2);
SELECT tenant_id, feature_key, recent_usage, baseline_usage, ratio
  FROM usage_guard.usage_anomalies('rep_msgs', '1 hour', 3) WHERE tenant_id LIKE 'rep-%';
-- unequal spans (seed 003): the last 5 minutes against the hourly rate a
-- day earlier, compared as rates.  rep-s: 10 now vs 24/hour (2 per 5 min)
-- then: 5x; rep-q: 3 now vs 60/hour (5 per 5 min): below.  With the
-- default baseline (the same 5 minutes a day earlier) there is no baseline.
INSERT INTO usage_guard.features (feature_key) VALUES ('rep_anom');
SELECT count(*) FROM (
    SELECT usage_guard.usage_record('rep-s', 'rep_anom', 10, '2025-11-18 11:58+00')
    UNION ALL SELECT usage_guard.usage_record('rep-s', 'rep_anom', 24, '2025-11-17 11:30+00')
    UNION ALL SELECT usage_guard.usage_record('rep-q', 'rep_anom', 3, '2025-11-18 11:59+00')
    UNION ALL SELECT usage_guard.usage_record('rep-q', 'rep_anom', 60, '2025-11-17 11:10+00')) x;
SELECT tenant_id, recent_usage, baseline_usage, ratio
  FROM usage_guard.usage_anomalies('rep_anom', '5 minutes', 3, at => '2025-11-18 12:00+00', baseline => '1 hour')
 ORDER BY tenant_id;
SELECT tenant_id, recent_usage, baseline_usage, ratio
  FROM usage_guard.usage_anomalies('rep_anom', '5 minutes', 3, at => '2025-11-18 12:00+00')
 ORDER BY tenant_id;
SELECT try($$SELECT * FROM usage_guard.usage_anomalies('rep_anom', '2 hours', baseline_offset => '1 hour')$$);
SELECT try($$SELECT * FROM usage_guard.top_consumers('nope', '1 hour', 5)$$);
SELECT try($$SELECT * FROM usage_guard.top_consumers('rep_msgs', '-1 hour', 5)$$);

-- An admin reset gives back one window and no other (seed replay): the
-- tenant used 300 earlier in November and 80 today against 100 a day and
-- 1000 a month.  Resetting the day gives the day back (0 of 100); the
-- month still counts 380, and billable totals stay 380: a reset is not a
-- refund.  It is an audited row of usage_resets; history stays.
INSERT INTO usage_guard.features (feature_key) VALUES ('rep_reset');
INSERT INTO usage_guard.plans (plan_code) VALUES ('rep_reset_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES ('rep_reset_plan', 'rep_reset', 'day', 100), ('rep_reset_plan', 'rep_reset', 'month', 1000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('rep-r', 'rep_reset_plan');
SELECT count(*) FROM (SELECT usage_guard.usage_record('rep-r', 'rep_reset', 60, '2025-11-03 10:00+00'::timestamptz + d * interval '1 day')
                        FROM generate_series(0, 4) AS d) x;
SELECT allowed, usage FROM usage_guard.usage_consume('rep-r', 'rep_reset', 80, at => '2025-11-18 09:00+00');
SELECT allowed, decision, period, usage FROM usage_guard.usage_check('rep-r', 'rep_reset', 30, '2025-11-18 11:00+00');
SELECT * FROM usage_guard.reset_usage('rep-r', 'rep_reset', 'support ticket 42', 'day', '2025-11-18 12:00+00');
SELECT feature_key, period, usage, status FROM usage_guard.usage_status('rep-r', '2025-11-18 12:00+00');
SELECT total FROM usage_guard.get_usage_totals('rep-r', '2025-11-01', '2025-12-01', '{rep_reset}');
SELECT window_start, window_end, usage FROM usage_guard.usage_counters WHERE tenant_id = 'rep-r' ORDER BY window_end - window_start, window_start;
-- the day has room again (the decision is the shared counters'), the month counts on
SELECT allowed, usage FROM usage_guard.usage_consume('rep-r', 'rep_reset', 90, at => '2025-11-18 13:00+00');
SELECT allowed, decision, period, usage FROM usage_guard.usage_check('rep-r', 'rep_reset', 11, '2025-11-18 13:00+00');
-- the audit row; the ledger keeps every unit, no adjustment was written
SELECT tenant_id, feature_key, period, window_start, window_end, amount, reason, reset_by = session_user AS by_me
  FROM usage_guard.usage_resets WHERE tenant_id = 'rep-r';
SELECT count(*) FILTER (WHERE kind = 'adjustment') AS adjustments, sum(amount) AS ledger_total
  FROM usage_guard.usage_events WHERE tenant_id = 'rep-r';
-- a report judges the day as the decisions saw it (80, reset, then 90: peak
-- 90, no hit) while usage stays what is billed
SELECT limit_period, usage, peak_usage, windows_at_hard, status
  FROM usage_guard.usage_report('rep-r', period_start => '2025-11-01', period_end => '2025-12-01');
-- reloading from the tables gives the same counters
SELECT usage_guard.reset_counters() > 0 AS recomputed;
SELECT window_start, usage FROM usage_guard.usage_counters WHERE tenant_id = 'rep-r' ORDER BY window_end - window_start, window_start;
-- a reset inside a transaction that rolls back gives nothing back
BEGIN;
SELECT adjustment FROM usage_guard.reset_usage('rep-r', 'rep_reset', 'oops', 'day', '2025-11-18 14:00+00');
ROLLBACK;
SELECT usage FROM usage_guard.usage_check('rep-r', 'rep_reset', 0, '2025-11-18 14:00+00');
-- resets are append-only like the ledger
SELECT try($$DELETE FROM usage_guard.usage_resets$$);
-- a reset row written directly is checked like a ledger row, and a bad one
-- changes nothing
CREATE TEMP TABLE resets_before AS SELECT count(*) AS n FROM usage_guard.usage_resets;
SELECT try(format($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
                   VALUES (%L, 'rep_reset', 'day', '2025-11-18', '2025-11-19', -1, 'r')$$, repeat('t', 256)));
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'no_such_feature', 'day', '2025-11-18', '2025-11-19', -1, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'year', '2025-11-18', '2025-11-19', -1, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'day', '2025-11-19', '2025-11-18', -1, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'lifetime', '2025-11-18', '2025-11-19', -1, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'day', '2025-11-18', 'infinity', -1, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'day', '2025-11-18', '2025-11-19', 2e15, 'r')$$);
SELECT try($$INSERT INTO usage_guard.usage_resets (tenant_id, feature_key, period, window_start, window_end, amount, reason)
             VALUES ('rep-r', 'rep_reset', 'day', '2025-11-18', '2025-11-19', -1, ' ')$$);
SELECT (SELECT count(*) FROM usage_guard.usage_resets) - n AS resets_added FROM resets_before;
-- the older tenant: its shortest window by default
SELECT * FROM usage_guard.reset_usage('rep-a', 'rep_msgs', 'support ticket 43', at => '2025-11-18 12:00+00');
SELECT count(*) AS history_kept FROM usage_guard.usage_events WHERE tenant_id = 'rep-a' AND kind = 'record';
SELECT try($$SELECT * FROM usage_guard.reset_usage('rep-a', 'rep_msgs')$$);
SELECT try($$SELECT * FROM usage_guard.reset_usage('rep-a', 'rep_msgs', 'x', 'year')$$);

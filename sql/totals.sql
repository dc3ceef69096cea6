-- get_usage_totals: per-feature totals over arbitrary windows, exact at
-- any boundary (whole hours from counters, edges from the ledger).
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tot_in', 'token'), ('tot_out', 'token');
-- events spread over three days, on and off the hour
SELECT usage_guard.usage_record('tot', CASE WHEN i % 3 = 0 THEN 'tot_out' ELSE 'tot_in' END, i,
                                '2025-11-01 00:00+00'::timestamptz + i * interval '17 minutes 13.5 seconds')
  FROM generate_series(1, 250) AS i;
SELECT usage_guard.usage_record('tot-other', 'tot_in', 1000, '2025-11-01 12:00+00');

SELECT * FROM usage_guard.get_usage_totals('tot', '2025-11-01 00:00+00', '2025-11-04 00:00+00', ARRAY['tot_in', 'tot_out']);
-- a window inside one hour, across an hour edge, and on odd instants
SELECT * FROM usage_guard.get_usage_totals('tot', '2025-11-01 10:05+00', '2025-11-01 10:50+00', ARRAY['tot_in', 'tot_out']);
SELECT * FROM usage_guard.get_usage_totals('tot', '2025-11-01 10:05+00', '2025-11-01 11:50+00', ARRAY['tot_in']);

-- agree with a brute-force sum of the ledger for many windows
SELECT count(*) AS windows_checked,
       count(*) FILTER (WHERE t.total IS DISTINCT FROM b.total OR t.events IS DISTINCT FROM b.events) AS mismatches
  FROM generate_series(0, 70) AS s, generate_series(1, 9) AS len,
       LATERAL (SELECT '2025-11-01 00:00+00'::timestamptz + s * interval '47 minutes 3 seconds' AS ws) w,
       LATERAL (SELECT w.ws + len * interval '3 hours 11 minutes 0.25 seconds' AS we) e,
       LATERAL (SELECT total, events FROM usage_guard.get_usage_totals('tot', w.ws, e.we, ARRAY['tot_in'])) t,
       LATERAL (SELECT coalesce(sum(amount), 0) AS total, count(*) AS events
                  FROM usage_guard.usage_events
                 WHERE tenant_id = 'tot' AND feature_key = 'tot_in'
                   AND occurred_at >= w.ws AND occurred_at < e.we) b;

-- no features list: every feature, zero when unused
SELECT feature_key, total FROM usage_guard.get_usage_totals('tot', '2025-11-01', '2025-11-02')
 WHERE feature_key LIKE 'tot%' OR total <> 0;
-- a tenant with no usage
SELECT * FROM usage_guard.get_usage_totals('nobody', '2025-11-01', '2025-11-02', ARRAY['tot_in']);
-- adjustments (negative rows) are part of the totals
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at, kind)
VALUES ('tot-other', 'tot_in', -400, '2025-11-01 12:30+00', 'adjustment');
SELECT * FROM usage_guard.get_usage_totals('tot-other', '2025-11-01', '2025-11-02', ARRAY['tot_in']);

-- Metrics: decisions and limit hits counted in shared memory, a latency
-- histogram, the Prometheus text format, and the JSON log line of a hit.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('met_msgs');
INSERT INTO usage_guard.plans (plan_code) VALUES ('met_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('met_plan', 'met_msgs', 'day', 2, 3);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('met', 'met_plan');

CREATE TEMP TABLE before AS
SELECT coalesce(sum(value) FILTER (WHERE metric = 'usage_guard_decision_duration_seconds_count'), 0) AS n
  FROM usage_guard.metrics();

-- a limit hit of a consume writes one JSON line to the server log
SET client_min_messages = log;
SELECT allowed, decision FROM usage_guard.usage_consume('met', 'met_msgs', 2, at => '2025-11-18 10:00+00');
SELECT allowed, decision FROM usage_guard.usage_consume('met', 'met_msgs', 1, at => '2025-11-18 10:00+00');
SELECT allowed, decision FROM usage_guard.usage_consume('met', 'met_msgs', 1, at => '2025-11-18 10:00+00');
-- a check is counted apart (usage_guard_checks_total): no decision, no limit hit, no log
SELECT allowed, decision FROM usage_guard.usage_check('met', 'met_msgs', 5, '2025-11-18 10:00+00');
SET usage_guard.log_limit_hits = off;
SELECT allowed, decision FROM usage_guard.usage_consume('met', 'met_msgs', 1, at => '2025-11-18 10:00+00');
RESET usage_guard.log_limit_hits;
RESET client_min_messages;

SELECT metric, labels, value FROM usage_guard.metrics()
 WHERE labels ->> 'plan_code' = 'met_plan' ORDER BY metric, labels::text;
-- the histogram counted these 5 decisions and is cumulative
SELECT (SELECT value FROM usage_guard.metrics() WHERE metric = 'usage_guard_decision_duration_seconds_count') - n AS observed
  FROM before;
SELECT bool_and(value >= prev) AS cumulative, max(value) = (SELECT value FROM usage_guard.metrics()
        WHERE metric = 'usage_guard_decision_duration_seconds_count') AS inf_is_count
  FROM (SELECT value, lag(value, 1, 0::float8) OVER (ORDER BY CASE WHEN labels ->> 'le' = '+Inf' THEN 'Infinity'::float8 ELSE (labels ->> 'le')::float8 END) AS prev
          FROM usage_guard.metrics() WHERE metric = 'usage_guard_decision_duration_seconds_bucket') b;

-- the Prometheus text format
SELECT line FROM regexp_split_to_table(usage_guard.metrics_text(), E'\n') AS line
 WHERE line LIKE '#%' OR line LIKE '%met_plan%';
SELECT usage_guard.metrics_text() ~ E'usage_guard_decision_duration_seconds_count \\d+\n' AS has_count;

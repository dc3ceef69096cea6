-- Bulk ingest (0.8.0): usage_record_batch records parallel arrays in one
-- call, written as COPY writes; COPY into the ledger is counted by its row
-- trigger.  Either way the live counters equal the ledger, row for row.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('bk_calls'), ('bk_bytes');
INSERT INTO usage_guard.plans (plan_code) VALUES ('bk_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('bk_plan', 'bk_calls', 'day', 1000), ('bk_plan', 'bk_bytes', 'month', NULL);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
VALUES ('bk-a', 'bk_plan', '2025-11-01'), ('bk-b', 'bk_plan', '2025-11-01');

-- load bk-a's day window first: the batch must count into it
SELECT usage_after FROM usage_guard.usage_consume('bk-a', 'bk_calls', 1, NULL, '{}', '2025-11-18 09:00+00');

-- 2,500 rows (more than one internal flush of 1,000) over two tenants and
-- two features, in one call
SELECT usage_guard.usage_record_batch(
           array_agg(CASE WHEN i % 2 = 0 THEN 'bk-a' ELSE 'bk-b' END ORDER BY i),
           array_agg(CASE WHEN i % 5 = 0 THEN 'bk_bytes' ELSE 'bk_calls' END ORDER BY i),
           array_agg((i % 3)::numeric ORDER BY i),
           array_agg(timestamptz '2025-11-18 10:00+00' + i * interval '1 s' ORDER BY i)) AS recorded
  FROM generate_series(1, 2500) AS i;

-- the consume's row and the batch's rows, as usage_check sees them
SELECT v.tenant_id, v.feature_key, c.usage
  FROM (VALUES ('bk-a', 'bk_calls'), ('bk-b', 'bk_calls'), ('bk-a', 'bk_bytes')) v(tenant_id, feature_key),
       LATERAL usage_guard.usage_check(v.tenant_id, v.feature_key, 0, '2025-11-18 23:00+00') c
 ORDER BY 1, 2;
SELECT tenant_id, feature_key, count(*), sum(amount)
  FROM usage_guard.usage_events WHERE tenant_id LIKE 'bk-%' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT wrong, windows > 0 AS some FROM windows_off_ledger('bk-%');
-- every row is of kind record, with its own event_id, attributes '{}'
SELECT kind, count(DISTINCT event_id), min(attributes::text), max(attributes::text)
  FROM usage_guard.usage_events WHERE tenant_id LIKE 'bk-%' AND kind = 'record' GROUP BY kind;

-- idempotency keys: a taken key skips its row (also within the batch);
-- attributes per row; defaults for occurred_at
SELECT usage_guard.usage_record_batch(
           ARRAY['bk-a', 'bk-a', 'bk-a', 'bk-b'], ARRAY['bk_calls', 'bk_calls', 'bk_calls', 'bk_calls'],
           ARRAY[5, 5, 7, 1]::numeric[], NULL,
           ARRAY['k1', 'k1', NULL, 'k1'], ARRAY['{"src": "q"}', NULL, '{"src": "r"}', NULL]::jsonb[]) AS recorded;
SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[5]::numeric[],
                                      NULL, ARRAY['k1']) AS again;
SELECT tenant_id, amount, idempotency_key, attributes, recorded_at = occurred_at AS at_now
  FROM usage_guard.usage_events
 WHERE tenant_id LIKE 'bk-%' AND (idempotency_key IS NOT NULL OR attributes <> '{}')
 ORDER BY event_id;

-- empty arrays record nothing
SELECT usage_guard.usage_record_batch('{}', '{}', '{}') AS empty;

-- bad input: a clear error naming the row, and nothing written
CREATE TEMP TABLE bk_before AS SELECT count(*) AS n FROM usage_guard.usage_events;
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-b'], ARRAY['bk_calls'], ARRAY[1, 1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(NULL, ARRAY['bk_calls'], ARRAY[1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY[['bk-a']], ARRAY[['bk_calls']], ARRAY[[1]]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a', NULL], ARRAY['bk_calls', 'bk_calls'], ARRAY[1, 1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-a'], ARRAY['bk_calls', 'bk_nope'], ARRAY[1, 1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-a'], ARRAY['bk_calls', 'bk_calls'], ARRAY[1, -1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[1]::numeric[], ARRAY['infinity']::timestamptz[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[1]::numeric[], NULL, NULL, ARRAY['[1]']::jsonb[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY[repeat('x', 256)], ARRAY['bk_calls'], ARRAY[1]::numeric[])$$);
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[0.0000000000001]::numeric[])$$);
-- the row is named in the error's context
DO $$
DECLARE
    ctx text;
BEGIN
    PERFORM usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-a', 'bk-a'], ARRAY['bk_calls', 'bk_calls', 'bk_calls'],
                                           ARRAY[1, 1, 'NaN']::numeric[]);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS ctx = PG_EXCEPTION_CONTEXT;
    RAISE NOTICE '%: %', SQLERRM, split_part(ctx, E'\n', 1);
END $$;
DO $$
BEGIN
    PERFORM usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-a'], ARRAY['bk_calls', 'bk_nope'], ARRAY[1, 1]::numeric[]);
EXCEPTION WHEN undefined_object THEN
    RAISE NOTICE 'caught: %', SQLERRM;
END $$;
SELECT (SELECT count(*) FROM usage_guard.usage_events) - n AS written FROM bk_before;
SELECT wrong FROM windows_off_ledger('bk-%');

-- a rolled-back batch leaves no usage behind
BEGIN;
SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[100]::numeric[],
                                      ARRAY['2025-11-18 12:00+00']::timestamptz[]);
SELECT usage FROM usage_guard.usage_check('bk-a', 'bk_calls', 0, '2025-11-18 23:00+00');
ROLLBACK;
SELECT usage FROM usage_guard.usage_check('bk-a', 'bk_calls', 0, '2025-11-18 23:00+00');

-- the application role may call it, and row-level security binds it as it
-- binds usage_record: a policy that keeps bk-b away refuses the whole call
CREATE ROLE bk_app LOGIN;
GRANT usage_guard_application TO bk_app;
ALTER TABLE usage_guard.usage_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY bk_sel ON usage_guard.usage_events FOR SELECT TO bk_app USING (tenant_id = 'bk-a');
CREATE POLICY bk_ins ON usage_guard.usage_events FOR INSERT TO bk_app WITH CHECK (tenant_id = 'bk-a');
SET ROLE bk_app;
SELECT usage_guard.usage_record_batch(ARRAY['bk-a'], ARRAY['bk_calls'], ARRAY[1]::numeric[],
                                      ARRAY['2025-11-18 12:00+00']::timestamptz[]) AS own;
SELECT try($$SELECT usage_guard.usage_record_batch(ARRAY['bk-a', 'bk-b'], ARRAY['bk_calls', 'bk_calls'], ARRAY[1, 1]::numeric[])$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('bk-a', 'bk_calls', 1, 'record')$$);
RESET ROLE;
DROP POLICY bk_sel ON usage_guard.usage_events;
DROP POLICY bk_ins ON usage_guard.usage_events;
ALTER TABLE usage_guard.usage_events DISABLE ROW LEVEL SECURITY;
SELECT usage FROM usage_guard.usage_check('bk-a', 'bk_calls', 0, '2025-11-18 23:00+00');
DROP OWNED BY bk_app;
DROP ROLE bk_app;

-- COPY into the ledger: checked and counted row by row by its trigger
COPY usage_guard.usage_events (tenant_id, feature_key, amount, kind, occurred_at) FROM stdin;
bk-a	bk_calls	3	record	2025-11-18 20:00:00+00
bk-b	bk_calls	4	record	2025-11-18 20:00:01+00
bk-a	bk_calls	0.5	adjustment	2025-11-18 20:00:02+00
\.
SELECT v.tenant_id, c.usage
  FROM (VALUES ('bk-a'), ('bk-b')) v(tenant_id),
       LATERAL usage_guard.usage_check(v.tenant_id, 'bk_calls', 0, '2025-11-18 23:00+00') c
 ORDER BY 1;
SELECT try($$COPY usage_guard.usage_events (tenant_id, feature_key, amount, kind) FROM PROGRAM 'printf "bk-a\tbk_nope\t1\trecord\n"'$$);

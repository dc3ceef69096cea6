-- Live counters in shared memory: loaded from the ledger, kept in step with
-- it by the functions and the ledger's trigger, in flight until commit.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('ctr_calls');
INSERT INTO usage_guard.plans (plan_code) VALUES ('ctr_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('ctr_plan', 'ctr_calls', 'day', 100), ('ctr_plan', 'ctr_calls', 'month', 1000);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('ctr', 'ctr_plan');

-- history recorded before anything was loaded
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 7, '2025-11-18 08:00+00');
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 5, '2025-11-02 08:00+00');
SELECT * FROM usage_guard.usage_counters WHERE tenant_id = 'ctr';
-- the first decision loads the current windows (and the next ones) from the ledger
SELECT usage FROM usage_guard.usage_consume('ctr', 'ctr_calls', 1, at => '2025-11-18 12:00+00');
SELECT window_start, window_end, usage, reserved, credit
  FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' ORDER BY window_start, window_end;

-- in flight: reserved until commit, visible to every decision
BEGIN;
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 10, '2025-11-18 13:00+00');
SELECT window_start, usage, reserved FROM usage_guard.usage_counters
 WHERE tenant_id = 'ctr' AND window_start IN ('2025-11-18', '2025-11-01') ORDER BY 1;
SELECT usage FROM usage_guard.usage_check('ctr', 'ctr_calls', 1, '2025-11-18 14:00+00');
COMMIT;
SELECT window_start, usage, reserved FROM usage_guard.usage_counters
 WHERE tenant_id = 'ctr' AND window_start IN ('2025-11-18', '2025-11-01') ORDER BY 1;
-- rolled back: released
BEGIN;
SELECT allowed FROM usage_guard.usage_consume('ctr', 'ctr_calls', 50, at => '2025-11-18 15:00+00');
ROLLBACK;
SELECT window_start, usage, reserved FROM usage_guard.usage_counters
 WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';
-- a rolled-back savepoint releases only its own usage
BEGIN;
SELECT allowed FROM usage_guard.usage_consume('ctr', 'ctr_calls', 2, at => '2025-11-18 15:00+00');
SAVEPOINT s;
SELECT allowed FROM usage_guard.usage_consume('ctr', 'ctr_calls', 30, at => '2025-11-18 15:00+00');
ROLLBACK TO SAVEPOINT s;
SELECT usage, reserved FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';
COMMIT;
SELECT usage, reserved FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';

-- direct INSERTs into the ledger are counted by its trigger
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at)
VALUES ('ctr', 'ctr_calls', 3, '2025-11-18 16:00+00');
-- a negative adjustment is not counted while in flight (never lets more through
-- than the committed ledger allows), then lowers usage at commit
BEGIN;
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at, kind)
VALUES ('ctr', 'ctr_calls', -20, '2025-11-18 16:30+00', 'adjustment');
SELECT usage, reserved, credit FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';
SELECT usage FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 17:00+00');
COMMIT;
SELECT usage, reserved, credit FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';

-- counters equal the ledger, and reloading from it gives the same
CREATE TEMP VIEW ctr_compare AS
SELECT c.window_start, c.window_end, c.usage,
       (SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events e
         WHERE e.tenant_id = 'ctr' AND e.feature_key = 'ctr_calls'
           AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS ledger
  FROM usage_guard.usage_counters c WHERE c.tenant_id = 'ctr';
SELECT count(*) AS windows, count(*) FILTER (WHERE usage <> ledger) AS mismatches FROM ctr_compare;
SELECT usage_guard.reset_counters() > 0 AS reset;
SELECT count(*) FROM usage_guard.usage_counters WHERE tenant_id = 'ctr';
SELECT usage FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 17:00+00');
SELECT count(*) AS windows, count(*) FILTER (WHERE usage <> ledger) AS mismatches FROM ctr_compare;

-- amounts are exact to 12 decimal places
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 0.000000000001, '2025-11-18 18:00+00');
SELECT usage FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 18:00+00');
SELECT try($$SELECT usage_guard.usage_record('ctr', 'ctr_calls', 0.0000000000001)$$);
SELECT try($$SELECT usage_guard.usage_check('ctr', 'ctr_calls', 1.0000000000000)$$);
SELECT try($$INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES ('ctr', 'ctr_calls', 0.0000000000001)$$);

-- two-phase commit (PREPARE TRANSACTION; Citus's commit over several nodes):
-- the prepared usage ends in another session, so the windows it was counted
-- in are dropped at PREPARE and loaded again from the ledger once it ends
SELECT usage AS before_prepare FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 19:00+00');
BEGIN;
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 1, '2025-11-18 19:00+00');
PREPARE TRANSACTION 'ug';
SELECT count(*) AS live_day_windows FROM usage_guard.usage_counters WHERE tenant_id = 'ctr' AND window_start = '2025-11-18';
-- a consume for the key would wait for it (its key lock passed to it)
SELECT count(*) AS prepared_holds_key_lock FROM pg_locks
 WHERE pid IS NULL AND locktype = 'advisory' AND mode = 'RowExclusiveLock';
COMMIT PREPARED 'ug';
SELECT usage AS after_commit_prepared FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 19:00+00');
BEGIN;
SELECT usage_guard.usage_record('ctr', 'ctr_calls', 5, '2025-11-18 19:00+00');
PREPARE TRANSACTION 'ug2';
ROLLBACK PREPARED 'ug2';
SELECT usage AS after_rollback_prepared FROM usage_guard.usage_check('ctr', 'ctr_calls', 0, '2025-11-18 19:00+00');

-- a bulk write (a restore, a COPY, a backfill) needs memory per key, not per
-- row, and decisions stay exact in the same transaction
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('ctr-bulk', 'ctr_plan');
BEGIN;
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, occurred_at)
SELECT 'ctr-bulk', 'ctr_calls', 0.0005, '2025-11-18 00:00+00'::timestamptz + i * interval '100 ms'
  FROM generate_series(1, 100000) AS i;
SELECT sum(total_bytes) < 4 * 1024 * 1024 AS small_transaction_memory
  FROM pg_backend_memory_contexts WHERE name = 'TopTransactionContext';
-- the key's windows were not live: decisions for it use the ledger meanwhile
SELECT allowed, usage FROM usage_guard.usage_consume('ctr-bulk', 'ctr_calls', 1, at => '2025-11-18 23:00+00');
SELECT allowed, usage FROM usage_guard.usage_consume('ctr-bulk', 'ctr_calls', 1, at => '2025-11-18 23:00+00');
COMMIT;
SELECT usage FROM usage_guard.usage_check('ctr-bulk', 'ctr_calls', 0, '2025-11-18 23:30+00');
SELECT c.usage = (SELECT sum(amount) FROM usage_guard.usage_events e WHERE e.tenant_id = 'ctr-bulk'
                   AND e.occurred_at >= c.window_start AND e.occurred_at < c.window_end) AS equals_ledger
  FROM usage_guard.usage_counters c WHERE c.tenant_id = 'ctr-bulk' AND c.window_start = '2025-11-18';
-- many consumes in one transaction on live windows merge into one record
BEGIN;
SELECT count(*) FILTER (WHERE allowed) AS allowed
  FROM generate_series(1, 20000) AS i,
       LATERAL usage_guard.usage_consume('ctr-bulk', 'ctr_calls', 0.001, at => '2025-11-18 23:30+00'::timestamptz + i * interval '1 ms') AS d;
SELECT sum(total_bytes) < 4 * 1024 * 1024 AS small_transaction_memory
  FROM pg_backend_memory_contexts WHERE name = 'TopTransactionContext';
COMMIT;
SELECT usage, reserved FROM usage_guard.usage_counters WHERE tenant_id = 'ctr-bulk' AND window_start = '2025-11-18';

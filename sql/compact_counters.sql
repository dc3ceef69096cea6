-- Compact counters (0.8.0): an entry holds a key's names packed and two
-- windows; longer names spill to a long-name slot, more windows and rate
-- state to an extension slot.  Whatever the layout, a key's counters are
-- exact, its names come back whole, and nothing leaks between keys whose
-- names differ only past the inline part.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.features (feature_key) VALUES ('cc_calls');
INSERT INTO usage_guard.plans (plan_code) VALUES ('cc_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES
    ('cc_plan', 'cc_calls', 'day', 100);

CREATE TEMP VIEW cc_pools AS
    SELECT counters_used, counter_extensions_used, long_names_used, max_counter_extensions,
           bytes_per_counter
      FROM usage_guard.shmem_info();
CREATE TEMP TABLE cc_before AS SELECT * FROM cc_pools;

-- an entry with two windows costs at most 256 bytes, hash overhead included
SELECT bytes_per_counter <= 256 AS compact, max_counter_extensions > 0 AS has_extensions
  FROM cc_pools;

-- tenants whose names (with the feature's 8 bytes) fill the inline 56 bytes
-- exactly, go one past it, and are at the 255-byte limit; two long ones
-- differ only in their last byte
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code, current_period_start)
SELECT t, 'cc_plan', '2025-11-01'
  FROM (VALUES (repeat('a', 48)), (repeat('b', 49)),
               (repeat('c', 254) || '1'), (repeat('c', 254) || '2')) v(t);

SELECT length(tenant_id) AS len, right(tenant_id, 1) AS last, allowed, usage_after
  FROM (VALUES (repeat('a', 48), 3), (repeat('b', 49), 5),
               (repeat('c', 254) || '1', 7), (repeat('c', 254) || '2', 11)) v(t, n),
       LATERAL usage_guard.usage_consume(t, 'cc_calls', n, NULL, '{}', '2025-11-18 12:00+00') c
 ORDER BY 1, 2;

-- the keys past the inline bytes (49 + 8, and both at 255) took a long-name slot
SELECT p.long_names_used - b.long_names_used AS long_names,
       p.counters_used - b.counters_used AS counters
  FROM cc_pools p, cc_before b;

-- live_counters gives every name back whole, each with its own usage
SELECT length(tenant_id) AS len, right(tenant_id, 1) AS last, feature_key, window_start, usage
  FROM usage_guard.live_counters()
 WHERE feature_key = 'cc_calls'
 ORDER BY 1, 2, window_start;

-- the second decision finds the spilled key (same count, no reload)
SELECT usage_after FROM usage_guard.usage_consume(repeat('c', 254) || '2', 'cc_calls', 1, NULL, '{}',
                                                 '2025-11-18 12:00+00');
SELECT p.counters_used - b.counters_used AS counters FROM cc_pools p, cc_before b;

-- more than two windows of one key: decisions back in time keep the later
-- days (none ended before the request), so the third takes an extension slot
CREATE TEMP TABLE cc_ext AS SELECT counter_extensions_used AS used FROM cc_pools;
SELECT d AS day, usage_after
  FROM (VALUES ('2025-11-17 12:00+00'::timestamptz), ('2025-11-16 12:00+00'),
               ('2025-11-15 12:00+00')) v(d),
       LATERAL usage_guard.usage_consume(repeat('a', 48), 'cc_calls', 2, NULL, '{}', d) c
 ORDER BY 1;
SELECT p.counter_extensions_used - e.used AS extensions_taken FROM cc_pools p, cc_ext e;
SELECT window_start, usage
  FROM usage_guard.live_counters()
 WHERE tenant_id = repeat('a', 48)
 ORDER BY window_start;

-- every window equals the ledger
SELECT windows, windows - wrong AS exact FROM windows_off_ledger('%', 'cc_calls');

-- a later request does not need the days that ended before it: it reuses
-- their slots rather than taking more
SELECT usage_after FROM usage_guard.usage_consume(repeat('a', 48), 'cc_calls', 1, NULL, '{}',
                                                 '2025-11-25 12:00+00');
SELECT p.counter_extensions_used - e.used <= 1 AS no_more_extensions FROM cc_pools p, cc_ext e;

-- reset_counters recomputes spilled and extended keys from the ledger
SELECT usage_guard.reset_counters() > 0 AS recomputed;
SELECT wrong FROM windows_off_ledger('%', 'cc_calls');

-- a hard limit holds for a spilled key as for any other
SELECT allowed, usage_after
  FROM usage_guard.usage_check(repeat('c', 254) || '1', 'cc_calls', 93, '2025-11-18 12:00+00');
SELECT allowed, usage_after
  FROM usage_guard.usage_check(repeat('c', 254) || '1', 'cc_calls', 94, '2025-11-18 12:00+00');

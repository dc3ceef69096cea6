-- One limit on names everywhere: 255 bytes for tenant ids, feature keys,
-- plan codes and idempotency keys, in arguments, the catalog, the ledger
-- trigger, the caches and the counters.  A name is kept whole or refused
-- (22023 from a function, 23514 from a table) and a refusal changes nothing.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

SELECT repeat('f', 255) AS f255, repeat('p', 255) AS p255, repeat('t', 255) AS t255,
       repeat('k', 255) AS k255 \gset

-- catalog: 255 bytes is accepted, 256 refused
INSERT INTO usage_guard.features (feature_key) VALUES (:'f255');
INSERT INTO usage_guard.plans (plan_code) VALUES (:'p255');
SELECT try(format('INSERT INTO usage_guard.features (feature_key) VALUES (%L)', :'f255' || 'x'));
SELECT try(format('INSERT INTO usage_guard.plans (plan_code) VALUES (%L)', :'p255' || 'x'));
SELECT try(format('INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES (%L, %L)', :'t255' || 'x', :'p255'));
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES (:'p255', :'f255', 'day', 10);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES (:'t255', :'p255');

-- the whole chain at 255 bytes: decisions, ledger, counters
SELECT allowed, usage, length(plan_code) AS plan_len, length(feature_key) AS feature_len, length(tenant_id) AS tenant_len
  FROM usage_guard.usage_consume(:'t255', :'f255', 4, :'k255');
SELECT allowed, usage FROM usage_guard.usage_consume(:'t255', :'f255', 4, :'k255');
SELECT usage_guard.usage_record(:'t255', :'f255', 1);
SELECT allowed, usage FROM usage_guard.usage_check(:'t255', :'f255', 5);
SELECT length(tenant_id), length(feature_key), usage FROM usage_guard.usage_counters WHERE tenant_id = :'t255';

-- 256 bytes anywhere in an argument: 22023, nothing written
CREATE TEMP TABLE before AS SELECT count(*) AS n FROM usage_guard.usage_events;
SELECT try(format('SELECT usage_guard.usage_consume(%L, %L, 1)', :'t255' || 'x', :'f255'));
SELECT try(format('SELECT usage_guard.usage_consume(%L, %L, 1)', :'t255', :'f255' || 'x'));
SELECT try(format('SELECT usage_guard.usage_consume(%L, %L, 1, %L)', :'t255', :'f255', :'k255' || 'x'));
SELECT try(format('SELECT usage_guard.usage_enforce(%L, %L, 1)', :'t255', :'f255' || 'x'));
SELECT try(format('SELECT usage_guard.usage_check(%L, %L, 1)', :'t255' || 'x', :'f255'));
SELECT try(format('SELECT usage_guard.usage_record(%L, %L, 1)', :'t255', :'f255' || 'x'));
SELECT try(format('SELECT usage_guard.usage_record(%L, %L, 1, now(), %L)', :'t255', :'f255', :'k255' || 'x'));
-- the ledger trigger: the same limit for rows written directly
SELECT try(format('INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount) VALUES (%L, %L, 1)', :'t255' || 'x', :'f255'));
SELECT try(format('INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, idempotency_key) VALUES (%L, %L, 1, %L)', :'t255', :'f255', repeat('k', 5000)));
SELECT (SELECT count(*) FROM usage_guard.usage_events) - n AS rows_added FROM before;

-- A key longer than the caches once kept (128 bytes) that shares its first
-- 128 bytes with a real feature is a different, unknown feature, before
-- and after the real one is cached.
INSERT INTO usage_guard.features (feature_key) VALUES (repeat('a', 128));
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit) VALUES (:'p255', repeat('a', 128), 'day', 10);
SELECT try(format('SELECT usage_guard.usage_consume(%L, %L, 1)', :'t255', repeat('a', 128) || 'xyz'));
SELECT allowed, usage FROM usage_guard.usage_consume(:'t255', repeat('a', 128), 1);
SELECT try(format('SELECT usage_guard.usage_record(%L, %L, 1)', :'t255', repeat('a', 128) || 'xyz'));
SELECT allowed, usage FROM usage_guard.usage_consume(:'t255', repeat('a', 128), 1);
SELECT feature_key = repeat('a', 128) AS real_feature, count(*) FROM usage_guard.usage_events
 WHERE tenant_id = :'t255' AND feature_key LIKE 'aaaa%' GROUP BY 1;

-- meter_table: two features sharing a long prefix get two triggers, and
-- both limits hold
INSERT INTO usage_guard.features (feature_key)
VALUES (repeat('m', 60) || '_one'), (repeat('m', 60) || '_two');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, hard_limit)
VALUES (:'p255', repeat('m', 60) || '_one', 'day', 2), (:'p255', repeat('m', 60) || '_two', 'day', 100);
CREATE TABLE nm_items (tenant_id text NOT NULL, n int NOT NULL);
SELECT length(usage_guard.meter_table('nm_items', repeat('m', 60) || '_one', 'tenant_id')) <= 63 AS fits;
SELECT length(usage_guard.meter_table('nm_items', repeat('m', 60) || '_two', 'tenant_id', 'n')) <= 63 AS fits;
SELECT count(*) AS meter_triggers FROM pg_trigger WHERE tgrelid = 'nm_items'::regclass;
INSERT INTO nm_items SELECT :'t255', 1 FROM generate_series(1, 2);
SELECT left(try(format('INSERT INTO nm_items VALUES (%L, 1)', :'t255')), 40) AS refused;
SELECT count(*) FROM nm_items;
-- metering again replaces only its own trigger; unmetering removes only its own
SELECT length(usage_guard.meter_table('nm_items', repeat('m', 60) || '_one', 'tenant_id')) > 0 AS remetered;
SELECT count(*) AS meter_triggers FROM pg_trigger WHERE tgrelid = 'nm_items'::regclass;
SELECT usage_guard.unmeter_table('nm_items', repeat('m', 60) || '_one');
SELECT usage_guard.unmeter_table('nm_items', repeat('m', 60) || '_one');
SELECT count(*) AS meter_triggers FROM pg_trigger WHERE tgrelid = 'nm_items'::regclass;
SELECT usage_guard.unmeter_table('nm_items', repeat('m', 60) || '_two');
DROP TABLE nm_items;

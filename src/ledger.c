/*
 * ledger.c
 *		Writes to the usage ledger, usage of a window, and the per tenant and
 *		feature serialization point that makes usage_consume atomic.
 *
 * Lock order: a consume first updates its consume_locks row (one per tenant
 * and feature), then reads usage, then inserts its ledger row, whose trigger
 * upserts hourly counter rows.  Holding the consume_locks row until commit
 * is what keeps an uncommitted consume's units counted against everyone
 * else.  Callers are connected to SPI.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "query.h"
#include "usage_guard.h"

static CachedQuery window_usage_query = {
	"SELECT coalesce(sum(total), 0)"
	"  FROM usage_guard.window_totals($1, $3, $4, ARRAY[$2])",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};

static CachedQuery lock_query = {
	"INSERT INTO usage_guard.consume_locks AS l (tenant_id, feature_key, consumes)"
	" VALUES ($1, $2, 1)"
	" ON CONFLICT (tenant_id, feature_key)"
	" DO UPDATE SET consumes = l.consumes + 1",
	2, {TEXTOID, TEXTOID}
};

static CachedQuery key_query = {
	"SELECT 1 FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND idempotency_key = $2",
	2, {TEXTOID, TEXTOID}
};

static CachedQuery insert_query = {
	"INSERT INTO usage_guard.usage_events"
	" (tenant_id, feature_key, amount, occurred_at, kind, idempotency_key, attributes)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7)"
	" ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL"
	" DO NOTHING",
	7, {TEXTOID, TEXTOID, NUMERICOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID}
};

/* Committed (plus own) usage of a tenant's feature in [start, end) */
Numeric
WindowUsage(const char *tenant_id, const char *feature_key,
			TimestampTz start, TimestampTz end)
{
	Datum		values[4];
	bool		isnull;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = TimestampTzGetDatum(start);
	values[3] = TimestampTzGetDatum(end);
	/* not read-only: each call needs a snapshot taken after our lock */
	RunQuery(&window_usage_query, values, NULL, false, 1);
	return DatumGetNumeric(ResultDatum(0, 1, &isnull));
}

/*
 * Take the consume serialization point of a tenant's feature.  Under READ
 * COMMITTED a waiter resumes after the holder commits and its next statement
 * sees the holder's usage; under REPEATABLE READ or SERIALIZABLE the update
 * of a row changed since our snapshot fails with 40001, as it must.
 */
void
LockForConsume(const char *tenant_id, const char *feature_key)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	RunQuery(&lock_query, values, NULL, false, 0);
}

/* Was this idempotency key already recorded for the tenant (visible to us)? */
bool
IdempotencyKeyExists(const char *tenant_id, const char *key)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(key);
	RunQuery(&key_query, values, NULL, false, 1);
	return SPI_processed > 0;
}

/*
 * Append one ledger row.  Returns false when the idempotency key is already
 * taken (a concurrent holder of the key is waited for by the unique index).
 */
bool
InsertUsageEvent(const char *tenant_id, const char *feature_key,
				 Numeric amount, TimestampTz occurred_at, const char *kind,
				 const char *idempotency_key, Datum attributes)
{
	Datum		values[7];
	char		nulls[7] = "       ";

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = NumericGetDatum(amount);
	values[3] = TimestampTzGetDatum(occurred_at);
	values[4] = CStringGetTextDatum(kind);
	if (idempotency_key != NULL)
		values[5] = CStringGetTextDatum(idempotency_key);
	else
		nulls[5] = 'n';
	values[6] = attributes;
	RunQuery(&insert_query, values, nulls, false, 0);
	return SPI_processed == 1;
}

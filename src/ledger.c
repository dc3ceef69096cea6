/*
 * ledger.c
 *		Writes to the usage ledger and sums over it (SPI), and the ledger's
 *		row trigger, which counts rows inserted by anything other than
 *		usage_guard's own functions (direct INSERTs, COPY, restores) in the
 *		shared counters the same way the functions do.
 *
 * Lock order (see docs/architecture.md): key lock, then partition LWLock;
 * the LWLock is never held across SPI.  Callers are connected to SPI.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "query.h"
#include "usage_guard.h"

/* Nonzero while our own functions insert: the trigger leaves those rows alone */
static int	own_insert_depth = 0;

/*
 * A window's usage: its ledger rows, plus the resets of exactly that window
 * (usage_resets, since 0.5.0; the old query serves a catalog not yet
 * updated).  Resets are not in the ledger, so billable totals never see
 * them.
 */
static CachedQuery window_sum_query = {
	"SELECT coalesce((SELECT pg_catalog.sum(amount) FROM usage_guard.usage_events"
	"                  WHERE tenant_id = $1 AND feature_key = $2"
	"                    AND occurred_at >= $3 AND occurred_at < $4), 0)"
	"     + coalesce((SELECT pg_catalog.sum(amount) FROM usage_guard.usage_resets"
	"                  WHERE tenant_id = $1 AND feature_key = $2"
	"                    AND window_start = $3 AND window_end = $4), 0)",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};

static CachedQuery window_sum_query_old = {
	"SELECT coalesce(pg_catalog.sum(amount), 0) FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2"
	"   AND occurred_at >= $3 AND occurred_at < $4",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};


/*
 * A subject's window: the ledger rows charged to it or to a subject under
 * it (subject_path holds the chain, most specific first, since 0.6.0).
 * Resets are per tenant window and do not apply.
 */
static CachedQuery subject_sum_query = {
	"SELECT coalesce(pg_catalog.sum(amount), 0) FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2"
	"   AND occurred_at >= $3 AND occurred_at < $4"
	"   AND subject_path OPERATOR(pg_catalog.@>) ARRAY[$5]",
	5, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID}
};

/* A rolling window's buckets: sums per bucket of width $4 since $3 */
static CachedQuery bucket_query = {
	"SELECT pg_catalog.date_bin($4, occurred_at, '2000-01-01 00:00:00+00'), pg_catalog.sum(amount)"
	"  FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2 AND occurred_at >= $3"
	" GROUP BY 1",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID}
};

static CachedQuery subject_bucket_query = {
	"SELECT pg_catalog.date_bin($4, occurred_at, '2000-01-01 00:00:00+00'), pg_catalog.sum(amount)"
	"  FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2 AND occurred_at >= $3"
	"   AND subject_path OPERATOR(pg_catalog.@>) ARRAY[$5]"
	" GROUP BY 1",
	5, {TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID, TEXTOID}
};

static CachedQuery key_query = {
	"SELECT 1 FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2 AND idempotency_key = $3",
	3, {TEXTOID, TEXTOID, TEXTOID}
};

/*
 * No conflict target: the only unique index a row with a key can conflict
 * on is the idempotency index, whichever shape the installed SQL gave it
 * (per tenant before 0.5.0, per tenant and feature since), so this library
 * works between its install and ALTER EXTENSION UPDATE.
 */
static CachedQuery insert_query = {
	"INSERT INTO usage_guard.usage_events"
	" (tenant_id, feature_key, amount, occurred_at, kind, idempotency_key, attributes)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7)"
	" ON CONFLICT DO NOTHING",
	7, {TEXTOID, TEXTOID, NUMERICOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID}
};

/* A row charged to a subject (request_consume, since 0.6.0) */
static CachedQuery insert_subject_query = {
	"INSERT INTO usage_guard.usage_events"
	" (tenant_id, feature_key, amount, occurred_at, kind, idempotency_key, attributes,"
	"  subject_id, subject_path)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
	" ON CONFLICT DO NOTHING",
	9, {TEXTOID, TEXTOID, NUMERICOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID,
	TEXTARRAYOID}
};

/*
 * Usage of a tenant's feature in [start, end) in the ledger: everything
 * committed (latest snapshot, whatever the isolation level) plus this
 * transaction's own rows.
 */
Amount
LedgerWindowSum(const char *tenant_id, const char *subject_id, const char *feature_key,
				TimestampTz start, TimestampTz end)
{
	Datum		values[5];
	bool		isnull;
	Datum		d;
	Amount		sum;
	InternalContext ctx;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = TimestampTzGetDatum(start);
	values[3] = TimestampTzGetDatum(end);
	BeginInternal(&ctx, true);
	RequireWholeLedgerVisible(LedgerRelid());
	if (subject_id != NULL && subject_id[0] != '\0')
	{
		values[4] = CStringGetTextDatum(subject_id);
		RunQueryLatest(&subject_sum_query, values, NULL, 1);
	}
	else
		RunQueryLatest(CatalogHasResets() ? &window_sum_query : &window_sum_query_old, values, NULL, 1);
	EndInternal(&ctx);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull || !NumericToAmount(DatumGetNumeric(d), &sum))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("usage of tenant \"%s\", feature \"%s\" cannot be represented",
						tenant_id, feature_key),
				 errdetail("Ledger amounts must have at most %d decimal places.", AMOUNT_SCALE_DIGITS)));
	return sum;
}

/*
 * A rolling window's ledger rows since `since`, summed per bucket of width
 * g (bucket start times in *starts, sums in *sums; palloc'd).  Latest
 * snapshot, own rows included, as LedgerWindowSum.
 */
int
LedgerBucketSums(const char *tenant_id, const char *subject_id, const char *feature_key,
				 TimestampTz since, int64 g, TimestampTz **starts, Amount **sums)
{
	Datum		values[5];
	Interval   *width = palloc0(sizeof(Interval));
	InternalContext ctx;
	int			n;

	width->time = g;
	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = TimestampTzGetDatum(since);
	values[3] = IntervalPGetDatum(width);
	BeginInternal(&ctx, true);
	RequireWholeLedgerVisible(LedgerRelid());
	if (subject_id != NULL && subject_id[0] != '\0')
	{
		values[4] = CStringGetTextDatum(subject_id);
		RunQueryLatest(&subject_bucket_query, values, NULL, 0);
	}
	else
		RunQueryLatest(&bucket_query, values, NULL, 0);
	EndInternal(&ctx);
	n = (int) SPI_processed;
	*starts = palloc(sizeof(TimestampTz) * Max(n, 1));
	*sums = palloc(sizeof(Amount) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		(*starts)[i] = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		if (!NumericToAmount(DatumGetNumeric(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull)),
							 &(*sums)[i]))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("usage of tenant \"%s\", feature \"%s\" cannot be represented",
							tenant_id, feature_key)));
	}
	return n;
}

/* Was this idempotency key already recorded for the tenant's feature (visible to us)? */
bool
IdempotencyKeyExists(const char *tenant_id, const char *feature_key, const char *key)
{
	Datum		values[3];
	InternalContext ctx;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = CStringGetTextDatum(key);
	BeginInternal(&ctx, true);
	RequireWholeLedgerVisible(LedgerRelid());
	RunQueryLatest(&key_query, values, NULL, 1);
	EndInternal(&ctx);
	return SPI_processed > 0;
}

/*
 * The ledger's columns as usage_guard creates them, in order.  The direct
 * insert below writes exactly these; any other shape goes through SPI.
 */
static const struct
{
	const char *name;
	Oid			type;
}			ledger_columns[] = {
	{"tenant_id", TEXTOID},
	{"feature_key", TEXTOID},
	{"occurred_at", TIMESTAMPTZOID},
	{"event_id", INT8OID},
	{"amount", NUMERICOID},
	{"recorded_at", TIMESTAMPTZOID},
	{"kind", TEXTOID},
	{"idempotency_key", TEXTOID},
	{"attributes", JSONBOID},
	{"subject_id", TEXTOID},	/* since 0.6.0 */
	{"subject_path", TEXTARRAYOID},
};

/* Columns before 0.6.0 (a new library before ALTER EXTENSION UPDATE) */
#define LEDGER_COLUMNS_0_5 9

#define COL_TENANT		0
#define COL_FEATURE		1
#define COL_OCCURRED	2
#define COL_EVENT_ID	3
#define COL_AMOUNT		4
#define COL_RECORDED	5
#define COL_KIND		6
#define COL_KEY			7
#define COL_ATTRIBUTES	8
#define COL_SUBJECT		9
#define COL_PATH		10

/* The identity sequence of event_id, for the ledger and cache generation seen */
static Oid	seq_ledger = InvalidOid;
static uint64 seq_generation = 0;
static Oid	seq_id = InvalidOid;

/*
 * May a key-less row be written with the table and index AMs?  Only when
 * the ledger is exactly what usage_guard created: a plain table with its
 * nine columns in order, no CHECK constraint, no rule, no row security, no
 * NOT NULL on idempotency_key, and no INSERT trigger but its own.  Anything
 * an operator adds later (a constraint, a trigger, a policy) sends the
 * table's relcache invalidation, which table_open has processed by now, so
 * this is decided from the current definition on every insert: rules added
 * while a session is open bind its next row.
 */
static bool
DirectInsertAllowed(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trig = rel->trigdesc;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relrowsecurity ||
		rel->rd_rules != NULL || RelationIsDistributed(RelationGetRelid(rel)) ||
		(desc->natts != lengthof(ledger_columns) && desc->natts != LEDGER_COLUMNS_0_5) ||
		(desc->constr != NULL && desc->constr->num_check > 0))
		return false;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attgenerated ||
			att->atttypid != ledger_columns[i].type ||
			strcmp(NameStr(att->attname), ledger_columns[i].name) != 0)
			return false;
	}
	if (TupleDescAttr(desc, COL_KEY)->attnotnull ||
		TupleDescAttr(desc, COL_EVENT_ID)->attidentity != ATTRIBUTE_IDENTITY_BY_DEFAULT)
		return false;
	for (int i = 0; trig != NULL && i < trig->numtriggers; i++)
	{
		if (TRIGGER_FOR_INSERT(trig->triggers[i].tgtype) &&
			strcmp(trig->triggers[i].tgname, "usage_events_count") != 0)
			return false;
	}
	return true;
}

/* The ledger's event_id sequence, looked up again after a catalog change */
static void
KnowSequence(Relation rel)
{
	if (seq_ledger != RelationGetRelid(rel) || seq_generation != CacheGeneration())
	{
		seq_id = UgGetIdentitySequence(rel, COL_EVENT_ID + 1);
		seq_ledger = RelationGetRelid(rel);
		seq_generation = CacheGeneration();
	}
}

/*
 * Insert a key-less ledger row with the table AM and the index AMs, as
 * logical replication's apply does: the executor start-up and shutdown of
 * an INSERT statement is most of the cost of a consume otherwise.  False
 * when the ledger is not of the known shape (the caller uses SPI).  Runs as
 * the ledger's owner; the caller needs no privilege on the table.
 */
static bool
DirectInsert(const char *tenant_id, const char *feature_key, Numeric amount,
			 TimestampTz occurred_at, const char *kind, Datum attributes,
			 const char *subject_id, Datum subject_path)
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;
	InternalContext ctx;

	BeginInternal(&ctx, false);
	rel = table_open(LedgerRelid(), RowExclusiveLock);
	if (!DirectInsertAllowed(rel) ||
		(subject_id != NULL && RelationGetDescr(rel)->natts != lengthof(ledger_columns)))
	{
		table_close(rel, RowExclusiveLock);
		EndInternal(&ctx);
		return false;
	}
	KnowSequence(rel);

	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);

	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, 0, sizeof(bool) * RelationGetDescr(rel)->natts);
	values[COL_TENANT] = CStringGetTextDatum(tenant_id);
	values[COL_FEATURE] = CStringGetTextDatum(feature_key);
	values[COL_OCCURRED] = TimestampTzGetDatum(occurred_at);
	values[COL_EVENT_ID] = Int64GetDatum(nextval_internal(seq_id, false));
	values[COL_AMOUNT] = NumericGetDatum(amount);
	values[COL_RECORDED] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[COL_KIND] = CStringGetTextDatum(kind);
	nulls[COL_KEY] = true;
	values[COL_ATTRIBUTES] = attributes;
	if (RelationGetDescr(rel)->natts > COL_SUBJECT)
	{
		nulls[COL_SUBJECT] = nulls[COL_PATH] = (subject_id == NULL);
		if (subject_id != NULL)
		{
			values[COL_SUBJECT] = CStringGetTextDatum(subject_id);
			values[COL_PATH] = subject_path;
		}
	}
	ExecStoreVirtualTuple(slot);

	table_tuple_insert(rel, slot, GetCurrentCommandId(true), 0, NULL);
	UgExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	EndInternal(&ctx);
	/* the row is visible to the next statement and to our own ledger sums */
	CommandCounterIncrement();
	return true;
}

/*
 * A batch of key-less rows of kind 'record' (usage_record_batch), written
 * as COPY writes: the table AM's multi-insert, LEDGER_BATCH_ROWS rows at a
 * time, then their index entries; one executor state for the whole batch.
 */
#define LEDGER_BATCH_ROWS 1000

struct LedgerBatch
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	BulkInsertState bistate;
	MemoryContext rows;			/* the pending rows' values, reset at each flush */
	Datum		kind;			/* 'record', for every row */
	int			n;
	TupleTableSlot *slots[LEDGER_BATCH_ROWS];
};

/* Start a batch; NULL when the ledger is not of the known shape (use InsertUsageEvent) */
LedgerBatch *
LedgerBatchBegin(void)
{
	LedgerBatch *b;
	Relation	rel;
	InternalContext ctx;

	BeginInternal(&ctx, false);
	rel = table_open(LedgerRelid(), RowExclusiveLock);
	if (!DirectInsertAllowed(rel) || RelationGetDescr(rel)->natts != lengthof(ledger_columns))
	{
		table_close(rel, RowExclusiveLock);
		EndInternal(&ctx);
		return NULL;
	}
	KnowSequence(rel);
	b = palloc0(sizeof(LedgerBatch));
	b->rel = rel;
	b->estate = CreateExecutorState();
	b->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(b->rri, rel, 1, NULL, 0);
	ExecOpenIndices(b->rri, false);
	b->bistate = GetBulkInsertState();
	b->rows = AllocSetContextCreate(CurrentMemoryContext, "usage_guard batch rows",
									ALLOCSET_DEFAULT_SIZES);
	b->kind = CStringGetTextDatum("record");
	EndInternal(&ctx);
	return b;
}

/* Write the pending rows and their index entries, as the ledger's owner */
static void
LedgerBatchFlush(LedgerBatch *b)
{
	InternalContext ctx;

	if (b->n == 0)
		return;
	BeginInternal(&ctx, false);
	table_multi_insert(b->rel, b->slots, b->n, GetCurrentCommandId(true), 0, b->bistate);
	for (int i = 0; i < b->n; i++)
	{
		UgExecInsertIndexTuples(b->rri, b->slots[i], b->estate, false, false, NULL, NIL);
		ExecClearTuple(b->slots[i]);
	}
	EndInternal(&ctx);
	MemoryContextReset(b->rows);
	b->n = 0;
}

/* Add a row (checked and counted by the caller) */
void
LedgerBatchAdd(LedgerBatch *b, const char *tenant_id, const char *feature_key,
			   Numeric amount, TimestampTz occurred_at, Datum attributes)
{
	TupleTableSlot *slot;
	MemoryContext old;

	if (b->slots[b->n] == NULL)
		b->slots[b->n] = MakeSingleTupleTableSlot(RelationGetDescr(b->rel), &TTSOpsVirtual);
	slot = b->slots[b->n];
	ExecClearTuple(slot);
	old = MemoryContextSwitchTo(b->rows);
	memset(slot->tts_isnull, 0, sizeof(bool) * RelationGetDescr(b->rel)->natts);
	slot->tts_values[COL_TENANT] = CStringGetTextDatum(tenant_id);
	slot->tts_values[COL_FEATURE] = CStringGetTextDatum(feature_key);
	slot->tts_values[COL_OCCURRED] = TimestampTzGetDatum(occurred_at);
	slot->tts_values[COL_EVENT_ID] = Int64GetDatum(nextval_internal(seq_id, false));
	slot->tts_values[COL_AMOUNT] = NumericGetDatum(amount);
	slot->tts_values[COL_RECORDED] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	slot->tts_values[COL_KIND] = b->kind;
	slot->tts_isnull[COL_KEY] = true;
	slot->tts_values[COL_ATTRIBUTES] = attributes;
	slot->tts_isnull[COL_SUBJECT] = true;
	slot->tts_isnull[COL_PATH] = true;
	ExecStoreVirtualTuple(slot);
	MemoryContextSwitchTo(old);
	if (++b->n == LEDGER_BATCH_ROWS)
		LedgerBatchFlush(b);
}

/* Write what is pending and close the batch */
void
LedgerBatchEnd(LedgerBatch *b)
{
	LedgerBatchFlush(b);
	ExecCloseIndices(b->rri);
	FreeBulkInsertState(b->bistate);
	for (int i = 0; i < LEDGER_BATCH_ROWS && b->slots[i] != NULL; i++)
		ExecDropSingleTupleTableSlot(b->slots[i]);
	FreeExecutorState(b->estate);
	table_close(b->rel, NoLock);
	MemoryContextDelete(b->rows);
	pfree(b);
	/* the rows are visible to the next statement and to our own ledger sums */
	CommandCounterIncrement();
}

/*
 * Append one ledger row.  Returns false when the idempotency key is already
 * taken (a concurrent holder of the key is waited for by the unique index).
 * The caller has counted the row in the shared counters itself.
 */
bool
InsertUsageEvent(const char *tenant_id, const char *feature_key,
				 Numeric amount, TimestampTz occurred_at, const char *kind,
				 const char *idempotency_key, Datum attributes,
				 const char *subject_id, Datum subject_path)
{
	Datum		values[9];
	char		nulls[9];		/* SPI: ' ' not null, 'n' null */
	InternalContext ctx;

	memset(nulls, ' ', sizeof(nulls));
	if (idempotency_key == NULL &&
		DirectInsert(tenant_id, feature_key, amount, occurred_at, kind, attributes,
					 subject_id, subject_path))
		return true;

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
	if (subject_id != NULL)
	{
		values[7] = CStringGetTextDatum(subject_id);
		values[8] = subject_path;
	}

	BeginInternal(&ctx, true);
	own_insert_depth++;
	PG_TRY();
	{
		RunQuery(subject_id != NULL ? &insert_subject_query : &insert_query, values, nulls,
				 false, 0);
	}
	PG_FINALLY();
	{
		own_insert_depth--;
	}
	PG_END_TRY();
	EndInternal(&ctx);
	return SPI_processed == 1;
}

/*
 * Count a row that is (or is about to be) in the ledger in every live window
 * containing it (see CountWrite).  The key lock in RowExclusiveLock is held
 * until the transaction ends.  Undoable: the insert may turn out to be an
 * idempotent duplicate (UndoLocalWrite).
 */
LocalWrite *
CountLedgerRow(const char *tenant_id, const char *subject_id, const char *feature_key,
			   TimestampTz at, Amount amount, bool undoable)
{
	CounterKey	key;
	uint32		hash;
	LocalWrite *w;
	LWLock	   *lock;
	CounterEntry *entry;

	if (!CountersUsable())
		return NULL;
	MakeCounterKey(&key, LedgerRelid(), tenant_id, subject_id, feature_key);
	hash = CounterKeyHash(&key);
	LockCounterKey(&key, hash, RowExclusiveLock);
	lock = CounterPartitionLock(hash);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = CounterLookup(&key, hash);
	w = CountWrite(entry, &key, hash, at, amount, undoable);
	LWLockRelease(lock);
	return w;
}

/*
 * Attribute number of a column the triggers read.  A bulk load calls this
 * for every column of every row, so the last answer per name is kept and
 * checked with one name comparison (a column dropped or renamed since makes
 * it search again).
 */
#define LEDGER_ATTNUM_CACHE 16

static int
LedgerAttnum(Relation rel, const char *name)
{
	static struct
	{
		const char *name;
		Oid			relid;
		int			attnum;
	}			known[LEDGER_ATTNUM_CACHE];
	TupleDesc	desc = RelationGetDescr(rel);
	int			attnum;
	int			slot = -1;

	for (int i = 0; i < LEDGER_ATTNUM_CACHE && slot < 0; i++)
		if (known[i].name == name || known[i].name == NULL)
			slot = i;
	if (slot >= 0 && known[slot].name == name && known[slot].relid == RelationGetRelid(rel) &&
		known[slot].attnum <= desc->natts &&
		!TupleDescAttr(desc, known[slot].attnum - 1)->attisdropped &&
		strcmp(NameStr(TupleDescAttr(desc, known[slot].attnum - 1)->attname), name) == 0)
		return known[slot].attnum;
	attnum = SPI_fnumber(desc, name);
	if (attnum <= 0)
		elog(ERROR, "usage_guard: usage_events has no column \"%s\"", name);
	if (slot >= 0)
	{
		known[slot].name = name;
		known[slot].relid = RelationGetRelid(rel);
		known[slot].attnum = attnum;
	}
	return attnum;
}

static bool
isfinite_ts(TimestampTz ts)
{
	return !TIMESTAMP_NOT_FINITE(ts);
}

static void
LedgerRowError(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("invalid row for the usage ledger: %s", what),
			 errhint("Prefer usage_guard.usage_record() or usage_consume(); corrections are rows of kind 'adjustment'.")));
}

/* Names of a row written directly (ledger or resets): the functions' limit */
static void
CheckRowNames(const char *tenant_id, const char *feature_key)
{
	if (tenant_id[0] == '\0' || strlen(tenant_id) > UG_NAME_MAX)
		LedgerRowError(psprintf("tenant_id must be 1 to %d bytes", UG_NAME_MAX));
	if (feature_key[0] == '\0' || strlen(feature_key) > UG_NAME_MAX)
		LedgerRowError(psprintf("feature_key must be 1 to %d bytes", UG_NAME_MAX));
}

/* An amount of a row written directly, as an Amount within the API's range */
static Amount
RowAmount(Numeric num)
{
	Amount		amount;

	if (!NumericToAmount(num, &amount) ||
		amount > USAGE_GUARD_MAX_AMOUNT * AMOUNT_ONE || amount < -USAGE_GUARD_MAX_AMOUNT * AMOUNT_ONE)
		LedgerRowError("amount must be between -1e15 and 1e15 with at most 12 decimal places");
	return amount;
}

/*
 * A row written directly must name a known feature (there is no foreign
 * key).  The last feature found is remembered until the catalog's next
 * invalidation: a bulk load names few features over many rows.
 */
static void
RequireRowFeature(const char *tenant_id, const char *feature_key)
{
	static char known_feature[UG_NAME_MAX + 1];
	static uint64 known_generation = 0;
	static Oid	known_ledger = InvalidOid;
	Policy		policy;

	if (known_ledger == LedgerRelid() && known_generation == CacheGeneration() &&
		strcmp(known_feature, feature_key) == 0)
		return;
	GetPolicy(tenant_id, feature_key, &policy);
	if (policy.feature_exists)
	{
		strlcpy(known_feature, feature_key, sizeof(known_feature));
		known_generation = CacheGeneration();
		known_ledger = LedgerRelid();
	}
	if (!policy.feature_exists)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("unknown feature \"%s\"", feature_key),
				 errhint("Features are rows of usage_guard.features.")));
}

/*
 * A row written directly that names subjects (subject_path) counts at each
 * of their levels too, as a request_consume row does.
 */
static void
CountPathRows(Relation rel, HeapTuple tuple, const char *tenant_id, const char *feature_key,
			  TimestampTz at, Amount amount)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), "subject_path");
	bool		isnull;
	Datum		path;
	Datum	   *elems;
	bool	   *elnulls;
	int			n;

	if (attnum <= 0)
		return;
	path = heap_getattr(tuple, attnum, RelationGetDescr(rel), &isnull);
	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(path), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elnulls, &n);
	for (int i = 0; i < n; i++)
	{
		char	   *subject;

		if (elnulls[i])
			LedgerRowError("subject_path must not contain NULL");
		subject = TextDatumGetCString(elems[i]);
		if (subject[0] == '\0' || strlen(subject) > UG_NAME_MAX)
			LedgerRowError(psprintf("subject ids must be 1 to %d bytes", UG_NAME_MAX));
		CountLedgerRow(tenant_id, subject, feature_key, at, amount, false);
	}
}

PG_FUNCTION_INFO_V1(usage_guard_ledger_insert);
/* AFTER INSERT row trigger on usage_events: validate and count other writers' rows */
Datum
usage_guard_ledger_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	char	   *tenant_id;
	char	   *feature_key;
	TimestampTz at;
	Numeric		amount_num;
	Amount		amount;
	char	   *kind;
	Datum		key_datum;
	bool		key_null;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_INSERT(trig->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trig->tg_event) || !TRIGGER_FIRED_AFTER(trig->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("usage_guard_ledger_insert must be an AFTER INSERT FOR EACH ROW trigger")));
	if (own_insert_depth > 0)
		return PointerGetDatum(NULL);

	rel = trig->tg_relation;
	tuple = trig->tg_trigtuple;
	desc = RelationGetDescr(rel);
	tenant_id = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "tenant_id"), desc, &isnull));
	feature_key = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "feature_key"), desc, &isnull));
	at = DatumGetTimestampTz(heap_getattr(tuple, LedgerAttnum(rel, "occurred_at"), desc, &isnull));
	amount_num = DatumGetNumeric(heap_getattr(tuple, LedgerAttnum(rel, "amount"), desc, &isnull));
	kind = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "kind"), desc, &isnull));
	key_datum = heap_getattr(tuple, LedgerAttnum(rel, "idempotency_key"), desc, &key_null);

	/*
	 * The row checks live here rather than in CHECK constraints: those are
	 * re-parsed and planned for every INSERT statement, a large share of
	 * the cost of the hot path, whose rows are validated by the functions.
	 */
	CheckRowNames(tenant_id, feature_key);
	if (strcmp(kind, "consume") != 0 && strcmp(kind, "record") != 0 &&
		strcmp(kind, "adjustment") != 0 && strcmp(kind, "reserve") != 0 &&
		strcmp(kind, "settle") != 0 && strcmp(kind, "release") != 0)
		LedgerRowError("kind must be consume, record, adjustment, reserve, settle or release");
	/* raw size: a long key may be stored compressed or out of line */
	if (!key_null && (toast_raw_datum_size(key_datum) == VARHDRSZ ||
					  toast_raw_datum_size(key_datum) > VARHDRSZ + UG_NAME_MAX))
		LedgerRowError(psprintf("idempotency_key must be NULL or 1 to %d bytes", UG_NAME_MAX));
	amount = RowAmount(amount_num);
	/* settle gives back the part of an estimate not used; release all of it */
	if (amount < 0 && strcmp(kind, "adjustment") != 0 && strcmp(kind, "settle") != 0 &&
		strcmp(kind, "release") != 0)
		LedgerRowError("only rows of kind adjustment, settle or release may have a negative amount");
	if (amount > 0 && strcmp(kind, "release") == 0)
		LedgerRowError("rows of kind release give back: their amount is not positive");
	if (!isfinite_ts(at))
		LedgerRowError("occurred_at must be finite");

	RequireRowFeature(tenant_id, feature_key);

	CountLedgerRow(tenant_id, NULL, feature_key, at, amount, false);
	CountPathRows(rel, tuple, tenant_id, feature_key, at, amount);
	return PointerGetDatum(NULL);
}

/*
 * Count a window reset in the live window it resets (not in the others):
 * like CountLedgerRow, holding the key lock as a writer until the
 * transaction ends, and settled at commit.
 */
static void
CountResetRow(const char *tenant_id, const char *feature_key, TimestampTz start,
			  TimestampTz end, Amount amount)
{
	CounterKey	key;
	uint32		hash;
	LWLock	   *lock;

	if (!CountersUsable())
		return;
	MakeCounterKey(&key, LedgerRelid(), tenant_id, NULL, feature_key);
	hash = CounterKeyHash(&key);
	LockCounterKey(&key, hash, RowExclusiveLock);
	lock = CounterPartitionLock(hash);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	(void) CountScopedWrite(CounterLookup(&key, hash), &key, hash, start, end, amount);
	LWLockRelease(lock);
}

PG_FUNCTION_INFO_V1(usage_guard_reset_insert);
/* AFTER INSERT row trigger on usage_resets: validate and count a window reset */
Datum
usage_guard_reset_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	char	   *tenant_id;
	char	   *feature_key;
	char	   *period;
	TimestampTz start;
	TimestampTz end;
	Amount		amount;
	PeriodKind	kind;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_INSERT(trig->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trig->tg_event) || !TRIGGER_FIRED_AFTER(trig->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("usage_guard_reset_insert must be an AFTER INSERT FOR EACH ROW trigger")));
	rel = trig->tg_relation;
	tuple = trig->tg_trigtuple;
	desc = RelationGetDescr(rel);
	tenant_id = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "tenant_id"), desc, &isnull));
	feature_key = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "feature_key"), desc, &isnull));
	period = TextDatumGetCString(heap_getattr(tuple, LedgerAttnum(rel, "period"), desc, &isnull));
	start = DatumGetTimestampTz(heap_getattr(tuple, LedgerAttnum(rel, "window_start"), desc, &isnull));
	end = DatumGetTimestampTz(heap_getattr(tuple, LedgerAttnum(rel, "window_end"), desc, &isnull));

	CheckRowNames(tenant_id, feature_key);
	if (!PeriodKindFromName(period, &kind))
		LedgerRowError("period must be a period kind");
	/* a calendar window is finite; only a lifetime window is unbounded */
	if (kind == PERIOD_LIFETIME ? (start != DT_NOBEGIN || end != DT_NOEND)
		: (!isfinite_ts(start) || !isfinite_ts(end)))
		LedgerRowError("the window must be finite, or (-infinity, infinity) for lifetime");
	amount = RowAmount(DatumGetNumeric(heap_getattr(tuple, LedgerAttnum(rel, "amount"), desc, &isnull)));

	RequireRowFeature(tenant_id, feature_key);

	CountResetRow(tenant_id, feature_key, start, end, amount);
	return PointerGetDatum(NULL);
}

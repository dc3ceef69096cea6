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

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "query.h"
#include "usage_guard.h"

/* Nonzero while our own functions insert: the trigger leaves those rows alone */
static int	own_insert_depth = 0;

static CachedQuery window_sum_query = {
	"SELECT coalesce(sum(amount), 0) FROM usage_guard.usage_events"
	" WHERE tenant_id = $1 AND feature_key = $2"
	"   AND occurred_at >= $3 AND occurred_at < $4",
	4, {TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
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

/*
 * Usage of a tenant's feature in [start, end) in the ledger: everything
 * committed (latest snapshot, whatever the isolation level) plus this
 * transaction's own rows.
 */
Amount
LedgerWindowSum(const char *tenant_id, const char *feature_key,
				TimestampTz start, TimestampTz end)
{
	Datum		values[4];
	bool		isnull;
	Datum		d;
	Amount		sum;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = TimestampTzGetDatum(start);
	values[3] = TimestampTzGetDatum(end);
	RunQueryLatest(&window_sum_query, values, NULL, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull || !NumericToAmount(DatumGetNumeric(d), &sum))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("usage of tenant \"%s\", feature \"%s\" cannot be represented",
						tenant_id, feature_key),
				 errdetail("Ledger amounts must have at most %d decimal places.", AMOUNT_SCALE_DIGITS)));
	return sum;
}

/* Was this idempotency key already recorded for the tenant (visible to us)? */
bool
IdempotencyKeyExists(const char *tenant_id, const char *key)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(key);
	RunQueryLatest(&key_query, values, NULL, 1);
	return SPI_processed > 0;
}

/* How a key-less ledger row can be written without the executor */
typedef struct LedgerLayout
{
	Oid			relid;			/* the ledger this layout is for */
	bool		direct;			/* false: use SPI (unknown shape, triggers, RLS) */
	Oid			seqid;			/* identity sequence of event_id */
	int			natts;
	AttrNumber	tenant_id,
				feature_key,
				occurred_at,
				event_id,
				amount,
				recorded_at,
				kind,
				idempotency_key,
				attributes;
} LedgerLayout;

static LedgerLayout layout = {InvalidOid};

/*
 * Learn the ledger's layout.  The direct path is used only when the table is
 * exactly what usage_guard created: a plain table with these nine columns,
 * no triggers on INSERT but its own, and no row security; anything else
 * (an operator's trigger, an added column with a default) goes through SPI
 * so that PostgreSQL applies it.
 */
static void
LearnLayout(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trig = rel->trigdesc;
	int			insert_triggers = 0;

	memset(&layout, 0, sizeof(layout));
	layout.relid = RelationGetRelid(rel);
	layout.natts = desc->natts;
	layout.tenant_id = SPI_fnumber(desc, "tenant_id");
	layout.feature_key = SPI_fnumber(desc, "feature_key");
	layout.occurred_at = SPI_fnumber(desc, "occurred_at");
	layout.event_id = SPI_fnumber(desc, "event_id");
	layout.amount = SPI_fnumber(desc, "amount");
	layout.recorded_at = SPI_fnumber(desc, "recorded_at");
	layout.kind = SPI_fnumber(desc, "kind");
	layout.idempotency_key = SPI_fnumber(desc, "idempotency_key");
	layout.attributes = SPI_fnumber(desc, "attributes");

	for (int i = 0; trig != NULL && i < trig->numtriggers; i++)
		if (TRIGGER_FOR_INSERT(trig->triggers[i].tgtype))
			insert_triggers++;

	layout.direct = rel->rd_rel->relkind == RELKIND_RELATION &&
		!rel->rd_rel->relrowsecurity &&
		desc->natts == 9 && (desc->constr == NULL || desc->constr->num_check == 0) &&
		insert_triggers <= 1 &&
		layout.tenant_id > 0 && layout.feature_key > 0 && layout.occurred_at > 0 &&
		layout.event_id > 0 && layout.amount > 0 && layout.recorded_at > 0 &&
		layout.kind > 0 && layout.idempotency_key > 0 && layout.attributes > 0;
	if (layout.direct)
		layout.seqid = getIdentitySequence(layout.relid, layout.event_id, false);
}

/*
 * Insert a key-less ledger row with the table AM and the index AMs, as
 * logical replication's apply does: the executor start-up and shutdown of
 * an INSERT statement is most of the cost of a consume otherwise.  False
 * when the ledger is not of the known shape (the caller uses SPI).
 */
static bool
DirectInsert(const char *tenant_id, const char *feature_key, Numeric amount,
			 TimestampTz occurred_at, const char *kind, Datum attributes)
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;

	rel = table_open(LedgerRelid(), RowExclusiveLock);
	if (layout.relid != RelationGetRelid(rel) || !layout.direct ||
		RelationGetDescr(rel)->natts != layout.natts)
		LearnLayout(rel);
	/* SPI applies (and reports) the table's privileges */
	if (!layout.direct ||
		pg_class_aclcheck(layout.relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
	{
		table_close(rel, RowExclusiveLock);
		return false;
	}

	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);

	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, 0, sizeof(bool) * layout.natts);
	values[layout.tenant_id - 1] = CStringGetTextDatum(tenant_id);
	values[layout.feature_key - 1] = CStringGetTextDatum(feature_key);
	values[layout.occurred_at - 1] = TimestampTzGetDatum(occurred_at);
	values[layout.event_id - 1] = Int64GetDatum(nextval_internal(layout.seqid, false));
	values[layout.amount - 1] = NumericGetDatum(amount);
	values[layout.recorded_at - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[layout.kind - 1] = CStringGetTextDatum(kind);
	nulls[layout.idempotency_key - 1] = true;
	values[layout.attributes - 1] = attributes;
	ExecStoreVirtualTuple(slot);

	table_tuple_insert(rel, slot, GetCurrentCommandId(true), 0, NULL);
	ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	/* the row is visible to the next statement and to our own ledger sums */
	CommandCounterIncrement();
	return true;
}

/*
 * Append one ledger row.  Returns false when the idempotency key is already
 * taken (a concurrent holder of the key is waited for by the unique index).
 * The caller has counted the row in the shared counters itself.
 */
bool
InsertUsageEvent(const char *tenant_id, const char *feature_key,
				 Numeric amount, TimestampTz occurred_at, const char *kind,
				 const char *idempotency_key, Datum attributes)
{
	Datum		values[7];
	char		nulls[7] = "       ";

	if (idempotency_key == NULL &&
		DirectInsert(tenant_id, feature_key, amount, occurred_at, kind, attributes))
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

	own_insert_depth++;
	PG_TRY();
	{
		RunQuery(&insert_query, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		own_insert_depth--;
	}
	PG_END_TRY();
	return SPI_processed == 1;
}

/*
 * Count a row that is (or is about to be) in the ledger in every live window
 * containing it (see CountWrite).  The key lock in RowExclusiveLock is held
 * until the transaction ends.  Undoable: the insert may turn out to be an
 * idempotent duplicate (UndoLocalWrite).
 */
LocalWrite *
CountLedgerRow(const char *tenant_id, const char *feature_key, TimestampTz at, Amount amount,
			   bool undoable)
{
	CounterKey	key;
	uint32		hash;
	LocalWrite *w;
	LWLock	   *lock;
	CounterEntry *entry;

	if (!CountersAvailable())
		return NULL;
	MakeCounterKey(&key, LedgerRelid(), tenant_id, feature_key);
	hash = CounterKeyHash(&key);
	LockCounterKey(&key, hash, RowExclusiveLock);
	lock = CounterPartitionLock(hash);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = CounterLookup(&key, hash);
	w = CountWrite(entry, &key, hash, at, amount, undoable);
	LWLockRelease(lock);
	return w;
}

/* Attribute numbers of the ledger's columns the trigger reads */
static int
LedgerAttnum(Relation rel, const char *name)
{
	int			attnum = SPI_fnumber(RelationGetDescr(rel), name);

	if (attnum <= 0)
		elog(ERROR, "usage_guard: usage_events has no column \"%s\"", name);
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
	Policy		policy;

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
	if (tenant_id[0] == '\0' || strlen(tenant_id) > UG_TENANT_MAX)
		LedgerRowError("tenant_id must be 1 to 255 bytes");
	if (feature_key[0] == '\0' || strlen(feature_key) > UG_FEATURE_MAX)
		LedgerRowError("feature_key must be 1 to 128 bytes");
	if (strcmp(kind, "consume") != 0 && strcmp(kind, "record") != 0 &&
		strcmp(kind, "adjustment") != 0)
		LedgerRowError("kind must be consume, record or adjustment");
	if (!key_null && VARSIZE_ANY_EXHDR(DatumGetPointer(key_datum)) == 0)
		LedgerRowError("idempotency_key must not be empty");
	if (!NumericToAmount(amount_num, &amount) ||
		amount > USAGE_GUARD_MAX_AMOUNT * AMOUNT_ONE || amount < -USAGE_GUARD_MAX_AMOUNT * AMOUNT_ONE)
		LedgerRowError("amount must be between -1e15 and 1e15 with at most 12 decimal places");
	if (amount < 0 && strcmp(kind, "adjustment") != 0)
		LedgerRowError("only rows of kind adjustment may have a negative amount");
	if (!isfinite_ts(at))
		LedgerRowError("occurred_at must be finite");

	GetPolicy(tenant_id, feature_key, &policy);
	if (!policy.feature_exists)
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("unknown feature \"%s\"", feature_key),
				 errhint("Features are rows of usage_guard.features.")));

	CountLedgerRow(tenant_id, feature_key, at, amount, false);
	return PointerGetDatum(NULL);
}

/*
 * api.c
 *		The SQL-callable functions usage_check, usage_consume, usage_enforce
 *		and usage_record: argument checks, then policy, usage and decision.
 *
 * None is STRICT: a NULL argument gets a clear error instead of a silent NULL
 * that an application could mistake for "nothing to enforce".  Every check
 * runs before anything is written, so bad input changes nothing.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "engine.h"
#include "subjects.h"
#include "metrics.h"
#include "usage_guard.h"

typedef enum CallMode
{
	CALL_ALLOWED,				/* usage_check's decision as a boolean */
	CALL_CHECK,
	CALL_CONSUME,
	CALL_ENFORCE
} CallMode;

/* The feature of a policy must exist */
static void
RequireFeature(const Policy *policy)
{
	if (!policy->feature_exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown feature \"%s\"", policy->feature_key),
				 errhint("Features are rows of usage_guard.features.")));
}

/* Does the tenant's subscription grant access (active or trialing)? */
bool
SubscriptionActive(const Policy *policy)
{
	return policy->has_subscription &&
		(strcmp(policy->status, "active") == 0 || strcmp(policy->status, "trialing") == 0);
}

/* The subscription must grant access: else counted and raised (UG003) */
void
RequireActiveSubscription(const Policy *policy)
{
	if (!SubscriptionActive(policy))
	{
		MetricsCountPolicyError(policy->plan_code, !policy->has_subscription);
		RaisePolicyError(policy->tenant_id, policy->feature_key, policy);
	}
}

/* The feature must exist and the subscription grant access */
static void
RequireAccess(const Policy *policy)
{
	RequireFeature(policy);
	RequireActiveSubscription(policy);
}

/*
 * Count the decision and its latency; log a limit hit of a consume.  Checks
 * (no side effect) are counted apart from decisions and limit hits.
 */
static void
Observe(const Decision *d, instr_time started, CallMode mode, bool log_hit)
{
	instr_time	elapsed;

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, started);
	MetricsObserveLatency(elapsed);
	if (mode == CALL_CHECK)
		MetricsCountCheck(d);
	else
		MetricsCountDecision(d, log_hit);
}

/* Columns of usage_guard.usage_decision (14 before 0.6.0) */
#define DECISION_COLUMNS 24

/* The decision as a usage_guard.usage_decision row */
static Datum
DecisionDatum(FunctionCallInfo fcinfo, const Decision *d, Numeric requested)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Datum		values[DECISION_COLUMNS];
	bool		nulls[DECISION_COLUMNS];
	const FeatureLimit *l = d->window;

	if (tupdesc == NULL)
	{
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("function returning record called in context that cannot accept type record")));
		if (tupdesc->natts > DECISION_COLUMNS)
			elog(ERROR, "usage_guard: usage_decision has %d columns, this library knows %d",
				 tupdesc->natts, DECISION_COLUMNS);
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}

	memset(nulls, true, sizeof(nulls));
	values[0] = BoolGetDatum(d->allowed);
	values[1] = CStringGetTextDatum(DecisionKindName(d->kind));
	values[2] = CStringGetTextDatum(d->tenant_id);
	values[3] = CStringGetTextDatum(d->plan_code);
	nulls[0] = nulls[1] = nulls[2] = nulls[3] = false;
	if (d->feature_key)
	{
		values[4] = CStringGetTextDatum(d->feature_key);
		nulls[4] = false;
	}
	if (l)
	{
		values[5] = CStringGetTextDatum(LimitLabel(l));
		nulls[5] = false;
	}
	if (d->has_limit)
	{
		values[6] = CStringGetTextDatum(d->limit_is_hard ? "hard_limit" : "soft_limit");
		values[7] = NumericGetDatum(AmountToNumeric(d->limit_value));
		values[10] = NumericGetDatum(AmountToNumeric(d->remaining));
		nulls[6] = nulls[7] = nulls[10] = false;
	}
	values[8] = NumericGetDatum(AmountToNumeric(d->usage));
	values[9] = NumericGetDatum(requested);
	nulls[8] = nulls[9] = false;
	if (l && l->kind == LIMIT_QUOTA && l->length > 0)
	{
		/* a rolling window: (at - length, at] */
		values[11] = TimestampTzGetDatum(d->at - l->length);
		values[12] = TimestampTzGetDatum(d->at);
		nulls[11] = nulls[12] = false;
	}
	else if (l && l->kind == LIMIT_QUOTA)
	{
		values[11] = TimestampTzGetDatum(l->window_start);
		values[12] = TimestampTzGetDatum(l->window_end);
		nulls[11] = nulls[12] = false;
	}
	values[13] = BoolGetDatum(d->recorded);
	nulls[13] = false;
	/* 0.6.0 */
	values[14] = CStringGetTextDatum(l ? l->level : "tenant");
	nulls[14] = false;
	if (l && l->subject_id)
	{
		values[15] = CStringGetTextDatum(l->subject_id);
		nulls[15] = false;
	}
	values[16] = CStringGetTextDatum(LimitKindName(l ? l->kind : LIMIT_QUOTA));
	nulls[16] = false;
	if (l && l->limits.has_hard)
	{
		values[17] = NumericGetDatum(AmountToNumeric(l->limits.hard));
		nulls[17] = false;
	}
	if (l && l->limits.has_soft)
	{
		values[18] = NumericGetDatum(AmountToNumeric(l->limits.soft));
		nulls[18] = false;
	}
	values[19] = NumericGetDatum(AmountToNumeric(d->usage + (d->allowed && l ? l->requested : 0)));
	nulls[19] = false;
	if (l && !TIMESTAMP_NOT_FINITE(l->reset_at))
	{
		values[20] = TimestampTzGetDatum(l->reset_at);
		nulls[20] = false;
	}
	if (d->has_retry)
	{
		values[21] = DirectFunctionCall1(float8_numeric, Float8GetDatum(ceil(d->retry_after * 1000) / 1000));
		nulls[21] = false;
	}
	if (d->lease_id)
	{
		values[22] = DirectFunctionCall1(uuid_in, CStringGetDatum(d->lease_id));
		nulls[22] = false;
	}
	values[23] = JsonbPGetDatum(DecisionHeaders(d));
	nulls[23] = false;

	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/* A request's limits count nothing: an idempotent retry reports the state */
static void
RequestNothing(EngineRequest *r)
{
	r->amount = 0;
	for (int i = 0; i < r->nlimits; i++)
		r->limits[i].requested = 0;
}

/*
 * A request carrying an idempotency key that is already recorded: a retry.
 * It is allowed, counts nothing and reports the state; NULL when the key
 * is new.  Holds the key's lock until the transaction ends, so a retry
 * arriving while the original is in flight waits for its outcome.
 */
static Decision *
RetriedRequest(EngineRequest *r, const char *key, Amount amount)
{
	bool		duplicate;
	Decision   *d;

	if (key == NULL)
		return NULL;
	LockIdempotencyKey(r->tenant_id, r->feature_key, key);
	SPI_connect();
	duplicate = IdempotencyKeyExists(r->tenant_id, r->feature_key, key);
	SPI_finish();
	if (!duplicate)
		return NULL;
	RequestNothing(r);
	d = EngineCheck(r);
	d->allowed = true;
	d->kind = DECISION_ALLOW;
	d->requested = amount;
	return d;
}

/* A concurrent request took the idempotency key first: this one counts nothing */
static void
UndoRequest(EngineRequest *r)
{
	for (int t = 0; t < r->ntargets; t++)
		if (r->targets[t].write != NULL)
			UndoLocalWrite(r->targets[t].write);
}

/* Count, raise (enforce) or warn (soft limit), and return the decision row */
static Datum
FinishDecision(FunctionCallInfo fcinfo, Decision *d, instr_time started, bool enforce,
			   Numeric amount_num)
{
	Observe(d, started, CALL_CONSUME, true);
	if (enforce && !d->allowed)
		RaiseLimitExceeded(d);
	if (d->recorded && d->kind == DECISION_SOFT_LIMIT)
		WarnSoftLimit(d);
	return DecisionDatum(fcinfo, d, amount_num);
}

/*
 * Shared body of check, consume and enforce: policy from the cache, the
 * tenant's limits at `at`, one decision by the engine, and for consume the
 * ledger row.
 */
static Datum
Decide(FunctionCallInfo fcinfo, CallMode mode)
{
	char	   *tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	char	   *feature_key = RequiredText(fcinfo, 1, "feature_key");
	Numeric		amount_num = RequiredAmount(fcinfo, 2);
	Amount		amount = ToAmount(amount_num);
	char	   *key = NULL;
	Datum		attributes = (Datum) 0;
	TimestampTz at;
	Policy		policy;
	EngineRequest req;			/* on the stack: a palloc this size would be a malloc */
	EngineRequest *r = &req;
	int			t;
	Decision   *d = NULL;
	instr_time	started;

	INSTR_TIME_SET_CURRENT(started);

	if (mode == CALL_CHECK || mode == CALL_ALLOWED)
		at = RequiredTime(fcinfo, 3, "at");
	else
	{
		const char *fname = mode == CALL_CONSUME ? "usage_consume()" : "usage_enforce()";

		key = OptionalText(fcinfo, 3, "idempotency_key");
		attributes = Attributes(fcinfo, 4);
		at = RequiredTime(fcinfo, 5, "at");
		RequireWritable(fname);
		RequireNowUnlessAdmin(at, fname);
	}
	RequireTenantScope(tenant_id, feature_key, amount_num, at, "consume", key, attributes,
					   mode != CALL_CHECK && mode != CALL_ALLOWED);

	GetPolicy(tenant_id, feature_key, &policy);
	RequireAccess(&policy);
	EngineInit(r, tenant_id, policy.plan_code, feature_key, &policy, at, amount);
	t = EngineAddTarget(r, NULL, feature_key, true);
	EngineAddTenantQuotas(r, t, &policy);

	if (mode == CALL_CHECK || mode == CALL_ALLOWED)
	{
		d = EngineCheck(r);
		Observe(d, started, CALL_CHECK, false);
		if (mode == CALL_ALLOWED)
			return BoolGetDatum(d->allowed);
		return DecisionDatum(fcinfo, d, amount_num);
	}

	d = RetriedRequest(r, key, amount);
	if (d != NULL)
	{
		Observe(d, started, mode, false);
		return DecisionDatum(fcinfo, d, amount_num);
	}

	r->undoable = (key != NULL);
	d = EngineConsume(r);
	if (d->allowed)
	{
		SPI_connect();
		d->recorded = InsertUsageEvent(tenant_id, feature_key, amount_num, at, "consume",
									   key, attributes, NULL, (Datum) 0);
		SPI_finish();
		if (!d->recorded)
			UndoRequest(r);
	}
	return FinishDecision(fcinfo, d, started, mode == CALL_ENFORCE, amount_num);
}

PG_FUNCTION_INFO_V1(usage_check);
/* usage_check(tenant_id, feature_key, amount, at): decision, no side effects */
Datum
usage_check(PG_FUNCTION_ARGS)
{
	return Decide(fcinfo, CALL_CHECK);
}

PG_FUNCTION_INFO_V1(usage_allowed);
/*
 * usage_allowed(tenant_id, feature_key, amount, at): usage_check's answer
 * alone, for callers that need nothing else; a scalar costs less to return
 * than a row (docs/architecture.md, "What a decision costs").
 */
Datum
usage_allowed(PG_FUNCTION_ARGS)
{
	return Decide(fcinfo, CALL_ALLOWED);
}

PG_FUNCTION_INFO_V1(usage_consume);
/* usage_consume(...): decision; records the usage when allowed */
Datum
usage_consume(PG_FUNCTION_ARGS)
{
	return Decide(fcinfo, CALL_CONSUME);
}

PG_FUNCTION_INFO_V1(usage_enforce);
/* usage_enforce(...): like usage_consume, raises when blocked */
Datum
usage_enforce(PG_FUNCTION_ARGS)
{
	return Decide(fcinfo, CALL_ENFORCE);
}

/*
 * Count and write one checked row of kind record; false when its
 * idempotency key was already taken (the count is taken back).
 */
static bool
RecordRow(const char *tenant_id, const char *feature_key, Numeric amount_num, Amount amount,
		  TimestampTz occurred_at, const char *key, Datum attributes)
{
	LocalWrite *write = CountLedgerRow(tenant_id, NULL, feature_key, occurred_at, amount,
									   key != NULL);
	bool		inserted;

	SPI_connect();
	inserted = InsertUsageEvent(tenant_id, feature_key, amount_num, occurred_at, "record",
								key, attributes, NULL, (Datum) 0);
	SPI_finish();
	if (!inserted && write != NULL)
		UndoLocalWrite(write);
	return inserted;
}

PG_FUNCTION_INFO_V1(usage_record);
/* usage_record(tenant_id, feature_key, amount, occurred_at, key, attributes): post-paid usage */
Datum
usage_record(PG_FUNCTION_ARGS)
{
	char	   *tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	char	   *feature_key = RequiredText(fcinfo, 1, "feature_key");
	Numeric		amount_num = RequiredAmount(fcinfo, 2);
	Amount		amount = ToAmount(amount_num);
	TimestampTz occurred_at = RequiredTime(fcinfo, 3, "occurred_at");
	char	   *key = OptionalText(fcinfo, 4, "idempotency_key");
	Datum		attributes = Attributes(fcinfo, 5);
	Policy		policy;

	RequireWritable("usage_record()");
	RequireTenantScope(tenant_id, feature_key, amount_num, occurred_at, "record", key,
					   attributes, true);
	GetPolicy(tenant_id, feature_key, &policy);
	RequireFeature(&policy);

	PG_RETURN_BOOL(RecordRow(tenant_id, feature_key, amount_num, amount, occurred_at, key,
							 attributes));
}

/* One argument array of usage_record_batch, deconstructed */
typedef struct BatchColumn
{
	const char *name;
	Datum	   *values;
	bool	   *nulls;
	int			n;
	bool		given;
} BatchColumn;

static void
BatchArray(FunctionCallInfo fcinfo, int argno, const char *name, Oid elemtype, BatchColumn *col)
{
	ArrayType  *a;
	int16		typlen;
	bool		typbyval;
	char		typalign;

	col->name = name;
	col->given = !PG_ARGISNULL(argno);
	col->n = 0;
	if (!col->given)
		return;
	a = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name)));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(a, elemtype, typlen, typbyval, typalign, &col->values, &col->nulls, &col->n);
}

/* Row i of a column that must have a value there */
static Datum
BatchValue(const BatchColumn *col, int i)
{
	if (col->nulls[i])
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s[%d] must not be NULL", col->name, i + 1)));
	return col->values[i];
}

static void
BatchErrorContext(void *arg)
{
	errcontext("usage_record_batch row %d", *(int *) arg + 1);
}

PG_FUNCTION_INFO_V1(usage_record_batch);
/*
 * usage_record_batch(tenant_ids, feature_keys, amounts, occurred_ats,
 * idempotency_keys, attributes): usage_record for every row of parallel
 * arrays, in one call.  Rows without an idempotency key are written as COPY
 * writes (LedgerBatch); the others one by one, so that a key already taken
 * skips its row.  Every row is checked before it is counted; any bad row
 * fails the call and writes nothing.  Returns the rows recorded.
 */
Datum
usage_record_batch(PG_FUNCTION_ARGS)
{
	BatchColumn tenants,
				features,
				amounts,
				times,
				keys,
				attrs;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	Datum		empty = (Datum) 0;
	LedgerBatch *batch = NULL;
	bool		batch_tried = false;
	int64		recorded = 0;
	int			row = 0;
	ErrorContextCallback errctx;
	char		known_feature[UG_NAME_MAX + 1] = "";

	BatchArray(fcinfo, 0, "tenant_ids", TEXTOID, &tenants);
	BatchArray(fcinfo, 1, "feature_keys", TEXTOID, &features);
	BatchArray(fcinfo, 2, "amounts", NUMERICOID, &amounts);
	BatchArray(fcinfo, 3, "occurred_ats", TIMESTAMPTZOID, &times);
	BatchArray(fcinfo, 4, "idempotency_keys", TEXTOID, &keys);
	BatchArray(fcinfo, 5, "attributes", JSONBOID, &attrs);
	if (!tenants.given || !features.given || !amounts.given)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant_ids, feature_keys and amounts must not be NULL")));
	if (features.n != tenants.n || amounts.n != tenants.n ||
		(times.given && times.n != tenants.n) || (keys.given && keys.n != tenants.n) ||
		(attrs.given && attrs.n != tenants.n))
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("the arrays of usage_record_batch must have the same length"),
				 errdetail("tenant_ids has %d elements, feature_keys %d, amounts %d.",
						   tenants.n, features.n, amounts.n),
				 errhint("occurred_ats, idempotency_keys and attributes may be NULL (now(), none, '{}' for every row).")));
	RequireWritable("usage_record_batch()");
	if (tenants.n == 0)
		PG_RETURN_INT64(0);

	errctx.callback = BatchErrorContext;
	errctx.arg = &row;
	errctx.previous = error_context_stack;
	error_context_stack = &errctx;

	for (row = 0; row < tenants.n; row++)
	{
		char	   *tenant_id = CheckedName(TextDatumGetCString(BatchValue(&tenants, row)), "tenant_id");
		char	   *feature_key = CheckedName(TextDatumGetCString(BatchValue(&features, row)), "feature_key");
		Numeric		amount_num = CheckedAmount(DatumGetNumeric(BatchValue(&amounts, row)));
		Amount		amount = ToAmount(amount_num);
		TimestampTz at = times.given ? CheckedTime(DatumGetTimestampTz(BatchValue(&times, row)),
												   "occurred_at") : now;
		char	   *key = keys.given && !keys.nulls[row] ?
			CheckedName(TextDatumGetCString(keys.values[row]), "idempotency_key") : NULL;
		Datum		attributes;

		if (attrs.given && !attrs.nulls[row])
			attributes = CheckedAttributes(DatumGetJsonbP(attrs.values[row]));
		else
		{
			if (empty == (Datum) 0)
				empty = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
			attributes = empty;
		}

		RequireTenantScope(tenant_id, feature_key, amount_num, at, "record", key, attributes, true);
		/* a feature's existence does not change within the call */
		if (strcmp(known_feature, feature_key) != 0)
		{
			Policy		policy;

			GetPolicy(tenant_id, feature_key, &policy);
			RequireFeature(&policy);
			strlcpy(known_feature, feature_key, sizeof(known_feature));
		}

		if (key == NULL)
		{
			if (!batch_tried)
				batch = LedgerBatchBegin();
			batch_tried = true;
			if (batch != NULL)
			{
				(void) CountLedgerRow(tenant_id, NULL, feature_key, at, amount, false);
				LedgerBatchAdd(batch, tenant_id, feature_key, amount_num, at, attributes);
				recorded++;
				continue;
			}
		}
		recorded += RecordRow(tenant_id, feature_key, amount_num, amount, at, key, attributes);
	}
	if (batch != NULL)
		LedgerBatchEnd(batch);
	error_context_stack = errctx.previous;
	PG_RETURN_INT64(recorded);
}

static void
BuildRequest(EngineRequest *r, const SubjectPolicy *sp, bool quotas, bool rates)
{
	BuildFeatureRequest(r, sp, r->feature_key, r->amount, r->policy, quotas, rates, true);
}

typedef enum RequestCall
{
	REQUEST_CHECK,
	REQUEST_CONSUME,
	REQUEST_ENFORCE,
	REQUEST_LEASE,
	REQUEST_THROTTLE
} RequestCall;

/*
 * Body of request_check/consume/enforce and lease_acquire: the subject's
 * chain, every limit of every level, one decision; when allowed, the
 * ledger row (with the chain) and, when asked, the lease.
 */
static Datum
DecideRequest(FunctionCallInfo fcinfo, RequestCall call)
{
	char	   *tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	char	   *subject_id = RequiredText(fcinfo, 1, "subject_id");
	char	   *feature_key = NULL;
	Numeric		amount_num = int64_to_numeric(0);
	Amount		amount = 0;
	char	   *key = NULL;
	Datum		attributes = (Datum) 0;
	int64		ttl = 0;
	bool		lease = false;
	TimestampTz at;
	Policy		policy;
	SubjectPolicy subject;
	SubjectPolicy *sp = &subject;
	EngineRequest req;			/* on the stack: a palloc this size would be a malloc */
	EngineRequest *r = &req;
	Decision   *d;
	instr_time	started;
	bool		write = (call != REQUEST_CHECK);

	INSTR_TIME_SET_CURRENT(started);
	if (call == REQUEST_LEASE)
	{
		lease = LeaseTtl(fcinfo, 2, true, &ttl);
		at = RequiredTime(fcinfo, 3, "at");
	}
	else if (call == REQUEST_THROTTLE)
	{
		feature_key = OptionalText(fcinfo, 2, "feature_key");
		amount_num = RequiredAmount(fcinfo, 3);
		amount = ToAmount(amount_num);
		at = RequiredTime(fcinfo, 4, "at");
	}
	else
	{
		feature_key = RequiredText(fcinfo, 2, "feature_key");
		amount_num = RequiredAmount(fcinfo, 3);
		amount = ToAmount(amount_num);
		if (call == REQUEST_CHECK)
			at = RequiredTime(fcinfo, 4, "at");
		else
		{
			key = OptionalText(fcinfo, 4, "idempotency_key");
			attributes = Attributes(fcinfo, 5);
			lease = LeaseTtl(fcinfo, 6, false, &ttl);
			at = RequiredTime(fcinfo, 7, "at");
		}
	}
	if (write)
	{
		const char *fname = call == REQUEST_LEASE ? "lease_acquire()" :
			call == REQUEST_THROTTLE ? "request_throttle()" :
			call == REQUEST_CONSUME ? "request_consume()" : "request_enforce()";

		RequireWritable(fname);
		RequireNowUnlessAdmin(at, fname);
	}
	RequireTenantScope(tenant_id, feature_key ? feature_key : "", amount_num, at, "consume",
					   key, attributes ? attributes : DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")),
					   write);

	GetPolicy(tenant_id, feature_key ? feature_key : "", &policy);
	if (feature_key && call != REQUEST_THROTTLE)
		RequireAccess(&policy);
	else if (feature_key)
		RequireFeature(&policy);
	if ((!feature_key || call == REQUEST_THROTTLE) && !SubscriptionActive(&policy))
		RaisePolicyError(tenant_id, feature_key, &policy);
	GetSubjectPolicy(tenant_id, subject_id, feature_key, policy.plan_code, sp);
	if (!sp->exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown subject \"%s\" of tenant \"%s\"", subject_id, tenant_id),
				 errhint("Subjects are rows of usage_guard.subjects.")));

	EngineInit(r, tenant_id, policy.plan_code, feature_key, &policy, at, amount);
	r->quotas = (feature_key != NULL && call != REQUEST_THROTTLE);
	BuildRequest(r, sp, feature_key != NULL && call != REQUEST_THROTTLE,
				 call != REQUEST_LEASE);
	if (!lease)
	{
		/* without a lease, concurrency limits are not this call's business */
		int			n = 0;

		for (int i = 0; i < r->nlimits; i++)
			if (r->limits[i].kind != LIMIT_CONCURRENCY)
				r->limits[n++] = r->limits[i];
		r->nlimits = n;
	}
	else
		CountRequestLeases(r, sp);

	if (call == REQUEST_CHECK)
	{
		d = EngineCheck(r);
		Observe(d, started, CALL_CHECK, false);
		return DecisionDatum(fcinfo, d, amount_num);
	}

	d = RetriedRequest(r, key, amount);
	if (d != NULL)
	{
		Observe(d, started, CALL_CONSUME, false);
		return DecisionDatum(fcinfo, d, amount_num);
	}

	r->undoable = (key != NULL);
	d = EngineConsume(r);
	if (d->allowed && feature_key != NULL && call != REQUEST_THROTTLE)
	{
		Datum		path_datum = SubjectPathDatum(sp);

		SPI_connect();
		d->recorded = InsertUsageEvent(tenant_id, feature_key, amount_num, at, "consume",
									   key, attributes, subject_id, path_datum);
		SPI_finish();
		if (!d->recorded)
			UndoRequest(r);
		else
			(void) FireAlerts(tenant_id, r->limits, r->nlimits, at, false);
	}
	if (d->allowed && lease && (feature_key == NULL || d->recorded))
		d->lease_id = InsertLease(tenant_id, sp, at, at + ttl);
	return FinishDecision(fcinfo, d, started, call == REQUEST_ENFORCE, amount_num);
}

PG_FUNCTION_INFO_V1(request_check);
/* request_check(tenant_id, subject_id, feature_key, amount, at) */
Datum
request_check(PG_FUNCTION_ARGS)
{
	return DecideRequest(fcinfo, REQUEST_CHECK);
}

PG_FUNCTION_INFO_V1(request_consume);
/* request_consume(tenant_id, subject_id, feature_key, amount, key, attributes, lease_ttl, at) */
Datum
request_consume(PG_FUNCTION_ARGS)
{
	return DecideRequest(fcinfo, REQUEST_CONSUME);
}

PG_FUNCTION_INFO_V1(request_enforce);
/* request_enforce(...): like request_consume, raises when refused */
Datum
request_enforce(PG_FUNCTION_ARGS)
{
	return DecideRequest(fcinfo, REQUEST_ENFORCE);
}

PG_FUNCTION_INFO_V1(lease_acquire);
/* lease_acquire(tenant_id, subject_id, ttl, at): a slot at every level, or a refusal */
Datum
lease_acquire(PG_FUNCTION_ARGS)
{
	return DecideRequest(fcinfo, REQUEST_LEASE);
}

PG_FUNCTION_INFO_V1(request_throttle);
/* request_throttle(tenant_id, subject_id, feature_key, amount, at): rate limits only */
Datum
request_throttle(PG_FUNCTION_ARGS)
{
	return DecideRequest(fcinfo, REQUEST_THROTTLE);
}

PG_FUNCTION_INFO_V1(lease_release);
/* lease_release(tenant_id, lease_id): true if it was live; idempotent */
Datum
lease_release(PG_FUNCTION_ARGS)
{
	char	   *tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	Datum		lease_id;

	lease_id = RequiredUuid(fcinfo, 1, "lease_id");
	RequireWritable("lease_release()");
	RequireTenantScope(tenant_id, "", int64_to_numeric(0), GetCurrentTransactionStartTimestamp(),
					   "consume", NULL, DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")), true);
	PG_RETURN_BOOL(ReleaseLease(tenant_id, lease_id, GetCurrentTransactionStartTimestamp()));
}

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

#include "access/htup_details.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "engine.h"
#include "metrics.h"
#include "usage_guard.h"

typedef enum CallMode
{
	CALL_CHECK,
	CALL_CONSUME,
	CALL_ENFORCE
} CallMode;

/* A text argument that must be present, non-empty and of sane length */
static char *
RequiredText(FunctionCallInfo fcinfo, int argno, const char *name)
{
	char	   *s;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (s[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name)));
	if (strlen(s) > UG_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", name),
				 errdetail("It has %zu bytes; at most %d are allowed.", strlen(s), UG_NAME_MAX)));
	return s;
}

/* An optional text argument (idempotency key): NULL allowed, empty not */
static char *
OptionalText(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return RequiredText(fcinfo, argno, name);
}

/* An amount: finite, not negative, at most 1e15 */
static Numeric
RequiredAmount(FunctionCallInfo fcinfo, int argno)
{
	Numeric		n;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("amount must not be NULL")));
	n = PG_GETARG_NUMERIC(argno);
	if (numeric_is_nan(n) || numeric_is_inf(n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be a finite number")));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
										  NumericGetDatum(int64_to_numeric(0)))) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must not be negative"),
				 errhint("Corrections are ledger rows of kind 'adjustment'.")));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
										  NumericGetDatum(int64_to_numeric(USAGE_GUARD_MAX_AMOUNT)))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("amount is out of range"),
				 errdetail("An amount must be at most 1e15.")));
	return n;
}

/* A time argument: present and finite */
static TimestampTz
RequiredTime(FunctionCallInfo fcinfo, int argno, const char *name)
{
	TimestampTz ts;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	ts = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_NOT_FINITE(ts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be finite", name)));
	return ts;
}

/* The attributes argument: a JSON object, NULL taken as {} */
static Datum
Attributes(FunctionCallInfo fcinfo, int argno)
{
	Jsonb	   *j;

	if (PG_ARGISNULL(argno))
		return DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	j = PG_GETARG_JSONB_P(argno);
	if (!JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attributes must be a JSON object")));
	return PointerGetDatum(j);
}

/* The amount argument as an Amount (at most 12 decimal places) */
static Amount
ToAmount(Numeric n)
{
	Amount		a;

	if (!NumericToAmount(n, &a))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must have at most %d decimal places", AMOUNT_SCALE_DIGITS)));
	return a;
}

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

/* The feature must exist and the subscription grant access */
static void
RequireAccess(const Policy *policy)
{
	RequireFeature(policy);
	if (!policy->has_subscription ||
		(strcmp(policy->status, "active") != 0 && strcmp(policy->status, "trialing") != 0))
	{
		MetricsCountPolicyError(policy->plan_code, !policy->has_subscription);
		RaisePolicyError(policy->tenant_id, policy->feature_key, policy);
	}
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

/* The decision as a usage_guard.usage_decision row */
static Datum
DecisionDatum(FunctionCallInfo fcinfo, const Decision *d, Numeric requested)
{
	TupleDesc	tupdesc = (TupleDesc) fcinfo->flinfo->fn_extra;
	Datum		values[14];
	bool		nulls[14] = {0};

	if (tupdesc == NULL)
	{
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("function returning record called in context that cannot accept type record")));
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		tupdesc = BlessTupleDesc(CreateTupleDescCopy(tupdesc));
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = tupdesc;
	}

	values[0] = BoolGetDatum(d->allowed);
	values[1] = CStringGetTextDatum(DecisionKindName(d->kind));
	values[2] = CStringGetTextDatum(d->tenant_id);
	values[3] = CStringGetTextDatum(d->plan_code);
	values[4] = CStringGetTextDatum(d->feature_key);
	if (d->window)
		values[5] = CStringGetTextDatum(PeriodKindName(d->window->period));
	else
		nulls[5] = true;
	if (d->has_limit)
	{
		values[6] = CStringGetTextDatum(d->limit_is_hard ? "hard_limit" : "soft_limit");
		values[7] = NumericGetDatum(AmountToNumeric(d->limit_value));
		values[10] = NumericGetDatum(AmountToNumeric(d->remaining));
	}
	else
		nulls[6] = nulls[7] = nulls[10] = true;
	values[8] = NumericGetDatum(AmountToNumeric(d->usage));
	values[9] = NumericGetDatum(requested);
	if (d->window)
	{
		values[11] = TimestampTzGetDatum(d->window->window_start);
		values[12] = TimestampTzGetDatum(d->window->window_end);
	}
	else
		nulls[11] = nulls[12] = true;
	values[13] = BoolGetDatum(d->recorded);

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
	EngineRequest *r;
	int			t;
	Decision   *d = NULL;
	instr_time	started;

	INSTR_TIME_SET_CURRENT(started);

	if (mode == CALL_CHECK)
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
					   mode != CALL_CHECK);

	GetPolicy(tenant_id, feature_key, &policy);
	RequireAccess(&policy);
	r = palloc(sizeof(EngineRequest));
	EngineInit(r, tenant_id, policy.plan_code, feature_key, &policy, at, amount);
	t = EngineAddTarget(r, NULL, feature_key, true);
	EngineAddTenantQuotas(r, t);

	if (mode == CALL_CHECK)
	{
		d = EngineCheck(r);
		Observe(d, started, mode, false);
		return DecisionDatum(fcinfo, d, amount_num);
	}

	if (key != NULL)
	{
		bool		duplicate;

		LockIdempotencyKey(tenant_id, feature_key, key);
		SPI_connect();
		duplicate = IdempotencyKeyExists(tenant_id, feature_key, key);
		SPI_finish();
		if (duplicate)
		{
			/* a retry of a recorded request: report the state, count nothing */
			RequestNothing(r);
			d = EngineCheck(r);
			d->allowed = true;
			d->kind = DECISION_ALLOW;
			d->requested = amount;
			Observe(d, started, mode, false);
			return DecisionDatum(fcinfo, d, amount_num);
		}
	}

	r->undoable = (key != NULL);
	d = EngineConsume(r);
	if (d->allowed)
	{
		SPI_connect();
		d->recorded = InsertUsageEvent(tenant_id, feature_key, amount_num, at, "consume",
									   key, attributes, NULL, (Datum) 0);
		SPI_finish();
		/* a concurrent request took the key first: this one counts nothing */
		if (!d->recorded && r->targets[t].write != NULL)
			UndoLocalWrite(r->targets[t].write);
	}

	Observe(d, started, mode, true);
	if (mode == CALL_ENFORCE && !d->allowed)
		RaiseLimitExceeded(d);
	if (d->recorded && d->kind == DECISION_SOFT_LIMIT)
		WarnSoftLimit(d);

	return DecisionDatum(fcinfo, d, amount_num);
}

PG_FUNCTION_INFO_V1(usage_check);
/* usage_check(tenant_id, feature_key, amount, at): decision, no side effects */
Datum
usage_check(PG_FUNCTION_ARGS)
{
	return Decide(fcinfo, CALL_CHECK);
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
	LocalWrite *write;
	bool		inserted;

	RequireWritable("usage_record()");
	RequireTenantScope(tenant_id, feature_key, amount_num, occurred_at, "record", key,
					   attributes, true);
	GetPolicy(tenant_id, feature_key, &policy);
	RequireFeature(&policy);

	write = CountLedgerRow(tenant_id, NULL, feature_key, occurred_at, amount, key != NULL);
	SPI_connect();
	inserted = InsertUsageEvent(tenant_id, feature_key, amount_num, occurred_at, "record",
								key, attributes, NULL, (Datum) 0);
	SPI_finish();
	if (!inserted && write != NULL)
		UndoLocalWrite(write);

	PG_RETURN_BOOL(inserted);
}

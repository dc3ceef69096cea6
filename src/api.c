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
#include "utils/timestamp.h"

#include "usage_guard.h"

#define MAX_KEY_BYTES 255

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
	if (strlen(s) > MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", name),
				 errdetail("It has %zu bytes; at most %d are allowed.", strlen(s), MAX_KEY_BYTES)));
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

static void
RequireFeature(const char *feature_key)
{
	if (!FeatureExists(feature_key))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown feature \"%s\"", feature_key),
				 errhint("Features are rows of usage_guard.features.")));
}

/* Only an active or trialing subscription grants access */
static Subscription *
RequireSubscription(const char *tenant_id, const char *feature_key)
{
	Subscription *sub = LookupSubscription(tenant_id);

	if (sub == NULL ||
		(strcmp(sub->status, "active") != 0 && strcmp(sub->status, "trialing") != 0))
		RaisePolicyError(tenant_id, feature_key, sub);
	return sub;
}

static bool
AnyLimit(const FeatureLimit *limits, int n)
{
	for (int i = 0; i < n; i++)
		if (limits[i].soft_limit != NULL || limits[i].hard_limit != NULL)
			return true;
	return false;
}

/* The decision as a usage_guard.usage_decision row */
static Datum
DecisionDatum(FunctionCallInfo fcinfo, const Decision *d)
{
	TupleDesc	tupdesc;
	Datum		values[14];
	bool		nulls[14] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	tupdesc = BlessTupleDesc(tupdesc);

	values[0] = BoolGetDatum(d->allowed);
	values[1] = CStringGetTextDatum(DecisionKindName(d->kind));
	values[2] = CStringGetTextDatum(d->tenant_id);
	values[3] = CStringGetTextDatum(d->plan_code);
	values[4] = CStringGetTextDatum(d->feature_key);
	if (d->window)
		values[5] = CStringGetTextDatum(PeriodKindName(d->window->period));
	else
		nulls[5] = true;
	if (d->limit_value)
	{
		values[6] = CStringGetTextDatum(d->limit_is_hard ? "hard_limit" : "soft_limit");
		values[7] = NumericGetDatum(d->limit_value);
	}
	else
		nulls[6] = nulls[7] = true;
	values[8] = NumericGetDatum(d->usage);
	values[9] = NumericGetDatum(d->requested);
	if (d->remaining)
		values[10] = NumericGetDatum(d->remaining);
	else
		nulls[10] = true;
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

/*
 * Shared body of check, consume and enforce.  Consume order: serialization
 * point, idempotency, usage, decision, ledger row (see ledger.c).
 */
static Datum
Decide(FunctionCallInfo fcinfo, CallMode mode)
{
	char	   *tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	char	   *feature_key = RequiredText(fcinfo, 1, "feature_key");
	Numeric		amount = RequiredAmount(fcinfo, 2);
	char	   *key = NULL;
	Datum		attributes = (Datum) 0;
	TimestampTz at;
	Subscription *sub;
	FeatureLimit *limits;
	int			nlimits;
	bool		duplicate = false;
	Decision   *d;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext spi;

	if (mode == CALL_CHECK)
		at = RequiredTime(fcinfo, 3, "at");
	else
	{
		key = OptionalText(fcinfo, 3, "idempotency_key");
		attributes = Attributes(fcinfo, 4);
		at = RequiredTime(fcinfo, 5, "at");
	}

	SPI_connect();
	RequireFeature(feature_key);
	sub = RequireSubscription(tenant_id, feature_key);
	limits = LookupLimits(tenant_id, sub->plan_code, feature_key, at, &nlimits);

	if (mode != CALL_CHECK)
	{
		if (AnyLimit(limits, nlimits))
			LockForConsume(tenant_id, feature_key);
		if (key != NULL && IdempotencyKeyExists(tenant_id, key))
			duplicate = true;
	}

	for (int i = 0; i < nlimits; i++)
	{
		FeatureLimit *w = &limits[i];

		PeriodWindow(w->period, sub, at, &w->window_start, &w->window_end);
		w->usage = WindowUsage(tenant_id, feature_key, w->window_start, w->window_end);
	}

	/* the decision outlives SPI_finish: build it in the caller's context */
	spi = MemoryContextSwitchTo(caller);
	if (duplicate)
	{
		/* a retry of a recorded request: report the state, count nothing */
		d = EvaluateLimits(tenant_id, sub->plan_code, feature_key, limits, nlimits,
						   int64_to_numeric(0));
		d->allowed = true;
		d->kind = DECISION_ALLOW;
		d->requested = amount;
		MemoryContextSwitchTo(spi);
	}
	else
	{
		d = EvaluateLimits(tenant_id, sub->plan_code, feature_key, limits, nlimits, amount);
		MemoryContextSwitchTo(spi);
		if (mode != CALL_CHECK && d->allowed)
			d->recorded = InsertUsageEvent(tenant_id, feature_key, amount, at, "consume",
										   key, attributes);
	}

	SPI_finish();

	if (mode == CALL_ENFORCE && !d->allowed)
		RaiseLimitExceeded(d);
	if (mode != CALL_CHECK && d->recorded && d->kind == DECISION_SOFT_LIMIT)
		WarnSoftLimit(d);

	return DecisionDatum(fcinfo, d);
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
	Numeric		amount = RequiredAmount(fcinfo, 2);
	TimestampTz occurred_at = RequiredTime(fcinfo, 3, "occurred_at");
	char	   *key = OptionalText(fcinfo, 4, "idempotency_key");
	Datum		attributes = Attributes(fcinfo, 5);
	bool		inserted;

	SPI_connect();
	RequireFeature(feature_key);
	inserted = InsertUsageEvent(tenant_id, feature_key, amount, occurred_at, "record",
								key, attributes);
	SPI_finish();

	PG_RETURN_BOOL(inserted);
}

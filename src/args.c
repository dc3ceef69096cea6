/*
 * args.c
 *		Checks of the arguments every SQL-callable function shares: names,
 *		amounts, times, attributes and TTLs.  None of usage_guard's
 *		functions is STRICT: a NULL gets a clear error here instead of a
 *		silent NULL an application could mistake for "nothing to enforce".
 */
#include "postgres.h"

#include "common/int.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "usage_guard.h"

/* A text argument that must be present, non-empty and of sane length */
/* A name's checks (non-empty, at most UG_NAME_MAX bytes); returns it */
char *
CheckedName(char *s, const char *name)
{
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

char *
RequiredText(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return CheckedName(text_to_cstring(PG_GETARG_TEXT_PP(argno)), name);
}

char *
OptionalText(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		return NULL;
	return RequiredText(fcinfo, argno, name);
}

/* An amount: finite, not negative, at most 1e15 */
/* An amount's checks (finite, 0 to 1e15); returns it */
Numeric
CheckedAmount(Numeric n)
{
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

Numeric
RequiredAmount(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("amount must not be NULL")));
	return CheckedAmount(PG_GETARG_NUMERIC(argno));
}

Datum
RequiredUuid(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return PG_GETARG_DATUM(argno);
}

/* A time argument: present and finite */
/* A time's check (finite); returns it */
TimestampTz
CheckedTime(TimestampTz ts, const char *name)
{
	if (TIMESTAMP_NOT_FINITE(ts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be finite", name)));
	return ts;
}

TimestampTz
RequiredTime(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return CheckedTime(PG_GETARG_TIMESTAMPTZ(argno), name);
}

/* Attributes must be a JSON object; returns it as a Datum */
Datum
CheckedAttributes(Jsonb *j)
{
	if (!JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attributes must be a JSON object")));
	return PointerGetDatum(j);
}

Datum
Attributes(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		return DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	return CheckedAttributes(PG_GETARG_JSONB_P(argno));
}

Amount
ToAmount(Numeric n)
{
	Amount		a;

	if (!NumericToAmount(n, &a))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must have at most %d decimal places", AMOUNT_SCALE_DIGITS)));
	return a;
}

/* An optional interval argument in [1 second, 1 day]: a lease's TTL */
bool
LeaseTtl(FunctionCallInfo fcinfo, int argno, bool required, int64 *usecs)
{
	Interval   *iv;
	int64		total;

	if (PG_ARGISNULL(argno))
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("ttl must not be NULL")));
		return false;
	}
	iv = PG_GETARG_INTERVAL_P(argno);
	total = iv->time;
	if (iv->month != 0 || iv->day < 0 || iv->day > 1 ||
		pg_add_s64_overflow(total, (int64) iv->day * USECS_PER_DAY, &total) ||
		total < USECS_PER_SEC || total > USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a lease's ttl must be between 1 second and 1 day"),
				 errhint("A lease frees itself after its ttl; release it earlier with lease_release().")));
	*usecs = total;
	return true;
}


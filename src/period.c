/*
 * period.c
 *		Limit windows: UTC calendar windows (hour, day, week, month), the
 *		billing period that rolls forward monthly from a subscription's anchor,
 *		and the lifetime window that never ends.
 *
 * Every window is half-open, [start, end).  TimestampTz is stored as UTC
 * microseconds, so calendar arithmetic on its broken-down form without a
 * time zone is calendar arithmetic in UTC, whatever the session's TimeZone.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "usage_guard.h"

static const char *const period_names[] = {
	[PERIOD_HOUR] = "hour",
	[PERIOD_DAY] = "day",
	[PERIOD_WEEK] = "week",
	[PERIOD_MONTH] = "month",
	[PERIOD_BILLING] = "billing_period",
	[PERIOD_LIFETIME] = "lifetime",
};

/* PostgreSQL's epoch, 2000-01-01, was a Saturday: Monday is two days later */
#define MONDAY_OFFSET	(2 * USECS_PER_DAY)

/* Name of a period kind as stored in the catalog */
const char *
PeriodKindName(PeriodKind kind)
{
	return period_names[kind];
}

/* Parse a catalog period name */
bool
PeriodKindFromName(const char *name, PeriodKind *kind)
{
	for (int i = 0; i < PERIOD_KINDS; i++)
	{
		if (strcmp(name, period_names[i]) == 0)
		{
			*kind = (PeriodKind) i;
			return true;
		}
	}
	return false;
}

/* Break a timestamp into UTC fields */
static void
ToTm(TimestampTz ts, struct pg_tm *tm, fsec_t *fsec)
{
	if (timestamp2tm(ts, NULL, tm, fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
}

/* Build a timestamp from UTC fields */
static TimestampTz
FromTm(struct pg_tm *tm, fsec_t fsec)
{
	Timestamp	result;

	if (tm2timestamp(tm, fsec, NULL, &result) != 0 || !IS_VALID_TIMESTAMP(result))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return result;
}

/* Round down to a multiple of unit after shifting by offset (floor, not truncation) */
static TimestampTz
FloorTo(TimestampTz ts, int64 unit, int64 offset)
{
	int64		shifted = ts - offset;
	int64		q = shifted / unit;

	if (shifted % unit < 0)
		q--;
	return q * unit + offset;
}

/* Whole calendar months from a to b by their year and month fields */
static int
MonthsBetween(TimestampTz a, TimestampTz b)
{
	struct pg_tm atm,
				btm;
	fsec_t		fsec;

	ToTm(a, &atm, &fsec);
	ToTm(b, &btm, &fsec);
	return (btm.tm_year - atm.tm_year) * 12 + (btm.tm_mon - atm.tm_mon);
}

/*
 * Add months the way PostgreSQL's interval arithmetic does: the day of month
 * is clamped to the target month's length (Jan 31 + 1 month = Feb 28/29).
 * Always computed from the anchor, so Jan 31 + 2 months is Mar 31 again.
 */
static TimestampTz
AddMonths(TimestampTz ts, int months)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			total;

	ToTm(ts, &tm, &fsec);
	total = tm.tm_year * 12 + (tm.tm_mon - 1) + months;
	tm.tm_year = total / 12;
	tm.tm_mon = total % 12 + 1;
	if (tm.tm_mon <= 0)
	{
		tm.tm_mon += 12;
		tm.tm_year--;
	}
	if (tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1])
		tm.tm_mday = day_tab[isleap(tm.tm_year)][tm.tm_mon - 1];
	return FromTm(&tm, fsec);
}

/* [anchor + k months, anchor + (k+1) months) containing at, for any integer k */
static void
MonthlyWindow(TimestampTz anchor, TimestampTz at, TimestampTz *start, TimestampTz *end)
{
	int			k = MonthsBetween(anchor, at);

	while (AddMonths(anchor, k) > at)
		k--;
	while (AddMonths(anchor, k + 1) <= at)
		k++;
	*start = AddMonths(anchor, k);
	*end = AddMonths(anchor, k + 1);
}

/*
 * The billing window containing at.  The first period is [anchor, first_end)
 * (first_end DT_NOEND: one month).  Periods roll forward monthly after it:
 * from the anchor when the first period was whole months (so a Jan 31
 * anchor gives Feb 28, then Mar 31), else from first_end (a 14-day trial
 * is followed by months starting where the trial ended).  Months are always
 * added to the anchor, never chained, so clamped days do not drift.
 */
void
BillingWindow(TimestampTz anchor, TimestampTz first_end, TimestampTz at,
			  TimestampTz *start, TimestampTz *end)
{
	if (first_end != DT_NOEND && at >= anchor && at < first_end)
	{
		*start = anchor;
		*end = first_end;
		return;
	}
	if (first_end != DT_NOEND && at >= first_end &&
		AddMonths(anchor, MonthsBetween(anchor, first_end)) != first_end)
		anchor = first_end;
	MonthlyWindow(anchor, at, start, end);
}

/* The window of the given kind containing at */
void
PeriodWindow(PeriodKind kind, const Policy *policy, TimestampTz at,
			 TimestampTz *start, TimestampTz *end)
{
	struct pg_tm tm;
	fsec_t		fsec;

	switch (kind)
	{
		case PERIOD_HOUR:
			*start = FloorTo(at, USECS_PER_HOUR, 0);
			*end = *start + USECS_PER_HOUR;
			break;
		case PERIOD_DAY:
			*start = FloorTo(at, USECS_PER_DAY, 0);
			*end = *start + USECS_PER_DAY;
			break;
		case PERIOD_WEEK:
			*start = FloorTo(at, 7 * USECS_PER_DAY, MONDAY_OFFSET);
			*end = *start + 7 * USECS_PER_DAY;
			break;
		case PERIOD_MONTH:
			ToTm(at, &tm, &fsec);
			tm.tm_mday = 1;
			tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
			*start = FromTm(&tm, 0);
			*end = AddMonths(*start, 1);
			break;
		case PERIOD_BILLING:
			BillingWindow(policy->period_start, policy->period_end, at, start, end);
			break;
		case PERIOD_LIFETIME:
			/* usage goes down only by adjustments (a deleted file, say) */
			*start = DT_NOBEGIN;
			*end = DT_NOEND;
			break;
		case PERIOD_KINDS:
			elog(ERROR, "invalid period kind");
	}
}

PG_FUNCTION_INFO_V1(usage_guard_window_of);
/* usage_guard.window_of(period, at, period_start, period_end): the window containing at */
Datum
usage_guard_window_of(PG_FUNCTION_ARGS)
{
	PeriodKind	kind;
	Policy		policy;
	TimestampTz at;
	TimestampTz start;
	TimestampTz end;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {0};
	char	   *name;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("period and at must not be NULL")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PeriodKindFromName(name, &kind))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown period \"%s\"", name),
				 errhint("Periods are hour, day, week, month, billing_period and lifetime.")));
	at = PG_GETARG_TIMESTAMPTZ(1);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be finite")));
	memset(&policy, 0, sizeof(policy));
	if (kind == PERIOD_BILLING)
	{
		if (PG_ARGISNULL(2) || TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(2)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("billing_period needs a finite period_start")));
		policy.period_start = PG_GETARG_TIMESTAMPTZ(2);
		policy.period_end = PG_ARGISNULL(3) ? DT_NOEND : PG_GETARG_TIMESTAMPTZ(3);
		if (policy.period_end != DT_NOEND && policy.period_end <= policy.period_start)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("period_end must be after period_start")));
	}
	PeriodWindow(kind, &policy, at, &start, &end);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = TimestampTzGetDatum(start);
	values[1] = TimestampTzGetDatum(end);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

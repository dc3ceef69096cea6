/*
 * policy.c
 *		What a tenant is entitled to: its subscription and the effective
 *		limits of a feature (plan limits, replaced or extended per period by
 *		unexpired tenant overrides).  Read-only; callers are connected to SPI.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "query.h"
#include "usage_guard.h"

static CachedQuery feature_query = {
	"SELECT 1 FROM usage_guard.features WHERE feature_key = $1",
	1, {TEXTOID}
};

static CachedQuery subscription_query = {
	"SELECT plan_code, status, current_period_start, current_period_end"
	"  FROM usage_guard.tenant_subscriptions WHERE tenant_id = $1",
	1, {TEXTOID}
};

static CachedQuery limits_query = {
	"SELECT o.period::text, o.soft_limit::numeric, o.hard_limit::numeric"
	"  FROM usage_guard.tenant_overrides o"
	" WHERE o.tenant_id = $1 AND o.feature_key = $2"
	"   AND (o.expires_at IS NULL OR o.expires_at > $4)"
	" UNION ALL "
	"SELECT p.period::text, p.soft_limit::numeric, p.hard_limit::numeric"
	"  FROM usage_guard.plan_features p"
	" WHERE p.plan_code = $3 AND p.feature_key = $2"
	"   AND NOT EXISTS (SELECT 1 FROM usage_guard.tenant_overrides o"
	"                    WHERE o.tenant_id = $1 AND o.feature_key = $2"
	"                      AND o.period = p.period"
	"                      AND (o.expires_at IS NULL OR o.expires_at > $4))",
	4, {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

/* Is feature_key a row of usage_guard.features? */
bool
FeatureExists(const char *feature_key)
{
	Datum		values[1] = {CStringGetTextDatum(feature_key)};

	RunQuery(&feature_query, values, NULL, true, 1);
	return SPI_processed > 0;
}

/* The tenant's subscription, or NULL when it has none */
Subscription *
LookupSubscription(const char *tenant_id)
{
	Datum		values[1] = {CStringGetTextDatum(tenant_id)};
	Subscription *sub;
	bool		isnull;
	Datum		d;

	RunQuery(&subscription_query, values, NULL, true, 1);
	if (SPI_processed == 0)
		return NULL;

	sub = SPI_palloc(sizeof(Subscription));
	sub->plan_code = ResultText(0, 1, &isnull);
	sub->status = ResultText(0, 2, &isnull);
	sub->period_start = DatumGetTimestampTz(ResultDatum(0, 3, &isnull));
	d = ResultDatum(0, 4, &isnull);
	sub->period_end = isnull ? DT_NOEND : DatumGetTimestampTz(d);
	return sub;
}

/* Order limits by window kind so evaluation and lock order are stable */
static int
CompareLimits(const void *a, const void *b)
{
	return (int) ((const FeatureLimit *) a)->period - (int) ((const FeatureLimit *) b)->period;
}

/*
 * The effective limits of feature_key for the tenant at the given instant,
 * one per window kind.  An empty result means the plan does not include the
 * feature at all.
 */
FeatureLimit *
LookupLimits(const char *tenant_id, const char *plan_code,
			 const char *feature_key, TimestampTz at, int *nlimits)
{
	Datum		values[4];
	FeatureLimit *limits;
	uint64		n;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = CStringGetTextDatum(plan_code);
	values[3] = TimestampTzGetDatum(at);
	RunQuery(&limits_query, values, NULL, true, 0);

	n = SPI_processed;
	*nlimits = (int) n;
	if (n == 0)
		return NULL;

	limits = SPI_palloc(sizeof(FeatureLimit) * n);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		char	   *period = ResultText(i, 1, &isnull);
		Datum		d;

		if (!PeriodKindFromName(period, &limits[i].period))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("usage_guard: unknown period \"%s\" in the catalog", period)));
		d = ResultDatum(i, 2, &isnull);
		limits[i].soft_limit = isnull ? NULL : DatumGetNumeric(d);
		d = ResultDatum(i, 3, &isnull);
		limits[i].hard_limit = isnull ? NULL : DatumGetNumeric(d);
		limits[i].usage = NULL;
	}
	qsort(limits, n, sizeof(FeatureLimit), CompareLimits);
	return limits;
}

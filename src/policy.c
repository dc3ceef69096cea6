/*
 * policy.c
 *		Reads what a tenant is entitled to from the catalog: whether the
 *		feature exists, the subscription, the plan's limits and the tenant's
 *		overrides.  Called by the cache (cache.c) on a miss; read-only.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "utils/timestamp.h"

#include "query.h"
#include "usage_guard.h"

static CachedQuery feature_query = {
	"SELECT 1 FROM usage_guard.features WHERE feature_key = $1",
	1, {TEXTOID}
};

/*
 * The subscription, else the default plan (plans.is_default): a tenant
 * without a subscription row is decided by it, as if active, with calendar
 * months as billing periods (anchor 2000-01-01 UTC).  Column 5 is the
 * plan's unlimited_by_default.
 */
static CachedQuery subscription_query = {
	"SELECT s.plan_code, s.status, s.current_period_start, s.current_period_end,"
	"       p.unlimited_by_default"
	"  FROM usage_guard.tenant_subscriptions s"
	"  JOIN usage_guard.plans p ON p.plan_code = s.plan_code"
	" WHERE s.tenant_id = $1"
	" UNION ALL "
	"SELECT p.plan_code, 'active', '2000-01-01 00:00:00+00'::pg_catalog.timestamptz, NULL,"
	"       p.unlimited_by_default"
	"  FROM usage_guard.plans p"
	" WHERE p.is_default"
	"   AND NOT EXISTS (SELECT 1 FROM usage_guard.tenant_subscriptions s WHERE s.tenant_id = $1)",
	1, {TEXTOID}
};

/* The same against a catalog from before 0.5.0 (library updated, SQL not yet) */
static CachedQuery subscription_query_old = {
	"SELECT plan_code, status, current_period_start, current_period_end, false"
	"  FROM usage_guard.tenant_subscriptions WHERE tenant_id = $1",
	1, {TEXTOID}
};

static CachedQuery plan_limits_query = {
	"SELECT period::text, soft_limit::numeric, hard_limit::numeric"
	"  FROM usage_guard.plan_features WHERE plan_code = $1 AND feature_key = $2",
	2, {TEXTOID, TEXTOID}
};

static CachedQuery override_query = {
	"SELECT period::text, soft_limit::numeric, hard_limit::numeric, expires_at"
	"  FROM usage_guard.tenant_overrides WHERE tenant_id = $1 AND feature_key = $2",
	2, {TEXTOID, TEXTOID}
};

/* A limit column of the current SPI row as an Amount */
static bool
LimitColumn(int row, int col, Amount *out)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		return false;
	if (!NumericToAmount(DatumGetNumeric(d), out))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("usage_guard: a limit has more than %d decimal places", AMOUNT_SCALE_DIGITS)));
	return true;
}

/* Read the limit rows of the current SPI result into pairs by period kind */
static uint8
ReadLimitRows(LimitPair *pairs, TimestampTz *expires)
{
	uint8		mask = 0;

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		PeriodKind	kind;
		LimitPair  *p;

		if (name == NULL || !PeriodKindFromName(name, &kind))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("usage_guard: unknown period \"%s\" in the catalog", name ? name : "")));
		p = &pairs[kind];
		p->has_soft = LimitColumn(i, 2, &p->soft);
		p->has_hard = LimitColumn(i, 3, &p->hard);
		if (expires != NULL)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4, &isnull);

			expires[kind] = isnull ? DT_NOEND : DatumGetTimestampTz(d);
		}
		mask |= (uint8) (1 << kind);
	}
	return mask;
}

/* Fill a policy from the catalog */
void
LoadPolicy(const char *tenant_id, const char *feature_key, Policy *policy)
{
	Datum		values[2];

	InternalContext ctx;

	memset(policy, 0, sizeof(Policy));
	strlcpy(policy->tenant_id, tenant_id, sizeof(policy->tenant_id));
	strlcpy(policy->feature_key, feature_key, sizeof(policy->feature_key));

	BeginInternal(&ctx, true);
	SPI_connect();
	values[0] = CStringGetTextDatum(feature_key);
	RunQuery(&feature_query, values, NULL, true, 1);
	policy->feature_exists = SPI_processed > 0;

	values[0] = CStringGetTextDatum(tenant_id);
	RunQuery(CatalogHasPlanDefaults() ? &subscription_query : &subscription_query_old,
			 values, NULL, true, 1);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		unlimited;
		Datum		d;
		char	   *plan = SPI_getvalue(tup, desc, 1);

		if (strlen(plan) > UG_NAME_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("usage_guard: plan code of tenant \"%s\" is longer than %d bytes",
							tenant_id, UG_NAME_MAX)));
		policy->has_subscription = true;
		strlcpy(policy->plan_code, plan, sizeof(policy->plan_code));
		strlcpy(policy->status, SPI_getvalue(tup, desc, 2), sizeof(policy->status));
		policy->period_start = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
		d = SPI_getbinval(tup, desc, 4, &isnull);
		policy->period_end = isnull ? DT_NOEND : DatumGetTimestampTz(d);

		unlimited = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)) && !isnull;

		values[0] = CStringGetTextDatum(policy->plan_code);
		values[1] = CStringGetTextDatum(feature_key);
		RunQuery(&plan_limits_query, values, NULL, true, 0);
		policy->plan_mask = ReadLimitRows(policy->plan_limits, NULL);

		/*
		 * A plan that makes every feature unlimited unless it limits it
		 * (seed 004's enterprise tier): an unlisted feature gets an
		 * unlimited billing-period window instead of "not included", so a
		 * feature added later is not refused.
		 */
		if (policy->plan_mask == 0 && unlimited && policy->feature_exists)
			policy->plan_mask = (uint8) (1 << PERIOD_BILLING);
	}

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	RunQuery(&override_query, values, NULL, true, 0);
	policy->override_mask = ReadLimitRows(policy->override_limits, policy->override_expires);
	SPI_finish();
	EndInternal(&ctx);
}

/* OID of a relation of schema usage_guard, InvalidOid when absent */
Oid
UsageGuardRelid(const char *relname)
{
	Oid			nsp = get_namespace_oid("usage_guard", true);

	return OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;
}

/* Owner of the ledger table, and whether it has row-level security enabled */
void
LookupLedger(Oid ledger, Oid *owner, bool *rowsecurity)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(ledger));

	*owner = InvalidOid;
	*rowsecurity = false;
	if (!HeapTupleIsValid(tup))
		return;
	*owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	*rowsecurity = ((Form_pg_class) GETSTRUCT(tup))->relrowsecurity;
	ReleaseSysCache(tup);
}

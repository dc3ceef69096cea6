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

static CachedQuery overrides_exist_query = {
	"SELECT 1 FROM usage_guard.tenant_overrides WHERE tenant_id = $1 LIMIT 1",
	1, {TEXTOID}
};

/*
 * Run a catalog read: with the transaction's snapshot (the per-backend
 * cache, which sees the transaction's own changes), or with the latest one
 * (the shared cache: what every backend is to see from now on).
 */
static void
CatalogRead(CachedQuery *q, Datum *values, bool latest, long count)
{
	if (latest)
		RunQueryLatest(q, values, NULL, count);
	else
		RunQuery(q, values, NULL, true, count);
}

/* Does the feature exist?  (SPI connected) */
static bool
ReadFeatureExists(const char *feature_key, bool latest)
{
	Datum		values[1];

	values[0] = CStringGetTextDatum(feature_key);
	CatalogRead(&feature_query, values, latest, 1);
	return SPI_processed > 0;
}

/*
 * The subscription (or the default plan) into policy; *unlimited is the
 * plan's unlimited_by_default.  (SPI connected)
 */
static void
ReadSubscription(const char *tenant_id, Policy *policy, bool *unlimited, bool latest)
{
	Datum		values[1];

	*unlimited = false;
	values[0] = CStringGetTextDatum(tenant_id);
	CatalogRead(CatalogHasPlanDefaults() ? &subscription_query : &subscription_query_old,
				values, latest, 1);
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
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
		*unlimited = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)) && !isnull;
	}
}

/* The plan's limits of a feature into policy (SPI connected) */
static void
ReadPlanLimits(const char *plan_code, const char *feature_key, Policy *policy, bool latest)
{
	Datum		values[2];

	values[0] = CStringGetTextDatum(plan_code);
	values[1] = CStringGetTextDatum(feature_key);
	CatalogRead(&plan_limits_query, values, latest, 0);
	policy->plan_mask = ReadLimitRows(policy->plan_limits, NULL);
}

/* An empty policy of a tenant's feature */
void
InitPolicy(Policy *policy, const char *tenant_id, const char *feature_key)
{
	memset(policy, 0, sizeof(Policy));
	strlcpy(policy->tenant_id, tenant_id, sizeof(policy->tenant_id));
	strlcpy(policy->feature_key, feature_key, sizeof(policy->feature_key));
}

/* Fill a policy from the catalog, as the current transaction sees it */
void
LoadPolicy(const char *tenant_id, const char *feature_key, Policy *policy)
{
	Datum		values[2];
	bool		unlimited;
	InternalContext ctx;

	InitPolicy(policy, tenant_id, feature_key);
	BeginInternal(&ctx, true);
	SPI_connect();
	policy->feature_exists = ReadFeatureExists(feature_key, false);
	ReadSubscription(tenant_id, policy, &unlimited, false);
	if (policy->has_subscription)
	{
		ReadPlanLimits(policy->plan_code, feature_key, policy, false);

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

/*
 * The tenant's part of a policy for the shared cache (shared_policy.c), as
 * committed now: subscription, the plan's unlimited_by_default, and whether
 * the tenant has overrides at all.
 */
void
LoadTenantPolicy(const char *tenant_id, Policy *policy, bool *unlimited, bool *has_overrides)
{
	Datum		values[1];
	InternalContext ctx;

	InitPolicy(policy, tenant_id, "");
	BeginInternal(&ctx, true);
	SPI_connect();
	ReadSubscription(tenant_id, policy, unlimited, true);
	values[0] = CStringGetTextDatum(tenant_id);
	CatalogRead(&overrides_exist_query, values, true, 1);
	*has_overrides = SPI_processed > 0;
	SPI_finish();
	EndInternal(&ctx);
}

/*
 * The plan's part for a feature for the shared cache, as committed now:
 * whether the feature exists and the plan's limits (plan_code NULL: none).
 */
void
LoadPlanFeature(const char *plan_code, const char *feature_key, Policy *policy)
{
	InternalContext ctx;

	InitPolicy(policy, "", feature_key);
	BeginInternal(&ctx, true);
	SPI_connect();
	policy->feature_exists = ReadFeatureExists(feature_key, true);
	if (plan_code != NULL)
		ReadPlanLimits(plan_code, feature_key, policy, true);
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

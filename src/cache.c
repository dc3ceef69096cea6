/*
 * cache.c
 *		Per-backend cache of policies (what a tenant's feature is allowed),
 *		so that the hot path reads no table when nothing has changed.
 *
 * Statement triggers on the catalog tables call CacheInvalidateRelcacheByRelid
 * for the changed table; PostgreSQL delivers that to every backend at its
 * next transaction start (and to our own at the next command).  The callback
 * only marks the cache stale; it is emptied at the next lookup, outside any
 * caller's use of it.  A load that overlapped an invalidation is redone.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_trigger.h"
#include "common/hashfn.h"
#include "commands/trigger.h"
#include "utils/fmgroids.h"
#include "fmgr.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "usage_guard.h"

/* Beyond this many entries the cache starts over (bounds backend memory) */
#define POLICY_CACHE_MAX 100000

#define POLICY_KEY_SIZE offsetof(Policy, feature_exists)

static const char *const catalog_tables[] = {
	"features", "plans", "plan_features", "tenant_subscriptions",
	"tenant_overrides", "usage_events", "subjects", "subject_limits"
};

static HTAB *policies = NULL;
static uint64 generation = 0;
static bool stale = false;
static Oid	ledger_relid = InvalidOid;
static Oid	catalog_relids[lengthof(catalog_tables)];
static bool catalog_relids_known = false;

static void
InvalidationCallback(Datum arg, Oid relid)
{
	bool		ours = !catalog_relids_known || relid == InvalidOid;

	for (int i = 0; !ours && i < lengthof(catalog_relids); i++)
		ours = (relid == catalog_relids[i]);
	if (ours)
	{
		generation++;
		stale = true;
	}
}

/* Register the invalidation callback (from _PG_init) */
void
CacheInit(void)
{
	CacheRegisterRelcacheCallback(InvalidationCallback, (Datum) 0);
}

/* Start over: called at a lookup, never from the callback */
static void
ResetCache(void)
{
	if (policies != NULL)
		hash_destroy(policies);
	policies = NULL;
	stale = false;
	ledger_relid = InvalidOid;

	catalog_relids_known = false;
	for (int i = 0; i < lengthof(catalog_tables); i++)
	{
		catalog_relids[i] = UsageGuardRelid(catalog_tables[i]);
		catalog_relids_known |= OidIsValid(catalog_relids[i]);
	}
}

/* Hash and compare only the bytes in use of the two key strings */
static uint32
PolicyKeyHash(const void *key, Size keysize)
{
	const char *tenant = key;
	const char *feature = tenant + UG_NAME_MAX + 1;

	return hash_combine(hash_bytes((const unsigned char *) tenant, strlen(tenant)),
						hash_bytes((const unsigned char *) feature, strlen(feature)));
}

static int
PolicyKeyMatch(const void *key1, const void *key2, Size keysize)
{
	const char *a = key1;
	const char *b = key2;

	if (strcmp(a, b) != 0)
		return 1;
	return strcmp(a + UG_NAME_MAX + 1, b + UG_NAME_MAX + 1);
}

static void
CreateCache(void)
{
	HASHCTL		info;

	info.keysize = POLICY_KEY_SIZE;
	info.entrysize = sizeof(Policy);
	info.hash = PolicyKeyHash;
	info.match = PolicyKeyMatch;
	info.hcxt = CacheMemoryContext;
	policies = hash_create("usage_guard policies", 1024, &info,
						   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* OID of the ledger: part of every shared counter's key */
Oid
LedgerRelid(void)
{
	if (stale || !OidIsValid(ledger_relid))
	{
		if (stale)
			ResetCache();
		ledger_relid = UsageGuardRelid("usage_events");
	}
	return ledger_relid;
}

/*
 * The catalog's shape, learnt once per generation rather than looked up on
 * every call: the ledger's owner and whether it has row security, and what
 * the installed SQL has (it lags the library between make install and ALTER
 * EXTENSION UPDATE).  Every change to it (ALTER TABLE ... ROW LEVEL
 * SECURITY, OWNER TO, the update's ALTER TABLE plans) invalidates a
 * catalog table or the ledger, which bumps the generation.
 */
static struct
{
	bool		known;
	uint64		generation;
	Oid			ledger_owner;
	bool		ledger_rls;
	bool		resets;			/* usage_resets exists (0.5.0) */
	bool		plan_defaults;	/* plans.is_default and unlimited_by_default (0.5.0) */
	bool		tenant_triggers;	/* enabled row triggers on the tenant tables (0.7.0) */
}			shape;

/* Does the relation have an enabled trigger of that name? */
static bool
TriggerEnabled(Oid relid, const char *name)
{
	Relation	rel;
	ScanKeyData skey[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		enabled = false;

	if (!OidIsValid(relid))
		return false;
	rel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&skey[0], Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&skey[1], Anum_pg_trigger_tgname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(name));
	scan = systable_beginscan(rel, TriggerRelidNameIndexId, true, NULL, 2, skey);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		enabled = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled != TRIGGER_DISABLED;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return enabled;
}

static void
LearnShape(void)
{
	/* a change seen while learning is learnt again at the next call */
	uint64		seen = generation;
	Oid			ledger = LedgerRelid();
	Oid			plans = UsageGuardRelid("plans");

	memset(&shape, 0, sizeof(shape));
	if (OidIsValid(ledger))
		LookupLedger(ledger, &shape.ledger_owner, &shape.ledger_rls);
	shape.resets = OidIsValid(UsageGuardRelid("usage_resets"));
	shape.plan_defaults = OidIsValid(plans) && get_attnum(plans, "is_default") != InvalidAttrNumber;
	/* without them the shared cache would not hear of a tenant's change */
	shape.tenant_triggers = shape.plan_defaults &&
		TriggerEnabled(UsageGuardRelid("tenant_subscriptions"), "tenant_subscriptions_rows_changed") &&
		TriggerEnabled(UsageGuardRelid("tenant_overrides"), "tenant_overrides_rows_changed");
	shape.generation = seen;
	shape.known = true;
}

static inline void
KnowShape(void)
{
	if (!shape.known || shape.generation != generation)
		LearnShape();
}

/* The role usage_guard reads and writes as (security.c): the ledger's owner */
Oid
LedgerOwner(void)
{
	KnowShape();
	return shape.ledger_owner;
}

/* Is row-level security enabled on the ledger (for anyone)? */
bool
LedgerHasRowSecurity(void)
{
	KnowShape();
	return shape.ledger_rls;
}

/* Does the installed SQL have usage_resets? */
bool
CatalogHasResets(void)
{
	KnowShape();
	return shape.resets;
}

/* Does the installed SQL have the plans' default columns? */
bool
CatalogHasPlanDefaults(void)
{
	KnowShape();
	return shape.plan_defaults;
}

/* May the shared policy cache serve this catalog (shared_policy.c)? */
bool
CatalogHasTenantTriggers(void)
{
	KnowShape();
	return shape.tenant_triggers;
}

/*
 * Bumped by every invalidation of a catalog table or the ledger: state
 * derived from their definitions (the ledger's layout) is redone after it.
 */
uint64
CacheGeneration(void)
{
	return generation;
}

/* The policy of a tenant's feature, copied into *policy */
void
GetPolicy(const char *tenant_id, const char *feature_key, Policy *policy)
{
	char		key[POLICY_KEY_SIZE];
	Policy	   *entry;
	bool		found;

	/* every caller refused longer names first (RequiredText, CheckRowNames) */
	Assert(strlen(tenant_id) <= UG_NAME_MAX && strlen(feature_key) <= UG_NAME_MAX);
	if (SharedPolicyGet(tenant_id, feature_key, policy))
		return;
	if (stale)
		ResetCache();
	if (policies == NULL)
	{
		if (!catalog_relids_known)
			ResetCache();
		CreateCache();
	}

	memset(key, 0, sizeof(key));
	strlcpy(key, tenant_id, UG_NAME_MAX + 1);
	strlcpy(key + UG_NAME_MAX + 1, feature_key, UG_NAME_MAX + 1);
	entry = hash_search(policies, key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		memcpy(policy, entry, sizeof(Policy));
		return;
	}

	for (int attempt = 0; attempt < 3; attempt++)
	{
		uint64		before = generation;

		LoadPolicy(tenant_id, feature_key, policy);
		if (before == generation)
			break;
		if (attempt == 2)
			return;				/* keep changing under us: use it, do not cache it */
	}

	if (stale)
		ResetCache();
	if (policies == NULL)
		CreateCache();
	if (hash_get_num_entries(policies) >= POLICY_CACHE_MAX)
	{
		hash_destroy(policies);
		CreateCache();
	}
	entry = hash_search(policies, key, HASH_ENTER, &found);
	memcpy(entry, policy, sizeof(Policy));
}

/*
 * The limits in force at `at`, one per window kind, in kind order: an
 * unexpired override replaces the plan's limits of its kind.  Returns the
 * count; 0 means the feature is not included for the tenant.
 */
int
EffectiveLimits(const Policy *policy, TimestampTz at, FeatureLimit *limits)
{
	int			n = 0;

	for (int k = 0; k < PERIOD_KINDS; k++)
	{
		const LimitPair *src = NULL;

		if ((policy->override_mask & (1 << k)) &&
			(policy->override_expires[k] == DT_NOEND || at < policy->override_expires[k]))
			src = &policy->override_limits[k];
		else if (policy->plan_mask & (1 << k))
			src = &policy->plan_limits[k];
		if (src == NULL)
			continue;
		memset(&limits[n], 0, sizeof(FeatureLimit));
		limits[n].kind = LIMIT_QUOTA;
		limits[n].period = (PeriodKind) k;
		limits[n].limits = *src;
		limits[n].level = "tenant";
		n++;
	}
	return n;
}

PG_FUNCTION_INFO_V1(usage_guard_catalog_changed);
/*
 * Statement trigger on the catalog tables: invalidate every backend's cache,
 * and the shared one at commit.  The tenant tables' rows are noted one by
 * one by their row triggers (usage_guard_tenant_changed); a TRUNCATE of
 * them, and any change to features and plans, makes every policy stale.
 */
Datum
usage_guard_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;
	const char *name;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("usage_guard_catalog_changed must be called as a trigger")));
	name = RelationGetRelationName(trig->tg_relation);
	if (strcmp(name, "features") == 0 || strcmp(name, "plans") == 0 ||
		strcmp(name, "plan_features") == 0)
		SharedPolicyNoteAll();
	else if (strcmp(name, "tenant_subscriptions") == 0 || strcmp(name, "tenant_overrides") == 0)
	{
		/* rows not noted one by one (a row trigger disabled) stale them all */
		if (TRIGGER_FIRED_BY_TRUNCATE(trig->tg_event) || !CatalogHasTenantTriggers())
			SharedPolicyNoteAll();
		else
			SharedPolicyNoteChange();
	}
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trig->tg_relation));
	return PointerGetDatum(NULL);
}

/*
 * citus.c
 *		What usage_guard does differently when Citus distributes its ledger
 *		(usage_guard.distribute(); README, "Scaling out with Citus").
 *
 * Live counters are per node.  The node that holds a tenant's ledger shard
 * counts every row written to it (the shard's own copy of the ledger's
 * trigger fires there, however the row got routed), so only that node's
 * counters are exact for the tenant, and decisions run there: Citus
 * delegates the decision functions by their tenant argument.  This file:
 *	- tells whether the ledger is distributed (then its relation here is an
 *	  empty shell: rows are written through SQL that Citus routes);
 *	- tells whether this node holds a tenant's shard.  A decision that was
 *	  not delegated (called inside another query, say) and so runs on a
 *	  node without the shard reads the ledger through Citus (checks) or is
 *	  refused (consumes): that node's counters never see the tenant's rows;
 *	- forgets this database's live counters when a shard of the ledger is
 *	  created on or dropped from this node (a shard move, a rebalance), so
 *	  a tenant that moves away and back is loaded again from its rows, not
 *	  from counters that missed what happened while it was elsewhere.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "counters.h"
#include "query.h"
#include "usage_guard.h"

/*
 * Is `relid` a Citus distributed (or reference) table?  Looked up once per
 * catalog generation (Citus invalidates the relation when it distributes
 * it) in pg_dist_partition, if there is one.
 */
bool
RelationIsDistributed(Oid relid)
{
	static Oid	known_rel = InvalidOid;
	static uint64 known_generation = 0;
	static bool known = false;
	Oid			dist;

	if (known_rel == relid && known_generation == CacheGeneration())
		return known;
	known = false;
	dist = get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE);
	if (OidIsValid(dist))
	{
		Relation	r = table_open(dist, AccessShareLock);
		ScanKeyData key;
		SysScanDesc scan;

		/* column 1, logicalrelid (regclass: compared as an oid) */
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
		scan = systable_beginscan(r, InvalidOid, false, NULL, 1, &key);
		known = HeapTupleIsValid(systable_getnext(scan));
		systable_endscan(scan);
		table_close(r, AccessShareLock);
	}
	known_rel = relid;
	known_generation = CacheGeneration();
	return known;
}

/* A read-only query of one boolean, run as the ledger's owner; NULL is false */
static bool
InternalBoolQuery(CachedQuery *q, Datum *values)
{
	InternalContext ctx;
	bool		isnull;
	bool		result;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "usage_guard: SPI_connect failed");
	BeginInternal(&ctx, true);
	RunQuery(q, values, NULL, true, 1);
	result = SPI_processed == 1 && DatumGetBool(ResultDatum(0, 1, &isnull)) && !isnull;
	EndInternal(&ctx);
	SPI_finish();
	return result;
}

/* Does this node hold the shard of the ledger that `$2` hashes to? */
static CachedQuery shard_here_query = {
	"SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_placement p, pg_catalog.pg_dist_local_group g"
	"                WHERE p.groupid = g.groupid"
	"                  AND p.shardid = pg_catalog.get_shard_id_for_distribution_column($1, $2))",
	2, {REGCLASSOID, TEXTOID}
};

/*
 * Tenants whose placement this backend looked up, until the next catalog
 * generation: Citus invalidates the distributed table's relation whenever
 * a placement of it changes, and that bumps the generation.
 */
#define TENANTS_HERE_MAX 16384

typedef struct TenantHere
{
	char		tenant_id[UG_NAME_MAX + 1];	/* hash key: must be first */
	bool		here;
} TenantHere;

static HTAB *tenants_here = NULL;
static uint64 tenants_here_generation = 0;

/*
 * Are this node's counters the tenant's?  True unless the ledger is
 * distributed and its shard for the tenant is on another node.
 */
bool
TenantCountedHere(const char *tenant_id)
{
	Oid			ledger = LedgerRelid();
	TenantHere *e;
	bool		found;
	Datum		values[2];

	if (!RelationIsDistributed(ledger))
		return true;
	if (tenants_here == NULL || tenants_here_generation != CacheGeneration() ||
		hash_get_num_entries(tenants_here) >= TENANTS_HERE_MAX)
	{
		HASHCTL		info;

		if (tenants_here != NULL)
			hash_destroy(tenants_here);
		memset(&info, 0, sizeof(info));
		info.keysize = UG_NAME_MAX + 1;
		info.entrysize = sizeof(TenantHere);
		info.hcxt = TopMemoryContext;
		tenants_here = hash_create("usage_guard tenants here", 256, &info,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		tenants_here_generation = CacheGeneration();
	}
	e = hash_search(tenants_here, tenant_id, HASH_FIND, NULL);
	if (e != NULL)
		return e->here;

	values[0] = ObjectIdGetDatum(ledger);
	values[1] = CStringGetTextDatum(tenant_id);
	found = InternalBoolQuery(&shard_here_query, values);

	/* the lookup ran SQL: the table may have been rebuilt meanwhile */
	if (tenants_here_generation == CacheGeneration())
	{
		e = hash_search(tenants_here, tenant_id, HASH_ENTER, NULL);
		e->here = found;
	}
	return found;
}

/* A consume, which writes, must run where the tenant is counted */
void
RequireTenantCountedHere(const char *tenant_id)
{
	if (!TenantCountedHere(tenant_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot decide for tenant \"%s\" on a node that does not hold its shard",
						tenant_id),
				 errdetail("The ledger is distributed by Citus; this node's counters do not see the tenant's rows, so a consume decided here could pass a hard limit."),
				 errhint("Call the decision function on its own, with the tenant as a constant or a parameter (SELECT * FROM usage_guard.usage_consume($1, ...)), so that Citus delegates it to the tenant's node.")));
}

/* Is this node the Citus coordinator (of a distributed ledger)? */
bool
CitusIsCoordinator(void)
{
	static CachedQuery coordinator_query = {
		"SELECT pg_catalog.citus_is_coordinator()", 0, {InvalidOid}
	};

	return InternalBoolQuery(&coordinator_query, NULL);
}

/*
 * expire_reservations(at) on every worker, each for the tenants it holds
 * (their counters are there); returns how many they gave back.  Each worker
 * runs it in its own transaction (run_command_on_workers), committed when it
 * returns.  `at` travels as an ISO 8601 literal in UTC, which every
 * DateStyle reads the same way.
 */
int64
ExpireReservationsOnWorkers(TimestampTz at)
{
	static CachedQuery on_workers_query = {
		"SELECT w.nodename || ':' || w.nodeport, w.success, w.result"
		"  FROM pg_catalog.run_command_on_workers(pg_catalog.format("
		"         'SELECT usage_guard.expire_reservations(%L::timestamptz)',"
		"         CASE WHEN pg_catalog.isfinite($1)"
		"              THEN pg_catalog.to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
		"              ELSE $1::text END)) w",
		1, {TIMESTAMPTZOID}
	};
	InternalContext ctx;
	Datum		values[1] = {TimestampTzGetDatum(at)};
	int64		total = 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "usage_guard: SPI_connect failed");
	BeginInternal(&ctx, true);
	RunQuery(&on_workers_query, values, NULL, false, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *node = ResultText(i, 1, &isnull);
		bool		ok = DatumGetBool(ResultDatum(i, 2, &isnull)) && !isnull;
		char	   *result = ResultText(i, 3, &isnull);
		char	   *end;
		long long	count;

		if (!ok || result == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("expire_reservations() failed on worker %s", node),
					 errdetail("%s", result ? result : "no result")));
		errno = 0;
		count = strtoll(result, &end, 10);
		if (errno != 0 || *end != '\0' || count < 0)
			elog(ERROR, "usage_guard: unexpected result \"%s\" of expire_reservations() on worker %s",
				 result, node);
		total += count;
	}
	EndInternal(&ctx);
	SPI_finish();
	return total;
}

/*
 * Shards of the ledger (usage_events_<shardid>, usage_resets_<shardid>)
 * created or dropped by this transaction: at commit this database's live
 * counters are dropped, to be loaded again from the rows now here.
 */
static object_access_hook_type prev_object_access_hook = NULL;
static List *created_relations = NIL;	/* checked at commit: names not yet visible */
static bool shards_changed = false;

static bool
IsLedgerShardName(Oid relid)
{
	char	   *name;
	Oid			nsp;
	const char *digits = NULL;
	Oid			ledger;

	ledger = LedgerRelid();
	if (!OidIsValid(ledger))
		return false;
	nsp = get_rel_namespace(relid);
	if (nsp != get_rel_namespace(ledger))
		return false;
	name = get_rel_name(relid);
	if (name == NULL)
		return false;
	/* both prefixes are 13 bytes */
	if (strncmp(name, "usage_events_", 13) == 0 || strncmp(name, "usage_resets_", 13) == 0)
		digits = name + 13;
	if (digits == NULL || *digits == '\0')
		return false;
	for (const char *c = digits; *c != '\0'; c++)
		if (*c < '0' || *c > '9')
			return false;
	return true;
}

static void
NoteShards(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (classId != RelationRelationId || subId != 0 || !CountersAvailable())
		return;
	if (access == OAT_POST_CREATE)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		created_relations = lappend_oid(created_relations, objectId);
		MemoryContextSwitchTo(old);
	}
	else if (access == OAT_DROP && !shards_changed && IsLedgerShardName(objectId))
		shards_changed = true;
}

static void
ForgetCountersOnShardChange(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			{
				ListCell   *lc;

				foreach(lc, created_relations)
					if (!shards_changed && IsLedgerShardName(lfirst_oid(lc)))
						shards_changed = true;
			}
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			/* prepared (Citus's two-phase commit): at once, harmless early */
			if (shards_changed)
			{
				int			removed = CounterRemoveStale(InvalidOid);

				ereport(LOG,
						(errmsg("usage_guard: a shard of the ledger was created or dropped on this node; %d live counters will be loaded again from the ledger",
								removed)));
			}
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			created_relations = NIL;	/* in TopTransactionContext */
			shards_changed = false;
			break;
		default:
			break;
	}
}

/* Register the hook and callback (from _PG_init) */
void
CitusInit(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = NoteShards;
	RegisterXactCallback(ForgetCountersOnShardChange, NULL);
}

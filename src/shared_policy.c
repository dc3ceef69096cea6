/*
 * shared_policy.c
 *		The policy cache in shared memory: what every backend needs to decide
 *		for a tenant (its subscription, its plan's limits of a feature) loaded
 *		once for the whole server, so a backend that starts now decides as fast
 *		as one that has run for an hour.  cache.c's per-backend cache remains
 *		the path for what this one does not hold (tenants with overrides,
 *		names longer than its keys, a transaction that changed the catalog
 *		itself, a standby, a full cache).
 *
 * Two tables:
 *	tenants		(database, ledger, tenant) -> subscription, plan code, flags;
 *				partitioned over SP_PARTITIONS LWLocks by the key's hash.
 *	plan features (database, ledger, plan, feature) -> feature exists, the
 *				plan's limits; small (plans x features), one LWLock.
 *
 * Invalidation is by generation numbers, never by deleting entries:
 *	- SP_STRIPES stripe generations; a tenant's entry is valid while it
 *	  carries its stripe's current generation.  The row triggers on
 *	  tenant_subscriptions and tenant_overrides note the stripes of the
 *	  tenants a transaction changed; at commit (after the transaction became
 *	  visible, XACT_EVENT_COMMIT) the stripes are bumped.
 *	- A change to features, plans or plan_features (or a TRUNCATE of a tenant
 *	  table) bumps every stripe and the plan-feature generation.
 *	- A loader reads the generation *before* it takes its snapshot (the
 *	  latest one, not its transaction's) and stores only if the generation
 *	  is unchanged: a load that may have missed a commit is never kept.
 * So a committed change is seen by the next decision of every backend, and
 * a change in progress by none but its own transaction's (which bypasses
 * this cache until it ends).
 *
 * A prepared transaction (PREPARE TRANSACTION, or Citus's two-phase commit
 * of a reference table change on every node) commits in another session,
 * where these callbacks do not run.  So preparing one that changed the
 * catalog bumps every generation and lists its xid; while a listed xid is
 * in progress nothing loaded is kept, and the first loader to find it
 * ended delists it and bumps again (its load may predate the commit).
 * After a restart the list is rebuilt from pg_prepared_xacts (every
 * prepared transaction, conservatively) by the first loader.
 *
 * Lock order: a tenant partition lock and the plan-feature lock are never
 * held together, and never while running SQL.  Sweeps of stale entries
 * take every tenant partition lock in ascending order.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/procarray.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/rel.h"

#include "usage_guard.h"

/* Names cached in shared memory are shorter than these (longer: per backend) */
#define SP_TENANT_NAME	56
#define SP_PLAN_NAME	32
#define SP_STRIPES		4096
#define SP_PARTITIONS	16
#define SP_PLAN_FEATURES 1024
/* Stripes a transaction notes one by one; beyond, it bumps them all */
#define SP_MAX_PENDING	64
/* Prepared catalog changes in progress (max_prepared_transactions beyond) */
#define SP_MAX_PREPARED	64

/* A subscription's status, as a small number (the catalog's CHECK list) */
static const char *const statuses[] = {
	"active", "trialing", "past_due", "unpaid", "paused",
	"canceled", "incomplete", "incomplete_expired"
};

typedef struct TenantKey
{
	Oid			dbid;
	Oid			ledger;			/* usage_events' OID: a new install starts afresh */
	char		tenant_id[SP_TENANT_NAME];
} TenantKey;

typedef struct TenantEntry
{
	TenantKey	key;			/* hash key: must be first */
	uint64		generation;		/* of the tenant's stripe when loaded */
	TimestampTz period_start;
	TimestampTz period_end;
	char		plan_code[SP_PLAN_NAME];
	uint8		status;
	bool		has_subscription;
	bool		has_overrides;	/* decided per backend: overrides stay there */
	bool		unlimited;		/* the plan's unlimited_by_default */
} TenantEntry;

typedef struct PlanFeatureKey
{
	Oid			dbid;
	Oid			ledger;
	char		plan_code[UG_NAME_MAX + 1];	/* "" for a tenant without a plan */
	char		feature_key[UG_NAME_MAX + 1];
} PlanFeatureKey;

typedef struct PlanFeatureEntry
{
	PlanFeatureKey key;			/* hash key: must be first */
	uint64		generation;
	bool		feature_exists;
	uint8		plan_mask;
	LimitPair	plan_limits[PERIOD_KINDS];
} PlanFeatureEntry;

typedef struct SharedPolicyState
{
	LWLockPadded *locks;		/* SP_PARTITIONS tenant partitions, then plan features */
	pg_atomic_uint64 plan_generation;
	pg_atomic_uint64 bumps;		/* every bump of any generation */
	pg_atomic_uint64 tenants_swept_at;	/* bumps at the last sweep of a full table */
	pg_atomic_uint64 plans_swept_at;
	pg_atomic_uint64 hits;
	pg_atomic_uint64 loads;
	slock_t		prepared_lock;	/* protects the three below */
	bool		prepared_unknown;	/* after a restart: not yet read */
	int			nprepared;
	TransactionId prepared[SP_MAX_PREPARED];
	pg_atomic_uint64 stripes[SP_STRIPES];
} SharedPolicyState;

int			usage_guard_max_tenants = 100000;

static SharedPolicyState *state = NULL;
static HTAB *tenants = NULL;
static HTAB *plan_features = NULL;

/* This transaction's catalog changes, published at commit */
static bool xact_changed = false;
static bool pending_all = false;
static int	npending = 0;
static uint16 pending[SP_MAX_PENDING];

static Size
StateSize(void)
{
	return MAXALIGN(sizeof(SharedPolicyState));
}

static Size
SharedPolicyShmemSize(void)
{
	Size		size = StateSize();

	size = add_size(size, hash_estimate_size(usage_guard_max_tenants, sizeof(TenantEntry)));
	return add_size(size, hash_estimate_size(SP_PLAN_FEATURES, sizeof(PlanFeatureEntry)));
}

/* shmem_request_hook part */
void
SharedPolicyShmemRequest(void)
{
	RequestAddinShmemSpace(SharedPolicyShmemSize());
	RequestNamedLWLockTranche("usage_guard policies", SP_PARTITIONS + 1);
}

static uint32
NameHash(const char *s)
{
	return hash_bytes((const unsigned char *) s, strlen(s));
}

static uint32
TenantKeyHash(const void *key, Size keysize)
{
	const TenantKey *k = key;

	return hash_combine(NameHash(k->tenant_id), hash_uint32(k->dbid ^ k->ledger));
}

static uint32
PlanFeatureKeyHash(const void *key, Size keysize)
{
	const PlanFeatureKey *k = key;

	return hash_combine(hash_combine(NameHash(k->plan_code), NameHash(k->feature_key)),
						hash_uint32(k->dbid ^ k->ledger));
}

static int
PlanFeatureKeyMatch(const void *key1, const void *key2, Size keysize)
{
	const PlanFeatureKey *a = key1;
	const PlanFeatureKey *b = key2;

	if (a->dbid != b->dbid || a->ledger != b->ledger)
		return 1;
	if (strcmp(a->plan_code, b->plan_code) != 0)
		return 1;
	return strcmp(a->feature_key, b->feature_key);
}

/* shmem_startup_hook part (caller holds AddinShmemInitLock) */
void
SharedPolicyShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	state = ShmemInitStruct("usage_guard policies", StateSize(), &found);
	if (!found)
	{
		state->locks = GetNamedLWLockTranche("usage_guard policies");
		pg_atomic_init_u64(&state->plan_generation, 1);
		pg_atomic_init_u64(&state->bumps, 0);
		pg_atomic_init_u64(&state->tenants_swept_at, PG_UINT64_MAX);
		pg_atomic_init_u64(&state->plans_swept_at, PG_UINT64_MAX);
		pg_atomic_init_u64(&state->hits, 0);
		pg_atomic_init_u64(&state->loads, 0);
		for (int i = 0; i < SP_STRIPES; i++)
			pg_atomic_init_u64(&state->stripes[i], 1);
		SpinLockInit(&state->prepared_lock);
		state->prepared_unknown = true;
		state->nprepared = 0;
	}

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(TenantKey);
	info.entrysize = sizeof(TenantEntry);
	info.hash = TenantKeyHash;
	info.num_partitions = SP_PARTITIONS;
	tenants = ShmemInitHash("usage_guard policies: tenants",
							usage_guard_max_tenants, usage_guard_max_tenants, &info,
							HASH_ELEM | HASH_FUNCTION | HASH_PARTITION | HASH_FIXED_SIZE);

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(PlanFeatureKey);
	info.entrysize = sizeof(PlanFeatureEntry);
	info.hash = PlanFeatureKeyHash;
	info.match = PlanFeatureKeyMatch;
	plan_features = ShmemInitHash("usage_guard policies: plan features",
								  SP_PLAN_FEATURES, SP_PLAN_FEATURES, &info,
								  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_FIXED_SIZE);
}

static inline int
StripeOf(uint32 name_hash)
{
	return name_hash % SP_STRIPES;
}

static inline LWLock *
TenantLock(uint32 hash)
{
	return &state->locks[hash % SP_PARTITIONS].lock;
}

static inline LWLock *
PlanFeatureLock(void)
{
	return &state->locks[SP_PARTITIONS].lock;
}

/* Bump every generation: every entry is stale from now on */
static void
BumpAll(void)
{
	for (int i = 0; i < SP_STRIPES; i++)
		pg_atomic_fetch_add_u64(&state->stripes[i], 1);
	pg_atomic_fetch_add_u64(&state->plan_generation, 1);
	pg_atomic_fetch_add_u64(&state->bumps, 1);
}

/*
 * The first load after a restart: the list in shared memory is gone, and
 * any recovered prepared transaction may have changed the catalog, so
 * every one is listed.
 */
static void
ListRecoveredPrepared(void)
{
	TransactionId xids[SP_MAX_PREPARED];
	int			n = 0;

	if (SPI_connect() != SPI_OK_CONNECT ||
		SPI_execute("SELECT transaction FROM pg_catalog.pg_prepared_xacts", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "usage_guard: could not read pg_prepared_xacts");
	for (uint64 i = 0; i < SPI_processed && n < SP_MAX_PREPARED; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			xids[n++] = DatumGetTransactionId(d);
	}
	SPI_finish();

	SpinLockAcquire(&state->prepared_lock);
	if (state->prepared_unknown)
	{
		for (int i = 0; i < n && state->nprepared < SP_MAX_PREPARED; i++)
			state->prepared[state->nprepared++] = xids[i];
		state->prepared_unknown = false;
	}
	SpinLockRelease(&state->prepared_lock);
}

/*
 * Whether what a loader read may be kept as far as prepared catalog changes
 * go (see the header): none listed is in progress.  Delists ended ones,
 * bumping every generation, so a load that began before one committed is
 * not kept either (the caller compares generations after this).
 */
static bool
PreparedChangesSettled(void)
{
	TransactionId xids[SP_MAX_PREPARED];
	int			n;
	bool		settled = true;

	/* read unlocked: it only ever turns false, and is checked again under the lock */
	if (state->prepared_unknown)
		ListRecoveredPrepared();
	SpinLockAcquire(&state->prepared_lock);
	n = state->nprepared;
	memcpy(xids, state->prepared, n * sizeof(TransactionId));
	SpinLockRelease(&state->prepared_lock);
	if (n == 0)
		return true;

	for (int i = 0; i < n; i++)
	{
		if (TransactionIdIsInProgress(xids[i]))
		{
			settled = false;
			continue;
		}
		SpinLockAcquire(&state->prepared_lock);
		for (int j = 0; j < state->nprepared; j++)
			if (TransactionIdEquals(state->prepared[j], xids[i]))
			{
				state->prepared[j] = state->prepared[--state->nprepared];
				break;
			}
		SpinLockRelease(&state->prepared_lock);
		BumpAll();
	}
	return settled;
}

/* List this transaction as a prepared catalog change (at PREPARE) */
static void
ListPrepared(void)
{
	TransactionId xid = GetTopTransactionIdIfAny();
	bool		listed = false;

	/* a transaction whose changes wrote no row has no xid and changed nothing */
	if (!TransactionIdIsValid(xid))
		return;
	SpinLockAcquire(&state->prepared_lock);
	if (state->nprepared < SP_MAX_PREPARED)
	{
		state->prepared[state->nprepared++] = xid;
		listed = true;
	}
	SpinLockRelease(&state->prepared_lock);
	if (!listed)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many prepared transactions changed usage_guard's catalog"),
				 errdetail("At most %d such prepared transactions may be in progress at a time.", SP_MAX_PREPARED),
				 errhint("Commit or roll back prepared transactions (pg_prepared_xacts).")));
	BumpAll();
}

/* Drop every stale tenant entry (table full); once per change of generations */
static void
SweepTenants(void)
{
	uint64		bumps = pg_atomic_read_u64(&state->bumps);
	HASH_SEQ_STATUS seq;
	TenantEntry *e;

	if (pg_atomic_exchange_u64(&state->tenants_swept_at, bumps) == bumps)
		return;
	for (int i = 0; i < SP_PARTITIONS; i++)
		LWLockAcquire(&state->locks[i].lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, tenants);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		int			stripe = StripeOf(NameHash(e->key.tenant_id));

		if (e->generation != pg_atomic_read_u64(&state->stripes[stripe]))
			hash_search(tenants, &e->key, HASH_REMOVE, NULL);
	}
	for (int i = SP_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&state->locks[i].lock);
}

/* The same for plan features (caller holds the plan-feature lock exclusive) */
static void
SweepPlanFeatures(void)
{
	uint64		bumps = pg_atomic_read_u64(&state->bumps);
	uint64		current = pg_atomic_read_u64(&state->plan_generation);
	HASH_SEQ_STATUS seq;
	PlanFeatureEntry *e;

	if (pg_atomic_exchange_u64(&state->plans_swept_at, bumps) == bumps)
		return;
	hash_seq_init(&seq, plan_features);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (e->generation != current)
			hash_search(plan_features, &e->key, HASH_REMOVE, NULL);
}

static int
StatusCode(const char *status)
{
	for (int i = 0; i < lengthof(statuses); i++)
		if (strcmp(status, statuses[i]) == 0)
			return i;
	return -1;
}

/*
 * The tenant's part of the policy: from the table, or loaded and stored.
 * False when it cannot be cached here (a name too long, an unknown status).
 */
static bool
GetTenant(const TenantKey *key, uint32 name_hash, TenantEntry *out)
{
	uint32		hash = TenantKeyHash(key, sizeof(TenantKey));
	pg_atomic_uint64 *stripe = &state->stripes[StripeOf(name_hash)];
	LWLock	   *lock = TenantLock(hash);
	TenantEntry *e;
	uint64		generation;
	Policy		loaded;
	bool		unlimited;
	bool		has_overrides;
	int			status = 0;
	bool		found;

	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(tenants, key, hash, HASH_FIND, NULL);
	if (e != NULL && e->generation == pg_atomic_read_u64(stripe))
	{
		memcpy(out, e, sizeof(TenantEntry));
		LWLockRelease(lock);
		pg_atomic_fetch_add_u64(&state->hits, 1);
		return true;
	}
	LWLockRelease(lock);

	/* read before the snapshot is taken: see the header comment */
	generation = pg_atomic_read_u64(stripe);
	LoadTenantPolicy(key->tenant_id, &loaded, &unlimited, &has_overrides);
	pg_atomic_fetch_add_u64(&state->loads, 1);
	if (loaded.has_subscription)
	{
		status = StatusCode(loaded.status);
		if (status < 0 || strlen(loaded.plan_code) >= SP_PLAN_NAME)
			return false;
	}

	memset(out, 0, sizeof(TenantEntry));
	out->key = *key;
	out->generation = generation;
	out->period_start = loaded.period_start;
	out->period_end = loaded.period_end;
	strlcpy(out->plan_code, loaded.plan_code, SP_PLAN_NAME);
	out->status = (uint8) status;
	out->has_subscription = loaded.has_subscription;
	out->has_overrides = has_overrides;
	out->unlimited = unlimited;

	for (int attempt = 0; attempt < 2; attempt++)
	{
		bool		settled = attempt > 0 || PreparedChangesSettled();

		LWLockAcquire(lock, LW_EXCLUSIVE);
		if (!settled || pg_atomic_read_u64(stripe) != generation)
		{
			/* changed while loading: use it once, keep nothing */
			LWLockRelease(lock);
			return true;
		}
		e = hash_search_with_hash_value(tenants, key, hash, HASH_ENTER_NULL, &found);
		if (e != NULL)
		{
			memcpy(e, out, sizeof(TenantEntry));
			LWLockRelease(lock);
			return true;
		}
		LWLockRelease(lock);
		SweepTenants();
	}
	return true;				/* full of live entries: used, not kept */
}

/* The plan's part for a feature: from the table, or loaded and stored */
static void
GetPlanFeature(Oid ledger, const char *plan_code, const char *feature_key,
			   PlanFeatureEntry *out)
{
	PlanFeatureKey key;
	uint32		hash;
	PlanFeatureEntry *e;
	uint64		generation;
	Policy		loaded;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.ledger = ledger;
	strlcpy(key.plan_code, plan_code, sizeof(key.plan_code));
	strlcpy(key.feature_key, feature_key, sizeof(key.feature_key));
	hash = PlanFeatureKeyHash(&key, sizeof(key));

	LWLockAcquire(PlanFeatureLock(), LW_SHARED);
	e = hash_search_with_hash_value(plan_features, &key, hash, HASH_FIND, NULL);
	if (e != NULL && e->generation == pg_atomic_read_u64(&state->plan_generation))
	{
		memcpy(out, e, sizeof(PlanFeatureEntry));
		LWLockRelease(PlanFeatureLock());
		return;
	}
	LWLockRelease(PlanFeatureLock());

	generation = pg_atomic_read_u64(&state->plan_generation);
	LoadPlanFeature(plan_code[0] != '\0' ? plan_code : NULL, feature_key, &loaded);
	memset(out, 0, sizeof(PlanFeatureEntry));
	out->key = key;
	out->generation = generation;
	out->feature_exists = loaded.feature_exists;
	out->plan_mask = loaded.plan_mask;
	memcpy(out->plan_limits, loaded.plan_limits, sizeof(out->plan_limits));

	if (!PreparedChangesSettled())
		return;
	LWLockAcquire(PlanFeatureLock(), LW_EXCLUSIVE);
	if (pg_atomic_read_u64(&state->plan_generation) == generation)
	{
		e = hash_search_with_hash_value(plan_features, &key, hash, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			SweepPlanFeatures();
			e = hash_search_with_hash_value(plan_features, &key, hash, HASH_ENTER_NULL, &found);
		}
		if (e != NULL)
			memcpy(e, out, sizeof(PlanFeatureEntry));
	}
	LWLockRelease(PlanFeatureLock());
}

/*
 * The policy of a tenant's feature from shared memory, loading what is
 * missing.  False when it belongs to the per-backend path (see the header).
 */
bool
SharedPolicyGet(const char *tenant_id, const char *feature_key, Policy *policy)
{
	TenantKey	key;
	TenantEntry tenant;
	PlanFeatureEntry pf;
	Oid			ledger;
	uint32		name_hash;

	if (state == NULL || xact_changed || RecoveryInProgress())
		return false;
	if (strlen(tenant_id) >= SP_TENANT_NAME || !CatalogHasTenantTriggers())
		return false;
	ledger = LedgerRelid();
	if (!OidIsValid(ledger))
		return false;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.ledger = ledger;
	strlcpy(key.tenant_id, tenant_id, SP_TENANT_NAME);
	name_hash = NameHash(tenant_id);
	if (!GetTenant(&key, name_hash, &tenant) || tenant.has_overrides)
		return false;
	GetPlanFeature(ledger, tenant.has_subscription ? tenant.plan_code : "", feature_key, &pf);

	InitPolicy(policy, tenant_id, feature_key);
	policy->feature_exists = pf.feature_exists;
	if (tenant.has_subscription)
	{
		policy->has_subscription = true;
		strlcpy(policy->plan_code, tenant.plan_code, sizeof(policy->plan_code));
		strlcpy(policy->status, statuses[tenant.status], sizeof(policy->status));
		policy->period_start = tenant.period_start;
		policy->period_end = tenant.period_end;
		policy->plan_mask = pf.plan_mask;
		memcpy(policy->plan_limits, pf.plan_limits, sizeof(policy->plan_limits));
		/* as LoadPolicy: an unlimited plan's unlisted feature */
		if (policy->plan_mask == 0 && tenant.unlimited && policy->feature_exists)
			policy->plan_mask = (uint8) (1 << PERIOD_BILLING);
	}
	return true;
}

/* Note a changed tenant's stripe, to be bumped when this transaction commits */
static void
NoteTenant(const char *tenant_id)
{
	int			stripe = StripeOf(NameHash(tenant_id));

	xact_changed = true;
	if (pending_all)
		return;
	for (int i = 0; i < npending; i++)
		if (pending[i] == stripe)
			return;
	if (npending == SP_MAX_PENDING)
		pending_all = true;
	else
		pending[npending++] = (uint16) stripe;
}

/* This transaction changed a tenant table: it bypasses the shared cache */
void
SharedPolicyNoteChange(void)
{
	xact_changed = true;
}

/* A change to what every tenant's policy depends on */
void
SharedPolicyNoteAll(void)
{
	xact_changed = true;
	pending_all = true;
}

/* Drop every entry now (reset_counters: after rows loaded with triggers off) */
void
SharedPolicyResetAll(void)
{
	if (state != NULL)
		BumpAll();
}

static void
PublishAtXactEnd(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			/* listed before the prepare can be seen committed by anyone */
			if (state != NULL && xact_changed)
				ListPrepared();
			break;
		case XACT_EVENT_PREPARE:
			xact_changed = pending_all = false;
			npending = 0;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* the transaction is visible to new snapshots by now */
			if (state != NULL && xact_changed)
			{
				if (pending_all)
					BumpAll();
				else if (npending > 0)
				{
					for (int i = 0; i < npending; i++)
						pg_atomic_fetch_add_u64(&state->stripes[pending[i]], 1);
					pg_atomic_fetch_add_u64(&state->bumps, 1);
				}
			}
			/* FALLTHROUGH */
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			xact_changed = pending_all = false;
			npending = 0;
			break;
		default:
			break;
	}
}

/* Register the transaction callback (from _PG_init) */
void
SharedPolicyInit(void)
{
	RegisterXactCallback(PublishAtXactEnd, NULL);
}

/* Entries in use and capacity, for shmem_info */
void
SharedPolicyUsage(int64 *used, int64 *capacity, int64 *bytes, int64 *hits, int64 *loads)
{
	*used = *capacity = *bytes = *hits = *loads = 0;
	if (state == NULL)
		return;
	for (int i = 0; i < SP_PARTITIONS; i++)
		LWLockAcquire(&state->locks[i].lock, LW_SHARED);
	*used = hash_get_num_entries(tenants);
	for (int i = SP_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&state->locks[i].lock);
	*capacity = usage_guard_max_tenants;
	*bytes = (int64) SharedPolicyShmemSize();
	*hits = (int64) pg_atomic_read_u64(&state->hits);
	*loads = (int64) pg_atomic_read_u64(&state->loads);
}

/* The tenant_id column of a trigger's row */
static void
NoteRowTenant(Relation rel, HeapTuple tuple)
{
	int			attnum;
	bool		isnull;
	Datum		d;

	if (tuple == NULL)
		return;
	attnum = SPI_fnumber(RelationGetDescr(rel), "tenant_id");
	if (attnum <= 0)
		elog(ERROR, "usage_guard: table \"%s\" has no tenant_id column",
			 RelationGetRelationName(rel));
	d = heap_getattr(tuple, attnum, RelationGetDescr(rel), &isnull);
	if (!isnull)
		NoteTenant(TextDatumGetCString(d));
}

PG_FUNCTION_INFO_V1(usage_guard_tenant_changed);
/*
 * Row trigger on tenant_subscriptions and tenant_overrides: the changed
 * tenants' shared policies are stale once this transaction commits.
 */
Datum
usage_guard_tenant_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trig = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trig->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("usage_guard_tenant_changed must be called as a row trigger")));
	NoteRowTenant(trig->tg_relation, trig->tg_trigtuple);
	if (TRIGGER_FIRED_BY_UPDATE(trig->tg_event))
		NoteRowTenant(trig->tg_relation, trig->tg_newtuple);
	return PointerGetDatum(NULL);
}

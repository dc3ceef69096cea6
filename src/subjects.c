/*
 * subjects.c
 *		Subjects inside a tenant (api_key -> user -> team -> tenant), the
 *		limits that apply to each level of a subject's chain, and leases.
 *
 * A subject's chain and limits are read through SPI as the ledger's owner
 * and cached per backend, keyed by (tenant, subject, feature) and dropped
 * when the policy cache's generation moves (catalog_changed triggers on
 * subjects and subject_limits invalidate it as they do the plan catalog).
 *
 * Leases are rows (usage_guard.leases): durable, so a slot held by a
 * crashed gateway or across a server restart is freed by its TTL, never by
 * accident; release and expiry need no session state (poolers).  Taking a
 * slot at a level serializes on a heavyweight lock per (tenant, holder)
 * held until commit, taken from the top of the chain down, before the
 * engine's key locks (docs/architecture.md, "Lock order").
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "query.h"
#include "subjects.h"

#define SUBJECT_CACHE_MAX 100000
#define UG_LEASE_LOCKTAG_FIELD4 (0x5547 + 2)

static HTAB *subject_cache = NULL;
static uint64 subject_generation = 0;

static CachedQuery chain_query = {
	"WITH RECURSIVE chain AS ("
	"  SELECT s.subject_id, s.level, s.role, s.parent_id, 1 AS depth"
	"    FROM usage_guard.subjects s WHERE s.tenant_id = $1 AND s.subject_id = $2"
	"  UNION ALL"
	"  SELECT p.subject_id, p.level, p.role, p.parent_id, c.depth + 1"
	"    FROM chain c JOIN usage_guard.subjects p"
	"      ON p.tenant_id = $1 AND p.subject_id = c.parent_id"
	"   WHERE c.depth < 3)"
	" SELECT subject_id, level, role FROM chain ORDER BY depth",
	2, {TEXTOID, TEXTOID}
};

/*
 * The limits of each level of a chain ($3..$5, tenant last with subject
 * ''): per level, kind, feature and window, a subject's own row before its
 * role's before its plan's.
 */
static CachedQuery limits_query = {
	"SELECT DISTINCT ON (c.ord, l.limit_kind, coalesce(l.feature_key, ''),"
	"                    coalesce(l.period::text, ''), coalesce(l.per, interval '0'),"
	"                    coalesce(l.rolling, interval '0'))"
	"       c.ord::int4, l.limit_kind, l.feature_key, l.period::text,"
	"       (extract(epoch FROM l.per) * 1000000)::int8,"
	"       l.soft_limit, l.hard_limit, l.burst,"
	"       (extract(epoch FROM l.rolling) * 1000000)::int8,"
	"       l.limit_id, l.action, l.alert_at,"
	"       (extract(epoch FROM l.queue_timeout) * 1000000)::int8, l.queue_depth"
	"  FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS c(subject_id, level, role, ord)"
	"  JOIN usage_guard.subject_limits l ON l.level = c.level"
	"   AND ((l.tenant_id = $1 AND l.subject_id IS NOT DISTINCT FROM nullif(c.subject_id, ''))"
	"        OR (l.role IS NOT NULL AND l.role = c.role)"
	"        OR l.plan_code = $6)"
	" WHERE (l.limit_kind = 'quota' AND l.feature_key = $7)"
	"    OR (l.limit_kind = 'rate' AND (l.feature_key IS NULL OR l.feature_key = $7))"
	"    OR l.limit_kind = 'concurrency'"
	" ORDER BY c.ord, l.limit_kind, coalesce(l.feature_key, ''), coalesce(l.period::text, ''),"
	"          coalesce(l.per, interval '0'), coalesce(l.rolling, interval '0'),"
	"          CASE WHEN l.tenant_id IS NOT NULL THEN 0 WHEN l.role IS NOT NULL THEN 1 ELSE 2 END",
	7, {TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, TEXTOID}
};

static CachedQuery lease_count_query = {
	"SELECT count(*)::int8, min(expires_at), max(expires_at) FROM usage_guard.leases"
	" WHERE tenant_id = $1 AND holder_id = $2 AND released_at IS NULL AND expires_at > $3",
	3, {TEXTOID, TEXTOID, TIMESTAMPTZOID}
};

static CachedQuery lease_insert_query = {
	"INSERT INTO usage_guard.leases"
	" (tenant_id, lease_id, holder_id, level, subject_id, acquired_at, expires_at)"
	" SELECT $1, $2, h.holder, h.level, $3, $4, $5"
	"   FROM unnest($6::text[], $7::text[]) AS h(holder, level)",
	7, {TEXTOID, UUIDOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTARRAYOID, TEXTARRAYOID}
};

static CachedQuery lease_release_query = {
	"UPDATE usage_guard.leases SET released_at = $3"
	" WHERE tenant_id = $1 AND lease_id = $2 AND released_at IS NULL AND expires_at > $3",
	3, {TEXTOID, UUIDOID, TIMESTAMPTZOID}
};

static CachedQuery lease_exists_query = {
	"SELECT 1 FROM usage_guard.leases WHERE tenant_id = $1 AND lease_id = $2 LIMIT 1",
	2, {TEXTOID, UUIDOID}
};

Datum
TextArray(const char *const *items, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		nulls[i] = (items[i] == NULL);
		elems[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(items[i]);
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, TEXTOID, -1, false,
											  TYPALIGN_INT));
}

static Amount
ResultAmount(int row, int col, bool *isnull)
{
	Datum		d = ResultDatum(row, col, isnull);
	Amount		a = 0;

	if (!*isnull && !NumericToAmount(DatumGetNumeric(d), &a))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("a limit in usage_guard.subject_limits has more than %d decimal places",
						AMOUNT_SCALE_DIGITS)));
	return a;
}

static LimitAction
ActionFromName(const char *name)
{
	if (strcmp(name, "alert") == 0)
		return ACTION_ALERT;
	if (strcmp(name, "downgrade") == 0)
		return ACTION_DOWNGRADE;
	if (strcmp(name, "queue") == 0)
		return ACTION_QUEUE;
	return ACTION_BLOCK;
}

/*
 * alert_at as Amounts.  A limit with action alert and no thresholds alerts
 * when it is reached (1.0).
 */
static void
ReadThresholds(Datum d, bool isnull, SubjectLimit *l)
{
	Datum	   *elems;
	bool	   *elnulls;
	int			n;

	l->nthresholds = 0;
	if (isnull)
	{
		if (l->action == ACTION_ALERT)
			l->thresholds[l->nthresholds++] = AMOUNT_ONE;
		return;
	}
	deconstruct_array(DatumGetArrayTypeP(d), NUMERICOID, -1, false, TYPALIGN_INT,
					  &elems, &elnulls, &n);
	for (int i = 0; i < n && l->nthresholds < UG_MAX_THRESHOLDS; i++)
	{
		Amount		a;

		if (elnulls[i] || !NumericToAmount(DatumGetNumeric(elems[i]), &a))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("an alert_at threshold in usage_guard.subject_limits has more than %d decimal places",
							AMOUNT_SCALE_DIGITS)));
		l->thresholds[l->nthresholds++] = a;
	}
}

/* Read a subject's chain and limits from the catalog */
static void
LoadSubjectPolicy(const char *tenant_id, const char *subject_id, const char *feature_key,
				  const char *plan_code, SubjectPolicy *sp)
{
	Datum		values[7];
	char		nulls[7];
	const char *ids[UG_MAX_LEVELS];
	const char *levels[UG_MAX_LEVELS];
	const char *roles[UG_MAX_LEVELS];
	InternalContext ctx;

	memset(nulls, ' ', sizeof(nulls));
	sp->exists = false;
	sp->nlevels = 0;
	sp->nlimits = 0;

	SPI_connect();
	BeginInternal(&ctx, true);
	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(subject_id);
	RunQuery(&chain_query, values, NULL, true, 0);
	for (uint64 i = 0; i < SPI_processed && i < UG_MAX_LEVELS - 1; i++)
	{
		SubjectLevel *lv = &sp->levels[sp->nlevels++];
		bool		isnull;
		char	   *role = ResultText(i, 3, &isnull);

		strlcpy(lv->subject_id, ResultText(i, 1, &isnull), sizeof(lv->subject_id));
		strlcpy(lv->level, ResultText(i, 2, &isnull), sizeof(lv->level));
		lv->has_role = (role != NULL);
		strlcpy(lv->role, role ? role : "", sizeof(lv->role));
	}
	sp->exists = (sp->nlevels > 0);
	if (sp->exists)
	{
		SubjectLevel *tenant = &sp->levels[sp->nlevels++];

		tenant->subject_id[0] = '\0';
		strlcpy(tenant->level, "tenant", sizeof(tenant->level));
		tenant->has_role = false;
		tenant->role[0] = '\0';
		for (int i = 0; i < sp->nlevels; i++)
		{
			ids[i] = sp->levels[i].subject_id;
			levels[i] = sp->levels[i].level;
			roles[i] = sp->levels[i].has_role ? sp->levels[i].role : NULL;
		}
		values[2] = TextArray(ids, sp->nlevels);
		values[3] = TextArray(levels, sp->nlevels);
		values[4] = TextArray(roles, sp->nlevels);
		values[5] = plan_code ? CStringGetTextDatum(plan_code) : (Datum) 0;
		nulls[5] = plan_code ? ' ' : 'n';
		values[6] = feature_key ? CStringGetTextDatum(feature_key) : (Datum) 0;
		nulls[6] = feature_key ? ' ' : 'n';
		RunQuery(&limits_query, values, nulls, true, 0);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			SubjectLimit *l;
			bool		isnull;
			char	   *kind;
			Datum		alert_at;

			if (sp->nlimits >= UG_MAX_SUBJECT_LIMITS)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("too many limits apply to subject \"%s\" of tenant \"%s\"",
								subject_id, tenant_id),
						 errdetail("At most %d limits over all levels are supported.",
								   UG_MAX_SUBJECT_LIMITS)));
			l = &sp->limits[sp->nlimits++];
			memset(l, 0, sizeof(SubjectLimit));
			l->level = DatumGetInt32(ResultDatum(i, 1, &isnull)) - 1;
			kind = ResultText(i, 2, &isnull);
			l->kind = strcmp(kind, "quota") == 0 ? LIMIT_QUOTA :
				strcmp(kind, "rate") == 0 ? LIMIT_RATE : LIMIT_CONCURRENCY;
			(void) ResultText(i, 3, &isnull);
			l->counts_requests = isnull;
			if (l->kind == LIMIT_QUOTA)
			{
				char	   *period = ResultText(i, 4, &isnull);

				if (isnull)
					l->rolling = DatumGetInt64(ResultDatum(i, 9, &isnull));
				else if (!PeriodKindFromName(period, &l->period))
					elog(ERROR, "usage_guard: unknown period \"%s\"", period);
			}
			if (l->kind == LIMIT_RATE)
				l->length = DatumGetInt64(ResultDatum(i, 5, &isnull));
			l->limits.soft = ResultAmount(i, 6, &isnull);
			l->limits.has_soft = !isnull;
			l->limits.hard = ResultAmount(i, 7, &isnull);
			l->limits.has_hard = !isnull;
			l->burst = ResultAmount(i, 8, &isnull);
			if (isnull)
				l->burst = l->limits.hard;
			l->limit_id = DatumGetInt64(ResultDatum(i, 10, &isnull));
			l->action = ActionFromName(ResultText(i, 11, &isnull));
			alert_at = ResultDatum(i, 12, &isnull);
			ReadThresholds(alert_at, isnull, l);
			l->queue_timeout = DatumGetInt64(ResultDatum(i, 13, &isnull));
			if (isnull)
				l->queue_timeout = 0;
			l->queue_depth = DatumGetInt32(ResultDatum(i, 14, &isnull));
			if (isnull)
				l->queue_depth = 0;
		}
	}
	EndInternal(&ctx);
	SPI_finish();
}

/* Hash and compare the three names of a cache key */
static uint32
SubjectKeyHash(const void *key, Size keysize)
{
	const char *k = key;
	uint32		h = hash_bytes((const unsigned char *) k, strlen(k));

	for (int i = 1; i < 3; i++)
	{
		const char *s = k + i * (UG_NAME_MAX + 1);

		h = hash_combine(h, hash_bytes((const unsigned char *) s, strlen(s)));
	}
	return h;
}

static int
SubjectKeyMatch(const void *key1, const void *key2, Size keysize)
{
	for (int i = 0; i < 3; i++)
		if (strcmp((const char *) key1 + i * (UG_NAME_MAX + 1),
				   (const char *) key2 + i * (UG_NAME_MAX + 1)) != 0)
			return 1;
	return 0;
}

/*
 * The chain and limits of a subject for a feature (NULL: none), from the
 * per-backend cache.  A committed catalog change moves the generation and
 * empties it.
 */
void
GetSubjectPolicy(const char *tenant_id, const char *subject_id, const char *feature_key,
				 const char *plan_code, SubjectPolicy *sp)
{
	char		key[3 * (UG_NAME_MAX + 1)];
	SubjectPolicy *entry;
	bool		found;
	uint64		generation;

	memset(key, 0, sizeof(key));
	strlcpy(key, tenant_id, UG_NAME_MAX + 1);
	strlcpy(key + UG_NAME_MAX + 1, subject_id, UG_NAME_MAX + 1);
	strlcpy(key + 2 * (UG_NAME_MAX + 1), feature_key ? feature_key : "", UG_NAME_MAX + 1);

	/* the generation moves on invalidation; read it after the caller's GetPolicy */
	generation = CacheGeneration();
	if (subject_cache != NULL &&
		(subject_generation != generation || hash_get_num_entries(subject_cache) >= SUBJECT_CACHE_MAX))
	{
		hash_destroy(subject_cache);
		subject_cache = NULL;
	}
	if (subject_cache == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(key);
		info.entrysize = sizeof(SubjectPolicy);
		info.hash = SubjectKeyHash;
		info.match = SubjectKeyMatch;
		info.hcxt = CacheMemoryContext;
		subject_cache = hash_create("usage_guard subjects", 256, &info,
									HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
		subject_generation = generation;
	}
	entry = hash_search(subject_cache, key, HASH_FIND, &found);
	if (entry != NULL)
	{
		memcpy(sp, entry, sizeof(SubjectPolicy));
		return;
	}
	memcpy(sp->key, key, sizeof(key));
	LoadSubjectPolicy(tenant_id, subject_id, feature_key, plan_code, sp);
	/* an invalidation during the load: use the result once, cache nothing */
	if (CacheGeneration() != generation || subject_cache == NULL)
		return;
	entry = hash_search(subject_cache, key, HASH_ENTER, &found);
	memcpy(entry, sp, sizeof(SubjectPolicy));
}

static void
LeaseHolderTag(LOCKTAG *tag, const char *tenant_id, const char *holder_id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId,
						 hash_bytes((const unsigned char *) tenant_id, strlen(tenant_id)),
						 hash_bytes((const unsigned char *) holder_id, strlen(holder_id)),
						 UG_LEASE_LOCKTAG_FIELD4);
}

/* Serialize lease takers of one holder until commit (lock order: before key locks) */
static void
LockLeaseHolder(const char *tenant_id, const char *holder_id)
{
	LOCKTAG		tag;

	LeaseHolderTag(&tag, tenant_id, holder_id);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Give back the lease-holder locks a refused request took (CountRequestLeases),
 * before it waits in a queue: a lock taken earlier in the transaction stays
 * (the lock manager counts acquisitions).
 */
void
UnlockRequestLeases(const EngineRequest *r)
{
	for (int i = 0; i < r->nlimits; i++)
	{
		const FeatureLimit *l = &r->limits[i];
		LOCKTAG		tag;

		if (l->kind != LIMIT_CONCURRENCY)
			continue;
		LeaseHolderTag(&tag, r->tenant_id, l->subject_id ? l->subject_id : "");
		(void) LockRelease(&tag, ExclusiveLock, false);
	}
}

/*
 * Fill a concurrency limit's state: the live leases of its holder (latest
 * snapshot), the first expiry (when a slot frees by TTL at the latest) and
 * the last.  Takes the holder's lease lock first, held until the
 * transaction ends, so the count stays true until this one commits.
 */
void
CountLeases(const char *tenant_id, const char *holder_id, TimestampTz at, FeatureLimit *l)
{
	Datum		values[3];
	bool		isnull;
	InternalContext ctx;

	LockLeaseHolder(tenant_id, holder_id);
	SPI_connect();
	BeginInternal(&ctx, true);
	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(holder_id);
	values[2] = TimestampTzGetDatum(at);
	RunQueryLatest(&lease_count_query, values, NULL, 1);
	EndInternal(&ctx);
	l->usage = (Amount) DatumGetInt64(ResultDatum(0, 1, &isnull)) * AMOUNT_ONE;
	l->free_at = DatumGetTimestampTz(ResultDatum(0, 2, &isnull));
	if (isnull)
		l->free_at = at;
	l->reset_at = DatumGetTimestampTz(ResultDatum(0, 3, &isnull));
	if (isnull)
		l->reset_at = at;
	SPI_finish();
}

/* A new lease id (a version 4 UUID) as text */
char *
NewUuid(void)
{
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random lease id")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(uuid)));
}

/* Write a lease: one row per level of the chain; returns its id */
char *
InsertLease(const char *tenant_id, const SubjectPolicy *sp, TimestampTz at, TimestampTz expires)
{
	const char *holders[UG_MAX_LEVELS];
	const char *levels[UG_MAX_LEVELS];
	Datum		values[7];
	char	   *id = NewUuid();
	InternalContext ctx;

	for (int i = 0; i < sp->nlevels; i++)
	{
		holders[i] = sp->levels[i].subject_id;
		levels[i] = sp->levels[i].level;
	}
	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = DirectFunctionCall1(uuid_in, CStringGetDatum(id));
	values[2] = CStringGetTextDatum(sp->levels[0].subject_id);
	values[3] = TimestampTzGetDatum(at);
	values[4] = TimestampTzGetDatum(expires);
	values[5] = TextArray(holders, sp->nlevels);
	values[6] = TextArray(levels, sp->nlevels);
	SPI_connect();
	BeginInternal(&ctx, true);
	RunQuery(&lease_insert_query, values, NULL, false, 0);
	EndInternal(&ctx);
	SPI_finish();
	return id;
}

/*
 * Release a lease: true if it was live; false if already released or
 * expired (release is idempotent); an unknown lease id is an error.
 */
bool
ReleaseLease(const char *tenant_id, Datum lease_id, TimestampTz at)
{
	Datum		values[3];
	bool		released;
	bool		exists = true;
	InternalContext ctx;

	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = lease_id;
	values[2] = TimestampTzGetDatum(at);
	SPI_connect();
	BeginInternal(&ctx, true);
	RunQuery(&lease_release_query, values, NULL, false, 0);
	released = (SPI_processed > 0);
	if (!released)
	{
		RunQueryLatest(&lease_exists_query, values, NULL, 1);
		exists = (SPI_processed > 0);
	}
	EndInternal(&ctx);
	SPI_finish();
	if (!exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("lease %s of tenant \"%s\" does not exist",
						DatumGetCString(DirectFunctionCall1(uuid_out, lease_id)), tenant_id),
				 errhint("A lease id is returned by lease_acquire or request_consume(lease_ttl => ...).")));
	return released;
}

/*
 * The limits of a subject's chain for one feature as part of an engine
 * request: the tenant's plan quotas of the feature and every subject_limits
 * row in force, each on the counter key of its level (quotas and feature
 * rates on the feature's key, charged `amount`; request rates on the
 * level's request key ""); concurrency limits carry no key.  Request rates
 * and concurrency limits belong to the request, not to a feature: only the
 * first feature of a request (`per_request`) adds them.  Targets are added
 * from the tenant down, the order their key locks are taken in.
 */
void
BuildFeatureRequest(EngineRequest *r, const SubjectPolicy *sp, const char *feature_key,
					Amount amount, const Policy *policy, bool quotas, bool rates,
					bool per_request)
{
	int			feature_target[UG_MAX_LEVELS];
	int			request_target[UG_MAX_LEVELS];

	for (int i = sp->nlevels - 1; i >= 0; i--)
	{
		const char *subject = sp->levels[i].subject_id[0] ? sp->levels[i].subject_id : NULL;
		bool		feature_rates = false;

		feature_target[i] = request_target[i] = -1;
		for (int k = 0; rates && !quotas && feature_key && k < sp->nlimits; k++)
			feature_rates |= (sp->limits[k].level == i && sp->limits[k].kind == LIMIT_RATE &&
							  !sp->limits[k].counts_requests);
		if (quotas || feature_rates)
		{
			feature_target[i] = EngineAddTarget(r, subject, feature_key, quotas);
			r->targets[feature_target[i]].amount = amount;
		}
	}
	if (quotas)
		EngineAddTenantQuotas(r, feature_target[sp->nlevels - 1], policy);
	for (int k = 0; k < sp->nlimits; k++)
	{
		const SubjectLimit *sl = &sp->limits[k];
		const SubjectLevel *lv = &sp->levels[sl->level];
		const char *subject = lv->subject_id[0] ? lv->subject_id : NULL;
		int			target = -1;
		FeatureLimit *l;

		if ((sl->kind == LIMIT_QUOTA && !quotas) || (sl->kind == LIMIT_RATE && !rates))
			continue;
		if (!per_request && (sl->kind == LIMIT_CONCURRENCY ||
							 (sl->kind == LIMIT_RATE && sl->counts_requests)))
			continue;
		if (sl->kind == LIMIT_RATE && sl->counts_requests)
		{
			if (request_target[sl->level] < 0)
				request_target[sl->level] = EngineAddTarget(r, subject, "", false);
			target = request_target[sl->level];
		}
		else if (sl->kind != LIMIT_CONCURRENCY)
			target = feature_target[sl->level];
		l = EngineAddLimit(r, target, sl->kind, lv->level, subject);
		l->period = sl->period;
		l->length = sl->kind == LIMIT_QUOTA ? sl->rolling : sl->length;
		l->limits = sl->limits;
		l->burst = sl->burst;
		l->limit_id = sl->limit_id;
		l->action = sl->action;
		l->nthresholds = sl->nthresholds;
		l->queue_timeout = sl->queue_timeout;
		l->queue_depth = sl->queue_depth;
		memcpy(l->thresholds, sl->thresholds, sizeof(l->thresholds));
		if (sl->kind == LIMIT_RATE)
		{
			l->unit = sl->counts_requests ? "requests" : feature_key;
			l->requested = sl->counts_requests ? AMOUNT_ONE : amount;
		}
		if (sl->kind == LIMIT_CONCURRENCY)
			l->unit = "requests";
	}
}


/* Fill every concurrency limit from the leases table (lease locks, top down) */
bool
CountRequestLeases(EngineRequest *r, const SubjectPolicy *sp)
{
	bool		any = false;

	for (int i = r->nlimits - 1; i >= 0; i--)
	{
		FeatureLimit *l = &r->limits[i];

		if (l->kind != LIMIT_CONCURRENCY)
			continue;
		CountLeases(r->tenant_id, l->subject_id ? l->subject_id : "", r->at, l);
		any = true;
	}
	return any;
}


/* The subjects of a chain, most specific first (a ledger row's subject_path) */
Datum
SubjectPathDatum(const SubjectPolicy *sp)
{
	const char *path[UG_MAX_LEVELS];
	int			n = 0;

	for (int i = 0; i < sp->nlevels; i++)
		if (sp->levels[i].subject_id[0] != '\0')
			path[n++] = sp->levels[i].subject_id;
	return TextArray(path, n);
}

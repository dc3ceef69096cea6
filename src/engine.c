/*
 * engine.c
 *		The decision engine: reads the state of every limit of a request
 *		(quota windows and rate-limit state in shared memory, or the ledger),
 *		judges them all at once (decision.c) and, for consume, charges every
 *		level in the same critical section.  api.c and subjects.c build the
 *		request (which keys, which limits); this file owns the protocol.
 *
 * Lock rules (docs/architecture.md, "The decision engine"), asserted below:
 *	1. Heavyweight key locks first: every charged key in RowExclusiveLock,
 *	   taken in target order (tenant, then team, user, api key) and held
 *	   until the transaction ends.  Missing windows are loaded (which may
 *	   wait for ExclusiveLock) before any of them is taken.
 *	2. Then the partition LWLocks of every target, distinct, in ascending
 *	   partition order, all at once: the decision over all levels is one
 *	   critical section.  No SPI, no heavyweight lock, no palloc that could
 *	   fail halfway while they are held (EvaluateLimits allocates its result
 *	   first thing, before any state changes).
 *	3. Released in reverse order before anything else is done.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"

#include "engine.h"

static bool not_preloaded_reported = false;

void
EngineInit(EngineRequest *r, const char *tenant_id, const char *plan_code,
		   const char *feature_key, const Policy *policy, TimestampTz at, Amount amount)
{
	memset(r, 0, offsetof(EngineRequest, targets));
	r->ntargets = 0;
	r->nlimits = 0;
	r->tenant_id = tenant_id;
	r->plan_code = plan_code;
	r->feature_key = feature_key;
	r->policy = policy;
	r->at = at;
	r->amount = amount;
	r->quotas = true;
}

/* Add a counter key; returns its index */
int
EngineAddTarget(EngineRequest *r, const char *subject_id, const char *feature_key, bool charge)
{
	EngineTarget *t;

	if (r->ntargets >= UG_MAX_TARGETS)
		elog(ERROR, "usage_guard: too many counter keys in one request");
	t = &r->targets[r->ntargets];
	memset(t, 0, sizeof(EngineTarget));
	MakeCounterKey(&t->key, CountersUsable() ? LedgerRelid() : InvalidOid, r->tenant_id,
				   subject_id, feature_key);
	t->hash = CounterKeyHash(&t->key);
	t->charge = charge;
	t->amount = r->amount;
	t->feature_key = feature_key ? feature_key : "";
	return r->ntargets++;
}

/* Add a limit of `kind` at a level; the caller fills its limits and period */
FeatureLimit *
EngineAddLimit(EngineRequest *r, int target, LimitKind kind, const char *level,
			   const char *subject_id)
{
	FeatureLimit *l;

	if (r->nlimits >= UG_MAX_LIMITS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many limits apply to one request"),
				 errdetail("At most %d limits over all levels of a subject are supported.",
						   UG_MAX_LIMITS)));
	l = &r->limits[r->nlimits++];
	memset(l, 0, sizeof(FeatureLimit));
	l->kind = kind;
	l->level = level;
	l->subject_id = subject_id;
	l->target = target;
	l->unit = r->feature_key;
	l->requested = (kind == LIMIT_QUOTA) ? r->amount : AMOUNT_ONE;
	if (target >= 0)
	{
		/* a request of several features: each target has its own amount */
		if (r->targets[target].feature_key[0] != '\0')
			l->unit = r->targets[target].feature_key;
		if (kind == LIMIT_QUOTA)
			l->requested = r->targets[target].amount;
		if (kind == LIMIT_QUOTA)
			r->targets[target].has_windows = true;
		else if (kind == LIMIT_RATE)
			r->targets[target].has_rates = true;
	}
	return l;
}

/* The tenant's plan limits (with overrides) of a target's feature (its policy) */
void
EngineAddTenantQuotas(EngineRequest *r, int target, const Policy *policy)
{
	FeatureLimit tmp[PERIOD_KINDS];
	int			n = EffectiveLimits(policy, r->at, tmp);

	for (int i = 0; i < n; i++)
	{
		FeatureLimit *l = EngineAddLimit(r, target, LIMIT_QUOTA, "tenant", NULL);

		l->period = tmp[i].period;
		l->limits = tmp[i].limits;
	}
}

/* Say once per backend why decisions take the table path */
void
EngineReportTablePath(void)
{
	/* during recovery the table path is by design, not for lack of preload */
	if (!CountersAvailable() && !not_preloaded_reported)
	{
		not_preloaded_reported = true;
		ereport(LOG,
				(errmsg("usage_guard: not loaded by shared_preload_libraries; decisions use the table path"),
				 errhint("Add usage_guard to shared_preload_libraries and restart for the shared-memory fast path.")));
	}
}

/* Windows of quotas at `at`; rate limits are judged at `at` */
static void
PrepareLimits(EngineRequest *r)
{
	for (int i = 0; i < r->nlimits; i++)
	{
		FeatureLimit *l = &r->limits[i];

		if (l->kind == LIMIT_QUOTA && l->length > 0)
		{
			/* a rolling window's identity among its key's windows */
			l->window_start = UG_ROLLING_START;
			l->window_end = l->length;
		}
		else if (l->kind == LIMIT_QUOTA)
			PeriodWindow(l->period, r->policy, r->at, &l->window_start, &l->window_end);
		else if (l->kind == LIMIT_RATE)
		{
			l->window_start = r->at;
			l->window_end = r->at + l->length;
		}
	}
}

/* A target's current quota windows, then (with_next) the next window of each */
static int
TargetWindows(const EngineRequest *r, int target, TimestampTz *starts, TimestampTz *ends,
			  bool with_next, int *ncurrent)
{
	int			m = 0;

	for (int i = 0; i < r->nlimits; i++)
	{
		const FeatureLimit *l = &r->limits[i];

		if (l->target != target || l->kind != LIMIT_QUOTA || m >= UG_MAX_LOAD)
			continue;
		starts[m] = l->window_start;
		ends[m] = l->window_end;
		m++;
	}
	*ncurrent = m;
	for (int i = 0; with_next && i < r->nlimits; i++)
	{
		const FeatureLimit *l = &r->limits[i];

		if (l->target != target || l->kind != LIMIT_QUOTA || l->period == PERIOD_LIFETIME ||
			l->length > 0 || m >= UG_MAX_LOAD)
			continue;
		PeriodWindow(l->period, r->policy, l->window_end, &starts[m], &ends[m]);
		m++;
	}
	return m;
}

/*
 * Is one of a target's next windows (the period after the current one)
 * not in shared memory yet?  Under its partition lock.
 */
static bool
NextWindowsMissing(const EngineRequest *r, int t)
{
	const EngineTarget *tg = &r->targets[t];
	TimestampTz starts[UG_MAX_LOAD],
				ends[UG_MAX_LOAD];
	int			ncur;
	int			m;
	CounterEntry *entry;

	if (!tg->has_windows)
		return false;
	Assert(LWLockHeldByMe(CounterPartitionLock(tg->hash)));
	m = TargetWindows(r, t, starts, ends, true, &ncur);
	entry = CounterLookup(&tg->key, tg->hash);
	/* only where it can be kept: a window loaded ahead displaces nothing */
	for (int i = ncur; i < m; i++)
		if (entry == NULL ||
			(CounterFindWindow(entry, starts[i], ends[i]) == NULL &&
			 CounterWindowRoom(entry, r->at, starts[i])))
			return true;
	return false;
}

/* The distinct partitions of the targets, ascending (lock rule 2) */
static int
Partitions(const EngineRequest *r, int *parts)
{
	int			n = 0;

	for (int t = 0; t < r->ntargets; t++)
	{
		int			p = r->targets[t].hash % UG_NUM_PARTITIONS;
		int			j = n;

		for (int k = 0; k < n; k++)
			if (parts[k] == p)
				j = -1;
		if (j < 0)
			continue;
		/* insertion sort: at most UG_MAX_TARGETS */
		while (j > 0 && parts[j - 1] > p)
		{
			parts[j] = parts[j - 1];
			j--;
		}
		parts[j] = p;
		n++;
	}
	return n;
}

static LWLock *
PartitionLock(int part)
{
	return CounterPartitionLock((uint32) part);
}

static void
LockPartitions(const int *parts, int n, LWLockMode mode)
{
	for (int i = 0; i < n; i++)
	{
		Assert(i == 0 || parts[i - 1] < parts[i]);
		Assert(!LWLockHeldByMe(PartitionLock(parts[i])));
		LWLockAcquire(PartitionLock(parts[i]), mode);
	}
}

static void
UnlockPartitions(const int *parts, int n)
{
	for (int i = n - 1; i >= 0; i--)
		LWLockRelease(PartitionLock(parts[i]));
}

/* Emission interval of a rate limit: microseconds per unit */
static double
Emission(const FeatureLimit *l)
{
	return (double) l->length * (double) AMOUNT_ONE / (double) l->limits.hard;
}

/*
 * Read the state of every limit from shared memory, under the partition
 * locks.  Quotas (when `quotas`) from their windows: false if a window is
 * missing (missing[t] set).  Rate limits from their entry's GCRA state; a
 * key never seen is a rate limit with nothing recent, unless the caller is
 * about to advance it (`rate_entries`): then its entry is missing too.
 */
static bool
ReadState(EngineRequest *r, bool quotas, bool rate_entries, bool *missing)
{
	bool		ok = true;

	for (int t = 0; t < r->ntargets; t++)
	{
		EngineTarget *tg = &r->targets[t];
		CounterEntry *entry;

		Assert(LWLockHeldByMe(CounterPartitionLock(tg->hash)));
		missing[t] = false;
		if (!tg->has_windows && !tg->has_rates)
			continue;
		entry = CounterLookup(&tg->key, tg->hash);
		if ((entry == NULL || !CounterRateRoom(entry)) && rate_entries && tg->has_rates)
		{
			missing[t] = true;
			ok = false;
		}
		for (int i = 0; i < r->nlimits; i++)
		{
			FeatureLimit *l = &r->limits[i];

			if (l->target != t)
				continue;
			if (l->kind == LIMIT_QUOTA && quotas)
			{
				CounterWindow *w = entry ? CounterFindWindow(entry, l->window_start, l->window_end) : NULL;

				if (w == NULL)
				{
					missing[t] = true;
					ok = false;
				}
				else if (w->ring >= 0)
					l->usage = RingUsage(w, r->at,
										 l->limits.has_hard ? l->limits.hard : l->limits.soft,
										 l->requested, &l->free_at, &l->reset_at);
				else
					l->usage = w->usage + w->reserved;
			}
			else if (l->kind == LIMIT_RATE)
			{
				CounterRate *rate = entry ? CounterFindRate(entry, l->length, false) : NULL;

				RateState(l, rate ? rate->tat : 0, r->at);
			}
		}
		if (entry != NULL)
			CounterTouch(entry);
	}
	return ok;
}

/*
 * Charge an allowed request, still under the partition locks (exclusive):
 * count the write at every charged level (quotas) and advance every rate
 * limit's theoretical arrival time.
 */
static void
Apply(EngineRequest *r, bool count)
{
	for (int t = 0; t < r->ntargets; t++)
	{
		EngineTarget *tg = &r->targets[t];
		CounterEntry *entry;

		Assert(LWLockHeldByMeInMode(CounterPartitionLock(tg->hash), LW_EXCLUSIVE));
		if (!tg->charge && !tg->has_rates)
			continue;
		entry = CounterLookup(&tg->key, tg->hash);
		if (tg->charge && count)
			tg->write = CountWrite(entry, &tg->key, tg->hash, r->at, tg->amount, r->undoable);
		for (int i = 0; entry != NULL && i < r->nlimits; i++)
		{
			FeatureLimit *l = &r->limits[i];
			CounterRate *rate;

			if (l->target != t || l->kind != LIMIT_RATE)
				continue;
			rate = CounterFindRate(entry, l->length, true);
			if (rate != NULL)
				rate->tat = Max(rate->tat, (double) r->at) +
					(double) l->requested / (double) AMOUNT_ONE * Emission(l);
		}
	}
}

static Decision *
Evaluate(EngineRequest *r)
{
	/* a feature without limits is not included, unless its quotas are not asked about */
	Decision   *d = EvaluateLimits(r->tenant_id, r->plan_code, r->quotas ? r->feature_key : NULL,
								   r->limits, r->nlimits, r->amount, r->at);

	d->feature_key = r->feature_key;
	return d;
}

/*
 * Load what shared memory lacks for a target: its quota windows (current,
 * and with `next` the next ones too) and, for rate state, its entry.
 */
static bool
LoadTarget(EngineRequest *r, int t, bool wait, bool next)
{
	EngineTarget *tg = &r->targets[t];
	TimestampTz starts[UG_MAX_LOAD],
				ends[UG_MAX_LOAD];
	int			ncur;
	int			m;

	if (tg->has_windows)
	{
		m = TargetWindows(r, t, starts, ends, next, &ncur);
		if (!LoadWindows(&tg->key, tg->hash, starts, ends, m, ncur, wait, r->at))
			return false;
	}
	if (tg->has_rates && !CounterEnsureEntry(&tg->key, tg->hash, true))
		return false;
	return true;
}

/* Usage of each quota from the ledger (committed and own rows) */
static void
TableRead(EngineRequest *r)
{
	SPI_connect();
	for (int i = 0; i < r->nlimits; i++)
	{
		FeatureLimit *l = &r->limits[i];

		if (l->kind != LIMIT_QUOTA || l->target < 0)
			continue;
		if (l->length > 0)
		{
			/* the ring's rule: since the start of the bucket L before `at` */
			int64		g = RollingGranularity(l->length);
			int64		a = BucketOf(r->at, g);

			l->usage = LedgerWindowSum(r->tenant_id, r->targets[l->target].key.subject_id,
									   r->targets[l->target].feature_key, a * g - l->length,
									   DT_NOEND);
			/* without the buckets: everything has left one window later */
			l->free_at = l->reset_at = (a + 1) * g + l->length;
			continue;
		}
		l->usage = LedgerWindowSum(r->tenant_id, r->targets[l->target].key.subject_id,
								   r->targets[l->target].feature_key, l->window_start,
								   l->window_end);
	}
	SPI_finish();
}

/* Rate limits need the shared state; without preload they cannot be kept */
static void
RequireRateState(EngineRequest *r)
{
	for (int t = 0; t < r->ntargets; t++)
		if (r->targets[t].has_rates && !CountersAvailable())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("rate limits need usage_guard in shared_preload_libraries"),
					 errhint("Add usage_guard to shared_preload_libraries and restart.")));
}

/*
 * A decision without side effects (usage_check, request_check): from
 * shared memory where the windows are there or can be loaded without
 * waiting, else from the ledger.  Rate state is read, never advanced.
 */
Decision *
EngineCheck(EngineRequest *r)
{
	int			parts[UG_MAX_TARGETS];
	int			nparts = Partitions(r, parts);
	bool		missing[UG_MAX_TARGETS];
	bool		ok = false;

	PrepareLimits(r);
	/* not the tenant's node (citus.c): the ledger through Citus */
	if (CountersUsable() && TenantCountedHere(r->tenant_id))
	{
		for (int attempt = 0; attempt < 2 && !ok; attempt++)
		{
			LockPartitions(parts, nparts, LW_SHARED);
			ok = ReadState(r, true, false, missing);
			UnlockPartitions(parts, nparts);
			for (int t = 0; !ok && attempt == 0 && t < r->ntargets; t++)
				if (missing[t] && !LoadTarget(r, t, false, false))
					break;
		}
	}
	else
		EngineReportTablePath();
	if (!ok)
		TableRead(r);
	return Evaluate(r);
}

static void ReleaseKeyLocks(EngineRequest *r, LOCKMODE mode);

/*
 * Decide and, when allowed, charge every level in shared memory at once.
 * False: shared memory cannot hold the state (the caller takes the table
 * path).
 */
static bool
FastConsume(EngineRequest *r, Decision **d)
{
	int			parts[UG_MAX_TARGETS];
	int			nparts = Partitions(r, parts);
	bool		missing[UG_MAX_TARGETS];

	/*
	 * Load missing windows before taking any writer lock: concurrent first
	 * consumers of a key then queue for the loader lock one after another.
	 * A consumer that held the writer lock while asking for the loader lock
	 * would deadlock with another doing the same.
	 */
	LockPartitions(parts, nparts, LW_SHARED);
	(void) ReadState(r, true, true, missing);
	UnlockPartitions(parts, nparts);
	for (int t = 0; t < r->ntargets; t++)
		if (missing[t] && !LoadTarget(r, t, true, true))
			return false;

	/* rule 1: a writer holds this until its transaction ends: loaders wait for it */
	for (int t = 0; t < r->ntargets; t++)
		if (r->targets[t].charge)
			r->targets[t].key_locked =
				LockCounterKey(&r->targets[t].key, r->targets[t].hash, RowExclusiveLock);

	for (int attempt = 0; attempt < 3; attempt++)
	{
		bool		next_missing[UG_MAX_TARGETS];

		LockPartitions(parts, nparts, LW_EXCLUSIVE);
		if (ReadState(r, true, true, missing))
		{
			*d = Evaluate(r);
			if ((*d)->allowed)
				Apply(r, true);
			for (int t = 0; t < r->ntargets; t++)
				next_missing[t] = NextWindowsMissing(r, t);
			UnlockPartitions(parts, nparts);
			/*
			 * Refused: nothing of this call is in flight, so its writer locks
			 * go now (a lock held by an earlier write of the transaction stays:
			 * the lock manager counts acquisitions).  Otherwise an idle
			 * transaction whose request was refused would block window loads.
			 */
			if (!(*d)->allowed)
				ReleaseKeyLocks(r, RowExclusiveLock);
			/* have the next windows ready before their period starts */
			for (int t = 0; t < r->ntargets; t++)
				if (next_missing[t])
					(void) LoadTarget(r, t, false, true);
			return true;
		}
		UnlockPartitions(parts, nparts);
		/* evicted meanwhile: holding the writer lock, never wait for the loader lock */
		for (int t = 0; t < r->ntargets; t++)
			if (missing[t] && !LoadTarget(r, t, false, false))
				return false;
	}
	return false;
}

/* Give back the key locks this call took on its charged targets */
static void
ReleaseKeyLocks(EngineRequest *r, LOCKMODE mode)
{
	for (int t = r->ntargets - 1; t >= 0; t--)
		if (r->targets[t].charge && (mode != RowExclusiveLock || r->targets[t].key_locked))
			UnlockCounterKey(&r->targets[t].key, r->targets[t].hash, mode);
	/* the table path's side of escalation (TableConsume) */
	if (mode == ExclusiveLock)
		UnlockLedgerWide();
}

/*
 * The table path: consumers of these keys take turns until they commit
 * (ExclusiveLock, in target order), usage from the ledger.  Rate state is
 * still kept in shared memory when there is any.
 */
static Decision *
TableConsume(EngineRequest *r)
{
	int			parts[UG_MAX_TARGETS];
	int			nparts = Partitions(r, parts);
	bool		missing[UG_MAX_TARGETS];
	bool		usable = CountersUsable();
	Decision   *d;

	for (int t = 0; t < r->ntargets; t++)
	{
		if (r->targets[t].charge)
			LockCounterKey(&r->targets[t].key, r->targets[t].hash, ExclusiveLock);
		/* a rate limit without state would let every request through: refuse to go on */
		if (usable && r->targets[t].has_rates &&
			!CounterEnsureEntry(&r->targets[t].key, r->targets[t].hash, true))
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no room in shared memory for the rate-limit state of tenant \"%s\"",
							r->tenant_id),
					 errdetail("Every extension slot holds windows or rate state in flight."),
					 errhint("Raise usage_guard.max_counter_extensions or usage_guard.max_counters and restart.")));
	}
	/* writers that escalated to the ledger-wide lock hold no key lock to wait for */
	(void) LockLedgerWide(true);
	TableRead(r);
	if (!usable)
	{
		EngineReportTablePath();
		d = Evaluate(r);
		if (!d->allowed)
			ReleaseKeyLocks(r, ExclusiveLock);
		return d;
	}
	LockPartitions(parts, nparts, LW_EXCLUSIVE);
	(void) ReadState(r, false, false, missing);
	d = Evaluate(r);
	if (d->allowed)
		Apply(r, true);
	UnlockPartitions(parts, nparts);
	if (!d->allowed)
		ReleaseKeyLocks(r, ExclusiveLock);
	return d;
}

/*
 * Decide a request and, when allowed, charge it at every level: in shared
 * memory when it can hold the state, else by the table path.  The caller
 * writes the ledger row afterwards (and undoes the writes of a duplicate).
 */
Decision *
EngineConsume(EngineRequest *r)
{
	Decision   *d = NULL;

	PrepareLimits(r);
	RequireTenantCountedHere(r->tenant_id);
	RequireRateState(r);
	if (CountersUsable() && FastConsume(r, &d))
		return d;
	return TableConsume(r);
}

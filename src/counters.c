/*
 * counters.c
 *		The live usage counters in shared memory: a hash from (database,
 *		ledger, tenant, feature) to up to UG_MAX_WINDOWS windows, each with
 *		committed usage, in-flight reservations and in-flight credits.
 *
 * Locking rules (see docs/architecture.md for the protocol around them):
 * - The hash is partitioned over UG_NUM_PARTITIONS LWLocks; the partition is
 *   the low bits of the key's hash value, so all windows of a key are under
 *   one lock and a decision over several windows is atomic.
 * - Lookups take their partition lock shared; inserting a key, changing a
 *   window or removing a key take it exclusive.
 * - Scans of the whole table (eviction, snapshots for the usage_counters
 *   view and reset_counters) take every partition lock in ascending order.
 * - Nothing is added during recovery (CountersUsable).
 * - A window is only created by a loader holding the key's heavyweight
 *   lock in ExclusiveLock (writers hold RowExclusiveLock until their
 *   transaction's callbacks have run), never under an LWLock wait.
 *
 * The state is derived: on a crash restart the postmaster reinitializes
 * shared memory and windows are loaded again from the ledger on first use.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "counters.h"
#include "usage_guard.h"

typedef struct CountersShared
{
	LWLockPadded *locks;
} CountersShared;

int			usage_guard_max_counters = 20000;

static CountersShared *shared = NULL;

static int	EvictIdle(void);

/* Give back the rings of an entry's rolling windows (entry being removed) */
static void
FreeRings(CounterEntry *e)
{
	for (int i = 0; i < e->nwindows; i++)
		RingFree(e->windows[i].ring);
}
static HTAB *counters = NULL;
static bool full_reported = false;

/* Bytes of shared memory the counters need */
static Size
CountersShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(CountersShared)),
					hash_estimate_size(usage_guard_max_counters, sizeof(CounterEntry)));
}

/* shmem_request_hook part: space and the partition locks */
void
CountersShmemRequest(void)
{
	RequestAddinShmemSpace(CountersShmemSize());
	RequestNamedLWLockTranche("usage_guard", UG_NUM_PARTITIONS);
}

static uint32
CounterHashFn(const void *key, Size keysize)
{
	return CounterKeyHash((const CounterKey *) key);
}

/* shmem_startup_hook part: create or attach */
void
CountersShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("usage_guard counters", sizeof(CountersShared), &found);
	if (!found)
		shared->locks = GetNamedLWLockTranche("usage_guard");

	info.keysize = sizeof(CounterKey);
	info.entrysize = sizeof(CounterEntry);
	info.hash = CounterHashFn;
	info.num_partitions = UG_NUM_PARTITIONS;
	counters = ShmemInitHash("usage_guard counters hash",
							 usage_guard_max_counters, usage_guard_max_counters,
							 &info,
							 HASH_ELEM | HASH_FUNCTION | HASH_PARTITION | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/* Is the shared state there (library preloaded)? */
bool
CountersAvailable(void)
{
	return counters != NULL;
}

/*
 * May decisions use the shared state?  Not during recovery: WAL replay
 * adds ledger rows without telling shared memory, so a standby answers from
 * the replayed ledger, and never loads a window that would outlive its
 * promotion.
 */
bool
CountersUsable(void)
{
	return counters != NULL && !RecoveryInProgress();
}

/* Bytes of shared memory one tracked key costs, for the benchmark report */
Size
CounterEntrySize(void)
{
	return CountersShmemSize() / Max(usage_guard_max_counters, 1);
}

/* Fill a key; the padding is zeroed because keys are compared as bytes */
void
MakeCounterKey(CounterKey *key, Oid ledger, const char *tenant_id, const char *subject_id,
			   const char *feature_key)
{
	memset(key, 0, sizeof(CounterKey));
	key->dbid = MyDatabaseId;
	key->ledger = ledger;
	strlcpy(key->tenant_id, tenant_id, sizeof(key->tenant_id));
	strlcpy(key->feature_key, feature_key, sizeof(key->feature_key));
	if (subject_id != NULL)
		strlcpy(key->subject_id, subject_id, sizeof(key->subject_id));
}

uint32
CounterKeyHash(const CounterKey *key)
{
	uint32		h = hash_bytes((const unsigned char *) key->tenant_id, strlen(key->tenant_id));

	h = hash_combine(h, hash_bytes((const unsigned char *) key->feature_key, strlen(key->feature_key)));
	if (key->subject_id[0] != '\0')
		h = hash_combine(h, hash_bytes((const unsigned char *) key->subject_id, strlen(key->subject_id)));
	h = hash_combine(h, hash_uint32(key->dbid));
	return hash_combine(h, hash_uint32(key->ledger));
}

LWLock *
CounterPartitionLock(uint32 hash)
{
	return &shared->locks[hash % UG_NUM_PARTITIONS].lock;
}

/* The entry of a key, or NULL; the caller holds its partition lock */
CounterEntry *
CounterLookup(const CounterKey *key, uint32 hash)
{
	Assert(LWLockHeldByMe(CounterPartitionLock(hash)));
	return (CounterEntry *) hash_search_with_hash_value(counters, key, hash, HASH_FIND, NULL);
}

/* The window [start, end) of an entry, or NULL */
CounterWindow *
CounterFindWindow(CounterEntry *entry, TimestampTz start, TimestampTz end)
{
	for (int i = 0; i < entry->nwindows; i++)
		if (entry->windows[i].start == start && entry->windows[i].end == end)
			return &entry->windows[i];
	return NULL;
}

void
CounterTouch(CounterEntry *entry)
{
	pg_atomic_write_u64(&entry->last_used, (uint64) GetCurrentTransactionStartTimestamp());
}

static bool
WindowIdle(const CounterWindow *w)
{
	return w->reserved == 0 && w->credit == 0;
}

/*
 * Nothing in flight, and no rate limit still remembering recent requests
 * (removing that would let a burst through again).
 */
static bool
EntryIdle(const CounterEntry *e, TimestampTz now)
{
	for (int i = 0; i < e->nwindows; i++)
		if (!WindowIdle(&e->windows[i]))
			return false;
	for (int i = 0; i < e->nrates; i++)
		if (e->rates[i].tat > (double) now)
			return false;
	return true;
}

/* The state of the rate limit of period `length`, created (empty) if asked and room */
CounterRate *
CounterFindRate(CounterEntry *entry, int64 length, bool create)
{
	for (int i = 0; i < entry->nrates; i++)
		if (entry->rates[i].length == length)
			return &entry->rates[i];
	if (!create || entry->nrates >= UG_MAX_RATES)
		return NULL;
	Assert(LWLockHeldByMeInMode(CounterPartitionLock(CounterKeyHash(&entry->key)), LW_EXCLUSIVE));
	entry->rates[entry->nrates].length = length;
	entry->rates[entry->nrates].tat = 0;
	return &entry->rates[entry->nrates++];
}

/*
 * Make sure a key has an entry (for rate state, which needs no load).  The
 * caller holds no LWLock.  False when there is no room even after eviction.
 */
bool
CounterEnsureEntry(const CounterKey *key, uint32 hash)
{
	LWLock	   *lock = CounterPartitionLock(hash);

	for (int attempt = 0; attempt < 2; attempt++)
	{
		CounterEntry *e;
		bool		found;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = hash_search_with_hash_value(counters, key, hash, HASH_ENTER_NULL, &found);
		if (e != NULL && !found)
		{
			e->nwindows = 0;
			e->nrates = 0;
			pg_atomic_init_u64(&e->last_used, (uint64) GetCurrentTransactionStartTimestamp());
		}
		LWLockRelease(lock);
		if (e != NULL)
			return true;
		if (EvictIdle() == 0)
			break;
	}
	return false;
}

static void
LockAllPartitions(LWLockMode mode)
{
	for (int i = 0; i < UG_NUM_PARTITIONS; i++)
		LWLockAcquire(&shared->locks[i].lock, mode);
}

static void
UnlockAllPartitions(void)
{
	for (int i = UG_NUM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&shared->locks[i].lock);
}

/*
 * Make room when the hash is full: remove the idle keys (no reservation in
 * flight) used less recently than the average idle key.  Removing a key is
 * always safe (it is loaded again from the ledger); keeping busy ones just
 * avoids needless reloads.  Returns how many were removed.
 */
static int
EvictIdle(void)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *e;
	uint64		min = PG_UINT64_MAX;
	uint128		excess = 0;
	long		n = 0;
	int			removed = 0;
	uint64		threshold;
	TimestampTz now = GetCurrentTimestamp();

	LockAllPartitions(LW_EXCLUSIVE);
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
		if (EntryIdle(e, now))
			min = Min(min, pg_atomic_read_u64(&e->last_used));
	/* the mean, in integers: a double sum of microsecond stamps rounds below equal values */
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (EntryIdle(e, now))
		{
			excess += pg_atomic_read_u64(&e->last_used) - min;
			n++;
		}
	}
	threshold = n > 0 ? min + (uint64) (excess / (uint128) n) : 0;
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (n > 0 && EntryIdle(e, now) && pg_atomic_read_u64(&e->last_used) <= threshold)
		{
			FreeRings(e);
			hash_search(counters, &e->key, HASH_REMOVE, NULL);
			removed++;
		}
	}
	UnlockAllPartitions();
	return removed;
}

/* Log once per backend that the table path is used for lack of space */
void
CounterReportFull(void)
{
	if (full_reported)
		return;
	full_reported = true;
	ereport(LOG,
			(errmsg("usage_guard: shared memory for counters is full; using the table path"),
			 errhint("Raise usage_guard.max_counters (now %d) and restart.",
					 usage_guard_max_counters)));
}

/*
 * Pick a slot for a new window in an entry: a free one, else an idle one
 * that has ended before now, else the idle one that ends first.  -1 if all
 * are busy.
 */
static int
WindowSlot(CounterEntry *e, TimestampTz now)
{
	int			best = -1;

	if (e->nwindows < UG_MAX_WINDOWS)
		return e->nwindows++;
	for (int i = 0; i < e->nwindows; i++)
	{
		if (!WindowIdle(&e->windows[i]))
			continue;
		if (e->windows[i].end <= now && e->windows[i].ring < 0)
			return i;
		if (best < 0 || e->windows[i].end < e->windows[best].end)
			best = i;
	}
	return best;
}

/*
 * Add a loaded window to a key, creating the key's entry if needed.  The
 * caller holds the key's heavyweight lock in ExclusiveLock and no LWLock.
 * False when there is no room even after eviction.
 */
bool
CounterAddWindow(const CounterKey *key, uint32 hash, TimestampTz start, TimestampTz end,
				 Amount usage, Amount reserved, Amount credit, TimestampTz now, int32 ring)
{
	LWLock	   *lock = CounterPartitionLock(hash);

	for (int attempt = 0; attempt < 2; attempt++)
	{
		CounterEntry *e;
		bool		found;
		int			slot;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = hash_search_with_hash_value(counters, key, hash, HASH_ENTER_NULL, &found);
		if (e != NULL)
		{
			if (!found)
			{
				e->nwindows = 0;
				e->nrates = 0;
				pg_atomic_init_u64(&e->last_used, 0);
			}
			if (CounterFindWindow(e, start, end) == NULL)
			{
				int			before = e->nwindows;

				slot = WindowSlot(e, now);
				if (slot < 0)
				{
					LWLockRelease(lock);
					RingFree(ring);
					return false;
				}
				if (slot < before)
					RingFree(e->windows[slot].ring);	/* an idle window replaced */
				e->windows[slot].ring = ring;
				e->windows[slot].start = start;
				e->windows[slot].end = end;
				e->windows[slot].usage = usage;
				e->windows[slot].reserved = reserved;
				e->windows[slot].credit = credit;
			}
			else
				RingFree(ring);	/* another loader was first */
			CounterTouch(e);
			LWLockRelease(lock);
			return true;
		}
		LWLockRelease(lock);
		if (EvictIdle() == 0)
			break;
	}
	RingFree(ring);
	return false;
}

/*
 * Copies of the entries of this database's ledger, taken under all
 * partition locks (shared) and returned in the caller's memory context.
 */
CounterEntry *
CounterSnapshot(Oid ledger, int *count)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *e;
	CounterEntry *copies;
	int			n = 0;
	long		size;

	*count = 0;
	if (counters == NULL)
		return NULL;
	LockAllPartitions(LW_SHARED);
	size = hash_get_num_entries(counters);
	copies = palloc_extended(Max(size, 1) * sizeof(CounterEntry), MCXT_ALLOC_NO_OOM);
	if (copies == NULL)
	{
		UnlockAllPartitions();
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory copying %ld live counters", size)));
	}
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (e->key.dbid != MyDatabaseId || e->key.ledger != ledger || n >= size)
			continue;
		memcpy(&copies[n++], e, sizeof(CounterEntry));
	}
	UnlockAllPartitions();
	*count = n;
	return copies;
}

/*
 * Remove this database's entries of ledgers other than `ledger` (an
 * extension dropped and created again): their keys can never be used.
 */
int
CounterRemoveStale(Oid ledger)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *e;
	int			removed = 0;

	if (counters == NULL)
		return 0;
	LockAllPartitions(LW_EXCLUSIVE);
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (e->key.dbid == MyDatabaseId && e->key.ledger != ledger)
		{
			FreeRings(e);
			hash_search(counters, &e->key, HASH_REMOVE, NULL);
			removed++;
		}
	}
	UnlockAllPartitions();
	return removed;
}

/*
 * Set the committed usage of a window, if it is still there.  The caller
 * holds the key's lock in ExclusiveLock (no other writer in flight).
 */
void
CounterSetUsage(const CounterKey *key, uint32 hash, TimestampTz start, TimestampTz end,
				Amount usage)
{
	LWLock	   *lock = CounterPartitionLock(hash);
	CounterEntry *entry;
	CounterWindow *w;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = CounterLookup(key, hash);
	w = entry != NULL ? CounterFindWindow(entry, start, end) : NULL;
	if (w != NULL)
		w->usage = usage;
	LWLockRelease(lock);
}

/* Remove one window of a key, if it is still there (same rule as above) */
void
CounterRemoveWindow(const CounterKey *key, uint32 hash, TimestampTz start, TimestampTz end)
{
	LWLock	   *lock = CounterPartitionLock(hash);
	CounterEntry *entry;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = CounterLookup(key, hash);
	for (int i = 0; entry != NULL && i < entry->nwindows; i++)
	{
		if (entry->windows[i].start == start && entry->windows[i].end == end)
		{
			RingFree(entry->windows[i].ring);
			entry->windows[i] = entry->windows[entry->nwindows - 1];
			entry->nwindows--;
			break;
		}
	}
	LWLockRelease(lock);
}

PG_FUNCTION_INFO_V1(usage_guard_counters);
/* usage_guard.live_counters(): every live window of this database */
Datum
usage_guard_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterEntry *copies;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	/* copy under the locks, build tuples after */
	copies = CounterSnapshot(LedgerRelid(), &n);
	for (int k = 0; k < n; k++)
	{
		CounterEntry *c = &copies[k];

		for (int i = 0; i < c->nwindows; i++)
		{
			Datum		values[8];
			bool		nulls[8] = {0};
			CounterWindow *w = &c->windows[i];

			values[0] = CStringGetTextDatum(c->key.tenant_id);
			values[1] = CStringGetTextDatum(c->key.feature_key);
			if (w->ring >= 0)
			{
				/* a rolling window: the last `length` before now */
				values[2] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp() - w->end);
				values[3] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			}
			else
			{
				values[2] = TimestampTzGetDatum(w->start);
				values[3] = TimestampTzGetDatum(w->end);
			}
			values[7] = CStringGetTextDatum(c->key.subject_id);
			nulls[7] = (c->key.subject_id[0] == '\0');
			values[4] = NumericGetDatum(AmountToNumeric(w->usage));
			values[5] = NumericGetDatum(AmountToNumeric(w->reserved));
			values[6] = NumericGetDatum(AmountToNumeric(w->credit));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(usage_guard_shmem_info);
/*
 * usage_guard.shmem_info(): sizing facts for operators and the benchmark.
 * Columns 6-10 (the shared policy cache) since 0.7.0.
 */
Datum
usage_guard_shmem_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[10];
	bool		nulls[10] = {0};
	long		used = 0;
	int64		policy[5];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != 5 && tupdesc->natts != 10)
		elog(ERROR, "usage_guard: shmem_info has %d columns, this library knows 5 or 10",
			 tupdesc->natts);
	if (counters != NULL)
	{
		LockAllPartitions(LW_SHARED);
		used = hash_get_num_entries(counters);
		UnlockAllPartitions();
	}
	values[0] = BoolGetDatum(counters != NULL);
	values[1] = Int64GetDatum(usage_guard_max_counters);
	values[2] = Int64GetDatum(used);
	values[3] = Int64GetDatum(counters != NULL ? (int64) CountersShmemSize() : 0);
	values[4] = Int64GetDatum(counters != NULL ? (int64) CounterEntrySize() : 0);
	SharedPolicyUsage(&policy[1], &policy[0], &policy[2], &policy[3], &policy[4]);
	for (int i = 0; i < 5; i++)
		values[5 + i] = Int64GetDatum(policy[i]);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

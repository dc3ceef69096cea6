/*
 * loader.c
 *		Bringing shared memory in line with the ledger: loading a window that
 *		is missing (first use, restart, eviction, next period) and
 *		reset_counters, which recomputes the live windows in place.
 *
 * Both rely on the key lock (writes.c): every writer of a key holds it in
 * RowExclusiveLock until its transaction's callbacks have settled its
 * reservations, so whoever holds it in ExclusiveLock sees no row of another
 * transaction in flight, and a ledger sum (latest snapshot) minus this
 * transaction's own writes is exactly the committed usage.
 *
 * Lock order: key lock, then partition LWLock; the LWLock is never held
 * across SPI or a heavyweight lock wait.  The ledger is read as its owner
 * (security.c).
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "usage_guard.h"

/* reset_counters says once that it is waiting after this long */
#define RESET_NOTICE_AFTER_MS 5000
#define RESET_RETRY_MS 10

/*
 * Load the windows of a key that shared memory lacks, from the ledger
 * (docs/architecture.md, "Loading a window").  With `wait` false, gives up
 * instead of waiting for other writers of the key.  False when a window
 * could not be loaded.
 */
/*
 * Load a rolling window of `length` as of `at` into a new ring (rolling.c):
 * the ledger's sums per bucket, minus this transaction's own rows (held as
 * in flight).  The caller holds the key lock in ExclusiveLock.
 */
static bool
LoadRolling(const CounterKey *key, uint32 hash, TimestampTz start, int64 length,
			TimestampTz at)
{
	int64		g = RollingGranularity(length);
	int64		n = length / g;
	int64		a = BucketOf(at, g);
	int64		head = a;
	TimestampTz since = (a - n) * g;
	TimestampTz *bstarts;
	Amount	   *sums;
	Amount		total = 0,
				pos,
				neg;
	int			k = LedgerBucketSums(key->tenant_id, key->subject_id, key->feature_key,
									 since, g, &bstarts, &sums);
	int32		ring;

	for (int i = 0; i < k; i++)
		head = Max(head, bstarts[i] / g);
	ring = RingAlloc(length, head);
	if (ring < 0)
		return false;
	for (int i = 0; i < k; i++)
	{
		int64		b = bstarts[i] / g;

		if (b >= head - n)
		{
			RingLoadBucket(ring, b, sums[i]);
			total += sums[i];
		}
	}
	since = (head - n) * g;
	if (!OwnWritesSince(key, since, ring, &pos, &neg))
	{
		RingFree(ring);
		return false;
	}
	if (!CounterAddWindow(key, hash, start, length, total - pos - neg, pos, neg, at, ring, false))
		return false;
	RegisterOwnWritesSince(key, start, length, since);
	return true;
}

bool
LoadWindows(const CounterKey *key, uint32 hash, const TimestampTz *starts,
			const TimestampTz *ends, int n, int required, bool wait, TimestampTz at)
{
	LWLock	   *lock = CounterPartitionLock(hash);
	bool		missing[2 * UG_MAX_WINDOWS];
	bool		any = false;
	bool		ok = true;

	Assert(n <= 2 * UG_MAX_WINDOWS);
	Assert(CountersUsable());

	LWLockAcquire(lock, LW_SHARED);
	{
		CounterEntry *entry = CounterLookup(key, hash);

		for (int i = 0; i < n; i++)
		{
			missing[i] = (entry == NULL || CounterFindWindow(entry, starts[i], ends[i]) == NULL);
			/* a window loaded ahead is worth its ledger scan only where it can be kept */
			if (missing[i] && i >= required && entry != NULL &&
				!CounterWindowRoom(entry, at, starts[i]))
				missing[i] = false;
			any |= missing[i];
		}
	}
	LWLockRelease(lock);
	if (!any)
		return true;

	if (!LockKeyForLoad(key, hash, wait))
		return false;

	SPI_connect();
	for (int i = 0; i < n && ok; i++)
	{
		Amount		sum,
					pos,
					neg;
		bool		present;

		if (!missing[i])
			continue;
		/* another loader may have been first */
		LWLockAcquire(lock, LW_SHARED);
		{
			CounterEntry *entry = CounterLookup(key, hash);

			present = (entry != NULL && CounterFindWindow(entry, starts[i], ends[i]) != NULL);
		}
		LWLockRelease(lock);
		if (present)
			continue;

		if (IsRollingWindow(starts[i]))
		{
			ok = LoadRolling(key, hash, starts[i], ends[i], at);
			if (!ok)
				CounterReportFull();
			continue;
		}
		/* our own uncommitted rows are in the sum: they are in flight, not usage */
		if (!OwnWritesIn(key, starts[i], ends[i], &pos, &neg))
		{
			ok = false;
			break;
		}
		sum = LedgerWindowSum(key->tenant_id, key->subject_id, key->feature_key, starts[i], ends[i]);
		if (CounterAddWindow(key, hash, starts[i], ends[i], sum - pos - neg, pos, neg, at, -1,
							 i >= required))
			RegisterOwnWritesIn(key, starts[i], ends[i]);
		else if (i < required)
		{
			ok = false;
			CounterReportFull();
		}
	}
	SPI_finish();
	UnlockKeyForLoad(key, hash);
	return ok;
}

/*
 * Recompute every live window of one key from the ledger, if no other
 * transaction has usage of it in flight.  False (nothing done) if one has.
 */
static bool
RecomputeKey(const CounterSnapshotData *snap, int k, CounterKey *key)
{
	const CounterCopy *c = &snap->keys[k];
	uint32		hash;

	CounterCopyKey(snap, k, key);
	hash = CounterKeyHash(key);

	if (!LockKeyForLoad(key, hash, false))
		return false;

	SPI_connect();
	for (int i = 0; i < c->nwindows; i++)
	{
		const CounterWindow *w = &snap->windows[c->first + i];
		Amount		sum,
					pos,
					neg;

		/*
		 * Own writes not known row by row (a bulk load in this transaction),
		 * or a rolling window (its ring is rebuilt by the next decision):
		 * drop the window; it is loaded again when next needed.
		 */
		if (w->ring >= 0 || !OwnWritesIn(key, w->start, w->end, &pos, &neg))
		{
			CounterRemoveWindow(key, hash, w->start, w->end);
			continue;
		}
		sum = LedgerWindowSum(key->tenant_id, key->subject_id, key->feature_key, w->start, w->end);
		CounterSetUsage(key, hash, w->start, w->end, sum - pos - neg);
	}
	SPI_finish();
	UnlockKeyForLoad(key, hash);
	return true;
}

/*
 * Bring every live window of this database back in line with the ledger
 * (after rows were loaded with triggers disabled).  Windows are recomputed
 * in place, never removed: consumers keep deciding from shared memory and
 * never have to load a window while holding usage of their own in flight,
 * which is what made removal deadlock-prone.  A key is only locked when no
 * transaction has usage of it in flight (conditional lock, never queued),
 * so no consumer waits behind this function or behind an idle transaction
 * this function waits for; busy keys are retried until their writers end.
 * Returns how many tenant/feature keys were recomputed.
 */
static int64
ResetCounters(void)
{
	CounterSnapshotData *snap;
	int		   *pending;
	int			npending;
	CounterKey *key = palloc(sizeof(CounterKey));
	int64		done = 0;
	TimestampTz started = GetCurrentTimestamp();
	bool		noticed = false;

	(void) CounterRemoveStale(LedgerRelid());
	snap = CounterSnapshot(LedgerRelid());
	npending = snap->count;
	pending = palloc_extended(Max(npending, 1) * sizeof(int), MCXT_ALLOC_HUGE);
	for (int i = 0; i < npending; i++)
		pending[i] = i;
	while (npending > 0)
	{
		int			left = 0;

		for (int i = 0; i < npending; i++)
		{
			CHECK_FOR_INTERRUPTS();
			if (RecomputeKey(snap, pending[i], key))
				done++;
			else
				pending[left++] = pending[i];
		}
		npending = left;
		if (npending == 0)
			break;

		if (!noticed &&
			TimestampDifferenceExceeds(started, GetCurrentTimestamp(), RESET_NOTICE_AFTER_MS))
		{
			noticed = true;
			ereport(NOTICE,
					(errmsg_plural("reset_counters is waiting for %d tenant/feature key with usage in flight",
								   "reset_counters is waiting for %d tenant/feature keys with usage in flight",
								   npending, npending),
					 errdetail("It recomputes a key once no transaction has uncommitted usage of it; consumers are not blocked meanwhile."),
					 errhint("Look for long or idle transactions in pg_stat_activity; cancel this call to stop waiting.")));
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 RESET_RETRY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	return done;
}

PG_FUNCTION_INFO_V1(usage_guard_reset_counters);
/* usage_guard.reset_counters(): recompute this database's live counters from the ledger */
Datum
usage_guard_reset_counters(PG_FUNCTION_ARGS)
{
	/* nothing is loaded during recovery, and the ledger cannot change behind us */
	if (!CountersUsable())
		PG_RETURN_INT64(0);
	/* policies too: catalog rows loaded with triggers off were never announced */
	SharedPolicyResetAll();
	PG_RETURN_INT64(ResetCounters());
}

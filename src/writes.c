/*
 * writes.c
 *		The rows this backend added to the ledger in its current transaction,
 *		their reservations in the shared counters, and settling them: commit
 *		moves a reservation into committed usage, abort (of the transaction
 *		or of the subtransaction that wrote it) releases it.
 *
 * Also the key lock: a heavyweight, transaction-level lock per (tenant,
 * feature) that writers hold in RowExclusiveLock and window loaders take in
 * ExclusiveLock.  Transaction callbacks run before the transaction's locks
 * are released, so a loader never sees a committed row whose reservation
 * has not yet become usage.
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "counters.h"
#include "usage_guard.h"

/* field4 of the advisory locktag: 'UG', apart from pg_advisory_lock's 1 and 2 */
#define UG_LOCKTAG_FIELD4 0x5547

static LocalWrite *writes = NULL;

/*
 * Keys this transaction wrote rows for that were counted in no live window,
 * or whose rows were merged across times.  Such rows are not remembered one
 * by one (a COPY of a large ledger would need memory per row), so their
 * windows cannot be loaded in this transaction: decisions for these keys
 * take the table path until it ends.  No other backend can load them
 * either, since this transaction holds the key lock as a writer.
 */
static HTAB *unloadable = NULL;

/*
 * The write each key's next row may merge into (its latest mergeable one),
 * so that memory and the scans of `writes` grow with keys, not rows, also
 * when a bulk load interleaves tenants.  Lives with `writes`.
 */
typedef struct LatestWrite
{
	CounterKey	key;
	LocalWrite *write;
} LatestWrite;

static HTAB *latest = NULL;

static void
SetKeyTag(LOCKTAG *tag, const CounterKey *key, uint32 hash)
{
	/* a second hash makes collisions (which only over-serialize) rarer */
	uint32		hash2 = hash_bytes((const unsigned char *) key->tenant_id, strlen(key->tenant_id)) ^
		(hash_bytes((const unsigned char *) key->feature_key, strlen(key->feature_key)) * 31);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, hash, hash2, UG_LOCKTAG_FIELD4);
}

/*
 * Lock escalation.  Every writer holds its keys' locks until it ends, so a
 * bulk load over many tenants would need one lock table entry per key and
 * run out of them ("out of shared memory").  A transaction that already
 * holds max_locks_per_transaction key locks as a writer takes one
 * ledger-wide lock in ShareLock instead, until it ends, and no more key
 * locks.  Loaders and the table path take the ledger-wide lock in
 * RowExclusiveLock as well as the key lock, so they wait for escalated
 * writers as they wait for a key's writers; escalated writers do not
 * conflict with each other.
 */
static int	key_locks_taken = 0;
static SubTransactionId escalated_in = InvalidSubTransactionId;

static void
SetLedgerTag(LOCKTAG *tag)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, LedgerRelid(), 0, UG_LOCKTAG_FIELD4 + 2);
}

/*
 * Take a key's lock.  For a writer (RowExclusiveLock) false means it is
 * covered by the ledger-wide lock instead: there is nothing to release.
 */
bool
LockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode)
{
	LOCKTAG		tag;

	if (mode == RowExclusiveLock)
	{
		if (escalated_in != InvalidSubTransactionId)
			return false;
		if (key_locks_taken >= max_locks_per_xact)
		{
			SetLedgerTag(&tag);
			(void) LockAcquire(&tag, ShareLock, false, false);
			escalated_in = GetCurrentSubTransactionId();
			return false;
		}
	}
	SetKeyTag(&tag, key, hash);
	if (LockAcquire(&tag, mode, false, false) == LOCKACQUIRE_OK && mode == RowExclusiveLock)
		key_locks_taken++;
	return true;
}

/*
 * A loader's lock on a key: the key's lock in ExclusiveLock (no writer of
 * the key in flight), then the ledger-wide lock (no escalated writer in
 * flight).  Waits, or (not `wait`) gives up and holds nothing.
 */
bool
LockKeyForLoad(const CounterKey *key, uint32 hash, bool wait)
{
	if (wait)
		LockCounterKey(key, hash, ExclusiveLock);
	else if (!ConditionalLockCounterKey(key, hash, ExclusiveLock))
		return false;
	if (!LockLedgerWide(wait))
	{
		UnlockCounterKey(key, hash, ExclusiveLock);
		return false;
	}
	return true;
}

void
UnlockKeyForLoad(const CounterKey *key, uint32 hash)
{
	UnlockLedgerWide();
	UnlockCounterKey(key, hash, ExclusiveLock);
}

/*
 * A loader's or the table path's side of escalation: wait for (or, not
 * waiting, test) the escalated writers.  Released by UnlockLedgerWide, or
 * at the transaction's end.
 */
bool
LockLedgerWide(bool wait)
{
	LOCKTAG		tag;

	SetLedgerTag(&tag);
	return LockAcquire(&tag, RowExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

void
UnlockLedgerWide(void)
{
	LOCKTAG		tag;

	SetLedgerTag(&tag);
	LockRelease(&tag, RowExclusiveLock, false);
}

bool
ConditionalLockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode)
{
	LOCKTAG		tag;

	SetKeyTag(&tag, key, hash);
	return LockAcquire(&tag, mode, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

void
UnlockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode)
{
	LOCKTAG		tag;

	SetKeyTag(&tag, key, hash);
	LockRelease(&tag, mode, false);
}

/*
 * Serialize requests that carry the same idempotency key for a tenant's
 * feature, so a retry arriving while the original is in flight waits for
 * its outcome instead of being decided beside it.
 */
void
LockIdempotencyKey(const char *tenant_id, const char *feature_key, const char *key)
{
	LOCKTAG		tag;
	uint32		h1 = hash_combine(hash_bytes((const unsigned char *) tenant_id, strlen(tenant_id)),
								  hash_bytes((const unsigned char *) feature_key, strlen(feature_key)));
	uint32		h2 = hash_bytes((const unsigned char *) key, strlen(key));

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, h1, h2, UG_LOCKTAG_FIELD4 + 1);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* Does a write count in the window [start, end)? */
static bool
InWindow(const LocalWrite *w, TimestampTz start, TimestampTz end)
{
	if (w->scoped)
		return w->scope_start == start && w->scope_end == end;
	return w->at >= start && w->at < end;
}

static bool
Registered(const LocalWrite *w, TimestampTz start, TimestampTz end)
{
	for (int i = 0; i < w->nregistered; i++)
		if (w->reg_start[i] == start && w->reg_end[i] == end)
			return true;
	return false;
}

static void
AddRegistration(LocalWrite *w, TimestampTz start, TimestampTz end)
{
	if (w->nregistered < UG_MAX_WINDOWS && !Registered(w, start, end))
	{
		w->reg_start[w->nregistered] = start;
		w->reg_end[w->nregistered] = end;
		w->nregistered++;
	}
}

/* Count a write in every live window of its key that contains it */
static void
RegisterWrite(CounterEntry *entry, LocalWrite *w)
{
	for (int i = 0; i < entry->nwindows; i++)
	{
		CounterWindow *win = CounterWindowAt(entry, i);
		bool		in = win->ring >= 0 ? (!w->scoped && RingContains(win, w->at)) :
			InWindow(w, win->start, win->end);

		if (!in || Registered(w, win->start, win->end))
			continue;
		if (w->amount >= 0)
			win->reserved += w->amount;
		else
			win->credit += w->amount;
		AddRegistration(w, win->start, win->end);
	}
}

static uint32
UnloadableHash(const void *key, Size keysize)
{
	return CounterKeyHash((const CounterKey *) key);
}

static int
UnloadableMatch(const void *a, const void *b, Size keysize)
{
	return CounterKeyEquals((const CounterKey *) a, (const CounterKey *) b) ? 0 : 1;
}

/* A transaction-lifetime hash keyed by CounterKey */
static HTAB *
KeyHash(const char *name, Size entrysize)
{
	HASHCTL		info;

	info.keysize = sizeof(CounterKey);
	info.entrysize = entrysize;
	info.hash = UnloadableHash;
	info.match = UnloadableMatch;
	info.hcxt = TopTransactionContext;
	return hash_create(name, 64, &info, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

static void
MarkUnloadable(const CounterKey *key, uint32 hash)
{
	if (unloadable == NULL)
		unloadable = KeyHash("usage_guard unloadable keys", sizeof(CounterKey));
	(void) hash_search_with_hash_value(unloadable, key, hash, HASH_ENTER, NULL);
}

static bool
SameRegistrations(const LocalWrite *a, const LocalWrite *b)
{
	if (a->nregistered != b->nregistered)
		return false;
	/* a rolling window needs each write's own time: no merging across times */
	for (int i = 0; a->at != b->at && i < a->nregistered; i++)
		if (IsRollingWindow(a->reg_start[i]))
			return false;
	for (int i = 0; i < a->nregistered; i++)
		if (!Registered(b, a->reg_start[i], a->reg_end[i]))
			return false;
	return true;
}

/*
 * Count a row this transaction writes: add it to every live window of its
 * key that contains it (entry may be NULL: none) and remember what is to be
 * settled at the end of the transaction.  The caller holds the key lock (as
 * a writer or stronger) and, with an entry, its partition lock exclusive.
 *
 * Memory stays bounded by keys, not rows: a row counted in no window is not
 * remembered (its key becomes unloadable for the transaction), and a row
 * counted in the same windows as its key's latest write is merged into it
 * (found through `latest`, however the rows of keys interleave).  An
 * undoable write (an insert that may turn out to be an idempotent
 * duplicate) is kept on its own and returned; otherwise NULL may be.
 */
static LocalWrite *
AddWrite(CounterEntry *entry, const CounterKey *key, uint32 hash, TimestampTz at,
		 Amount amount, bool undoable, bool scoped, TimestampTz scope_start,
		 TimestampTz scope_end)
{
	LocalWrite	tmp;
	LocalWrite *w;
	LocalWrite *prev = NULL;
	LatestWrite *last = NULL;

	/* no live window: nothing to settle (the common row of a bulk load) */
	if (entry == NULL && !undoable)
	{
		MarkUnloadable(key, hash);
		return NULL;
	}
	/*
	 * Built on the stack: most rows of a busy key merge into its latest
	 * write, and then neither the allocation nor the key's copy is needed.
	 * RegisterWrite does not read the key.
	 */
	tmp.hash = hash;
	tmp.at = at;
	tmp.amount = amount;
	tmp.subid = GetCurrentSubTransactionId();
	tmp.undoable = undoable;
	tmp.mixed = false;
	tmp.scoped = scoped;
	tmp.scope_start = scope_start;
	tmp.scope_end = scope_end;
	tmp.nregistered = 0;
	tmp.next = NULL;
	w = &tmp;
	if (entry != NULL)
		RegisterWrite(entry, w);

	if (!undoable && w->nregistered == 0)
	{
		MarkUnloadable(key, hash);
		return NULL;
	}
	if (!undoable && !scoped)
	{
		bool		found;

		if (latest == NULL)
			latest = KeyHash("usage_guard latest writes", sizeof(LatestWrite));
		last = hash_search_with_hash_value(latest, key, hash, HASH_ENTER, &found);
		prev = found ? last->write : NULL;
	}
	if (prev != NULL && prev->subid == w->subid &&
		(prev->amount >= 0) == (amount >= 0) && SameRegistrations(prev, w))
	{
		prev->amount += amount;
		prev->mixed |= (prev->at != at);
		return NULL;
	}
	w = MemoryContextAlloc(TopTransactionContext, sizeof(LocalWrite));
	memcpy(w, &tmp, sizeof(LocalWrite));
	w->key = *key;
	w->next = writes;
	writes = w;
	if (last != NULL)
		last->write = w;
	return w;
}

LocalWrite *
CountWrite(CounterEntry *entry, const CounterKey *key, uint32 hash,
		   TimestampTz at, Amount amount, bool undoable)
{
	return AddWrite(entry, key, hash, at, amount, undoable, false, 0, 0);
}

/*
 * Count a window reset (a row of usage_resets) the same way, but in the one
 * window [start, end) it resets: the day is given back, the month is not.
 */
LocalWrite *
CountScopedWrite(CounterEntry *entry, const CounterKey *key, uint32 hash,
				 TimestampTz start, TimestampTz end, Amount amount)
{
	return AddWrite(entry, key, hash, start, amount, false, true, start, end);
}

/* Apply a settled write to the windows it was counted in */
static void
Settle(LocalWrite *w, bool commit)
{
	LWLock	   *lock;
	CounterEntry *entry;

	if (w->nregistered == 0 || !CountersAvailable())
		return;
	lock = CounterPartitionLock(w->hash);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	entry = CounterLookup(&w->key, w->hash);
	/* a removed key or window is loaded again from the ledger: nothing to do */
	if (entry != NULL)
	{
		for (int i = 0; i < w->nregistered; i++)
		{
			CounterWindow *win = CounterFindWindow(entry, w->reg_start[i], w->reg_end[i]);

			if (win == NULL)
				continue;
			if (w->amount >= 0)
				win->reserved -= w->amount;
			else
				win->credit -= w->amount;
			if (commit)
				WindowCommit(win, w->at, w->amount);
		}
	}
	LWLockRelease(lock);
	w->nregistered = 0;
}

/* Take back a write that did not happen (an idempotent duplicate) */
void
UndoLocalWrite(LocalWrite *w)
{
	LocalWrite **p;

	Settle(w, false);
	for (p = &writes; *p != NULL; p = &(*p)->next)
	{
		if (*p == w)
		{
			*p = w->next;
			break;
		}
	}
	pfree(w);
}

/*
 * This transaction's own writes of a key in [start, end), by sign.  False
 * when they are not known row by row (see CountWrite): the window cannot be
 * loaded in this transaction.
 */
bool
OwnWritesIn(const CounterKey *key, TimestampTz start, TimestampTz end,
			Amount *positive, Amount *negative)
{
	*positive = 0;
	*negative = 0;
	if (unloadable != NULL && hash_search(unloadable, key, HASH_FIND, NULL) != NULL)
		return false;
	for (LocalWrite *w = writes; w != NULL; w = w->next)
	{
		if (!CounterKeyEquals(&w->key, key))
			continue;
		if (w->mixed)
			return false;
		if (!InWindow(w, start, end))
			continue;
		if (w->amount >= 0)
			*positive += w->amount;
		else
			*negative += w->amount;
	}
	return true;
}

/*
 * Own writes of a key at or after `since` (a rolling window being loaded),
 * each taken out of its bucket of `ring`, by sign.  False when they are not
 * known row by row.
 */
bool
OwnWritesSince(const CounterKey *key, TimestampTz since, int32 ring,
			   Amount *positive, Amount *negative)
{
	*positive = 0;
	*negative = 0;
	if (unloadable != NULL && hash_search(unloadable, key, HASH_FIND, NULL) != NULL)
		return false;
	for (LocalWrite *w = writes; w != NULL; w = w->next)
	{
		if (!CounterKeyEquals(&w->key, key) || w->scoped)
			continue;
		if (w->mixed)
			return false;
		if (w->at < since)
			continue;
		RingLoadBucket(ring, RingBucketNo(ring, w->at), -w->amount);
		if (w->amount >= 0)
			*positive += w->amount;
		else
			*negative += w->amount;
	}
	return true;
}

/* After loading a rolling window: settle our own writes since `since` there */
void
RegisterOwnWritesSince(const CounterKey *key, TimestampTz start, TimestampTz end,
					   TimestampTz since)
{
	for (LocalWrite *w = writes; w != NULL; w = w->next)
	{
		if (!w->scoped && w->at >= since && CounterKeyEquals(&w->key, key))
			AddRegistration(w, start, end);
	}
}

/* After loading [start, end) with our own writes as reserved: settle them there too */
void
RegisterOwnWritesIn(const CounterKey *key, TimestampTz start, TimestampTz end)
{
	for (LocalWrite *w = writes; w != NULL; w = w->next)
	{
		if (InWindow(w, start, end) && CounterKeyEquals(&w->key, key))
			AddRegistration(w, start, end);
	}
}

/* Settle every write of the transaction */
static void
SettleAll(bool commit)
{
	for (LocalWrite *w = writes; w != NULL; w = w->next)
		Settle(w, commit);
	/* all live in TopTransactionContext, which goes away now */
	writes = NULL;
	unloadable = NULL;
	latest = NULL;
	key_locks_taken = 0;
	escalated_in = InvalidSubTransactionId;
}

/*
 * A prepared transaction (PREPARE TRANSACTION; Citus's two-phase commit of
 * a write to shards on several nodes) ends in another session, where these
 * callbacks never run.  So its in-flight usage is not settled: the windows
 * it was counted in are dropped instead, and the next decision for the key
 * loads them again from the ledger.  That load waits for the prepared
 * transaction to end, since the key locks (or the ledger-wide lock) it
 * held as a writer pass to the prepared transaction; another writer's
 * in-flight usage in a dropped window settles into nothing (Settle).
 */
static void
ForgetPreparedWrites(void)
{
	for (LocalWrite *w = CountersAvailable() ? writes : NULL; w != NULL; w = w->next)
	{
		for (int i = 0; i < w->nregistered; i++)
			CounterRemoveWindow(&w->key, w->hash, w->reg_start[i], w->reg_end[i]);
		w->nregistered = 0;
	}
	SettleAll(false);
}

static void
SettleAtXactEnd(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			SettleAll(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			SettleAll(false);
			break;
		case XACT_EVENT_PREPARE:
			ForgetPreparedWrites();
			break;
		default:
			break;
	}
}

static void
SettleAtSubXactEnd(SubXactEvent event, SubTransactionId mySubid,
				SubTransactionId parentSubid, void *arg)
{
	LocalWrite **p;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			/* the ledger-wide lock is released with the subtransaction */
			if (escalated_in == mySubid)
				escalated_in = InvalidSubTransactionId;
			/* it may point at writes freed here; rebuilt by the next rows */
			if (latest != NULL)
				hash_destroy(latest);
			latest = NULL;
			p = &writes;
			while (*p != NULL)
			{
				LocalWrite *w = *p;

				if (w->subid == mySubid)
				{
					Settle(w, false);
					*p = w->next;
					pfree(w);
				}
				else
					p = &w->next;
			}
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			if (escalated_in == mySubid)
				escalated_in = parentSubid;
			for (LocalWrite *w = writes; w != NULL; w = w->next)
				if (w->subid == mySubid)
					w->subid = parentSubid;
			break;
		default:
			break;
	}
}

/* Register the transaction callbacks (from _PG_init) */
void
WritesInit(void)
{
	RegisterXactCallback(SettleAtXactEnd, NULL);
	RegisterSubXactCallback(SettleAtSubXactEnd, NULL);
}

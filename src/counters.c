/*
 * counters.c
 *		The live usage counters in shared memory: a hash from (database,
 *		ledger, tenant, feature, subject) to up to UG_MAX_WINDOWS windows,
 *		each with committed usage, in-flight reservations and in-flight
 *		credits, and to the key's rate-limit state.
 *
 * Layout (sized for a million tenants): an entry holds the names packed and
 * two windows, 224 bytes.  Two pools of slots, taken and given back under
 * the key's partition lock (held exclusive) plus a spinlock, hold the rest:
 * extensions (windows 3..UG_MAX_WINDOWS and rate state) and long names
 * (keys whose names do not fit in the entry).  The hash compares a stored
 * key with a lookup key (CounterKey) by its custom match and keycopy
 * functions, so lookups never build the packed form.
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
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "counters.h"
#include "usage_guard.h"

/* A slot of the extension pool: what does not fit in an entry */
typedef struct CounterExtension
{
	CounterWindow windows[UG_MAX_WINDOWS - UG_INLINE_WINDOWS];
	CounterRate rates[UG_MAX_RATES];
	int32		next_free;
} CounterExtension;

/* A slot of the long-name pool */
typedef struct CounterLongName
{
	char		names[3 * UG_NAME_MAX];
	int32		next_free;
} CounterLongName;

/* A pool of fixed-size slots with a free list (slock_t in CountersShared) */
typedef struct SlotPool
{
	int32		size;
	int32		used;
	int32		free_head;
} SlotPool;

typedef struct CountersShared
{
	LWLockPadded *locks;
	slock_t		pool_lock;		/* the free lists; taken after a partition lock */
	SlotPool	ext;
	SlotPool	longnames;
} CountersShared;

/* the per-key cost README states: keep an entry within it */
StaticAssertDecl(sizeof(CounterEntry) <= 224, "a counter entry outgrew 224 bytes");

int			usage_guard_max_counters = 20000;
int			usage_guard_max_counter_extensions = -1;

static CountersShared *shared = NULL;
static CounterExtension *extensions = NULL;
static CounterLongName *longnames = NULL;

/* The long-name slot a new entry's keycopy takes (EnterKey sets it) */
static int32 pending_spill = -1;

static int	EvictIdle(void);

/* Give back the rings of an entry's rolling windows (entry being removed) */
static void
FreeRings(CounterEntry *e)
{
	for (int i = 0; i < e->nwindows; i++)
		RingFree(CounterWindowAt(e, i)->ring);
}
static HTAB *counters = NULL;
static bool full_reported = false;

/* Extension slots: the GUC, or by default one per 4 entries */
static int
ExtensionSlots(void)
{
	if (usage_guard_max_counter_extensions >= 0)
		return usage_guard_max_counter_extensions;
	return usage_guard_max_counters / 4 + 64;
}

/* Long-name slots: one per 64 entries */
static int
LongNameSlots(void)
{
	return usage_guard_max_counters / 64 + 64;
}

static Size
HashShmemSize(void)
{
	return hash_estimate_size(usage_guard_max_counters, sizeof(CounterEntry));
}

/* Bytes of shared memory the counters need */
static Size
CountersShmemSize(void)
{
	Size		size = MAXALIGN(sizeof(CountersShared));

	size = add_size(size, HashShmemSize());
	size = add_size(size, MAXALIGN(mul_size(ExtensionSlots(), sizeof(CounterExtension))));
	return add_size(size, MAXALIGN(mul_size(LongNameSlots(), sizeof(CounterLongName))));
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

static bool
KeyIsLong(const CounterKey *k)
{
	return k->tenant_len + k->feature_len + k->subject_len > UG_INLINE_NAMES;
}

static const char *
StoredNames(const CounterName *s)
{
	return s->spilled ? longnames[s->n.spill].names : s->n.names;
}

/*
 * The hash's match function: a stored key (the entry's) against a lookup
 * key, always in that order (every caller passes a CounterKey).
 */
static int
CounterMatch(const void *stored, const void *lookup, Size keysize)
{
	const CounterName *s = (const CounterName *) stored;
	const CounterKey *k = (const CounterKey *) lookup;
	const char *p;

	if (s->dbid != k->dbid || s->ledger != k->ledger ||
		s->tenant_len != k->tenant_len || s->feature_len != k->feature_len ||
		s->subject_len != k->subject_len)
		return 1;
	p = StoredNames(s);
	if (memcmp(p, k->tenant_id, k->tenant_len) != 0 ||
		memcmp(p + k->tenant_len, k->feature_key, k->feature_len) != 0 ||
		memcmp(p + k->tenant_len + k->feature_len, k->subject_id, k->subject_len) != 0)
		return 1;
	return 0;
}

/*
 * The hash's keycopy function: store a new entry's key packed.  Long names
 * go to the slot EnterKey took beforehand (a keycopy cannot fail).
 */
static void *
CounterKeyCopy(void *dest, const void *src, Size keysize)
{
	CounterName *s = (CounterName *) dest;
	const CounterKey *k = (const CounterKey *) src;
	char	   *p;

	s->dbid = k->dbid;
	s->ledger = k->ledger;
	s->tenant_len = k->tenant_len;
	s->feature_len = k->feature_len;
	s->subject_len = k->subject_len;
	s->spilled = KeyIsLong(k);
	if (s->spilled)
	{
		Assert(pending_spill >= 0);
		s->n.spill = pending_spill;
		pending_spill = -1;
		p = longnames[s->n.spill].names;
	}
	else
		p = s->n.names;
	memcpy(p, k->tenant_id, k->tenant_len);
	memcpy(p + k->tenant_len, k->feature_key, k->feature_len);
	memcpy(p + k->tenant_len + k->feature_len, k->subject_id, k->subject_len);
	return dest;
}

/* Rebuild the lookup form of a stored key */
static void
NameToKey(const CounterName *s, const char *names, CounterKey *key)
{
	memset(key, 0, sizeof(CounterKey));
	key->dbid = s->dbid;
	key->ledger = s->ledger;
	key->tenant_len = s->tenant_len;
	key->feature_len = s->feature_len;
	key->subject_len = s->subject_len;
	memcpy(key->tenant_id, names, s->tenant_len);
	memcpy(key->feature_key, names + s->tenant_len, s->feature_len);
	memcpy(key->subject_id, names + s->tenant_len + s->feature_len, s->subject_len);
}

/* The hash value of an entry's key (for assertions and removal) */
static uint32 pg_attribute_unused()
EntryHash(const CounterEntry *e)
{
	CounterKey	key;

	NameToKey(&e->key, StoredNames(&e->key), &key);
	return CounterKeyHash(&key);
}

/*
 * The pools' free lists: slots of `stride` bytes from `base`, each with its
 * next free slot (int32) at `next_off`.  Take gives -1 when none is free.
 */
static int32
PoolTake(SlotPool *pool, char *base, Size stride, Size next_off)
{
	int32		slot;

	SpinLockAcquire(&shared->pool_lock);
	slot = pool->free_head;
	if (slot >= 0)
	{
		pool->free_head = *(int32 *) (base + slot * stride + next_off);
		pool->used++;
	}
	SpinLockRelease(&shared->pool_lock);
	return slot;
}

static void
PoolGive(SlotPool *pool, char *base, Size stride, Size next_off, int32 slot)
{
	Assert(slot >= 0 && slot < pool->size);
	SpinLockAcquire(&shared->pool_lock);
	*(int32 *) (base + slot * stride + next_off) = pool->free_head;
	pool->free_head = slot;
	pool->used--;
	SpinLockRelease(&shared->pool_lock);
}

static void
PoolInit(SlotPool *pool, char *base, Size stride, Size next_off, int32 size)
{
	pool->size = size;
	pool->used = 0;
	pool->free_head = size > 0 ? 0 : -1;
	for (int32 i = 0; i < size; i++)
		*(int32 *) (base + i * stride + next_off) = i + 1 < size ? i + 1 : -1;
}

#define EXT_POOL	&shared->ext, (char *) extensions, sizeof(CounterExtension), \
	offsetof(CounterExtension, next_free)
#define LONG_POOL	&shared->longnames, (char *) longnames, sizeof(CounterLongName), \
	offsetof(CounterLongName, next_free)

/*
 * Find or add a key's entry; NULL when there is no room (the hash or the
 * long-name pool is full).  The caller holds the partition lock exclusive.
 */
static CounterEntry *
EnterKey(const CounterKey *key, uint32 hash, bool *found)
{
	CounterEntry *e;

	Assert(LWLockHeldByMeInMode(CounterPartitionLock(hash), LW_EXCLUSIVE));
	if (KeyIsLong(key))
	{
		e = hash_search_with_hash_value(counters, key, hash, HASH_FIND, NULL);
		if (e != NULL)
		{
			*found = true;
			return e;
		}
		pending_spill = PoolTake(LONG_POOL);
		if (pending_spill < 0)
		{
			*found = false;
			return NULL;
		}
	}
	e = hash_search_with_hash_value(counters, key, hash, HASH_ENTER_NULL, found);
	if (pending_spill >= 0)
	{
		/* not taken by CounterKeyCopy: no room in the hash */
		PoolGive(LONG_POOL, pending_spill);
		pending_spill = -1;
	}
	if (e != NULL && !*found)
	{
		e->nwindows = 0;
		e->nrates = 0;
		e->ext = -1;
		pg_atomic_init_u32(&e->last_used, 0);
		CounterTouch(e);
	}
	return e;
}

/* Remove an entry and give back what it holds; all partition locks held exclusive */
static void
RemoveEntry(CounterEntry *e)
{
	CounterKey	key;
	int32		spill = e->key.spilled ? e->key.n.spill : -1;

	FreeRings(e);
	if (e->ext >= 0)
		PoolGive(EXT_POOL, e->ext);
	NameToKey(&e->key, StoredNames(&e->key), &key);
	hash_search_with_hash_value(counters, &key, CounterKeyHash(&key), HASH_REMOVE, NULL);
	/* after the removal: its match read the names */
	if (spill >= 0)
		PoolGive(LONG_POOL, spill);
}

/* Window i (0 .. nwindows - 1) of an entry */
CounterWindow *
CounterWindowAt(CounterEntry *entry, int i)
{
	Assert(i >= 0 && i < entry->nwindows);
	if (i < UG_INLINE_WINDOWS)
		return &entry->inline_windows[i];
	Assert(entry->ext >= 0);
	return &extensions[entry->ext].windows[i - UG_INLINE_WINDOWS];
}

/* May the entry hold rate state without taking a slot? */
bool
CounterRateRoom(const CounterEntry *entry)
{
	return entry->ext >= 0;
}

/* Give an entry an extension slot; false when the pool is empty */
static bool
TakeExtension(CounterEntry *e)
{
	if (e->ext < 0)
		e->ext = PoolTake(EXT_POOL);
	return e->ext >= 0;
}

/* Give back an entry's extension slot when it no longer needs it */
static void
TrimExtension(CounterEntry *e)
{
	if (e->ext >= 0 && e->nwindows <= UG_INLINE_WINDOWS && e->nrates == 0)
	{
		PoolGive(EXT_POOL, e->ext);
		e->ext = -1;
	}
}

/* shmem_startup_hook part: create or attach */
void
CountersShmemStartup(void)
{
	bool		found;
	HASHCTL		info;
	int32		next = ExtensionSlots();
	int32		nlong = LongNameSlots();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("usage_guard counters", sizeof(CountersShared), &found);
	extensions = ShmemInitStruct("usage_guard counter extensions",
								 mul_size(next, sizeof(CounterExtension)), &found);
	longnames = ShmemInitStruct("usage_guard counter long names",
								mul_size(nlong, sizeof(CounterLongName)), &found);
	if (!found)
	{
		shared->locks = GetNamedLWLockTranche("usage_guard");
		SpinLockInit(&shared->pool_lock);
		PoolInit(EXT_POOL, next);
		PoolInit(LONG_POOL, nlong);
	}

	info.keysize = sizeof(CounterName);
	info.entrysize = sizeof(CounterEntry);
	info.hash = CounterHashFn;
	info.match = CounterMatch;
	info.keycopy = CounterKeyCopy;
	info.num_partitions = UG_NUM_PARTITIONS;
	counters = ShmemInitHash("usage_guard counters hash",
							 usage_guard_max_counters, usage_guard_max_counters,
							 &info,
							 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_KEYCOPY |
							 HASH_PARTITION | HASH_FIXED_SIZE);
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

/*
 * Bytes of shared memory one tracked key with up to two windows costs: its
 * entry, the hash's element header and its share of the buckets (the pools
 * are extra: shmem_info shows them).
 */
Size
CounterEntrySize(void)
{
	return HashShmemSize() / Max(usage_guard_max_counters, 1);
}

/* Fill a lookup key */
void
MakeCounterKey(CounterKey *key, Oid ledger, const char *tenant_id, const char *subject_id,
			   const char *feature_key)
{
	/* no memset: keys are compared and hashed by their names' lengths */
	key->dbid = MyDatabaseId;
	key->ledger = ledger;
	key->tenant_len = Min(strlcpy(key->tenant_id, tenant_id, sizeof(key->tenant_id)), UG_NAME_MAX);
	key->feature_len = Min(strlcpy(key->feature_key, feature_key, sizeof(key->feature_key)), UG_NAME_MAX);
	key->subject_len = 0;
	key->subject_id[0] = '\0';
	if (subject_id != NULL)
		key->subject_len = Min(strlcpy(key->subject_id, subject_id, sizeof(key->subject_id)), UG_NAME_MAX);
	/* names are checked against UG_NAME_MAX before they get here */
	Assert(strlen(tenant_id) <= UG_NAME_MAX && strlen(feature_key) <= UG_NAME_MAX);
}

/* Do two lookup keys name the same counters? */
bool
CounterKeyEquals(const CounterKey *a, const CounterKey *b)
{
	return a->dbid == b->dbid && a->ledger == b->ledger &&
		a->tenant_len == b->tenant_len && a->feature_len == b->feature_len &&
		a->subject_len == b->subject_len &&
		memcmp(a->tenant_id, b->tenant_id, a->tenant_len) == 0 &&
		memcmp(a->feature_key, b->feature_key, a->feature_len) == 0 &&
		memcmp(a->subject_id, b->subject_id, a->subject_len) == 0;
}

uint32
CounterKeyHash(const CounterKey *key)
{
	uint32		h = hash_bytes((const unsigned char *) key->tenant_id, key->tenant_len);

	h = hash_combine(h, hash_bytes((const unsigned char *) key->feature_key, key->feature_len));
	if (key->subject_len > 0)
		h = hash_combine(h, hash_bytes((const unsigned char *) key->subject_id, key->subject_len));
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
	{
		CounterWindow *w = CounterWindowAt(entry, i);

		if (w->start == start && w->end == end)
			return w;
	}
	return NULL;
}

/* Seconds are enough for eviction's "least recently used", and fit in 32 bits */
void
CounterTouch(CounterEntry *entry)
{
	pg_atomic_write_u32(&entry->last_used,
						(uint32) (GetCurrentTransactionStartTimestamp() / USECS_PER_SEC));
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
EntryIdle(CounterEntry *e, TimestampTz now)
{
	for (int i = 0; i < e->nwindows; i++)
		if (!WindowIdle(CounterWindowAt(e, i)))
			return false;
	for (int i = 0; i < e->nrates; i++)
		if (extensions[e->ext].rates[i].tat > (double) now)
			return false;
	return true;
}

/*
 * The state of the rate limit of period `length`, created (empty) if asked
 * and there is room (the entry's extension slot, taken if needed).
 */
CounterRate *
CounterFindRate(CounterEntry *entry, int64 length, bool create)
{
	CounterRate *rates = entry->ext >= 0 ? extensions[entry->ext].rates : NULL;

	for (int i = 0; i < entry->nrates; i++)
		if (rates[i].length == length)
			return &rates[i];
	if (!create || entry->nrates >= UG_MAX_RATES)
		return NULL;
	Assert(LWLockHeldByMeInMode(CounterPartitionLock(EntryHash(entry)), LW_EXCLUSIVE));
	if (!TakeExtension(entry))
		return NULL;
	rates = extensions[entry->ext].rates;
	rates[entry->nrates].length = length;
	rates[entry->nrates].tat = 0;
	return &rates[entry->nrates++];
}

/*
 * Make sure a key has an entry (for rate state, which needs no load), with
 * room for rate state if `rates`.  The caller holds no LWLock.  False when
 * there is no room even after eviction.
 */
bool
CounterEnsureEntry(const CounterKey *key, uint32 hash, bool rates)
{
	LWLock	   *lock = CounterPartitionLock(hash);

	for (int attempt = 0; attempt < 2; attempt++)
	{
		CounterEntry *e;
		bool		found;
		bool		ok;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = EnterKey(key, hash, &found);
		ok = e != NULL && (!rates || TakeExtension(e));
		LWLockRelease(lock);
		if (ok)
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
 * Make room when the hash or a pool is full: remove the idle keys (no
 * reservation in flight) used less recently than the average idle key.
 * Removing a key is always safe (it is loaded again from the ledger);
 * keeping busy ones just avoids needless reloads.  Returns how many were
 * removed.
 *
 * The bound on eviction work: one pass removes at least one key (every idle
 * key at the minimum is at or below the mean) and usually about half of the
 * idle ones, so with max_counters keys a pass frees room for many loads; a
 * load that still finds no room takes the table path instead of evicting
 * again (each caller evicts at most once per attempt, two attempts).
 */
static int
EvictIdle(void)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *e;
	uint64		min = PG_UINT64_MAX;
	uint64		excess = 0;
	long		n = 0;
	int			removed = 0;
	uint64		threshold;
	TimestampTz now = GetCurrentTimestamp();

	LockAllPartitions(LW_EXCLUSIVE);
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
		if (EntryIdle(e, now))
			min = Min(min, pg_atomic_read_u32(&e->last_used));
	/* the mean, in integers: a double sum of stamps rounds below equal values */
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (EntryIdle(e, now))
		{
			excess += pg_atomic_read_u32(&e->last_used) - min;
			n++;
		}
	}
	threshold = n > 0 ? min + excess / (uint64) n : 0;
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (n > 0 && EntryIdle(e, now) && pg_atomic_read_u32(&e->last_used) <= threshold)
		{
			RemoveEntry(e);
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
			 errhint("Raise usage_guard.max_counters (now %d) or usage_guard.max_counter_extensions (now %d slots) and restart.",
					 usage_guard_max_counters, ExtensionSlots())));
}

/*
 * Pick a slot for a new window [start, ...) in an entry, for a request at
 * `now`: a free one, else an idle one that ended before `now` (the request
 * needs no window that ended before it), else a new one in the entry's
 * extension, else the idle one that starts last if it starts after the new
 * one (a window of a later period, loaded ahead: the new one is needed
 * sooner).  A window the request needs is never displaced by one it does
 * not.  -1 if none; *no_ext when an extension slot was wanted and the pool
 * had none.
 */
static int
WindowSlot(CounterEntry *e, TimestampTz now, TimestampTz start, bool *no_ext)
{
	int			later = -1;

	/* a rolling window is always current: it may displace only later periods */
	if (IsRollingWindow(start))
		start = now;
	*no_ext = false;
	if (e->nwindows < (e->ext >= 0 ? UG_MAX_WINDOWS : UG_INLINE_WINDOWS))
		return e->nwindows++;
	for (int i = 0; i < e->nwindows; i++)
	{
		CounterWindow *w = CounterWindowAt(e, i);

		if (!WindowIdle(w))
			continue;
		if (w->end <= now && w->ring < 0)
			return i;
		if (w->ring < 0 && w->start > start &&
			(later < 0 || w->start > CounterWindowAt(e, later)->start))
			later = i;
	}
	if (e->nwindows < UG_MAX_WINDOWS)
	{
		if (TakeExtension(e))
			return e->nwindows++;
		*no_ext = true;
	}
	return later;
}

/*
 * Would WindowSlot find a slot for [start, ...) without evicting anything?
 * For windows loaded ahead: not worth two ledger scans when they cannot be
 * kept.  The caller holds the partition lock.
 */
bool
CounterWindowRoom(CounterEntry *e, TimestampTz now, TimestampTz start)
{
	if (e->nwindows < (e->ext >= 0 ? UG_MAX_WINDOWS : UG_INLINE_WINDOWS))
		return true;
	for (int i = 0; i < e->nwindows; i++)
	{
		CounterWindow *w = CounterWindowAt(e, i);

		if (WindowIdle(w) && w->ring < 0 && (w->end <= now || w->start > start))
			return true;
	}
	if (e->nwindows >= UG_MAX_WINDOWS)
		return false;
	/*
	 * A hint, read without the spinlock (every consume of a full key asks):
	 * TakeExtension decides under it, and a window that finds no slot after
	 * all is just not loaded ahead.
	 */
	return *(volatile int32 *) &shared->ext.free_head >= 0;
}

/*
 * Add a loaded window to a key, creating the key's entry if needed, for a
 * request at time `now`.  The caller holds the key's heavyweight lock in
 * ExclusiveLock and no LWLock.  False when there is no room even after
 * eviction.  An `optional` window (the next period's, loaded ahead) is
 * added only where there is room: nothing is evicted for it.
 */
bool
CounterAddWindow(const CounterKey *key, uint32 hash, TimestampTz start, TimestampTz end,
				 Amount usage, Amount reserved, Amount credit, TimestampTz now, int32 ring,
				 bool optional)
{
	LWLock	   *lock = CounterPartitionLock(hash);

	for (int attempt = 0; attempt < 2; attempt++)
	{
		CounterEntry *e;
		bool		found;
		bool		no_ext = false;
		int			slot;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = EnterKey(key, hash, &found);
		if (e != NULL)
		{
			if (CounterFindWindow(e, start, end) == NULL)
			{
				int			before = e->nwindows;
				CounterWindow *w;

				slot = WindowSlot(e, now, start, &no_ext);
				if (slot < 0)
				{
					LWLockRelease(lock);
					if (!optional && no_ext && attempt == 0 && EvictIdle() > 0)
						continue;
					RingFree(ring);
					return false;
				}
				w = CounterWindowAt(e, slot);
				if (slot < before)
					RingFree(w->ring);	/* an idle window replaced */
				w->ring = ring;
				w->start = start;
				w->end = end;
				w->usage = usage;
				w->reserved = reserved;
				w->credit = credit;
			}
			else
				RingFree(ring);	/* another loader was first */
			CounterTouch(e);
			LWLockRelease(lock);
			return true;
		}
		LWLockRelease(lock);
		if (optional || EvictIdle() == 0)
			break;
	}
	RingFree(ring);
	return false;
}

/*
 * A copy of this database's entries of `ledger`, taken under all partition
 * locks (shared) and returned in the caller's memory context.
 */
CounterSnapshotData *
CounterSnapshot(Oid ledger)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *e;
	CounterSnapshotData *snap = palloc0(sizeof(CounterSnapshotData));
	long		nkeys = 0;
	long		nwindows = 0;
	int			n = 0;
	int			w = 0;

	if (counters == NULL)
		return snap;
	LockAllPartitions(LW_SHARED);
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (e->key.dbid != MyDatabaseId || e->key.ledger != ledger)
			continue;
		nkeys++;
		nwindows += e->nwindows;
	}
	/* huge: a million keys with their windows are more than 1 GB */
	snap->keys = palloc_extended(Max(nkeys, 1) * sizeof(CounterCopy),
								 MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	snap->windows = palloc_extended(Max(nwindows, 1) * sizeof(CounterWindow),
									MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (snap->keys == NULL || snap->windows == NULL)
	{
		UnlockAllPartitions();
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory copying %ld live counters", nkeys)));
	}
	hash_seq_init(&scan, counters);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		CounterCopy *c;

		if (e->key.dbid != MyDatabaseId || e->key.ledger != ledger)
			continue;
		c = &snap->keys[n++];
		c->key = e->key;
		c->spilled_names = NULL;
		if (e->key.spilled)
		{
			/* outside the pool: its slot may be reused once the locks are gone */
			int			len = e->key.tenant_len + e->key.feature_len + e->key.subject_len;

			c->spilled_names = palloc(len);
			memcpy(c->spilled_names, StoredNames(&e->key), len);
		}
		c->first = w;
		c->nwindows = e->nwindows;
		for (int i = 0; i < e->nwindows; i++)
			snap->windows[w++] = *CounterWindowAt(e, i);
	}
	UnlockAllPartitions();
	snap->count = n;
	return snap;
}

/* The lookup key of a snapshot's key i */
void
CounterCopyKey(const CounterSnapshotData *snap, int i, CounterKey *key)
{
	const CounterCopy *c = &snap->keys[i];

	NameToKey(&c->key, c->key.spilled ? c->spilled_names : c->key.n.names, key);
}

/*
 * Remove this database's entries of ledgers other than `ledger` (an
 * extension dropped and created again): their keys can never be used.
 * InvalidOid removes every entry of the database (a shard of its ledger
 * came or went: citus.c); an in-flight write into a removed entry settles
 * into nothing, and the next decision loads the key from the ledger.
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
			RemoveEntry(e);
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
		CounterWindow *w = CounterWindowAt(entry, i);

		if (w->start == start && w->end == end)
		{
			RingFree(w->ring);
			*w = *CounterWindowAt(entry, entry->nwindows - 1);
			entry->nwindows--;
			TrimExtension(entry);
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
	CounterSnapshotData *snap;
	CounterKey *key = palloc(sizeof(CounterKey));

	InitMaterializedSRF(fcinfo, 0);
	/* copy under the locks, build tuples after */
	snap = CounterSnapshot(LedgerRelid());
	for (int k = 0; k < snap->count; k++)
	{
		CounterCopy *c = &snap->keys[k];

		CounterCopyKey(snap, k, key);
		for (int i = 0; i < c->nwindows; i++)
		{
			Datum		values[8];
			bool		nulls[8] = {0};
			CounterWindow *w = &snap->windows[c->first + i];

			values[0] = CStringGetTextDatum(key->tenant_id);
			values[1] = CStringGetTextDatum(key->feature_key);
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
			values[7] = CStringGetTextDatum(key->subject_id);
			nulls[7] = (key->subject_len == 0);
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
 * Columns 6-13 (the shared policy cache, the counters' pools) since 0.8.0.
 */
Datum
usage_guard_shmem_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13] = {0};
	long		used = 0;
	int64		ext_used = 0;
	int64		long_used = 0;
	int64		policy[5];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != 5 && tupdesc->natts != 13)
		elog(ERROR, "usage_guard: shmem_info has %d columns, this library knows 5 or 13",
			 tupdesc->natts);
	if (counters != NULL)
	{
		LockAllPartitions(LW_SHARED);
		used = hash_get_num_entries(counters);
		SpinLockAcquire(&shared->pool_lock);
		ext_used = shared->ext.used;
		long_used = shared->longnames.used;
		SpinLockRelease(&shared->pool_lock);
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
	values[10] = Int64GetDatum(counters != NULL ? ExtensionSlots() : 0);
	values[11] = Int64GetDatum(ext_used);
	values[12] = Int64GetDatum(long_used);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

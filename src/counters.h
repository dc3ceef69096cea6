/*
 * counters.h
 *		Live usage counters in shared memory (counters.c) and the backend's
 *		own in-flight writes (writes.c).
 */
#ifndef USAGE_GUARD_COUNTERS_H
#define USAGE_GUARD_COUNTERS_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/lock.h"
#include "storage/lwlock.h"

#include "amount.h"

/*
 * The one limit on names, in bytes: tenant ids, feature keys, plan codes and
 * idempotency keys.  Arguments, the catalog's CHECK constraints, the ledger
 * trigger, the caches and the counters all use it, so a name is either
 * refused everywhere (22023) or kept whole everywhere, never truncated.
 */
#define UG_NAME_MAX		255
#define UG_MAX_WINDOWS	8		/* live windows per tenant and feature */
#define UG_NUM_PARTITIONS 128	/* partition LWLocks of the hash */
#define UG_MAX_RATES	4		/* rate limits per key (per second, minute, hour, ...) */

/*
 * What the counters are kept for: one tenant's feature in one database, at
 * one level of the tenant's subjects (subject_id "" is the tenant itself).
 * feature_key "" holds the state of request-rate limits (no feature).
 *
 * This is the backend's form, with every name whole, used to look a key up,
 * lock it and remember own writes.  Shared memory stores it packed
 * (CounterName).
 */
typedef struct CounterKey
{
	Oid			dbid;
	Oid			ledger;			/* usage_events' OID: a new extension starts afresh */
	uint8		tenant_len;		/* strlen of each name: UG_NAME_MAX fits */
	uint8		feature_len;
	uint8		subject_len;
	char		tenant_id[UG_NAME_MAX + 1];
	char		feature_key[UG_NAME_MAX + 1];
	char		subject_id[UG_NAME_MAX + 1];
} CounterKey;

/* Window slots in an entry itself; the others (and rate state) are in an extension */
#define UG_INLINE_WINDOWS	2
/* Bytes of names (tenant, feature, subject; packed) kept in the entry itself */
#define UG_INLINE_NAMES		56

/*
 * A key as shared memory stores it: the names packed one after the other
 * without terminators, in the entry when they fit in UG_INLINE_NAMES bytes,
 * else in a long-name slot (`spill`).  Names are kept whole, never as a
 * digest: two keys are equal only when every byte of their names is.
 */
typedef struct CounterName
{
	Oid			dbid;
	Oid			ledger;
	uint8		tenant_len;
	uint8		feature_len;
	uint8		subject_len;
	bool		spilled;
	union
	{
		char		names[UG_INLINE_NAMES];
		int32		spill;		/* index of the long-name slot */
	}			n;
} CounterName;

/* One window [start, end) of a key */
typedef struct CounterWindow
{
	TimestampTz start;
	TimestampTz end;
	Amount		usage;			/* committed */
	Amount		reserved;		/* positive amounts in flight: counted */
	Amount		credit;			/* negative amounts in flight: not yet counted */
	int32		ring;			/* rolling window: its ring (rolling.c); -1 calendar */
} CounterWindow;

/*
 * A rolling window's identity in a key's windows: start UG_ROLLING_START,
 * end its length in microseconds (no calendar window starts there).
 */
#define UG_ROLLING_START	(PG_INT64_MIN + 1)
#define IsRollingWindow(start)	((start) == UG_ROLLING_START)

/*
 * The state of one GCRA rate limit of a key: the theoretical arrival time
 * (microseconds since the PostgreSQL epoch, fractional).  Not derived from
 * the ledger: a restart starts it afresh (docs/architecture.md).
 */
typedef struct CounterRate
{
	int64		length;			/* the limit's period in microseconds: its identity */
	double		tat;
} CounterRate;

/*
 * A tracked key.  Sized for the common case, a tenant's feature with one or
 * two live windows (224 bytes); windows beyond UG_INLINE_WINDOWS and rate
 * state live in an extension slot taken from a pool when first needed.
 * Reach windows through CounterWindowAt, rates through CounterFindRate.
 */
typedef struct CounterEntry
{
	CounterName key;			/* hash key: must be first */
	uint8		nwindows;
	uint8		nrates;
	int32		ext;			/* extension slot, or -1 */
	pg_atomic_uint32 last_used; /* seconds, for eviction; written under a shared lock */
	CounterWindow inline_windows[UG_INLINE_WINDOWS];
} CounterEntry;

/*
 * A copy of the live counters of one ledger (live_counters, reset_counters),
 * taken at once under every partition lock.
 */
typedef struct CounterCopy
{
	CounterName key;
	char	   *spilled_names;	/* a copy of the long names, when spilled */
	int			nwindows;
	int			first;			/* its windows: windows[first .. first + nwindows) */
} CounterCopy;

typedef struct CounterSnapshotData
{
	int			count;
	CounterCopy *keys;
	CounterWindow *windows;
} CounterSnapshotData;

/* A row this backend wrote in the current transaction and not yet settled */
typedef struct LocalWrite
{
	CounterKey	key;
	uint32		hash;
	TimestampTz at;
	Amount		amount;
	SubTransactionId subid;
	bool		undoable;		/* may be taken back (idempotent insert): never merged */
	bool		mixed;			/* merged writes with different times */
	bool		scoped;			/* a window reset: counts in [scope_start, scope_end) only */
	TimestampTz scope_start;
	TimestampTz scope_end;
	int			nregistered;	/* windows this write was added to */
	TimestampTz reg_start[UG_MAX_WINDOWS];
	TimestampTz reg_end[UG_MAX_WINDOWS];
	struct LocalWrite *next;
} LocalWrite;

/* counters.c */
extern int	usage_guard_max_counters;
extern void CountersShmemRequest(void);
extern void CountersShmemStartup(void);
extern bool CountersAvailable(void);
extern bool CountersUsable(void);
extern CounterSnapshotData *CounterSnapshot(Oid ledger);
extern void CounterCopyKey(const CounterSnapshotData *snap, int i, CounterKey *key);
extern int	CounterRemoveStale(Oid ledger);
extern void CounterSetUsage(const CounterKey *key, uint32 hash, TimestampTz start,
							TimestampTz end, Amount usage);
extern void CounterRemoveWindow(const CounterKey *key, uint32 hash, TimestampTz start,
								TimestampTz end);
extern void MakeCounterKey(CounterKey *key, Oid ledger, const char *tenant_id,
						   const char *subject_id, const char *feature_key);
extern bool CounterEnsureEntry(const CounterKey *key, uint32 hash, bool rates);
extern bool CounterRateRoom(const CounterEntry *entry);
extern CounterWindow *CounterWindowAt(CounterEntry *entry, int i);
extern bool CounterWindowRoom(CounterEntry *e, TimestampTz now, TimestampTz start);
extern CounterRate *CounterFindRate(CounterEntry *entry, int64 length, bool create);
extern uint32 CounterKeyHash(const CounterKey *key);
extern bool CounterKeyEquals(const CounterKey *a, const CounterKey *b);
extern LWLock *CounterPartitionLock(uint32 hash);
extern CounterEntry *CounterLookup(const CounterKey *key, uint32 hash);
extern CounterWindow *CounterFindWindow(CounterEntry *entry, TimestampTz start, TimestampTz end);
extern bool CounterAddWindow(const CounterKey *key, uint32 hash, TimestampTz start,
							 TimestampTz end, Amount usage, Amount reserved,
							 Amount credit, TimestampTz now, int32 ring, bool optional);
extern void CounterTouch(CounterEntry *entry);
extern void CounterReportFull(void);
extern Size CounterEntrySize(void);
extern int	usage_guard_max_counter_extensions;

/* rolling.c */
extern int	usage_guard_rolling_buckets;
extern void RollingShmemRequest(void);
extern void RollingShmemStartup(void);
extern bool RollingAvailable(void);
extern int64 RollingGranularity(int64 length);
extern int64 BucketOf(TimestampTz t, int64 g);
extern int32 RingAlloc(int64 length, int64 head);
extern void RingFree(int32 id);
extern int64 RingBucketNo(int32 id, TimestampTz t);
extern void RingLoadBucket(int32 id, int64 bucketno, Amount amount);
extern bool RingContains(const CounterWindow *win, TimestampTz at);
extern void RingCommit(CounterWindow *win, TimestampTz at, Amount amount);
extern Amount RingUsage(const CounterWindow *win, TimestampTz at, Amount cap, Amount need,
						TimestampTz *free_at, TimestampTz *reset_at);
extern void RingRange(const CounterWindow *win, TimestampTz *start, TimestampTz *end);
extern void WindowCommit(CounterWindow *win, TimestampTz at, Amount amount);

/* loader.c */
extern bool LoadWindows(const CounterKey *key, uint32 hash, const TimestampTz *starts,
						const TimestampTz *ends, int n, int required, bool wait,
						TimestampTz at);

/* writes.c */
extern void WritesInit(void);
extern LocalWrite *CountWrite(CounterEntry *entry, const CounterKey *key, uint32 hash,
							  TimestampTz at, Amount amount, bool undoable);
extern LocalWrite *CountScopedWrite(CounterEntry *entry, const CounterKey *key, uint32 hash,
									TimestampTz start, TimestampTz end, Amount amount);
extern void UndoLocalWrite(LocalWrite *w);
extern bool OwnWritesIn(const CounterKey *key, TimestampTz start, TimestampTz end,
						Amount *positive, Amount *negative);
extern bool OwnWritesSince(const CounterKey *key, TimestampTz since, int32 ring,
						   Amount *positive, Amount *negative);
extern void RegisterOwnWritesIn(const CounterKey *key, TimestampTz start, TimestampTz end);
extern void RegisterOwnWritesSince(const CounterKey *key, TimestampTz start, TimestampTz end,
								   TimestampTz since);
extern void LockIdempotencyKey(const char *tenant_id, const char *feature_key, const char *key);
extern bool LockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode);
extern bool LockLedgerWide(bool wait);
extern bool LockKeyForLoad(const CounterKey *key, uint32 hash, bool wait);
extern void UnlockKeyForLoad(const CounterKey *key, uint32 hash);
extern void UnlockLedgerWide(void);
extern bool ConditionalLockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode);
extern void UnlockCounterKey(const CounterKey *key, uint32 hash, LOCKMODE mode);

#endif							/* USAGE_GUARD_COUNTERS_H */

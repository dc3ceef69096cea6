/*
 * queue.c
 *		The queue action of rate and concurrency limits (subject_limits.action
 *		= 'queue'): a refused admit waits for room, up to the limit's
 *		queue_timeout, with at most queue_depth calls waiting for that limit,
 *		then decides again.
 *
 * The depth is counted in shared memory: a fixed table of atomic counters,
 * one slot per (tenant, limit, subject) hashed.  Two limits that share a
 * slot share a depth, which can only make the bound stricter, never looser.
 * A waiting backend holds no lock of usage_guard's (the engine gave back
 * the key locks of the refused try, and the caller gives back its lease-
 * holder locks first): it sleeps on its latch, so a cancel or shutdown ends
 * the wait at once, and leaves the queue on error too.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/wait_event.h"

#include "usage_guard.h"

#define QUEUE_SLOTS 4096

static pg_atomic_uint32 *queue_slots = NULL;

static Size
QueueShmemSize(void)
{
	return MAXALIGN(sizeof(pg_atomic_uint32) * QUEUE_SLOTS);
}

void
QueueShmemRequest(void)
{
	RequestAddinShmemSpace(QueueShmemSize());
}

/* Called with AddinShmemInitLock held */
void
QueueShmemStartup(void)
{
	bool		found;

	queue_slots = ShmemInitStruct("usage_guard queues", QueueShmemSize(), &found);
	if (!found)
		for (int i = 0; i < QUEUE_SLOTS; i++)
			pg_atomic_init_u32(&queue_slots[i], 0);
}

/* The queue slot of a limit for one subject of a tenant */
int
QueueSlot(const char *tenant_id, int64 limit_id, const char *subject_id)
{
	uint32		h = hash_bytes((const unsigned char *) tenant_id, strlen(tenant_id));

	h = hash_combine(h, hash_bytes((const unsigned char *) &limit_id, sizeof(limit_id)));
	if (subject_id)
		h = hash_combine(h, hash_bytes((const unsigned char *) subject_id, strlen(subject_id)));
	return (int) (h % QUEUE_SLOTS);
}

/*
 * Join a limit's queue: false when `depth` calls are waiting already (or
 * shared memory is not there: without preload nothing can be queued).
 */
bool
QueueEnter(int slot, int depth)
{
	uint32		n;

	if (queue_slots == NULL)
		return false;
	n = pg_atomic_read_u32(&queue_slots[slot]);
	for (;;)
	{
		if (n >= (uint32) depth)
			return false;
		if (pg_atomic_compare_exchange_u32(&queue_slots[slot], &n, n + 1))
			return true;
	}
}

void
QueueLeave(int slot)
{
	if (queue_slots != NULL)
		pg_atomic_fetch_sub_u32(&queue_slots[slot], 1);
}

/* Sleep up to `usecs` on the latch, no lock held; interrupts end it */
void
QueueWait(int64 usecs)
{
	long		ms = (long) Max((usecs + 999) / 1000, 1);

	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
					 PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Calls waiting in every queue now (the gauge usage_guard_queued) */
int64
QueueWaiting(void)
{
	int64		n = 0;

	if (queue_slots == NULL)
		return 0;
	for (int i = 0; i < QUEUE_SLOTS; i++)
		n += pg_atomic_read_u32(&queue_slots[i]);
	return n;
}

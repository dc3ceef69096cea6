/*
 * rolling.c
 *		Rolling windows ("the last 24 hours") in shared memory: a ring of
 *		buckets per live rolling window, drawn from a fixed pool.
 *
 * A rolling window of length L has a granularity g: 1 minute for L up to
 * 24 hours, 1 hour beyond (L is a whole number of g, at most 90 days).  Its
 * usage at time t is every unit in the buckets floor(t/g) - L/g .. floor(t/g),
 * i.e. the ledger's rows with occurred_at >= floor(t/g)*g - L: the window
 * (t - L, t] with its start rounded down to the bucket, so a unit recorded
 * at x counts until the first bucket boundary after x, plus L (between L and
 * L + g; never less than L, so no limit is passed by rounding).
 *
 * A ring holds n + 1 = L/g + 1 buckets of 16 bytes in pages of
 * UG_RING_PAGE buckets from a pool of usage_guard.rolling_buckets buckets
 * (a 24-hour window: 1441 buckets, 23 KB; 30 days: 721, 12 KB).  The ring's
 * CounterWindow keeps the committed total (usage) and in-flight amounts
 * (reserved, credit) as a calendar window does; the buckets say when units
 * leave.  Everything here runs under the key's partition LWLock (exclusive
 * to change a ring), except the pool's free list, under its own spinlock.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "counters.h"

#define UG_RING_PAGE		64
#define UG_RING_MAX_BUCKETS	(90 * 24 + 1)
#define UG_RING_MAX_PAGES	((UG_RING_MAX_BUCKETS + UG_RING_PAGE - 1) / UG_RING_PAGE)

typedef struct RingPage
{
	Amount		b[UG_RING_PAGE];
} RingPage;

typedef struct Ring
{
	int64		g;				/* granularity, microseconds */
	int32		n;				/* buckets in the window: L / g */
	int32		npages;
	int64		head;			/* newest bucket number: floor(t / g) */
	int32		pages[UG_RING_MAX_PAGES];
	int32		next_free;		/* free list of ring headers */
} Ring;

typedef struct RingPool
{
	slock_t		mutex;
	int32		free_ring;
	int32		free_page;
	int32		free_pages;		/* count, for rolling_info */
} RingPool;

int			usage_guard_rolling_buckets = 262144;

static RingPool *pool = NULL;
static Ring *rings = NULL;
static RingPage *pages = NULL;
static int32 *page_next = NULL;

static int
NumPages(void)
{
	return Max(usage_guard_rolling_buckets / UG_RING_PAGE, 1);
}

/* Ring headers: enough for every page to be one ring's */
static int
NumRings(void)
{
	return NumPages();
}

static Size
RollingShmemSize(void)
{
	Size		size = MAXALIGN(sizeof(RingPool));

	size = add_size(size, mul_size(NumRings(), sizeof(Ring)));
	size = add_size(size, mul_size(NumPages(), sizeof(RingPage)));
	size = add_size(size, mul_size(NumPages(), sizeof(int32)));
	return size;
}

void
RollingShmemRequest(void)
{
	RequestAddinShmemSpace(RollingShmemSize());
}

void
RollingShmemStartup(void)
{
	bool		found;
	char	   *base;

	base = ShmemInitStruct("usage_guard rolling windows", RollingShmemSize(), &found);
	pool = (RingPool *) base;
	rings = (Ring *) (base + MAXALIGN(sizeof(RingPool)));
	pages = (RingPage *) (rings + NumRings());
	page_next = (int32 *) (pages + NumPages());
	if (!found)
	{
		SpinLockInit(&pool->mutex);
		for (int i = 0; i < NumRings(); i++)
			rings[i].next_free = (i + 1 < NumRings()) ? i + 1 : -1;
		for (int i = 0; i < NumPages(); i++)
			page_next[i] = (i + 1 < NumPages()) ? i + 1 : -1;
		pool->free_ring = 0;
		pool->free_page = 0;
		pool->free_pages = NumPages();
	}
}

/* Granularity of a rolling window of `length` microseconds */
int64
RollingGranularity(int64 length)
{
	return length <= USECS_PER_DAY ? USECS_PER_MINUTE : USECS_PER_HOUR;
}

static Amount *
Bucket(Ring *r, int64 bucketno)
{
	int64		slot = bucketno % (r->n + 1);

	if (slot < 0)
		slot += r->n + 1;
	return &pages[r->pages[slot / UG_RING_PAGE]].b[slot % UG_RING_PAGE];
}

/*
 * A ring for a window of `length`, with newest bucket `head`, all buckets
 * zero; -1 when the pool has no room.
 */
int32
RingAlloc(int64 length, int64 head)
{
	int64		g = RollingGranularity(length);
	int32		n = (int32) (length / g);
	int32		npages = (n + 1 + UG_RING_PAGE - 1) / UG_RING_PAGE;
	int32		id;
	Ring	   *r;

	Assert(n >= 1 && n + 1 <= UG_RING_MAX_BUCKETS);
	SpinLockAcquire(&pool->mutex);
	if (pool->free_ring < 0 || pool->free_pages < npages)
	{
		SpinLockRelease(&pool->mutex);
		return -1;
	}
	id = pool->free_ring;
	r = &rings[id];
	pool->free_ring = r->next_free;
	for (int i = 0; i < npages; i++)
	{
		r->pages[i] = pool->free_page;
		pool->free_page = page_next[pool->free_page];
	}
	pool->free_pages -= npages;
	SpinLockRelease(&pool->mutex);

	r->g = g;
	r->n = n;
	r->npages = npages;
	r->head = head;
	for (int i = 0; i < npages; i++)
		memset(&pages[r->pages[i]], 0, sizeof(RingPage));
	return id;
}

void
RingFree(int32 id)
{
	Ring	   *r;

	if (id < 0)
		return;
	r = &rings[id];
	SpinLockAcquire(&pool->mutex);
	for (int i = 0; i < r->npages; i++)
	{
		page_next[r->pages[i]] = pool->free_page;
		pool->free_page = r->pages[i];
	}
	pool->free_pages += r->npages;
	r->npages = 0;
	r->next_free = pool->free_ring;
	pool->free_ring = id;
	SpinLockRelease(&pool->mutex);
}

/* The bucket of width g containing t: floor(t / g), also before 2000 */
int64
BucketOf(TimestampTz t, int64 g)
{
	return t >= 0 ? t / g : -((-t + g - 1) / g);
}

int64
RingBucketNo(int32 id, TimestampTz t)
{
	return BucketOf(t, rings[id].g);
}

/* Add to the bucket of `at` a ring with `head` set at load (loader only) */
void
RingLoadBucket(int32 id, int64 bucketno, Amount amount)
{
	Ring	   *r = &rings[id];

	if (bucketno > r->head - r->n - 1 && bucketno <= r->head)
		*Bucket(r, bucketno) += amount;
}

/*
 * Move the ring forward to bucket `to`: the buckets that fall out of the
 * window leave the committed usage.  Partition lock held exclusive.
 */
static void
RingAdvance(CounterWindow *win, int64 to)
{
	Ring	   *r = &rings[win->ring];

	if (to <= r->head)
		return;
	if (to - r->head > r->n)
	{
		for (int64 b = r->head - r->n; b <= r->head; b++)
			*Bucket(r, b) = 0;
		win->usage = 0;
	}
	else
	{
		for (int64 b = r->head - r->n; b < to - r->n; b++)
		{
			Amount	   *p = Bucket(r, b);

			win->usage -= *p;
			*p = 0;
		}
	}
	r->head = to;
}

/* Is a write at `at` in the ring (not already out of every future window)? */
bool
RingContains(const CounterWindow *win, TimestampTz at)
{
	const Ring *r = &rings[win->ring];

	return RingBucketNo(win->ring, at) >= r->head - r->n;
}

/*
 * Settle a committed amount into the ring: its bucket, advancing the ring
 * first if it is newer than the head.  Partition lock held exclusive.
 */
void
RingCommit(CounterWindow *win, TimestampTz at, Amount amount)
{
	Ring	   *r = &rings[win->ring];
	int64		b = RingBucketNo(win->ring, at);

	RingAdvance(win, b);
	if (b < r->head - r->n)
		return;					/* left every window meanwhile */
	*Bucket(r, b) += amount;
	win->usage += amount;
}

/*
 * Usage of a rolling window at `at` (committed, plus in flight), without
 * changing the ring: a decision earlier than the ring's head is judged at
 * the head, which counts at least as much.  With `need` (the units that
 * must fit under `cap`), also when enough committed units will have left
 * for them to fit (*free_at; DT_NOEND if in-flight units alone leave no
 * room) and when the last current unit leaves (*reset_at).
 */
Amount
RingUsage(const CounterWindow *win, TimestampTz at, Amount cap, Amount need,
		  TimestampTz *free_at, TimestampTz *reset_at)
{
	const Ring *r = &rings[win->ring];
	int64		a = Max(RingBucketNo(win->ring, at), r->head);
	Amount		usage = win->usage;
	Amount		left;
	int64		last = -1;
	bool		found = false;

	/* buckets older than a's window, still in the ring */
	for (int64 b = r->head - r->n; b < a - r->n && b <= r->head; b++)
		usage -= *Bucket((Ring *) r, b);
	if (a - r->n > r->head)
		usage = 0;

	*free_at = DT_NOEND;
	left = usage + win->reserved;
	if (left + need <= cap)
		*free_at = at;
	for (int64 b = Max(a - r->n, r->head - r->n); b <= r->head; b++)
	{
		Amount		v = *Bucket((Ring *) r, b);

		if (v == 0)
			continue;
		last = b;
		left -= v;
		/* bucket b leaves at the start of bucket b + n + 1 */
		if (!found && *free_at == DT_NOEND && left + need <= cap)
		{
			*free_at = (b + r->n + 1) * r->g;
			found = true;
		}
	}
	*reset_at = last >= 0 ? (last + r->n + 1) * r->g : at;
	return usage + win->reserved;
}

/* The window a rolling ring covers at its head, for the usage_counters view */
void
RingRange(const CounterWindow *win, TimestampTz *start, TimestampTz *end)
{
	const Ring *r = &rings[win->ring];

	*start = (r->head - r->n) * r->g;
	*end = (r->head + 1) * r->g;
}

/* Apply a settled amount to a window, rolling or calendar (lock held exclusive) */
void
WindowCommit(CounterWindow *win, TimestampTz at, Amount amount)
{
	if (win->ring >= 0)
		RingCommit(win, at, amount);
	else
		win->usage += amount;
}

bool
RollingAvailable(void)
{
	return pool != NULL;
}

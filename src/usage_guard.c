/*
 * usage_guard.c
 *		Module entry: _PG_init, the GUCs, and the shared-memory hooks.
 *
 * Each concern lives in its own file (see usage_guard.h); this file only
 * registers configuration and delegates.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "metrics.h"
#include "usage_guard.h"

PG_MODULE_MAGIC;

int			usage_guard_soft_limit_mode = SOFT_LIMIT_WARN;

static const struct config_enum_entry soft_limit_mode_options[] = {
	{"warn", SOFT_LIMIT_WARN, false},
	{"block", SOFT_LIMIT_BLOCK, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
ShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	CountersShmemRequest();
	RollingShmemRequest();
	MetricsShmemRequest();
	QueueShmemRequest();
	SharedPolicyShmemRequest();
}

static void
ShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	CountersShmemStartup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	RollingShmemStartup();
	QueueShmemStartup();
	SharedPolicyShmemStartup();
	LWLockRelease(AddinShmemInitLock);
	MetricsShmemStartup();
}

/* Register GUCs, hooks and callbacks */
void
_PG_init(void)
{
	DefineCustomEnumVariable("usage_guard.soft_limit_mode",
							 "What a request over a soft limit gets: warn (allowed, WARNING) or block.",
							 "Hard limits always block. Superuser-only (or GRANT SET ON PARAMETER): an application must not weaken an operator's block.",
							 &usage_guard_soft_limit_mode,
							 SOFT_LIMIT_WARN,
							 soft_limit_mode_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("usage_guard.log_limit_hits",
							 "Write one structured JSON line to the server log for every soft or hard limit hit of usage_consume, usage_enforce or a metered table.",
							 NULL,
							 &usage_guard_log_limit_hits,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("usage_guard.max_counters",
								"How many tenant/feature pairs the shared-memory counters track.",
								"Each holds two live windows in about 250 bytes (more windows and rate state take extension slots); beyond this, idle ones are evicted and reloaded from the ledger when needed.",
								&usage_guard_max_counters,
								20000, 100, 10000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("usage_guard.max_counter_extensions",
								"How many counter keys may hold more than two live windows or rate-limit state at once.",
								"Each extension slot holds six more windows and four rate limits (about 500 bytes); -1 means one per 4 counters.",
								&usage_guard_max_counter_extensions,
								-1, -1, 10000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("usage_guard.rolling_buckets",
								"How many buckets (16 bytes each) the rolling windows in shared memory may use in all.",
								"A rolling window of up to 24 hours has one bucket per minute, a longer one one per hour, plus one; beyond this, decisions over rolling windows take the table path.",
								&usage_guard_rolling_buckets,
								262144, 1024, 100000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("usage_guard.max_tenants",
								"How many tenants' policies (subscription, plan) the shared policy cache holds.",
								"About 150 bytes each. Every backend decides from it without reading the catalog; tenants beyond it are read by each backend once.",
								&usage_guard_max_tenants,
								100000, 100, 100000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = ShmemRequest;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = ShmemStartup;
	}

	MarkGUCPrefixReserved("usage_guard");

	CacheInit();
	SharedPolicyInit();
	WritesInit();
	CitusInit();
}

/*
 * metrics.c
 *		Prometheus-style counters in shared memory: decisions by decision
 *		and plan, limit hits by plan, limit type and feature, and a histogram
 *		of decision latency; and the structured JSON log line of a limit hit.
 *
 * Locking: series are created under the metrics LWLock (exclusive) and never
 * removed while the server runs, so a backend keeps a local map from series
 * to its shared entry and increments it with an atomic add, taking no lock
 * on the hot path.  Scans take the LWLock shared.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "metrics.h"

#define METRIC_SERIES_MAX 4096

typedef enum MetricKind
{
	METRIC_DECISION,
	METRIC_LIMIT_HIT,
	METRIC_POLICY_ERROR,
	METRIC_CHECK,
	METRIC_LIMIT_CHECK,			/* code = LimitKind, feature_key = level */
	METRIC_LIMIT_REFUSAL,		/* code = LimitKind, feature_key = level */
	METRIC_ACTION,				/* feature_key = action */
	METRIC_RESERVATION			/* feature_key = outcome */
} MetricKind;

typedef struct MetricKey
{
	Oid			dbid;
	int			kind;			/* MetricKind */
	int			code;			/* DecisionKind; 1 = hard limit / 0 = soft; 1 = no subscription / 0 = inactive */
	char		plan_code[UG_NAME_MAX + 1];
	char		feature_key[UG_NAME_MAX + 1];	/* limit hits only */
} MetricKey;

typedef struct MetricEntry
{
	MetricKey	key;
	pg_atomic_uint64 value;
} MetricEntry;

/* Upper bounds (seconds) of the latency histogram's buckets; +Inf follows */
static const double latency_bounds[] = {
	0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005,
	0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0
};
#define LATENCY_BUCKETS (lengthof(latency_bounds) + 1)

typedef struct MetricsShared
{
	LWLock	   *lock;
	pg_atomic_uint64 dropped;	/* increments lost because the series table was full */
	pg_atomic_uint64 latency[LATENCY_BUCKETS];
	pg_atomic_uint64 latency_count;
	pg_atomic_uint64 latency_sum_ns;
} MetricsShared;

bool		usage_guard_log_limit_hits = true;

static MetricsShared *metrics = NULL;
static HTAB *series = NULL;
static HTAB *local_series = NULL;	/* MetricKey -> MetricEntry *, per backend */

typedef struct LocalSeries
{
	MetricKey	key;
	MetricEntry *entry;
} LocalSeries;

static Size
MetricsShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(MetricsShared)),
					hash_estimate_size(METRIC_SERIES_MAX, sizeof(MetricEntry)));
}

/* shmem_request_hook part */
void
MetricsShmemRequest(void)
{
	RequestAddinShmemSpace(MetricsShmemSize());
	RequestNamedLWLockTranche("usage_guard metrics", 1);
}

/* shmem_startup_hook part */
void
MetricsShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	metrics = ShmemInitStruct("usage_guard metrics", sizeof(MetricsShared), &found);
	if (!found)
	{
		metrics->lock = &(GetNamedLWLockTranche("usage_guard metrics"))->lock;
		pg_atomic_init_u64(&metrics->dropped, 0);
		for (int i = 0; i < LATENCY_BUCKETS; i++)
			pg_atomic_init_u64(&metrics->latency[i], 0);
		pg_atomic_init_u64(&metrics->latency_count, 0);
		pg_atomic_init_u64(&metrics->latency_sum_ns, 0);
	}
	info.keysize = sizeof(MetricKey);
	info.entrysize = sizeof(MetricEntry);
	series = ShmemInitHash("usage_guard metric series", METRIC_SERIES_MAX, METRIC_SERIES_MAX,
						   &info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/* Add one to a series, creating it on first use */
static void
Increment(MetricKind kind, int code, const char *plan_code, const char *feature_key)
{
	MetricKey	key;
	LocalSeries *local;
	bool		found;

	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.kind = kind;
	key.code = code;
	strlcpy(key.plan_code, plan_code ? plan_code : "", sizeof(key.plan_code));
	strlcpy(key.feature_key, feature_key ? feature_key : "", sizeof(key.feature_key));

	if (local_series == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(MetricKey);
		info.entrysize = sizeof(LocalSeries);
		info.hcxt = TopMemoryContext;
		local_series = hash_create("usage_guard local metric series", 64, &info,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	local = hash_search(local_series, &key, HASH_ENTER, &found);
	if (!found)
	{
		MetricEntry *entry;
		bool		sfound;

		LWLockAcquire(metrics->lock, LW_EXCLUSIVE);
		entry = hash_search(series, &key, HASH_ENTER_NULL, &sfound);
		if (entry != NULL && !sfound)
			pg_atomic_init_u64(&entry->value, 0);
		LWLockRelease(metrics->lock);
		local->entry = entry;
	}
	if (local->entry != NULL)
		pg_atomic_fetch_add_u64(&local->entry->value, 1);
	else
		pg_atomic_fetch_add_u64(&metrics->dropped, 1);
}

/*
 * Count a side-effect-free check (usage_check) apart from decisions: a
 * dashboard polling usage_check must not look like a flood of limit hits.
 */
void
MetricsCountCheck(const Decision *d)
{
	if (metrics != NULL)
		Increment(METRIC_CHECK, d->kind, d->plan_code, NULL);
}

static int
LevelIndex(const char *level)
{
	return strcmp(level, "api_key") == 0 ? 0 : strcmp(level, "user") == 0 ? 1 :
		strcmp(level, "team") == 0 ? 2 : 3;
}

/* Count an enforcing decision (and its limit hit); log the hit if asked */
void
MetricsCountDecision(const Decision *d, bool log_hit)
{
	if (metrics != NULL)
	{
		uint32		seen = 0;

		Increment(METRIC_DECISION, d->kind, d->plan_code, NULL);
		if (d->kind != DECISION_ALLOW)
			Increment(METRIC_LIMIT_HIT, d->limit_is_hard ? 1 : 0, d->plan_code, d->feature_key);
		/* limits judged, once per kind and level; the refusing one by kind and level */
		for (int i = 0; i < d->nlimits; i++)
		{
			const FeatureLimit *l = &d->limits[i];
			int			bit = l->kind * 4 + LevelIndex(l->level);

			if (seen & (1u << bit))
				continue;
			seen |= (1u << bit);
			Increment(METRIC_LIMIT_CHECK, l->kind, d->plan_code, l->level);
		}
		if (!d->allowed && d->window != NULL)
			Increment(METRIC_LIMIT_REFUSAL, d->window->kind, d->plan_code, d->window->level);
	}
	if (log_hit && d->kind != DECISION_ALLOW && usage_guard_log_limit_hits)
	{
		bool		hard = d->kind == DECISION_HARD_LIMIT;

		ereport(LOG,
				(errmsg_internal("%s", DecisionJson(d, hard ? "usage_limit_exceeded" : "usage_soft_limit_exceeded")),
				 errhidestmt(true),
				 errhidecontext(true)));
	}
}

/* Count a request refused for lack of an active subscription */
void
MetricsCountPolicyError(const char *plan_code, bool no_subscription)
{
	if (metrics != NULL)
		Increment(METRIC_POLICY_ERROR, no_subscription ? 1 : 0, plan_code, NULL);
}

/* An admission's enforcement action (block, alert, downgrade, queue) */
void
MetricsCountAction(const char *action, const char *plan_code)
{
	if (metrics != NULL && strcmp(action, "none") != 0)
		Increment(METRIC_ACTION, 0, plan_code, action);
}

/* A reservation's step: admitted, settled, cancelled, expired */
void
MetricsCountReservation(const char *outcome, int64 n)
{
	for (int64 i = 0; metrics != NULL && i < n; i++)
		Increment(METRIC_RESERVATION, 0, NULL, outcome);
}

/* Add a decision's duration to the histogram */
void
MetricsObserveLatency(instr_time elapsed)
{
	uint64		ns = (uint64) INSTR_TIME_GET_MICROSEC(elapsed) * 1000;
	double		seconds = ns / 1e9;
	int			b = 0;

	if (metrics == NULL)
		return;
	while (b < lengthof(latency_bounds) && seconds > latency_bounds[b])
		b++;
	pg_atomic_fetch_add_u64(&metrics->latency[b], 1);
	pg_atomic_fetch_add_u64(&metrics->latency_count, 1);
	pg_atomic_fetch_add_u64(&metrics->latency_sum_ns, ns);
}

static void
PutRow(ReturnSetInfo *rsinfo, const char *metric, const char *labels, double value)
{
	Datum		values[3];
	bool		nulls[3] = {0};

	values[0] = CStringGetTextDatum(metric);
	values[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(labels));
	values[2] = Float8GetDatum(value);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/* A JSON string value */
static char *
JsonString(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	escape_json(&buf, s);
	return buf.data;
}

/*
 * usage_guard_leases{level}: live leases per subject level, from the
 * leases table (read as the ledger's owner; absent before 0.6.0's SQL).
 */
static void
PutLeaseRows(ReturnSetInfo *rsinfo)
{
	static const char *const levels[] = {"api_key", "user", "team", "tenant"};
	int64		counts[4] = {0};
	InternalContext ctx;

	if (!OidIsValid(UsageGuardRelid("leases")))
		return;
	SPI_connect();
	BeginInternal(&ctx, true);
	if (SPI_execute("SELECT level, count(*)::int8 FROM usage_guard.leases"
					" WHERE released_at IS NULL AND expires_at > pg_catalog.now() GROUP BY level",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "usage_guard: could not count leases");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *level = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		int64		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		for (int k = 0; k < 4; k++)
			if (level && strcmp(level, levels[k]) == 0)
				counts[k] = n;
	}
	EndInternal(&ctx);
	SPI_finish();
	for (int k = 0; k < 4; k++)
		PutRow(rsinfo, "usage_guard_leases", psprintf("{\"level\": \"%s\"}", levels[k]),
			   (double) counts[k]);
}

/*
 * usage_guard_alerts_total{threshold}: alerts fired (rows of the alerts
 * table, 0.7.0), by threshold: a rising 0.8 series is a budget at 80%.
 */
static void
PutAlertRows(ReturnSetInfo *rsinfo)
{
	InternalContext ctx;

	if (!OidIsValid(UsageGuardRelid("alerts")))
		return;
	SPI_connect();
	BeginInternal(&ctx, true);
	if (SPI_execute("SELECT threshold::text, count(*)::int8 FROM usage_guard.alerts GROUP BY 1 ORDER BY 1",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "usage_guard: could not count alerts");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *threshold = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		int64		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		PutRow(rsinfo, "usage_guard_alerts_total",
			   psprintf("{\"threshold\": %s}", JsonString(threshold)), (double) n);
	}
	EndInternal(&ctx);
	SPI_finish();
}

PG_FUNCTION_INFO_V1(usage_guard_metrics);
/* usage_guard.metrics(): every series of this database, and the latency histogram */
Datum
usage_guard_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const char *const decisions[] = {"allow", "soft_limit", "hard_limit"};
	HASH_SEQ_STATUS scan;
	MetricEntry *e;
	List	   *copies = NIL;
	ListCell   *lc;
	uint64		cumulative = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (metrics == NULL)
		return (Datum) 0;

	LWLockAcquire(metrics->lock, LW_SHARED);
	hash_seq_init(&scan, series);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		MetricEntry *c;

		if (e->key.dbid != MyDatabaseId)
			continue;
		c = palloc(sizeof(MetricEntry));
		c->key = e->key;
		pg_atomic_init_u64(&c->value, pg_atomic_read_u64(&e->value));
		copies = lappend(copies, c);
	}
	LWLockRelease(metrics->lock);

	foreach(lc, copies)
	{
		MetricEntry *c = lfirst(lc);
		double		v = (double) pg_atomic_read_u64(&c->value);

		if (c->key.kind == METRIC_CHECK)
			PutRow(rsinfo, "usage_guard_checks_total",
				   psprintf("{\"decision\": %s, \"plan_code\": %s}",
							JsonString(decisions[c->key.code]), JsonString(c->key.plan_code)), v);
		else if (c->key.kind == METRIC_DECISION)
			PutRow(rsinfo, "usage_guard_decisions_total",
				   psprintf("{\"decision\": %s, \"plan_code\": %s}",
							JsonString(decisions[c->key.code]), JsonString(c->key.plan_code)), v);
		else if (c->key.kind == METRIC_LIMIT_CHECK || c->key.kind == METRIC_LIMIT_REFUSAL)
			PutRow(rsinfo, c->key.kind == METRIC_LIMIT_CHECK ? "usage_guard_limit_checks_total"
				   : "usage_guard_limit_refusals_total",
				   psprintf("{\"limit_kind\": %s, \"level\": %s, \"plan_code\": %s}",
							JsonString(LimitKindName((LimitKind) c->key.code)),
							JsonString(c->key.feature_key), JsonString(c->key.plan_code)), v);
		else if (c->key.kind == METRIC_ACTION)
			PutRow(rsinfo, "usage_guard_enforcement_actions_total",
				   psprintf("{\"action\": %s, \"plan_code\": %s}",
							JsonString(c->key.feature_key), JsonString(c->key.plan_code)), v);
		else if (c->key.kind == METRIC_RESERVATION)
			PutRow(rsinfo, "usage_guard_reservations_total",
				   psprintf("{\"outcome\": %s}", JsonString(c->key.feature_key)), v);
		else if (c->key.kind == METRIC_POLICY_ERROR)
			PutRow(rsinfo, "usage_guard_policy_errors_total",
				   psprintf("{\"reason\": %s, \"plan_code\": %s}",
							JsonString(c->key.code ? "no_subscription" : "subscription_inactive"),
							JsonString(c->key.plan_code)), v);
		else
			PutRow(rsinfo, "usage_guard_limit_hits_total",
				   psprintf("{\"plan_code\": %s, \"limit_type\": %s, \"feature_key\": %s}",
							JsonString(c->key.plan_code),
							JsonString(c->key.code ? "hard_limit" : "soft_limit"),
							JsonString(c->key.feature_key)), v);
	}

	for (int b = 0; b < LATENCY_BUCKETS; b++)
	{
		cumulative += pg_atomic_read_u64(&metrics->latency[b]);
		PutRow(rsinfo, "usage_guard_decision_duration_seconds_bucket",
			   b < lengthof(latency_bounds)
			   ? psprintf("{\"le\": \"%g\"}", latency_bounds[b]) : "{\"le\": \"+Inf\"}",
			   (double) cumulative);
	}
	PutRow(rsinfo, "usage_guard_decision_duration_seconds_sum", "{}",
		   pg_atomic_read_u64(&metrics->latency_sum_ns) / 1e9);
	PutRow(rsinfo, "usage_guard_decision_duration_seconds_count", "{}",
		   (double) pg_atomic_read_u64(&metrics->latency_count));
	PutRow(rsinfo, "usage_guard_metrics_dropped_total", "{}",
		   (double) pg_atomic_read_u64(&metrics->dropped));
	PutLeaseRows(rsinfo);
	PutAlertRows(rsinfo);
	PutRow(rsinfo, "usage_guard_queued", "{}", (double) QueueWaiting());
	return (Datum) 0;
}

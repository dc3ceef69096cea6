/*
 * usage_guard.h
 *		Types and entry points shared by the C files of usage_guard.
 *
 * Module map:
 *	usage_guard.c	_PG_init, GUCs, shared-memory hooks
 *	api.c			the SQL-callable decision functions (tenant and subject calls)
 *	gateway.c		admit, settle and cancel: reservations of an LLM gateway
 *	args.c			argument checks shared by the SQL-callable functions
 *	alerts.c		alerts at limits' thresholds: once per window, NOTIFY at commit
 *	queue.c			the queue action: bounded waits for room, no lock held
 *	engine.c		the decision engine: every limit of a request in one atomic step
 *	subjects.c		subjects' chains and limits (cached), leases
 *	rolling.c		rolling windows: rings of buckets in shared memory
 *	decision.c		limit states -> one decision; errors, JSON and HTTP headers
 *	period.c		UTC calendar and billing-anchored windows
 *	shared_policy.c	the policy cache in shared memory, invalidated at commit
 *	cache.c			per-backend cache of policies, invalidated by triggers
 *	policy.c		catalog reads behind the cache (SPI)
 *	ledger.c		ledger writes and ledger sums (SPI), the ledger trigger
 *	loader.c		loading windows from the ledger; reset_counters
 *	security.c		running as the ledger owner; the caller's level
 *	counters.c		live counters in shared memory
 *	writes.c		this transaction's writes, settled at commit/abort; key lock
 *	amount.c		exact fixed-point amounts
 *	query.c			cached SPI plans
 *	compat.h		PostgreSQL version differences (every PG_VERSION_NUM test)
 */
#ifndef USAGE_GUARD_H
#define USAGE_GUARD_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "amount.h"
#include "counters.h"

/* Dedicated SQLSTATEs (class UG); documented in README */
#define ERRCODE_USAGE_LIMIT_EXCEEDED		MAKE_SQLSTATE('U','G','0','0','1')
#define ERRCODE_USAGE_SOFT_LIMIT_EXCEEDED	MAKE_SQLSTATE('U','G','0','0','2')
#define ERRCODE_USAGE_POLICY_CONFIGURATION	MAKE_SQLSTATE('U','G','0','0','3')

/* Largest amount accepted anywhere (also the largest limit) */
#define USAGE_GUARD_MAX_AMOUNT	INT64CONST(1000000000000000)

typedef enum PeriodKind
{
	PERIOD_HOUR,
	PERIOD_DAY,
	PERIOD_WEEK,
	PERIOD_MONTH,
	PERIOD_BILLING,
	PERIOD_LIFETIME,			/* never resets: (-infinity, infinity) */
	PERIOD_KINDS
} PeriodKind;

typedef enum SoftLimitMode
{
	SOFT_LIMIT_WARN,
	SOFT_LIMIT_BLOCK
} SoftLimitMode;

typedef enum DecisionKind
{
	DECISION_ALLOW,
	DECISION_SOFT_LIMIT,
	DECISION_HARD_LIMIT
} DecisionKind;

/* Soft and hard limit of one window kind; absent = unlimited */
typedef struct LimitPair
{
	bool		has_soft;
	bool		has_hard;
	Amount		soft;
	Amount		hard;
} LimitPair;

/*
 * Everything a decision needs to know about a tenant's feature, as cached
 * per backend: whether the feature exists, the subscription, the plan's
 * limits and the tenant's overrides (with their expiry), by window kind.
 */
typedef struct Policy
{
	char		tenant_id[UG_NAME_MAX + 1];	/* cache key: must be first */
	char		feature_key[UG_NAME_MAX + 1];
	bool		feature_exists;
	bool		has_subscription;
	char		plan_code[UG_NAME_MAX + 1];
	char		status[24];
	TimestampTz period_start;
	TimestampTz period_end;		/* DT_NOEND when NULL in the catalog */
	uint8		plan_mask;		/* bit per PeriodKind present in the plan */
	uint8		override_mask;
	LimitPair	plan_limits[PERIOD_KINDS];
	LimitPair	override_limits[PERIOD_KINDS];
	TimestampTz override_expires[PERIOD_KINDS]; /* DT_NOEND = never */
} Policy;

/* What a limit bounds */
typedef enum LimitKind
{
	LIMIT_QUOTA,				/* units per calendar window */
	LIMIT_RATE,					/* units (or requests) per second/minute/hour: GCRA */
	LIMIT_CONCURRENCY			/* leases held at once */
} LimitKind;

/* What a limit does when a request would pass it (subject_limits.action) */
typedef enum LimitAction
{
	ACTION_BLOCK,				/* refuse */
	ACTION_ALERT,				/* allow; alerts at its thresholds */
	ACTION_DOWNGRADE,			/* admit retries with the model's downgrade_to */
	ACTION_QUEUE				/* wait for room, then decide */
} LimitAction;

#define UG_MAX_THRESHOLDS 4

/*
 * One limit in force for a request, with its state: a quota's window and
 * usage, a rate limit's GCRA state, or a subject's live leases.  Every
 * limit of every level of a request is one of these; the decision engine
 * (engine.c) fills the state, decision.c judges them all at once.
 */
typedef struct FeatureLimit
{
	LimitKind	kind;
	PeriodKind	period;			/* quota: its calendar period */
	int64		length;			/* rate: its period, in microseconds */
	LimitPair	limits;			/* quota: soft/hard; rate: hard = units per length;
								 * concurrency: hard = max leases */
	Amount		burst;			/* rate: units that may pass at once */
	const char *level;			/* "api_key", "user", "team" or "tenant" */
	const char *subject_id;		/* NULL: the tenant */
	const char *unit;			/* what is counted: a feature key, or "requests" */
	int			target;			/* engine target (counter key) it belongs to; -1 none */
	TimestampTz window_start;
	TimestampTz window_end;
	Amount		usage;			/* committed + in flight, before this request */
	Amount		requested;		/* what this request adds to it */
	double		tat;			/* rate: theoretical arrival time (usec), before */
	TimestampTz free_at;		/* concurrency: first expiry of a live lease */
	TimestampTz reset_at;		/* when usage is back to zero */
	int64		limit_id;		/* subject_limits row; 0 for a plan's quota */
	LimitAction action;
	int			nthresholds;	/* alert_at: fractions of the limit */
	Amount		thresholds[UG_MAX_THRESHOLDS];
	int64		queue_timeout;	/* action queue: microseconds; 0 = the default */
	int			queue_depth;	/* action queue: 0 = the default */
} FeatureLimit;

/* The outcome of evaluating all limits of a request */
typedef struct Decision
{
	bool		allowed;
	DecisionKind kind;
	const char *tenant_id;
	const char *plan_code;
	const char *feature_key;
	const FeatureLimit *window; /* the deciding limit, NULL if none */
	bool		has_limit;
	bool		limit_is_hard;
	Amount		limit_value;
	Amount		usage;
	Amount		requested;
	Amount		remaining;		/* meaningful when has_limit */
	bool		recorded;
	bool		has_retry;		/* retry_after known (refused, and waiting helps) */
	double		retry_after;	/* seconds */
	TimestampTz at;
	const FeatureLimit *limits; /* every limit in force, for the headers */
	int			nlimits;
	const char *lease_id;		/* a lease acquired by this call */
} Decision;

/* Saved caller identity while usage_guard reads or writes as the ledger owner */
typedef struct InternalContext
{
	Oid			saved_user;
	int			saved_sec;
	int			guc_level;		/* -1: search_path not pinned */
} InternalContext;

/* args.c */
extern char *CheckedName(char *s, const char *name);
extern Numeric CheckedAmount(Numeric n);
extern TimestampTz CheckedTime(TimestampTz ts, const char *name);
extern Datum CheckedAttributes(Jsonb *j);
extern char *RequiredText(FunctionCallInfo fcinfo, int argno, const char *name);
extern char *OptionalText(FunctionCallInfo fcinfo, int argno, const char *name);
extern Numeric RequiredAmount(FunctionCallInfo fcinfo, int argno);
extern TimestampTz RequiredTime(FunctionCallInfo fcinfo, int argno, const char *name);
extern Datum Attributes(FunctionCallInfo fcinfo, int argno);
extern Datum RequiredUuid(FunctionCallInfo fcinfo, int argno, const char *name);
extern Amount ToAmount(Numeric n);
extern bool LeaseTtl(FunctionCallInfo fcinfo, int argno, bool required, int64 *usecs);

/* api.c */
extern bool SubscriptionActive(const Policy *policy);
extern void RequireActiveSubscription(const Policy *policy);

/* alerts.c */
extern int	FireAlerts(const char *tenant_id, const FeatureLimit *limits, int nlimits,
					   TimestampTz at, bool usage_is_after);
extern const char *LimitActionName(LimitAction action);

/* queue.c */
extern void QueueShmemRequest(void);
extern void QueueShmemStartup(void);
extern int	QueueSlot(const char *tenant_id, int64 limit_id, const char *subject_id);
extern bool QueueEnter(int slot, int depth);
extern void QueueLeave(int slot);
extern void QueueWait(int64 usecs);
extern int64 QueueWaiting(void);

/* usage_guard.c */
extern int	usage_guard_soft_limit_mode;

/* period.c */
extern const char *PeriodKindName(PeriodKind kind);
extern bool PeriodKindFromName(const char *name, PeriodKind *kind);
extern void PeriodWindow(PeriodKind kind, const Policy *policy, TimestampTz at,
						 TimestampTz *start, TimestampTz *end);
extern void BillingWindow(TimestampTz anchor, TimestampTz first_end, TimestampTz at,
						  TimestampTz *start, TimestampTz *end);

/* security.c */
extern void BeginInternal(InternalContext *ctx, bool runs_sql);
extern void EndInternal(InternalContext *ctx);
extern void RequireWholeLedgerVisible(Oid ledger);
extern bool CallerIsAdmin(void);
extern void RequireNowUnlessAdmin(TimestampTz at, const char *function);
extern void RequireWritable(const char *function);
extern void RequireTenantScope(const char *tenant_id, const char *feature_key, Numeric amount,
							   TimestampTz at, const char *kind, const char *idempotency_key,
							   Datum attributes, bool write);

/* cache.c */
extern void CacheInit(void);
extern void GetPolicy(const char *tenant_id, const char *feature_key, Policy *policy);
extern Oid	LedgerRelid(void);
extern Oid	LedgerOwner(void);
extern bool LedgerHasRowSecurity(void);
extern bool CatalogHasResets(void);
extern bool CatalogHasPlanDefaults(void);
extern bool CatalogHasTenantTriggers(void);
extern uint64 CacheGeneration(void);
extern int	EffectiveLimits(const Policy *policy, TimestampTz at, FeatureLimit *limits);

/* shared_policy.c */
extern int	usage_guard_max_tenants;
extern void SharedPolicyShmemRequest(void);
extern void SharedPolicyShmemStartup(void);
extern void SharedPolicyInit(void);
extern bool SharedPolicyGet(const char *tenant_id, const char *feature_key, Policy *policy);
extern void SharedPolicyNoteChange(void);
extern void SharedPolicyNoteAll(void);
extern void SharedPolicyResetAll(void);
extern void SharedPolicyUsage(int64 *used, int64 *capacity, int64 *bytes, int64 *hits,
							  int64 *loads);

/* policy.c */
extern void InitPolicy(Policy *policy, const char *tenant_id, const char *feature_key);
extern void LoadPolicy(const char *tenant_id, const char *feature_key, Policy *policy);
extern void LoadTenantPolicy(const char *tenant_id, Policy *policy, bool *unlimited,
							 bool *has_overrides);
extern void LoadPlanFeature(const char *plan_code, const char *feature_key, Policy *policy);
extern Oid	UsageGuardRelid(const char *relname);
extern void LookupLedger(Oid ledger, Oid *owner, bool *rowsecurity);

/* citus.c */
extern void CitusInit(void);
extern bool RelationIsDistributed(Oid relid);
extern bool TenantCountedHere(const char *tenant_id);
extern void RequireTenantCountedHere(const char *tenant_id);
extern bool CitusIsCoordinator(void);
extern int64 ExpireReservationsOnWorkers(TimestampTz at);

/* ledger.c */
extern Amount LedgerWindowSum(const char *tenant_id, const char *subject_id,
							  const char *feature_key, TimestampTz start, TimestampTz end);
extern int	LedgerBucketSums(const char *tenant_id, const char *subject_id,
							 const char *feature_key, TimestampTz since, int64 g,
							 TimestampTz **starts, Amount **sums);
extern LocalWrite *CountLedgerRow(const char *tenant_id, const char *subject_id,
								  const char *feature_key, TimestampTz at, Amount amount,
								  bool undoable);
extern bool IdempotencyKeyExists(const char *tenant_id, const char *feature_key, const char *key);
typedef struct LedgerBatch LedgerBatch;
extern LedgerBatch *LedgerBatchBegin(void);
extern void LedgerBatchAdd(LedgerBatch *b, const char *tenant_id, const char *feature_key,
						   Numeric amount, TimestampTz occurred_at, Datum attributes);
extern void LedgerBatchEnd(LedgerBatch *b);
extern bool InsertUsageEvent(const char *tenant_id, const char *feature_key,
							 Numeric amount, TimestampTz occurred_at,
							 const char *kind, const char *idempotency_key,
							 Datum attributes, const char *subject_id, Datum subject_path);

/* decision.c */
extern Decision *EvaluateLimits(const char *tenant_id, const char *plan_code,
								const char *feature_key, FeatureLimit *limits,
								int nlimits, Amount requested, TimestampTz at);
extern void RateState(FeatureLimit *l, double tat, TimestampTz at);
extern Jsonb *DecisionHeaders(const Decision *d);
extern const char *LimitKindName(LimitKind kind);
extern const char *DecisionKindName(DecisionKind kind);
extern void RaiseLimitExceeded(const Decision *d);
extern void WarnSoftLimit(const Decision *d);
extern void RaisePolicyError(const char *tenant_id, const char *feature_key,
							 const Policy *policy);
extern char *DecisionJson(const Decision *d, const char *code);
extern void AppendStr(StringInfo buf, const char *key, const char *value);
extern char *LimitLabel(const FeatureLimit *l);
extern double LimitSeconds(const FeatureLimit *l);

#endif							/* USAGE_GUARD_H */

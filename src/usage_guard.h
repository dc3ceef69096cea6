/*
 * usage_guard.h
 *		Types and entry points shared by the C files of usage_guard.
 *
 * Module map:
 *	usage_guard.c	_PG_init, GUCs
 *	period.c		UTC calendar and billing-anchored windows
 *	policy.c		a tenant's subscription and effective limits (catalog reads)
 *	ledger.c		ledger writes, window usage, the consume serialization point
 *	decision.c		turning windows and usage into one decision; errors and JSON
 *	api.c			the SQL-callable functions and their argument checks
 */
#ifndef USAGE_GUARD_H
#define USAGE_GUARD_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/numeric.h"

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
	PERIOD_BILLING
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

/* A tenant's subscription as the policy needs it */
typedef struct Subscription
{
	char	   *plan_code;
	char	   *status;
	TimestampTz period_start;
	TimestampTz period_end;		/* DT_NOEND when NULL in the catalog */
} Subscription;

/* One effective limit of a feature: one window kind with its limits */
typedef struct FeatureLimit
{
	PeriodKind	period;
	Numeric		soft_limit;		/* NULL = unlimited */
	Numeric		hard_limit;		/* NULL = unlimited */
	/* filled in for a given instant */
	TimestampTz window_start;
	TimestampTz window_end;
	Numeric		usage;
} FeatureLimit;

/* The outcome of evaluating all limits of a feature for one request */
typedef struct Decision
{
	bool		allowed;
	DecisionKind kind;
	const char *tenant_id;
	const char *plan_code;
	const char *feature_key;
	const FeatureLimit *window;	/* the deciding window, NULL if none */
	bool		limit_is_hard;
	Numeric		limit_value;	/* NULL = unlimited */
	Numeric		usage;
	Numeric		requested;
	Numeric		remaining;		/* NULL = unlimited */
	bool		recorded;
} Decision;

/* usage_guard.c */
extern int	usage_guard_soft_limit_mode;

/* period.c */
extern const char *PeriodKindName(PeriodKind kind);
extern bool PeriodKindFromName(const char *name, PeriodKind *kind);
extern void PeriodWindow(PeriodKind kind, const Subscription *sub, TimestampTz at,
						 TimestampTz *start, TimestampTz *end);
extern void BillingWindow(TimestampTz anchor, TimestampTz first_end, TimestampTz at,
						  TimestampTz *start, TimestampTz *end);

/* policy.c */
extern bool FeatureExists(const char *feature_key);
extern Subscription *LookupSubscription(const char *tenant_id);
extern FeatureLimit *LookupLimits(const char *tenant_id, const char *plan_code,
								  const char *feature_key, TimestampTz at, int *nlimits);

/* ledger.c */
extern Numeric WindowUsage(const char *tenant_id, const char *feature_key,
						   TimestampTz start, TimestampTz end);
extern void LockForConsume(const char *tenant_id, const char *feature_key);
extern bool IdempotencyKeyExists(const char *tenant_id, const char *key);
extern bool InsertUsageEvent(const char *tenant_id, const char *feature_key,
							 Numeric amount, TimestampTz occurred_at,
							 const char *kind, const char *idempotency_key,
							 Datum attributes);

/* decision.c */
extern Decision *EvaluateLimits(const char *tenant_id, const char *plan_code,
								const char *feature_key, FeatureLimit *limits,
								int nlimits, Numeric requested);
extern const char *DecisionKindName(DecisionKind kind);
extern void RaiseLimitExceeded(const Decision *d);
extern void WarnSoftLimit(const Decision *d);
extern void RaisePolicyError(const char *tenant_id, const char *feature_key,
							 const Subscription *sub);
extern char *DecisionJson(const Decision *d, const char *code);

#endif							/* USAGE_GUARD_H */

/*
 * engine.h
 *		The decision engine (engine.c): one atomic decision over any set of
 *		limits (calendar quotas, rate limits, leases) of any set of subject
 *		levels of a tenant.  See docs/architecture.md, "The decision engine".
 */
#ifndef USAGE_GUARD_ENGINE_H
#define USAGE_GUARD_ENGINE_H

#include "usage_guard.h"

/*
 * api_key, user, team, tenant: a key per feature (admit charges tokens and
 * cost) and a request-rate key each
 */
#define UG_MAX_FEATURES	2
#define UG_MAX_TARGETS	(4 * (UG_MAX_FEATURES + 1))
#define UG_MAX_LIMITS	64
#define UG_MAX_LOAD		(2 * UG_MAX_WINDOWS)	/* windows loaded for one key at once */

/*
 * One counter key a request reads and, for consume, charges: a feature (or
 * the request-rate key "") at one level.  The limits of a target are the
 * request's limits whose `target` is its index.
 */
typedef struct EngineTarget
{
	CounterKey	key;
	uint32		hash;
	bool		charge;			/* a ledger row is counted here */
	bool		key_locked;		/* its key lock is held as a writer (not escalated) */
	bool		has_windows;	/* some quota limit reads a window */
	bool		has_rates;
	Amount		amount;			/* charged to its quota windows */
	const char *feature_key;	/* "" for a request-rate key */
	LocalWrite *write;
} EngineTarget;

typedef struct EngineRequest
{
	const char *tenant_id;
	const char *plan_code;
	const char *feature_key;	/* NULL: no feature (a lease only); the first of several */
	const Policy *policy;		/* the tenant's: billing anchor of windows */
	TimestampTz at;
	Amount		amount;			/* default amount of a new target */
	bool		undoable;		/* the ledger insert may turn out a duplicate */
	bool		quotas;			/* the feature's quotas are judged: none = not included */
	int			ntargets;
	EngineTarget targets[UG_MAX_TARGETS];
	int			nlimits;
	FeatureLimit limits[UG_MAX_LIMITS];
} EngineRequest;

extern void EngineInit(EngineRequest *r, const char *tenant_id, const char *plan_code,
					   const char *feature_key, const Policy *policy, TimestampTz at,
					   Amount amount);
extern int	EngineAddTarget(EngineRequest *r, const char *subject_id, const char *feature_key,
							bool charge);
extern FeatureLimit *EngineAddLimit(EngineRequest *r, int target, LimitKind kind,
									const char *level, const char *subject_id);
extern void EngineAddTenantQuotas(EngineRequest *r, int target, const Policy *policy);
extern Decision *EngineCheck(EngineRequest *r);
extern Decision *EngineConsume(EngineRequest *r);
extern void EngineReportTablePath(void);

#endif							/* USAGE_GUARD_ENGINE_H */

/*
 * subjects.h
 *		Subjects, their limits and leases (subjects.c).
 */
#ifndef USAGE_GUARD_SUBJECTS_H
#define USAGE_GUARD_SUBJECTS_H

#include "engine.h"

/* api_key, user, team, and the tenant */
#define UG_MAX_LEVELS 4
#define UG_MAX_SUBJECT_LIMITS 32

typedef struct SubjectLevel
{
	char		subject_id[UG_NAME_MAX + 1];	/* "" for the tenant */
	char		level[8];
	bool		has_role;
	char		role[UG_NAME_MAX + 1];
} SubjectLevel;

/* One limit of subject_limits in force at a level of a chain */
typedef struct SubjectLimit
{
	LimitKind	kind;
	int			level;			/* index into SubjectPolicy.levels */
	bool		counts_requests;	/* rate limit of requests, not of the feature */
	PeriodKind	period;			/* quota */
	int64		length;			/* rate: microseconds */
	int64		rolling;		/* quota over a rolling window: its length; 0 calendar */
	LimitPair	limits;
	Amount		burst;
	int64		limit_id;
	LimitAction action;
	int			nthresholds;
	Amount		thresholds[UG_MAX_THRESHOLDS];
	int64		queue_timeout;	/* microseconds; 0 = the default */
	int			queue_depth;	/* 0 = the default */
} SubjectLimit;

/* A subject's chain (most specific first, the tenant last) and its limits */
typedef struct SubjectPolicy
{
	char		key[3 * (UG_NAME_MAX + 1)]; /* cache key: tenant, subject, feature */
	bool		exists;
	int			nlevels;
	SubjectLevel levels[UG_MAX_LEVELS];
	int			nlimits;
	SubjectLimit limits[UG_MAX_SUBJECT_LIMITS];
} SubjectPolicy;

extern void GetSubjectPolicy(const char *tenant_id, const char *subject_id,
							 const char *feature_key, const char *plan_code, SubjectPolicy *sp);
extern void CountLeases(const char *tenant_id, const char *holder_id, TimestampTz at,
						FeatureLimit *l);
extern char *InsertLease(const char *tenant_id, const SubjectPolicy *sp, TimestampTz at,
						 TimestampTz expires);
extern bool ReleaseLease(const char *tenant_id, Datum lease_id, TimestampTz at);
extern char *NewUuid(void);
extern Datum TextArray(const char *const *items, int n);
extern Datum SubjectPathDatum(const SubjectPolicy *sp);
extern void BuildFeatureRequest(EngineRequest *r, const SubjectPolicy *sp, const char *feature_key,
								Amount amount, const Policy *policy, bool quotas, bool rates,
								bool per_request);
extern bool CountRequestLeases(EngineRequest *r, const SubjectPolicy *sp);
extern void UnlockRequestLeases(const EngineRequest *r);

#endif							/* USAGE_GUARD_SUBJECTS_H */

/*
 * decision.c
 *		Turns the limits of a feature, with the usage of each window, into one
 *		decision for a request; and reports it: the JSON an application turns
 *		into an HTTP 429/402 body, the errors with dedicated SQLSTATEs, and the
 *		soft-limit WARNING.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "usage_guard.h"

static const char *const decision_names[] = {
	[DECISION_ALLOW] = "allow",
	[DECISION_SOFT_LIMIT] = "soft_limit",
	[DECISION_HARD_LIMIT] = "hard_limit",
};

/* Name of a decision as returned to SQL */
const char *
DecisionKindName(DecisionKind kind)
{
	return decision_names[kind];
}

/*
 * Is a candidate (room left under a limit, its window) a better pick than
 * the best so far?  Less room wins; on a tie the window that resets later,
 * since the caller has to wait for that one.
 */
static bool
Tighter(Amount room, const FeatureLimit *w, Amount best_room, const FeatureLimit *best)
{
	if (best == NULL)
		return true;
	if (room != best_room)
		return room < best_room;
	return w->window_end > best->window_end;
}

/*
 * Evaluate every window of a feature for a request of `requested` units.
 * The reported window is the blocking one (hard before soft, the tightest
 * first), else the one closest to any of its limits.  No limits at all
 * means the feature is not included: an implicit hard limit of 0.
 */
Decision *
EvaluateLimits(const char *tenant_id, const char *plan_code,
			   const char *feature_key, FeatureLimit *limits, int nlimits,
			   Amount requested)
{
	Decision   *d = palloc0(sizeof(Decision));
	const FeatureLimit *hard = NULL,
			   *soft = NULL,
			   *close = NULL;
	Amount		hard_room = 0,
				soft_room = 0,
				close_room = 0;
	bool		close_is_hard = false;

	d->tenant_id = tenant_id;
	d->plan_code = plan_code;
	d->feature_key = feature_key;
	d->requested = requested;

	if (nlimits == 0)
	{
		d->allowed = false;
		d->kind = DECISION_HARD_LIMIT;
		d->has_limit = true;
		d->limit_is_hard = true;
		return d;
	}

	for (int i = 0; i < nlimits; i++)
	{
		const FeatureLimit *w = &limits[i];
		Amount		after = w->usage + requested;

		if (w->limits.has_hard)
		{
			Amount		room = w->limits.hard - w->usage;

			if (after > w->limits.hard && Tighter(room, w, hard_room, hard))
			{
				hard = w;
				hard_room = room;
			}
			if (Tighter(room, w, close_room, close))
			{
				close = w;
				close_room = room;
				close_is_hard = true;
			}
		}
		if (w->limits.has_soft)
		{
			Amount		room = w->limits.soft - w->usage;

			if (after > w->limits.soft && Tighter(room, w, soft_room, soft))
			{
				soft = w;
				soft_room = room;
			}
			/* strictly tighter: on a tie the hard limit is the one to report */
			if (close == NULL || room < close_room)
			{
				close = w;
				close_room = room;
				close_is_hard = false;
			}
		}
	}

	if (hard != NULL)
	{
		d->allowed = false;
		d->kind = DECISION_HARD_LIMIT;
		d->window = hard;
		d->limit_is_hard = true;
	}
	else if (soft != NULL)
	{
		d->allowed = (usage_guard_soft_limit_mode == SOFT_LIMIT_WARN);
		d->kind = DECISION_SOFT_LIMIT;
		d->window = soft;
		d->limit_is_hard = false;
	}
	else
	{
		d->allowed = true;
		d->kind = DECISION_ALLOW;
		/* every window unlimited: report the first */
		d->window = close != NULL ? close : &limits[0];
		d->limit_is_hard = close_is_hard;
	}
	d->has_limit = (hard != NULL || soft != NULL || close != NULL);
	if (d->has_limit)
		d->limit_value = d->limit_is_hard ? d->window->limits.hard : d->window->limits.soft;
	d->usage = d->window->usage;
	d->remaining = Max(d->limit_value - d->usage, 0);
	return d;
}

/* ISO 8601 UTC, e.g. 2025-11-01T00:00:00Z, as clients parse it */
static void
AppendIsoTimestamp(StringInfo buf, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	appendStringInfo(buf, "\"%04d-%02d-%02dT%02d:%02d:%02d",
					 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (fsec != 0)
		appendStringInfo(buf, ".%06d", (int) fsec);
	appendStringInfoString(buf, "Z\"");
}

static void
AppendKey(StringInfo buf, const char *key)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
AppendStr(StringInfo buf, const char *key, const char *value)
{
	AppendKey(buf, key);
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

static void
AppendNum(StringInfo buf, const char *key, bool present, Amount value)
{
	AppendKey(buf, key);
	if (!present)
		appendStringInfoString(buf, "null");
	else
		appendStringInfoString(buf, AmountToCString(value));
}

static void
AppendTs(StringInfo buf, const char *key, const FeatureLimit *w, bool end)
{
	AppendKey(buf, key);
	if (w == NULL)
		appendStringInfoString(buf, "null");
	else
		AppendIsoTimestamp(buf, end ? w->window_end : w->window_start);
}

/* The decision as the JSON object of an error's DETAIL */
char *
DecisionJson(const Decision *d, const char *code)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendStr(&buf, "code", code);
	AppendStr(&buf, "decision", DecisionKindName(d->kind));
	AppendStr(&buf, "tenant_id", d->tenant_id);
	AppendStr(&buf, "plan_code", d->plan_code);
	AppendStr(&buf, "feature_key", d->feature_key);
	AppendStr(&buf, "period", d->window ? PeriodKindName(d->window->period) : NULL);
	AppendStr(&buf, "limit_type", d->has_limit ? (d->limit_is_hard ? "hard_limit" : "soft_limit") : NULL);
	AppendNum(&buf, "limit_value", d->has_limit, d->limit_value);
	AppendNum(&buf, "usage", true, d->usage);
	AppendNum(&buf, "requested", true, d->requested);
	AppendNum(&buf, "remaining", d->has_limit, d->remaining);
	AppendTs(&buf, "window_start", d->window, false);
	AppendTs(&buf, "window_end", d->window, true);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* Human-readable 501 of 500 "messages" per day, for messages */
static char *
Describe(const Decision *d)
{
	char	   *after = AmountToCString(d->usage + d->requested);
	char	   *limit = AmountToCString(d->limit_value);

	return psprintf("%s of %s \"%s\" per %s", after, limit, d->feature_key,
					PeriodKindName(d->window->period));
}

/* When the deciding window resets, for hints */
static char *
ResetHint(const Decision *d)
{
	StringInfoData buf;

	initStringInfo(&buf);
	AppendIsoTimestamp(&buf, d->window->window_end);
	/* drop the JSON quotes */
	buf.data[buf.len - 1] = '\0';
	return buf.data + 1;
}

/* Raise usage_limit_exceeded (UG001) or usage_soft_limit_exceeded (UG002) */
void
RaiseLimitExceeded(const Decision *d)
{
	if (d->window == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_USAGE_LIMIT_EXCEEDED),
				 errmsg("plan \"%s\" does not include feature \"%s\"",
						d->plan_code, d->feature_key),
				 errdetail_internal("%s", DecisionJson(d, "usage_limit_exceeded")),
				 errhint("Add the feature to the plan in usage_guard.plan_features, or give the tenant a row in usage_guard.tenant_overrides.")));
	else if (d->kind == DECISION_HARD_LIMIT)
		ereport(ERROR,
				(errcode(ERRCODE_USAGE_LIMIT_EXCEEDED),
				 errmsg("usage limit exceeded: tenant \"%s\" would use %s (hard limit)",
						d->tenant_id, Describe(d)),
				 errdetail_internal("%s", DecisionJson(d, "usage_limit_exceeded")),
				 errhint("The window resets at %s. Raise the limit, upgrade the plan, or add a tenant override.",
						 ResetHint(d))));
	else
		ereport(ERROR,
				(errcode(ERRCODE_USAGE_SOFT_LIMIT_EXCEEDED),
				 errmsg("usage soft limit exceeded: tenant \"%s\" would use %s (soft limit)",
						d->tenant_id, Describe(d)),
				 errdetail_internal("%s", DecisionJson(d, "usage_soft_limit_exceeded")),
				 errhint("usage_guard.soft_limit_mode is \"block\"; set it to \"warn\" to allow requests over soft limits. The window resets at %s.",
						 ResetHint(d))));
}

/* WARNING for a request allowed over a soft limit (soft_limit_mode = warn) */
void
WarnSoftLimit(const Decision *d)
{
	ereport(WARNING,
			(errcode(ERRCODE_USAGE_SOFT_LIMIT_EXCEEDED),
			 errmsg("usage soft limit exceeded: tenant \"%s\" uses %s (soft limit)",
					d->tenant_id, Describe(d)),
			 errdetail_internal("%s", DecisionJson(d, "usage_soft_limit_exceeded"))));
}

/* Raise usage_policy_configuration_error (UG003): no subscription that grants access */
void
RaisePolicyError(const char *tenant_id, const char *feature_key, const Policy *policy)
{
	const Policy *sub = policy->has_subscription ? policy : NULL;

	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendStr(&buf, "code", "usage_policy_configuration_error");
	AppendStr(&buf, "reason", sub == NULL ? "no_subscription" : "subscription_inactive");
	AppendStr(&buf, "tenant_id", tenant_id);
	AppendStr(&buf, "plan_code", sub ? sub->plan_code : NULL);
	AppendStr(&buf, "feature_key", feature_key);
	AppendStr(&buf, "status", sub ? sub->status : NULL);
	appendStringInfoChar(&buf, '}');

	if (sub == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_USAGE_POLICY_CONFIGURATION),
				 errmsg("tenant \"%s\" has no subscription", tenant_id),
				 errdetail_internal("%s", buf.data),
				 errhint("Insert a row into usage_guard.tenant_subscriptions for the tenant.")));
	else
		ereport(ERROR,
				(errcode(ERRCODE_USAGE_POLICY_CONFIGURATION),
				 errmsg("subscription of tenant \"%s\" is %s", tenant_id, sub->status),
				 errdetail_internal("%s", buf.data),
				 errhint("Only an active or trialing subscription grants access; update usage_guard.tenant_subscriptions.status.")));
}

PG_FUNCTION_INFO_V1(usage_guard_raise_policy_error);
/*
 * usage_guard.raise_policy_error(tenant_id, feature_key, plan_code, status):
 * UG003 exactly as the decisions raise it, for SQL callers (usage_status),
 * so that every usage_policy_configuration_error has one shape.  NULL
 * plan_code: no subscription; feature_key may be NULL.
 */
Datum
usage_guard_raise_policy_error(PG_FUNCTION_ARGS)
{
	Policy		policy;
	char	   *tenant_id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tenant_id must not be NULL")));
	tenant_id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	memset(&policy, 0, sizeof(policy));
	if (!PG_ARGISNULL(2))
	{
		policy.has_subscription = true;
		strlcpy(policy.plan_code, text_to_cstring(PG_GETARG_TEXT_PP(2)), sizeof(policy.plan_code));
		strlcpy(policy.status, PG_ARGISNULL(3) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(3)),
				sizeof(policy.status));
	}
	RaisePolicyError(tenant_id, PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
					 &policy);
	PG_RETURN_VOID();
}

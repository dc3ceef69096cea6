/*
 * decision.c
 *		Turns the limits of a feature, with the usage of each window, into one
 *		decision for a request; and reports it: the JSON an application turns
 *		into an HTTP 429/402 body, the errors with dedicated SQLSTATEs, and the
 *		soft-limit WARNING.
 */
#include "postgres.h"

#include <math.h>

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
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

static const char *const limit_kind_names[] = {
	[LIMIT_QUOTA] = "quota",
	[LIMIT_RATE] = "rate",
	[LIMIT_CONCURRENCY] = "concurrency",
};

const char *
LimitKindName(LimitKind kind)
{
	return limit_kind_names[kind];
}

static double
AmountToDouble(Amount a)
{
	return (double) a / (double) AMOUNT_ONE;
}

static Amount
DoubleToAmount(double d)
{
	return (Amount) (d * (double) AMOUNT_ONE);
}

/* A rate limit's emission interval: microseconds per unit */
static double
EmissionInterval(const FeatureLimit *l)
{
	return (double) l->length / AmountToDouble(l->limits.hard);
}

/*
 * Fill a rate limit's state from its theoretical arrival time (GCRA): the
 * units "in the bucket" now are (max(tat, at) - at) / T, it is empty again
 * at max(tat, at).
 */
void
RateState(FeatureLimit *l, double tat, TimestampTz at)
{
	double		t = Max(tat, (double) at);

	l->tat = tat;
	/*
	 * Timestamps near 2^50 microseconds keep about 0.1 us in a double: round
	 * the units in the bucket to a millionth so 2 requests show as 2.
	 */
	l->usage = DoubleToAmount(round((t - (double) at) / EmissionInterval(l) * 1e6) / 1e6);
	l->reset_at = (TimestampTz) ceil(t);
}

/* Units a limit admits at once: a rate limit's burst, else its hard limit */
static Amount
Capacity(const FeatureLimit *l)
{
	return l->kind == LIMIT_RATE ? l->burst : l->limits.hard;
}

/* Would the request pass the limit `cap`?  Rate limits compare times, exactly */
static bool
Exceeds(const FeatureLimit *l, Amount cap)
{
	if (l->kind == LIMIT_RATE)
	{
		double		T = EmissionInterval(l);
		double		now = (double) l->window_start;
		double		new_tat = Max(l->tat, now) + AmountToDouble(l->requested) * T;

		/*
		 * A microsecond of tolerance: a double holds a timestamp to about
		 * 0.1 us, so a burst's last unit must not be refused by rounding.
		 */
		return new_tat - now > AmountToDouble(cap) * T + 1.0;
	}
	return l->usage + l->requested > cap;
}

/*
 * When the same request would pass this limit, which refuses it now:
 * DT_NOEND when waiting cannot help (the request is larger than the limit,
 * or the window never ends).
 */
static TimestampTz
RetryAt(const FeatureLimit *l, Amount cap)
{
	if (l->requested > cap)
		return DT_NOEND;
	switch (l->kind)
	{
		case LIMIT_QUOTA:
			/* rolling: when enough units have left (engine); calendar: the next window starts empty */
			if (l->length > 0)
				return l->free_at;
			return l->period == PERIOD_LIFETIME ? DT_NOEND : l->window_end;
		case LIMIT_RATE:
			/* new_tat - t <= burst * T  <=>  t >= tat + (q - burst) * T */
			return (TimestampTz) ceil(l->tat + (AmountToDouble(l->requested) -
												AmountToDouble(cap)) * EmissionInterval(l));
		case LIMIT_CONCURRENCY:
			return l->free_at;
	}
	return DT_NOEND;
}

/*
 * Is a candidate (room left under a limit) a better pick than the best so
 * far?  Less room wins; on a tie the limit that resets later, since the
 * caller has to wait for that one.
 */
static bool
Tighter(Amount room, const FeatureLimit *w, Amount best_room, const FeatureLimit *best)
{
	if (best == NULL)
		return true;
	if (room != best_room)
		return room < best_room;
	return w->reset_at > best->reset_at;
}

/* Among refusing limits: the one to wait longest for, then the one with less room */
static bool
LaterRetry(TimestampTz retry, Amount room, TimestampTz best_retry, Amount best_room,
		   const FeatureLimit *best)
{
	if (best == NULL)
		return true;
	if (retry != best_retry)
		return retry > best_retry;
	return room < best_room;
}

/*
 * Evaluate every limit of a request (every level, kind and window) at once.
 * The reported limit is the one refusing (hard before soft) that takes
 * longest to let the request pass, else the one closest to any of its
 * limits.  retry_after is the latest time across every limit that refuses
 * (a request waits for all of them), unknown when one never would pass.
 * No limits at all for a feature means it is not included: an implicit
 * hard limit of 0.  Rate limits carry their GCRA state (RateState) with
 * window_start = at.
 */
Decision *
EvaluateLimits(const char *tenant_id, const char *plan_code,
			   const char *feature_key, FeatureLimit *limits, int nlimits,
			   Amount requested, TimestampTz at)
{
	Decision   *d = palloc0(sizeof(Decision));
	const FeatureLimit *hard = NULL,
			   *soft = NULL,
			   *close = NULL;
	Amount		hard_room = 0,
				soft_room = 0,
				close_room = 0;
	TimestampTz hard_retry = 0,
				soft_retry = 0,
				retry = 0;
	bool		close_is_hard = false;
	bool		soft_blocks = (usage_guard_soft_limit_mode == SOFT_LIMIT_BLOCK);

	d->tenant_id = tenant_id;
	d->plan_code = plan_code;
	d->feature_key = feature_key;
	d->requested = requested;
	d->at = at;
	d->limits = limits;
	d->nlimits = nlimits;

	if (nlimits == 0)
	{
		d->allowed = (feature_key == NULL);
		d->kind = d->allowed ? DECISION_ALLOW : DECISION_HARD_LIMIT;
		d->has_limit = !d->allowed;
		d->limit_is_hard = true;
		return d;
	}

	for (int i = 0; i < nlimits; i++)
	{
		FeatureLimit *w = &limits[i];

		if (w->kind == LIMIT_QUOTA && w->length == 0)
			w->reset_at = w->window_end;
		if (w->limits.has_hard)
		{
			Amount		cap = Capacity(w);
			Amount		room = cap - w->usage;

			/* a limit whose action is alert never refuses: it raises alerts */
			if (w->action != ACTION_ALERT && Exceeds(w, cap))
			{
				TimestampTz r = RetryAt(w, cap);

				retry = Max(retry, r);
				if (LaterRetry(r, room, hard_retry, hard_room, hard))
				{
					hard = w;
					hard_room = room;
					hard_retry = r;
				}
			}
			if (Tighter(room, w, close_room, close))
			{
				close = w;
				close_room = room;
				close_is_hard = true;
			}
		}
		if (w->limits.has_soft && w->kind == LIMIT_QUOTA)
		{
			Amount		room = w->limits.soft - w->usage;

			if (w->action != ACTION_ALERT && Exceeds(w, w->limits.soft))
			{
				TimestampTz r = RetryAt(w, w->limits.soft);

				if (soft_blocks)
					retry = Max(retry, r);
				if (LaterRetry(r, room, soft_retry, soft_room, soft))
				{
					soft = w;
					soft_room = room;
					soft_retry = r;
				}
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
		d->allowed = !soft_blocks;
		d->kind = DECISION_SOFT_LIMIT;
		d->window = soft;
		d->limit_is_hard = false;
	}
	else
	{
		d->allowed = true;
		d->kind = DECISION_ALLOW;
		/* every limit unlimited: report the first */
		d->window = close != NULL ? close : &limits[0];
		d->limit_is_hard = close_is_hard;
	}
	d->has_limit = (hard != NULL || soft != NULL || close != NULL);
	if (d->has_limit)
		d->limit_value = d->limit_is_hard ? d->window->limits.hard : d->window->limits.soft;
	d->usage = d->window->usage;
	d->remaining = Max((d->limit_is_hard ? Capacity(d->window) : d->limit_value) - d->usage, 0);
	if (!d->allowed && retry != DT_NOEND)
	{
		d->has_retry = true;
		d->retry_after = Max((double) (retry - at) / USECS_PER_SEC, 0);
	}
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

/* Append "key": "value" (null for NULL) to a JSON object being built */
void
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

/* 24h, 30d, 90m: a rolling window's length */
static char *
LengthLabel(int64 length)
{
	if (length % USECS_PER_DAY == 0)
		return psprintf(INT64_FORMAT "d", length / USECS_PER_DAY);
	if (length % USECS_PER_HOUR == 0)
		return psprintf(INT64_FORMAT "h", length / USECS_PER_HOUR);
	return psprintf(INT64_FORMAT "m", length / USECS_PER_MINUTE);
}

/* A rate limit's period or a quota's, as a word: second, minute, day, 90s */
char *
LimitLabel(const FeatureLimit *l)
{
	switch (l->kind)
	{
		case LIMIT_QUOTA:
			if (l->length > 0)
				return psprintf("rolling %s", LengthLabel(l->length));
			return pstrdup(PeriodKindName(l->period));
		case LIMIT_RATE:
			if (l->length == USECS_PER_SEC)
				return pstrdup("second");
			if (l->length == USECS_PER_MINUTE)
				return pstrdup("minute");
			if (l->length == USECS_PER_HOUR)
				return pstrdup("hour");
			return psprintf(INT64_FORMAT "s", l->length / USECS_PER_SEC);
		case LIMIT_CONCURRENCY:
			return pstrdup("concurrent");
	}
	return pstrdup("");
}

/* Length of a limit's window in seconds (RateLimit-Policy's w); 0: none */
double
LimitSeconds(const FeatureLimit *l)
{
	if (l->kind == LIMIT_RATE || (l->kind == LIMIT_QUOTA && l->length > 0))
		return (double) l->length / USECS_PER_SEC;
	if (l->kind == LIMIT_QUOTA && l->period != PERIOD_LIFETIME)
		return (double) (l->window_end - l->window_start) / USECS_PER_SEC;
	return 0;
}

/* Human-readable 501 of 500 "messages" per day, for messages */
static char *
Describe(const Decision *d)
{
	const FeatureLimit *l = d->window;
	char	   *after = AmountToCString(d->usage + d->window->requested);
	char	   *limit = AmountToCString(d->limit_value);

	if (l->kind == LIMIT_CONCURRENCY)
		return psprintf("%s of %s concurrent requests", after, limit);
	if (l->kind == LIMIT_RATE)
		return psprintf("more than %s \"%s\" per %s (burst %s)", limit, l->unit,
						LimitLabel(l), AmountToCString(l->burst));
	return psprintf("%s of %s \"%s\" per %s", after, limit, l->unit ? l->unit : d->feature_key,
					LimitLabel(l));
}

/* Who is limited: tenant "acme", or api_key "k1" of tenant "acme" */
static char *
Who(const Decision *d)
{
	if (d->window == NULL || d->window->subject_id == NULL)
		return psprintf("tenant \"%s\"", d->tenant_id);
	return psprintf("%s \"%s\" of tenant \"%s\"", d->window->level, d->window->subject_id,
					d->tenant_id);
}

/* The sentence of a refusal, also the JSON's "message" */
static char *
Message(const Decision *d)
{
	if (d->window == NULL)
		return psprintf("plan \"%s\" does not include feature \"%s\"",
						d->plan_code, d->feature_key);
	return psprintf("%s %s %s (%s limit)", Who(d),
					d->window->kind == LIMIT_RATE ? "sends" : (d->allowed ? "uses" : "would use"),
					Describe(d), d->limit_is_hard ? "hard" : "soft");
}

/* The decision as the JSON object of an error's DETAIL */
char *
DecisionJson(const Decision *d, const char *code)
{
	StringInfoData buf;
	const FeatureLimit *l = d->window;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendStr(&buf, "code", code);
	AppendStr(&buf, "decision", DecisionKindName(d->kind));
	AppendStr(&buf, "tenant_id", d->tenant_id);
	AppendStr(&buf, "plan_code", d->plan_code);
	AppendStr(&buf, "feature_key", d->feature_key);
	AppendStr(&buf, "period", l ? LimitLabel(l) : NULL);
	AppendStr(&buf, "limit_type", d->has_limit ? (d->limit_is_hard ? "hard_limit" : "soft_limit") : NULL);
	AppendNum(&buf, "limit_value", d->has_limit, d->limit_value);
	AppendNum(&buf, "usage", true, d->usage);
	AppendNum(&buf, "requested", true, d->requested);
	AppendNum(&buf, "remaining", d->has_limit, d->remaining);
	AppendTs(&buf, "window_start", l && l->kind == LIMIT_QUOTA && l->length == 0 ? l : NULL, false);
	AppendTs(&buf, "window_end", l && l->kind == LIMIT_QUOTA && l->length == 0 ? l : NULL, true);
	AppendStr(&buf, "level", l ? l->level : (d->window == NULL ? "tenant" : NULL));
	AppendStr(&buf, "subject_id", l ? l->subject_id : NULL);
	AppendStr(&buf, "limit_kind", l ? LimitKindName(l->kind) : "quota");
	AppendNum(&buf, "hard_limit", l && l->limits.has_hard, l ? l->limits.hard : 0);
	AppendNum(&buf, "soft_limit", l && l->limits.has_soft, l ? l->limits.soft : 0);
	AppendNum(&buf, "usage_after", true, d->usage + (d->allowed && l ? l->requested : 0));
	AppendKey(&buf, "reset_at");
	if (l)
		AppendIsoTimestamp(&buf, l->reset_at);
	else
		appendStringInfoString(&buf, "null");
	AppendKey(&buf, "retry_after");
	if (d->has_retry)
		appendStringInfo(&buf, "%d", (int) ceil(d->retry_after));
	else
		appendStringInfoString(&buf, "null");
	AppendStr(&buf, "message", Message(d));
	AppendKey(&buf, "headers");
	{
		Jsonb	   *h = DecisionHeaders(d);

		appendStringInfoString(&buf, JsonbToCString(NULL, &h->root, VARSIZE(h)));
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/* A limit's name in the RateLimit headers: tenant-messages-day, api_key-requests-second */
static char *
PolicyName(const FeatureLimit *l)
{
	char	   *label = LimitLabel(l);

	for (char *c = label; *c; c++)
		if (*c == ' ')
			*c = '-';
	return psprintf("%s-%s-%s", l->level, l->unit ? l->unit : "", label);
}

/* Integer part of a non-negative amount, for headers (sf-integer) */
static char *
Whole(Amount a)
{
	a = Max(a, 0);
	return AmountToCString(a / AMOUNT_ONE * AMOUNT_ONE);
}

/* Append one "key": "value" pair to a JSONB object under construction */
static void
PushPair(JsonbParseState **state, const char *key, const char *value)
{
	JsonbValue	k,
				v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v.type = jbvString;
	v.val.string.val = (char *) value;
	v.val.string.len = strlen(value);
	(void) pushJsonbValue(state, WJB_KEY, &k);
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/*
 * The HTTP headers of a decision, as a JSONB object an application copies
 * into its response: RateLimit-Policy and RateLimit
 * (draft-ietf-httpapi-ratelimit-headers-10), Retry-After when refused and
 * waiting helps, and X-RateLimit-Limit/Remaining/Reset (Reset in Unix
 * seconds, as seed 002's gateway sends it).  RateLimit and X-RateLimit-*
 * describe the hard limit closest to refusing, or the refusing one.  Built
 * as JSONB directly: it is part of every decision's result.
 */
Jsonb *
DecisionHeaders(const Decision *d)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	StringInfoData policy;
	const FeatureLimit *closest = NULL;
	Amount		closest_room = 0;

	initStringInfo(&policy);
	for (int i = 0; i < d->nlimits; i++)
	{
		const FeatureLimit *l = &d->limits[i];
		Amount		room;
		double		w = LimitSeconds(l);

		if (!l->limits.has_hard || l->kind == LIMIT_CONCURRENCY)
			continue;
		appendStringInfo(&policy, "%s\"%s\";q=%s", policy.len > 0 ? ", " : "",
						 PolicyName(l), Whole(l->limits.hard));
		if (w > 0)
			appendStringInfo(&policy, ";w=%.0f", ceil(w));
		room = Capacity(l) - l->usage;
		if (closest == NULL || room < closest_room ||
			(room == closest_room && l->reset_at > closest->reset_at))
		{
			closest = l;
			closest_room = room;
		}
	}
	if (!d->allowed && d->window != NULL && d->window->limits.has_hard &&
		d->window->kind != LIMIT_CONCURRENCY)
	{
		closest = d->window;
		closest_room = Capacity(closest) - closest->usage;
	}

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (policy.len > 0)
		PushPair(&state, "RateLimit-Policy", policy.data);
	if (closest != NULL)
	{
		/* after this request: its own units of that limit (requests, tokens, a lease) */
		char	   *remaining = Whole(closest_room - (d->allowed ? closest->requested : 0));
		bool		resets = !TIMESTAMP_NOT_FINITE(closest->reset_at);
		double		t = resets ? Max((double) (closest->reset_at - d->at) / USECS_PER_SEC, 0) : 0;

		/* a lifetime limit never resets: no t, no X-RateLimit-Reset */
		PushPair(&state, "RateLimit",
				 resets ? psprintf("\"%s\";r=%s;t=%.0f", PolicyName(closest), remaining, ceil(t))
				 : psprintf("\"%s\";r=%s", PolicyName(closest), remaining));
		PushPair(&state, "X-RateLimit-Limit", Whole(closest->limits.hard));
		PushPair(&state, "X-RateLimit-Remaining", remaining);
		if (resets)
			PushPair(&state, "X-RateLimit-Reset",
					 psprintf(INT64_FORMAT, (int64) ceil((double) closest->reset_at / USECS_PER_SEC) +
							  (int64) ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)));
	}
	if (!d->allowed && d->has_retry)
		PushPair(&state, "Retry-After", psprintf("%d", (int) ceil(d->retry_after)));
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/* When the deciding window resets, for hints */
static char *
ResetHint(const Decision *d)
{
	StringInfoData buf;

	initStringInfo(&buf);
	AppendIsoTimestamp(&buf, d->window->reset_at);
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
				 errmsg("usage limit exceeded: %s would use %s (hard limit)",
						Who(d), Describe(d)),
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

/*
 * gateway.c
 *		The calls of an LLM gateway: admit (model access, then every limit
 *		of every level on tokens, cost and requests for the estimate, and a
 *		reservation), settle (the real tokens and cost in place of the
 *		estimate), cancel and expire_reservations (the estimate given back).
 *
 * Tokens and cost are two features (TOKENS_FEATURE, COST_FEATURE) judged in
 * one engine request, so a budget is a quota like any other and exact under
 * concurrency.  A reservation must outlive its transaction and backend
 * (poolers), so its estimate is in the ledger (kind 'reserve') from admit
 * on; settle, cancel and expiry add rows (kinds 'settle', 'release') at the
 * reservation's time, after locking its row: they are exclusive and
 * idempotent, and the ledger stays the truth the counters are rebuilt from.
 * docs/architecture.md, "Gateway limits II".
 *
 * Lock order: reservation row (settle, cancel, expiry), then lease-holder
 * locks, then counter-key locks (engine.c's rules).
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "engine.h"
#include "metrics.h"
#include "query.h"
#include "subjects.h"
#include "usage_guard.h"

#define TOKENS_FEATURE	"tokens"
#define COST_FEATURE	"cost_usd"
#define MAX_TOKENS		INT64CONST(1000000000000)	/* 1e12 */
#define MAX_DOWNGRADES	4
#define QUEUE_TIMEOUT_DEFAULT	(30 * USECS_PER_SEC)	/* seed 002's queue_timeout */
#define QUEUE_DEPTH_DEFAULT		100					/* and queue_depth */
#define QUEUE_POLL				(50 * 1000)		/* a concurrency slot: look again every 50 ms */

/* The price of a model at a time, and where a downgrade leads */
static CachedQuery model_query = {
	"SELECT usage_guard.model_cost(m.model, $2, $3, 0, $4), m.downgrade_to"
	"  FROM usage_guard.models m WHERE m.model = $1",
	4, {TEXTOID, NUMERICOID, NUMERICOID, TIMESTAMPTZOID}
};

/*
 * The most specific level of a chain ($2..$4, tenant last) whose model
 * list (its own row, else its role's, else its plan's) lacks the model.
 */
static CachedQuery access_query = {
	"SELECT c.level, nullif(c.subject_id, '')"
	"  FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS c(subject_id, level, role, ord)"
	"  CROSS JOIN LATERAL ("
	"    SELECT l.models FROM usage_guard.subject_limits l"
	"     WHERE l.limit_kind = 'model' AND l.level = c.level"
	"       AND ((l.tenant_id = $1 AND l.subject_id IS NOT DISTINCT FROM nullif(c.subject_id, ''))"
	"            OR (l.role IS NOT NULL AND l.role = c.role)"
	"            OR l.plan_code = $5)"
	"     ORDER BY CASE WHEN l.tenant_id IS NOT NULL THEN 0 WHEN l.role IS NOT NULL THEN 1 ELSE 2 END"
	"     LIMIT 1) m"
	" WHERE NOT ($6 = ANY (m.models))"
	" ORDER BY c.ord LIMIT 1",
	6, {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, TEXTOID}
};

static CachedQuery retry_query = {
	"SELECT reservation_id::text, model, requested_model, action, expires_at, lease_id::text,"
	"       estimated_input_tokens + estimated_output_tokens, estimated_cost"
	"  FROM usage_guard.reservations WHERE tenant_id = $1 AND idempotency_key = $2",
	2, {TEXTOID, TEXTOID}
};

static CachedQuery reserve_query = {
	"INSERT INTO usage_guard.reservations (tenant_id, reservation_id, subject_id, subject_path,"
	"       model, requested_model, action, reserved_at, expires_at, estimated_input_tokens,"
	"       estimated_output_tokens, estimated_cost, lease_id, idempotency_key)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
	14, {TEXTOID, UUIDOID, TEXTOID, TEXTARRAYOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, NUMERICOID, NUMERICOID, NUMERICOID, UUIDOID, TEXTOID}
};

static CachedQuery lock_query = {
	"SELECT subject_id, subject_path, model, state, reserved_at,"
	"       estimated_input_tokens + estimated_output_tokens, estimated_cost,"
	"       input_tokens, output_tokens, cached_input_tokens, cost, lease_id,"
	"       estimated_input_tokens, estimated_output_tokens"
	"  FROM usage_guard.reservations WHERE tenant_id = $1 AND reservation_id = $2 FOR UPDATE",
	2, {TEXTOID, UUIDOID}
};

static CachedQuery cost_query = {
	"SELECT usage_guard.model_cost($1, $2, $3, $4, $5)",
	5, {TEXTOID, NUMERICOID, NUMERICOID, NUMERICOID, TIMESTAMPTZOID}
};

static CachedQuery close_query = {
	"UPDATE usage_guard.reservations"
	"   SET state = $3, input_tokens = $4, output_tokens = $5, cached_input_tokens = $6,"
	"       cost = $7, closed_at = pg_catalog.now()"
	" WHERE tenant_id = $1 AND reservation_id = $2",
	7, {TEXTOID, UUIDOID, TEXTOID, NUMERICOID, NUMERICOID, NUMERICOID, NUMERICOID}
};

static CachedQuery expired_query = {
	"SELECT tenant_id, reservation_id FROM usage_guard.reservations"
	" WHERE state = 'open' AND expires_at <= $1"
	" ORDER BY expires_at FOR UPDATE SKIP LOCKED",
	1, {TIMESTAMPTZOID}
};

/*
 * The same on a distributed ledger, unlocked: Citus locks rows only by a
 * tenant (each reservation is then locked by LockReservation, and skipped
 * unless still open)
 */
static CachedQuery expired_distributed_query = {
	"SELECT tenant_id, reservation_id FROM usage_guard.reservations"
	" WHERE state = 'open' AND expires_at <= $1 ORDER BY expires_at",
	1, {TIMESTAMPTZOID}
};

/* Columns of usage_guard.admission and usage_guard.settlement */
#define ADMISSION_COLUMNS 24
#define SETTLEMENT_COLUMNS 11

/* A token count: a whole number from 0 to 1e12 */
static Numeric
Tokens(FunctionCallInfo fcinfo, int argno, const char *name)
{
	Numeric		n;
	Amount		a;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	n = PG_GETARG_NUMERIC(argno);
	if (numeric_is_nan(n) || numeric_is_inf(n) || !NumericToAmount(n, &a) ||
		a < 0 || a > MAX_TOKENS * AMOUNT_ONE || a % AMOUNT_ONE != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a whole number from 0 to 1e12", name),
				 errdetail("Got %s.", DatumGetCString(DirectFunctionCall1(numeric_out,
																		  NumericGetDatum(n))))));
	return n;
}

static Amount
NumericAmount(Numeric n, const char *what)
{
	Amount		a;

	if (!NumericToAmount(n, &a))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s is out of range", what),
				 errdetail("Amounts are exact to %d decimal places, up to 1e15.",
						   AMOUNT_SCALE_DIGITS)));
	return a;
}

static Datum
UuidDatum(const char *s)
{
	return DirectFunctionCall1(uuid_in, CStringGetDatum(s));
}

static char *
UuidText(Datum id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, id));
}

static TupleDesc
ResultDesc(FunctionCallInfo fcinfo, int ncolumns)
{
	TupleDesc	tupdesc;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function returning record called in context that cannot accept type record")));
	if (tupdesc->natts != ncolumns)
		elog(ERROR, "usage_guard: the result type has %d columns, this library knows %d",
			 tupdesc->natts, ncolumns);
	return BlessTupleDesc(tupdesc);
}

/*
 * Everything admit knows about one call, for the engine request (built
 * again for a downgrade) and the result row.
 */
typedef struct Admit
{
	const char *tenant_id;
	const char *subject_id;
	TimestampTz at;
	int64		ttl;
	MemoryContext mcxt;			/* the call's: what outlives SPI_finish */
	Policy		tokens_policy;
	Policy		cost_policy;
	SubjectPolicy tokens_sp;
	SubjectPolicy cost_sp;
	bool		lease;			/* the chain has a concurrency limit */
	Numeric		input_tokens;
	Numeric		output_tokens;
	Numeric		tokens_num;		/* input + output */
	Amount		tokens;
	const char *requested_model;
	const char *model;			/* the model priced and admitted */
	const char *downgrade_to;	/* the model's downgrade, or NULL */
	Numeric		cost_num;
	Amount		cost;
	/* result */
	Decision   *d;
	const char *action;
	const char *code;
	const char *refused_level;	/* model access */
	const char *refused_subject;
	char	   *reservation_id;
	char	   *lease_id;
	TimestampTz expires_at;
	bool		retried;
	int			queue_slot;		/* -1: not queued */
	TimestampTz queue_deadline;
} Admit;

/* The model's price for the estimate and its downgrade (SPI connected) */
static void
PriceModel(Admit *a, const char *model)
{
	Datum		values[4];
	bool		isnull;
	char	   *downgrade;

	values[0] = CStringGetTextDatum(model);
	values[1] = NumericGetDatum(a->input_tokens);
	values[2] = NumericGetDatum(a->output_tokens);
	values[3] = TimestampTzGetDatum(a->at);
	RunQuery(&model_query, values, NULL, true, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown model \"%s\"", model),
				 errhint("Models are rows of usage_guard.models, their prices rows of usage_guard.model_prices.")));
	a->model = model;
	a->cost_num = DatumGetNumeric(ResultDatum(0, 1, &isnull));
	downgrade = ResultText(0, 2, &isnull);
	MemoryContextSwitchTo(a->mcxt);
	a->cost_num = DatumGetNumericCopy(NumericGetDatum(a->cost_num));
	a->downgrade_to = isnull ? NULL : pstrdup(downgrade);
	a->cost = NumericAmount(a->cost_num, "the estimated cost");
}

/* NULL if the chain may call the model, else the refusing level (SPI connected) */
static bool
ModelAllowed(Admit *a, const char *model)
{
	const SubjectPolicy *sp = &a->tokens_sp;
	const char *ids[UG_MAX_LEVELS];
	const char *levels[UG_MAX_LEVELS];
	const char *roles[UG_MAX_LEVELS];
	Datum		values[6];
	char		nulls[6];
	bool		isnull;
	char	   *level;
	char	   *subject;

	for (int i = 0; i < sp->nlevels; i++)
	{
		ids[i] = sp->levels[i].subject_id;
		levels[i] = sp->levels[i].level;
		roles[i] = sp->levels[i].has_role ? sp->levels[i].role : NULL;
	}
	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(a->tenant_id);
	values[1] = TextArray(ids, sp->nlevels);
	values[2] = TextArray(levels, sp->nlevels);
	values[3] = TextArray(roles, sp->nlevels);
	values[4] = CStringGetTextDatum(a->tokens_policy.plan_code);
	nulls[4] = a->tokens_policy.has_subscription ? ' ' : 'n';
	values[5] = CStringGetTextDatum(model);
	RunQuery(&access_query, values, nulls, true, 1);
	if (SPI_processed == 0)
		return true;
	level = ResultText(0, 1, &isnull);
	subject = ResultText(0, 2, &isnull);
	MemoryContextSwitchTo(a->mcxt);
	a->refused_level = pstrdup(level);
	a->refused_subject = isnull ? NULL : pstrdup(subject);
	return false;
}

/* The engine request of an admission: tokens, then cost, of every level */
static void
BuildAdmit(Admit *a, EngineRequest *r, bool leases)
{
	EngineInit(r, a->tenant_id, a->tokens_policy.plan_code, TOKENS_FEATURE, &a->tokens_policy,
			   a->at, a->tokens);
	/* a feature without limits is unlimited here: budgets are opt-in */
	r->quotas = false;
	BuildFeatureRequest(r, &a->tokens_sp, TOKENS_FEATURE, a->tokens, &a->tokens_policy,
						true, true, true);
	BuildFeatureRequest(r, &a->cost_sp, COST_FEATURE, a->cost, &a->cost_policy,
						true, true, false);
	a->lease = false;
	for (int i = 0; i < r->nlimits; i++)
		a->lease |= (r->limits[i].kind == LIMIT_CONCURRENCY);
	if (a->lease && leases)
		CountRequestLeases(r, &a->tokens_sp);
}

/* The feature of the deciding limit, for the decision and its JSON */
static void
DecidingFeature(Decision *d)
{
	if (d->window && d->window->unit && strcmp(d->window->unit, "requests") != 0)
		d->feature_key = d->window->unit;
	/* what the request asked of that limit: tokens or dollars */
	if (d->window)
		d->requested = d->window->requested;
}

/* Did an alert-only limit let the request pass over it? */
static bool
PassedAlertLimit(const Decision *d)
{
	for (int i = 0; i < d->nlimits; i++)
	{
		const FeatureLimit *l = &d->limits[i];
		Amount		limit;

		if (l->action != ACTION_ALERT || l->kind != LIMIT_QUOTA)
			continue;
		if (!l->limits.has_hard && !l->limits.has_soft)
			continue;
		limit = l->limits.has_hard ? l->limits.hard : l->limits.soft;
		if (l->usage + l->requested > limit)
			return true;
	}
	return false;
}

/* Amount with two decimals, rounded up or down: the budget headers' USD */
static char *
Cents(Amount v, bool up)
{
	int64		unit = AMOUNT_ONE / 100;
	int64		c = v / unit;

	if (up && v % unit > 0)
		c++;
	if (!up && v % unit < 0)
		c--;
	return psprintf("%s%lld.%02lld", c < 0 ? "-" : "", (long long) (llabs(c) / 100),
					(long long) (llabs(c) % 100));
}

/*
 * The rate-limit headers of the decision plus 002's budget headers of the
 * tightest cost quota: X-Budget-Limit, -Used (after this request when
 * allowed), -Remaining and -Reset (unix seconds).
 */
static Jsonb *
AdmitHeaders(const Decision *d)
{
	Jsonb	   *h = DecisionHeaders(d);
	const FeatureLimit *best = NULL;
	Amount		best_room = 0;
	StringInfoData buf;

	for (int i = 0; i < d->nlimits; i++)
	{
		const FeatureLimit *l = &d->limits[i];
		Amount		used;

		if (l->kind != LIMIT_QUOTA || !l->limits.has_hard || l->unit == NULL ||
			strcmp(l->unit, COST_FEATURE) != 0)
			continue;
		used = l->usage + (d->allowed ? l->requested : 0);
		if (best == NULL || l->limits.hard - used < best_room)
		{
			best = l;
			best_room = l->limits.hard - used;
		}
	}
	if (best == NULL)
		return h;
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"X-Budget-Limit\": \"%s\", \"X-Budget-Used\": \"%s\", "
					 "\"X-Budget-Remaining\": \"%s\"",
					 Cents(best->limits.hard, false),
					 Cents(best->limits.hard - best_room, true),
					 Cents(Max(best_room, 0), false));
	if (!TIMESTAMP_NOT_FINITE(best->reset_at))
		appendStringInfo(&buf, ", \"X-Budget-Reset\": \"%lld\"",
						 (long long) ((best->reset_at + USECS_PER_SEC - 1) / USECS_PER_SEC +
									  (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY));
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(h),
											  DirectFunctionCall1(jsonb_in,
																  CStringGetDatum(buf.data))));
}

/* The JSON body of a refused model: code model_not_allowed */
static Jsonb *
ModelRefusalJson(const Admit *a)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendStr(&buf, "code", "model_not_allowed");
	AppendStr(&buf, "decision", "hard_limit");
	AppendStr(&buf, "tenant_id", a->tenant_id);
	AppendStr(&buf, "plan_code", a->tokens_policy.plan_code);
	AppendStr(&buf, "subject_id", a->subject_id);
	AppendStr(&buf, "model", a->requested_model);
	AppendStr(&buf, "level", a->refused_level);
	AppendStr(&buf, "limit_subject_id", a->refused_subject);
	AppendStr(&buf, "limit_kind", "model");
	AppendStr(&buf, "message",
				  psprintf("model \"%s\" is not allowed for %s \"%s\" of tenant \"%s\"",
						   a->requested_model, a->refused_level,
						   a->refused_subject ? a->refused_subject : a->tenant_id, a->tenant_id));
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* The admission as a usage_guard.admission row */
static Datum
AdmissionDatum(FunctionCallInfo fcinfo, const Admit *a)
{
	TupleDesc	tupdesc = ResultDesc(fcinfo, ADMISSION_COLUMNS);
	Datum		values[ADMISSION_COLUMNS];
	bool		nulls[ADMISSION_COLUMNS];
	const Decision *d = a->d;
	const FeatureLimit *l = d ? d->window : NULL;
	bool		allowed = d ? d->allowed : false;

	memset(nulls, true, sizeof(nulls));
#define SET(i, v) do { values[i] = (v); nulls[i] = false; } while (0)
	SET(0, BoolGetDatum(allowed));
	SET(1, CStringGetTextDatum(d ? DecisionKindName(d->kind) : "hard_limit"));
	SET(2, CStringGetTextDatum(a->action));
	if (a->code)
		SET(3, CStringGetTextDatum(a->code));
	if (a->reservation_id)
		SET(4, UuidDatum(a->reservation_id));
	if (a->lease_id)
		SET(5, UuidDatum(a->lease_id));
	if (a->reservation_id)
		SET(6, TimestampTzGetDatum(a->expires_at));
	SET(7, CStringGetTextDatum(a->model ? a->model : a->requested_model));
	SET(8, CStringGetTextDatum(a->requested_model));
	if (a->model && strcmp(a->model, a->requested_model) != 0)
		SET(9, CStringGetTextDatum(a->model));
	if (a->tokens_num)
		SET(10, NumericGetDatum(a->tokens_num));
	if (a->cost_num)
		SET(11, NumericGetDatum(a->cost_num));
	if (d == NULL)
	{
		/* refused by model access */
		SET(12, CStringGetTextDatum(a->refused_level));
		if (a->refused_subject)
			SET(13, CStringGetTextDatum(a->refused_subject));
		SET(15, CStringGetTextDatum("model"));
		SET(22, DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
		SET(23, JsonbPGetDatum(ModelRefusalJson(a)));
		return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
	}
	SET(12, CStringGetTextDatum(l ? l->level : "tenant"));
	if (l && l->subject_id)
		SET(13, CStringGetTextDatum(l->subject_id));
	if (d->feature_key)
		SET(14, CStringGetTextDatum(d->feature_key));
	if (l)
	{
		SET(15, CStringGetTextDatum(LimitKindName(l->kind)));
		SET(16, CStringGetTextDatum(LimitLabel(l)));
		if (l->limits.has_hard)
			SET(17, NumericGetDatum(AmountToNumeric(l->limits.hard)));
	}
	SET(18, NumericGetDatum(AmountToNumeric(d->usage)));
	if (d->has_limit)
		SET(19, NumericGetDatum(AmountToNumeric(d->remaining)));
	if (l && !TIMESTAMP_NOT_FINITE(l->reset_at))
		SET(20, TimestampTzGetDatum(l->reset_at));
	if (d->has_retry)
		SET(21, DirectFunctionCall1(float8_numeric, Float8GetDatum(ceil(d->retry_after * 1000) / 1000)));
	SET(22, JsonbPGetDatum(AdmitHeaders(d)));
	if (!d->allowed)
		SET(23, DirectFunctionCall1(jsonb_in,
									CStringGetDatum(DecisionJson(d, "usage_limit_exceeded"))));
#undef SET
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/* The ledger's attributes of a reservation's rows */
static Datum
ReservationAttributes(Datum attributes, const char *reservation_id, const char *model)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendStr(&buf, "reservation_id", reservation_id);
	AppendStr(&buf, "model", model);
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall2(jsonb_concat, attributes,
							   DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* Write an allowed admission: the ledger rows, the lease, the reservation */
static void
Reserve(Admit *a, const char *key, Datum attributes)
{
	Datum		path = SubjectPathDatum(&a->tokens_sp);
	Datum		attrs;
	Datum		values[14];
	char		nulls[14];
	InternalContext ctx;

	a->reservation_id = NewUuid();
	a->expires_at = a->at + a->ttl;
	attrs = ReservationAttributes(attributes, a->reservation_id, a->model);
	if (a->lease)
		a->lease_id = InsertLease(a->tenant_id, &a->tokens_sp, a->at, a->expires_at);

	SPI_connect();
	if (a->tokens > 0)
		(void) InsertUsageEvent(a->tenant_id, TOKENS_FEATURE, a->tokens_num, a->at, "reserve",
								NULL, attrs, a->subject_id, path);
	if (a->cost > 0)
		(void) InsertUsageEvent(a->tenant_id, COST_FEATURE, a->cost_num, a->at, "reserve",
								NULL, attrs, a->subject_id, path);
	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(a->tenant_id);
	values[1] = UuidDatum(a->reservation_id);
	values[2] = CStringGetTextDatum(a->subject_id);
	values[3] = path;
	values[4] = CStringGetTextDatum(a->model);
	values[5] = CStringGetTextDatum(a->requested_model);
	values[6] = CStringGetTextDatum(a->action);
	values[7] = TimestampTzGetDatum(a->at);
	values[8] = TimestampTzGetDatum(a->expires_at);
	values[9] = NumericGetDatum(a->input_tokens);
	values[10] = NumericGetDatum(a->output_tokens);
	values[11] = NumericGetDatum(a->cost_num);
	values[12] = a->lease_id ? UuidDatum(a->lease_id) : (Datum) 0;
	nulls[12] = a->lease_id ? ' ' : 'n';
	values[13] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[13] = key ? ' ' : 'n';
	BeginInternal(&ctx, true);
	RunQuery(&reserve_query, values, nulls, false, 0);
	EndInternal(&ctx);
	SPI_finish();
}

/* An admission with this idempotency key exists: report it, count nothing */
static bool
RetriedAdmission(Admit *a, const char *key)
{
	Datum		values[2];
	bool		isnull;
	bool		found;
	InternalContext ctx;
	MemoryContext outer = CurrentMemoryContext;

	LockIdempotencyKey(a->tenant_id, "", key);
	SPI_connect();
	BeginInternal(&ctx, true);
	values[0] = CStringGetTextDatum(a->tenant_id);
	values[1] = CStringGetTextDatum(key);
	RunQuery(&retry_query, values, NULL, true, 1);
	found = (SPI_processed > 0);
	if (found)
	{
		char	   *id = ResultText(0, 1, &isnull);
		char	   *model = ResultText(0, 2, &isnull);
		char	   *requested = ResultText(0, 3, &isnull);
		char	   *action = ResultText(0, 4, &isnull);
		TimestampTz expires = DatumGetTimestampTz(ResultDatum(0, 5, &isnull));
		char	   *lease = ResultText(0, 6, &isnull);
		Datum		tokens = ResultDatum(0, 7, &isnull);
		Datum		cost = ResultDatum(0, 8, &isnull);

		MemoryContextSwitchTo(outer);
		a->reservation_id = pstrdup(id);
		a->model = pstrdup(model);
		a->requested_model = pstrdup(requested);
		a->action = pstrdup(action);
		a->expires_at = expires;
		a->lease_id = lease ? pstrdup(lease) : NULL;
		a->tokens_num = DatumGetNumericCopy(tokens);
		a->cost_num = DatumGetNumericCopy(cost);
		a->retried = true;
	}
	EndInternal(&ctx);
	SPI_finish();
	return found;
}

/* A feature of admit must exist and the subscription grant access */
static void
AdmitPolicy(const char *tenant_id, const char *feature_key, Policy *policy)
{
	GetPolicy(tenant_id, feature_key, policy);
	if (!policy->feature_exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("admit needs the feature \"%s\"", feature_key),
				 errhint("INSERT INTO usage_guard.features (feature_key, unit) VALUES ('tokens', 'token'), ('cost_usd', 'USD');")));
	RequireActiveSubscription(policy);
}

static void AdmitDecide(Admit *a, EngineRequest *r);

PG_FUNCTION_INFO_V1(usage_guard_admit);
/*
 * admit(tenant_id, subject_id, model, input_tokens, output_tokens, ttl,
 * idempotency_key, attributes, at)
 */
Datum
usage_guard_admit(PG_FUNCTION_ARGS)
{
	Admit	   *a = palloc0(sizeof(Admit));
	EngineRequest req;			/* on the stack: a palloc this size would be a malloc */
	EngineRequest *r = &req;
	char	   *key;
	Datum		attributes;
	instr_time	started;
	instr_time	elapsed;
	Numeric		zero = int64_to_numeric(0);
	InternalContext ctx;

	INSTR_TIME_SET_CURRENT(started);
	a->mcxt = CurrentMemoryContext;
	a->queue_slot = -1;
	a->tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	a->subject_id = RequiredText(fcinfo, 1, "subject_id");
	a->requested_model = RequiredText(fcinfo, 2, "model");
	a->input_tokens = Tokens(fcinfo, 3, "input_tokens");
	a->output_tokens = Tokens(fcinfo, 4, "output_tokens");
	(void) LeaseTtl(fcinfo, 5, true, &a->ttl);
	key = OptionalText(fcinfo, 6, "idempotency_key");
	attributes = Attributes(fcinfo, 7);
	a->at = RequiredTime(fcinfo, 8, "at");
	a->tokens_num = DatumGetNumeric(DirectFunctionCall2(numeric_add,
														NumericGetDatum(a->input_tokens),
														NumericGetDatum(a->output_tokens)));
	a->tokens = NumericAmount(a->tokens_num, "input_tokens + output_tokens");
	a->action = "none";

	RequireWritable("admit()");
	RequireNowUnlessAdmin(a->at, "admit()");
	RequireTenantScope(a->tenant_id, TOKENS_FEATURE, zero, a->at, "reserve", key, attributes, true);
	AdmitPolicy(a->tenant_id, TOKENS_FEATURE, &a->tokens_policy);
	AdmitPolicy(a->tenant_id, COST_FEATURE, &a->cost_policy);
	GetSubjectPolicy(a->tenant_id, a->subject_id, TOKENS_FEATURE, a->tokens_policy.plan_code,
					 &a->tokens_sp);
	if (!a->tokens_sp.exists)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown subject \"%s\" of tenant \"%s\"", a->subject_id, a->tenant_id),
				 errhint("Subjects are rows of usage_guard.subjects.")));
	GetSubjectPolicy(a->tenant_id, a->subject_id, COST_FEATURE, a->tokens_policy.plan_code,
					 &a->cost_sp);

	if (key != NULL && RetriedAdmission(a, key))
	{
		/* the state as it is, nothing counted again */
		a->tokens = a->cost = 0;
		BuildAdmit(a, r, false);
		for (int i = 0; i < r->nlimits; i++)
			r->limits[i].requested = 0;
		for (int t = 0; t < r->ntargets; t++)
			r->targets[t].amount = 0;
		a->d = EngineCheck(r);
		a->d->allowed = true;
		a->d->kind = DECISION_ALLOW;
		DecidingFeature(a->d);
		return AdmissionDatum(fcinfo, a);
	}

	SPI_connect();
	BeginInternal(&ctx, true);
	if (!ModelAllowed(a, a->requested_model))
	{
		EndInternal(&ctx);
		SPI_finish();
		a->action = "block";
		a->code = "model_not_allowed";
		MetricsCountAction(a->action, a->tokens_policy.plan_code);
		return AdmissionDatum(fcinfo, a);
	}
	PriceModel(a, a->requested_model);
	EndInternal(&ctx);
	SPI_finish();

	PG_TRY();
	{
		AdmitDecide(a, r);
	}
	PG_FINALLY();
	{
		if (a->queue_slot >= 0)
			QueueLeave(a->queue_slot);
	}
	PG_END_TRY();

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, started);
	MetricsObserveLatency(elapsed);
	MetricsCountDecision(a->d, true);
	if (!a->d->allowed)
	{
		if (strcmp(a->action, "queue") != 0)
			a->action = "block";
		a->code = "usage_limit_exceeded";
		MetricsCountAction(a->action, a->tokens_policy.plan_code);
		/* the model priced last is the one that was refused */
		return AdmissionDatum(fcinfo, a);
	}
	if (strcmp(a->action, "none") == 0 && PassedAlertLimit(a->d))
		a->action = "alert";
	Reserve(a, key, attributes);
	a->d->recorded = true;
	(void) FireAlerts(a->tenant_id, r->limits, r->nlimits, a->at, false);
	MetricsCountAction(a->action, a->tokens_policy.plan_code);
	MetricsCountReservation("admitted", 1);
	return AdmissionDatum(fcinfo, a);
}

/*
 * Wait for room when the deciding limit's action is queue: true when the
 * caller should decide again.  Joins the limit's queue on the first wait
 * (false if it is full), never waits past the limit's timeout, and holds
 * no lock while it sleeps.
 */
static bool
QueueForRoom(Admit *a, EngineRequest *r)
{
	const FeatureLimit *l = a->d->window;
	int64		timeout;
	int64		left;
	int64		wait;
	TimestampTz now = GetCurrentTimestamp();

	if (l == NULL || l->action != ACTION_QUEUE)
		return false;
	timeout = l->queue_timeout > 0 ? l->queue_timeout : QUEUE_TIMEOUT_DEFAULT;
	if (a->queue_slot < 0)
	{
		int			slot = QueueSlot(a->tenant_id, l->limit_id, l->subject_id);

		if (!QueueEnter(slot, l->queue_depth > 0 ? l->queue_depth : QUEUE_DEPTH_DEFAULT))
			return false;
		a->queue_slot = slot;
		a->queue_deadline = now + timeout;
		a->action = "queue";
	}
	left = a->queue_deadline - now;
	if (left <= 0)
		return false;
	/* a rate limit says when; a concurrency slot frees when someone releases */
	if (l->kind == LIMIT_RATE && a->d->has_retry)
		wait = (int64) (a->d->retry_after * USECS_PER_SEC) + 1;
	else
		wait = QUEUE_POLL;
	if (wait > left)
		return false;
	UnlockRequestLeases(r);
	QueueWait(wait);
	/* decide again at the time it is now */
	a->at += GetCurrentTimestamp() - now;
	return true;
}

/* The decision loop of admit: downgrades and queue waits, then the decision */
static void
AdmitDecide(Admit *a, EngineRequest *r)
{
	InternalContext ctx;

	for (int downgrades = 0;;)
	{
		bool		downgrade;

		BuildAdmit(a, r, true);
		a->d = EngineConsume(r);
		DecidingFeature(a->d);
		if (!a->d->allowed && QueueForRoom(a, r))
			continue;
		downgrade = !a->d->allowed && a->d->window != NULL &&
			a->d->window->action == ACTION_DOWNGRADE && a->downgrade_to != NULL &&
			downgrades < MAX_DOWNGRADES;
		if (downgrade)
		{
			const char *next = a->downgrade_to;

			SPI_connect();
			BeginInternal(&ctx, true);
			downgrade = ModelAllowed(a, next);
			if (downgrade)
				PriceModel(a, next);
			EndInternal(&ctx);
			SPI_finish();
		}
		if (!downgrade)
			break;
		downgrades++;
		a->action = "downgrade";
	}
}

/* A reservation as read and locked */
typedef struct Reservation
{
	const char *tenant_id;
	Datum		id;
	char	   *subject_id;
	Datum		path;
	char	   *model;
	char	   *state;
	TimestampTz reserved_at;
	Numeric		est_tokens;
	Numeric		est_cost;
	Numeric		est_input;
	Numeric		est_output;
	Numeric		input_tokens;	/* settled: the recorded ones */
	Numeric		output_tokens;
	Numeric		cached_tokens;
	Numeric		cost;
	char	   *lease_id;
} Reservation;

static Numeric
ResultNumeric(int col, bool *isnull)
{
	Datum		d = ResultDatum(0, col, isnull);

	return *isnull ? NULL : DatumGetNumeric(d);
}

/* Lock a reservation's row and read it (SPI connected, as the ledger owner) */
static void
LockReservation(Reservation *res)
{
	Datum		values[2];
	bool		isnull;
	char		buf[64];

	values[0] = CStringGetTextDatum(res->tenant_id);
	values[1] = res->id;
	RunQuery(&lock_query, values, NULL, false, 1);
	if (SPI_processed == 0)
	{
		strlcpy(buf, UuidText(res->id), sizeof(buf));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("unknown reservation %s of tenant \"%s\"", buf, res->tenant_id),
				 errhint("A reservation id is what admit() returned for this tenant.")));
	}
	res->subject_id = ResultText(0, 1, &isnull);
	res->path = ResultDatum(0, 2, &isnull);
	res->model = ResultText(0, 3, &isnull);
	res->state = ResultText(0, 4, &isnull);
	res->reserved_at = DatumGetTimestampTz(ResultDatum(0, 5, &isnull));
	res->est_tokens = ResultNumeric(6, &isnull);
	res->est_cost = ResultNumeric(7, &isnull);
	res->input_tokens = ResultNumeric(8, &isnull);
	res->output_tokens = ResultNumeric(9, &isnull);
	res->cached_tokens = ResultNumeric(10, &isnull);
	res->cost = ResultNumeric(11, &isnull);
	res->lease_id = ResultText(0, 12, &isnull);
	res->est_input = ResultNumeric(13, &isnull);
	res->est_output = ResultNumeric(14, &isnull);
}

/*
 * Count and write a delta of one feature at the reservation's time, at the
 * tenant and every subject of its path: charged past any limit, as
 * usage_record is (the request happened).  Key locks tenant first, as the
 * engine takes them.
 */
static void
WriteDelta(const Reservation *res, const char *feature_key, Numeric delta, const char *kind)
{
	Amount		amount = NumericAmount(delta, "the settled amount");
	Datum	   *elems;
	bool	   *elnulls;
	int			n;
	Datum		attrs;
	char	   *id;

	if (amount == 0)
		return;
	CountLedgerRow(res->tenant_id, NULL, feature_key, res->reserved_at, amount, false);
	deconstruct_array(DatumGetArrayTypeP(res->path), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elnulls, &n);
	for (int i = n - 1; i >= 0; i--)
		if (!elnulls[i])
			CountLedgerRow(res->tenant_id, TextDatumGetCString(elems[i]), feature_key,
						   res->reserved_at, amount, false);
	id = UuidText(res->id);
	attrs = ReservationAttributes(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")), id,
								  res->model);
	(void) InsertUsageEvent(res->tenant_id, feature_key, delta, res->reserved_at, kind, NULL,
							attrs, res->subject_id, res->path);
}

static Numeric
Minus(Numeric a, Numeric b)
{
	return DatumGetNumeric(DirectFunctionCall2(numeric_sub, NumericGetDatum(a), NumericGetDatum(b)));
}

static bool
NumericEq(Numeric a, Numeric b)
{
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a), NumericGetDatum(b)));
}

/* Set a reservation's state (and real amounts when settled) */
static void
CloseReservation(const Reservation *res, const char *state, Numeric in, Numeric out,
				 Numeric cached, Numeric cost)
{
	Datum		values[7];
	char		nulls[7];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(res->tenant_id);
	values[1] = res->id;
	values[2] = CStringGetTextDatum(state);
	values[3] = in ? NumericGetDatum(in) : (Datum) 0;
	values[4] = out ? NumericGetDatum(out) : (Datum) 0;
	values[5] = cached ? NumericGetDatum(cached) : (Datum) 0;
	values[6] = cost ? NumericGetDatum(cost) : (Datum) 0;
	nulls[3] = in ? ' ' : 'n';
	nulls[4] = out ? ' ' : 'n';
	nulls[5] = cached ? ' ' : 'n';
	nulls[6] = cost ? ' ' : 'n';
	RunQuery(&close_query, values, nulls, false, 0);
}

/* Give back an open reservation's estimate: cancel and expiry (SPI connected) */
static void
ReleaseReservation(const Reservation *res, const char *state)
{
	Numeric		zero = int64_to_numeric(0);

	WriteDelta(res, TOKENS_FEATURE, Minus(zero, res->est_tokens), "release");
	WriteDelta(res, COST_FEATURE, Minus(zero, res->est_cost), "release");
	CloseReservation(res, state, NULL, NULL, NULL, NULL);
	if (res->lease_id)
		(void) ReleaseLease(res->tenant_id, UuidDatum(res->lease_id),
							GetCurrentTransactionStartTimestamp());
}

/*
 * Alerts a settle may have crossed: a real cost above the estimate is
 * charged past the limits, so the thresholds are looked at again, with the
 * usage as it is now.  Nothing here refuses: a lapsed subscription or a
 * deleted subject only means no alerts.
 */
static void
SettleAlerts(const char *tenant_id, const char *subject_id, TimestampTz at)
{
	Admit	   *a = palloc0(sizeof(Admit));
	EngineRequest req;			/* on the stack: a palloc this size would be a malloc */

	a->tenant_id = tenant_id;
	a->subject_id = subject_id;
	a->at = at;
	GetPolicy(tenant_id, TOKENS_FEATURE, &a->tokens_policy);
	GetPolicy(tenant_id, COST_FEATURE, &a->cost_policy);
	if (!a->tokens_policy.feature_exists || !a->cost_policy.feature_exists)
		return;
	GetSubjectPolicy(tenant_id, subject_id, TOKENS_FEATURE, a->tokens_policy.plan_code,
					 &a->tokens_sp);
	GetSubjectPolicy(tenant_id, subject_id, COST_FEATURE, a->tokens_policy.plan_code,
					 &a->cost_sp);
	if (!a->tokens_sp.exists)
		return;
	BuildAdmit(a, &req, false);
	(void) EngineCheck(&req);
	(void) FireAlerts(tenant_id, req.limits, req.nlimits, at, true);
}

PG_FUNCTION_INFO_V1(usage_guard_settle);
/* settle(tenant_id, reservation_id, input_tokens, output_tokens, cached_input_tokens) */
Datum
usage_guard_settle(PG_FUNCTION_ARGS)
{
	Reservation res;
	Numeric		in;
	Numeric		out;
	Numeric		cached;
	Numeric		cost;
	Numeric		tokens;
	bool		settled = true;
	bool		charged_more = false;
	bool		isnull;
	Datum		values[SETTLEMENT_COLUMNS];
	bool		nulls[SETTLEMENT_COLUMNS];
	Datum		args[5];
	TupleDesc	tupdesc;
	InternalContext ctx;
	HeapTuple	tuple;
	char	   *subject_id;
	MemoryContext outer = CurrentMemoryContext;

	memset(&res, 0, sizeof(res));
	res.tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	res.id = RequiredUuid(fcinfo, 1, "reservation_id");
	in = Tokens(fcinfo, 2, "input_tokens");
	out = Tokens(fcinfo, 3, "output_tokens");
	cached = Tokens(fcinfo, 4, "cached_input_tokens");
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(cached), NumericGetDatum(in))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cached_input_tokens cannot exceed input_tokens")));
	tupdesc = ResultDesc(fcinfo, SETTLEMENT_COLUMNS);
	RequireWritable("settle()");
	RequireTenantScope(res.tenant_id, TOKENS_FEATURE, int64_to_numeric(0),
					   GetCurrentTransactionStartTimestamp(), "settle", NULL,
					   DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")), true);
	tokens = DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(in),
												 NumericGetDatum(out)));

	SPI_connect();
	BeginInternal(&ctx, true);
	LockReservation(&res);
	if (strcmp(res.state, "cancelled") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reservation %s was cancelled", UuidText(res.id)),
				 errdetail("A cancelled reservation gave its estimate back; it cannot be settled."),
				 errhint("Admit the request again, or do not cancel a request that ran.")));
	if (strcmp(res.state, "settled") == 0)
	{
		if (!NumericEq(res.input_tokens, in) || !NumericEq(res.output_tokens, out) ||
			!NumericEq(res.cached_tokens, cached))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("reservation %s is already settled with other token counts", UuidText(res.id)),
					 errdetail("Settled with %s input, %s output and %s cached input tokens.",
							   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(res.input_tokens))),
							   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(res.output_tokens))),
							   DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(res.cached_tokens))))));
		settled = false;
		cost = res.cost;
	}
	else
	{
		/* open: the estimate is held and replaced; expired: it was given back */
		bool		held = (strcmp(res.state, "open") == 0);

		args[0] = CStringGetTextDatum(res.model);
		args[1] = NumericGetDatum(in);
		args[2] = NumericGetDatum(out);
		args[3] = NumericGetDatum(cached);
		args[4] = TimestampTzGetDatum(res.reserved_at);
		/* a reservation's rows are read before the next query reuses the result */
		res.path = datumCopy(res.path, false, -1);
		res.est_tokens = DatumGetNumericCopy(NumericGetDatum(res.est_tokens));
		res.est_cost = DatumGetNumericCopy(NumericGetDatum(res.est_cost));
		RunQuery(&cost_query, args, NULL, true, 0);
		cost = DatumGetNumericCopy(ResultDatum(0, 1, &isnull));
		EndInternal(&ctx);
		WriteDelta(&res, TOKENS_FEATURE,
				   held ? Minus(tokens, res.est_tokens) : tokens, "settle");
		WriteDelta(&res, COST_FEATURE, held ? Minus(cost, res.est_cost) : cost, "settle");
		BeginInternal(&ctx, true);
		CloseReservation(&res, "settled", in, out, cached, cost);
		if (held && res.lease_id)
			(void) ReleaseLease(res.tenant_id, UuidDatum(res.lease_id),
								GetCurrentTransactionStartTimestamp());
		charged_more = DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(cost),
														 NumericGetDatum(res.est_cost))) > 0 ||
			DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(tokens),
											  NumericGetDatum(res.est_tokens))) > 0 || !held;
	}

	MemoryContextSwitchTo(outer);
	memset(nulls, false, sizeof(nulls));
	values[0] = res.id;
	values[1] = CStringGetTextDatum("settled");
	values[2] = BoolGetDatum(settled);
	values[3] = CStringGetTextDatum(res.model);
	values[4] = NumericGetDatum(in);
	values[5] = NumericGetDatum(out);
	values[6] = NumericGetDatum(cached);
	values[7] = NumericGetDatum(cost);
	values[8] = NumericGetDatum(res.est_tokens);
	values[9] = NumericGetDatum(res.est_cost);
	values[10] = NumericGetDatum(Minus(cost, res.est_cost));
	tuple = heap_form_tuple(tupdesc, values, nulls);
	subject_id = pstrdup(res.subject_id);
	EndInternal(&ctx);
	SPI_finish();
	if (charged_more)
		SettleAlerts(res.tenant_id, subject_id, res.reserved_at);
	MetricsCountReservation(settled ? "settled" : "settle_repeated", 1);
	return HeapTupleGetDatum(tuple);
}

PG_FUNCTION_INFO_V1(usage_guard_cancel);
/* cancel(tenant_id, reservation_id): true if it was open */
Datum
usage_guard_cancel(PG_FUNCTION_ARGS)
{
	Reservation res;
	InternalContext ctx;
	bool		was_open;

	memset(&res, 0, sizeof(res));
	res.tenant_id = RequiredText(fcinfo, 0, "tenant_id");
	res.id = RequiredUuid(fcinfo, 1, "reservation_id");
	RequireWritable("cancel()");
	RequireTenantScope(res.tenant_id, TOKENS_FEATURE, int64_to_numeric(0),
					   GetCurrentTransactionStartTimestamp(), "release", NULL,
					   DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")), true);
	SPI_connect();
	BeginInternal(&ctx, true);
	LockReservation(&res);
	if (strcmp(res.state, "settled") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("reservation %s is settled", UuidText(res.id)),
				 errdetail("Its real usage is recorded; it cannot be given back."),
				 errhint("Record a correction as a ledger row of kind 'adjustment'.")));
	was_open = (strcmp(res.state, "open") == 0);
	if (was_open)
		ReleaseReservation(&res, "cancelled");
	EndInternal(&ctx);
	SPI_finish();
	MetricsCountReservation("cancelled", was_open ? 1 : 0);
	PG_RETURN_BOOL(was_open);
}

PG_FUNCTION_INFO_V1(usage_guard_expire_reservations);
/* expire_reservations(at): give back open reservations whose ttl ended */
Datum
usage_guard_expire_reservations(PG_FUNCTION_ARGS)
{
	TimestampTz at = RequiredTime(fcinfo, 0, "at");
	InternalContext ctx;
	int64		n;
	int64		released = 0;
	bool		distributed;
	char	  **tenants;
	Datum	   *ids;

	RequireWritable("expire_reservations()");
	distributed = RelationIsDistributed(LedgerRelid());
	/* the coordinator holds no tenant: it has every worker expire its own */
	if (distributed && CitusIsCoordinator())
		PG_RETURN_INT64(ExpireReservationsOnWorkers(at));
	SPI_connect();
	BeginInternal(&ctx, true);
	{
		Datum		values[1] = {TimestampTzGetDatum(at)};

		RunQuery(distributed ? &expired_distributed_query : &expired_query, values, NULL, false, 0);
	}
	n = SPI_processed;
	tenants = palloc(sizeof(char *) * Max(n, 1));
	ids = palloc(sizeof(Datum) * Max(n, 1));
	for (int64 i = 0; i < n; i++)
	{
		bool		isnull;

		tenants[i] = ResultText(i, 1, &isnull);
		ids[i] = datumCopy(ResultDatum(i, 2, &isnull), false, UUID_LEN);
	}
	for (int64 i = 0; i < n; i++)
	{
		Reservation res;

		/*
		 * An estimate is given back in the counters of the tenant's node: on
		 * a distributed ledger each node expires its own tenants' only
		 */
		if (distributed && !TenantCountedHere(tenants[i]))
			continue;
		memset(&res, 0, sizeof(res));
		res.tenant_id = tenants[i];
		res.id = ids[i];
		LockReservation(&res);
		if (strcmp(res.state, "open") == 0)
		{
			ReleaseReservation(&res, "expired");
			released++;
		}
	}
	EndInternal(&ctx);
	SPI_finish();
	MetricsCountReservation("expired", released);
	PG_RETURN_INT64(released);
}

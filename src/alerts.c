/*
 * alerts.c
 *		Alerts at a limit's thresholds (subject_limits.alert_at): after an
 *		allowed request, every threshold its usage reached is written to
 *		usage_guard.alerts with INSERT ... ON CONFLICT DO NOTHING and, when
 *		the row is new, sent as NOTIFY usage_guard_alerts.  The unique key
 *		(tenant, limit, subject, window, threshold) makes an alert fire once
 *		even when concurrent requests reach it together: the second waits
 *		for the first's transaction and inserts only if it rolled back.  The
 *		NOTIFY is delivered when the transaction commits, never before.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "query.h"
#include "usage_guard.h"

/*
 * Alerts this backend saw already in the table: no insert is tried for
 * them again.  Only conflicts are remembered (an alert this backend inserted
 * may still roll back), and all is forgotten when a (sub)transaction aborts:
 * the conflict may have been with this transaction's own row.  Keyed by the
 * alerts table too, so a re-created extension starts afresh.  Bounded:
 * emptied when full.
 */
typedef struct SeenAlert
{
	Oid			alerts;
	int64		limit_id;
	TimestampTz window_start;
	Amount		threshold;
	uint64		who;			/* hash of tenant and subject */
} SeenAlert;

#define SEEN_ALERTS_MAX 10000

static HTAB *seen_alerts = NULL;
static bool callbacks_registered = false;

static void
ForgetSeen(void)
{
	if (seen_alerts != NULL)
	{
		hash_destroy(seen_alerts);
		seen_alerts = NULL;
	}
}

static void
AlertsXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		ForgetSeen();
}

static void
AlertsSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		ForgetSeen();
}

static CachedQuery alert_query = {
	"WITH fired AS ("
	"  INSERT INTO usage_guard.alerts (tenant_id, subject_id, level, limit_id, feature_key,"
	"                                  threshold, window_start, window_end, usage, limit_value, action)"
	"  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
	"  ON CONFLICT ON CONSTRAINT alerts_once DO NOTHING"
	"  RETURNING *)"
	" SELECT pg_catalog.pg_notify('usage_guard_alerts', pg_catalog.row_to_json(fired)::text) FROM fired",
	11, {TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, NUMERICOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		NUMERICOID, NUMERICOID, TEXTOID}
};

static const char *const action_names[] = {
	[ACTION_BLOCK] = "block",
	[ACTION_ALERT] = "alert",
	[ACTION_DOWNGRADE] = "downgrade",
	[ACTION_QUEUE] = "queue",
};

const char *
LimitActionName(LimitAction action)
{
	return action_names[action];
}

static bool
SeenBefore(SeenAlert *key, bool remember)
{
	bool		found;

	if (!callbacks_registered)
	{
		RegisterXactCallback(AlertsXactCallback, NULL);
		RegisterSubXactCallback(AlertsSubXactCallback, NULL);
		callbacks_registered = true;
	}
	if (seen_alerts == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(SeenAlert);
		info.entrysize = sizeof(SeenAlert);
		info.hcxt = TopMemoryContext;
		seen_alerts = hash_create("usage_guard alerts seen", 256, &info,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	if (!remember)
		return hash_search(seen_alerts, key, HASH_FIND, &found) != NULL;
	if (hash_get_num_entries(seen_alerts) >= SEEN_ALERTS_MAX)
	{
		hash_destroy(seen_alerts);
		seen_alerts = NULL;
		return SeenBefore(key, true);
	}
	(void) hash_search(seen_alerts, key, HASH_ENTER, &found);
	return found;
}

/* The window an alert belongs to: a calendar window, or a rolling limit's slot */
static void
AlertWindow(const FeatureLimit *l, TimestampTz at, TimestampTz *start, TimestampTz *end)
{
	if (l->length > 0)
	{
		int64		slot = at / l->length - (at % l->length < 0 ? 1 : 0);

		*start = slot * l->length;
		*end = *start + l->length;
		return;
	}
	*start = l->window_start;
	*end = l->window_end;
}

/* a x fraction, both Amounts, rounded up: the usage at which an alert fires */
static Amount
ThresholdAmount(Amount limit, Amount fraction)
{
	int128		p = (int128) limit * fraction;

	return (Amount) ((p + AMOUNT_ONE - 1) / AMOUNT_ONE);
}

/*
 * Fire the alerts an allowed request reached: every quota with thresholds
 * whose usage after the request is at or past threshold x limit
 * (usage_is_after: the usage read already includes it, as after a settle).
 * Returns how many alerts this call inserted.
 */
int
FireAlerts(const char *tenant_id, const FeatureLimit *limits, int nlimits, TimestampTz at,
		   bool usage_is_after)
{
	int			fired = 0;
	bool		connected = false;
	Oid			alerts = InvalidOid;	/* looked up once, when needed */
	InternalContext ctx;

	for (int i = 0; i < nlimits; i++)
	{
		const FeatureLimit *l = &limits[i];
		Amount		limit;
		Amount		after;
		TimestampTz start,
					end;

		if (l->kind != LIMIT_QUOTA || l->nthresholds == 0 || l->limit_id <= 0 ||
			(l->requested <= 0 && !usage_is_after))
			continue;
		if (!l->limits.has_hard && !l->limits.has_soft)
			continue;
		limit = l->limits.has_hard ? l->limits.hard : l->limits.soft;
		after = l->usage + (usage_is_after ? 0 : l->requested);
		AlertWindow(l, at, &start, &end);
		for (int k = 0; k < l->nthresholds; k++)
		{
			SeenAlert	key;
			const char *subject = l->subject_id ? l->subject_id : "";
			Datum		values[11];

			if (after < ThresholdAmount(limit, l->thresholds[k]))
				continue;
			memset(&key, 0, sizeof(key));
			if (!OidIsValid(alerts))
				alerts = UsageGuardRelid("alerts");
			key.alerts = alerts;
			key.limit_id = l->limit_id;
			key.window_start = start;
			key.threshold = l->thresholds[k];
			key.who = hash_bytes_extended((const unsigned char *) tenant_id, strlen(tenant_id), 0) ^
				hash_bytes_extended((const unsigned char *) subject, strlen(subject), 1);
			if (SeenBefore(&key, false))
				continue;
			if (!connected)
			{
				SPI_connect();
				BeginInternal(&ctx, true);
				connected = true;
			}
			values[0] = CStringGetTextDatum(tenant_id);
			values[1] = CStringGetTextDatum(subject);
			values[2] = CStringGetTextDatum(l->level);
			values[3] = Int64GetDatum(l->limit_id);
			values[4] = CStringGetTextDatum(l->unit ? l->unit : "");
			values[5] = NumericGetDatum(AmountToNumeric(l->thresholds[k]));
			values[6] = TimestampTzGetDatum(start);
			values[7] = TimestampTzGetDatum(end);
			values[8] = NumericGetDatum(AmountToNumeric(after));
			values[9] = NumericGetDatum(AmountToNumeric(limit));
			values[10] = CStringGetTextDatum(LimitActionName(l->action));
			RunQuery(&alert_query, values, NULL, false, 0);
			if (SPI_processed > 0)
				fired++;
			else
				(void) SeenBefore(&key, true);
		}
	}
	if (connected)
	{
		EndInternal(&ctx);
		SPI_finish();
	}
	return fired;
}

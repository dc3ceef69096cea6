/*
 * security.c
 *		Who usage_guard's own reads and writes run as, and the caller's level.
 *
 * The functions are the privilege boundary (README, "Security"): a caller
 * needs EXECUTE on a function, never a table privilege.  Whatever usage_guard
 * reads or writes on the caller's behalf (policy loads, window sums,
 * idempotency lookups, ledger rows) runs as the owner of the ledger, with
 * SECURITY_RESTRICTED_OPERATION and a pinned search_path, as REFRESH
 * MATERIALIZED VIEW and autovacuum do: the caller's table privileges,
 * row-level security and search_path cannot change what is counted.  Errors
 * need no PG_FINALLY: (sub)transaction abort restores the user id, the
 * security context and the GUC nest level, as for REFRESH.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/timestamp.h"

#include "usage_guard.h"

#define ADMIN_ROLE "usage_guard_admin"

/* Switch to the ledger's owner; with search_path pinned when SQL will run */
void
BeginInternal(InternalContext *ctx, bool runs_sql)
{
	Oid			owner = LedgerOwner();

	GetUserIdAndSecContext(&ctx->saved_user, &ctx->saved_sec);
	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("usage_guard is not installed in this database"),
				 errhint("CREATE EXTENSION usage_guard;")));
	SetUserIdAndSecContext(owner, ctx->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->guc_level = -1;
	if (runs_sql)
	{
		ctx->guc_level = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	}
}

/* Back to the caller */
void
EndInternal(InternalContext *ctx)
{
	if (ctx->guc_level >= 0)
		AtEOXact_GUC(true, ctx->guc_level);
	SetUserIdAndSecContext(ctx->saved_user, ctx->saved_sec);
}

/*
 * Window sums must see every row.  The owner of an extension's table is the
 * superuser who created it, whom row-level security never applies to; an
 * operator who hands the ledger to a role that FORCE ROW LEVEL SECURITY
 * binds would make counters wrong, so that is refused, not obeyed.  Called
 * inside BeginInternal.
 */
void
RequireWholeLedgerVisible(Oid ledger)
{
	if (check_enable_rls(ledger, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("row-level security hides ledger rows from its owner"),
				 errdetail("usage_guard sums usage_guard.usage_events as its owner, and FORCE ROW LEVEL SECURITY applies to that role."),
				 errhint("ALTER TABLE usage_guard.usage_events NO FORCE ROW LEVEL SECURITY, or give its owner BYPASSRLS.")));
}

/* Is the calling role an admin of usage_guard (member of usage_guard_admin)? */
bool
CallerIsAdmin(void)
{
	Oid			admin;

	if (superuser())
		return true;
	admin = get_role_oid(ADMIN_ROLE, true);
	return OidIsValid(admin) && has_privs_of_role(GetUserId(), admin);
}

/*
 * A consume charges the windows of `at`.  Charging another time's windows
 * (yesterday's, with room left) would let an application pass today's limit,
 * so only admins (backfills, tests) may pass a time other than now().
 */
void
RequireNowUnlessAdmin(TimestampTz at, const char *function)
{
	if (at == GetCurrentTransactionStartTimestamp() || CallerIsAdmin())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to call %s with a time other than now()", function),
			 errdetail("at is %s; the transaction's time is %s.",
					   timestamptz_to_str(at),
					   timestamptz_to_str(GetCurrentTransactionStartTimestamp())),
			 errhint("Leave at at its default. Only members of %s may charge other windows.",
					 ADMIN_ROLE)));
}

/*
 * Usage is written on the primary only, and never in a read-only
 * transaction: the direct ledger insert bypasses the executor's own check.
 */
void
RequireWritable(const char *function)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot execute %s during recovery", function),
				 errdetail("Usage is recorded on the primary only."),
				 errhint("usage_check works on a standby: it answers from the replayed ledger.")));
	PreventCommandIfReadOnly(function);
}

/*
 * Row-level security on the ledger as tenant scope.
 *
 * A role that the ledger's row-level security applies to may act only for
 * the tenants those policies let it see (SELECT, USING) and, when it
 * writes, insert (INSERT, WITH CHECK): the ledger's own policies decide,
 * evaluated as the caller on the row the call would write, as PostgreSQL
 * evaluates them for the table.  Sums still run as the owner and count
 * every row: a policy narrows who may ask, never what is counted.
 *
 * The applicable expression is built once per cache generation (CREATE,
 * ALTER and DROP POLICY invalidate the ledger's relcache) from pg_policy;
 * whether a policy's roles include the caller is part of the expression
 * (pg_has_role), so one plan serves every role.
 */
#define SCOPE_READ	0
#define SCOPE_WRITE 1

static SPIPlanPtr scope_plans[2];
static uint64 scope_generation = 0;
static bool scope_valid = false;

/*
 * The policy expressions of the ledger, combined as PostgreSQL combines
 * them: permissive ones OR'ed (none: false), restrictive ones AND'ed, each
 * guarded by whether its roles apply to current_user.  $1: the ledger.
 */
static const char *const scope_query =
"WITH p AS ("
"  SELECT pol.polpermissive AS perm, pol.polcmd AS cmd,"
"         pg_catalog.pg_get_expr(pol.polqual, pol.polrelid) AS q,"
"         COALESCE(pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),"
"                  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid)) AS wc,"
"         CASE WHEN 0::pg_catalog.oid = ANY (pol.polroles) THEN 'true'"
"              ELSE (SELECT pg_catalog.string_agg(pg_catalog.format('pg_catalog.pg_has_role(%s::pg_catalog.oid, ''USAGE'')', r), ' OR ')"
"                      FROM pg_catalog.unnest(pol.polroles) AS r) END AS applies"
"    FROM pg_catalog.pg_policy pol WHERE pol.polrelid = $1"
"), sel AS ("
"  SELECT '(' || COALESCE(pg_catalog.string_agg('((' || applies || ') AND (' || q || '))', ' OR ')"
"                                    FILTER (WHERE perm), 'false') || ')'"
"         || COALESCE(pg_catalog.string_agg(' AND (NOT (' || applies || ') OR (' || q || '))', '')"
"                                FILTER (WHERE NOT perm), '') AS e"
"    FROM p WHERE cmd IN ('r', '*') AND q IS NOT NULL"
"), ins AS ("
"  SELECT '(' || COALESCE(pg_catalog.string_agg('((' || applies || ') AND (' || wc || '))', ' OR ')"
"                                    FILTER (WHERE perm), 'false') || ')'"
"         || COALESCE(pg_catalog.string_agg(' AND (NOT (' || applies || ') OR (' || wc || '))', '')"
"                                FILTER (WHERE NOT perm), '') AS e"
"    FROM p WHERE cmd IN ('a', '*') AND wc IS NOT NULL"
")"
"SELECT COALESCE((SELECT e FROM sel), 'false'), COALESCE((SELECT e FROM ins), 'false')";

/* The ledger's columns as a row of the call's values; others NULL */
static char *
ScopeRowSql(Oid ledger)
{
	Relation	rel = table_open(ledger, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;
	static const char *const params[][2] = {
		{"tenant_id", "$1::pg_catalog.text"},
		{"feature_key", "$2::pg_catalog.text"},
		{"occurred_at", "$3::pg_catalog.timestamptz"},
		{"amount", "$4::pg_catalog.numeric"},
		{"kind", "$5::pg_catalog.text"},
		{"idempotency_key", "$6::pg_catalog.text"},
		{"attributes", "$7::pg_catalog.jsonb"},
		{"recorded_at", "pg_catalog.now()"},
	};

	initStringInfo(&buf);
	appendStringInfoString(&buf, "SELECT ");
	for (int i = 0, n = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *value = NULL;

		if (att->attisdropped)
			continue;
		for (int k = 0; k < lengthof(params); k++)
			if (strcmp(NameStr(att->attname), params[k][0]) == 0)
				value = params[k][1];
		appendStringInfo(&buf, "%s%s AS %s", n++ > 0 ? ", " : "",
						 value ? value : psprintf("NULL::%s",
												  format_type_with_typemod(att->atttypid, att->atttypmod)),
						 quote_identifier(NameStr(att->attname)));
	}
	table_close(rel, AccessShareLock);
	return buf.data;
}

/* Prepare the read and write scope tests for the current policies */
static void
PrepareScope(Oid ledger)
{
	Oid			argtypes[7] = {TEXTOID, TEXTOID, TIMESTAMPTZOID, NUMERICOID, TEXTOID, TEXTOID, JSONBOID};
	Datum		arg = ObjectIdGetDatum(ledger);
	Oid			argtype = OIDOID;
	char	   *row = ScopeRowSql(ledger);
	char	   *sel,
			   *ins;

	for (int i = 0; i < 2; i++)
	{
		if (scope_plans[i] != NULL)
			SPI_freeplan(scope_plans[i]);
		scope_plans[i] = NULL;
	}
	if (SPI_execute_with_args(scope_query, 1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "usage_guard: could not read the ledger's policies");
	sel = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ins = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	for (int i = 0; i < 2; i++)
	{
		char	   *sql = psprintf("SELECT %s%s%s FROM (%s) AS usage_events", sel,
								   i == SCOPE_WRITE ? " AND " : "",
								   i == SCOPE_WRITE ? ins : "", row);
		SPIPlanPtr	plan = SPI_prepare(sql, 7, argtypes);

		if (plan == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("usage_guard cannot apply the row-level security policies of usage_guard.usage_events"),
					 errdetail("%s", SPI_result_code_string(SPI_result))));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "usage_guard: SPI_keepplan failed");
		scope_plans[i] = plan;
	}
}

/*
 * May the caller act for this tenant under the ledger's row-level security?
 * Raises 42501 when not.  Free when no policy applies to the caller (no
 * RLS, a superuser, BYPASSRLS, or the owner): one catalog cache lookup.
 */
void
RequireTenantScope(const char *tenant_id, const char *feature_key, Numeric amount,
				   TimestampTz at, const char *kind, const char *idempotency_key,
				   Datum attributes, bool write)
{
	Oid			ledger = LedgerRelid();
	Datum		values[7];
	char		nulls[7];		/* SPI: ' ' not null, 'n' null */
	int			guc_level;
	bool		allowed;
	bool		isnull;
	int			mode = write ? SCOPE_WRITE : SCOPE_READ;

	/* the common case costs nothing: no row security on the ledger at all */
	if (!OidIsValid(ledger) || !LedgerHasRowSecurity() ||
		check_enable_rls(ledger, InvalidOid, true) != RLS_ENABLED)
		return;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(tenant_id);
	values[1] = CStringGetTextDatum(feature_key);
	values[2] = TimestampTzGetDatum(at);
	values[3] = NumericGetDatum(amount);
	values[4] = CStringGetTextDatum(kind);
	if (idempotency_key != NULL)
		values[5] = CStringGetTextDatum(idempotency_key);
	else
		nulls[5] = 'n';
	if (attributes != (Datum) 0)
		values[6] = attributes;
	else
		nulls[6] = 'n';

	/* as the caller, as PostgreSQL evaluates policies; search_path pinned */
	guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	if (!scope_valid || scope_generation != CacheGeneration())
	{
		scope_valid = false;
		PrepareScope(ledger);
		scope_generation = CacheGeneration();
		scope_valid = true;
	}
	if (SPI_execute_plan(scope_plans[mode], values, nulls, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "usage_guard: could not evaluate the ledger's policies");
	allowed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	allowed = allowed && !isnull;
	SPI_finish();
	AtEOXact_GUC(true, guc_level);

	if (!allowed && !write)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("row-level security on usage_guard.usage_events does not let role \"%s\" see the usage of tenant \"%s\"",
						GetUserNameFromId(GetUserId(), false), tenant_id),
				 errdetail("No SELECT policy of the ledger for this role admits the tenant's row."),
				 errhint("Add a policy for the role, or give a service that acts for every tenant BYPASSRLS.")));
	if (!allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("row-level security on usage_guard.usage_events does not let role \"%s\" record this usage for tenant \"%s\"",
						GetUserNameFromId(GetUserId(), false), tenant_id),
				 errdetail("The ledger's policies for this role do not admit the row (SELECT and INSERT policies both apply)."),
				 errhint("Add a policy for the role, or give a service that acts for every tenant BYPASSRLS.")));
}

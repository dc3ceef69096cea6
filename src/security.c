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

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
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

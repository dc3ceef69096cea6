/*
 * query.c
 *		Cached SPI plans for the catalog and ledger statements.
 *
 * Each statement is prepared once per backend and kept (SPI_keepplan); the
 * plan cache replans it when the tables it reads change.  Callers must be
 * connected to SPI.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/snapmgr.h"

#include "query.h"

static void
Prepare(CachedQuery *q)
{
	if (q->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(q->sql, q->nargs, q->argtypes);

		if (plan == NULL)
			elog(ERROR, "usage_guard: SPI_prepare failed for \"%s\": %s",
				 q->sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "usage_guard: SPI_keepplan failed");
		q->plan = plan;
	}
}

/* Run a cached statement, preparing it on first use */
int
RunQuery(CachedQuery *q, Datum *values, const char *nulls, bool read_only, long count)
{
	int			rc;

	Prepare(q);
	rc = SPI_execute_plan(q->plan, values, nulls, read_only, count);
	if (rc < 0)
		elog(ERROR, "usage_guard: SPI_execute_plan failed for \"%s\": %s",
			 q->sql, SPI_result_code_string(rc));
	return rc;
}

/*
 * Run a cached read-only statement with the latest snapshot rather than the
 * transaction's: usage is a shared resource, so even a REPEATABLE READ
 * transaction must count what others committed since its snapshot.
 */
int
RunQueryLatest(CachedQuery *q, Datum *values, const char *nulls, long count)
{
	int			rc;

	Prepare(q);
	rc = SPI_execute_snapshot(q->plan, values, nulls, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, count);
	if (rc < 0)
		elog(ERROR, "usage_guard: SPI_execute_snapshot failed for \"%s\": %s",
			 q->sql, SPI_result_code_string(rc));
	return rc;
}

/* Copy a text column of the current SPI result out to the caller's context */
char *
ResultText(int row, int col, bool *isnull)
{
	char	   *s = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
	char	   *out;

	*isnull = (s == NULL);
	if (s == NULL)
		return NULL;
	out = SPI_palloc(strlen(s) + 1);
	strcpy(out, s);
	return out;
}

/* Copy a column's datum of the current SPI result out to the caller's context */
Datum
ResultDatum(int row, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
	Form_pg_attribute att = TupleDescAttr(SPI_tuptable->tupdesc, col - 1);

	if (*isnull)
		return (Datum) 0;
	return SPI_datumTransfer(d, att->attbyval, att->attlen);
}

/*
 * query.h
 *		Cached SPI statements (query.c).
 */
#ifndef USAGE_GUARD_QUERY_H
#define USAGE_GUARD_QUERY_H

#include "executor/spi.h"

#define QUERY_MAX_ARGS 16

typedef struct CachedQuery
{
	const char *sql;
	int			nargs;
	Oid			argtypes[QUERY_MAX_ARGS];
	SPIPlanPtr	plan;			/* prepared on first use, kept for the backend */
} CachedQuery;

extern int	RunQuery(CachedQuery *q, Datum *values, const char *nulls,
					 bool read_only, long count);
extern int	RunQueryLatest(CachedQuery *q, Datum *values, const char *nulls, long count);
extern char *ResultText(int row, int col, bool *isnull);
extern Datum ResultDatum(int row, int col, bool *isnull);

#endif							/* USAGE_GUARD_QUERY_H */

/*
 * usage_guard.c
 *		Module entry: _PG_init and the GUCs that shape every decision.
 *
 * Each concern lives in its own file (see usage_guard.h); this file only
 * registers configuration.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "usage_guard.h"

PG_MODULE_MAGIC;

PGDLLEXPORT void _PG_init(void);

int			usage_guard_soft_limit_mode = SOFT_LIMIT_WARN;

static const struct config_enum_entry soft_limit_mode_options[] = {
	{"warn", SOFT_LIMIT_WARN, false},
	{"block", SOFT_LIMIT_BLOCK, false},
	{NULL, 0, false}
};

/* Register GUCs */
void
_PG_init(void)
{
	DefineCustomEnumVariable("usage_guard.soft_limit_mode",
							 "What a request over a soft limit gets: warn (allowed, WARNING) or block.",
							 "Hard limits always block.",
							 &usage_guard_soft_limit_mode,
							 SOFT_LIMIT_WARN,
							 soft_limit_mode_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("usage_guard");
}

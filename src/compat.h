/*
 * compat.h
 *		The one place for differences between the PostgreSQL major versions
 *		usage_guard builds on (15, 16, 17, 18): every PG_VERSION_NUM test of
 *		the C code is in this file, and the rest of the code calls the
 *		wrappers below.
 *
 * Checked against each version's server headers:
 *	- 15 is the oldest: shmem_request_hook (miscadmin.h), InitMaterializedSRF
 *	  (funcapi.h) and MarkGUCPrefixReserved (guc.h) appeared in 15 and are
 *	  unchanged through 18.
 *	- 16: ExecInsertIndexTuples takes `bool onlySummarizing` last; fmgr.h
 *	  declares _PG_init.
 *	- 17: getIdentitySequence takes the Relation, not its OID.
 *	- int128 (Amount) needs HAVE_INT128 on every version: c.h defines it when
 *	  the compiler has a 128-bit integer (gcc and clang on 64-bit targets).
 *
 * Only macros: no includes, so every file may include it; the caller
 * includes the headers that declare the wrapped functions.
 */
#ifndef USAGE_GUARD_COMPAT_H
#define USAGE_GUARD_COMPAT_H

#include "postgres.h"

#if PG_VERSION_NUM < 150000
#error "usage_guard needs PostgreSQL 15 or later"
#endif

#ifndef HAVE_INT128
#error "usage_guard needs a compiler with a 128-bit integer type (PostgreSQL's int128)"
#endif

/* fmgr.h declares _PG_init since 16; before, each library declares it */
#if PG_VERSION_NUM < 160000
PGDLLEXPORT void _PG_init(void);
#endif

/*
 * The OID of the identity sequence of column attnum of the open relation
 * rel; an error if there is none.  17 takes the Relation, 15 and 16 its OID.
 * (catalog/dependency.h, utils/rel.h)
 */
#if PG_VERSION_NUM >= 170000
#define UgGetIdentitySequence(rel, attnum) \
	getIdentitySequence((rel), (attnum), false)
#else
#define UgGetIdentitySequence(rel, attnum) \
	getIdentitySequence(RelationGetRelid(rel), (attnum), false)
#endif

/*
 * ExecInsertIndexTuples with 15's arguments: 16 added onlySummarizing (true
 * only for a HOT update that touches summarizing indexes), false for an
 * insert.  (executor/executor.h)
 */
#if PG_VERSION_NUM >= 160000
#define UgExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiterIndexes) \
	ExecInsertIndexTuples((rri), (slot), (estate), (update), (noDupErr), (specConflict), \
						  (arbiterIndexes), false)
#else
#define UgExecInsertIndexTuples(rri, slot, estate, update, noDupErr, specConflict, arbiterIndexes) \
	ExecInsertIndexTuples((rri), (slot), (estate), (update), (noDupErr), (specConflict), \
						  (arbiterIndexes))
#endif

#endif							/* USAGE_GUARD_COMPAT_H */

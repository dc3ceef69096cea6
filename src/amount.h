/*
 * amount.h
 *		Exact fixed-point amounts (amount.c).
 */
#ifndef USAGE_GUARD_AMOUNT_H
#define USAGE_GUARD_AMOUNT_H

#include "postgres.h"

#include "utils/numeric.h"

#include "compat.h"

/* An amount in units of 1e-12: 128 bits hold any sum of accepted amounts */
typedef int128 Amount;

#define AMOUNT_SCALE_DIGITS 12
#define AMOUNT_ONE ((Amount) INT64CONST(1000000000000))

extern bool NumericToAmount(Numeric num, Amount *result);
extern Numeric AmountToNumeric(Amount a);
extern char *AmountToCString(Amount a);

#endif							/* USAGE_GUARD_AMOUNT_H */

/*
 * amount.c
 *		Conversions between numeric and Amount, the 128-bit fixed-point form
 *		(12 decimal places) the shared-memory counters and decisions use.
 *
 * Conversion goes through numeric's canonical text form: it is exact, and
 * cheaper than numeric arithmetic with its allocations.
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/fmgrprotos.h"

#include "amount.h"

/*
 * Convert a numeric to an Amount.  False when it is NaN or infinite, has
 * more than 12 decimal places, or does not fit (|x| >= 1e26).
 */
bool
NumericToAmount(Numeric num, Amount *result)
{
	char	   *s;
	char	   *p;
	bool		negative = false;
	Amount		intpart = 0;
	Amount		frac = 0;
	int			intdigits = 0;
	int			fracdigits = 0;

	if (numeric_is_nan(num) || numeric_is_inf(num))
		return false;
	s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num)));
	p = s;
	if (*p == '-')
	{
		negative = true;
		p++;
	}
	for (; *p >= '0' && *p <= '9'; p++)
	{
		/* 26 integer digits keep the product below 2^127 */
		if (intpart != 0 || *p != '0')
			intdigits++;
		if (intdigits > 26)
			return false;
		intpart = intpart * 10 + (*p - '0');
	}
	if (*p == '.')
	{
		for (p++; *p >= '0' && *p <= '9'; p++)
		{
			if (fracdigits < AMOUNT_SCALE_DIGITS)
				frac = frac * 10 + (*p - '0');
			else if (*p != '0')
				return false;	/* a 13th significant decimal */
			fracdigits++;
		}
	}
	if (*p != '\0')
		return false;
	for (int i = Min(fracdigits, AMOUNT_SCALE_DIGITS); i < AMOUNT_SCALE_DIGITS; i++)
		frac *= 10;
	pfree(s);

	*result = intpart * AMOUNT_ONE + frac;
	if (negative)
		*result = -*result;
	return true;
}

/* Decimal text of an Amount, without trailing fractional zeros */
char *
AmountToCString(Amount a)
{
	char		buf[64];
	char	   *p = buf + sizeof(buf) - 1;
	bool		negative = a < 0;
	uint128		u = negative ? -(uint128) a : (uint128) a;
	uint128		intpart = u / (uint128) AMOUNT_ONE;
	uint64		frac = (uint64) (u % (uint128) AMOUNT_ONE);
	int			fracdigits = AMOUNT_SCALE_DIGITS;

	*p = '\0';
	while (fracdigits > 0 && frac % 10 == 0)
	{
		frac /= 10;
		fracdigits--;
	}
	if (fracdigits > 0)
	{
		for (int i = 0; i < fracdigits; i++)
		{
			*--p = '0' + (int) (frac % 10);
			frac /= 10;
		}
		*--p = '.';
	}
	do
	{
		*--p = '0' + (int) (intpart % 10);
		intpart /= 10;
	} while (intpart > 0);
	if (negative)
		*--p = '-';
	return pstrdup(p);
}

/* An Amount as numeric */
Numeric
AmountToNumeric(Amount a)
{
	/* whole numbers (token counts, messages) skip the text round trip */
	if (a % AMOUNT_ONE == 0 && a / AMOUNT_ONE <= PG_INT64_MAX && a / AMOUNT_ONE >= PG_INT64_MIN)
		return int64_to_numeric((int64) (a / AMOUNT_ONE));
	return DatumGetNumeric(DirectFunctionCall3(numeric_in,
											   CStringGetDatum(AmountToCString(a)),
											   ObjectIdGetDatum(InvalidOid),
											   Int32GetDatum(-1)));
}

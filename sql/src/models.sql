-- usage_guard models: the LLM models a gateway calls and their prices
-- (since 0.7.0).
--
-- Owns models (provider, and the model a limit may downgrade to),
-- model_prices (prices per 1M tokens, effective from a time: a price change
-- applies to usage after it) and model_cost, the exact cost of a request.
--
-- Assembled by the Makefile into sql/usage_guard--<version>.sql after
-- gateway.sql: every file uses only objects of the files before it.

--------------------------------------------------------------------------
-- Models and prices
--------------------------------------------------------------------------

CREATE TABLE usage_guard.models (
    model        text NOT NULL,
    provider     text NOT NULL,
    downgrade_to text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_pkey PRIMARY KEY (model),
    CONSTRAINT models_downgrade_fkey FOREIGN KEY (downgrade_to)
        REFERENCES usage_guard.models (model) ON UPDATE CASCADE,
    CONSTRAINT models_names_check CHECK (
        octet_length(model) BETWEEN 1 AND 255 AND octet_length(provider) BETWEEN 1 AND 255),
    CONSTRAINT models_not_own_downgrade CHECK (downgrade_to IS DISTINCT FROM model)
);
COMMENT ON TABLE usage_guard.models IS
    'LLM models a gateway calls: provider, and the cheaper model a limit with action downgrade switches to';

-- Prices in USD per 1,000,000 tokens (per 1M: today's list prices have at
-- most a few decimals there; per 1K they would need more).  A row applies
-- from effective_from until the next row of the model; usage is priced at
-- the row in force at its time, so history keeps the price it was charged.
CREATE TABLE usage_guard.model_prices (
    model                    text NOT NULL,
    effective_from           timestamptz NOT NULL,
    input_per_million        numeric NOT NULL,
    output_per_million       numeric NOT NULL,
    cached_input_per_million numeric,
    CONSTRAINT model_prices_pkey PRIMARY KEY (model, effective_from),
    CONSTRAINT model_prices_model_fkey FOREIGN KEY (model)
        REFERENCES usage_guard.models (model) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT model_prices_values_check CHECK (
        input_per_million >= 0 AND input_per_million <= 1e6
        AND output_per_million >= 0 AND output_per_million <= 1e6
        AND (cached_input_per_million IS NULL
             OR (cached_input_per_million >= 0 AND cached_input_per_million <= 1e6))
        -- a million tokens' price to 6 places keeps a token's cost to 12, exact in the counters
        AND scale(input_per_million) <= 6 AND scale(output_per_million) <= 6
        AND coalesce(scale(cached_input_per_million), 0) <= 6
        AND isfinite(effective_from))
);
COMMENT ON TABLE usage_guard.model_prices IS
    'Model prices in USD per 1M tokens (input, output, cached input; NULL cached = the input price), each in force from effective_from until the model''s next row';

SELECT pg_catalog.pg_extension_config_dump('usage_guard.models', '');
SELECT pg_catalog.pg_extension_config_dump('usage_guard.model_prices', '');

-- The exact cost of a request in USD: input tokens (of which cached_input
-- at the cached price) and output tokens at the model's prices in force at
-- `at`.  An unknown model, or one without a price at `at`, is an error
-- (42704): a gateway must not serve a model nobody priced.  SECURITY
-- DEFINER: the application level prices requests without reading the
-- price table.
CREATE FUNCTION usage_guard.model_cost(
    model               text,
    input_tokens        numeric,
    output_tokens       numeric,
    cached_input_tokens numeric DEFAULT 0,
    at                  timestamptz DEFAULT now())
RETURNS numeric
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p_model  ALIAS FOR $1;
    p_in     ALIAS FOR $2;
    p_out    ALIAS FOR $3;
    p_cached ALIAS FOR $4;
    p_at     ALIAS FOR $5;
    price    record;
BEGIN
    IF p_model IS NULL OR p_in IS NULL OR p_out IS NULL OR p_cached IS NULL OR p_at IS NULL THEN
        RAISE EXCEPTION 'model_cost arguments must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_in = 'NaN' OR p_out = 'NaN' OR p_cached = 'NaN'
       OR p_in < 0 OR p_out < 0 OR p_cached < 0
       OR p_in > 1e12 OR p_out > 1e12
       OR p_in <> trunc(p_in) OR p_out <> trunc(p_out) OR p_cached <> trunc(p_cached) THEN
        RAISE EXCEPTION 'token counts must be whole numbers from 0 to 1e12'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('input_tokens %s, output_tokens %s, cached_input_tokens %s', p_in, p_out, p_cached);
    END IF;
    IF p_cached > p_in THEN
        RAISE EXCEPTION 'cached_input_tokens (%) cannot exceed input_tokens (%)', p_cached, p_in
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT mp.input_per_million, mp.output_per_million,
           coalesce(mp.cached_input_per_million, mp.input_per_million) AS cached_per_million
      INTO price
      FROM usage_guard.model_prices mp
     WHERE mp.model = p_model AND mp.effective_from <= p_at
     ORDER BY mp.effective_from DESC
     LIMIT 1;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM usage_guard.models m WHERE m.model = p_model) THEN
            RAISE EXCEPTION 'unknown model "%"', p_model
                USING ERRCODE = 'undefined_object',
                      HINT = 'Models are rows of usage_guard.models, their prices rows of usage_guard.model_prices.';
        END IF;
        RAISE EXCEPTION 'model "%" has no price at %', p_model, p_at
            USING ERRCODE = 'undefined_object',
                  HINT = 'Add a row to usage_guard.model_prices with an effective_from at or before that time.';
    END IF;
    RETURN trim_scale(((p_in - p_cached) * price.input_per_million
                       + p_cached * price.cached_per_million
                       + p_out * price.output_per_million) / 1000000);
END
$$;
COMMENT ON FUNCTION usage_guard.model_cost(text, numeric, numeric, numeric, timestamptz) IS
    'Exact cost in USD of input tokens (cached_input_tokens of them at the cached price) and output tokens at the model''s prices in force at `at`; an unknown or unpriced model is an error (42704)';

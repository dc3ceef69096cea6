-- Models and prices: exact cost from tokens, prices in force at a time,
-- history keeps its price, bad input changes nothing.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

INSERT INTO usage_guard.models (model, provider) VALUES
    ('gpt-4', 'openai'), ('gpt-3.5-turbo', 'openai'),
    ('claude-sonnet', 'anthropic'), ('claude-haiku', 'anthropic');
UPDATE usage_guard.models SET downgrade_to = 'gpt-3.5-turbo' WHERE model = 'gpt-4';
-- prices in USD per 1M tokens
INSERT INTO usage_guard.model_prices (model, effective_from, input_per_million, output_per_million, cached_input_per_million) VALUES
    ('gpt-4',         '2025-01-01 00:00+00', 30,   60,  NULL),
    ('gpt-3.5-turbo', '2025-01-01 00:00+00', 0.5,  1.5, NULL),
    ('claude-sonnet', '2025-01-01 00:00+00', 3,    15,  0.3),
    ('claude-haiku',  '2025-01-01 00:00+00', 0.8,  4,   0.08),
    -- a price cut from November: usage after it is priced lower, before it not
    ('claude-sonnet', '2025-11-01 00:00+00', 2.5,  12.5, 0.25);

-- 1200 input and 350 output tokens of gpt-4: 0.036 + 0.021
SELECT usage_guard.model_cost('gpt-4', 1200, 350, at => '2025-11-18 12:00+00');
-- exact: 1 token of gpt-3.5-turbo input
SELECT usage_guard.model_cost('gpt-3.5-turbo', 1, 0, at => '2025-11-18 12:00+00');
-- cached input at its own price; NULL cached price = the input price
SELECT usage_guard.model_cost('claude-sonnet', 10000, 1000, 8000, '2025-10-31 23:59:59+00') AS october,
       usage_guard.model_cost('claude-sonnet', 10000, 1000, 8000, '2025-11-01 00:00+00') AS november,
       usage_guard.model_cost('gpt-4', 1000, 0, 1000, '2025-11-18 12:00+00') AS gpt4_cached;

-- bad input: a clear error each
SELECT usage_guard.model_cost('gpt-5', 1, 1, at => '2025-11-18 12:00+00');
SELECT usage_guard.model_cost('gpt-4', 1, 1, at => '2024-12-31 23:59+00');
SELECT usage_guard.model_cost('gpt-4', -1, 1);
SELECT usage_guard.model_cost('gpt-4', 1.5, 1);
SELECT usage_guard.model_cost('gpt-4', 'NaN', 1);
SELECT usage_guard.model_cost('gpt-4', 2e12, 1);
SELECT usage_guard.model_cost('gpt-4', 10, 1, 11);
SELECT usage_guard.model_cost(NULL, 1, 1);
SELECT try($$INSERT INTO usage_guard.model_prices VALUES ('gpt-4', '2026-01-01', 'NaN', 1, NULL)$$);
SELECT try($$INSERT INTO usage_guard.model_prices VALUES ('gpt-4', '2026-01-01', -1, 1, NULL)$$);
SELECT try($$INSERT INTO usage_guard.model_prices VALUES ('gpt-4', 'infinity', 1, 1, NULL)$$);
SELECT try($$INSERT INTO usage_guard.model_prices VALUES ('nobody', '2026-01-01', 1, 1, NULL)$$);
SELECT try($$UPDATE usage_guard.models SET downgrade_to = 'gpt-4' WHERE model = 'gpt-4'$$);
SELECT count(*) FROM usage_guard.model_prices;

-- the application level may price, not change prices
CREATE ROLE models_app;
GRANT usage_guard_application TO models_app;
SET ROLE models_app;
SELECT usage_guard.model_cost('claude-haiku', 1000000, 1000000, at => '2025-11-18 12:00+00');
SELECT try($$UPDATE usage_guard.model_prices SET input_per_million = 0$$);
RESET ROLE;
DROP ROLE models_app;

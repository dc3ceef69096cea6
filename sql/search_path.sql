-- Objects in public that shadow built-ins are never run by usage_guard,
-- whatever search_path its caller (here a superuser) has: every SQL and
-- PL/pgSQL function pins search_path, and the C code runs its SQL with a
-- pinned one.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

-- every SQL and PL/pgSQL function of the extension pins its search_path
SELECT p.oid::regprocedure AS unpinned
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'usage_guard'::regnamespace
   AND l.lanname IN ('sql', 'plpgsql')
   AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)
 ORDER BY 1;

INSERT INTO usage_guard.features (feature_key) VALUES ('sp_msgs'), ('sp_rows');
INSERT INTO usage_guard.plans (plan_code) VALUES ('sp_plan');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit)
VALUES ('sp_plan', 'sp_msgs', 'day', 5, 10), ('sp_plan', 'sp_rows', 'day', NULL, 3);
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('sp', 'sp_plan');
CREATE TABLE sp_rows (tenant_id text NOT NULL, n int);

-- the traps: each records that it ran, then behaves like the built-in
CREATE TABLE public.shadow_calls (fn text);
CREATE FUNCTION public.shadow(fn text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.shadow_calls VALUES (fn) $$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('format'); RETURN pg_catalog.format($1, $2); END $$;
CREATE FUNCTION public.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('format variadic'); RETURN pg_catalog.format($1, VARIADIC $2); END $$;
CREATE FUNCTION public.btrim(text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('btrim'); RETURN pg_catalog.btrim($1); END $$;
CREATE FUNCTION public.left(text, integer) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('left'); RETURN pg_catalog.left($1, $2); END $$;
CREATE FUNCTION public.isfinite(timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('isfinite'); RETURN pg_catalog.isfinite($1); END $$;
CREATE FUNCTION public.round(numeric, integer) RETURNS numeric LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('round'); RETURN pg_catalog.round($1, $2); END $$;
CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('to_jsonb'); RETURN pg_catalog.to_jsonb($1); END $$;
CREATE FUNCTION public.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('jsonb_typeof'); RETURN pg_catalog.jsonb_typeof($1); END $$;
CREATE FUNCTION public.shadow_sum(numeric, numeric) RETURNS numeric LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('sum'); RETURN coalesce($1, 0) + $2; END $$;
CREATE AGGREGATE public.sum(numeric) (sfunc = public.shadow_sum, stype = numeric);
CREATE FUNCTION public.shadow_texteq(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('= text'); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR public.= (leftarg = text, rightarg = text, function = public.shadow_texteq);
CREATE FUNCTION public.shadow_tsge(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.shadow('>= timestamptz'); RETURN pg_catalog.timestamptz_ge($1, $2); END $$;
CREATE OPERATOR public.>= (leftarg = timestamptz, rightarg = timestamptz, function = public.shadow_tsge);

-- the hijacker's search_path: public first
SET search_path = public, pg_catalog;
SELECT allowed, usage FROM usage_guard.usage_consume('sp', 'sp_msgs', 1);
SELECT allowed, usage FROM usage_guard.usage_consume('sp', 'sp_msgs', 1, 'sp-key');
SELECT usage_guard.usage_record('sp', 'sp_msgs', 1, idempotency_key => 'sp-key-2');
SELECT allowed, usage FROM usage_guard.usage_check('sp', 'sp_msgs', 1);
SELECT try($$SELECT usage_guard.usage_enforce('sp', 'sp_msgs', 100)$$);
SELECT feature_key, total FROM usage_guard.get_usage_totals('sp', now() - interval '1 day', now() + interval '1 day', '{sp_msgs}');
SELECT feature_key, usage, status FROM usage_guard.usage_status('sp');
SELECT count(*) >= 1 AS reported FROM usage_guard.usage_report(tenant_id => 'sp', period_start => now() - interval '1 day', period_end => now() + interval '1 day');
SELECT usage_guard.usage_report_json(tenant_id => 'sp', period_start => '2025-01-01', period_end => '2025-01-02') ->> 'period_start';
SELECT count(*) >= 0 AS ran FROM usage_guard.top_consumers('sp_msgs');
SELECT count(*) >= 0 AS ran FROM usage_guard.usage_anomalies();
SELECT count(*) >= 0 AS ran FROM usage_guard.subscription_usage;
SELECT length(usage_guard.metrics_text()) > 0 AS ran;
SELECT feature_key, usage_before FROM usage_guard.reset_usage('sp', 'sp_msgs', reason => 'trap test');
SELECT action, feature_key FROM usage_guard.sync_entitlements(
    '{"plans": [{"plan_code": "sp_plan", "features": [{"feature_key": "sp_msgs", "period": "day", "soft_limit": 5, "hard_limit": 10}]}]}',
    dry_run => true);
SELECT usage_guard.refresh_rollups();
SELECT usage_guard.meter_table('sp_rows', 'sp_rows', 'tenant_id');
INSERT INTO sp_rows VALUES ('sp', 1);
SELECT try($$INSERT INTO sp_rows SELECT 'sp', i FROM generate_series(1, 3) i$$);
SELECT usage_guard.unmeter_table('sp_rows', 'sp_rows');
SELECT try($$UPDATE usage_guard.usage_events SET amount = 0 WHERE tenant_id = 'sp'$$);
SELECT try($$DELETE FROM usage_guard.features WHERE feature_key = 'sp_msgs'$$);
SELECT try($$SELECT usage_guard.reset_counters()$$);
INSERT INTO usage_guard.usage_events (tenant_id, feature_key, amount, kind) VALUES ('sp', 'sp_msgs', -1, 'adjustment');
-- the control: a call of our own does hit the trap (so the traps work)
SELECT format('%s', 'control') AS control;
RESET search_path;

-- no trap ran but the control
SELECT fn AS shadow_ran, count(*) FROM public.shadow_calls GROUP BY fn ORDER BY fn;

DROP TABLE sp_rows;
DROP OPERATOR public.= (text, text);
DROP OPERATOR public.>= (timestamptz, timestamptz);
DROP AGGREGATE public.sum(numeric);
DROP FUNCTION public.format(text, text), public.format(text, VARIADIC text[]), public.btrim(text),
    public.left(text, integer), public.isfinite(timestamptz), public.round(numeric, integer),
    public.to_jsonb(anyelement), public.jsonb_typeof(jsonb), public.shadow_sum(numeric, numeric),
    public.shadow_texteq(text, text), public.shadow_tsge(timestamptz, timestamptz), public.shadow(text);
DROP TABLE public.shadow_calls;

-- sync_entitlements: plan limits from the operators' JSON artifact.
INSERT INTO usage_guard.features (feature_key) VALUES ('syn_msgs'), ('syn_in'), ('syn_out');
INSERT INTO usage_guard.plans (plan_code) VALUES ('syn_starter'), ('syn_pro'), ('syn_other');
INSERT INTO usage_guard.plan_features (plan_code, feature_key, period, soft_limit, hard_limit) VALUES
    ('syn_starter', 'syn_msgs', 'day', NULL, 100),
    ('syn_starter', 'syn_out', 'month', 10, 20),
    ('syn_other', 'syn_msgs', 'day', NULL, 7);

CREATE TEMP TABLE art AS SELECT $${
    "version": 1, "guardrails_enabled": true,
    "plans": [
        {"plan_code": "syn_starter", "features": [
            {"feature_key": "syn_msgs", "period": "day", "soft_limit": null, "hard_limit": 500},
            {"feature_key": "syn_in", "period": "month", "soft_limit": 800000, "hard_limit": 1000000}]},
        {"plan_code": "syn_pro", "features": [
            {"feature_key": "syn_msgs", "period": "day", "soft_limit": 4000, "hard_limit": 5000},
            {"feature_key": "syn_in", "soft_limit": null, "hard_limit": null}]}
    ]}$$::jsonb AS a;

-- a dry run reports the changes and makes none
SELECT * FROM usage_guard.sync_entitlements((SELECT a FROM art), dry_run => true);
SELECT plan_code, feature_key, period, soft_limit, hard_limit FROM usage_guard.plan_features
 WHERE plan_code LIKE 'syn_%' ORDER BY 1, 2, 3;
-- only the listed plans, then everything with prune_missing
SELECT * FROM usage_guard.sync_entitlements((SELECT a FROM art), plans => ARRAY['syn_pro']);
SELECT * FROM usage_guard.sync_entitlements((SELECT a FROM art), prune_missing => true);
SELECT plan_code, feature_key, period, soft_limit, hard_limit FROM usage_guard.plan_features
 WHERE plan_code LIKE 'syn_%' ORDER BY 1, 2, 3;
-- a second run changes nothing
SELECT count(*) FROM usage_guard.sync_entitlements((SELECT a FROM art), prune_missing => true);
-- decisions see the synced limits at once
INSERT INTO usage_guard.tenant_subscriptions (tenant_id, plan_code) VALUES ('syn', 'syn_starter');
SELECT limit_value FROM usage_guard.usage_check('syn', 'syn_msgs', 1, '2025-11-18 10:00+00');

-- bad artifacts: a clear error naming the JSON path, and nothing changes
SELECT try($$SELECT usage_guard.sync_entitlements('[]')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": {}}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [42]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"features": []}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "gold", "features": []}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro"}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": [{"feature_key": "nope"}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": [{"feature_key": "syn_in", "period": "year"}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": [{"feature_key": "syn_in", "hard_limit": "lots"}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_starter", "features": []}, {"plan_code": "syn_pro", "features": [{"feature_key": "syn_in", "hard_limit": -1}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": [{"feature_key": "syn_in", "soft_limit": 5, "hard_limit": 4}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": [{"feature_key": "syn_in"}, {"feature_key": "syn_in"}]}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": [{"plan_code": "syn_pro", "features": []}, {"plan_code": "syn_pro", "features": []}]}')$$);
SELECT try($$SELECT usage_guard.sync_entitlements('{"plans": []}', plans => ARRAY['syn_pro'])$$);
SELECT try($$SELECT usage_guard.sync_entitlements(NULL)$$);
-- an artifact generated with guardrails disabled needs consent
SELECT try($$SELECT usage_guard.sync_entitlements('{"guardrails_enabled": false, "plans": []}')$$);
SELECT count(*) FROM usage_guard.sync_entitlements('{"guardrails_enabled": false, "plans": []}', allow_disabled_artifact => true);
SELECT plan_code, feature_key, period, soft_limit, hard_limit FROM usage_guard.plan_features
 WHERE plan_code LIKE 'syn_%' ORDER BY 1, 2, 3;

-- the artifact of the catalog itself (seed 000's setup step): syncing it
-- back changes nothing, even with prune_missing
SELECT jsonb_pretty(usage_guard.entitlements_artifact(ARRAY['syn_pro']) - 'generated_at');
SELECT count(*) AS changes FROM usage_guard.sync_entitlements(usage_guard.entitlements_artifact(), dry_run => true, prune_missing => true);
SELECT try($$SELECT usage_guard.entitlements_artifact(ARRAY['no_such_plan'])$$);

-- Scheduled maintenance without pg_cron: a clear error, nothing changes.
SELECT * FROM usage_guard.schedule_maintenance();
SELECT usage_guard.unschedule_maintenance();
SELECT try($$SELECT usage_guard.schedule_maintenance(NULL)$$);

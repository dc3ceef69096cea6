-- usage_guard 0.3.0 -> 0.4.0.
--
-- From 0.4.0 on, CREATE EXTENSION runs the install script assembled from
-- sql/src/*.sql (the current definition of every object) instead of 0.1.0
-- and the upgrade chain.  So every change made in sql/src must be made here
-- too, for the databases that upgrade: test upgrade (sql/upgrade.sql)
-- compares the two installs object by object.
--
-- 0.4.0's changes follow.

\echo Use "ALTER EXTENSION usage_guard UPDATE TO '0.4.0'" to load this file. \quit

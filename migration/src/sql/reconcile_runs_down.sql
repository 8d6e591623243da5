ALTER TABLE user_tombstones DROP COLUMN reconcile_run;
DROP TABLE reconcile_runs;
DROP TABLE job_leases;

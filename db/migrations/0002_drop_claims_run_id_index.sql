-- claims holds only keys in flight (a confirmation deletes its claim), so
-- the table stays small and the one query by run (at the end of a run) can
-- scan it; the index cost every claim an extra index insert and delete.
DROP INDEX IF EXISTS claims_run_id;

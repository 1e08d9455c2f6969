-- customers.as_of on a created row (BENCHMARKS.md, round 10). The
-- confirming COPY no longer writes it: a row it creates leaves as_of NULL,
-- which stands for its run's runs.as_of. A run records that before its
-- first claim and never changes it, and every row a run creates had that
-- very value, so the meaning of the rows already written is unchanged, and
-- nothing is rewritten. Updates, and the raise of an unchanged key's
-- as-of, still write it. Rows older than migration 0005 have NULL in both:
-- older than any export. Parsing the same timestamp on every row was 6% of
-- PostgreSQL's CPU in a 1M-row load.
--
-- This migration is also the fence: a reader older than it would take
-- those NULLs for "older than any export" and send stale changes, and a
-- binary refuses a database holding a migration it does not know.
COMMENT ON COLUMN customers.as_of IS
    'as-of time of the newest export that held this version; NULL: its run''s (runs.as_of, NULL there too: older than any export). Read as COALESCE(customers.as_of, runs.as_of) joined on run_id.';

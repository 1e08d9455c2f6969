-- call_bound_ms: how long an integrator call this run sent may go on after
-- the run lost track of it (the call timeout its integrators advertise,
-- plus the reader's margin). A run that takes this run's claims over waits
-- at least this long before it looks them up: its own integrators' bound
-- may be shorter. 0 for runs that predate the column: the taker's own
-- bound applies.
ALTER TABLE runs ADD COLUMN call_bound_ms bigint NOT NULL DEFAULT 0;

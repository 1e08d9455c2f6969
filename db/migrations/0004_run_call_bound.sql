-- What a run taking over a dead run's claims needs to know to wait out the
-- integrator calls the dead run may have left running, and no longer:
-- call_bound_ms, how long such a call may go on (the call timeout its
-- integrators advertise, plus the reader's margin; 0: not recorded), and
-- alive_at, when the run last proved it held its liveness lock. A run sends
-- only within ledger.LockLease of such a proof, so its calls are all over
-- by alive_at (or finished_at) + LockLease + call_bound_ms.
ALTER TABLE runs ADD COLUMN call_bound_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN alive_at timestamptz;
-- integrators: the Instance of every integrator process the run sent a call
-- to, recorded before the first such call ('?' for one that had not said
-- who it was). A run taking this run's claims over through the very same
-- integrator process need not wait out the calls: that process holds the
-- keys of its live calls and answers record_in_flight to any other call
-- carrying them.
ALTER TABLE runs ADD COLUMN integrators text[] NOT NULL DEFAULT '{}';
-- not_before: until when a call that sent this key may still run, on the
-- server's clock, counting every run that held the key before its owner
-- (set when a run takes the key over, never lowered): the next run to take
-- it over waits at least until then, whatever its owner's own calls.
ALTER TABLE claims ADD COLUMN not_before timestamptz;

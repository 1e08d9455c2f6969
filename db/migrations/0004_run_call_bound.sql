-- What a run taking over a dead run's claims needs to know to wait out the
-- integrator calls the dead run may have left running, and no longer:
-- call_bound_ms, how long such a call may go on (the call timeout its
-- integrators advertise, plus the reader's margin; 0: not recorded), and
-- alive_at, when the run last proved it held its liveness lock. A run sends
-- only within ledger.LockLease of such a proof, so its calls are all over
-- by alive_at (or finished_at) + LockLease + call_bound_ms.
ALTER TABLE runs ADD COLUMN call_bound_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN alive_at timestamptz;

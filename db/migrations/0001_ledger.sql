-- The record of what the CRM holds, and the ledger that makes delivery
-- exactly-once across reruns, crashes and concurrent readers (docs/design.md).

-- One row per reader run. A live run holds a session advisory lock on its id
-- (db.RunLockKey), so other runs can tell its claims from a dead run's.
CREATE TABLE runs (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
    host        text NOT NULL DEFAULT '',
    pid         integer NOT NULL DEFAULT 0,
    files       text[] NOT NULL DEFAULT '{}',
    report      jsonb
);

-- One row per customer the CRM accepted. external_id is the dedup key.
CREATE TABLE customers (
    external_id  text PRIMARY KEY,
    email        text NOT NULL,
    first_name   text NOT NULL DEFAULT '',
    last_name    text NOT NULL DEFAULT '',
    phone        text NOT NULL DEFAULT '',
    attributes   jsonb NOT NULL DEFAULT '{}',
    crm_id       text NOT NULL,
    fingerprint  text NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    run_id       bigint NOT NULL,
    source_file  text NOT NULL,
    source_line  bigint NOT NULL
);

-- A claim is taken, and committed, before a key is sent to the CRM, and is
-- removed in the transaction that records the CRM's confirmation in
-- customers. A claim left by a dead run means "maybe sent": the next run
-- asks the CRM before sending again.
--   sending   the owner is delivering it (or died doing so)
--   rejected  the CRM refused it for good: it was not created
--   failed    the owner gave up after its retries; it may have been created
CREATE TABLE claims (
    external_id text PRIMARY KEY,
    run_id      bigint NOT NULL,
    state       text NOT NULL DEFAULT 'sending'
                CHECK (state IN ('sending', 'rejected', 'failed')),
    fingerprint text NOT NULL,
    source_file text NOT NULL,
    source_line bigint NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX claims_run_id ON claims (run_id);

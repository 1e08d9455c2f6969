-- Changed records (docs/design.md, "Changes"). customers holds the latest
-- version of each customer the CRM confirmed: version counts the
-- confirmed versions (1: created), updated_at is when the latest was
-- confirmed, as_of the time of the newest export that held this version
-- (the input file's modification time, or -as-of; NULL for rows older than
-- this migration, which any export supersedes). A change older than as_of
-- is stale: never sent.
ALTER TABLE customers ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE customers ADD COLUMN updated_at timestamptz;
ALTER TABLE customers ADD COLUMN as_of timestamptz;

-- One row per confirmed update: which run, the version it made, the
-- fingerprints before and after, and the names of the fields it changed
-- (contact.Fields names; attributes as "attributes.NAME").
CREATE TABLE customer_changes (
    id              bigserial PRIMARY KEY,
    external_id     text NOT NULL,
    version         bigint NOT NULL,
    run_id          bigint NOT NULL,
    old_fingerprint text NOT NULL,
    new_fingerprint text NOT NULL,
    fields          text[] NOT NULL,
    as_of           timestamptz,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    source_file     text NOT NULL,
    source_line     bigint NOT NULL
);
CREATE INDEX customer_changes_key ON customer_changes (external_id, version);

-- An update is claimed with a claims row of kind 'update' (the key is in
-- customers already, which outranks every create claim). as_of is the
-- claiming run's; fields the fields it writes, which a run taking the
-- claim over writes too, so that whatever the dead run's update did is
-- overwritten by the newer one.
ALTER TABLE claims ADD COLUMN kind text NOT NULL DEFAULT 'create' CHECK (kind IN ('create', 'update'));
ALTER TABLE claims ADD COLUMN as_of timestamptz;
ALTER TABLE claims ADD COLUMN fields text[] NOT NULL DEFAULT '{}';

ALTER TABLE runs ADD COLUMN as_of timestamptz;

-- Claims per block instead of per key (docs/design.md). A run claims the new
-- keys of a block with one row here; per-key rows in claims remain for what
-- is rare: keys rejected by the CRM or given up on, and keys taken over from
-- a dead run. A key's claim is, in order of precedence: its customers row,
-- its claims row, the claim_blocks row holding it. A run deletes a block once
-- every key in it is settled; a dead run's blocks are turned into claims rows
-- by the next run that starts.
CREATE TABLE claim_blocks (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL,
    source_file text NOT NULL,
    keys        text[] NOT NULL,
    lines       bigint[] NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
-- Claims made from a dead run's block carry no fingerprint: nothing reads it.
ALTER TABLE claims ALTER COLUMN fingerprint SET DEFAULT '';
-- orphan: an integrator call that sent this key may still be running (its
-- run crashed, or the call broke and the run gave up or was interrupted
-- before waiting it out). The run that takes the claim over waits the
-- daemon's call bound before looking the key up, whatever its owner's
-- status says.
ALTER TABLE claims ADD COLUMN orphan boolean NOT NULL DEFAULT false;

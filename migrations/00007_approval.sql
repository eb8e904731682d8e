-- +goose Up

-- A tenant with approval_required seals batches as awaiting_approval; an
-- approver moves such a batch to sealed, which enqueues its submit job, and
-- approved_by and approved_at record who and when. A tenant in dry_run ends
-- its batches, and their items, as dry_run: the request is built and its
-- SHA-256 recorded in submission_attempts, but nothing is sent, so no
-- receipt and no evidence exist for them.
ALTER TABLE export_batches DROP CONSTRAINT export_batches_state_check,
    ADD CONSTRAINT export_batches_state_check CHECK (state IN ('open', 'sealed', 'posting', 'retry',
        'accepted', 'partially_discarded', 'rejected', 'split', 'awaiting_approval', 'dry_run'));
ALTER TABLE export_batches
    ADD COLUMN approved_by text,
    ADD COLUMN approved_at timestamptz;
ALTER TABLE report_items DROP CONSTRAINT report_items_state_check,
    ADD CONSTRAINT report_items_state_check CHECK (state IN ('pending', 'batched', 'accepted', 'discarded',
        'quarantined', 'rejected', 'dry_run'));

CREATE INDEX export_batches_awaiting_approval_idx ON export_batches (tenant_id, ecosystem, id)
    WHERE state = 'awaiting_approval';

-- +goose Down
-- This fails while any batch or item is in state awaiting_approval or
-- dry_run; move or delete those rows first.
DROP INDEX export_batches_awaiting_approval_idx;
ALTER TABLE report_items DROP CONSTRAINT report_items_state_check,
    ADD CONSTRAINT report_items_state_check CHECK (state IN ('pending', 'batched', 'accepted', 'discarded',
        'quarantined', 'rejected'));
ALTER TABLE export_batches DROP COLUMN approved_at, DROP COLUMN approved_by;
ALTER TABLE export_batches DROP CONSTRAINT export_batches_state_check,
    ADD CONSTRAINT export_batches_state_check CHECK (state IN ('open', 'sealed', 'posting', 'retry',
        'accepted', 'partially_discarded', 'rejected', 'split'));

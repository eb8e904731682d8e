-- +goose Up

-- A batch whose every item failed the check before sending ends as
-- quarantined: nothing was sent, and nothing was rejected by a regulator.
ALTER TABLE export_batches DROP CONSTRAINT export_batches_state_check,
    ADD CONSTRAINT export_batches_state_check CHECK (state IN ('open', 'sealed', 'posting', 'retry',
        'accepted', 'partially_discarded', 'rejected', 'split', 'awaiting_approval', 'dry_run', 'quarantined'));

-- +goose Down
ALTER TABLE export_batches DROP CONSTRAINT export_batches_state_check,
    ADD CONSTRAINT export_batches_state_check CHECK (state IN ('open', 'sealed', 'posting', 'retry',
        'accepted', 'partially_discarded', 'rejected', 'split', 'awaiting_approval', 'dry_run'));

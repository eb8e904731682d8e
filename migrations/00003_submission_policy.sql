-- +goose Up

-- Scheduled submission: a tenant in scheduled mode is flushed every
-- schedule_cadence inside its daily window [schedule_window_start,
-- schedule_window_end), local time in regulator_zone. Deadlines override the
-- window: items of business day D are flushed in time for 08:00 on D+1 in
-- regulator_zone, less deadline_margin.
ALTER TABLE tenant_config
    ADD COLUMN regulator_zone        text     NOT NULL DEFAULT 'America/Sao_Paulo',
    ADD COLUMN schedule_window_start time     NOT NULL DEFAULT '00:00',
    ADD COLUMN schedule_window_end   time     NOT NULL DEFAULT '00:00',
    ADD COLUMN schedule_cadence      interval NOT NULL DEFAULT '1 hour',
    ADD COLUMN deadline_margin       interval NOT NULL DEFAULT '2 hours',
    ADD COLUMN last_flushed_at       timestamptz,
    -- signing_key_id is the key id (JWS kid) registered for the tenant's
    -- signing key; the key itself is a credential reference.
    ADD COLUMN signing_key_id        text     NOT NULL DEFAULT '';

-- A batch the regulator refused as too large (413) is split in two and
-- ends as split; items of a batch the regulator rejected outright (400, 403,
-- 415) end as rejected, kept for an operator to inspect and re-drive.
ALTER TABLE export_batches DROP CONSTRAINT export_batches_state_check,
    ADD CONSTRAINT export_batches_state_check CHECK (state IN ('open', 'sealed', 'posting', 'retry',
        'accepted', 'partially_discarded', 'rejected', 'split'));
ALTER TABLE export_batches ADD COLUMN parent_batch_id bigint REFERENCES export_batches (id);
ALTER TABLE report_items DROP CONSTRAINT report_items_state_check,
    ADD CONSTRAINT report_items_state_check CHECK (state IN ('pending', 'batched', 'accepted', 'discarded',
        'quarantined', 'rejected'));
-- A receipt learned by reading the item back from the regulator, after an
-- attempt whose response was lost, has source read_back.
ALTER TABLE submission_receipts ADD COLUMN source text NOT NULL DEFAULT 'response'
    CHECK (source IN ('response', 'read_back'));

-- This index serves reconcile counts.
CREATE INDEX report_items_state_idx ON report_items (tenant_id, ecosystem, state, reported_at);

-- reconcile_results stores each reconciliation of a tenant's business day:
-- what was captured, mapped, quarantined, submitted, accepted and discarded,
-- and what a read-back sample found at the regulator.
CREATE TABLE reconcile_results (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        text        NOT NULL,
    ecosystem        text        NOT NULL,
    business_day     date        NOT NULL,
    trigger          text        NOT NULL,
    captured         bigint      NOT NULL,
    mapped           bigint      NOT NULL,
    quarantined      bigint      NOT NULL,
    submitted        bigint      NOT NULL,
    accepted         bigint      NOT NULL,
    discarded        bigint      NOT NULL,
    unsubmitted      bigint      NOT NULL,
    sample_checked   integer     NOT NULL,
    sample_missing   integer     NOT NULL,
    gap              boolean     NOT NULL,
    details          jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reconcile_results_day_idx ON reconcile_results (tenant_id, ecosystem, business_day);

-- +goose Down
DROP TABLE reconcile_results;
ALTER TABLE submission_receipts DROP COLUMN source;
ALTER TABLE export_batches DROP COLUMN parent_batch_id;
DROP INDEX report_items_state_idx;
ALTER TABLE tenant_config
    DROP COLUMN regulator_zone, DROP COLUMN schedule_window_start, DROP COLUMN schedule_window_end,
    DROP COLUMN schedule_cadence, DROP COLUMN deadline_margin, DROP COLUMN last_flushed_at,
    DROP COLUMN signing_key_id;

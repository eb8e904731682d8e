-- +goose Up

-- tenant_config holds each tenant's settings per ecosystem. Workers read it on
-- every use, so a change takes effect without a restart. Credentials are
-- references ("file:/path" or "env:NAME"), never secret values.
CREATE TABLE tenant_config (
    tenant_id          text        NOT NULL CHECK (tenant_id <> ''),
    ecosystem          text        NOT NULL CHECK (ecosystem IN ('ofb', 'opin')),
    enabled            boolean     NOT NULL DEFAULT true,
    environment        text        NOT NULL DEFAULT 'sandbox',
    organisation_id    text        NOT NULL,
    client_id          text        NOT NULL DEFAULT '',
    credentials        jsonb       NOT NULL DEFAULT '{}',
    submission_mode    text        NOT NULL DEFAULT 'near_real_time'
                                   CHECK (submission_mode IN ('near_real_time', 'scheduled')),
    flush_interval     interval    NOT NULL DEFAULT '5 seconds',
    dry_run            boolean     NOT NULL DEFAULT false,
    approval_required  boolean     NOT NULL DEFAULT false,
    capture_durability text        NOT NULL DEFAULT 'fail_closed'
                                   CHECK (capture_durability IN ('fail_closed', 'fail_open')),
    retention          jsonb       NOT NULL DEFAULT '{}',
    eligibility        jsonb       NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, ecosystem)
);

-- consumer_idempotency records which events each durable consumer has turned
-- into jobs. It is the dedup authority: NATS redeliveries and CDC retries hit
-- the primary key and are skipped.
CREATE TABLE consumer_idempotency (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    tenant_id   text        NOT NULL,
    ecosystem   text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX consumer_idempotency_tenant_idx ON consumer_idempotency (tenant_id, received_at);

-- report_items holds one regulator report item per captured interaction
-- event, in the regulator's own field names.
CREATE TABLE report_items (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           text        NOT NULL,
    ecosystem           text        NOT NULL CHECK (ecosystem IN ('ofb', 'opin')),
    event_id            uuid        NOT NULL,
    fapi_interaction_id text        NOT NULL,
    role                text        NOT NULL CHECK (role IN ('CLIENT', 'SERVER')),
    body                jsonb       NOT NULL,
    reported_at         timestamptz NOT NULL,
    state               text        NOT NULL DEFAULT 'pending'
                                    CHECK (state IN ('pending', 'batched', 'accepted', 'discarded', 'quarantined')),
    state_reason        text,
    batch_id            bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, event_id)
);

CREATE INDEX report_items_pending_idx ON report_items (tenant_id, ecosystem, id) WHERE state = 'pending';
CREATE INDEX report_items_batch_idx ON report_items (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX report_items_tenant_reported_idx ON report_items (tenant_id, ecosystem, reported_at);

-- export_batches is the submission state machine: open, sealed, posting, then
-- accepted, partially_discarded or rejected, or retry to post again.
CREATE TABLE export_batches (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      text        NOT NULL,
    ecosystem      text        NOT NULL CHECK (ecosystem IN ('ofb', 'opin')),
    state          text        NOT NULL DEFAULT 'open'
                               CHECK (state IN ('open', 'sealed', 'posting', 'retry',
                                                'accepted', 'partially_discarded', 'rejected')),
    item_count     integer     NOT NULL DEFAULT 0,
    accepted_count integer     NOT NULL DEFAULT 0,
    discarded_count integer    NOT NULL DEFAULT 0,
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sealed_at      timestamptz,
    posted_at      timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX export_batches_tenant_state_idx ON export_batches (tenant_id, ecosystem, state);

ALTER TABLE report_items ADD FOREIGN KEY (batch_id) REFERENCES export_batches (id);

-- submission_attempts records every request made for a batch, including
-- those whose outcome never came back.
CREATE TABLE submission_attempts (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      text        NOT NULL,
    ecosystem      text        NOT NULL,
    batch_id       bigint      NOT NULL REFERENCES export_batches (id),
    attempt        integer     NOT NULL,
    item_count     integer     NOT NULL,
    request_sha256 text,
    http_status    integer,
    outcome        text,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

CREATE INDEX submission_attempts_batch_idx ON submission_attempts (batch_id, attempt);

-- payload_evidence stores the canonical JSON of each submitted item and
-- request body with its SHA-256, minted only from a real regulator receipt.
CREATE TABLE payload_evidence (
    id             uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL,
    ecosystem      text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('item', 'request')),
    batch_id       bigint      NOT NULL REFERENCES export_batches (id),
    report_item_id bigint      REFERENCES report_items (id),
    sha256         text        NOT NULL,
    canonical      bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX payload_evidence_tenant_idx ON payload_evidence (tenant_id, created_at);
CREATE INDEX payload_evidence_batch_idx ON payload_evidence (batch_id);

-- submission_receipts holds the regulator's verdict for each item. An item has
-- at most one receipt.
CREATE TABLE submission_receipts (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           text        NOT NULL,
    ecosystem           text        NOT NULL,
    batch_id            bigint      NOT NULL REFERENCES export_batches (id),
    report_item_id      bigint      NOT NULL UNIQUE REFERENCES report_items (id),
    fapi_interaction_id text        NOT NULL,
    report_id           text,
    status              text        NOT NULL CHECK (status IN ('ACCEPTED', 'DISCARDED')),
    message             text,
    evidence_id         uuid        REFERENCES payload_evidence (id),
    received_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX submission_receipts_tenant_idx ON submission_receipts (tenant_id, ecosystem, received_at);

-- webhook_subscriptions holds customer endpoints per tenant. secrets is
-- ciphertext, encrypted with a key from the environment.
CREATE TABLE webhook_subscriptions (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    ecosystem       text        NOT NULL CHECK (ecosystem IN ('ofb', 'opin')),
    url             text        NOT NULL,
    event_types     text[]      NOT NULL,
    secrets         bytea       NOT NULL,
    retry_policy    jsonb       NOT NULL DEFAULT '{}',
    state           text        NOT NULL DEFAULT 'enabled' CHECK (state IN ('enabled', 'disabled')),
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_subscriptions_tenant_idx ON webhook_subscriptions (tenant_id, ecosystem, state);

-- audit_ledger is append-only and hash-chained: each row stores the previous
-- row's hash, and the database rejects updates and deletes.
CREATE TABLE audit_ledger (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  text        NOT NULL,
    ecosystem  text        NOT NULL,
    actor      text        NOT NULL,
    action     text        NOT NULL,
    subject    text        NOT NULL,
    old_hash   text,
    new_hash   text,
    prev_hash  text        NOT NULL,
    row_hash   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_ledger_tenant_idx ON audit_ledger (tenant_id, created_at);

-- +goose StatementBegin
CREATE FUNCTION audit_ledger_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_ledger is append-only: % rejected', TG_OP;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_ledger_append_only
    BEFORE UPDATE OR DELETE ON audit_ledger
    FOR EACH ROW EXECUTE FUNCTION audit_ledger_reject_change();

CREATE TRIGGER audit_ledger_no_truncate
    BEFORE TRUNCATE ON audit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION audit_ledger_reject_change();

-- dead_letters keeps every message or event that could not be processed, with
-- the reason, so none disappears silently. tenant_id and ecosystem are null
-- when the message was too broken to read them.
CREATE TABLE dead_letters (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  text,
    ecosystem  text,
    source     text        NOT NULL,
    subject    text,
    message_id text,
    event_id   uuid,
    reason     text        NOT NULL,
    payload    bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant_id, created_at);

-- +goose Down
DROP TABLE dead_letters;
DROP TABLE audit_ledger;
DROP FUNCTION audit_ledger_reject_change();
DROP TABLE webhook_subscriptions;
DROP TABLE submission_receipts;
DROP TABLE payload_evidence;
DROP TABLE submission_attempts;
ALTER TABLE report_items DROP CONSTRAINT IF EXISTS report_items_batch_id_fkey;
DROP TABLE export_batches;
DROP TABLE report_items;
DROP TABLE consumer_idempotency;
DROP TABLE tenant_config;

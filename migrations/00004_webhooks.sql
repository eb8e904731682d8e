-- +goose Up

-- webhook_messages stores, once per event, the exact request body that every
-- delivery of the event signs and sends, so retries and replays send the same
-- bytes even after the outbox partition is dropped.
CREATE TABLE webhook_messages (
    event_id     uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    ecosystem    text        NOT NULL,
    event_type   text        NOT NULL,
    aggregate_id text        NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_messages_tenant_idx ON webhook_messages (tenant_id, created_at);

-- webhook_deliveries holds one row per event and matching subscription. The
-- id is also the order key: among the pending deliveries of one subscription
-- and aggregate, only the one with the smallest id may be attempted. attempts
-- counts HTTP attempts of the current run; run starts at 1 and a replay
-- increments it and resets attempts.
CREATE TABLE webhook_deliveries (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          text        NOT NULL,
    ecosystem          text        NOT NULL,
    subscription_id    uuid        NOT NULL REFERENCES webhook_subscriptions (id),
    event_id           uuid        NOT NULL REFERENCES webhook_messages (event_id),
    event_type         text        NOT NULL,
    aggregate_id       text        NOT NULL,
    state              text        NOT NULL DEFAULT 'pending'
                                   CHECK (state IN ('pending', 'delivered', 'dead_lettered')),
    run                integer     NOT NULL DEFAULT 1,
    attempts           integer     NOT NULL DEFAULT 0,
    job_id             bigint,
    next_attempt_at    timestamptz,
    last_status        integer,
    last_error         text,
    dead_letter_reason text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    UNIQUE (subscription_id, event_id)
);

CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (subscription_id, aggregate_id, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_subscription_idx ON webhook_deliveries (subscription_id, created_at);
CREATE INDEX webhook_deliveries_dead_idx ON webhook_deliveries (tenant_id, ecosystem, finished_at)
    WHERE state = 'dead_lettered';

-- webhook_attempts logs every HTTP attempt. The row is written before the
-- request is sent, so an attempt cut short by a crash is still counted;
-- finished_at stays null for such an attempt.
CREATE TABLE webhook_attempts (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          text        NOT NULL,
    ecosystem          text        NOT NULL,
    delivery_id        bigint      NOT NULL REFERENCES webhook_deliveries (id),
    run                integer     NOT NULL,
    attempt            integer     NOT NULL,
    outcome            text        CHECK (outcome IN ('delivered', 'failed', 'gone', 'timeout', 'error')),
    status_code        integer,
    latency_ms         double precision,
    error              text,
    response_body      bytea,
    response_truncated boolean     NOT NULL DEFAULT false,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    UNIQUE (delivery_id, run, attempt)
);

CREATE INDEX webhook_attempts_tenant_idx ON webhook_attempts (tenant_id, started_at);

-- +goose Down
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_messages;

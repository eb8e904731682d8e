-- +goose Up

-- redrive_watermarks records, per durable consumer, up to which created_at
-- the outbox has been checked for events the consumer never recorded.
-- Each re-drive pass scans only the outbox after the watermark.
CREATE TABLE redrive_watermarks (
    consumer      text        PRIMARY KEY,
    checked_until timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE redrive_watermarks;

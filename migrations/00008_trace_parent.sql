-- +goose Up

-- trace_parent carries the W3C traceparent of the event an item came from,
-- so the submit job's span can link back to the capture that produced it.
ALTER TABLE report_items ADD COLUMN trace_parent text;

-- +goose Down
ALTER TABLE report_items DROP COLUMN trace_parent;

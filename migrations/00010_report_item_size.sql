-- +goose Up

-- body_bytes is the size of the item's compact JSON, so the flush job caps a
-- batch's request size without rendering every candidate's jsonb as text.
ALTER TABLE report_items ADD COLUMN body_bytes integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE report_items DROP COLUMN body_bytes;

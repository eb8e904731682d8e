-- +goose Up

-- retention_policy holds, per partitioned table, how long its daily
-- partitions are kept and which durable consumers must have received every
-- event of a partition before the partition may be dropped. The partitions job
-- reads it on every run, so a change applies without a restart. Partitions
-- are shared by all tenants, so a tenant's tenant_config.retention entry for
-- the same table can only lengthen the retention, never shorten it.
CREATE TABLE retention_policy (
    table_name         text        PRIMARY KEY CHECK (table_name <> ''),
    retain             interval    NOT NULL CHECK (retain >= interval '1 day'),
    required_consumers text[]      NOT NULL DEFAULT '{regulator}',
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- 30 days keeps every event well past the regulator's D+7 final deadline.
INSERT INTO retention_policy (table_name, retain) VALUES ('outbox', interval '30 days');

-- +goose Down
DROP TABLE retention_policy;

-- +goose Up

-- outbox holds semantic events written by producers in the same transaction
-- as the business change. It is insert-only and is the one table the CDC
-- connector reads. Partitions are one UTC day of created_at each.
CREATE TABLE outbox (
    id            uuid        NOT NULL,
    tenant_id     text        NOT NULL CHECK (tenant_id <> ''),
    ecosystem     text        NOT NULL CHECK (ecosystem IN ('ofb', 'opin')),
    event_type    text        NOT NULL CHECK (event_type <> ''),
    event_version integer     NOT NULL CHECK (event_version > 0),
    aggregate_id  text        NOT NULL CHECK (aggregate_id <> ''),
    payload       jsonb       NOT NULL,
    trace_parent  text,
    occurred_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX outbox_tenant_created_idx ON outbox (tenant_id, created_at);

-- The default partition catches rows when the partition job has fallen behind,
-- so an insert never fails for want of a partition.
CREATE TABLE outbox_default PARTITION OF outbox DEFAULT;

-- outbox_ensure_partitions creates the daily partitions covering
-- [from_day, from_day + days) and returns how many it created.
-- +goose StatementBegin
CREATE FUNCTION outbox_ensure_partitions(from_day date, days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    name    text;
    created integer := 0;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        day := from_day + i;
        name := 'outbox_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF outbox FOR VALUES FROM (%L) TO (%L)',
                name,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
-- +goose StatementEnd

SELECT outbox_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 1, 9);

-- The CDC connector reads this publication through its replication slot.
-- publish_via_partition_root makes rows from every partition arrive as rows of
-- outbox itself.
CREATE PUBLICATION eventruntime_outbox FOR TABLE outbox
    WITH (publish = 'insert', publish_via_partition_root = true);

-- +goose Down
DROP PUBLICATION IF EXISTS eventruntime_outbox;
DROP TABLE outbox;
DROP FUNCTION outbox_ensure_partitions(date, integer);

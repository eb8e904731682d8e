package sequin

import (
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/finnest/eventruntime/outbox"
)

// Outbox columns the stand-in reads, by position in relation.columns.
const (
	fieldID = iota
	fieldTenantID
	fieldEcosystem
	fieldEventType
	fieldEventVersion
	fieldAggregateID
	fieldPayload
	fieldTraceParent
	fieldOccurredAt
	fieldCreatedAt
	fieldCount
)

var fieldColumns = [fieldCount]string{
	"id", "tenant_id", "ecosystem", "event_type", "event_version",
	"aggregate_id", "payload", "trace_parent", "occurred_at", "created_at",
}

// relation maps a pgoutput Relation message onto the outbox columns.
type relation struct {
	namespace     string
	name          string
	qualifiedName string
	subject       string
	columnCount   int

	// columns holds the tuple index of each field.
	columns [fieldCount]int

	// keyColumns holds the tuple indexes of the replica identity (by default
	// primary key) columns, in table order.
	keyColumns []int

	// unusable is set when the relation lacks an outbox column. Its rows are
	// logged and skipped.
	unusable error
}

func newRelation(message *pglogrepl.RelationMessage, databaseName string) *relation {
	rel := &relation{
		namespace:     message.Namespace,
		name:          message.RelationName,
		qualifiedName: message.Namespace + "." + message.RelationName,
		subject:       Subject(databaseName, message.Namespace, message.RelationName, string(ActionInsert)),
		columnCount:   len(message.Columns),
	}
	for field := range rel.columns {
		rel.columns[field] = -1
	}
	for index, column := range message.Columns {
		for field, name := range fieldColumns {
			if column.Name == name {
				rel.columns[field] = index
			}
		}
		if column.Flags&1 != 0 {
			rel.keyColumns = append(rel.keyColumns, index)
		}
	}
	for field, index := range rel.columns {
		if index < 0 {
			rel.unusable = fmt.Errorf("relation %s has no column %s", rel.qualifiedName, fieldColumns[field])
			break
		}
	}
	return rel
}

// event converts an inserted tuple, in pgoutput's text format, to an event.
func (r *relation) event(tuple *pglogrepl.TupleData) (outbox.Event, error) {
	var event outbox.Event
	if r.unusable != nil {
		return event, r.unusable
	}
	if tuple == nil || len(tuple.Columns) != r.columnCount {
		return event, fmt.Errorf("tuple on %s does not have the relation's %d columns", r.qualifiedName, r.columnCount)
	}

	var values [fieldCount][]byte
	for field, index := range r.columns {
		column := tuple.Columns[index]
		switch column.DataType {
		case pglogrepl.TupleDataTypeText:
			values[field] = column.Data
		case pglogrepl.TupleDataTypeNull:
			if field != fieldTraceParent {
				return event, fmt.Errorf("column %s is null", fieldColumns[field])
			}
		default:
			return event, fmt.Errorf("column %s has tuple data type %q, want text", fieldColumns[field], column.DataType)
		}
	}

	var err error
	if event.ID, err = uuid.ParseBytes(values[fieldID]); err != nil {
		return event, fmt.Errorf("column id %q is not a UUID: %w", values[fieldID], err)
	}
	event.TenantID = string(values[fieldTenantID])
	event.Ecosystem = string(values[fieldEcosystem])
	event.Type = string(values[fieldEventType])
	event.AggregateID = string(values[fieldAggregateID])
	event.TraceParent = string(values[fieldTraceParent])
	if event.Version, err = strconv.Atoi(string(values[fieldEventVersion])); err != nil {
		return event, fmt.Errorf("column event_version %q is not an integer", values[fieldEventVersion])
	}

	// jsonb's text output has a space after each comma and colon.
	payload := values[fieldPayload]
	if event.Payload, err = appendCompactJSON(make([]byte, 0, len(payload)), payload); err != nil {
		return event, fmt.Errorf("column payload: %w", err)
	}

	if event.OccurredAt, err = parseTimestamptz(values[fieldOccurredAt]); err != nil {
		return event, fmt.Errorf("column occurred_at: %w", err)
	}
	if event.CreatedAt, err = parseTimestamptz(values[fieldCreatedAt]); err != nil {
		return event, fmt.Errorf("column created_at: %w", err)
	}
	return event, nil
}

// recordPKs appends the key columns' values as strings to dst: timestamps in
// TimestampLayout, other values in PostgreSQL's text form.
//
// NOTE: the key order (table order) and the timestamp format copy how Sequin
// writes record values. How Sequin 0.14 writes a timestamptz key in
// record_pks was not checked.
func (r *relation) recordPKs(tuple *pglogrepl.TupleData, event *outbox.Event, dst []string) []string {
	for _, index := range r.keyColumns {
		switch index {
		case r.columns[fieldCreatedAt]:
			dst = append(dst, event.CreatedAt.UTC().Format(TimestampLayout))
		case r.columns[fieldOccurredAt]:
			dst = append(dst, event.OccurredAt.UTC().Format(TimestampLayout))
		case r.columns[fieldID]:
			dst = append(dst, event.ID.String())
		case r.columns[fieldTenantID]:
			dst = append(dst, event.TenantID)
		default:
			dst = append(dst, string(tuple.Columns[index].Data))
		}
	}
	return dst
}

// timestamptzLayouts are the forms of timestamptz text output with DateStyle
// ISO: the offset has hours only unless the zone needs minutes or seconds.
var timestamptzLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07:00:00",
}

// parseTimestamptz parses a timestamptz in PostgreSQL's text output, such as
// "2025-03-14 09:26:53.581204+00", and returns it in UTC. It rejects infinity
// and BC dates, which an event cannot carry.
func parseTimestamptz(text []byte) (time.Time, error) {
	value := string(text)
	for _, layout := range timestamptzLayouts {
		if parsed, err := time.Parse(layout, value); err == nil {
			return parsed.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a timestamptz this stand-in can convert", value)
}

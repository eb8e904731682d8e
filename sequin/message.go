package sequin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/finnest/eventruntime/outbox"
)

// Action is the kind of change a Sequin message carries.
type Action string

// Actions Sequin sends, the last token of the message's subject.
const (
	ActionInsert Action = "insert"
	ActionUpdate Action = "update"
	ActionDelete Action = "delete"

	// ActionRead marks a row that a backfill read, not a change.
	ActionRead Action = "read"
)

func (a Action) valid() bool {
	switch a {
	case ActionInsert, ActionUpdate, ActionDelete, ActionRead:
		return true
	}
	return false
}

// MsgIDHeader is the NATS header that carries the message's idempotency key.
// JetStream drops a message whose id it has stored within the stream's
// duplicate window.
const MsgIDHeader = "Nats-Msg-Id"

// ErrMalformed is wrapped by every Decode error: such a message can never
// decode, so a consumer terminates it and dead-letters it with the error text
// instead of redelivering it.
var ErrMalformed = errors.New("malformed Sequin message")

// DecodeError is the error Decode returns. It wraps ErrMalformed and, when
// validation failed, outbox.ErrInvalidEvent.
type DecodeError struct {
	// EventID is the record's id when it could be read, otherwise uuid.Nil, so
	// a dead-letter entry can name the event.
	EventID uuid.UUID

	// Event is the decoded record when only its validation failed, so a
	// dead-letter entry can name the tenant and ecosystem; otherwise nil.
	Event *outbox.Event

	// Reason describes what is wrong with the message.
	Reason string

	cause error
}

func (e *DecodeError) Error() string {
	var text strings.Builder
	text.WriteString(ErrMalformed.Error())
	if e.EventID != uuid.Nil {
		text.WriteString(" (event ")
		text.WriteString(e.EventID.String())
		text.WriteString(")")
	}
	text.WriteString(": ")
	text.WriteString(e.Reason)
	return text.String()
}

// Unwrap returns ErrMalformed and the underlying error, if any.
func (e *DecodeError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrMalformed}
	}
	return []error{ErrMalformed, e.cause}
}

// Message is one decoded Sequin NATS message about an outbox row.
type Message struct {
	// Action is the change that produced the message.
	Action Action

	// Event is the outbox row from the message's record.
	Event outbox.Event

	// Changes is the message's changes object, or nil when it is null, as it
	// is for inserts and reads.
	Changes json.RawMessage

	// Metadata describes where and when the change happened.
	Metadata Metadata

	// Subject is the NATS subject the message arrived on, as given to Decode.
	Subject string

	// MsgID is the Nats-Msg-Id header, or empty.
	MsgID string
}

// Metadata is the metadata object of a Sequin message.
type Metadata struct {
	TableSchema     string    `json:"table_schema"`
	TableName       string    `json:"table_name"`
	CommitTimestamp time.Time `json:"commit_timestamp"`

	// CommitLSN is the LSN of the transaction's commit record. It may be nil
	// for read (backfill) messages.
	CommitLSN *int64 `json:"commit_lsn"`

	// CommitIdx is the 0-based position of the change in its transaction. It
	// may be nil for read (backfill) messages.
	CommitIdx *int `json:"commit_idx"`

	DatabaseName string `json:"database_name"`

	// IdempotencyKey equals the Nats-Msg-Id header: IdempotencyKey(CommitLSN,
	// CommitIdx) for changes, the base64 of "<backfill id>:<primary key>" for
	// reads.
	IdempotencyKey string `json:"idempotency_key"`

	// RecordPKs holds the row's primary key values as strings.
	RecordPKs []string `json:"record_pks"`

	// TransactionAnnotations is a JSON object, or nil when it is null.
	TransactionAnnotations json.RawMessage `json:"transaction_annotations"`

	// Enrichment is the output of a Sequin enrichment function, or nil.
	Enrichment json.RawMessage `json:"enrichment"`

	Consumer Consumer `json:"consumer"`
	Database Database `json:"database"`
}

// Consumer names the Sequin sink that sent a message.
type Consumer struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Annotations json.RawMessage `json:"annotations"`
}

// Database names the Sequin database (source) a message came from.
type Database struct {
	ID          string          `json:"id"`
	Name        string          `json:"name"`
	Annotations json.RawMessage `json:"annotations"`

	// Database is the PostgreSQL database name.
	Database string `json:"database"`

	// Hostname is the PostgreSQL host Sequin connects to.
	Hostname string `json:"hostname"`
}

// wireMessage and wireRecord mirror the JSON body. Pointers tell a missing or
// null field apart from an empty one.
type wireMessage struct {
	Action   *string         `json:"action"`
	Record   *wireRecord     `json:"record"`
	Changes  json.RawMessage `json:"changes"`
	Metadata *Metadata       `json:"metadata"`
}

type wireRecord struct {
	ID           *string         `json:"id"`
	TenantID     *string         `json:"tenant_id"`
	Ecosystem    *string         `json:"ecosystem"`
	EventType    *string         `json:"event_type"`
	EventVersion *int            `json:"event_version"`
	AggregateID  *string         `json:"aggregate_id"`
	Payload      json.RawMessage `json:"payload"`
	TraceParent  *string         `json:"trace_parent"`
	OccurredAt   *string         `json:"occurred_at"`
	CreatedAt    *string         `json:"created_at"`
}

// Decode decodes and validates a Sequin message about an outbox row. subject
// and header may be empty. When the subject's last token is an action, it must
// match the body's action. Every error wraps ErrMalformed and is a
// *DecodeError.
func Decode(subject string, header nats.Header, data []byte) (*Message, error) {
	var wire wireMessage
	if err := json.Unmarshal(data, &wire); err != nil {
		return nil, &DecodeError{
			EventID: recordID(wire.Record),
			Reason:  describeJSONError(err),
			cause:   err,
		}
	}

	msg := &Message{Subject: subject}
	if header != nil {
		msg.MsgID = header.Get(MsgIDHeader)
	}

	if wire.Record == nil {
		return nil, &DecodeError{Reason: "record is missing or null"}
	}
	eventID, err := parseEventID(wire.Record.ID)
	if err != nil {
		return nil, &DecodeError{Reason: err.Error()}
	}
	malformed := func(format string, args ...any) error {
		return &DecodeError{EventID: eventID, Reason: fmt.Sprintf(format, args...)}
	}

	if wire.Action == nil {
		return nil, malformed("action is missing or null")
	}
	msg.Action = Action(*wire.Action)
	if !msg.Action.valid() {
		return nil, malformed("action %q is unknown (want insert, update, delete or read)", *wire.Action)
	}
	if subjectAction := lastToken(subject); Action(subjectAction).valid() && Action(subjectAction) != msg.Action {
		return nil, malformed("subject %q names action %q but the body has %q", subject, subjectAction, msg.Action)
	}
	if wire.Metadata == nil {
		return nil, malformed("metadata is missing or null")
	}
	msg.Metadata = *wire.Metadata
	msg.Metadata.TransactionAnnotations = nullToNil(msg.Metadata.TransactionAnnotations)
	msg.Metadata.Enrichment = nullToNil(msg.Metadata.Enrichment)
	msg.Metadata.Consumer.Annotations = nullToNil(msg.Metadata.Consumer.Annotations)
	msg.Metadata.Database.Annotations = nullToNil(msg.Metadata.Database.Annotations)
	msg.Changes = nullToNil(wire.Changes)

	if err := decodeRecord(wire.Record, eventID, &msg.Event); err != nil {
		return nil, malformed("%s", err)
	}
	if err := msg.Event.Validate(0); err != nil {
		return nil, &DecodeError{EventID: eventID, Event: &msg.Event, Reason: err.Error(), cause: err}
	}
	return msg, nil
}

// decodeRecord fills event from a record whose id is already parsed.
func decodeRecord(record *wireRecord, id uuid.UUID, event *outbox.Event) error {
	event.ID = id
	for _, field := range []struct {
		name  string
		value *string
		into  *string
	}{
		{"tenant_id", record.TenantID, &event.TenantID},
		{"ecosystem", record.Ecosystem, &event.Ecosystem},
		{"event_type", record.EventType, &event.Type},
		{"aggregate_id", record.AggregateID, &event.AggregateID},
	} {
		if field.value == nil {
			return fmt.Errorf("record.%s is missing or null", field.name)
		}
		*field.into = *field.value
	}
	if record.EventVersion == nil {
		return errors.New("record.event_version is missing or null")
	}
	event.Version = *record.EventVersion
	if record.TraceParent != nil {
		event.TraceParent = *record.TraceParent
	}

	payload := nullToNil(record.Payload)
	if payload == nil {
		return errors.New("record.payload is missing or null")
	}
	compacted, err := compactJSON(payload)
	if err != nil {
		return fmt.Errorf("record.payload: %w", err)
	}
	event.Payload = compacted

	if event.OccurredAt, err = parseTimestamp("occurred_at", record.OccurredAt); err != nil {
		return err
	}
	if event.CreatedAt, err = parseTimestamp("created_at", record.CreatedAt); err != nil {
		return err
	}
	return nil
}

func parseEventID(value *string) (uuid.UUID, error) {
	if value == nil {
		return uuid.Nil, errors.New("record.id is missing or null")
	}
	id, err := uuid.Parse(*value)
	if err != nil {
		return uuid.Nil, fmt.Errorf("record.id %q is not a valid UUID", *value)
	}
	if id == uuid.Nil {
		return uuid.Nil, errors.New("record.id is the nil UUID")
	}
	return id, nil
}

// recordID returns the record's id after a failed unmarshal, which may have
// filled some fields before it failed, or uuid.Nil.
func recordID(record *wireRecord) uuid.UUID {
	if record == nil || record.ID == nil {
		return uuid.Nil
	}
	id, err := uuid.Parse(*record.ID)
	if err != nil {
		return uuid.Nil
	}
	return id
}

func parseTimestamp(name string, value *string) (time.Time, error) {
	if value == nil {
		return time.Time{}, fmt.Errorf("record.%s is missing or null", name)
	}
	parsed, err := time.Parse(time.RFC3339Nano, *value)
	if err != nil {
		return time.Time{}, fmt.Errorf("record.%s %q is not an RFC 3339 timestamp", name, *value)
	}
	return parsed.UTC(), nil
}

// compactJSON returns a copy of data without insignificant whitespace.
// encoding/json has already checked that data is valid JSON.
func compactJSON(data json.RawMessage) (json.RawMessage, error) {
	if !hasJSONWhitespace(data) {
		return data, nil
	}
	var buffer bytes.Buffer
	buffer.Grow(len(data))
	if err := json.Compact(&buffer, data); err != nil {
		return nil, err
	}
	return buffer.Bytes(), nil
}

func hasJSONWhitespace(data []byte) bool {
	for _, c := range data {
		switch c {
		case ' ', '\t', '\n', '\r':
			return true
		}
	}
	return false
}

func nullToNil(data json.RawMessage) json.RawMessage {
	if len(data) == 0 || string(data) == "null" {
		return nil
	}
	return data
}

func lastToken(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return fmt.Sprintf("%s is a JSON %s, want %s", typeErr.Field, typeErr.Value, typeErr.Type)
	case errors.As(err, &typeErr):
		return fmt.Sprintf("body is a JSON %s, want an object", typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("body is not valid JSON at byte %d: %v", syntaxErr.Offset, err)
	}
	return fmt.Sprintf("body does not decode: %v", err)
}

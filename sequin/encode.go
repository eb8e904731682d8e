package sequin

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/finnest/eventruntime/outbox"
)

// TimestampLayout is the time layout of Sequin's timestamptz values and
// commit_timestamp: UTC with exactly six fractional digits.
const TimestampLayout = "2006-01-02T15:04:05.000000Z"

// Subject returns the subject Sequin's NATS sink publishes a change to,
// "sequin.<database>.<schema>.<table>.<action>". databaseName is the name of
// the database in Sequin's configuration, not necessarily the PostgreSQL name.
func Subject(databaseName, schema, table, action string) string {
	return "sequin." + databaseName + "." + schema + "." + table + "." + action
}

// IdempotencyKey returns the key Sequin sends in metadata.idempotency_key and
// the Nats-Msg-Id header for a change: the standard base64 of
// "<commit_lsn>:<commit_idx>".
func IdempotencyKey(commitLSN int64, commitIdx int) string {
	var text [48]byte
	plain := strconv.AppendInt(text[:0], commitLSN, 10)
	plain = append(plain, ':')
	plain = strconv.AppendInt(plain, int64(commitIdx), 10)
	return base64.StdEncoding.EncodeToString(plain)
}

// Encode returns the JSON body Sequin would send for msg: a compact object
// with action, record, changes and metadata. msg.Subject and msg.MsgID are not
// part of the body.
//
// NOTE: Sequin does not fix the order of keys in its bodies. Encode writes
// record columns in table order and metadata keys in the order they are
// documented, which may differ from the bytes a real Sequin sends.
func Encode(msg *Message) ([]byte, error) {
	return AppendEncode(make([]byte, 0, 768+len(msg.Event.Payload)), msg)
}

// AppendEncode appends the body Encode returns to dst. The payload must be
// valid JSON, and the annotation, changes and enrichment fields valid JSON or
// nil.
func AppendEncode(dst []byte, msg *Message) ([]byte, error) {
	dst = append(dst, `{"action":`...)
	dst = appendJSONString(dst, string(msg.Action))

	dst = append(dst, `,"record":`...)
	dst, err := appendRecord(dst, &msg.Event)
	if err != nil {
		return nil, err
	}

	dst = append(dst, `,"changes":`...)
	if dst, err = appendRawJSON(dst, "changes", msg.Changes); err != nil {
		return nil, err
	}

	dst = append(dst, `,"metadata":`...)
	if dst, err = appendMetadata(dst, &msg.Metadata); err != nil {
		return nil, err
	}
	return append(dst, '}'), nil
}

func appendRecord(dst []byte, event *outbox.Event) ([]byte, error) {
	dst = append(dst, `{"id":"`...)
	dst = appendUUID(dst, event.ID)
	dst = append(dst, `","tenant_id":`...)
	dst = appendJSONString(dst, event.TenantID)
	dst = append(dst, `,"ecosystem":`...)
	dst = appendJSONString(dst, event.Ecosystem)
	dst = append(dst, `,"event_type":`...)
	dst = appendJSONString(dst, event.Type)
	dst = append(dst, `,"event_version":`...)
	dst = strconv.AppendInt(dst, int64(event.Version), 10)
	dst = append(dst, `,"aggregate_id":`...)
	dst = appendJSONString(dst, event.AggregateID)

	dst = append(dst, `,"payload":`...)
	if len(event.Payload) == 0 {
		return nil, fmt.Errorf("encode Sequin message for event %s: payload is empty", event.ID)
	}
	dst, err := appendCompactJSON(dst, event.Payload)
	if err != nil {
		return nil, fmt.Errorf("encode Sequin message for event %s: payload: %w", event.ID, err)
	}

	dst = append(dst, `,"trace_parent":`...)
	if event.TraceParent == "" {
		dst = append(dst, "null"...)
	} else {
		dst = appendJSONString(dst, event.TraceParent)
	}
	dst = append(dst, `,"occurred_at":`...)
	dst = appendTimestamp(dst, event.OccurredAt)
	dst = append(dst, `,"created_at":`...)
	dst = appendTimestamp(dst, event.CreatedAt)
	return append(dst, '}'), nil
}

func appendMetadata(dst []byte, metadata *Metadata) ([]byte, error) {
	dst = append(dst, `{"table_schema":`...)
	dst = appendJSONString(dst, metadata.TableSchema)
	dst = append(dst, `,"table_name":`...)
	dst = appendJSONString(dst, metadata.TableName)
	dst = append(dst, `,"commit_timestamp":`...)
	dst = appendTimestamp(dst, metadata.CommitTimestamp)

	dst = append(dst, `,"commit_lsn":`...)
	if metadata.CommitLSN == nil {
		dst = append(dst, "null"...)
	} else {
		dst = strconv.AppendInt(dst, *metadata.CommitLSN, 10)
	}
	dst = append(dst, `,"commit_idx":`...)
	if metadata.CommitIdx == nil {
		dst = append(dst, "null"...)
	} else {
		dst = strconv.AppendInt(dst, int64(*metadata.CommitIdx), 10)
	}

	dst = append(dst, `,"database_name":`...)
	dst = appendJSONString(dst, metadata.DatabaseName)
	dst = append(dst, `,"idempotency_key":`...)
	dst = appendJSONString(dst, metadata.IdempotencyKey)
	dst = append(dst, `,"record_pks":[`...)
	for i, key := range metadata.RecordPKs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, key)
	}
	dst = append(dst, ']')

	var err error
	dst = append(dst, `,"transaction_annotations":`...)
	if dst, err = appendRawJSON(dst, "transaction_annotations", metadata.TransactionAnnotations); err != nil {
		return nil, err
	}
	dst = append(dst, `,"enrichment":`...)
	if dst, err = appendRawJSON(dst, "enrichment", metadata.Enrichment); err != nil {
		return nil, err
	}

	consumer := &metadata.Consumer
	dst = append(dst, `,"consumer":{"id":`...)
	dst = appendJSONString(dst, consumer.ID)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, consumer.Name)
	dst = append(dst, `,"annotations":`...)
	if dst, err = appendRawJSON(dst, "consumer.annotations", consumer.Annotations); err != nil {
		return nil, err
	}

	database := &metadata.Database
	dst = append(dst, `},"database":{"id":`...)
	dst = appendJSONString(dst, database.ID)
	dst = append(dst, `,"name":`...)
	dst = appendJSONString(dst, database.Name)
	dst = append(dst, `,"annotations":`...)
	if dst, err = appendRawJSON(dst, "database.annotations", database.Annotations); err != nil {
		return nil, err
	}
	dst = append(dst, `,"database":`...)
	dst = appendJSONString(dst, database.Database)
	dst = append(dst, `,"hostname":`...)
	dst = appendJSONString(dst, database.Hostname)
	return append(dst, "}}"...), nil
}

// appendRawJSON appends value compacted, or null when it is nil.
func appendRawJSON(dst []byte, name string, value json.RawMessage) ([]byte, error) {
	if len(value) == 0 {
		return append(dst, "null"...), nil
	}
	dst, err := appendCompactJSON(dst, value)
	if err != nil {
		return nil, fmt.Errorf("encode Sequin message: %s: %w", name, err)
	}
	return dst, nil
}

// appendCompactJSON appends value without insignificant whitespace. It checks
// that value is valid JSON.
func appendCompactJSON(dst []byte, value []byte) ([]byte, error) {
	if !hasJSONWhitespace(value) {
		if !json.Valid(value) {
			return nil, fmt.Errorf("is not valid JSON")
		}
		return append(dst, value...), nil
	}
	buffer := bytes.NewBuffer(dst)
	if err := json.Compact(buffer, value); err != nil {
		return nil, err
	}
	return buffer.Bytes(), nil
}

func appendTimestamp(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, TimestampLayout)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendUUID appends id in the canonical 36-character form.
func appendUUID(dst []byte, id uuid.UUID) []byte {
	for i, b := range id {
		switch i {
		case 4, 6, 8, 10:
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0xF])
	}
	return dst
}

// appendJSONString appends s as a JSON string. It escapes only what JSON
// requires (quote, backslash and control characters), as Sequin's encoder
// (Jason, in its default mode) does, and replaces invalid UTF-8 with U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

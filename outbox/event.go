package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Ecosystems this project reports to.
const (
	EcosystemOFB  = "ofb"  // Open Finance Brasil
	EcosystemOPIN = "opin" // Open Insurance Brasil
)

// DefaultMaxPayloadBytes is the default cap on an event's encoded payload.
// The CDC connector wraps the row in an envelope of about 1 KiB and NATS
// rejects messages above its max_payload (1 MiB by default), so the cap stays
// well below that.
const DefaultMaxPayloadBytes = 256 << 10

// ErrInvalidEvent is wrapped by every validation error, so callers can tell a
// rejected event from a database failure with errors.Is.
var ErrInvalidEvent = errors.New("invalid outbox event")

// Event is one semantic event, as a producer appends it and as consumers
// receive it.
type Event struct {
	// ID is the event id, a UUIDv7. Append generates one when it is zero.
	ID uuid.UUID `json:"id"`

	// TenantID is the tenant the event belongs to. Required.
	TenantID string `json:"tenant_id"`

	// Ecosystem is EcosystemOFB or EcosystemOPIN. Required.
	Ecosystem string `json:"ecosystem"`

	// Type is the semantic, dotted event type such as
	// "pcm.interaction.recorded". Required.
	Type string `json:"event_type"`

	// Version is the version of the payload's schema, starting at 1.
	Version int `json:"event_version"`

	// AggregateID names the entity the event is about. Events of one
	// aggregate are delivered in order. Required.
	AggregateID string `json:"aggregate_id"`

	// Payload is the event body, a JSON object.
	Payload json.RawMessage `json:"payload"`

	// TraceParent is a W3C traceparent, or empty.
	TraceParent string `json:"trace_parent,omitempty"`

	// OccurredAt is when the business fact happened. Append uses the current
	// time when it is zero.
	OccurredAt time.Time `json:"occurred_at"`

	// CreatedAt is the row's commit-side timestamp, set by the database.
	CreatedAt time.Time `json:"created_at"`
}

// Validate checks the event against what the outbox, PostgreSQL's jsonb and
// NATS accept. maxPayloadBytes of zero means DefaultMaxPayloadBytes. The
// error wraps ErrInvalidEvent and names the field.
func (e *Event) Validate(maxPayloadBytes int) error {
	if maxPayloadBytes <= 0 {
		maxPayloadBytes = DefaultMaxPayloadBytes
	}
	for _, field := range []struct {
		name, value string
		maxLength   int
	}{
		{"tenant_id", e.TenantID, MaxIDLength},
		{"event_type", e.Type, MaxIDLength},
		{"aggregate_id", e.AggregateID, MaxIDLength},
	} {
		if field.value == "" {
			return fmt.Errorf("%w: %s is missing", ErrInvalidEvent, field.name)
		}
		if len(field.value) > field.maxLength {
			return fmt.Errorf("%w: %s is %d bytes, above the %d-byte limit", ErrInvalidEvent, field.name,
				len(field.value), field.maxLength)
		}
		if err := checkText(field.value); err != nil {
			return fmt.Errorf("%w: %s %s", ErrInvalidEvent, field.name, err)
		}
	}
	if len(e.TraceParent) > MaxIDLength {
		return fmt.Errorf("%w: trace_parent is %d bytes, above the %d-byte limit", ErrInvalidEvent,
			len(e.TraceParent), MaxIDLength)
	}
	if err := checkText(e.TraceParent); err != nil {
		return fmt.Errorf("%w: trace_parent %s", ErrInvalidEvent, err)
	}
	if e.Ecosystem != EcosystemOFB && e.Ecosystem != EcosystemOPIN {
		return fmt.Errorf("%w: ecosystem %q is unknown (want %q or %q)", ErrInvalidEvent, e.Ecosystem, EcosystemOFB, EcosystemOPIN)
	}
	if e.Version < 1 {
		return fmt.Errorf("%w: event_version %d must be 1 or more", ErrInvalidEvent, e.Version)
	}
	if len(e.Payload) == 0 {
		return fmt.Errorf("%w: payload is missing", ErrInvalidEvent)
	}
	if len(e.Payload) > maxPayloadBytes {
		return fmt.Errorf("%w: payload is %d bytes, above the %d-byte limit", ErrInvalidEvent, len(e.Payload), maxPayloadBytes)
	}
	if err := CheckJSONB(e.Payload); err != nil {
		return fmt.Errorf("%w: payload %v", ErrInvalidEvent, err)
	}
	expansion, err := numberExpansion(e.Payload)
	if err != nil {
		return fmt.Errorf("%w: payload %v", ErrInvalidEvent, err)
	}
	if len(e.Payload)+expansion > maxPayloadBytes {
		return fmt.Errorf("%w: payload would be about %d bytes once PostgreSQL writes its numbers in full, "+
			"above the %d-byte limit", ErrInvalidEvent, len(e.Payload)+expansion, maxPayloadBytes)
	}
	return nil
}

// MaxIDLength caps tenant_id, event_type, aggregate_id and trace_parent.
const MaxIDLength = 256

// maxExponent bounds a number's decimal exponent. jsonb stores numbers as
// numeric and writes them back in full, so 1e1000 comes back as 1,001
// digits, and larger exponents overflow numeric.
const maxExponent = 1000

// numberExpansion returns how many bytes the payload's numbers grow by when
// jsonb writes them in full, and an error for an exponent beyond
// maxExponent. data must be valid JSON.
func numberExpansion(data []byte) (int, error) {
	expansion := 0
	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
			continue
		}
		if c != 'e' && c != 'E' {
			continue
		}
		// An exponent marker outside a string belongs to a number.
		j := i + 1
		if j < len(data) && (data[j] == '+' || data[j] == '-') {
			j++
		}
		exponent := 0
		for ; j < len(data) && data[j] >= '0' && data[j] <= '9'; j++ {
			exponent = exponent*10 + int(data[j]-'0')
			if exponent > maxExponent {
				return 0, fmt.Errorf("has a number with an exponent beyond %d at byte %d, which PostgreSQL "+
					"would write out in full or reject", maxExponent, i)
			}
		}
		expansion += exponent
		i = j - 1
	}
	return expansion, nil
}

// checkText rejects strings PostgreSQL text columns cannot store.
func checkText(value string) error {
	if !utf8.ValidString(value) {
		return errors.New("is not valid UTF-8")
	}
	for i := 0; i < len(value); i++ {
		if value[i] == 0 {
			return errors.New("contains a NUL byte")
		}
	}
	return nil
}

// CheckJSONB reports why PostgreSQL's jsonb type would reject data, or nil. It
// rejects invalid JSON, a value that is not an object, invalid UTF-8, the
// escape \u0000 and unpaired UTF-16 surrogate escapes. Go's encoding/json
// accepts the last three, so they would otherwise fail only at insert time.
func CheckJSONB(data []byte) error {
	if !utf8.Valid(data) {
		return errors.New("is not valid UTF-8")
	}
	if !json.Valid(data) {
		return errors.New("is not valid JSON")
	}
	first := firstNonSpace(data)
	if first != '{' {
		return errors.New("must be a JSON object")
	}

	inString := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if data[i+1] != 'u' {
				i++
				continue
			}
			code := hexValue(data[i+2 : i+6])
			switch {
			case code == 0:
				return fmt.Errorf("contains \\u0000 at byte %d, which jsonb cannot store", i)
			case code >= 0xD800 && code <= 0xDBFF:
				if i+11 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
					low := hexValue(data[i+8 : i+12])
					if low >= 0xDC00 && low <= 0xDFFF {
						i += 11
						continue
					}
				}
				return fmt.Errorf("contains an unpaired high surrogate escape at byte %d", i)
			case code >= 0xDC00 && code <= 0xDFFF:
				return fmt.Errorf("contains an unpaired low surrogate escape at byte %d", i)
			}
			i += 5
		}
	}
	return nil
}

func firstNonSpace(data []byte) byte {
	for _, c := range data {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c
	}
	return 0
}

// hexValue decodes four hex digits; json.Valid has already checked them.
func hexValue(digits []byte) int {
	value := 0
	for _, c := range digits {
		value <<= 4
		switch {
		case c >= '0' && c <= '9':
			value |= int(c - '0')
		case c >= 'a' && c <= 'f':
			value |= int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			value |= int(c-'A') + 10
		}
	}
	return value
}

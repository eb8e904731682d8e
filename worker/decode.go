package worker

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/sequin"
)

// DecodeSequin is the Decoder for Sequin's messages. Inserts and backfill
// reads become events; updates and deletes cannot happen on the insert-only
// outbox, so they are rejected like malformed messages. When the event id
// could be read from a rejected message, the returned event carries it for the
// dead-letter row.
func DecodeSequin(subject string, header nats.Header, data []byte) (*outbox.Event, error) {
	msg, err := sequin.Decode(subject, header, data)
	if err != nil {
		var decodeErr *sequin.DecodeError
		if errors.As(err, &decodeErr) {
			if decodeErr.Event != nil {
				return decodeErr.Event, err
			}
			return &outbox.Event{ID: decodeErr.EventID}, err
		}
		return nil, err
	}
	switch msg.Action {
	case sequin.ActionInsert, sequin.ActionRead:
		return &msg.Event, nil
	default:
		return &msg.Event, fmt.Errorf("%w: action %s on the insert-only outbox", sequin.ErrMalformed, msg.Action)
	}
}

package webhook

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/finnest/eventruntime/outbox"
)

// messageBody is the JSON request body. type, timestamp and data follow the
// payload structure the Standard Webhooks specification recommends; the
// other fields identify the event.
type messageBody struct {
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Version     int             `json:"version"`
	Timestamp   string          `json:"timestamp"`
	TenantID    string          `json:"tenant_id"`
	Ecosystem   string          `json:"ecosystem"`
	AggregateID string          `json:"aggregate_id"`
	Data        json.RawMessage `json:"data"`
}

// encodeMessage returns the request body for event.
func encodeMessage(event *outbox.Event) ([]byte, error) {
	body, err := json.Marshal(messageBody{
		ID:          event.ID.String(),
		Type:        event.Type,
		Version:     event.Version,
		Timestamp:   event.OccurredAt.UTC().Format(time.RFC3339Nano),
		TenantID:    event.TenantID,
		Ecosystem:   event.Ecosystem,
		AggregateID: event.AggregateID,
		Data:        event.Payload,
	})
	if err != nil {
		return nil, fmt.Errorf("encode webhook body of event %s: %w", event.ID, err)
	}
	return body, nil
}

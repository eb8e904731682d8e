package opin

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/finnest/eventruntime/outbox"
	"github.com/finnest/eventruntime/regulator"
)

// TimestampLayout is the event timestamp format: UTC to the second, such as
// 2022-11-07T17:26:32Z. The spec's timestamp has maxLength 20, which leaves
// no room for fractional seconds.
const TimestampLayout = "2006-01-02T15:04:05Z"

// ErrInvalidEvent marks an interaction or stored item that the ingestion API
// would reject whatever the time. Resending it unchanged cannot succeed.
var ErrInvalidEvent = fmt.Errorf("invalid OPIN report event: %w", regulator.ErrInvalidItem)

// Event is one element of the events array of a batch request, an eventBody
// of the ingestion spec, in its wire form.
type Event struct {
	AdditionalInfo    *AdditionalInfo `json:"additionalInfo,omitempty"`
	ClientOrgID       string          `json:"clientOrgId,omitempty"`
	ClientSSID        string          `json:"clientSSId,omitempty"`
	CorrelationID     string          `json:"correlationId"`
	Endpoint          string          `json:"endpoint"`
	EndpointURIPrefix string          `json:"endpointUriPrefix,omitempty"`
	FAPIInteractionID string          `json:"fapiInteractionId,omitempty"`
	HTTPMethod        string          `json:"httpMethod"`
	ProcessTimespan   int64           `json:"processTimespan"`
	ServerASID        string          `json:"serverASId"`
	ServerOrgID       string          `json:"serverOrgId"`
	StatusCode        int             `json:"statusCode"`
	// Timestamp is in TimestampLayout.
	Timestamp string `json:"timestamp"`
	// URL is the real request path. It may contain identifiers, so it is
	// never logged.
	URL string `json:"url"`
}

// AdditionalInfo is the additionalInfo object of an event. The spec defines
// only consentId, so other keys of outbox.Interaction.AdditionalInfo are not
// sent.
type AdditionalInfo struct {
	ConsentID string `json:"consentId,omitempty"`
}

// Item is the stored report item of one event: the event and its role,
// which picks the batch path. Only Event is sent.
type Item struct {
	Event Event  `json:"event"`
	Role  string `json:"role"`
}

// storedItem decodes an Item keeping the event's stored bytes, which Report
// sends unchanged.
type storedItem struct {
	Event json.RawMessage `json:"event"`
	Role  string          `json:"role"`
}

// NewItem maps a captured interaction to a report item. It returns an error
// wrapping ErrInvalidEvent when the event would fail the spec's eventBody
// schema or the rules that the spec states only in its descriptions.
func NewItem(in outbox.Interaction) (Item, error) {
	event := Event{
		ClientOrgID:       in.ClientOrgID,
		ClientSSID:        in.ClientSSID,
		CorrelationID:     in.CorrelationID,
		Endpoint:          in.Endpoint,
		EndpointURIPrefix: in.EndpointURIPrefix,
		FAPIInteractionID: in.FAPIInteractionID,
		HTTPMethod:        in.HTTPMethod,
		ProcessTimespan:   in.ProcessTimespan,
		ServerASID:        in.ServerASID,
		ServerOrgID:       in.ServerOrgID,
		StatusCode:        in.StatusCode,
		URL:               in.URL,
	}
	if !in.Timestamp.IsZero() {
		event.Timestamp = in.Timestamp.UTC().Truncate(time.Second).Format(TimestampLayout)
	}
	if consentID, ok := in.AdditionalInfo["consentId"].(string); ok && consentID != "" {
		event.AdditionalInfo = &AdditionalInfo{ConsentID: consentID}
	}

	item := Item{Event: event, Role: in.Role}
	if err := ValidateItem(item); err != nil {
		return Item{}, fmt.Errorf("interaction %q: %w", in.FAPIInteractionID, err)
	}
	return item, nil
}

// ValidateItem checks an item's role, the rules of CheckEventRules and the
// spec's eventBody schema. The error wraps ErrInvalidEvent.
func ValidateItem(item Item) error {
	if BatchPath(item.Role) == "" {
		return fmt.Errorf("%w: invalid role %q, want CLIENT or SERVER", ErrInvalidEvent, item.Role)
	}
	if err := CheckEventRules(item.Event); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if err := validateEventSchema(item.Event); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	return nil
}

// IsPhase1Endpoint reports whether an endpoint template belongs to phase 1
// (open data: channels and products-services), for which the spec makes
// fapiInteractionId, clientOrgId, clientSSId and consentId optional.
func IsPhase1Endpoint(endpoint string) bool {
	return strings.HasPrefix(endpoint, "/open-insurance/channels/") ||
		strings.HasPrefix(endpoint, "/open-insurance/products-services/")
}

// CheckEventRules applies the rules that the spec states only in field
// descriptions, and gives a readable error for the common mistakes before
// the full schema check:
//   - correlationId, url, serverASId and timestamp are present;
//   - outside phase 1, fapiInteractionId, clientOrgId and clientSSId are
//     present, and additionalInfo.consentId is present when statusCode is
//     200 to 299;
//   - the timestamp is UTC to the second, exactly TimestampLayout.
func CheckEventRules(e Event) error {
	switch {
	case e.CorrelationID == "":
		return errors.New("missing correlationId")
	case e.URL == "":
		return errors.New("missing url, the real request path")
	case e.ServerASID == "":
		return errors.New("missing serverASId")
	case e.Timestamp == "":
		return errors.New("missing timestamp")
	}
	parsed, err := time.Parse(TimestampLayout, e.Timestamp)
	if err != nil || parsed.Format(TimestampLayout) != e.Timestamp {
		return fmt.Errorf("invalid timestamp %q, want UTC to the second such as 2022-11-07T17:26:32Z", e.Timestamp)
	}

	if IsPhase1Endpoint(e.Endpoint) {
		return nil
	}
	for name, value := range map[string]string{
		"fapiInteractionId": e.FAPIInteractionID,
		"clientOrgId":       e.ClientOrgID,
		"clientSSId":        e.ClientSSID,
	} {
		if value == "" {
			return fmt.Errorf("missing %s, required outside phase 1 (endpoint %s)", name, e.Endpoint)
		}
	}
	if e.StatusCode >= 200 && e.StatusCode <= 299 && (e.AdditionalInfo == nil || e.AdditionalInfo.ConsentID == "") {
		return fmt.Errorf("missing additionalInfo.consentId, required outside phase 1 for status %d", e.StatusCode)
	}
	return nil
}

// validateEventSchema validates the event's JSON form against the spec's
// eventBody schema: the patterns, the endpoint enum, the date-time format and
// the timestamp's maxLength. Errors leave the values out, because url may
// contain identifiers.
func validateEventSchema(e Event) error {
	spec, err := EmbeddedSpec()
	if err != nil {
		return err
	}
	encoded, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	var value any
	if err := json.Unmarshal(encoded, &value); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	if err := spec.EventSchema().VisitJSON(value, openapi3.MultiErrors(), openapi3.DisableSchemaErrorDetails()); err != nil {
		return fmt.Errorf("event does not match the OPIN eventBody schema: %w", err)
	}
	return nil
}

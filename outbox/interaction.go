package outbox

import "time"

// TypeInteractionRecorded is the event type of a captured call to or from a
// regulated API, which becomes a regulator report item.
const TypeInteractionRecorded = "pcm.interaction.recorded"

// Interaction is the payload of a TypeInteractionRecorded event, version 1.
// It is ecosystem-neutral: each regulator adapter maps it to its own report.
// JSON names follow the regulators' field names.
type Interaction struct {
	// AdditionalInfo carries the CLIENT report's extra fields, such as
	// personType and consentId.
	AdditionalInfo map[string]any `json:"additionalInfo,omitempty"`

	// ClientOrgID is the organisation id of the calling participant.
	ClientOrgID string `json:"clientOrgId"`

	// ClientSSID is the software statement id of the calling client (CLIENT
	// reports only).
	ClientSSID string `json:"clientSSId,omitempty"`

	// CorrelationID is the caller's correlation id, when it has one.
	CorrelationID string `json:"correlationId,omitempty"`

	// Endpoint is the templated path from the regulator's allow-list, such
	// as /open-banking/accounts/v2/accounts/{accountId}, never the real path.
	Endpoint string `json:"endpoint"`

	// EndpointURIPrefix is the base URI of the called server (CLIENT reports
	// only).
	EndpointURIPrefix string `json:"endpointUriPrefix,omitempty"`

	// FAPIInteractionID is the x-fapi-interaction-id of the call.
	FAPIInteractionID string `json:"fapiInteractionId"`

	// HTTPMethod is the request method, such as GET.
	HTTPMethod string `json:"httpMethod"`

	// ProcessTimespan is how long the call took, in milliseconds.
	ProcessTimespan int64 `json:"processTimespan"`

	// Role is "CLIENT" when this platform made the call and "SERVER" when it
	// served it.
	Role string `json:"role"`

	// ServerASID is the authorisation server id of the serving participant,
	// used by Open Insurance reports.
	ServerASID string `json:"serverASId,omitempty"`

	// ServerOrgID is the organisation id of the serving participant.
	ServerOrgID string `json:"serverOrgId"`

	// StatusCode is the HTTP status of the response, or 408 when the call
	// timed out.
	StatusCode int `json:"statusCode"`

	// Timestamp is when the call was made, in UTC.
	Timestamp time.Time `json:"timestamp"`

	// URL is the real request path, used by Open Insurance reports. It may
	// contain identifiers, so it is never logged or put in telemetry.
	URL string `json:"url,omitempty"`
}

// Interaction roles.
const (
	RoleClient = "CLIENT"
	RoleServer = "SERVER"
)
